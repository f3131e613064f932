//! The preview player: `GET /preview/{channel}` answers a page that plays the channel with hls.js
//! in low-latency mode, shows glass-to-glass latency and the rendition playing, and draws timed
//! metadata (ID3 `TXXX` frames from `emsg` boxes) as overlays at their media time.
//! `GET /preview/hls.min.js` answers hls.js itself.
//!
//! The page is compiled in. hls.js is not: it comes from the npm registry through
//! scripts/setup.sh (packages ship their own copy), so it is read from `http.player_js` once when
//! the daemon starts. Without it the daemon still runs and the page says what is missing.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::config::HttpConfig;
use crate::http::Body;

const PAGE: &str = include_str!("preview.html");
/// Answered for a channel that is not configured; static, so no request text is echoed into HTML.
const NOT_FOUND_PAGE: &str = "<!doctype html>\n<meta charset=\"utf-8\"><title>No such channel</title>\n\
    <p>No channel by that name is configured on this server.</p>\n";
/// The name the page loads hls.js by (relative to itself, so a path prefix in front of the origin
/// changes nothing). Channel names cannot contain '.', so it never shadows a channel.
pub(super) const PLAYER_JS: &str = "hls.min.js";
const PLAYER_MISSING: &str = "hls.js is not installed on this server: run scripts/setup.sh (it installs \
    web/node_modules/hls.js), or set http.player_js to the path of hls.min.js\n";

/// The page changes with the binary, so caches must revalidate it.
const CACHE_PAGE: &str = "no-cache";
/// hls.js changes only when a deployment updates it; a day bounds how long a stale copy lives.
const CACHE_PLAYER: &str = "public, max-age=86400";
/// A 404 may turn into a page once the configuration changes.
const CACHE_MISS: &str = "no-store";
/// The page needs its own inline script and style, hls.js from here, `blob:` for the MediaSource
/// and hls.js's worker, `data:` for the empty WebVTT track hls.js gives metadata cues, and the
/// playlists and segments from this origin; nothing else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
    media-src 'self' blob: data:; worker-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// The preview page and the hls.js it loads.
#[derive(Debug, Clone, Default)]
pub struct Preview {
    /// `None` when `http.player_js` could not be read.
    player_js: Option<Bytes>,
}

impl Preview {
    /// Reads hls.js from `http.player_js`. Meant for startup, before the listener serves: the read
    /// blocks, once. A missing file is a warning, not an error: ingest and the origin work
    /// without a preview player.
    pub fn load(http: &HttpConfig) -> Self {
        match std::fs::read(&http.player_js) {
            Ok(js) => Self { player_js: Some(Bytes::from(js)) },
            Err(error) => {
                tracing::warn!(
                    path = %http.player_js.display(),
                    %error,
                    "cannot read hls.js for the /preview/ player; run scripts/setup.sh or set http.player_js"
                );
                Self::default()
            }
        }
    }

    /// Answers `/preview/{rest}`; `configured` says whether a channel of that name exists.
    pub(super) fn answer(&self, rest: &str, head: bool, configured: impl FnOnce(&str) -> bool) -> Response<Body> {
        if rest == PLAYER_JS {
            return match &self.player_js {
                Some(js) => respond(StatusCode::OK, js.clone(), "text/javascript; charset=utf-8", CACHE_PLAYER, head),
                None => respond(
                    StatusCode::NOT_FOUND,
                    Bytes::from_static(PLAYER_MISSING.as_bytes()),
                    "text/plain; charset=utf-8",
                    CACHE_MISS,
                    head,
                ),
            };
        }
        let html = |status, page: &'static str, cache| {
            let mut resp =
                respond(status, Bytes::from_static(page.as_bytes()), "text/html; charset=utf-8", cache, head);
            resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
            resp
        };
        if rest.is_empty() || rest.contains('/') || !configured(rest) {
            return html(StatusCode::NOT_FOUND, NOT_FOUND_PAGE, CACHE_MISS);
        }
        html(StatusCode::OK, PAGE, CACHE_PAGE)
    }
}

