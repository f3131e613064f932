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

mod preview;

pub use preview::Preview;

use prometheus::IntGauge;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CacheConfig, CachePreset, HlsConfig};
use crate::http::Body;
use crate::media::Container;
use crate::metrics::Metrics;
use crate::store::{Cacheability, ChannelObjects, Object, ObjectName, PLAYLIST_TYPE, Progress, Store};

/// Response headers a player on another origin may read besides the CORS-safelisted ones
/// (Fetch standard §3.2.6): hls.js and others read ranges and validators.
const EXPOSE_HEADERS: &str = "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified";

/// The kinds of origin response that get their own caching headers (`http.cache` in the
/// configuration); each response carries its kind as an extension until [`CachePolicy::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheClass {
    /// Master and media playlists: they change every part/segment, so a cache may hold one for at
    /// most a second (RFC 8216bis §6.2.2 expects clients to reload at about the target duration).
    Playlist,
    /// A media playlist answering `_HLS_msn`: see [`Targets::blocking_cache`].
    BlockingPlaylist,
    /// Init segments, segments and parts: never change under their name.
    Media,
    /// 404 under a configured channel with nothing to serve yet: a player polling for the stream
    /// to start would otherwise reach the origin through the CDN on every attempt, and two
    /// seconds is short enough that the stream is picked up promptly once the publisher starts.
    NotLive,
    /// 400s and 503s of LL-HLS requests: a request that is too far ahead now, or that timed out,
    /// names a state the stream will reach shortly, and the very same URL must then get the
    /// playlist. Many CDNs cache error statuses for a while unless told not to.
    Retry,
    /// Other 404s (a name may appear a moment later: the next segment), 405, 416.
    Miss,
}

impl CacheClass {
    const ALL: [CacheClass; 6] = [
        CacheClass::Playlist,
        CacheClass::BlockingPlaylist,
        CacheClass::Media,
        CacheClass::NotLive,
        CacheClass::Retry,
        CacheClass::Miss,
    ];

    /// The built-in `Cache-Control` (the `origin` preset); blocking playlists get theirs from
    /// [`Targets::blocking_cache`].
    fn default_value(self) -> &'static str {
        match self {
            CacheClass::Playlist | CacheClass::BlockingPlaylist => "public, max-age=1",
            CacheClass::Media => "public, max-age=31536000, immutable",
            CacheClass::NotLive => "public, max-age=2",
            CacheClass::Retry | CacheClass::Miss => "no-store",
        }
    }

    /// The key naming this kind in `http.cache.*` (the order of `CacheValues::entries`).
    fn index(self) -> usize {
        self as usize
    }
}

/// `Cache-Control` and `CDN-Cache-Control` per [`CacheClass`], from `http.cache`.
#[derive(Debug, Clone, Default)]
pub struct CachePolicy {
    /// Replacements of the built-in `Cache-Control`; `None` keeps it.
    cache_control: [Option<HeaderValue>; 6],
    cdn_cache_control: [Option<HeaderValue>; 6],
}

/// RFC 9213 §2: the targeted field CDNs use in place of `Cache-Control`.
const CDN_CACHE_CONTROL: header::HeaderName = header::HeaderName::from_static("cdn-cache-control");

impl CachePolicy {
    /// The policy `http.cache` describes. `keep_media` is how long the origin keeps a segment
    /// after it leaves the playlist window, the `cdn` preset's media lifetime at the CDN.
    pub fn from_config(cache: &CacheConfig, keep_media: Duration) -> Self {
        let value = |v: &str| HeaderValue::from_str(v).ok();
        let mut policy = Self::default();
        if cache.preset == CachePreset::Cdn {
            // A stalled stream makes every viewer's blocking request time out together: one
            // second at the shield turns those retries into one origin request per second.
            policy.cdn_cache_control[CacheClass::Retry.index()] = value("max-age=1");
            policy.cdn_cache_control[CacheClass::NotLive.index()] = value("max-age=2");
            // A segment is worth nothing once no playlist lists it; let the CDN's cache hold
            // what the origin holds, not a year of dead video.
            policy.cdn_cache_control[CacheClass::Media.index()] =
                value(&format!("max-age={}", keep_media.as_secs().max(1)));
        }
        for (class, (_, v)) in CacheClass::ALL.iter().zip(cache.cache_control.entries()) {
            if let Some(v) = v.and_then(value) {
                policy.cache_control[class.index()] = Some(v);
            }
        }
        for (class, (_, v)) in CacheClass::ALL.iter().zip(cache.cdn_cache_control.entries()) {
            if let Some(v) = v.and_then(value) {
                policy.cdn_cache_control[class.index()] = Some(v);
            }
        }
        policy
    }

    /// Sets the configured caching headers on a response that carries its [`CacheClass`];
    /// other responses (the preview page, its player) keep their own.
    fn apply(&self, resp: &mut Response<Body>) {
        let Some(class) = resp.extensions_mut().remove::<CacheClass>() else { return };
        if let Some(v) = &self.cache_control[class.index()] {
            resp.headers_mut().insert(header::CACHE_CONTROL, v.clone());
        }
        if let Some(v) = &self.cdn_cache_control[class.index()] {
            resp.headers_mut().insert(CDN_CACHE_CONTROL, v.clone());
        }
    }
}

/// Whether an `Accept-Encoding` field admits gzip (RFC 9110 §12.5.3): listed, or covered by `*`,
/// with a weight above zero.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for member in
        headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
    {
        let mut parts = member.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(weight > 0.0),
            "*" => any = Some(weight > 0.0),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

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
        Self::advance_part_limit_for(self.part_target)
    }

    /// The Advance Part Limit for a PART-TARGET of `part_target` seconds.
    fn advance_part_limit_for(part_target: f64) -> u64 {
        if part_target < 1.0 { (3.0 / part_target + 1e-9).floor() as u64 } else { 3 }
    }

    /// `Cache-Control` for playlists answering `_HLS_msn`. The URL names a state of the playlist
    /// that, once reached, stays reached, so the answer may be cached past the one second of a
    /// plain reload: CDNs only collapse requests onto cacheable responses. One target duration is
    /// the bound: every part such a playlist lists is still kept for at least that long after
    /// (parts stay listed for three target durations, RFC 8216bis §6.2.2), and a client that
    /// fell behind never gets a playlist more than a segment out of date.
    fn blocking_cache(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("public, max-age={}", self.target_duration.as_secs()))
            .unwrap_or_else(|_| HeaderValue::from_static(CacheClass::BlockingPlaylist.default_value()))
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
    cache: CachePolicy,
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

