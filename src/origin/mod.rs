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
//! `GET /preview/{channel}` is a player page for people checking a channel ([`preview`]).

mod preview;

pub use preview::Preview;

use prometheus::IntGauge;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::HlsConfig;
use crate::http::Body;
use crate::metrics::{Metrics, status_class};
use crate::store::{Cacheability, ChannelObjects, Object, Progress, Store};

/// `Cache-Control` for playlists: they change every part/segment, so a cache may hold one for at
/// most a second (RFC 8216bis §6.2.2 expects clients to reload at about the target duration).
const CACHE_LIVE: &str = "public, max-age=1";
/// `Cache-Control` for init and media segments.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` for 404s: a name may appear a moment later (next segment), so do not cache.
const CACHE_MISS: &str = "no-store";
/// `Cache-Control` for 400s and 503s of LL-HLS requests: a request that is too far ahead now, or
/// that timed out, names a state the stream will reach shortly, and the very same URL must then
/// get the playlist. Many CDNs cache error statuses for a while unless told not to.
const CACHE_RETRY: &str = "no-store";

/// The media playlist of a rendition, as the packager names it.
const MEDIA_PLAYLIST: &str = "index.m3u8";
/// Suffix of the stored delta update of a media playlist (`_HLS_skip`, RFC 8216bis §6.2.5.1).
const DELTA_SUFFIX: &str = "#skip";

/// The LL-HLS timing an origin needs: where the hold bound, the Advance Part Limit and the cache
/// lifetime of blocking responses come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// `EXT-X-TARGETDURATION`, whole seconds.
    pub target_duration: Duration,
    /// `EXT-X-PART-INF:PART-TARGET`, seconds.
    pub part_target: f64,
}

impl Targets {
    /// The target duration is the configured segment duration rounded up, as the playlists state
    /// it (RFC 8216bis §4.4.3.1 requires an integer).
    pub fn from_config(hls: &HlsConfig) -> Self {
        Self {
            target_duration: Duration::from_secs(hls.segment_duration.ceil().max(1.0) as u64),
            part_target: hls.part_duration,
        }
    }

    /// RFC 8216bis §6.2.5.2: a server that cannot answer a blocking request within three target
    /// durations should return 503.
    fn hold_limit(&self) -> Duration {
        3 * self.target_duration
    }

    /// RFC 8216bis §6.2.5.2: the Advance Part Limit is three divided by the Part Target Duration
    /// when that is under one second, three otherwise (about three seconds' worth of parts). Part
    /// counts are whole, so the limit is too; the epsilon keeps 3 / 0.2 at 15, not 14.
    fn advance_part_limit(&self) -> u64 {
        if self.part_target < 1.0 { (3.0 / self.part_target + 1e-9).floor() as u64 } else { 3 }
    }

    /// `Cache-Control` for playlists answering `_HLS_msn`. The URL names a state of the playlist
    /// that, once reached, stays reached, so the answer may be cached past the one second of a
    /// plain reload: CDNs only collapse requests onto cacheable responses. One target duration is
    /// the bound: every part such a playlist lists is still kept for at least that long after
    /// (parts stay listed for three target durations, RFC 8216bis §6.2.2), and a client that
    /// fell behind never gets a playlist more than a segment out of date.
    fn blocking_cache(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("public, max-age={}", self.target_duration.as_secs()))
            .unwrap_or_else(|_| HeaderValue::from_static(CACHE_LIVE))
    }
}

pub struct Origin {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    targets: Targets,
    blocking_cache: HeaderValue,
    /// Held requests answer 503 at once when this is cancelled, so the listener drains quickly.
    shutdown: CancellationToken,
    /// Requests held now (blocking playlist reloads and preload-hinted parts).
    /// Requests held now (`ladderd_http_held_requests`).
    waiting: IntGauge,
    preview: Preview,
}

