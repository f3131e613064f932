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
    /// The segment's parts, in order (LL-HLS). Their bytes, concatenated, are the segment's.
    pub parts: Vec<PlaylistPart>,
}

/// One LL-HLS part (`EXT-X-PART`, RFC 8216bis §4.4.4.9).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistPart {
    pub uri: String,
    /// Seconds.
    pub duration: f64,
    /// Starts with an IDR (`INDEPENDENT=YES`).
    pub independent: bool,
}

/// The segment being built: its parts so far, listed after the last complete segment.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSegment {
    pub map_uri: String,
    pub program_date_time: SystemTime,
    pub discontinuity: bool,
    pub parts: Vec<PlaylistPart>,
}

/// `EXT-X-RENDITION-REPORT` for a sibling rendition (RFC 8216bis §4.4.5.4).
#[derive(Debug, Clone, PartialEq)]
pub struct RenditionReport {
    /// Relative to this playlist, e.g. `../480p/index.m3u8`.
    pub uri: String,
    pub last_msn: u64,
    pub last_part: Option<u64>,
}

/// What makes a media playlist an LL-HLS one.
#[derive(Debug, Clone, PartialEq)]
pub struct LowLatency {
    /// The longest a part may be, seconds: `EXT-X-PART-INF:PART-TARGET` until the playlist lists
    /// a part. Then PART-TARGET is the longest part listed: parts hold whole frames, so at 24 fps
    /// a 0.2 s limit makes 0.167 s parts, which a 0.2 s PART-TARGET would put below the 85 % of it
    /// that every part but a segment's last must reach (RFC 8216bis §4.4.4.9).
    pub part_target: f64,
    /// `EXT-X-SERVER-CONTROL:PART-HOLD-BACK`, in PART-TARGETs (raised to 2, the least §4.4.3.8
    /// allows).
    pub part_hold_back_parts: f64,
    /// `EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL`, seconds (at least 6 × target duration).
    pub can_skip_until: f64,
    /// The segment being built, if it has parts already.
    pub open: Option<OpenSegment>,
    /// `EXT-X-PRELOAD-HINT:TYPE=PART` URI of the next part; `None` once the playlist has ended.
    pub preload_hint: Option<String>,
    pub rendition_reports: Vec<RenditionReport>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaPlaylist {
    pub target_duration: u64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub segments: Vec<PlaylistSegment>,
    pub ended: bool,
    /// LL-HLS tags; `None` renders a plain HLS playlist.
    pub low_latency: Option<LowLatency>,
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
/// protocol version 6 or higher. §8 names no version for `EXT-X-SERVER-CONTROL`, `EXT-X-PART-INF`,
/// `EXT-X-PART`, `EXT-X-PRELOAD-HINT` or `EXT-X-RENDITION-REPORT` (a client that does not know them
/// ignores them, §6.3.1), so an LL-HLS playlist stays at 6 too. The multivariant playlist declares
/// the same version, so a client learns from its first request whether it can play what the media
/// playlists hold.
const VERSION: u32 = 6;

/// RFC 8216bis §8: a playlist containing `EXT-X-SKIP` must indicate version 9 or higher (10 only
/// when it also skips `EXT-X-DATERANGE` tags, which this crate does not write). Only a delta
/// update carries it, and only a client that asked for one with `_HLS_skip` receives it.
const SKIP_VERSION: u32 = 9;

/// Durations here are sums of `f64` seconds; a difference this small is rounding, not media, and
/// is resolved toward listing more (parts kept, segments not skipped).
const EPSILON_SECS: f64 = 1e-6;

pub fn render_media(p: &MediaPlaylist) -> String {
    render(p, 0)
}

/// The delta update of `p` (`_HLS_skip=YES`, RFC 8216bis §6.2.5.1): segments older than
/// `CAN-SKIP-UNTIL` before the end are replaced by `EXT-X-SKIP`. Without `low_latency`, once the
/// playlist has ended, or when nothing is old enough to skip, the same text as [`render_media`].
pub fn render_media_delta(p: &MediaPlaylist) -> String {
    // §6.2.5.1: a server must ignore `_HLS_skip` for a playlist without CAN-SKIP-UNTIL or with
    // EXT-X-ENDLIST.
    let Some(ll) = p.low_latency.as_ref().filter(|_| !p.ended) else {
        return render_media(p);
    };
    let control = ServerControl::new(p, ll);
    // §6.2.5.1: segments older than the Skip Boundary (CAN-SKIP-UNTIL before the end of the
    // last, parent, segment) are skipped. Only segments that lie wholly before the boundary are
    // skipped, so what remains always covers at least CAN-SKIP-UNTIL, whichever way a client reads
    // "older". At least one complete segment stays, so the first one rendered can carry the
    // EXT-X-MAP and date a client needs to go on from the skip.
    let skipped = start_distances(p)
        .iter()
        .zip(&p.segments)
        .take(p.segments.len().saturating_sub(1))
        .take_while(|&(&d, s)| d - seconds(s.duration) > control.can_skip_until + EPSILON_SECS)
        .count();
    render(p, skipped)
}

/// A media playlist with its first `skipped` segments replaced by `EXT-X-SKIP` (none when 0).
fn render(p: &MediaPlaylist, skipped: usize) -> String {
    let parts: usize = p.segments.iter().map(|s| s.parts.len()).sum();
    let mut out = String::with_capacity(128 + 160 * p.segments.len() + 64 * parts);
    out.push_str("#EXTM3U\n");
    let version = if skipped > 0 { SKIP_VERSION } else { VERSION };
    let _ = writeln!(out, "#EXT-X-VERSION:{version}");
    let target = target_duration(p);
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target}");
    let control = p.low_latency.as_ref().map(|ll| ServerControl::new(p, ll));
    if let Some(c) = &control {
        // §4.4.3.8: the origin answers `_HLS_msn`/`_HLS_part` (§6.2.5.2) and `_HLS_skip`
        // (§6.2.5.1); PART-HOLD-BACK is required with EXT-X-PART-INF.
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={},CAN-SKIP-UNTIL={}",
            decimal(c.part_hold_back),
            decimal(c.can_skip_until)
        );
        // §4.4.3.7: required with any EXT-X-PART; written always, so the header stays the same
        // whether or not parts are listed at the moment.
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={}", decimal(c.part_target));
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", p.media_sequence);
    // §4.4.3.3: absent means 0, so writing it always is equivalent; it makes the number a
    // client must track across reloads visible in every playlist. §4.4.5.2: skipping segments
    // does not change it, since it still counts from the first (skipped) segment.
    let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", p.discontinuity_sequence);
    // §4.4.2.1: each segment starts with a sync sample (the segmenter cuts only where the segment
    // clock put an IDR; every AAC frame is a sync sample).
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    if skipped > 0 {
        // §4.4.5.2: in place of the skipped segments' URI lines and every tag applied to them.
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }
    let distances = if control.is_some() { start_distances(p) } else { Vec::new() };
    let span = part_span(p);
    // Starts empty, so the first segment rendered (the first after a skip too) carries its map.
    let mut map: Option<&str> = None;
    for (i, s) in p.segments.iter().enumerate().skip(skipped) {
        segment_tags(&mut out, &mut map, s.discontinuity, &s.map_uri, s.program_date_time);
        if distances.get(i).is_some_and(|&d| d <= span) {
            part_lines(&mut out, &s.parts);
        }
        let _ = writeln!(out, "#EXTINF:{:.5},", seconds(s.duration));
        out.push_str(&s.uri);
        out.push('\n');
    }
    if let Some(ll) = &p.low_latency {
        // §3.2: parts after the last EXTINF belong to the segment being built. Its tags go before
        // its first part (§4.4.4.9); with no part yet there is nothing for them to apply to.
        if let Some(open) = ll.open.as_ref().filter(|o| !o.parts.is_empty()) {
            segment_tags(&mut out, &mut map, open.discontinuity, &open.map_uri, open.program_date_time);
            part_lines(&mut out, &open.parts);
        }
        // §4.4.5.3: a playlist with EXT-X-ENDLIST must not contain EXT-X-PRELOAD-HINT.
        if let Some(hint) = ll.preload_hint.as_deref().filter(|_| !p.ended) {
            let _ = writeln!(out, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}\"", quoted(hint));
        }
        // §4.4.5.4: LAST-PART is required only when that rendition has parts.
        for r in &ll.rendition_reports {
            let _ = write!(out, "#EXT-X-RENDITION-REPORT:URI=\"{}\",LAST-MSN={}", quoted(&r.uri), r.last_msn);
            if let Some(part) = r.last_part {
                let _ = write!(out, ",LAST-PART={part}");
            }
            out.push('\n');
        }
    }
    if p.ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// The tags that apply to a segment (complete or being built), written before its first
/// EXT-X-PART and its EXTINF (§4.4.4.9).
fn segment_tags<'a>(
    out: &mut String,
    map: &mut Option<&'a str>,
    discontinuity: bool,
    map_uri: &'a str,
    date: SystemTime,
) {
    if discontinuity {
        out.push_str("#EXT-X-DISCONTINUITY\n");
    }
    // §4.4.4.5: a map applies to every following segment until the next one, so it is
    // repeated only when it changes (and always after a discontinuity, where a client may
    // start over).
    // An empty map URI: MPEG-TS segments, which need no initialization section.
    if (*map != Some(map_uri) || discontinuity) && !map_uri.is_empty() {
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"{}\"", quoted(map_uri));
        *map = Some(map_uri);
    }
    // §4.4.4.6: on every segment rather than only the first and after discontinuities:
    // each date comes from the ingest clock, so a client never accumulates the rounding of
    // EXTINF sums, and players that sync renditions or show timed metadata by date
    // (LL-HLS, ID3 cues) get it where they need it.
    if let Some(date) = program_date_time(date) {
        let _ = writeln!(out, "#EXT-X-PROGRAM-DATE-TIME:{date}");
    }
}