/// The request fields that make answering a stored object conditional or partial, copied out of
/// the request so that a held request does not borrow it.
#[derive(Debug, Default, Clone)]
struct Conditions {
    /// Every `If-None-Match` field line: the field is a list and may be split (RFC 9110 §5.3).
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
    /// `Accept-Encoding` admits gzip.
    gzip: bool,
}

impl Conditions {
    fn of(headers: &HeaderMap) -> Self {
        // The other fields hold a single member; more than one line makes them invalid, and an
        // invalid one is ignored (RFC 9110 §13.1.3, §13.1.5, §14.2).
        let single = |name: header::HeaderName| {
            let mut lines = headers.get_all(name).into_iter();
            match (lines.next(), lines.next()) {
                (Some(v), None) => Some(v.clone()),
                _ => None,
            }
        };
        Self {
            if_none_match: headers.get_all(header::IF_NONE_MATCH).iter().cloned().collect(),
            if_modified_since: single(header::IF_MODIFIED_SINCE),
            range: single(header::RANGE),
            if_range: single(header::IF_RANGE),
            gzip: accepts_gzip(headers),
        }
    }

    /// Whether a GET or HEAD of `object` is answered 304 (RFC 9110 §13.2.2 steps 3 and 4).
    fn not_modified(&self, object: &Object, etag: &str) -> bool {
        if !self.if_none_match.is_empty() {
            return self.if_none_match.iter().filter_map(|v| v.to_str().ok()).any(|v| none_match(v, etag));
        }
        let Some(since) = self.if_modified_since.as_ref().and_then(|v| v.to_str().ok()).and_then(parse_http_date)
        else {
            return false;
        };
        let stored = unix_seconds(object.stored_at);
        match object.cache {
            Cacheability::Immutable => stored <= since,
            // `Last-Modified` has one-second resolution and a playlist changes several times a
            // second, so a playlist stored within the very second the client names may differ
            // from the copy it has: only a later second proves it unchanged.
            Cacheability::Live | Cacheability::Refreshed(_) => stored < since,
        }
    }

    /// The part of an object of `len` bytes a GET asks for (RFC 9110 §14.2). `If-Range` that does
    /// not match means the whole object (RFC 9110 §13.1.5).
    fn range(&self, object: &Object, etag: &str, len: u64) -> Ranged {
        let Some(range) = self.range.as_ref().and_then(|v| v.to_str().ok()) else {
            return Ranged::Whole;
        };
        if let Some(validator) = &self.if_range
            && !validator.to_str().is_ok_and(|v| if_range_matches(v, object, etag))
        {
            return Ranged::Whole;
        }
        byte_range(range, len)
    }
}

/// What a `Range` request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ranged {
    /// 200 with all of it: no range, a range this origin ignores, or several ranges (RFC 9110
    /// §14.2 lets a server ignore `Range`; serving whole segments spares a multipart body).
    Whole,
    /// 206 with bytes `first..=last`.
    Bytes { first: u64, last: u64 },
    /// 416: no byte of the object is in the range.
    Unsatisfiable,
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
        Self {
            store,
            metrics,
            targets,
            blocking_cache,
            shutdown,
            waiting,
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

    /// A media playlist request, with or without delivery directives (RFC 8216bis §6.2.5.2).
    async fn media_playlist(
        &self,
        objects: &ChannelObjects,
        rendition: &str,
        query: Option<&str>,
        head: bool,
        conditions: &Conditions,
    ) -> Response<Body> {
        let directives = match directives(query) {
            Ok(d) => d,
            Err(e) => return bad_request(e),
        };
        let (name, delta) = (ObjectName::MediaPlaylist { rendition }, ObjectName::Delta { rendition });
        // A server that cannot produce a delta update answers with the whole playlist, which
        // clients accept (an `_HLS_skip` answer without `EXT-X-SKIP` skipped nothing).
        let current =
            || if directives.skip { objects.get(&delta).or_else(|| objects.get(&name)) } else { objects.get(&name) };
        let answer = |cache: Option<&HeaderValue>| {
            current().map_or_else(|| missing(objects), |o| serve(&o, head, cache, conditions))
        };

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
        // The PART-TARGET the rendition's playlist advertises (its longest part), which clients
        // count from; the configured one until a playlist says otherwise.
        let limit = match now.part_target_us {
            0 => self.targets.advance_part_limit(),
            us => Targets::advance_part_limit_for(us as f64 / 1e6),
        };
        if ahead > limit {
            return Err(BadDirective::PartTooFarAhead);
        }
        Ok(())
    }

    /// A part that is not in the store. The one the playlist's `EXT-X-PRELOAD-HINT` names (the
    /// next part of the segment being built, or the first of the following segment when this one
    /// may have ended) is held until it is published; anything else is not found (RFC 8216bis
    /// §6.2.6: a server should answer 404 for a missing resource no preload hint names).
    #[allow(clippy::too_many_arguments)] // The request's parts, each named, read better than a struct of them.
    async fn hinted_part(
        &self,
        objects: &ChannelObjects,
        rendition: &str,
        name: &ObjectName<'_>,
        msn: u64,
        part: u64,
        head: bool,
        conditions: &Conditions,
    ) -> Response<Body> {
        let answer = || objects.get(name).map_or_else(|| missing(objects), |o| serve(&o, head, None, conditions));
        let Some(mut progress) = objects.watch(rendition) else {
            return missing(objects);
        };
        let now = *progress.borrow_and_update();
        let hinted =
            !now.ended && ((msn == now.msn && part == now.parts) || (msn == now.msn.wrapping_add(1) && part == 0));
        // Published between the first look and the subscription, or never coming: look again.
        if !hinted {
            return answer();
        }
        if let Some(object) = objects.get(name) {
            return serve(&object, head, None, conditions);
        }
        // Stop once progress has passed the part: then it is either stored or will never be
        // (the segment ended with fewer parts).
        let passed = |p: &Progress| p.ended || p.msn > msn || (p.msn == msn && p.parts > part);
        match self.hold(&mut progress, passed).await {
            Hold::Reached => answer(),
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
    let stored = |container| objects.get(&ObjectName::Part { rendition, msn, part, container }).is_some();
    if p.msn > msn.saturating_add(1) || stored(Container::Fmp4) || stored(Container::Ts) {
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

/// The bytes `start..end` of an object, as slices of its chunks: only the chunks at either end
/// are cut, and cutting a `Bytes` shares its buffer.
fn slice_chunks(chunks: &[Bytes], start: u64, end: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for chunk in chunks {
        let (from, to) = (offset, offset + chunk.len() as u64);
        offset = to;
        if to <= start {
            continue;
        }
        if from >= end {
            break;
        }
        let cut_from = (start.saturating_sub(from)) as usize;
        let cut_to = (end.min(to) - from) as usize;
        out.push(if cut_from == 0 && cut_to == chunk.len() { chunk.clone() } else { chunk.slice(cut_from..cut_to) });
    }
    out
}

/// A `Range` value against an object of `len` bytes (RFC 9110 §14.1.1, §14.1.2).
fn byte_range(value: &str, len: u64) -> Ranged {
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    // Range units are case-insensitive (RFC 9110 §14.1); any other unit is ignored (§14.2).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    // A list (RFC 9110 §5.6.1): empty members and whitespace around commas are allowed.
    let mut specs = set.split(',').map(|s| s.trim_matches([' ', '\t'])).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    // A position too large for u64 is still a valid one, and lies past any object's end.
    let position = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (position(first), position(last)) {
        // suffix-range: the last `n` bytes; none of zero bytes satisfies (RFC 9110 §14.1.1).
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Bytes { first: len.saturating_sub(n), last: len - 1 }
            }
        }
        (Some(first), None) if last.is_empty() => {
            if first >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Bytes { first, last: len - 1 }
            }
        }
        // An int-range whose last position is before its first is invalid: ignored.
        (Some(first), Some(last)) if first <= last => {
            if first >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Bytes { first, last: last.min(len - 1) }
            }
        }
        _ => Ranged::Whole,
    }
}