/// Delivery directives of a media playlist request (RFC 8216bis §6.2.5).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Directives {
    msn: Option<u64>,
    part: Option<u64>,
    /// `_HLS_skip=YES` or `v2`: answer with the delta update. This origin does not skip
    /// date ranges, so `v2` gets the same playlist as `YES` (RFC 8216bis §6.2.5.1 lets a server
    /// skip less than asked).
    skip: bool,
}

/// Why a request with delivery directives is refused (the text of its 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadDirective {
    NotANumber,
    PartWithoutMsn,
    MsnTooFarAhead,
    PartTooFarAhead,
}

impl BadDirective {
    fn text(self) -> &'static str {
        match self {
            Self::NotANumber => "_HLS_msn and _HLS_part must be decimal integers\n",
            Self::PartWithoutMsn => "_HLS_part requires _HLS_msn\n",
            Self::MsnTooFarAhead => "_HLS_msn is more than two segments ahead of the playlist\n",
            Self::PartTooFarAhead => "_HLS_part is beyond the Advance Part Limit\n",
        }
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// The awaited progress was reached.
    Reached,
    /// Three target durations went by first.
    TimedOut,
    /// The daemon is stopping.
    ShuttingDown,
}

/// Counts a held request for as long as it lives, including when the connection drops it.
struct Waiting<'a>(&'a IntGauge);

impl<'a> Waiting<'a> {
    fn new(count: &'a IntGauge) -> Self {
        count.inc();
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Origin {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, targets: Targets, shutdown: CancellationToken) -> Self {
        let blocking_cache = targets.blocking_cache();
        let waiting = metrics.held_requests.clone();
        Self { store, metrics, targets, blocking_cache, shutdown, waiting, preview: Preview::default() }
    }

    /// Serves `preview` at `/preview/`; without it the page loads but has no hls.js to play with.
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
        let method = req.method().clone();
        let uri = req.uri().clone();
        async move {
            let resp = self.route(method, uri).await;
            self.metrics.http_requests.with_label_values(&["origin", status_class(resp.status().as_u16())]).inc();
            resp
        }
    }