/// §4.4.4.9: one EXT-X-PART per part, in order.
fn part_lines(out: &mut String, parts: &[PlaylistPart]) {
    for part in parts {
        let _ = write!(out, "#EXT-X-PART:DURATION={},URI=\"{}\"", decimal(seconds(part.duration)), quoted(&part.uri));
        // §4.4.4.9: INDEPENDENT=YES lets a client join or switch at this part.
        if part.independent {
            out.push_str(",INDEPENDENT=YES");
        }
        out.push('\n');
    }
}

/// §4.4.3.1: every EXTINF, rounded to the nearest integer, must be <= the target duration;
/// the renderer holds to that even if a caller's snapshot does not.
fn target_duration(p: &MediaPlaylist) -> u64 {
    let longest = p.segments.iter().map(|s| seconds(s.duration).round() as u64).max().unwrap_or(0);
    p.target_duration.max(longest)
}

/// For each segment, seconds from its start to the end of the playlist: the end of the last
/// complete segment, or of the last part of the segment being built (§6.2.5.1 measures from
/// the end of the last parent segment).
fn start_distances(p: &MediaPlaylist) -> Vec<f64> {
    let open = p.low_latency.as_ref().and_then(|ll| ll.open.as_ref());
    let mut distance: f64 = open.map_or(0.0, |o| o.parts.iter().map(|part| seconds(part.duration)).sum());
    let mut distances = vec![0.0; p.segments.len()];
    for (d, s) in distances.iter_mut().zip(&p.segments).rev() {
        distance += seconds(s.duration);
        *d = distance;
    }
    distances
}