/// The strong entity-tag of an object (RFC 9110 §8.8.3): its length and the digest of its bytes,
/// so it changes whenever the bytes do.
fn entity_tag(object: &Object) -> String {
    format!("\"{:x}-{:016x}\"", object.len(), object.digest)
}

/// Whether an `If-None-Match` value matches `etag` by the weak comparison (RFC 9110 §13.1.2,
/// §8.8.3.2): `*`, or any listed tag whose opaque part equals ours, `W/` or not.
fn none_match(value: &str, etag: &str) -> bool {
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        if rest.starts_with('*') {
            return true;
        }
        let Some((_weak, tag, after)) = split_entity_tag(rest) else {
            // Not an entity-tag list: the condition is ignored rather than guessed at.
            return false;
        };
        if tag == etag {
            return true;
        }
        rest = after;
    }
}

/// The first entity-tag of `s` (RFC 9110 §8.8.3): whether it is weak, the opaque-tag with its
/// quotes, and what follows it.
fn split_entity_tag(s: &str) -> Option<(bool, &str, &str)> {
    let (weak, s) = match s.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let end = s.strip_prefix('"')?.find('"')? + 1;
    Some((weak, &s[..=end], &s[end + 1..]))
}

/// Whether `If-Range` lets a range be served (RFC 9110 §13.1.5): a strong entity-tag equal to
/// ours, or exactly the object's `Last-Modified`. That date is a strong validator here because
/// only immutable objects, whose names are never reused, answer ranges.
fn if_range_matches(value: &str, object: &Object, etag: &str) -> bool {
    let value = value.trim_matches([' ', '\t']);
    if value.starts_with('"') || value.starts_with("W/") {
        return matches!(split_entity_tag(value), Some((false, tag, "")) if tag == etag);
    }
    object.cache == Cacheability::Immutable && parse_http_date(value) == Some(unix_seconds(object.stored_at))
}

