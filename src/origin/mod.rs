//! The HLS origin a CDN pulls from: `GET /live/{channel}/…` answered from the [`Store`].
//!
//! Playlists are short-lived in caches; init and media segments are immutable (their names are
//! never reused, see docs/ARCHITECTURE.md), so CDNs may keep them for as long as they like.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::http::Body;
use crate::metrics::{Metrics, status_class};
use crate::store::{Cacheability, Store};

/// `Cache-Control` for playlists: they change every part/segment, so a cache may hold one for at
/// most a second (RFC 8216bis §6.2.2 expects clients to reload at about the target duration).
const CACHE_LIVE: &str = "public, max-age=1";
/// `Cache-Control` for init and media segments.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for 404s: a name may appear a moment later (next segment), so do not cache.
const CACHE_MISS: &str = "no-store";

pub struct Origin {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Origin {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    pub fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        let resp = self.route(req);
        self.metrics.http_requests.with_label_values(&["origin", status_class(resp.status().as_u16())]).inc();
        resp
    }

    fn route<B>(&self, req: &Request<B>) -> Response<Body> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            Method::OPTIONS => return preflight(),
            _ => {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", CACHE_MISS)
                    .with_header(header::ALLOW, "GET, HEAD, OPTIONS");
            }
        };
        let path = req.uri().path();
        let Some(rest) = path.strip_prefix("/live/") else {
            return not_found();
        };
        let Some((channel, name)) = rest.split_once('/') else {
            return not_found();
        };
        if name.is_empty() || name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return not_found();
        }
        let Some(object) = self.store.get_channel(channel).and_then(|c| c.get(name)) else {
            return not_found();
        };
        let cache = match object.cache {
            Cacheability::Live => CACHE_LIVE,
            Cacheability::Immutable => CACHE_IMMUTABLE,
        };
        let len = object.len();
        let body = if head { Body::empty() } else { Body::from_chunks(object.chunks.iter().cloned()) };
        let mut resp = Response::new(body);
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(object.content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        resp
    }
}

trait WithHeader {
    fn with_header(self, name: header::HeaderName, value: &'static str) -> Self;
}

impl WithHeader for Response<Body> {
    fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers_mut().insert(name, HeaderValue::from_static(value));
        self
    }
}

fn plain(status: StatusCode, text: &'static str, cache: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found\n", CACHE_MISS)
}

/// CORS preflight (Fetch standard §3.2): players on other origins may send Range or custom headers.
fn preflight() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

/// The MIME type for a stored name, by extension (RFC 8216bis §4; Apple's HLS authoring spec for
/// `video/iso.segment`).
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("ts") => "video/mp2t",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Object;
    use bytes::Bytes;

    fn origin() -> Origin {
        let store = Arc::new(Store::new());
        let ch = store.channel("demo");
        ch.put(
            "master.m3u8",
            Object::new(vec![Bytes::from_static(b"#EXTM3U\n")], content_type("master.m3u8"), Cacheability::Live),
        );
        ch.put(
            "720p/1.m4s",
            Object::new(
                vec![Bytes::from_static(b"moof"), Bytes::from_static(b"mdat")],
                content_type("x.m4s"),
                Cacheability::Immutable,
            ),
        );
        Origin::new(store, Arc::new(Metrics::new()))
    }

    fn get(o: &Origin, method: Method, path: &str) -> Response<Body> {
        o.handle(&Request::builder().method(method).uri(path).body(()).expect("request"))
    }

    #[test]
    fn playlists_are_short_lived_and_segments_immutable() {
        let o = origin();
        let r = get(&o, Method::GET, "/live/demo/master.m3u8");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let r = get(&o, Method::GET, "/live/demo/720p/1.m4s");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "8");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "video/iso.segment");
    }

    #[test]
    fn unknown_names_are_404_and_not_cached() {
        let o = origin();
        for p in
            ["/live/nope/master.m3u8", "/live/demo/720p/2.m4s", "/live/demo/", "/x", "/live/demo/../demo/master.m3u8"]
        {
            let r = get(&o, Method::GET, p);
            assert_eq!(r.status(), 404, "{p}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_MISS, "{p}");
        }
    }

    #[test]
    fn head_has_length_and_no_body_and_other_methods_are_refused() {
        let o = origin();
        let r = get(&o, Method::HEAD, "/live/demo/720p/1.m4s");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "8");
        assert!(http_body::Body::is_end_stream(r.body()));
        assert_eq!(get(&o, Method::POST, "/live/demo/master.m3u8").status(), 405);
        assert_eq!(get(&o, Method::OPTIONS, "/live/demo/master.m3u8").status(), 204);
    }
}