/// §6.2.2: EXT-X-PART tags more than three target durations from the end are removed. A
/// segment's parts are listed whole or not at all, so a listed one starts within this span of the
/// end (seconds).
fn part_span(p: &MediaPlaylist) -> f64 {
    3.0 * target_duration(p) as f64 + EPSILON_SECS
}

/// The parts the playlist lists: those of the segments that start within [`part_span`] of the
/// end, then those of the segment being built.
fn listed_parts<'a>(p: &'a MediaPlaylist, ll: &'a LowLatency) -> impl Iterator<Item = &'a PlaylistPart> {
    let span = part_span(p);
    let recent = p.segments.iter().zip(start_distances(p)).filter(move |(_, d)| *d <= span).flat_map(|(s, _)| &s.parts);
    recent.chain(ll.open.iter().flat_map(|o| &o.parts))
}

/// The EXT-X-SERVER-CONTROL and EXT-X-PART-INF values, raised where the caller's are below what
/// RFC 8216bis requires, as the target duration is (the renderer keeps the text valid).
struct ServerControl {
    part_target: f64,
    part_hold_back: f64,
    can_skip_until: f64,
}

impl ServerControl {
    fn new(p: &MediaPlaylist, ll: &LowLatency) -> Self {
        let longest_part = listed_parts(p, ll).map(|part| seconds(part.duration));
        // §4.4.4.9: every part's DURATION must be <= PART-TARGET, and all but a segment's last (or
        // an INDEPENDENT one) at least 85 % of it. The longest part listed keeps both for parts of
        // whole frames at a steady rate, and an odd long one (a rung that skipped to the next
        // segment holds its last picture) counts only while it is listed. `decimal` rounds
        // durations and PART-TARGET the same way, and rounding never reverses an order, so the
        // written values keep to it too.
        let part_target = longest_part.reduce(f64::max).filter(|d| *d > 0.0).unwrap_or(seconds(ll.part_target));
        Self {
            part_target,
            // §4.4.3.8: PART-HOLD-BACK must be at least twice PART-TARGET (three times is only a
            // SHOULD, left to the caller).
            part_hold_back: ll.part_hold_back_parts.max(2.0) * part_target,
            // §4.4.3.8: CAN-SKIP-UNTIL must be at least six target durations.
            can_skip_until: seconds(ll.can_skip_until).max(6.0 * target_duration(p) as f64),
        }
    }
}