/// IMF-fixdate (RFC 9110 §5.6.7), the only form an HTTP date may be sent in.
const IMF_FIXDATE: &[BorrowedFormatItem<'_>] =
    format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");

fn http_date(at: SystemTime) -> String {
    OffsetDateTime::from(at).format(IMF_FIXDATE).unwrap_or_default()
}

fn unix_seconds(at: SystemTime) -> i64 {
    OffsetDateTime::from(at).unix_timestamp()
}

/// An HTTP-date in any of its three forms, which a recipient must all accept (RFC 9110 §5.6.7):
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`, `Sun Nov  6 08:49:37 1994`.
/// Seconds since the Unix epoch; `None` for anything else.
fn parse_http_date(value: &str) -> Option<i64> {
    let fields: Vec<&str> = value.split([' ', ',', '-']).filter(|f| !f.is_empty()).collect();
    let (day, month, year, clock) = match fields[..] {
        [_weekday, day, month, year, clock, "GMT"] => (day, month, year, clock),
        [_weekday, month, day, clock, year] => (day, month, year, clock),
        _ => return None,
    };
    let number = |s: &str, digits: std::ops::RangeInclusive<usize>| {
        (digits.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u16>().ok()).flatten()
    };
    let mut year = i32::from(number(year, 2..=4)?);
    if year < 100 {
        // rfc850-date: a two-digit year more than 50 years ahead is in the previous century.
        let now = OffsetDateTime::now_utc().year();
        year += now - now % 100;
        if year > now + 50 {
            year -= 100;
        }
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)?;
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let day = u8::try_from(number(day, 1..=2)?).ok()?;
    let mut clock = clock.split(':');
    let (Some(h), Some(m), Some(sec), None) = (clock.next(), clock.next(), clock.next(), clock.next()) else {
        return None;
    };
    let part = |s: &str| number(s, 2..=2).and_then(|n| u8::try_from(n).ok());
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(part(h)?, part(m)?, part(sec)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
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
    // The built-in values as they go on the wire.
    const CACHE_LIVE: &str = "public, max-age=1";
    const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
    const CACHE_NOT_LIVE: &str = "public, max-age=2";
    const CACHE_MISS: &str = "no-store";
    const CACHE_RETRY: &str = "no-store";

    struct Fixture {
        store: Arc<Store>,
        origin: Arc<Origin>,
        channel: Arc<ChannelObjects>,
        shutdown: CancellationToken,
    }

    fn named(key: &str) -> ObjectName<'_> {
        ObjectName::from_key(key).unwrap_or_else(|| panic!("{key} is not a stored name"))
    }

    fn put(ch: &ChannelObjects, path: &str, bytes: &'static [u8], cache: Cacheability) {
        ch.put(&named(path), vec![Bytes::from_static(bytes)], cache);
    }

    /// Publishes as the packager does: objects first, then the progress that describes them.
    fn publish(ch: &ChannelObjects, playlist: &'static [u8], delta: &'static [u8], progress: Progress) {
        put(ch, "720p/index.m3u8", playlist, Cacheability::Live);
        put(ch, "720p/index.m3u8#skip", delta, Cacheability::Live);
        ch.set_progress("720p", progress);
    }

    fn put_part(ch: &ChannelObjects, msn: u64, part: u64, bytes: &'static [u8]) {
        put(ch, &format!("720p/{msn}.{part}.m4s"), bytes, Cacheability::Immutable);
    }

    /// A channel whose `720p` rendition has segments up to 4 complete and parts 5.0 and 5.1 out.
    fn fixture() -> Fixture {
        let store = Arc::new(Store::new());
        let channel = store.channel("demo");
        put(&channel, "master.m3u8", b"#EXTM3U\n", Cacheability::Live);
        channel.put(
            &named("720p/1.m4s"),
            vec![Bytes::from_static(b"moof"), Bytes::from_static(b"mdat")],
            Cacheability::Immutable,
        );
        put_part(&channel, 5, 0, b"part 5.0");
        put_part(&channel, 5, 1, b"part 5.1");
        publish(&channel, b"playlist v1", b"delta v1", Progress { msn: 5, parts: 2, ..Default::default() });
        let shutdown = CancellationToken::new();
        let origin = Arc::new(Origin::new(store.clone(), Arc::new(Metrics::new()), TARGETS, shutdown.clone()));
        Fixture { store, origin, channel, shutdown }
    }

    async fn get(o: &Origin, method: Method, path: &str) -> Response<Body> {
        get_with(o, method, path, &[]).await
    }

    async fn get_with(
        o: &Origin,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
    ) -> Response<Body> {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        o.handle(&req.body(()).expect("request")).await
    }

    fn with_cache(f: &Fixture, yaml: &str) -> Origin {
        let cache: CacheConfig = serde_yaml::from_str(yaml).expect("cache config");
        Origin::new(f.store.clone(), Arc::new(Metrics::new()), TARGETS, f.shutdown.clone())
            .with_cache_policy(CachePolicy::from_config(&cache, Duration::from_secs(16)))
    }

    fn cdn(r: &Response<Body>) -> Option<&str> {
        r.headers().get("cdn-cache-control").map(|v| v.to_str().expect("ascii"))
    }

    #[tokio::test]
    async fn the_cdn_preset_adds_cdn_cache_control_and_overrides_replace_either_header() {
        let f = fixture();
        f.store.channel("idle");
        let o = with_cache(&f, "preset: cdn");
        let r = get(&o, Method::GET, "/live/demo/720p/1.m4s").await;
        assert_eq!(
            (r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)),
            (CACHE_IMMUTABLE, Some("max-age=16"))
        );
        let r = get(&o, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=9").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_RETRY, Some("max-age=1")));
        let r = get(&o, Method::GET, "/live/idle/master.m3u8").await;
        assert_eq!(cdn(&r), Some("max-age=2"));
        // Playlists and plain misses keep one header for everyone.
        let r = get(&o, Method::GET, "/live/demo/master.m3u8").await;
        assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_LIVE, None));
        let r = get(&o, Method::GET, "/live/nope/master.m3u8").await;
        assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_MISS, None));

        let o = with_cache(
            &f,
            "cache_control: { playlist: \"public, max-age=0, must-revalidate\", media: \"public, max-age=600\" }\n\
             cdn_cache_control: { blocking_playlist: \"max-age=4\" }",
        );
        let r = get(&o, Method::GET, "/live/demo/720p/index.m3u8").await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=0, must-revalidate");
        let r = get(&o, Method::GET, "/live/demo/720p/5.0.m4s").await;
        assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), ("public, max-age=600", None));
        let r = get(&o, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=1").await;
        assert_eq!(
            (r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)),
            (CACHE_BLOCKING, Some("max-age=4"))
        );
        // A 304 carries the configured fields too (RFC 9110 §15.4.5).
        let r = get_with(&o, Method::GET, "/live/demo/720p/5.0.m4s", &[(header::IF_NONE_MATCH, "*")]).await;
        assert_eq!(
            (r.status(), r.headers()[header::CACHE_CONTROL].to_str().unwrap()),
            (StatusCode::NOT_MODIFIED, "public, max-age=600")
        );
    }

    #[tokio::test]
    async fn playlists_are_gzipped_for_clients_that_accept_it_with_their_own_tag() {
        use std::io::Read;
        let f = fixture();
        let text: String = (0..100).map(|i| format!("#EXTINF:2.00000,\n{i}.m4s\n")).collect();
        let text: &'static str = Box::leak(text.into_boxed_str());
        put(&f.channel, "720p/index.m3u8", text.as_bytes(), Cacheability::Live);
        let path = "/live/demo/720p/index.m3u8";

        let plain = get(&f.origin, Method::GET, path).await;
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(header(&plain, header::VARY), "Accept-Encoding");
        let plain_tag = header(&plain, header::ETAG).to_owned();

        let gz = get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, "br;q=1, gzip;q=0.8")]).await;
        assert_eq!(header(&gz, header::CONTENT_ENCODING), "gzip");
        assert_eq!(header(&gz, header::VARY), "Accept-Encoding");
        let gz_tag = header(&gz, header::ETAG).to_owned();
        assert_ne!(gz_tag, plain_tag, "each form has its own strong tag");
        let length: usize = header(&gz, header::CONTENT_LENGTH).parse().unwrap();
        let bytes = body(gz).await;
        assert_eq!(bytes.len(), length);
        assert!(length < text.len() / 3, "{length} of {}", text.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut back).expect("gzip");
        assert_eq!(back, text);

        // Revalidation compares the tag of the form asked for.
        let r = get_with(
            &f.origin,
            Method::GET,
            path,
            &[(header::ACCEPT_ENCODING, "gzip"), (header::IF_NONE_MATCH, &gz_tag)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = get_with(
            &f.origin,
            Method::GET,
            path,
            &[(header::ACCEPT_ENCODING, "gzip"), (header::IF_NONE_MATCH, &plain_tag)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);

        // gzip refused, or not offered: identity; media is never compressed.
        for refused in ["gzip;q=0", "identity", "*;q=0", "br"] {
            let r = get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, refused)]).await;
            assert!(r.headers().get(header::CONTENT_ENCODING).is_none(), "{refused}");
        }
        let r = get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, "*")]).await;
        assert_eq!(header(&r, header::CONTENT_ENCODING), "gzip");
        let r = get_with(&f.origin, Method::GET, "/live/demo/720p/1.m4s", &[(header::ACCEPT_ENCODING, "gzip")]).await;
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none() && r.headers().get(header::VARY).is_none());
    }

    /// A segment of three chunks, `0123` `4567` `89ab`, stored as `720p/2.m4s`.
    fn put_chunked_segment(ch: &ChannelObjects) {
        let chunks = [&b"0123"[..], b"4567", b"89ab"].map(Bytes::from_static).to_vec();
        ch.put(&named("720p/2.m4s"), chunks, Cacheability::Immutable);
    }

    fn header(r: &Response<Body>, name: header::HeaderName) -> &str {
        r.headers().get(&name).map_or("", |v| v.to_str().expect("text"))
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
        publish(&f.channel, b"playlist v1 again", b"delta", Progress { msn: 5, parts: 2, ..Default::default() });
        settle().await;
        assert_eq!(f.origin.waiting(), 2);
        let start = Instant::now();
        put_part(&f.channel, 5, 2, b"part 5.2");
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
        let r = held.await.expect("task");
        assert!(start.elapsed() < AT_ONCE, "answered on the update, not by a timer");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING);
        assert_eq!(body(r).await, "playlist v2");
        settle().await;
        assert_eq!(f.origin.waiting(), 1, "segment 5 is not complete yet");
        publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 0, ..Default::default() });
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
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
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

    /// At 24 fps the playlist advertises 1/6 s parts (0.16667): the limit is 3 / 0.16667 parts,
    /// so 17 ahead are held, not the 15 of the configured 0.2 s.
    #[tokio::test]
    async fn the_advance_part_limit_follows_the_advertised_part_target() {
        let f = fixture();
        let progress = Progress { msn: 5, parts: 2, part_target_us: 166_667, ..Default::default() };
        publish(&f.channel, b"playlist 24 fps", b"delta 24 fps", progress);
        let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=19").await;
        assert_eq!(r.status(), 400, "18 parts ahead");
        let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=18");
        settle().await;
        assert_eq!(f.origin.waiting(), 1, "17 parts ahead is within the limit");
        held.abort();
    }

    #[tokio::test]
    async fn ended_playlists_ignore_msn_and_part() {
        let f = fixture();
        publish(
            &f.channel,
            b"playlist ended",
            b"delta ended",
            Progress { msn: 6, parts: 0, ended: true, ..Default::default() },
        );
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
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
        let r = held.await.expect("task");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING);
        assert_eq!(body(r).await, "delta v2");
        // Without a stored delta update the whole playlist answers.
        f.channel.remove(&named("720p/index.m3u8#skip"));
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
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
        let r = next.await.expect("task");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
        assert_eq!(body(r).await, "part 5.2");
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        // Segment 5 completes; 6.0 comes with the next update.
        publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 0, ..Default::default() });
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        put_part(&f.channel, 6, 0, b"part 6.0");
        publish(&f.channel, b"playlist v4", b"delta v4", Progress { msn: 6, parts: 1, ..Default::default() });
        assert_eq!(body(following.await.expect("task")).await, "part 6.0");
    }

    #[tokio::test]
    async fn a_hinted_part_the_segment_ended_without_is_404() {
        let f = fixture();
        let held = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
        settle().await;
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 6, parts: 0, ..Default::default() });
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
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 6, parts: 0, ..Default::default() });
        // 5.2 is the last part of segment 5: answered at once.
        let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2").await;
        assert_eq!(body(r).await, "playlist v2");
        // 5.3 does not exist, so it stands for 6.0 (RFC 8216bis §6.2.5.2).
        let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=3");
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        put_part(&f.channel, 6, 0, b"part 6.0");
        publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 1, ..Default::default() });
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
        put(&f.channel, "audio/index.m3u8", b"audio playlist", Cacheability::Live);
        let r = get(&f.origin, Method::GET, "/live/demo/audio/index.m3u8?_HLS_msn=9&_HLS_part=1").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
        assert_eq!(body(r).await, "audio playlist");
        let r = get(&f.origin, Method::GET, "/live/demo/video/index.m3u8?_HLS_msn=1").await;
        assert_eq!(r.status(), 404);
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(SystemTime::UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        for form in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_http_date(form), Some(784_111_777), "{form}");
        }
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn objects_carry_a_strong_etag_and_last_modified() {
        let f = fixture();
        let stored = f.channel.get(&named("720p/1.m4s")).expect("stored");
        let r = get(&f.origin, Method::GET, "/live/demo/720p/1.m4s").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, header::ETAG), format!("\"8-{:016x}\"", stored.digest));
        assert_eq!(header(&r, header::LAST_MODIFIED), http_date(stored.stored_at));
        assert!(header(&r, header::LAST_MODIFIED).ends_with(" GMT"));
        assert_eq!(header(&r, header::ACCEPT_RANGES), "bytes");
        // The same bytes stored again are the same representation; other bytes are not.
        put_part(&f.channel, 7, 0, b"moofmdat");
        let again = get(&f.origin, Method::GET, "/live/demo/720p/7.0.m4s").await;
        assert_eq!(header(&again, header::ETAG), header(&r, header::ETAG));
        let playlist = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8").await;
        assert_ne!(header(&playlist, header::ETAG), header(&r, header::ETAG));
        assert_eq!(header(&playlist, header::ACCEPT_RANGES), "", "playlists are served whole");
    }

    #[tokio::test]
    async fn if_none_match_round_trip_is_304_without_content() {
        let f = fixture();
        for path in ["/live/demo/720p/1.m4s", "/live/demo/master.m3u8"] {
            let first = get(&f.origin, Method::GET, path).await;
            let etag = header(&first, header::ETAG).to_owned();
            for value in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}"), "*".to_owned()] {
                let r = get_with(&f.origin, Method::GET, path, &[(header::IF_NONE_MATCH, &value)]).await;
                assert_eq!(r.status(), 304, "{path} {value}");
                assert_eq!(header(&r, header::ETAG), etag);
                assert_eq!(header(&r, header::CACHE_CONTROL), header(&first, header::CACHE_CONTROL));
                assert_eq!(header(&r, header::LAST_MODIFIED), header(&first, header::LAST_MODIFIED));
                assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
                assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
                assert!(r.headers().get(header::CONTENT_TYPE).is_none());
                assert!(body(r).await.is_empty());
            }
            // A list split over two field lines.
            let r = get_with(
                &f.origin,
                Method::GET,
                path,
                &[(header::IF_NONE_MATCH, "\"a,b\""), (header::IF_NONE_MATCH, &etag)],
            )
            .await;
            assert_eq!(r.status(), 304, "{path}");
            for value in ["\"other\"", "W/\"other\", \"a,b\"", "garbage"] {
                let r = get_with(&f.origin, Method::GET, path, &[(header::IF_NONE_MATCH, value)]).await;
                assert_eq!(r.status(), 200, "{path} {value}");
                assert_eq!(header(&r, header::ETAG), etag);
            }
        }
    }

    #[tokio::test]
    async fn if_modified_since_is_304_unless_if_none_match_is_present() {
        let f = fixture();
        let stored = f.channel.get(&named("720p/1.m4s")).expect("stored");
        let path = "/live/demo/720p/1.m4s";
        let at = http_date(stored.stored_at);
        let earlier = http_date(stored.stored_at - Duration::from_secs(2));
        let r = get_with(&f.origin, Method::GET, path, &[(header::IF_MODIFIED_SINCE, &at)]).await;
        assert_eq!(r.status(), 304);
        assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_IMMUTABLE);
        assert_eq!(header(&r, header::LAST_MODIFIED), at);
        for headers in [
            vec![(header::IF_MODIFIED_SINCE, earlier.as_str())],
            vec![(header::IF_MODIFIED_SINCE, "not a date")],
            // If-None-Match decides alone when present (RFC 9110 §13.1.3).
            vec![(header::IF_NONE_MATCH, "\"other\""), (header::IF_MODIFIED_SINCE, at.as_str())],
        ] {
            let r = get_with(&f.origin, Method::GET, path, &headers).await;
            assert_eq!(r.status(), 200, "{headers:?}");
            assert_eq!(body(r).await, "moofmdat");
        }
        // A playlist may have changed within the second its Last-Modified names.
        let playlist = f.channel.get(&named("720p/index.m3u8")).expect("stored");
        let same_second = http_date(playlist.stored_at);
        let next_second = http_date(playlist.stored_at + Duration::from_secs(1));
        let ask = |since: String| {
            let o = f.origin.clone();
            async move {
                get_with(&o, Method::GET, "/live/demo/720p/index.m3u8", &[(header::IF_MODIFIED_SINCE, &since)])
                    .await
                    .status()
            }
        };
        assert_eq!(ask(same_second).await, 200);
        assert_eq!(ask(next_second).await, 304);
    }

    #[tokio::test]
    async fn blocking_reloads_revalidate_against_the_playlist_they_wait_for() {
        let f = fixture();
        let v1 = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8").await;
        let etag = header(&v1, header::ETAG).to_owned();
        let path = "/live/demo/720p/index.m3u8?_HLS_msn=4";
        let r = get_with(&f.origin, Method::GET, path, &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(r.status(), 304);
        assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_BLOCKING);
        let held = {
            let (o, etag) = (f.origin.clone(), etag.clone());
            tokio::spawn(async move {
                let path = "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2";
                get_with(&o, Method::GET, path, &[(header::IF_NONE_MATCH, &etag)]).await
            })
        };
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
        let r = held.await.expect("task");
        assert_eq!(r.status(), 200);
        assert_ne!(header(&r, header::ETAG), etag);
        assert_eq!(body(r).await, "playlist v2");
    }

    #[tokio::test]
    async fn single_byte_ranges_are_206_sliced_from_the_chunks() {
        let f = fixture();
        put_chunked_segment(&f.channel);
        let full = get(&f.origin, Method::GET, "/live/demo/720p/2.m4s").await;
        let etag = header(&full, header::ETAG).to_owned();
        for (range, content_range, want) in [
            ("bytes=0-0", "bytes 0-0/12", "0"),
            ("bytes=0-3", "bytes 0-3/12", "0123"),
            ("bytes=3-9", "bytes 3-9/12", "3456789"),
            ("bytes=4-7", "bytes 4-7/12", "4567"),
            ("bytes=-5", "bytes 7-11/12", "789ab"),
            ("bytes=-100", "bytes 0-11/12", "0123456789ab"),
            ("bytes=10-", "bytes 10-11/12", "ab"),
            ("bytes=8-1000", "bytes 8-11/12", "89ab"),
            ("BYTES=1-2", "bytes 1-2/12", "12"),
            ("bytes=1-2, ", "bytes 1-2/12", "12"),
        ] {
            let r = get_with(&f.origin, Method::GET, "/live/demo/720p/2.m4s", &[(header::RANGE, range)]).await;
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(header(&r, header::CONTENT_RANGE), content_range, "{range}");
            assert_eq!(header(&r, header::CONTENT_LENGTH), want.len().to_string(), "{range}");
            assert_eq!(header(&r, header::CONTENT_TYPE), "video/iso.segment");
            assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_IMMUTABLE);
            assert_eq!(header(&r, header::ETAG), etag);
            assert_eq!(header(&r, header::ACCEPT_RANGES), "bytes");
            assert_eq!(body(r).await, want, "{range}");
        }
    }

    #[tokio::test]
    async fn a_range_shares_the_stored_buffers() {
        static SEGMENT: [u8; 12] = *b"0123456789ab";
        let chunks = vec![Bytes::from_static(&SEGMENT[..4]), Bytes::from_static(&SEGMENT[4..])];
        let f = fixture();
        f.channel.put(&named("720p/3.m4s"), chunks, Cacheability::Immutable);
        let r = get_with(&f.origin, Method::GET, "/live/demo/720p/3.m4s", &[(header::RANGE, "bytes=2-9")]).await;
        let mut body = r.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("infallible").into_data() else { continue };
            frames.push(data);
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].as_ptr(), SEGMENT[2..].as_ptr());
        assert_eq!(frames[1].as_ptr(), SEGMENT[4..].as_ptr());
        assert_eq!(frames.concat(), b"23456789");
    }

    #[tokio::test]
    async fn ranges_that_cannot_be_served_as_asked() {
        let f = fixture();
        put_chunked_segment(&f.channel);
        let path = "/live/demo/720p/2.m4s";
        for range in ["bytes=12-", "bytes=12-20", "bytes=-0"] {
            let r = get_with(&f.origin, Method::GET, path, &[(header::RANGE, range)]).await;
            assert_eq!(r.status(), 416, "{range}");
            assert_eq!(header(&r, header::CONTENT_RANGE), "bytes */12", "{range}");
            assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_MISS);
        }
        // Several ranges, invalid ones and other units: the whole segment.
        for range in ["bytes=0-1,4-5", "bytes=0-1, 20-30", "bytes=5-2", "bytes=a-b", "bytes=1", "items=0-1", "0-1"] {
            let r = get_with(&f.origin, Method::GET, path, &[(header::RANGE, range)]).await;
            assert_eq!(r.status(), 200, "{range}");
            assert_eq!(header(&r, header::CONTENT_LENGTH), "12", "{range}");
            assert!(r.headers().get(header::CONTENT_RANGE).is_none());
            assert_eq!(body(r).await, "0123456789ab", "{range}");
        }
        // Playlists are always whole.
        let r = get_with(&f.origin, Method::GET, "/live/demo/720p/index.m3u8", &[(header::RANGE, "bytes=0-3")]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(body(r).await, "playlist v1");
    }

    #[tokio::test]
    async fn if_range_gates_the_range_on_the_validator() {
        let f = fixture();
        put_chunked_segment(&f.channel);
        let path = "/live/demo/720p/2.m4s";
        let full = get(&f.origin, Method::GET, path).await;
        let etag = header(&full, header::ETAG).to_owned();
        let modified = header(&full, header::LAST_MODIFIED).to_owned();
        let ranged = |if_range: String| {
            let o = f.origin.clone();
            async move {
                get_with(&o, Method::GET, path, &[(header::RANGE, "bytes=4-7"), (header::IF_RANGE, &if_range)]).await
            }
        };
        for matching in [etag.clone(), modified] {
            let r = ranged(matching.clone()).await;
            assert_eq!(r.status(), 206, "{matching}");
            assert_eq!(body(r).await, "4567");
        }
        for other in ["\"other\"".to_owned(), format!("W/{etag}"), "Thu, 01 Jan 1970 00:00:00 GMT".to_owned()] {
            let r = ranged(other.clone()).await;
            assert_eq!(r.status(), 200, "{other}");
            assert_eq!(header(&r, header::CONTENT_LENGTH), "12");
            assert_eq!(body(r).await, "0123456789ab", "{other}");
        }
    }

    #[tokio::test]
    async fn init_segments_and_held_parts_take_ranges() {
        let f = fixture();
        put(&f.channel, "720p/init-0.mp4", b"ftypmoov", Cacheability::Immutable);
        let r = get_with(&f.origin, Method::GET, "/live/demo/720p/init-0.mp4", &[(header::RANGE, "bytes=4-")]).await;
        assert_eq!(r.status(), 206);
        assert_eq!(header(&r, header::CONTENT_TYPE), "video/mp4");
        assert_eq!(header(&r, header::CONTENT_RANGE), "bytes 4-7/8");
        assert_eq!(body(r).await, "moov");
        let held = {
            let o = f.origin.clone();
            tokio::spawn(async move {
                get_with(&o, Method::GET, "/live/demo/720p/5.2.m4s", &[(header::RANGE, "bytes=-3")]).await
            })
        };
        settle().await;
        assert_eq!(f.origin.waiting(), 1);
        put_part(&f.channel, 5, 2, b"part 5.2");
        publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
        let r = held.await.expect("task");
        assert_eq!(r.status(), 206);
        assert_eq!(header(&r, header::CONTENT_RANGE), "bytes 5-7/8");
        assert_eq!(body(r).await, "5.2");
    }

    #[tokio::test]
    async fn head_has_the_headers_of_get() {
        let f = fixture();
        for path in ["/live/demo/720p/1.m4s", "/live/demo/720p/index.m3u8", "/live/demo/master.m3u8"] {
            let g = get(&f.origin, Method::GET, path).await;
            let h = get(&f.origin, Method::HEAD, path).await;
            assert_eq!(h.status(), 200);
            assert_eq!(h.headers(), g.headers(), "{path}");
            assert!(http_body::Body::is_end_stream(h.body()));
            let etag = header(&g, header::ETAG).to_owned();
            let h = get_with(&f.origin, Method::HEAD, path, &[(header::IF_NONE_MATCH, &etag)]).await;
            assert_eq!(h.status(), 304, "{path}");
        }
        // Range is defined for GET alone (RFC 9110 §14.2): HEAD describes the whole segment.
        let h = get_with(&f.origin, Method::HEAD, "/live/demo/720p/1.m4s", &[(header::RANGE, "bytes=0-1")]).await;
        assert_eq!(h.status(), 200);
        assert_eq!(header(&h, header::CONTENT_LENGTH), "8");
    }

    #[tokio::test]
    async fn a_configured_channel_that_is_not_live_is_a_briefly_cached_404() {
        let f = fixture();
        f.store.channel("idle");
        let starting = f.store.channel("starting");
        put(&starting, "720p/init-0.mp4", b"ftypmoov", Cacheability::Immutable);
        starting.set_progress("720p", Progress { msn: 0, parts: 0, ..Default::default() });
        for path in [
            "/live/idle/master.m3u8",
            "/live/idle/720p/index.m3u8",
            "/live/idle/720p/index.m3u8?_HLS_msn=3",
            "/live/idle/720p/0.0.m4s",
            "/live/starting/master.m3u8",
            "/live/starting/720p/index.m3u8",
            "/live/starting/720p/9.m4s",
        ] {
            let r = get(&f.origin, Method::GET, path).await;
            assert_eq!(r.status(), 404, "{path}");
            assert_eq!(header(&r, header::CACHE_CONTROL), "public, max-age=2", "{path}");
            assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
        }
        for path in ["/live/unknown/master.m3u8", "/live/unknown/720p/index.m3u8", "/live/demo/720p/9.m4s"] {
            let r = get(&f.origin, Method::GET, path).await;
            assert_eq!(r.status(), 404, "{path}");
            assert_eq!(header(&r, header::CACHE_CONTROL), "no-store", "{path}");
        }
    }

    #[tokio::test]
    async fn cors_exposes_validators_and_ranges_and_preflight_allows_them() {
        let f = fixture();
        let expose = "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified";
        let segment = "/live/demo/720p/1.m4s";
        let etag = header(&get(&f.origin, Method::GET, segment).await, header::ETAG).to_owned();
        for r in [
            get(&f.origin, Method::GET, segment).await,
            get_with(&f.origin, Method::GET, segment, &[(header::RANGE, "bytes=0-1")]).await,
            get_with(&f.origin, Method::GET, segment, &[(header::IF_NONE_MATCH, &etag)]).await,
            get_with(&f.origin, Method::GET, segment, &[(header::RANGE, "bytes=99-")]).await,
            get(&f.origin, Method::GET, "/live/demo/nothing.m4s").await,
        ] {
            assert_eq!(header(&r, header::ACCESS_CONTROL_EXPOSE_HEADERS), expose, "{}", r.status());
            assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
        }
        let r = get_with(
            &f.origin,
            Method::OPTIONS,
            segment,
            &[
                (header::ORIGIN, "https://player.example"),
                (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
                (header::ACCESS_CONTROL_REQUEST_HEADERS, "range, if-none-match"),
            ],
        )
        .await;
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
        assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_METHODS), "GET, HEAD, OPTIONS");
        assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_HEADERS), "*");
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

    #[tokio::test]
    async fn the_thumbnail_is_a_jpeg_cached_for_its_refresh_interval() {
        let f = fixture();
        put(&f.channel, "thumb.jpg", b"\xFF\xD8\xFF\xE0 a jpeg", Cacheability::Refreshed(2));
        let r = get(&f.origin, Method::GET, "/live/demo/thumb.jpg").await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, header::CONTENT_TYPE), "image/jpeg");
        assert_eq!(header(&r, header::CACHE_CONTROL), "public, max-age=2");
        assert_eq!(header(&r, header::ACCEPT_RANGES), "", "replaced under its name, so never ranged");
        let etag = header(&r, header::ETAG).to_owned();
        assert!(etag.starts_with('"'), "{etag}");
        let again = get_with(&f.origin, Method::GET, "/live/demo/thumb.jpg", &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(again.status(), 304);
        assert_eq!(header(&again, header::CACHE_CONTROL), "public, max-age=2");
        // A new thumbnail under the same name has a new validator.
        put(&f.channel, "thumb.jpg", b"\xFF\xD8 another", Cacheability::Refreshed(2));
        let r = get_with(&f.origin, Method::GET, "/live/demo/thumb.jpg", &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(r.status(), 200);
        assert_ne!(header(&r, header::ETAG), etag);
        // Unknown channel: 404 no-store; a configured channel that is not live: briefly cached.
        let r = get(&f.origin, Method::GET, "/live/nope/thumb.jpg").await;
        assert_eq!((r.status(), header(&r, header::CACHE_CONTROL)), (StatusCode::NOT_FOUND, CACHE_MISS));
        f.store.channel("idle");
        let r = get(&f.origin, Method::GET, "/live/idle/thumb.jpg").await;
        assert_eq!((r.status(), header(&r, header::CACHE_CONTROL)), (StatusCode::NOT_FOUND, CACHE_NOT_LIVE));
    }

    #[test]
    fn every_path_has_a_route_from_the_fixed_list() {
        let cases = [
            ("/live/demo/master.m3u8", None, "master"),
            ("/live/demo/720p/index.m3u8", None, "media_playlist"),
            ("/live/demo/720p/index.m3u8", Some("_HLS_msn=5&_HLS_part=1"), "blocking_playlist"),
            ("/live/demo/720p/index.m3u8", Some("_HLS_skip=YES"), "delta_playlist"),
            ("/live/demo/720p/index.m3u8", Some("_HLS_msn=5&_HLS_skip=v2"), "delta_playlist"),
            ("/live/demo/720p/index.m3u8", Some("_HLS_msn=x"), "media_playlist"),
            ("/live/demo/720p/init-17.mp4", None, "init"),
            ("/live/demo/thumb.jpg", None, "thumbnail"),
            ("/live/demo/720p/thumb.jpg", None, "other"),
            ("/live/demo/720p/17.m4s", None, "segment"),
            ("/live/demo/audio/17.ts", None, "segment"),
            ("/live/demo/720p/17.3.m4s", None, "part"),
            ("/live/demo/720p/17.3.ts", None, "part"),
            ("/live/demo/720p/x.m4s", None, "other"),
            ("/live/demo/720p/master.m3u8", None, "other"),
            ("/live/demo/index.m3u8", None, "other"),
            ("/preview/demo", None, "preview"),
            ("/preview/hls.min.js", None, "player_js"),
            ("/favicon.ico", None, "other"),
            ("/live/demo", None, "other"),
        ];
        for (path, query, route) in cases {
            assert_eq!(route_of(path, query).0, route, "{path}?{query:?}");
        }
        assert_eq!(route_of("/live/shop/720p/1.m4s", None).1, Some("shop"));
        assert_eq!(route_of("/preview/shop", None).1, None);
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_and_code_and_per_configured_channel() {
        let f = fixture();
        for path in
            ["/live/demo/master.m3u8", "/live/demo/720p/1.m4s", "/live/demo/720p/9.m4s", "/live/nope/master.m3u8"]
        {
            get(&f.origin, Method::GET, path).await;
        }
        let m = &f.origin.metrics;
        let count = |route: &str, code: &str| m.http_requests.with_label_values(&["origin", route, code]).get();
        assert_eq!((count("master", "200"), count("segment", "200"), count("segment", "404")), (1, 1, 1));
        assert_eq!(count("master", "404"), 1, "the unknown channel's request is counted by route");
        assert_eq!(m.http_request_duration.with_label_values(&["origin", "segment"]).get_sample_count(), 2);
        assert_eq!(m.origin_requests.with_label_values(&["demo", "master"]).get(), 1);
        assert_eq!(m.origin_requests.with_label_values(&["demo", "segment"]).get(), 2);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(!text.contains("channel=\"nope\""), "an unknown channel makes no series: {text}");
    }
}
