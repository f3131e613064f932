//! The names of stored objects: one definition, rendered by the packager and parsed by the
//! origin.
//!
//! A name is a path below a channel's root (`/live/{channel}/`): the master playlist and the
//! thumbnail at the top, everything of a rendition under its name. Inside a rendition's media
//! playlist its objects are referred to by [`ObjectName::file`], relative to the playlist.
//!
//! Segment and init names carry numbers that never repeat (media sequence numbers start from the
//! wall clock, and an init segment is named after the first segment it serves), so a URL always
//! names the same bytes and caches may keep media as long as they like.

use std::fmt;

use crate::media::Container;

/// A rendition's media playlist, the one file name every rendition has.
const MEDIA_PLAYLIST: &str = "index.m3u8";
/// The channel's master playlist.
const MASTER_PLAYLIST: &str = "master.m3u8";
/// The channel's latest picture.
const THUMBNAIL: &str = "thumb.jpg";
/// A recording's description (start, end, renditions, timed-metadata events).
const MANIFEST: &str = "manifest.json";
/// Appended to a media playlist's name for its stored delta update. `#` cannot occur in a
/// request path (it starts the fragment, RFC 3986 §3.5), so no URL names the delta directly:
/// it is served for `index.m3u8?_HLS_skip=YES` (RFC 8216bis §6.2.5.1).
const DELTA_SUFFIX: &str = "#skip";

/// Content type of playlists (RFC 8216bis §4).
pub const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

/// What a stored object is, and where it lives below its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectName<'a> {
    /// `master.m3u8`.
    Master,
    /// `thumb.jpg`.
    Thumbnail,
    /// `manifest.json`: what a recording holds, beside its master playlist.
    Manifest,
    /// `{rendition}/index.m3u8`.
    MediaPlaylist { rendition: &'a str },
    /// The delta update of `{rendition}/index.m3u8` (stored only; see [`DELTA_SUFFIX`]).
    Delta { rendition: &'a str },
    /// `{rendition}/init-{msn}.mp4`: the fMP4 init segment first used by segment `msn`.
    Init { rendition: &'a str, msn: u64 },
    /// `{rendition}/{msn}.m4s` or `.ts`.
    Segment { rendition: &'a str, msn: u64, container: Container },
    /// `{rendition}/{msn}.{part}.m4s` or `.ts`: part `part` of segment `msn`.
    Part { rendition: &'a str, msn: u64, part: u64, container: Container },
}

impl<'a> ObjectName<'a> {
    /// Parses a path below a channel's root, as the origin receives it. Only names this module
    /// renders parse; anything else (an empty segment, `..`, a deeper path, a name the packager
    /// never makes) is `None`. The delta update has no URL and does not parse.
    pub fn parse(path: &'a str) -> Option<Self> {
        Self::from_key(path).filter(|name| !matches!(name, Self::Delta { .. }))
    }

    /// The name a store key stands for: the inverse of [`Display`](fmt::Display), the delta
    /// update included.
    pub fn from_key(path: &'a str) -> Option<Self> {
        if let Some(rendition) = path.strip_suffix(DELTA_SUFFIX).and_then(|p| p.strip_suffix(MEDIA_PLAYLIST)) {
            let rendition = rendition.strip_suffix('/')?;
            return (valid_rendition(rendition) && !rendition.contains('/')).then_some(Self::Delta { rendition });
        }
        let Some((rendition, file)) = path.split_once('/') else {
            return match path {
                MASTER_PLAYLIST => Some(Self::Master),
                THUMBNAIL => Some(Self::Thumbnail),
                MANIFEST => Some(Self::Manifest),
                _ => None,
            };
        };
        if !valid_rendition(rendition) || file.contains('/') {
            return None;
        }
        if file == MEDIA_PLAYLIST {
            return Some(Self::MediaPlaylist { rendition });
        }
        if let Some(msn) = file.strip_prefix("init-").and_then(|f| f.strip_suffix(".mp4")) {
            return Some(Self::Init { rendition, msn: number(msn)? });
        }
        let (stem, container) = match file.rsplit_once('.')? {
            (stem, "m4s") => (stem, Container::Fmp4),
            (stem, "ts") => (stem, Container::Ts),
            _ => return None,
        };
        match stem.split_once('.') {
            None => Some(Self::Segment { rendition, msn: number(stem)?, container }),
            Some((msn, part)) => Some(Self::Part { rendition, msn: number(msn)?, part: number(part)?, container }),
        }
    }

    /// The rendition the object belongs to; `None` for the channel-wide ones.
    pub fn rendition(&self) -> Option<&'a str> {
        match *self {
            Self::Master | Self::Thumbnail | Self::Manifest => None,
            Self::MediaPlaylist { rendition }
            | Self::Delta { rendition }
            | Self::Init { rendition, .. }
            | Self::Segment { rendition, .. }
            | Self::Part { rendition, .. } => Some(rendition),
        }
    }

    /// The name relative to its rendition's directory: how the rendition's media playlist refers
    /// to it (`EXT-X-MAP`, segment and part URIs, the preload hint). For a channel-wide object,
    /// the whole name.
    pub fn file(&self) -> String {
        match *self {
            Self::Master => MASTER_PLAYLIST.to_string(),
            Self::Thumbnail => THUMBNAIL.to_string(),
            Self::Manifest => MANIFEST.to_string(),
            Self::MediaPlaylist { .. } => MEDIA_PLAYLIST.to_string(),
            Self::Delta { .. } => format!("{MEDIA_PLAYLIST}{DELTA_SUFFIX}"),
            Self::Init { msn, .. } => format!("init-{msn}.mp4"),
            Self::Segment { msn, container, .. } => format!("{msn}.{}", extension(container)),
            Self::Part { msn, part, container, .. } => format!("{msn}.{part}.{}", extension(container)),
        }
    }

    /// The MIME type the origin serves it with (RFC 8216bis §4 for playlists; Apple's HLS
    /// authoring specification for `video/iso.segment`; RFC 8216bis §3.2 for MPEG-TS).
    pub fn content_type(&self) -> &'static str {
        match *self {
            Self::Master | Self::MediaPlaylist { .. } | Self::Delta { .. } => PLAYLIST_TYPE,
            Self::Thumbnail => "image/jpeg",
            Self::Manifest => "application/json",
            Self::Init { .. } => "video/mp4",
            Self::Segment { container, .. } | Self::Part { container, .. } => match container {
                Container::Fmp4 => "video/iso.segment",
                Container::Ts => "video/mp2t",
            },
        }
    }
}

/// The whole name below the channel's root: the store's key, and the URL path after
/// `/live/{channel}/`.
impl fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rendition() {
            Some(rendition) => write!(f, "{rendition}/{}", self.file()),
            None => f.write_str(&self.file()),
        }
    }
}