fn respond(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    cache: &'static str,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let mut resp = Response::new(if head { Body::empty() } else { Body::from(body) });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::origin::{Origin, Targets};
    use crate::store::Store;
    use http::{Method, Request};
    use http_body_util::BodyExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    const JS: &[u8] = b"var Hls = function () {};";

    fn origin(preview: Preview) -> Origin {
        let store = Arc::new(Store::new());
        store.channel("demo");
        let targets = Targets { target_duration: Duration::from_secs(2), part_target: 0.2 };
        Origin::new(store, Arc::new(Metrics::new()), targets, CancellationToken::new()).with_preview(preview)
    }

    async fn get(origin: &Origin, method: Method, path: &str) -> (Response<()>, Bytes) {
        let req = Request::builder().method(method).uri(path).body(()).expect("request");
        let (parts, body) = origin.handle(&req).await.into_parts();
        (Response::from_parts(parts, ()), body.collect().await.expect("body").to_bytes())
    }

    fn header(r: &Response<()>, name: header::HeaderName) -> &str {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// A file that removes itself.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn player_file(name: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("ladderd-preview-{}-{name}.js", std::process::id()));
        std::fs::write(&path, JS).expect("write");
        TempFile(path)
    }

    fn http_config(player_js: &Path) -> HttpConfig {
        HttpConfig { player_js: player_js.to_owned(), ..HttpConfig::default() }
    }

    #[tokio::test]
    async fn the_page_of_a_configured_channel_plays_its_master_playlist() {
        let file = player_file("page");
        let o = origin(Preview::load(&http_config(&file.0)));
        let (r, body) = get(&o, Method::GET, "/preview/demo").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, header::CONTENT_TYPE), "text/html; charset=utf-8");
        assert_eq!(header(&r, header::CACHE_CONTROL), "no-cache");
        assert!(header(&r, header::CONTENT_SECURITY_POLICY).contains("default-src 'none'"));
        let page = std::str::from_utf8(&body).expect("utf-8");
        assert!(page.contains("<script src=\"hls.min.js\"></script>"));
        assert!(page.contains("'../live/' + encodeURIComponent(channel) + '/master.m3u8'"));
        assert!(page.contains("lowLatencyMode: true") && page.contains("FRAG_PARSING_METADATA"));
        // Self-contained: nothing is loaded from anywhere but this origin.
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "{page}");
    }

    #[tokio::test]
    async fn hls_js_is_served_from_the_configured_file() {
        let file = player_file("js");
        let o = origin(Preview::load(&http_config(&file.0)));
        let (r, body) = get(&o, Method::GET, "/preview/hls.min.js").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, header::CONTENT_TYPE), "text/javascript; charset=utf-8");
        assert_eq!(header(&r, header::CACHE_CONTROL), "public, max-age=86400");
        assert_eq!(body, JS);
        let (r, body) = get(&o, Method::HEAD, "/preview/hls.min.js").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, header::CONTENT_LENGTH), JS.len().to_string());
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn a_missing_player_file_is_a_404_that_says_how_to_fix_it() {
        let o = origin(Preview::load(&http_config(Path::new("/nonexistent/ladderd/hls.min.js"))));
        let (r, body) = get(&o, Method::GET, "/preview/hls.min.js").await;
        assert_eq!(r.status(), 404);
        assert_eq!(header(&r, header::CACHE_CONTROL), "no-store");
        let text = std::str::from_utf8(&body).expect("utf-8");
        assert!(text.contains("scripts/setup.sh") && text.contains("http.player_js"), "{text}");
        // The page itself still loads and tells the viewer the same.
        assert_eq!(get(&o, Method::GET, "/preview/demo").await.0.status(), 200);
    }

    #[tokio::test]
    async fn unknown_channels_and_other_paths_are_404_pages() {
        let o = origin(Preview::default());
        for path in ["/preview/nope", "/preview/", "/preview/demo/", "/preview/demo/x", "/preview/..%2Fdemo"] {
            let (r, body) = get(&o, Method::GET, path).await;
            assert_eq!(r.status(), 404, "{path}");
            assert_eq!(header(&r, header::CONTENT_TYPE), "text/html; charset=utf-8", "{path}");
            assert_eq!(header(&r, header::CACHE_CONTROL), "no-store", "{path}");
            assert_eq!(body, NOT_FOUND_PAGE.as_bytes(), "{path}");
        }
        assert_eq!(get(&o, Method::POST, "/preview/demo").await.0.status(), 405);
    }

    #[test]
    fn player_js_defaults_to_the_setup_scripts_install() {
        let base = "ladders: { l: [ { name: a, width: 640, height: 360, video_bitrate: 700000 } ] }\nchannels: []\n";
        let c = Config::parse(base, Path::new("test.yaml")).expect("valid");
        assert_eq!(c.http.player_js, Path::new("web/node_modules/hls.js/dist/hls.min.js"));
        let text = format!("http: {{ listen: \"127.0.0.1:8080\", player_js: /usr/share/ladderd/hls.min.js }}\n{base}");
        let c = Config::parse(&text, Path::new("test.yaml")).expect("valid");
        assert_eq!(c.http.player_js, Path::new("/usr/share/ladderd/hls.min.js"));
        let text = format!("http: {{ listen: \"127.0.0.1:8080\", player_js: \"\" }}\n{base}");
        let errs: Vec<String> =
            Config::parse(&text, Path::new("test.yaml")).unwrap_err().iter().map(|e| e.to_string()).collect();
        assert!(errs.len() == 1 && errs[0].contains("http.player_js"), "{errs:?}");
    }
}