    async fn route(&self, method: Method, uri: Uri) -> Response<Body> {
        let head = match method {
            Method::GET => false,
            Method::HEAD => true,
            Method::OPTIONS => return preflight(),
            _ => {
                return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", CACHE_MISS)
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
        let (rendition, file) = name.split_once('/').unwrap_or(("", name));
        if !rendition.is_empty() && file == MEDIA_PLAYLIST {
            return self.media_playlist(&objects, rendition, name, uri.query(), head).await;
        }
        if let Some(object) = objects.get(name) {
            return serve(&object, head, None);
        }
        match part_name(file) {
            Some((msn, part)) if !rendition.is_empty() && !file.contains('/') => {
                self.hinted_part(&objects, rendition, name, msn, part, head).await
            }
            _ => not_found(),
        }
    }

    /// A media playlist request, with or without delivery directives (RFC 8216bis §6.2.5.2).
    async fn media_playlist(
        &self,
        objects: &ChannelObjects,
        rendition: &str,
        name: &str,
        query: Option<&str>,
        head: bool,
    ) -> Response<Body> {
        let directives = match directives(query) {
            Ok(d) => d,
            Err(e) => return bad_request(e),
        };
        let delta = format!("{name}{DELTA_SUFFIX}");
        // A server that cannot produce a delta update answers with the whole playlist, which
        // clients accept (an `_HLS_skip` answer without `EXT-X-SKIP` skipped nothing).
        let current =
            || if directives.skip { objects.get(&delta).or_else(|| objects.get(name)) } else { objects.get(name) };
        let answer = |cache: Option<&HeaderValue>| current().map_or_else(not_found, |o| serve(&o, head, cache));

        let Some(msn) = directives.msn else {
            return answer(None);
        };
        // A rendition that never announced progress is not low-latency: nothing to wait on.
        let Some(mut progress) = objects.watch(rendition) else {
            return answer(None);
        };
        let now = *progress.borrow_and_update();
        if !now.ended
            && let Err(e) = self.check_advance(msn, directives.part, &now)
        {
            return bad_request(e);
        }
        let reached = |p: &Progress| p.ended || reaches(objects, rendition, msn, directives.part, p);
        if !reached(&now) {
            match self.hold(&mut progress, reached).await {
                Hold::Reached => {}
                Hold::TimedOut => return unavailable("the requested part or segment did not arrive in time\n"),
                Hold::ShuttingDown => return unavailable("shutting down\n"),
            }
        }
        answer(Some(&self.blocking_cache))
    }

    /// Refuses directives that run ahead of the playlist (RFC 8216bis §6.2.5.2): an `_HLS_msn`
    /// beyond the last complete segment plus two, or an `_HLS_part` more than the Advance Part
    /// Limit beyond the last part published.
    fn check_advance(&self, msn: u64, part: Option<u64>, now: &Progress) -> Result<(), BadDirective> {
        // The last complete segment is `now.msn - 1`, so "plus two" is `now.msn + 1`.
        if msn > now.msn.saturating_add(1) {
            return Err(BadDirective::MsnTooFarAhead);
        }
        let Some(part) = part else {
            return Ok(());
        };
        let ahead = match msn.cmp(&now.msn) {
            std::cmp::Ordering::Less => 0,
            // The last part listed is `now.parts - 1` (or the previous segment's last one).
            std::cmp::Ordering::Equal => part.saturating_add(1).saturating_sub(now.parts),
            // The following segment: at least this far, however many parts the current one gets.
            std::cmp::Ordering::Greater => part.saturating_add(1),
        };
        if ahead > self.targets.advance_part_limit() {
            return Err(BadDirective::PartTooFarAhead);
        }
        Ok(())
    }

    /// A part that is not in the store. The one the playlist's `EXT-X-PRELOAD-HINT` names (the
    /// next part of the segment being built, or the first of the following segment when this one
    /// may have ended) is held until it is published; anything else is not found (RFC 8216bis
    /// §6.2.6: a server should answer 404 for a missing resource no preload hint names).
    async fn hinted_part(
        &self,
        objects: &ChannelObjects,
        rendition: &str,
        name: &str,
        msn: u64,
        part: u64,
        head: bool,
    ) -> Response<Body> {
        let Some(mut progress) = objects.watch(rendition) else {
            return not_found();
        };
        let now = *progress.borrow_and_update();
        let hinted =
            !now.ended && ((msn == now.msn && part == now.parts) || (msn == now.msn.wrapping_add(1) && part == 0));
        // Published between the first look and the subscription, or never coming: look again.
        if !hinted {
            return objects.get(name).map_or_else(not_found, |o| serve(&o, head, None));
        }
        if let Some(object) = objects.get(name) {
            return serve(&object, head, None);
        }
        // Stop once progress has passed the part: then it is either stored or will never be
        // (the segment ended with fewer parts).
        let passed = |p: &Progress| p.ended || p.msn > msn || (p.msn == msn && p.parts > part);
        match self.hold(&mut progress, passed).await {
            Hold::Reached => objects.get(name).map_or_else(not_found, |o| serve(&o, head, None)),
            Hold::TimedOut => unavailable("the hinted part did not arrive in time\n"),
            Hold::ShuttingDown => unavailable("shutting down\n"),
        }
    }

    /// Waits for `done` to hold for the rendition's progress, at most three target durations.
    /// Wakes only on progress updates: no polling.
    async fn hold(&self, progress: &mut watch::Receiver<Progress>, done: impl Fn(&Progress) -> bool) -> Hold {
        let _waiting = Waiting::new(&self.waiting);
        let deadline = tokio::time::sleep(self.targets.hold_limit());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Hold::ShuttingDown,
                changed = progress.changed() => {
                    if changed.is_err() {
                        // The store dropped the rendition's sender: no update will come.
                        return Hold::TimedOut;
                    }
                    // Copy out so that no watch lock is held while `done` reads the store.
                    let now = *progress.borrow_and_update();
                    if done(&now) {
                        return Hold::Reached;
                    }
                }
                _ = &mut deadline => return Hold::TimedOut,
            }
        }
    }
}

