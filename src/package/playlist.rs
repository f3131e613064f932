//! Playlist text, as pure functions of a snapshot (RFC 8216bis §4).

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::macros::format_description;

/// One segment line of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistSegment {
    pub uri: String,
    /// The `EXT-X-MAP` URI this segment needs.
    pub map_uri: String,
    /// Seconds.
    pub duration: f64,
    pub program_date_time: SystemTime,
    /// An `EXT-X-DISCONTINUITY` precedes this segment.
    pub discontinuity: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration: u64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub segments: Vec<PlaylistSegment>,
    pub ended: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub uri: String,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
    pub width: u32,
    pub height: u32,
    pub frame_rate: f64,
    pub codecs: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudioRendition {
    pub group_id: String,
    pub name: String,
    pub uri: String,
    pub channels: u8,
    pub language: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MasterPlaylist {
    pub variants: Vec<Variant>,
    pub audio: Option<AudioRendition>,
}

/// RFC 8216bis §4.4.1.2 / §8: `EXT-X-MAP` in a playlist without `EXT-X-I-FRAMES-ONLY` needs
/// protocol version 6 or higher, and nothing else written here needs more. The multivariant
/// playlist declares the same version, so a client learns from its first request whether it can
/// play what the media playlists hold.
const VERSION: u32 = 6;

pub fn render_media(p: &MediaPlaylist) -> String {
    let mut out = String::with_capacity(128 + 160 * p.segments.len());
    out.push_str("#EXTM3U\n");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    // §4.4.3.1: every EXTINF, rounded to the nearest integer, must be <= the target duration;
    // the renderer holds to that even if a caller's snapshot does not.
    let longest = p.segments.iter().map(|s| extinf(s.duration).round() as u64).max().unwrap_or(0);
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", p.target_duration.max(longest));
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", p.media_sequence);
    // §4.4.3.3: absent means 0, so writing it always is equivalent; it makes the number a
    // client must track across reloads visible in every playlist.
    let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", p.discontinuity_sequence);
    // §4.4.2.1: each segment starts with a sync sample (the segmenter cuts only where the segment
    // clock put an IDR; every AAC frame is a sync sample).
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    let mut map: Option<&str> = None;
    for s in &p.segments {
        if s.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        // §4.4.4.5: a map applies to every following segment until the next one, so it is
        // repeated only when it changes (and always after a discontinuity, where a client may
        // start over).
        if map != Some(s.map_uri.as_str()) || s.discontinuity {
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", quoted(&s.map_uri));
            map = Some(s.map_uri.as_str());
        }
        // §4.4.4.6: on every segment rather than only the first and after discontinuities:
        // each date comes from the ingest clock, so a client never accumulates the rounding of
        // EXTINF sums, and players that sync renditions or show timed metadata by date
        // (LL-HLS, ID3 cues) get it where they need it.
        if let Some(date) = program_date_time(s.program_date_time) {
            let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{date}");
        }
        let _ = writeln!(out, "#EXTINF:{:.5},", extinf(s.duration));
        out.push_str(&s.uri);
        out.push('\n');
    }
    if p.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

pub fn render_master(p: &MasterPlaylist) -> String {
    let mut out = String::with_capacity(256 + 256 * p.variants.len());
    out.push_str("#EXTM3U\n");
    let _ = writeln!(out, "#EXT-X-VERSION:{VERSION}");
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    if let Some(a) = &p.audio {
        // §4.4.6.1: TYPE first (parsers dispatch on it), then the group, name and selection.
        let _ =
            write!(out, "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{}\",NAME=\"{}\"", quoted(&a.group_id), quoted(&a.name));
        if let Some(lang) = a.language.as_deref().filter(|l| !l.is_empty()) {
            let _ = write!(out, ",LANGUAGE=\"{}\"", quoted(lang));
        }
        out.push_str(",DEFAULT=YES,AUTOSELECT=YES");
        // §4.4.6.1: CHANNELS is the count of audio channels; unknown (0) is left out.
        if a.channels > 0 {
            let _ = write!(out, ",CHANNELS=\"{}\"", a.channels);
        }
        let _ = writeln!(out, ",URI=\"{}\"", quoted(&a.uri));
    }
    for v in &p.variants {
        // §4.4.6.2: BANDWIDTH is required; the other attributes are written when known.
        let _ = write!(out, "#EXT-X-STREAM-INF:BANDWIDTH={}", v.bandwidth);
        if v.average_bandwidth > 0 {
            let _ = write!(out, ",AVERAGE-BANDWIDTH={}", v.average_bandwidth);
        }
        if !v.codecs.is_empty() {
            let _ = write!(out, ",CODECS=\"{}\"", quoted(&v.codecs));
        }
        if v.width > 0 && v.height > 0 {
            let _ = write!(out, ",RESOLUTION={}x{}", v.width, v.height);
        }
        // §4.4.6.2: a decimal-floating-point rounded to three decimal places.
        if v.frame_rate.is_finite() && v.frame_rate > 0.0 {
            let _ = write!(out, ",FRAME-RATE={:.3}", v.frame_rate);
        }
        if let Some(a) = &p.audio {
            let _ = write!(out, ",AUDIO=\"{}\"", quoted(&a.group_id));
        }
        out.push('\n');
        out.push_str(&v.uri);
        out.push('\n');
    }
    out
}

/// (peak, average) bits per second of segments given as (bytes, seconds).
///
/// Peak is the highest per-segment rate (§4.4.6.2 BANDWIDTH: the peak segment bit rate),
/// average the total bits over the total time (AVERAGE-BANDWIDTH); both rounded up, since
/// BANDWIDTH is an upper bound. Segments without a positive, finite duration are ignored.
pub fn measured_bandwidth(segments: &[(u64, f64)]) -> (u64, u64) {
    let mut peak = 0.0f64;
    let mut bits = 0.0f64;
    let mut secs = 0.0f64;
    for &(bytes, duration) in segments {
        if !(duration.is_finite() && duration > 0.0) {
            continue;
        }
        let b = bytes as f64 * 8.0;
        peak = peak.max(b / duration);
        bits += b;
        secs += duration;
    }
    let average = if secs > 0.0 { bits / secs } else { 0.0 };
    // `as` saturates a float that does not fit, so an absurd input cannot wrap.
    (peak.ceil() as u64, average.ceil() as u64)
}

/// An EXTINF value: a non-negative, finite number of seconds.
fn extinf(duration: f64) -> f64 {
    if duration.is_finite() && duration > 0.0 { duration } else { 0.0 }
}

/// §4.2: a quoted-string cannot hold a double quote, CR or LF; such characters (never in the
/// names this crate makes) are dropped rather than break the playlist's syntax.
fn quoted(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['"', '\r', '\n']) {
        s.chars().filter(|c| !matches!(c, '"' | '\r' | '\n')).collect::<String>().into()
    } else {
        s.into()
    }
}

/// §4.4.4.6: an ISO 8601 date-time with time zone; UTC with millisecond precision
/// (`2026-11-25T12:00:00.000Z`). `None` for a time outside the formatter's years (±9999).
fn program_date_time(t: SystemTime) -> Option<String> {
    let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).ok()?,
        Err(e) => -i128::try_from(e.duration().as_nanos()).ok()?,
    };
    // Truncate to whole milliseconds toward the past, so the date never runs ahead of the media.
    let millis = nanos.div_euclid(1_000_000);
    let dt = OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000).ok()?;
    dt.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z")).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 2026-11-25T12:00:00Z plus `ms`.
    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_608_000) + Duration::from_millis(ms)
    }

    fn segment(msn: u64, map: &str, duration: f64, ms: u64, discontinuity: bool) -> PlaylistSegment {
        PlaylistSegment {
            uri: format!("{msn}.m4s"),
            map_uri: map.into(),
            duration,
            program_date_time: at(ms),
            discontinuity,
        }
    }

    #[test]
    fn media_playlist_golden() {
        let p = MediaPlaylist {
            target_duration: 2,
            media_sequence: 1_764_000_000,
            discontinuity_sequence: 3,
            segments: vec![
                segment(1_764_000_000, "init-1764000000.mp4", 2.0, 0, false),
                segment(1_764_000_001, "init-1764000000.mp4", 2.002_222, 2000, false),
                segment(1_764_000_002, "init-1764000000.mp4", 1.966_666_6, 4002, false),
                segment(1_764_000_003, "init-1764000003.mp4", 2.0, 61_000, true),
                segment(1_764_000_004, "init-1764000003.mp4", 0.5, 63_000_999, false),
            ],
            ended: true,
        };
        let want = "\
#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:1764000000
#EXT-X-DISCONTINUITY-SEQUENCE:3
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init-1764000000.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:00.000Z
#EXTINF:2.00000,
1764000000.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:02.000Z
#EXTINF:2.00222,
1764000001.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:04.002Z
#EXTINF:1.96667,
1764000002.m4s
#EXT-X-DISCONTINUITY
#EXT-X-MAP:URI=\"init-1764000003.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:01:01.000Z
#EXTINF:2.00000,
1764000003.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-26T05:30:00.999Z
#EXTINF:0.50000,
1764000004.m4s
#EXT-X-ENDLIST
";
        assert_eq!(render_media(&p), want);
    }

    #[test]
    fn live_media_playlist_without_segments() {
        let p = MediaPlaylist {
            target_duration: 4,
            media_sequence: 0,
            discontinuity_sequence: 0,
            segments: vec![],
            ended: false,
        };
        assert_eq!(
            render_media(&p),
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        );
    }

    #[test]
    fn map_repeats_after_a_discontinuity_and_target_covers_every_extinf() {
        let p = MediaPlaylist {
            target_duration: 2,
            media_sequence: 5,
            discontinuity_sequence: 0,
            segments: vec![segment(5, "init-5.mp4", 2.6, 0, false), segment(6, "init-5.mp4", f64::NAN, 2600, true)],
            ended: false,
        };
        let text = render_media(&p);
        assert!(text.contains("#EXT-X-TARGETDURATION:3\n"), "{text}");
        assert_eq!(text.matches("#EXT-X-MAP:URI=\"init-5.mp4\"\n").count(), 2, "{text}");
        assert!(text.contains("#EXTINF:0.00000,\n6.m4s\n"), "{text}");
        assert!(!text.contains("ENDLIST"));
    }

    /// What `tests/support` reads: the MAP line holds only the URI; EXTINF is `<secs>,`.
    #[test]
    fn lines_parse_the_way_the_end_to_end_test_reads_them() {
        let p = MediaPlaylist {
            target_duration: 2,
            media_sequence: 9,
            discontinuity_sequence: 0,
            segments: vec![segment(9, "init-9.mp4", 1.5, 0, false)],
            ended: true,
        };
        let text = render_media(&p);
        let map = text.lines().find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"")).expect("map");
        assert_eq!(map.trim_end_matches('"'), "init-9.mp4");
        let inf = text.lines().find_map(|l| l.strip_prefix("#EXTINF:")).expect("extinf");
        assert_eq!(inf.split(',').next().and_then(|d| d.parse::<f64>().ok()), Some(1.5));
    }

    #[test]
    fn master_playlist_golden() {
        let p = MasterPlaylist {
            variants: vec![
                Variant {
                    uri: "720p/index.m3u8".into(),
                    bandwidth: 3_300_000,
                    average_bandwidth: 2_900_000,
                    width: 1280,
                    height: 720,
                    frame_rate: 29.97003,
                    codecs: "avc1.64001f,mp4a.40.2".into(),
                },
                Variant {
                    uri: "360p/index.m3u8".into(),
                    bandwidth: 900_000,
                    average_bandwidth: 0,
                    width: 640,
                    height: 360,
                    frame_rate: 0.0,
                    codecs: "avc1.64001e,mp4a.40.2".into(),
                },
            ],
            audio: Some(AudioRendition {
                group_id: "audio".into(),
                name: "main".into(),
                uri: "audio/index.m3u8".into(),
                channels: 2,
                language: Some("en".into()),
            }),
        };
        let want = "\
#EXTM3U
#EXT-X-VERSION:6
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"main\",LANGUAGE=\"en\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"2\",URI=\"audio/index.m3u8\"
#EXT-X-STREAM-INF:BANDWIDTH=3300000,AVERAGE-BANDWIDTH=2900000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=29.970,AUDIO=\"audio\"
720p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS=\"avc1.64001e,mp4a.40.2\",RESOLUTION=640x360,AUDIO=\"audio\"
360p/index.m3u8
";
        assert_eq!(render_master(&p), want);
    }

    #[test]
    fn master_playlist_without_audio() {
        let p = MasterPlaylist {
            variants: vec![Variant {
                uri: "source/index.m3u8".into(),
                bandwidth: 5_000_000,
                average_bandwidth: 4_000_000,
                width: 1920,
                height: 1080,
                frame_rate: 60.0,
                codecs: "avc1.640028".into(),
            }],
            audio: None,
        };
        assert_eq!(
            render_master(&p),
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=5000000,AVERAGE-BANDWIDTH=4000000,CODECS=\"avc1.640028\",\
             RESOLUTION=1920x1080,FRAME-RATE=60.000\nsource/index.m3u8\n"
        );
    }

    #[test]
    fn bandwidth_is_peak_segment_rate_and_total_average() {
        assert_eq!(measured_bandwidth(&[]), (0, 0));
        assert_eq!(measured_bandwidth(&[(1000, 0.0), (5, f64::NAN), (7, -1.0)]), (0, 0));
        // 250 kB in 2 s = 1 Mbit/s; 500 kB in 2 s = 2 Mbit/s; 100 kB in 1 s = 0.8 Mbit/s.
        let segs = [(250_000, 2.0), (500_000, 2.0), (0, 0.0), (100_000, 1.0)];
        assert_eq!(measured_bandwidth(&segs), (2_000_000, 1_360_000));
        // Rounded up: 1 byte in 3 s is 2.67 bit/s.
        assert_eq!(measured_bandwidth(&[(1, 3.0)]), (3, 3));
    }

    #[test]
    fn program_date_time_is_utc_with_milliseconds() {
        assert_eq!(program_date_time(at(0)).as_deref(), Some("2026-11-25T12:00:00.000Z"));
        assert_eq!(
            program_date_time(at(0) + Duration::from_nanos(1_999_999)).as_deref(),
            Some("2026-11-25T12:00:00.001Z")
        );
        assert_eq!(
            program_date_time(UNIX_EPOCH - Duration::from_millis(1)).as_deref(),
            Some("1969-12-31T23:59:59.999Z")
        );
        // Beyond year 9999 the tag is left out instead of written wrong.
        assert_eq!(program_date_time(UNIX_EPOCH + Duration::from_secs(400_000_000_000)), None);
    }

    #[test]
    fn quoted_strings_cannot_break_the_syntax() {
        let p = MasterPlaylist {
            variants: vec![],
            audio: Some(AudioRendition {
                group_id: "a\"b".into(),
                name: "x\ny".into(),
                uri: "u".into(),
                channels: 0,
                language: None,
            }),
        };
        let text = render_master(&p);
        assert!(text.contains("GROUP-ID=\"ab\",NAME=\"xy\",DEFAULT=YES,AUTOSELECT=YES,URI=\"u\"\n"), "{text}");
    }
}
