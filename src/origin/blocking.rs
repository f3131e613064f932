//! LL-HLS blocking (RFC 8216bis §6.2.5, §6.2.6): delivery directives, the Advance Part Limit, and
//! requests held until the rendition's [`Progress`] reaches what they ask for (a playlist update,
//! or the part a preload hint names), never longer than three target durations.

use std::time::Duration;

use http::Response;
use http::header::HeaderValue;
use tokio::sync::watch;

use super::cache::CacheClass;
use super::conditional::Conditions;
use super::{Origin, bad_request, missing, serve, unavailable};
use crate::config::HlsConfig;
use crate::http::Body;
use crate::media::Container;
use crate::metrics::GaugeGuard;
use crate::store::{ChannelObjects, ObjectName, Progress};
use crate::sync::lock;

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
    pub(super) fn hold_limit(&self) -> Duration {
        3 * self.target_duration
    }

    /// RFC 8216bis §6.2.5.2: the Advance Part Limit is three divided by the Part Target Duration
    /// when that is under one second, three otherwise (about three seconds' worth of parts). Part
    /// counts are whole, so the limit is too; the epsilon keeps 3 / 0.2 at 15, not 14.
    pub(super) fn advance_part_limit(&self) -> u64 {
        Self::advance_part_limit_for(self.part_target)
    }

    /// The Advance Part Limit for a PART-TARGET of `part_target` seconds.
    pub(super) fn advance_part_limit_for(part_target: f64) -> u64 {
        if part_target < 1.0 { (3.0 / part_target + 1e-9).floor() as u64 } else { 3 }
    }

    /// `Cache-Control` for playlists answering `_HLS_msn`. The URL names a state of the playlist
    /// that, once reached, stays reached, so the answer may be cached past the one second of a
    /// plain reload: CDNs only collapse requests onto cacheable responses. One target duration is
    /// the bound: every part such a playlist lists is still kept for at least that long after
    /// (parts stay listed for three target durations, RFC 8216bis §6.2.2), and a client that
    /// fell behind never gets a playlist more than a segment out of date.
    pub(super) fn blocking_cache(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("public, max-age={}", self.target_duration.as_secs()))
            .unwrap_or_else(|_| HeaderValue::from_static(CacheClass::BlockingPlaylist.default_value()))
    }
}

/// Delivery directives of a media playlist request (RFC 8216bis §6.2.5).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Directives {
    pub(super) msn: Option<u64>,
    pub(super) part: Option<u64>,
    /// `_HLS_skip=YES` or `v2`: answer with the delta update. This origin does not skip
    /// date ranges, so `v2` gets the same playlist as `YES` (RFC 8216bis §6.2.5.1 lets a server
    /// skip less than asked).
    pub(super) skip: bool,
}

/// Why a request with delivery directives is refused (the text of its 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadDirective {
    NotANumber,
    PartWithoutMsn,
    MsnTooFarAhead,
    PartTooFarAhead,
}

impl BadDirective {
    pub(super) fn text(self) -> &'static str {
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
pub(super) enum Hold {
    /// The awaited progress was reached.
    Reached,
    /// Three target durations went by first.
    TimedOut,
    /// The daemon is stopping.
    ShuttingDown,
    /// `http.max_held_requests` requests are held already.
    Full,
}

impl Origin {
    /// A media playlist request, with or without delivery directives (RFC 8216bis §6.2.5.2).
    pub(super) async fn media_playlist(
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
                Hold::Full => return too_many_held(),
            }
        }
        answer(Some(&self.blocking_cache))
    }

    /// Refuses directives that run ahead of the playlist (RFC 8216bis §6.2.5.2): an `_HLS_msn`
    /// beyond the last complete segment plus two, or an `_HLS_part` more than the Advance Part
    /// Limit beyond the last part published.
    pub(super) fn check_advance(&self, msn: u64, part: Option<u64>, now: &Progress) -> Result<(), BadDirective> {
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
    pub(super) async fn hinted_part(
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
            Hold::Full => too_many_held(),
        }
    }

    /// Waits for `done` to hold for the rendition's progress, at most three target durations.
    /// Wakes only on progress updates: no polling.
    pub(super) async fn hold(
        &self,
        progress: &mut watch::Receiver<Progress>,
        done: impl Fn(&Progress) -> bool,
    ) -> Hold {
        let Ok(_place) = self.held_slots.try_acquire() else {
            self.metrics.held_refused.inc();
            let now = std::time::Instant::now();
            let mut last = lock(&self.held_full_logged);
            if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                *last = Some(now);
                tracing::warn!(
                    config_key = "http.max_held_requests",
                    limit = self.held_limit,
                    "LL-HLS requests held at their limit: more are answered 503 with Retry-After (repeated at most every 10 s; ladderd_http_held_refused_total counts each)"
                );
            }
            return Hold::Full;
        };
        let _waiting = GaugeGuard::new(&self.waiting);
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

/// 503 for a request that would be held when `http.max_held_requests` are: come back in a
/// second (RFC 9110 §10.2.3), by when held requests have been answered.
fn too_many_held() -> Response<Body> {
    let mut r = unavailable("too many requests are waiting for the live edge; retry\n");
    r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Whether the playlist already holds what `_HLS_msn`/`_HLS_part` ask for (RFC 8216bis
/// §6.2.5.2): segment `msn` complete, or part `part` of it published. A part index beyond the
/// last part of a complete segment means part 0 of the following segment.
pub(super) fn reaches(objects: &ChannelObjects, rendition: &str, msn: u64, part: Option<u64>, p: &Progress) -> bool {
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
pub(super) fn directives(query: Option<&str>) -> Result<Directives, BadDirective> {
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