/// Whether the playlist already holds what `_HLS_msn`/`_HLS_part` ask for (RFC 8216bis
/// §6.2.5.2): segment `msn` complete, or part `part` of it published. A part index beyond the
/// last part of a complete segment means part 0 of the following segment.
fn reaches(objects: &ChannelObjects, rendition: &str, msn: u64, part: Option<u64>, p: &Progress) -> bool {
    let Some(part) = part else {
        return p.msn > msn;
    };
    if p.msn == msn {
        return p.parts > part;
    }
    if p.msn < msn {
        return false;
    }
    // Segment `msn` is complete. Its parts are still stored while it is this recent, so a
    // missing one is past its end.
    let stored = |ext: &str| objects.get(&format!("{rendition}/{msn}.{part}.{ext}")).is_some();
    if p.msn > msn.saturating_add(1) || stored("m4s") || stored("ts") {
        return true;
    }
    p.parts > 0
}

/// Parses the delivery directives of a query string; other parameters are ignored (RFC 8216bis
/// §6.2.5 reserves the `_HLS_` prefix, anything else may be a CDN's or a token).
fn directives(query: Option<&str>) -> Result<Directives, BadDirective> {
    let mut d = Directives::default();
    let number = |v: &str| -> Result<u64, BadDirective> {
        // decimal-integer (RFC 8216bis §4.2): digits only, no sign, no spaces.
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadDirective::NotANumber);
        }
        v.parse().map_err(|_| BadDirective::NotANumber)
    };
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "_HLS_msn" => d.msn = Some(number(value)?),
            "_HLS_part" => d.part = Some(number(value)?),
            "_HLS_skip" => d.skip = value == "YES" || value == "v2",
            _ => {}
        }
    }
    if d.part.is_some() && d.msn.is_none() {
        return Err(BadDirective::PartWithoutMsn);
    }
    Ok(d)
}

