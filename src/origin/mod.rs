//! The HLS origin a CDN pulls from: `GET /live/{channel}/…` answered from the [`Store`].
//!
//! Playlists are short-lived in caches; init and media segments are immutable (their names are
//! never reused, see docs/ARCHITECTURE.md), so CDNs may keep them for as long as they like.
//!
//! Low-Latency HLS (RFC 8216bis §6.2.5, §6.2.6): a media playlist request carrying `_HLS_msn`
//! (and maybe `_HLS_part`) is held until the rendition's [`Progress`] reaches that point, and a
//! request for the part named by the playlist's `EXT-X-PRELOAD-HINT` is held until the part is
//! published. Both wait on the rendition's watch channel, never longer than three target
//! durations. Every waiter woken by one update reads the same immutable stored object, so their
//! responses are identical bytes and a CDN may collapse them.
//!
//! Every stored object carries validators: a strong `ETag` (a digest of its bytes) and
//! `Last-Modified` (when it was stored), so caches revalidate with `If-None-Match` or
//! `If-Modified-Since` and get a 304 (RFC 9110 §13.1, §15.4.5). Init and media segments and parts
//! answer single byte ranges (RFC 9110 §14), sliced from the stored chunks without copying.
//!
//! `GET /preview/{channel}` is a player page for people checking a channel ([`preview`]).

//!
//! This file routes a request to what answers it and builds the response; [`cache`] is the
//! caching policy per kind of response, [`conditional`] the validators, ranges and content
//! coding, and [`blocking`] LL-HLS's held requests.

mod blocking;
mod cache;
mod conditional;
mod preview;
#[cfg(test)]
mod tests;

pub use blocking::Targets;
pub use cache::{CacheClass, CachePolicy};
pub use preview::Preview;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use crate::http::Body;
use crate::metrics::Metrics;
use crate::store::{Cacheability, ChannelObjects, Object, ObjectName, PLAYLIST_TYPE, Store};
use blocking::{BadDirective, directives};
use conditional::{Conditions, Ranged, entity_tag, http_date, slice_chunks};

/// Response headers a player on another origin may read besides the CORS-safelisted ones
/// (Fetch standard §3.2.6): hls.js and others read ranges and validators.
const EXPOSE_HEADERS: &str = "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified";

pub struct Origin {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    targets: Targets,
    blocking_cache: HeaderValue,
    /// Held requests answer 503 at once when this is cancelled, so the listener drains quickly.
    shutdown: CancellationToken,
    /// Requests held now (blocking playlist reloads and preload-hinted parts,
    /// `ladderd_http_held_requests`).
    waiting: IntGauge,
    /// Places for held requests (`http.max_held_requests`).
    held_slots: Arc<tokio::sync::Semaphore>,
    held_limit: usize,
    /// When a refusal for want of a place was last logged.
    held_full_logged: std::sync::Mutex<Option<std::time::Instant>>,
    preview: Preview,
    cache: CachePolicy,
}