/// The `EXT-X-PART-INF:PART-TARGET` that [`render_media`] writes for `p`, seconds; `None` for a
/// playlist without LL-HLS tags.
pub fn part_target(p: &MediaPlaylist) -> Option<f64> {
    p.low_latency.as_ref().map(|ll| ServerControl::new(p, ll).part_target)
}

/// §4.2 decimal-floating-point for the LL-HLS attributes: to 10 µs like EXTINF, without trailing
/// zeros but keeping one decimal (`0.2`, `12.0`, `0.33367`).
fn decimal(secs: f64) -> String {
    let mut s = format!("{secs:.5}");
    let trimmed = s.trim_end_matches('0').len();
    s.truncate(trimmed);
    if s.ends_with('.') {
        s.push('0');
    }
    s
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

/// A duration as written (EXTINF, EXT-X-PART and the LL-HLS attributes): non-negative, finite seconds.
fn seconds(duration: f64) -> f64 {
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
            parts: vec![],
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
            low_latency: None,
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
            low_latency: None,
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
            low_latency: None,
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
            low_latency: None,
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

    fn parts(msn: u64, count: usize, duration: f64) -> Vec<PlaylistPart> {
        (0..count).map(|i| PlaylistPart { uri: format!("{msn}.{i}.m4s"), duration, independent: i == 0 }).collect()
    }

    fn ll_segment(
        msn: u64,
        map: &str,
        duration: f64,
        ms: u64,
        discontinuity: bool,
        part_count: usize,
    ) -> PlaylistSegment {
        let part = duration / part_count as f64;
        PlaylistSegment { parts: parts(msn, part_count, part), ..segment(msn, map, duration, ms, discontinuity) }
    }

    /// Five 2 s segments of ten parts, a discontinuity with a new map at 103, and 105 being built.
    fn ll_playlist() -> MediaPlaylist {
        MediaPlaylist {
            target_duration: 2,
            media_sequence: 100,
            discontinuity_sequence: 4,
            segments: vec![
                ll_segment(100, "init-100.mp4", 2.0, 0, false, 10),
                ll_segment(101, "init-100.mp4", 2.0, 2000, false, 10),
                ll_segment(102, "init-100.mp4", 2.0, 4000, false, 10),
                ll_segment(103, "init-103.mp4", 2.0, 60_000, true, 10),
                ll_segment(104, "init-103.mp4", 2.0, 62_000, false, 10),
            ],
            ended: false,
            low_latency: Some(LowLatency {
                part_target: 0.2,
                part_hold_back_parts: 3.0,
                can_skip_until: 12.0,
                open: Some(OpenSegment {
                    map_uri: "init-103.mp4".into(),
                    program_date_time: at(64_000),
                    discontinuity: false,
                    parts: parts(105, 3, 0.2),
                }),
                preload_hint: Some("105.3.m4s".into()),
                rendition_reports: vec![
                    RenditionReport { uri: "../480p/index.m3u8".into(), last_msn: 105, last_part: Some(2) },
                    RenditionReport { uri: "../360p/index.m3u8".into(), last_msn: 104, last_part: None },
                ],
            }),
        }
    }

    /// Twenty 1 s segments of five parts (target 1, CAN-SKIP-UNTIL 6), discontinuities with new
    /// maps at 1005 and 1016, and 1020 being built with two parts: 20.4 s in all.
    fn long_ll_playlist() -> MediaPlaylist {
        let segments = (0..20u64)
            .map(|i| {
                let msn = 1000 + i;
                let (map, gap_ms) = match i {
                    0..5 => ("init-1000.mp4", 0),
                    5..16 => ("init-1005.mp4", 10_000),
                    _ => ("init-1016.mp4", 20_000),
                };
                ll_segment(msn, map, 1.0, i * 1000 + gap_ms, i == 5 || i == 16, 5)
            })
            .collect();
        MediaPlaylist {
            target_duration: 1,
            media_sequence: 1000,
            discontinuity_sequence: 7,
            segments,
            ended: false,
            low_latency: Some(LowLatency {
                part_target: 0.2,
                part_hold_back_parts: 3.0,
                can_skip_until: 6.0,
                open: Some(OpenSegment {
                    map_uri: "init-1016.mp4".into(),
                    program_date_time: at(40_000),
                    discontinuity: false,
                    parts: parts(1020, 2, 0.2),
                }),
                preload_hint: Some("1020.2.m4s".into()),
                rendition_reports: vec![RenditionReport {
                    uri: "../480p/index.m3u8".into(),
                    last_msn: 1020,
                    last_part: Some(1),
                }],
            }),
        }
    }

    /// Parts are listed for 103 and 104 (which start 4.6 and 2.6 s before the end at 10.6 s) and
    /// for 105, not for 102 (6.6 s, more than three target durations); the discontinuity and map
    /// of 103 and the date of 105 come before their first part.
    #[test]
    fn low_latency_media_playlist_golden() {
        let want = "\
#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6,CAN-SKIP-UNTIL=12.0
#EXT-X-PART-INF:PART-TARGET=0.2
#EXT-X-MEDIA-SEQUENCE:100
#EXT-X-DISCONTINUITY-SEQUENCE:4
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init-100.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:00.000Z
#EXTINF:2.00000,
100.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:02.000Z
#EXTINF:2.00000,
101.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:04.000Z
#EXTINF:2.00000,
102.m4s
#EXT-X-DISCONTINUITY
#EXT-X-MAP:URI=\"init-103.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:01:00.000Z
#EXT-X-PART:DURATION=0.2,URI=\"103.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.2,URI=\"103.1.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.2.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.3.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.4.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.5.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.6.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.7.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.8.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"103.9.m4s\"
#EXTINF:2.00000,
103.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:01:02.000Z
#EXT-X-PART:DURATION=0.2,URI=\"104.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.2,URI=\"104.1.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.2.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.3.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.4.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.5.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.6.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.7.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.8.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"104.9.m4s\"
#EXTINF:2.00000,
104.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:01:04.000Z
#EXT-X-PART:DURATION=0.2,URI=\"105.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.2,URI=\"105.1.m4s\"
#EXT-X-PART:DURATION=0.2,URI=\"105.2.m4s\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"105.3.m4s\"
#EXT-X-RENDITION-REPORT:URI=\"../480p/index.m3u8\",LAST-MSN=105,LAST-PART=2
#EXT-X-RENDITION-REPORT:URI=\"../360p/index.m3u8\",LAST-MSN=104
";
        assert_eq!(render_media(&ll_playlist()), want);
    }

    #[test]
    fn ended_low_latency_playlist_has_no_preload_hint_and_endlist_last() {
        let mut p = MediaPlaylist {
            target_duration: 2,
            media_sequence: 7,
            discontinuity_sequence: 0,
            segments: (0..4u64).map(|i| ll_segment(7 + i, "init-7.mp4", 2.0, i * 2000, false, 4)).collect(),
            ended: true,
            low_latency: Some(LowLatency {
                part_target: 0.5,
                part_hold_back_parts: 3.0,
                can_skip_until: 12.0,
                open: None,
                // §4.4.5.3 forbids it with ENDLIST; the renderer leaves it out even if given.
                preload_hint: Some("11.0.m4s".into()),
                rendition_reports: vec![RenditionReport {
                    uri: "../480p/index.m3u8".into(),
                    last_msn: 10,
                    last_part: Some(3),
                }],
            }),
        };
        let want = "\
#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:2
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5,CAN-SKIP-UNTIL=12.0
#EXT-X-PART-INF:PART-TARGET=0.5
#EXT-X-MEDIA-SEQUENCE:7
#EXT-X-DISCONTINUITY-SEQUENCE:0
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init-7.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:00.000Z
#EXTINF:2.00000,
7.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:02.000Z
#EXT-X-PART:DURATION=0.5,URI=\"8.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.5,URI=\"8.1.m4s\"
#EXT-X-PART:DURATION=0.5,URI=\"8.2.m4s\"
#EXT-X-PART:DURATION=0.5,URI=\"8.3.m4s\"
#EXTINF:2.00000,
8.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:04.000Z
#EXT-X-PART:DURATION=0.5,URI=\"9.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.5,URI=\"9.1.m4s\"
#EXT-X-PART:DURATION=0.5,URI=\"9.2.m4s\"
#EXT-X-PART:DURATION=0.5,URI=\"9.3.m4s\"
#EXTINF:2.00000,
9.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:06.000Z
#EXT-X-PART:DURATION=0.5,URI=\"10.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.5,URI=\"10.1.m4s\"
#EXT-X-PART:DURATION=0.5,URI=\"10.2.m4s\"
#EXT-X-PART:DURATION=0.5,URI=\"10.3.m4s\"
#EXTINF:2.00000,
10.m4s
#EXT-X-RENDITION-REPORT:URI=\"../480p/index.m3u8\",LAST-MSN=10,LAST-PART=3
#EXT-X-ENDLIST
";
        assert_eq!(render_media(&p), want);
        // §6.2.5.1: `_HLS_skip` is ignored once the playlist has ended.
        p.low_latency.as_mut().expect("ll").can_skip_until = 0.0;
        assert_eq!(render_media_delta(&p), render_media(&p));
    }

    /// 1000..=1013 end more than 6 s before the end (20.4 s) and are skipped (1014 ends 6.4 s
    /// before it but starts before the boundary, so it stays); the rest is the full playlist's
    /// text, with the map 1014 needs written before it (the full playlist has it at 1005, which is
    /// skipped).
    #[test]
    fn delta_update_skips_the_oldest_segments() {
        let p = long_ll_playlist();
        let full = render_media(&p);
        let delta = render_media_delta(&p);

        let header_end = full.find("#EXT-X-MAP:").expect("first map");
        let header = full[..header_end].replace("#EXT-X-VERSION:6\n", "#EXT-X-VERSION:9\n");
        let tail_start = full.find("1013.m4s\n").expect("1013") + "1013.m4s\n".len();
        let tail = &full[tail_start..];
        assert!(tail.starts_with("#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:24.000Z\n#EXTINF:"), "{tail}");
        let want = format!("{header}#EXT-X-SKIP:SKIPPED-SEGMENTS=14\n#EXT-X-MAP:URI=\"init-1005.mp4\"\n{tail}");
        assert_eq!(delta, want);

        // §4.4.5.2: the discontinuity sequence still counts from 1000; 1005's discontinuity is
        // skipped, 1016's stays, before its parts.
        assert!(delta.contains("#EXT-X-MEDIA-SEQUENCE:1000\n#EXT-X-DISCONTINUITY-SEQUENCE:7\n"), "{delta}");
        assert_eq!(delta.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{delta}");
        assert!(delta.contains("#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1016.mp4\"\n"), "{delta}");
        // Parts only for 1018 and 1019 (2.4 and 1.4 s from the end) and 1020.
        assert_eq!(delta.matches("#EXT-X-PART:").count(), 12, "{delta}");
        assert!(delta.contains("#EXT-X-PROGRAM-DATE-TIME:2026-11-25T12:00:38.000Z\n#EXT-X-PART:"), "{delta}");
        assert!(delta.ends_with(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"1020.2.m4s\"\n\
             #EXT-X-RENDITION-REPORT:URI=\"../480p/index.m3u8\",LAST-MSN=1020,LAST-PART=1\n"
        ));
    }

    #[test]
    fn delta_update_is_the_full_playlist_when_nothing_is_old_enough() {
        // The oldest segment starts 10.6 s before the end, CAN-SKIP-UNTIL is 12.
        let p = ll_playlist();
        assert_eq!(render_media_delta(&p), render_media(&p));
        assert!(!render_media_delta(&p).contains("EXT-X-SKIP"));

        let plain = MediaPlaylist { low_latency: None, ..long_ll_playlist() };
        assert_eq!(render_media_delta(&plain), render_media(&plain));
        assert!(!render_media(&plain).contains("PART"), "{}", render_media(&plain));
    }

    #[test]
    fn server_control_is_raised_to_what_the_spec_requires() {
        let mut p = ll_playlist();
        let ll = p.low_latency.as_mut().expect("ll");
        // Below 6 × target duration, below 2 × part target, and below the longest part.
        ll.can_skip_until = 1.0;
        ll.part_hold_back_parts = 0.5;
        ll.part_target = 0.1;
        p.segments[4].parts[9].duration = 0.25;
        let text = render_media(&p);
        assert!(
            text.contains(
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.5,CAN-SKIP-UNTIL=12.0\n\
                 #EXT-X-PART-INF:PART-TARGET=0.25\n"
            ),
            "{text}"
        );
        // The delta skips by the advertised boundary, not the caller's.
        assert_eq!(render_media_delta(&p), text);
    }

    #[test]
    fn part_target_is_the_longest_part_so_24_fps_parts_reach_85_percent_of_it() {
        // 0.2 s parts limit, 24 fps: four frames (1/6 s) per part, as RTMP's milliseconds give them.
        let mut p = ll_playlist();
        for (msn, s) in (100..).zip(&mut p.segments) {
            s.parts = parts(msn, 12, 1.0 / 6.0);
            s.parts[1].duration = 0.167;
            s.parts[2].duration = 0.166;
        }
        let ll = p.low_latency.as_mut().expect("ll");
        ll.open.as_mut().expect("open").parts = parts(105, 2, 1.0 / 6.0);
        let text = render_media(&p);
        assert!(text.contains("PART-HOLD-BACK=0.501,"), "three PART-TARGETs:\n{text}");
        assert!(text.contains("#EXT-X-PART-INF:PART-TARGET=0.167\n"), "{text}");

        // Before the first part, the configured limit.
        let mut p = MediaPlaylist { segments: vec![], ..ll_playlist() };
        p.low_latency.as_mut().expect("ll").open = None;
        assert!(render_media(&p).contains("#EXT-X-PART-INF:PART-TARGET=0.2\n"), "{}", render_media(&p));
    }

    #[test]
    fn a_long_part_counts_toward_part_target_only_while_it_is_listed() {
        // Segment 100's parts are no longer listed (more than three target durations back).
        let mut p = ll_playlist();
        p.segments[0].parts[9].duration = 0.9;
        let text = render_media(&p);
        assert!(!text.contains("100.9.m4s") && text.contains("#EXT-X-PART-INF:PART-TARGET=0.2\n"), "{text}");
        // Segment 103's are.
        p.segments[3].parts[9].duration = 0.9;
        let text = render_media(&p);
        assert!(text.contains("103.9.m4s") && text.contains("#EXT-X-PART-INF:PART-TARGET=0.9\n"), "{text}");
    }

    #[test]
    fn open_segment_without_parts_writes_only_the_hint() {
        let mut p = ll_playlist();
        let ll = p.low_latency.as_mut().expect("ll");
        let open = ll.open.as_mut().expect("open");
        open.parts.clear();
        open.discontinuity = true;
        ll.preload_hint = Some("105.0.m4s".into());
        let text = render_media(&p);
        assert!(
            text.contains("104.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"105.0.m4s\"\n#EXT-X-RENDITION-REPORT:"),
            "{text}"
        );
        // The end is now that of 104 at 10 s, and 102 starts exactly three target durations before
        // it, so its parts are listed too.
        assert_eq!(text.matches("#EXT-X-PART:").count(), 30, "{text}");
    }

    #[test]
    fn decimals_are_trimmed_to_one_digit_at_least() {
        assert_eq!(decimal(0.2), "0.2");
        assert_eq!(decimal(12.0), "12.0");
        assert_eq!(decimal(0.0), "0.0");
        assert_eq!(decimal(0.333_666), "0.33367");
        assert_eq!(decimal(0.1 + 0.2), "0.3");
        assert_eq!(decimal((0..10).map(|_| 0.2).sum()), "2.0");
    }

    /// What an independent parser reads from the LL-HLS text: Python's `m3u8` package (6.0.0),
    /// in strict mode, summarised as JSON.
    fn parsed_by_python_m3u8(text: &str) -> serde_json::Value {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        const SUMMARY: &str = r#"
import json, sys
import m3u8
d = m3u8.parse(sys.stdin.read(), strict=True)
complete = [s for s in d["segments"] if s.get("uri")]
building = [p for s in d["segments"] if not s.get("uri") for p in s.get("parts", [])]
every_part = [p for s in d["segments"] for p in s.get("parts", [])]
print(json.dumps({
    "version": d.get("version"),
    "media_sequence": d.get("media_sequence"),
    "discontinuity_sequence": d.get("discontinuity_sequence"),
    "server_control": d.get("server_control"),
    "part_target": d["part_inf"].get("part_target"),
    "segments": [s["uri"] for s in complete],
    "parts": [len(s.get("parts", [])) for s in complete],
    "maps": [(s.get("init_section") or {}).get("uri") for s in complete],
    "discontinuities": [s["uri"] for s in complete if s.get("discontinuity")],
    "open_parts": [p["uri"] for p in building],
    "independent_parts": [p["uri"] for p in every_part if p.get("independent") == "YES"],
    "preload_hint": d.get("preload_hint"),
    "rendition_reports": d["rendition_reports"],
    "skipped_segments": d["skip"].get("skipped_segments"),
    "endlist": d["is_endlist"],
}))
"#;
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let available = Command::new(&python).args(["-c", "import m3u8"]).output();
        if !available.as_ref().is_ok_and(|o| o.status.success()) {
            panic!(
                "the Python package m3u8 is needed to check playlists with an independent parser \
                 ({python} -c 'import m3u8' failed: {available:?}); run scripts/setup.sh"
            );
        }
        let mut child = Command::new(&python)
            .args(["-c", SUMMARY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python");
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write playlist");
        let out = child.wait_with_output().expect("python");
        assert!(out.status.success(), "m3u8 rejected:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("summary json")
    }

    #[test]
    fn an_independent_parser_reads_the_low_latency_playlist() {
        let got = parsed_by_python_m3u8(&render_media(&ll_playlist()));
        let want = serde_json::json!({
            "version": 6,
            "media_sequence": 100,
            "discontinuity_sequence": 4,
            "server_control": { "can_block_reload": "YES", "part_hold_back": 0.6, "can_skip_until": 12.0 },
            "part_target": 0.2,
            "segments": ["100.m4s", "101.m4s", "102.m4s", "103.m4s", "104.m4s"],
            "parts": [0, 0, 0, 10, 10],
            "maps": ["init-100.mp4", "init-100.mp4", "init-100.mp4", "init-103.mp4", "init-103.mp4"],
            "discontinuities": ["103.m4s"],
            "open_parts": ["105.0.m4s", "105.1.m4s", "105.2.m4s"],
            "independent_parts": ["103.0.m4s", "104.0.m4s", "105.0.m4s"],
            "preload_hint": { "type": "PART", "uri": "105.3.m4s" },
            "rendition_reports": [
                { "uri": "../480p/index.m3u8", "last_msn": 105, "last_part": 2 },
                { "uri": "../360p/index.m3u8", "last_msn": 104 },
            ],
            "skipped_segments": null,
            "endlist": false,
        });
        assert_eq!(got, want);
    }

    #[test]
    fn an_independent_parser_reads_the_delta_update() {
        let got = parsed_by_python_m3u8(&render_media_delta(&long_ll_playlist()));
        let want = serde_json::json!({
            "version": 9,
            "media_sequence": 1000,
            "discontinuity_sequence": 7,
            "server_control": { "can_block_reload": "YES", "part_hold_back": 0.6, "can_skip_until": 6.0 },
            "part_target": 0.2,
            "segments": ["1014.m4s", "1015.m4s", "1016.m4s", "1017.m4s", "1018.m4s", "1019.m4s"],
            "parts": [0, 0, 0, 0, 5, 5],
            "maps": ["init-1005.mp4", "init-1005.mp4", "init-1016.mp4", "init-1016.mp4", "init-1016.mp4", "init-1016.mp4"],
            "discontinuities": ["1016.m4s"],
            "open_parts": ["1020.0.m4s", "1020.1.m4s"],
            "independent_parts": ["1018.0.m4s", "1019.0.m4s", "1020.0.m4s"],
            "preload_hint": { "type": "PART", "uri": "1020.2.m4s" },
            "rendition_reports": [{ "uri": "../480p/index.m3u8", "last_msn": 1020, "last_part": 1 }],
            "skipped_segments": 14,
            "endlist": false,
        });
        assert_eq!(got, want);
    }
}