/// `{msn}.{part}.m4s` (or `.ts` for MPEG-TS renditions), the packager's name for a part.
fn part_name(file: &str) -> Option<(u64, u64)> {
    let (msn, part) = file.strip_suffix(".m4s").or_else(|| file.strip_suffix(".ts"))?.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(msn) || !digits(part) {
        return None;
    }
    Some((msn.parse().ok()?, part.parse().ok()?))
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

/// A stored object; `cache` overrides the `Cache-Control` its cacheability implies.
fn serve(object: &Object, head: bool, cache: Option<&HeaderValue>) -> Response<Body> {
    let cache = cache.cloned().unwrap_or_else(|| {
        HeaderValue::from_static(match object.cache {
            Cacheability::Live => CACHE_LIVE,
            Cacheability::Immutable => CACHE_IMMUTABLE,
        })
    });
    let len = object.len();
    let body = if head { Body::empty() } else { Body::from_chunks(object.chunks.iter().cloned()) };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(object.content_type));
    h.insert(header::CACHE_CONTROL, cache);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
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

fn bad_request(why: BadDirective) -> Response<Body> {
    plain(StatusCode::BAD_REQUEST, why.text(), CACHE_RETRY)
}

fn unavailable(text: &'static str) -> Response<Body> {
    plain(StatusCode::SERVICE_UNAVAILABLE, text, CACHE_RETRY)
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
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::time::Instant;

    /// Target duration 2 s (hold bound 6 s, blocking max-age 2), part target 0.2 s (Advance Part
    /// Limit 15). The tests run on the real clock: tokio's paused clock needs its `test-util`
    /// feature, which this crate does not enable.
    const TARGETS: Targets = Targets { target_duration: Duration::from_secs(2), part_target: 0.2 };
    const HOLD: Duration = Duration::from_secs(6);
    /// What "at once" means on a busy test machine: well under the hold bound.
    const AT_ONCE: Duration = Duration::from_millis(500);
    const CACHE_BLOCKING: &str = "public, max-age=2";

    struct Fixture {
        origin: Arc<Origin>,
        channel: Arc<ChannelObjects>,
        shutdown: CancellationToken,
    }

    fn object(bytes: &'static [u8], name: &str, cache: Cacheability) -> Object {
        Object::new(vec![Bytes::from_static(bytes)], content_type(name), cache)
    }

    /// Publishes as the packager does: objects first, then the progress that describes them.
    fn publish(ch: &ChannelObjects, playlist: &'static [u8], delta: &'static [u8], progress: Progress) {
        ch.put("720p/index.m3u8", object(playlist, "index.m3u8", Cacheability::Live));
        ch.put("720p/index.m3u8#skip", object(delta, "index.m3u8", Cacheability::Live));
        ch.set_progress("720p", progress);
    }

    fn put_part(ch: &ChannelObjects, msn: u64, part: u64, bytes: &'static [u8]) {
        ch.put(format!("720p/{msn}.{part}.m4s"), object(bytes, "x.m4s", Cacheability::Immutable));
    }

    /// A channel whose `720p` rendition has segments up to 4 complete and parts 5.0 and 5.1 out.
    fn fixture() -> Fixture {
        let store = Arc::new(Store::new());
        let channel = store.channel("demo");
        channel.put("master.m3u8", object(b"#EXTM3U\n", "master.m3u8", Cacheability::Live));
        channel.put(
            "720p/1.m4s",
            Object::new(
                vec![Bytes::from_static(b"moof"), Bytes::from_static(b"mdat")],
                content_type("x.m4s"),
                Cacheability::Immutable,
            ),
        );
        put_part(&channel, 5, 0, b"part 5.0");
        put_part(&channel, 5, 1, b"part 5.1");
        publish(&channel, b"playlist v1", b"delta v1", Progress { msn: 5, parts: 2, ended: false });
        let shutdown = CancellationToken::new();
        let origin = Arc::new(Origin::new(store, Arc::new(Metrics::new()), TARGETS, shutdown.clone()));
        Fixture { origin, channel, shutdown }
    }

    async fn get(o: &Origin, method: Method, path: &str) -> Response<Body> {
        o.handle(&Request::builder().method(method).uri(path).body(()).expect("request")).await
    }

    /// Starts a GET that may be held; the returned task yields the response.
    fn spawn_get(o: &Arc<Origin>, path: &str) -> tokio::task::JoinHandle<Response<Body>> {
        let (o, path) = (o.clone(), path.to_owned());
        tokio::spawn(async move { get(&o, Method::GET, &path).await })
    }

    async fn body(resp: Response<Body>) -> Bytes {
        match resp.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        }
    }

    /// Lets spawned requests run until they block (the paused clock does not move).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn playlists_are_short_lived_and_segments_immutable() {
        let f = fixture();
        let r = get(&f.origin, Method::GET, "/live/demo/master.m3u8").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8").await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
        assert_eq!(body(r).await, "playlist v1");
        let r = get(&f.origin, Method::GET, "/live/demo/720p/1.m4s").await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "8");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "video/iso.segment");
    }

    #[tokio::test]
    async fn unknown_names_are_404_and_not_cached() {
        let f = fixture();
        for p in
            ["/live/nope/master.m3u8", "/live/demo/720p/2.m4s", "/live/demo/", "/x", "/live/demo/../demo/master.m3u8"]
        {
            let r = get(&f.origin, Method::GET, p).await;
            assert_eq!(r.status(), 404, "{p}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_MISS, "{p}");
        }
    }

    #[tokio::test]
    async fn head_has_length_and_no_body_and_other_methods_are_refused() {
        let f = fixture();
        let r = get(&f.origin, Method::HEAD, "/live/demo/720p/1.m4s").await;
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "8");
        assert!(http_body::Body::is_end_stream(r.body()));
        assert_eq!(get(&f.origin, Method::POST, "/live/demo/master.m3u8").await.status(), 405);
        assert_eq!(get(&f.origin, Method::OPTIONS, "/live/demo/master.m3u8").await.status(), 204);
    }

    #[tokio::test]
    async fn blocking_reload_already_satisfied_is_answered_at_once() {
        let f = fixture();
        let start = Instant::now();
        for query in [
            "_HLS_msn=4",
            "_HLS_msn=5&_HLS_part=1",
            "_HLS_msn=0",
            "_HLS_msn=4&_HLS_part=0",
            // Unknown parameters are ignored.
            "token=abc&_HLS_msn=4&flag",
        ] {
            let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
            assert_eq!(r.status(), 200, "{query}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING, "{query}");
            assert_eq!(body(r).await, "playlist v1", "{query}");
        }
        assert!(start.elapsed() < AT_ONCE, "nothing waited");
        assert_eq!(f.origin.waiting(), 0);
    }

    #[tokio::test]
    async fn held_reload_is_answered_by_the_update_that_satisfies_it() {
        let f = fixture();
        let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2");
        let whole = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5");
        settle().await;
        assert_eq!(f.origin.waiting(), 2);
        // An update that does not reach part 5.2 keeps both waiting.
        publish(&f.channel, b"playlist v1 again", b"delta", Progress { msn: 5, parts: 2, ended: false });
        settle().await;
        assert_eq!(f.origin.waiting(), 2);
        let start = Instant::now();
        put_part(&f.channel, 5, 2, b"part 5.2");
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ended: false });
        let r = held.await.expect("task");
        assert!(start.elapsed() < AT_ONCE, "answered on the update, not by a timer");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING);
        assert_eq!(body(r).await, "playlist v2");
        settle().await;
        assert_eq!(f.origin.waiting(), 1, "segment 5 is not complete yet");
        publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 0, ended: false });
        assert_eq!(body(whole.await.expect("task")).await, "playlist v3");
        assert_eq!(f.origin.waiting(), 0);
    }

    #[tokio::test]
    async fn a_hundred_waiters_get_identical_bytes() {
        let f = fixture();
        let parts: Vec<_> = (0..100).map(|_| spawn_get(&f.origin, "/live/demo/720p/5.2.m4s")).collect();
        let playlists: Vec<_> =
            (0..100).map(|_| spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2")).collect();
        settle().await;
        assert_eq!(f.origin.waiting(), 200);
        put_part(&f.channel, 5, 2, b"part 5.2");
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ended: false });
        for task in parts {
            let r = task.await.expect("task");
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
            assert_eq!(body(r).await, "part 5.2");
        }
        for task in playlists {
            assert_eq!(body(task.await.expect("task")).await, "playlist v2");
        }
        assert_eq!(f.origin.waiting(), 0);
    }

    #[tokio::test]
    async fn held_requests_get_503_after_three_target_durations() {
        let f = fixture();
        let start = Instant::now();
        let paths = ["/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2", "/live/demo/720p/5.2.m4s"];
        let held: Vec<_> = paths.iter().map(|p| spawn_get(&f.origin, p)).collect();
        for (path, task) in paths.iter().zip(held) {
            let r = task.await.expect("task");
            assert_eq!(r.status(), 503, "{path}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY, "{path}");
            assert!(start.elapsed() >= HOLD && start.elapsed() < HOLD + AT_ONCE, "{path}: {:?}", start.elapsed());
        }
        assert_eq!(f.origin.waiting(), 0);
    }

    #[tokio::test]
    async fn malformed_or_far_ahead_directives_are_400_at_once() {
        let f = fixture();
        let start = Instant::now();
        for query in [
            "_HLS_part=1",
            "_HLS_msn=abc",
            "_HLS_msn=",
            "_HLS_msn=-1",
            "_HLS_msn=+5",
            "_HLS_msn=5&_HLS_part=x",
            "_HLS_msn=99999999999999999999",
            // The last complete segment is 4: 4 + 2 is the furthest one may ask for.
            "_HLS_msn=7",
            // The last part out is 5.1; fifteen parts (3 s / 0.2 s) beyond it is the limit.
            "_HLS_msn=5&_HLS_part=17",
            "_HLS_msn=6&_HLS_part=15",
        ] {
            let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
            assert_eq!(r.status(), 400, "{query}");
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY, "{query}");
        }
        assert!(start.elapsed() < AT_ONCE, "refused without waiting");
        // Just inside the limits: held, not refused.
        let queries = ["_HLS_msn=6", "_HLS_msn=5&_HLS_part=16", "_HLS_msn=6&_HLS_part=14"];
        let held: Vec<_> =
            queries.iter().map(|q| spawn_get(&f.origin, &format!("/live/demo/720p/index.m3u8?{q}"))).collect();
        settle().await;
        assert_eq!(f.origin.waiting(), queries.len());
        for task in held {
            task.abort();
        }
    }

    #[tokio::test]
    async fn ended_playlists_ignore_msn_and_part() {
        let f = fixture();
        publish(&f.channel, b"playlist ended", b"delta ended", Progress { msn: 6, parts: 0, ended: true });
        let start = Instant::now();
        for query in ["_HLS_msn=99", "_HLS_msn=6&_HLS_part=3"] {
            let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
            assert_eq!(r.status(), 200, "{query}");
            assert_eq!(body(r).await, "playlist ended");
        }
        assert_eq!(get(&f.origin, Method::GET, "/live/demo/720p/6.0.m4s").await.status(), 404);
        assert!(start.elapsed() < AT_ONCE);
    }

    #[tokio::test]
    async fn skip_serves_the_delta_update_alone_or_with_blocking() {
        let f = fixture();
        for (query, want) in
            [("_HLS_skip=YES", "delta v1"), ("_HLS_skip=v2", "delta v1"), ("_HLS_skip=NO", "playlist v1")]
        {
            let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE, "{query}");
            assert_eq!(body(r).await, want, "{query}");
        }
        let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2&_HLS_skip=YES");
        settle().await;
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ended: false });
        let r = held.await.expect("task");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING);
        assert_eq!(body(r).await, "delta v2");
        // Without a stored delta update the whole playlist answers.
        f.channel.remove("720p/index.m3u8#skip");
        assert_eq!(
            body(get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_skip=YES").await).await,
            "playlist v2"
        );
    }

    #[tokio::test]
    async fn preload_hinted_parts_are_held_until_published() {
        let f = fixture();
        let next = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
        // The segment may end after 5.1, so the hint may name the next segment's first part.
        let following = spawn_get(&f.origin, "/live/demo/720p/6.0.m4s");
        settle().await;
        assert_eq!(f.origin.waiting(), 2);
        put_part(&f.channel, 5, 2, b"part 5.2");
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ended: false });
        let r = next.await.expect("task");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
        assert_eq!(body(r).await, "part 5.2");
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        // Segment 5 completes; 6.0 comes with the next update.
        publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 0, ended: false });
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        put_part(&f.channel, 6, 0, b"part 6.0");
        publish(&f.channel, b"playlist v4", b"delta v4", Progress { msn: 6, parts: 1, ended: false });
        assert_eq!(body(following.await.expect("task")).await, "part 6.0");
    }

    #[tokio::test]
    async fn a_hinted_part_the_segment_ended_without_is_404() {
        let f = fixture();
        let held = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
        settle().await;
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 6, parts: 0, ended: false });
        let r = held.await.expect("task");
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_MISS);
    }

    #[tokio::test]
    async fn missing_parts_no_hint_names_are_404_at_once() {
        let f = fixture();
        let start = Instant::now();
        for path in [
            "/live/demo/720p/5.3.m4s",
            "/live/demo/720p/6.1.m4s",
            "/live/demo/720p/7.0.m4s",
            "/live/demo/720p/1.0.m4s",
            "/live/demo/720p/5.m4s",
            "/live/demo/480p/5.2.m4s",
            "/live/demo/720p/5.x.m4s",
        ] {
            let r = get(&f.origin, Method::GET, path).await;
            assert_eq!(r.status(), 404, "{path}");
        }
        assert!(start.elapsed() < AT_ONCE);
    }

    #[tokio::test]
    async fn a_part_index_past_a_segments_end_means_the_next_segments_first_part() {
        let f = fixture();
        put_part(&f.channel, 5, 2, b"part 5.2");
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 6, parts: 0, ended: false });
        // 5.2 is the last part of segment 5: answered at once.
        let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2").await;
        assert_eq!(body(r).await, "playlist v2");
        // 5.3 does not exist, so it stands for 6.0 (RFC 8216bis §6.2.5.2).
        let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=3");
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        put_part(&f.channel, 6, 0, b"part 6.0");
        publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 1, ended: false });
        assert_eq!(body(held.await.expect("task")).await, "playlist v3");
    }

    #[tokio::test]
    async fn shutdown_answers_held_requests_at_once() {
        let f = fixture();
        let playlist = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2");
        let part = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
        settle().await;
        assert_eq!(f.origin.waiting(), 2);
        let start = Instant::now();
        f.shutdown.cancel();
        for task in [playlist, part] {
            let r = task.await.expect("task");
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY);
        }
        assert!(start.elapsed() < AT_ONCE);
        assert_eq!(f.origin.waiting(), 0);
    }

    #[tokio::test]
    async fn a_dropped_request_stops_counting_as_waiting() {
        let f = fixture();
        let held = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        held.abort();
        let _ = held.await;
        assert_eq!(f.origin.waiting(), 0);
    }

    #[tokio::test]
    async fn a_rendition_without_progress_serves_its_playlist_plainly() {
        let f = fixture();
        f.channel.put("audio/index.m3u8", object(b"audio playlist", "index.m3u8", Cacheability::Live));
        let r = get(&f.origin, Method::GET, "/live/demo/audio/index.m3u8?_HLS_msn=9&_HLS_part=1").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
        assert_eq!(body(r).await, "audio playlist");
        let r = get(&f.origin, Method::GET, "/live/demo/video/index.m3u8?_HLS_msn=1").await;
        assert_eq!(r.status(), 404);
    }

    #[test]
    fn targets_follow_the_config() {
        let hls = HlsConfig { segment_duration: 1.5, part_duration: 0.3, ..HlsConfig::default() };
        let t = Targets::from_config(&hls);
        assert_eq!(t.target_duration, Duration::from_secs(2));
        assert_eq!(t.hold_limit(), Duration::from_secs(6));
        assert_eq!(TARGETS.hold_limit(), HOLD);
        assert_eq!(t.advance_part_limit(), 10);
        assert_eq!(TARGETS.advance_part_limit(), 15);
        assert_eq!(Targets { part_target: 1.5, ..TARGETS }.advance_part_limit(), 3);
        assert_eq!(t.blocking_cache(), "public, max-age=2");
        assert_eq!(
            Targets { target_duration: Duration::from_secs(4), ..TARGETS }.blocking_cache(),
            "public, max-age=4"
        );
    }

    #[test]
    fn part_names() {
        assert_eq!(part_name("12.3.m4s"), Some((12, 3)));
        assert_eq!(part_name("12.m4s"), None);
        assert_eq!(part_name("12.3.mp4"), None);
        assert_eq!(part_name("a.3.m4s"), None);
        assert_eq!(part_name("1.2.3.m4s"), None);
    }
}