impl Origin {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, targets: Targets, shutdown: CancellationToken) -> Self {
        let blocking_cache = targets.blocking_cache();
        let waiting = metrics.held_requests.clone();
        Self {
            store,
            metrics,
            targets,
            blocking_cache,
            shutdown,
            waiting,
            held_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_HELD)),
            held_limit: DEFAULT_MAX_HELD,
            held_full_logged: std::sync::Mutex::new(None),
            preview: Preview::default(),
            cache: CachePolicy::default(),
        }
    }

    /// Caching headers from `http.cache` instead of the built-in ones.
    pub fn with_cache_policy(mut self, cache: CachePolicy) -> Self {
        self.cache = cache;
        self
    }

    /// Serves `preview` at `/preview/`; without it the page loads but has no hls.js to play with.
    /// At most `limit` requests held at once (`http.max_held_requests`).
    pub fn with_held_limit(mut self, limit: usize) -> Self {
        self.held_limit = limit.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self.held_slots = Arc::new(tokio::sync::Semaphore::new(self.held_limit));
        self
    }

    pub fn with_preview(mut self, preview: Preview) -> Self {
        self.preview = preview;
        self
    }

    /// Requests held now, waiting for a playlist update or a preload-hinted part.
    pub fn waiting(&self) -> usize {
        usize::try_from(self.waiting.get()).unwrap_or(0)
    }

    /// Answers `req`. The future borrows only the origin, not the request, so it is `Send`
    /// whatever the request body is.
    pub fn handle<'a, B>(&'a self, req: &Request<B>) -> impl Future<Output = Response<Body>> + Send + use<'a, B> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let conditions = Conditions::of(req.headers());
        let (route, channel) = route_of(uri.path(), uri.query());
        // Only configured channels (those the store has) get a series of their own: a request for
        // any other name must not add one.
        let channel = channel.filter(|c| self.store.get_channel(c).is_some()).map(str::to_owned);
        async move {
            let mut resp = self.route(method, uri, &conditions).await;
            self.cache.apply(&mut resp);
            self.metrics.observe_http("origin", route, resp.status().as_u16(), started.elapsed());
            if let Some(channel) = channel {
                self.metrics.origin_requests.with_label_values(&[&channel, route]).inc();
            }
            resp
        }
    }

    async fn route(&self, method: Method, uri: Uri, conditions: &Conditions) -> Response<Body> {
        let head = match method {
            Method::GET => false,
            Method::HEAD => true,
            Method::OPTIONS => return preflight(),
            _ => {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", CacheClass::Miss)
                    .with_header(header::ALLOW, "GET, HEAD, OPTIONS");
            }
        };
        let path = uri.path();
        if let Some(rest) = path.strip_prefix("/preview/") {
            return self.preview.answer(rest, head, |channel| self.store.get_channel(channel).is_some());
        }
        let Some(rest) = path.strip_prefix("/live/") else {
            return not_found();
        };
        let Some((channel, name)) = rest.split_once('/') else {
            return not_found();
        };
        if name.is_empty() || name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return not_found();
        }
        let Some(objects) = self.store.get_channel(channel) else {
            return not_found();
        };
        // Only what the packager names can be stored: anything else is missing without a look.
        let Some(name) = ObjectName::parse(name) else {
            return missing(&objects);
        };
        if let ObjectName::MediaPlaylist { rendition } = name {
            return self.media_playlist(&objects, rendition, uri.query(), head, conditions).await;
        }
        if let Some(object) = objects.get(&name) {
            return serve(&object, head, None, conditions);
        }
        match name {
            ObjectName::Part { rendition, msn, part, .. } => {
                self.hinted_part(&objects, rendition, &name, msn, part, head, conditions).await
            }
            _ => missing(&objects),
        }
    }
}