/// The file extension of segments and parts in `container`.
fn extension(container: Container) -> &'static str {
    match container {
        Container::Fmp4 => "m4s",
        Container::Ts => "ts",
    }
}

/// A number as names write it: decimal digits without a leading zero (but `0` itself), so that
/// each object has one name and no other spelling of a URL reaches it.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A rendition name as a path segment: not empty, not `.` or `..`.
fn valid_rendition(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rendered_name_parses_back_except_the_unaddressable_delta() {
        let r = "720p";
        let names = [
            ObjectName::Master,
            ObjectName::Thumbnail,
            ObjectName::Manifest,
            ObjectName::MediaPlaylist { rendition: r },
            ObjectName::Init { rendition: r, msn: 17_640_000_003 },
            ObjectName::Segment { rendition: r, msn: 17_640_000_003, container: Container::Fmp4 },
            ObjectName::Segment { rendition: r, msn: 5, container: Container::Ts },
            ObjectName::Part { rendition: r, msn: 17_640_000_003, part: 4, container: Container::Fmp4 },
            ObjectName::Part { rendition: r, msn: 5, part: 0, container: Container::Ts },
            ObjectName::Part { rendition: r, msn: 0, part: 0, container: Container::Fmp4 },
        ];
        for name in names {
            let text = name.to_string();
            assert_eq!(ObjectName::parse(&text), Some(name), "{text}");
        }
        let delta = ObjectName::Delta { rendition: r };
        assert_eq!(delta.to_string(), "720p/index.m3u8#skip");
        assert_eq!(ObjectName::parse(&delta.to_string()), None, "no URL names the delta update");
        for name in names.into_iter().chain([delta]) {
            assert_eq!(ObjectName::from_key(&name.to_string()), Some(name), "{name}");
        }
        for key in ["index.m3u8#skip", "/index.m3u8#skip", "a/b/index.m3u8#skip", "a/1.m4s#skip"] {
            assert_eq!(ObjectName::from_key(key), None, "{key}");
        }
    }

    #[test]
    fn names_as_the_playlists_and_the_origin_write_them() {
        let part = ObjectName::Part { rendition: "audio", msn: 12, part: 3, container: Container::Fmp4 };
        assert_eq!((part.to_string().as_str(), part.file().as_str()), ("audio/12.3.m4s", "12.3.m4s"));
        assert_eq!(ObjectName::Init { rendition: "a", msn: 9 }.file(), "init-9.mp4");
        assert_eq!(ObjectName::MediaPlaylist { rendition: "360p" }.to_string(), "360p/index.m3u8");
        assert_eq!(ObjectName::Master.to_string(), "master.m3u8");
        assert_eq!(ObjectName::Thumbnail.to_string(), "thumb.jpg");
    }

    #[test]
    fn content_types_follow_the_kind_and_container() {
        let ts = ObjectName::Segment { rendition: "a", msn: 1, container: Container::Ts };
        let m4s = ObjectName::Part { rendition: "a", msn: 1, part: 0, container: Container::Fmp4 };
        assert_eq!(ts.content_type(), "video/mp2t");
        assert_eq!(m4s.content_type(), "video/iso.segment");
        assert_eq!(ObjectName::Init { rendition: "a", msn: 1 }.content_type(), "video/mp4");
        assert_eq!(ObjectName::Master.content_type(), PLAYLIST_TYPE);
        assert_eq!(ObjectName::Delta { rendition: "a" }.content_type(), PLAYLIST_TYPE);
        assert_eq!(ObjectName::Thumbnail.content_type(), "image/jpeg");
    }

    #[test]
    fn anything_the_packager_never_makes_does_not_parse() {
        for path in [
            "",
            "index.m3u8",
            "a/",
            "/index.m3u8",
            "../index.m3u8",
            "./1.m4s",
            "a/b/index.m3u8",
            "a/init-.mp4",
            "a/init-x.mp4",
            "a/1.mp4",
            "a/+1.m4s",
            "a/1 .m4s",
            "a/.m4s",
            "a/1..m4s",
            "a/1.2.3.m4s",
            "a/1.m3u8",
            "a/18446744073709551616.m4s",
            "a/01.m4s",
            "a/1.00.m4s",
            "a/init-07.mp4",
            "a/08820000001.2.m4s",
            "a/thumb.jpg",
            "master.m3u8/x",
        ] {
            assert_eq!(ObjectName::parse(path), None, "{path:?}");
        }
    }
}
