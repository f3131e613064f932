//! How long caches may keep each kind of origin response (`http.cache`): the built-in
//! `Cache-Control` values, the CDN preset's `CDN-Cache-Control` (RFC 9213), and overrides.

use std::time::Duration;

use http::Response;
use http::header::{self, HeaderValue};

use crate::config::{CacheConfig, CachePreset};
use crate::http::Body;

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
    pub(super) const ALL: [CacheClass; 6] = [
        CacheClass::Playlist,
        CacheClass::BlockingPlaylist,
        CacheClass::Media,
        CacheClass::NotLive,
        CacheClass::Retry,
        CacheClass::Miss,
    ];

    /// The built-in `Cache-Control` (the `origin` preset); blocking playlists get theirs from
    /// [`Targets::blocking_cache`].
    pub(super) fn default_value(self) -> &'static str {
        match self {
            CacheClass::Playlist | CacheClass::BlockingPlaylist => "public, max-age=1",
            CacheClass::Media => "public, max-age=31536000, immutable",
            CacheClass::NotLive => "public, max-age=2",
            CacheClass::Retry | CacheClass::Miss => "no-store",
        }
    }

    /// The key naming this kind in `http.cache.*` (the order of `CacheValues::entries`).
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// `Cache-Control` and `CDN-Cache-Control` per [`CacheClass`], from `http.cache`.
#[derive(Debug, Clone, Default)]
pub struct CachePolicy {
    /// Replacements of the built-in `Cache-Control`; `None` keeps it.
    pub(super) cache_control: [Option<HeaderValue>; 6],
    pub(super) cdn_cache_control: [Option<HeaderValue>; 6],
}

/// RFC 9213 §2: the targeted field CDNs use in place of `Cache-Control`.
pub(super) const CDN_CACHE_CONTROL: header::HeaderName = header::HeaderName::from_static("cdn-cache-control");

impl CachePolicy {
    /// The policy `http.cache` describes. `keep_media` is how long the origin keeps a segment
    /// from its publication (listed, then the RFC 8216 §6.2.2 period after it leaves the
    /// playlist), the `cdn` preset's media lifetime at the CDN.
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
    pub(super) fn apply(&self, resp: &mut Response<Body>) {
        let Some(class) = resp.extensions_mut().remove::<CacheClass>() else { return };
        if let Some(v) = &self.cache_control[class.index()] {
            resp.headers_mut().insert(header::CACHE_CONTROL, v.clone());
        }
        if let Some(v) = &self.cdn_cache_control[class.index()] {
            resp.headers_mut().insert(CDN_CACHE_CONTROL, v.clone());
        }
    }
}