/// The `route` label of an origin request (from a fixed list, so that metrics stay bounded
/// whatever is asked) and, for paths under `/live/`, the channel named.
pub fn route_of<'a>(path: &'a str, query: Option<&str>) -> (&'static str, Option<&'a str>) {
    if let Some(rest) = path.strip_prefix("/preview/") {
        return (if rest == preview::PLAYER_JS { "player_js" } else { "preview" }, None);
    }
    let Some((channel, name)) = path.strip_prefix("/live/").and_then(|rest| rest.split_once('/')) else {
        return ("other", None);
    };
    let route = match ObjectName::parse(name) {
        Some(ObjectName::Master) => "master",
        Some(ObjectName::Thumbnail) => "thumbnail",
        Some(ObjectName::MediaPlaylist { .. }) => match directives(query) {
            Ok(d) if d.skip => "delta_playlist",
            Ok(d) if d.msn.is_some() => "blocking_playlist",
            _ => "media_playlist",
        },
        Some(ObjectName::Init { .. }) => "init",
        Some(ObjectName::Part { .. }) => "part",
        Some(ObjectName::Segment { .. }) => "segment",
        Some(ObjectName::Manifest | ObjectName::Delta { .. }) | None => "other",
    };
    (route, Some(channel))
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

/// A stored object; `cache` overrides the `Cache-Control` its cacheability implies (blocking
/// playlist reloads). GET and HEAD get the same headers, except that `Range` is for GET alone
/// (RFC 9110 §14.2).
fn serve(object: &Object, head: bool, cache: Option<&HeaderValue>, conditions: &Conditions) -> Response<Body> {
    let class = match (cache, object.cache) {
        (Some(_), _) => Some(CacheClass::BlockingPlaylist),
        (None, Cacheability::Live) => Some(CacheClass::Playlist),
        (None, Cacheability::Immutable) => Some(CacheClass::Media),
        // Thumbnails: fresh for as long as it takes to replace them; not configurable.
        (None, Cacheability::Refreshed(_)) => None,
    };
    let cache = cache.cloned().unwrap_or_else(|| match (class, object.cache) {
        (_, Cacheability::Refreshed(secs)) => HeaderValue::from_str(&format!("public, max-age={secs}"))
            .unwrap_or_else(|_| HeaderValue::from_static(CacheClass::Playlist.default_value())),
        (Some(class), _) => HeaderValue::from_static(class.default_value()),
        (None, _) => HeaderValue::from_static(CacheClass::Playlist.default_value()),
    });
    let mut resp = serve_as(object, head, cache, conditions);
    // A 416 carries its own kind.
    if let Some(class) = class
        && resp.extensions().get::<CacheClass>().is_none()
    {
        resp.extensions_mut().insert(class);
    }
    resp
}

fn serve_as(object: &Object, head: bool, cache: HeaderValue, conditions: &Conditions) -> Response<Body> {
    // Playlists are text that a viewer reloads several times a second under LL-HLS: gzip them for
    // clients that accept it. They vary by Accept-Encoding, so both forms say so, and each form
    // has its own entity tag (RFC 9110 §8.8.3: a strong tag names one representation).
    let compressible = object.content_type == PLAYLIST_TYPE;
    let gzipped = if compressible && conditions.gzip { object.gzipped() } else { None };
    let etag = match &gzipped {
        Some(gz) => format!("\"{:x}-{:016x}-gz\"", gz.len(), object.digest),
        None => entity_tag(object),
    };
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, cache);
    if compressible {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    insert_text(&mut h, header::ETAG, &etag);
    insert_text(&mut h, header::LAST_MODIFIED, &http_date(object.stored_at));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    // RFC 9110 §15.4.5: a 304 carries the fields a 200 would have that caches update (here
    // Cache-Control, ETag, Last-Modified) and no content.
    if conditions.not_modified(object, &etag) {
        return response(StatusCode::NOT_MODIFIED, h, Body::empty());
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(object.content_type));
    if let Some(gz) = gzipped {
        // Playlists are never ranged (below), so the compressed form is always whole.
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(gz.len()));
        let body = if head { Body::empty() } else { Body::from(gz) };
        return response(StatusCode::OK, h, body);
    }
    let len = object.len() as u64;
    // Playlists change under their name: a client joining ranges of two versions would get
    // neither, so they are always whole (RFC 9110 §14.2 lets a server ignore Range).
    let ranged = object.cache == Cacheability::Immutable;
    if ranged {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let range = if ranged && !head { conditions.range(object, &etag, len) } else { Ranged::Whole };
    match range {
        Ranged::Whole => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            let body = if head { Body::empty() } else { Body::from_chunks(object.chunks.iter().cloned()) };
            response(StatusCode::OK, h, body)
        }
        Ranged::Bytes { first, last } => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            insert_text(&mut h, header::CONTENT_RANGE, &format!("bytes {first}-{last}/{len}"));
            response(StatusCode::PARTIAL_CONTENT, h, Body::from_chunks(slice_chunks(&object.chunks, first, last + 1)))
        }
        Ranged::Unsatisfiable => {
            // RFC 9110 §15.5.17: the 416 names the current length.
            let mut resp = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n", CacheClass::Miss);
            insert_text(resp.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{len}"));
            resp
        }
    }
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn insert_text(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn plain(status: StatusCode, text: &'static str, class: CacheClass) -> Response<Body> {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(class);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(class.default_value()));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    resp
}

fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found\n", CacheClass::Miss)
}

/// A name not in a configured channel's store: briefly cacheable while the channel is not live
/// (no master playlist), uncached otherwise since the name may appear with the next part.
fn missing(objects: &ChannelObjects) -> Response<Body> {
    if objects.get(&ObjectName::Master).is_some() {
        not_found()
    } else {
        plain(StatusCode::NOT_FOUND, "channel is not live\n", CacheClass::NotLive)
    }
}

fn bad_request(why: BadDirective) -> Response<Body> {
    plain(StatusCode::BAD_REQUEST, why.text(), CacheClass::Retry)
}

fn unavailable(text: &'static str) -> Response<Body> {
    plain(StatusCode::SERVICE_UNAVAILABLE, text, CacheClass::Retry)
}

/// Held requests when `http.max_held_requests` is not configured (its default).
const DEFAULT_MAX_HELD: usize = 16_384;

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
