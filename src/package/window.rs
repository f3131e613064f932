//! A channel's renditions over time: what each media playlist lists (the window of recent
//! segments and the parts of the one being built), how segments are numbered across publishes,
//! when a segment and its parts leave the store, what the master playlist declares, and where
//! timed metadata waits for the renditions to take it.
//!
//! Pure state: no locks, no store, no clock but the times handed in. The rendition publisher
//! (`publisher.rs`) applies it to the store; the tests here drive it like a playlist render.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::media::{Container, Ticks, ticks_to_secs};
use crate::package::fmp4::TrackParams;
use crate::package::playlist::{
    self, AudioRendition, LowLatency, MasterPlaylist, MediaPlaylist, OpenSegment, PlaylistPart, PlaylistSegment,
    RenditionReport, Variant,
};
use crate::package::segmenter::Metadata;
use crate::store::ObjectName;

/// How long a segment stays available once it has left the playlist, for a playlist of `window`
/// segments of `segment_duration` seconds that never raised its target duration: RFC 8216
/// §6.2.2 asks for the segment's own duration plus that of the longest playlist that contained
/// it, and a low-latency playlist also lists the parts of the segment being built (up to one
/// more segment's worth). The window computes the real figure per segment from the durations it
/// listed; this is the nominal one, for sizing caches and memory.
pub fn nominal_retention(segment_duration: f64, window: usize) -> Duration {
    let target = segment_duration.ceil().max(1.0);
    Duration::from_secs_f64(target + target * (window + 1) as f64)
}
/// Stamped metadata kept for renditions that have not taken it yet.
const BOARD_LIMIT: usize = 64;

/// What a channel's playlists remember across publishes.
#[derive(Default)]
pub struct ChannelWindow {
    renditions: BTreeMap<String, RenditionLog>,
    /// Video variants of the current (or last) publish, highest first, with their nominal bitrate.
    variants: Vec<(String, Option<u64>)>,
    audio: Option<String>,
    /// The master playlist as last published.
    master: String,
    /// The session being finished is followed by another: keep the playlists open.
    pub restarting: bool,
    /// Timed metadata stamped for the renditions of the current publish.
    pub board: MetadataBoard,
}

/// Timed metadata stamped with its presentation time, until every rendition has taken it.
#[derive(Default)]
pub struct MetadataBoard {
    entries: VecDeque<BoardEntry>,
    next_id: u32,
}

struct BoardEntry {
    metadata: Metadata,
    /// When it was posted (API) or arrived (RTMP), for `ladderd_metadata_latency_seconds`.
    posted: SystemTime,
    /// A part carrying it has been published in some rendition.
    published: bool,
}

impl MetadataBoard {
    /// Puts an ID3 `tag` at `pts` on the board; returns its id (ids increase, wrap, skip 0).
    pub fn post(&mut self, pts: Ticks, tag: bytes::Bytes, posted: SystemTime) -> u32 {
        let id = self.next_id.max(1);
        self.next_id = id.wrapping_add(1).max(1);
        self.entries.push_back(BoardEntry { metadata: Metadata { pts, id, tag }, posted, published: false });
        while self.entries.len() > BOARD_LIMIT {
            self.entries.pop_front();
        }
        id
    }

    /// What came after id `seen`, oldest first.
    pub fn after(&self, seen: u32) -> impl Iterator<Item = &Metadata> {
        self.entries.iter().map(|e| &e.metadata).filter(move |m| id_after(m.id, seen))
    }

    /// Marks the entries with these ids as published (the first rendition to publish a part
    /// carrying one); returns when each newly published one was posted.
    pub fn published(&mut self, ids: &[u32]) -> Vec<SystemTime> {
        let mut posted = Vec::new();
        for entry in self.entries.iter_mut().filter(|e| !e.published && ids.contains(&e.metadata.id)) {
            entry.published = true;
            posted.push(entry.posted);
        }
        posted
    }
}

/// Whether metadata id `id` came after `seen` (ids increase and wrap, skipping 0).
pub fn id_after(id: u32, seen: u32) -> bool {
    let d = id.wrapping_sub(seen);
    d != 0 && d < u32::MAX / 2
}

/// One rendition's playlist state.
pub struct RenditionLog {
    segments: VecDeque<LoggedSegment>,
    /// Segments that left the playlist but stay available until their time is up, in the order
    /// they left.
    leaving: VecDeque<(Instant, Leaving)>,
    /// The longest the playlist has been while it listed parts of the open segment.
    open_longest: f64,
    /// Media sequence number of `segments[0]` (or of the next segment when empty).
    media_sequence: u64,
    next_msn: u64,
    discontinuity_sequence: u64,
    target_duration: u64,
    ended: bool,
    /// The next segment starts after a gap (a new publish or new stream parameters).
    discontinuity_next: bool,
    /// The init segment new segments use: the number it is named after.
    init: Option<u64>,
    /// Parts of the segment being built (its number is `next_msn`), and its start time.
    open_parts: Vec<PlaylistPart>,
    open_pdt: Option<SystemTime>,
    /// Facts for the master playlist.
    width: u32,
    height: u32,
    codec: String,
    channels: u8,
    frame_rate: f64,
}

struct LoggedSegment {
    msn: u64,
    init: Option<u64>,
    line: PlaylistSegment,
    bytes: u64,
    /// Seconds: the longest playlist that has listed this segment (or its parts) so far.
    longest_playlist: f64,
}

/// The objects of a segment that left the playlist: removed from the store once its own duration
/// plus that of the longest playlist that listed it have passed since (RFC 8216 §6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaving {
    pub msn: u64,
    /// Its init segment, when no segment still listed uses it.
    pub init: Option<u64>,
    /// Its parts, numbered `0..parts`.
    pub parts: u64,
}

/// A complete segment, as the packager hands it to [`ChannelWindow::add_segment`].
#[derive(Debug, Clone, Copy)]
pub struct CompleteSegment {
    pub duration: f64,
    pub bytes: u64,
    pub program_date_time: SystemTime,
    pub frames: u32,
}

/// What adding a segment changed.
#[derive(Debug, Default, PartialEq)]
pub struct SegmentAdded {
    /// The new EXT-X-TARGETDURATION, when this segment raised it.
    pub raised_target: Option<u64>,
    pub target_duration: u64,
    /// Segments whose time in the store after the playlist is up: remove their objects now.
    pub expired: Vec<Leaving>,
}

impl RenditionLog {
    /// An empty log whose first segment will be number `msn`.
    fn new(msn: u64, target_duration: u64) -> Self {
        Self {
            segments: VecDeque::new(),
            leaving: VecDeque::new(),
            open_longest: 0.0,
            media_sequence: msn,
            next_msn: msn,
            discontinuity_sequence: 0,
            target_duration,
            ended: false,
            discontinuity_next: false,
            init: None,
            open_parts: Vec::new(),
            open_pdt: None,
            width: 0,
            height: 0,
            codec: String::new(),
            channels: 0,
            frame_rate: 0.0,
        }
    }

    /// The number of the segment being built.
    pub fn next_msn(&self) -> u64 {
        self.next_msn
    }

    /// Media sequence number of the latest complete segment listed.
    pub fn last_msn(&self) -> Option<u64> {
        self.segments.back().and_then(|_| self.next_msn.checked_sub(1))
    }

    pub fn segments_in_window(&self) -> usize {
        self.segments.len()
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// 0 for an audio rendition.
    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn codec(&self) -> &str {
        &self.codec
    }

    /// Frames per second of the latest segment; `None` for audio or before a segment.
    pub fn frame_rate(&self) -> Option<f64> {
        (self.frame_rate > 0.0).then_some(self.frame_rate)
    }

    /// (peak, average) bits per second over the window; `None` before the first segment.
    pub fn measured(&self) -> Option<(u64, u64)> {
        if self.segments.is_empty() {
            return None;
        }
        let segs: Vec<(u64, f64)> = self.segments.iter().map(|s| (s.bytes, s.line.duration)).collect();
        Some(playlist::measured_bandwidth(&segs))
    }

    /// The last (msn, part index) this rendition has, for `EXT-X-RENDITION-REPORT`.
    fn last_part(&self) -> Option<(u64, Option<u64>)> {
        if !self.open_parts.is_empty() {
            return Some((self.next_msn, Some(self.open_parts.len() as u64 - 1)));
        }
        let last = self.segments.back()?;
        Some((self.next_msn.checked_sub(1)?, last.line.parts.len().checked_sub(1).map(|p| p as u64)))
    }

    /// Parts of the segment being built.
    pub fn open_parts(&self) -> u64 {
        self.open_parts.len() as u64
    }

    /// A new track (first parameters, or new ones): the next segment follows a discontinuity if
    /// segments were published with the old one. Returns the number its init segment is named
    /// after (`with_init`: the container has one; MPEG-TS does not), which is the next segment's:
    /// a later init segment never reuses a cached name.
    pub fn start_track(&mut self, track: &TrackParams, had_track: bool, with_init: bool) -> Option<u64> {
        if had_track && !self.segments.is_empty() {
            self.discontinuity_next = true;
        }
        self.init = with_init.then_some(self.next_msn);
        match track {
            TrackParams::Video(v) => {
                self.width = v.width;
                self.height = v.height;
                self.codec = v.codec.clone();
            }
            TrackParams::Audio(a) => {
                self.codec = a.codec.clone();
                self.channels = a.channels;
            }
        }
        self.init
    }

    /// Lists a part of the segment being built, named `uri`, starting at `start` (wall clock).
    /// Returns how many parts that segment has now.
    pub fn add_part(&mut self, uri: String, start: SystemTime, duration: f64, independent: bool) -> u64 {
        if self.open_parts.is_empty() {
            self.open_pdt = Some(start);
        }
        self.open_parts.push(PlaylistPart { uri, duration, independent });
        self.note_playlist_length();
        self.open_parts.len() as u64
    }

    /// Records the playlist's present length (its segments and the parts of the open one) against
    /// every segment it lists, and the open one.
    fn note_playlist_length(&mut self) {
        let listed: f64 = self.segments.iter().map(|s| s.line.duration).sum();
        let length = listed + self.open_parts.iter().map(|p| p.duration).sum::<f64>();
        for s in &mut self.segments {
            s.longest_playlist = s.longest_playlist.max(length);
        }
        if !self.open_parts.is_empty() {
            self.open_longest = self.open_longest.max(length);
        }
    }

    /// Lists segment [`RenditionLog::next_msn`], named `uri`, with the parts listed so far, and
    /// keeps the last `window` segments. Older ones leave the playlist; each stays available for
    /// its own duration plus that of the longest playlist that listed it (RFC 8216 §6.2.2), counted
    /// from `now`, and is returned in [`SegmentAdded::expired`] by the first call after that.
    ///
    /// Parts need no time of their own: they leave the store with their segment, whose bytes they
    /// share, and a part leaves the playlist (three target durations from its end, or when its
    /// segment does) no later than its segment, so it is kept for longer than its own duration
    /// plus the playlist's.
    pub fn add_segment(&mut self, uri: String, segment: CompleteSegment, window: usize, now: Instant) -> SegmentAdded {
        let msn = self.next_msn;
        self.next_msn += 1;
        let duration = segment.duration;
        if duration > 0.0 && segment.frames > 1 && self.width > 0 {
            self.frame_rate = f64::from(segment.frames) / duration;
        }
        // RFC 8216bis §4.4.3.1: each EXTINF, rounded to the nearest integer, must not exceed the
        // target duration; the target never shrinks while the playlist lives.
        let rounded = duration.round() as u64;
        let raised_target = (rounded > self.target_duration).then_some(rounded);
        self.target_duration = self.target_duration.max(rounded);
        let parts = std::mem::take(&mut self.open_parts);
        self.open_pdt = None;
        let map_uri = self.init.map(init_file).unwrap_or_default();
        self.segments.push_back(LoggedSegment {
            msn,
            init: self.init,
            line: PlaylistSegment {
                uri,
                map_uri,
                duration,
                program_date_time: segment.program_date_time,
                discontinuity: std::mem::take(&mut self.discontinuity_next),
                parts,
            },
            bytes: segment.bytes,
            longest_playlist: std::mem::take(&mut self.open_longest),
        });
        while self.segments.len() > window {
            let Some(old) = self.segments.pop_front() else { break };
            self.media_sequence += 1;
            if old.line.discontinuity {
                self.discontinuity_sequence += 1;
            }
            let init_still_used = self.segments.iter().any(|s| s.init == old.init);
            let until = now + Duration::from_secs_f64((old.line.duration + old.longest_playlist).max(0.0));
            self.leaving.push_back((
                until,
                Leaving {
                    msn: old.msn,
                    init: old.init.filter(|_| !init_still_used),
                    parts: old.line.parts.len() as u64,
                },
            ));
        }
        self.note_playlist_length();
        // Segments leave in the order they left the playlist; one kept longer (it was listed by
        // a longer playlist) holds back those behind it, which only keeps them longer.
        let mut expired = Vec::new();
        while self.leaving.front().is_some_and(|(until, _)| *until <= now) {
            expired.extend(self.leaving.pop_front().map(|(_, l)| l));
        }
        SegmentAdded { raised_target, target_duration: self.target_duration, expired }
    }
}

/// How the media playlists of a channel are rendered: the configured part duration, and the
/// container of its segments.
#[derive(Debug, Clone, Copy)]
pub struct Rendering {
    pub part_duration: f64,
    pub container: Container,
}

impl ChannelWindow {
    pub fn rendition(&self, name: &str) -> Option<&RenditionLog> {
        self.renditions.get(name)
    }

    pub fn rendition_mut(&mut self, name: &str) -> Option<&mut RenditionLog> {
        self.renditions.get_mut(name)
    }

    /// Every rendition known, as the status shows them: the current publish's variants highest
    /// first, then audio, then renditions only earlier publishes had.
    pub fn renditions(&self) -> Vec<(&str, &RenditionLog)> {
        let order: Vec<&String> = self.variants.iter().map(|(n, _)| n).chain(self.audio.iter()).collect();
        let rest = self.renditions.keys().filter(|n| !order.contains(n));
        order.iter().copied().chain(rest).filter_map(|n| Some((n.as_str(), self.renditions.get(n)?))).collect()
    }

    /// Renditions whose playlists are still open.
    pub fn open(&self) -> Vec<String> {
        self.renditions.iter().filter(|(_, log)| !log.ended).map(|(n, _)| n.clone()).collect()
    }

    /// Readies the logs of the renditions of a new publish: video `variants` highest first
    /// (with their nominal bitrate), and `audio`. `target` is the configured segment duration
    /// rounded up; `now` dates a channel's first segment number.
    ///
    /// A rendition with segments listed goes on from its own next number: a segment's media
    /// sequence number is its position in the playlist (RFC 8216 §6.2.1), so none can be
    /// skipped. Renditions usually end a publish with the same count, and then keep one common
    /// number for the same instant; one that ended with a segment fewer (audio that stopped
    /// before the last video cut) keeps its own numbers, which §6.3.2 allows: clients match
    /// renditions by time, not by number. A new or emptied rendition starts at the highest
    /// number, aligned with the others where it can be.
    ///
    /// Returns the renditions of an earlier publish that this one does not have (a source that
    /// got smaller, a rung that failed) and whose playlists are still open: the caller ends them,
    /// so that no player waits on them.
    pub fn begin_publish(
        &mut self,
        variants: Vec<(String, Option<u64>)>,
        audio: Option<String>,
        target: u64,
        now: SystemTime,
    ) -> Vec<String> {
        let names: Vec<String> = variants.iter().map(|(n, _)| n.clone()).chain(audio.clone()).collect();
        let base = self.renditions.values().map(|r| r.next_msn).max().unwrap_or_else(|| first_media_sequence(now));
        for log in self.renditions.values_mut() {
            if log.segments.is_empty() {
                log.next_msn = base;
            }
        }
        for name in &names {
            let log = self.renditions.entry(name.clone()).or_insert_with(|| RenditionLog::new(base, target));
            if log.segments.is_empty() {
                log.media_sequence = base;
            }
            log.discontinuity_next = !log.segments.is_empty();
            log.ended = false;
        }
        self.variants = variants;
        self.audio = audio;
        self.renditions.iter().filter(|(n, log)| !log.ended && !names.contains(n)).map(|(n, _)| n.clone()).collect()
    }

    /// Ends `rendition`'s playlist (ENDLIST, no preload hint); returns the number of the segment
    /// it would have built next, or `None` for an unknown rendition.
    pub fn end(&mut self, rendition: &str) -> Option<u64> {
        let log = self.renditions.get_mut(rendition)?;
        log.ended = true;
        Some(log.next_msn)
    }

    /// The media playlist of `rendition` as it stands; `None` for an unknown rendition.
    pub fn media_playlist(&self, rendition: &str, how: Rendering) -> Option<MediaPlaylist> {
        let log = self.renditions.get(rendition)?;
        let low_latency = LowLatency {
            part_target: how.part_duration,
            // Three part targets: what RFC 8216bis §4.4.3.8 recommends, and what makes hls.js
            // play closest to the live edge.
            part_hold_back_parts: 3.0,
            // §4.4.3.8: at least six target durations.
            can_skip_until: 6.0 * log.target_duration as f64,
            open: log.open_pdt.filter(|_| !log.open_parts.is_empty()).map(|pdt| OpenSegment {
                map_uri: log.init.map(init_file).unwrap_or_default(),
                program_date_time: pdt,
                discontinuity: log.discontinuity_next,
                parts: log.open_parts.clone(),
            }),
            preload_hint: (!log.ended).then(|| {
                let next = ObjectName::Part {
                    rendition,
                    msn: log.next_msn,
                    part: log.open_parts.len() as u64,
                    container: how.container,
                };
                next.file()
            }),
            rendition_reports: self
                .variants
                .iter()
                .map(|(name, _)| name)
                .chain(self.audio.iter())
                .filter(|name| **name != rendition)
                .filter_map(|name| {
                    let (last_msn, last_part) = self.renditions.get(name)?.last_part()?;
                    let uri = format!("../{}", ObjectName::MediaPlaylist { rendition: name });
                    Some(RenditionReport { uri, last_msn, last_part })
                })
                .collect(),
        };
        Some(MediaPlaylist {
            target_duration: log.target_duration,
            media_sequence: log.media_sequence,
            discontinuity_sequence: log.discontinuity_sequence,
            segments: log.segments.iter().map(|s| s.line.clone()).collect(),
            ended: log.ended,
            low_latency: Some(low_latency),
        })
    }

    /// The master playlist, if it differs from the one last returned here: once every live
    /// rendition of the current publish has a segment (so that RESOLUTION, CODECS and FRAME-RATE
    /// are measured, not guessed).
    pub fn master_update(&mut self) -> Option<String> {
        let master = self.render_master()?;
        if master == self.master {
            return None;
        }
        self.master = master.clone();
        Some(master)
    }

    fn render_master(&self) -> Option<String> {
        let audio = match &self.audio {
            Some(name) => {
                let log = self.renditions.get(name)?;
                let (peak, avg) = log.measured()?;
                Some((name, log, peak, avg))
            }
            None => None,
        };
        let mut variants = Vec::new();
        for (name, nominal) in &self.variants {
            let log = self.renditions.get(name)?;
            let Some((peak, avg)) = log.measured() else {
                // A rung that failed before its first segment is left out rather than holding
                // back the whole ladder; one still starting up is waited for.
                if log.ended {
                    continue;
                }
                return None;
            };
            // Before the window is full the measured figures are noisy; never declare less than
            // the configured rate (BANDWIDTH is an upper bound, RFC 8216bis §4.4.6.2).
            let peak = peak.max(nominal.map(|n| n + n / 10).unwrap_or(0));
            let avg = if log.segments.len() >= 3 { avg } else { avg.max(nominal.unwrap_or(0)) };
            let (a_peak, a_avg, a_codec) = match &audio {
                Some((_, alog, p, a)) => (*p, *a, Some(alog.codec.as_str())),
                None => (0, 0, None),
            };
            let codecs = match a_codec {
                Some(c) => format!("{},{}", log.codec, c),
                None => log.codec.clone(),
            };
            variants.push(Variant {
                uri: ObjectName::MediaPlaylist { rendition: name }.to_string(),
                bandwidth: peak + a_peak,
                average_bandwidth: avg + a_avg,
                width: log.width,
                height: log.height,
                frame_rate: log.frame_rate,
                codecs,
            });
        }
        if variants.is_empty() {
            return None;
        }
        let audio = audio.map(|(name, log, _, _)| AudioRendition {
            group_id: "audio".into(),
            name: "main".into(),
            uri: ObjectName::MediaPlaylist { rendition: name }.to_string(),
            channels: log.channels,
            language: None,
        });
        Some(playlist::render_master(&MasterPlaylist { variants, audio }))
    }
}

/// The `EXT-X-MAP` URI of the init segment named after segment `msn`.
fn init_file(msn: u64) -> String {
    ObjectName::Init { rendition: "", msn }.file()
}

/// The wall-clock time of a part or segment starting at `pts`, given the wall-clock time of pts 0.
pub fn wall_clock(anchor: SystemTime, pts: Ticks) -> SystemTime {
    anchor + Duration::from_secs_f64(ticks_to_secs(pts.max(0)))
}

/// Media sequence numbers start from the wall clock (tenths of a second since the Unix epoch) so
/// that segment names are never reused across restarts: their URLs are cached as immutable.
fn first_media_sequence(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64 / 100).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AudioParams, VideoParams};

    const HOW: Rendering = Rendering { part_duration: 0.2, container: Container::Fmp4 };

    fn video(width: u32, height: u32) -> TrackParams {
        TrackParams::Video(VideoParams { avcc: bytes::Bytes::new(), width, height, codec: "avc1.64001f".into() })
    }

    fn audio() -> TrackParams {
        TrackParams::Audio(AudioParams {
            asc: bytes::Bytes::new(),
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        })
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_000_000 + secs)
    }

    /// A monotonic time `secs` after the tests' epoch.
    fn clock(secs: f64) -> Instant {
        static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
        *EPOCH + Duration::from_secs_f64(secs)
    }

    /// Adds one 2 s segment of `parts` parts to `rendition`, as the publisher does: segment k of
    /// a rendition (counted from its numbers' last three digits) completes at 2 (k + 1) s.
    fn segment(w: &mut ChannelWindow, rendition: &str, parts: u64, window: usize) -> SegmentAdded {
        let log = w.rendition_mut(rendition).expect("rendition");
        let msn = log.next_msn();
        for p in 0..parts {
            let name = ObjectName::Part { rendition, msn, part: p, container: Container::Fmp4 };
            log.add_part(name.file(), at(msn), 2.0 / parts as f64, p == 0);
        }
        let uri = ObjectName::Segment { rendition, msn, container: Container::Fmp4 }.file();
        let done = CompleteSegment { duration: 2.0, bytes: 250_000, program_date_time: at(msn), frames: 60 };
        log.add_segment(uri, done, window, clock(2.0 * (msn % 1000 + 1) as f64))
    }

    /// Segments `first..first + count` of a rendition that has ended, as a publish leaves them.
    fn ended_log(first: u64, count: u64) -> RenditionLog {
        let mut log = RenditionLog::new(first, 2);
        log.start_track(&video(640, 360), false, true);
        for msn in first..first + count {
            let done = CompleteSegment { duration: 2.0, bytes: 1000, program_date_time: at(msn), frames: 60 };
            log.add_segment(format!("{msn}.m4s"), done, 10, clock(msn as f64));
        }
        log.ended = true;
        log
    }

    /// A segment's number is its position in the playlist: a rendition that ended a publish with
    /// a segment fewer than the others goes on from its own next number instead of skipping one
    /// (which would leave `{n}.m4s` at position n - 1, and blocking reloads for n answered at once
    /// for ever).
    #[test]
    fn a_returning_publisher_continues_every_rendition_without_a_gap_in_its_numbers() {
        let mut w = ChannelWindow::default();
        w.renditions.insert("a".into(), ended_log(100, 3));
        w.renditions.insert("audio".into(), ended_log(100, 2));
        let stale = w.begin_publish(vec![("a".into(), None), ("b".into(), None)], Some("audio".into()), 2, at(0));
        assert!(stale.is_empty());
        for (name, next) in [("a", 103), ("audio", 102), ("b", 103)] {
            let log = &w.renditions[name];
            assert_eq!(log.next_msn, next, "{name}");
            assert_eq!(log.media_sequence + log.segments.len() as u64, log.next_msn, "{name}: no gap");
            assert!(!log.ended);
            assert_eq!(log.discontinuity_next, name != "b", "{name}: a discontinuity after the old segments");
        }
    }

    #[test]
    fn the_first_publish_numbers_from_the_wall_clock_and_names_stale_renditions() {
        let mut w = ChannelWindow::default();
        w.begin_publish(vec![("720p".into(), Some(2_000_000)), ("360p".into(), None)], None, 2, at(0));
        assert_eq!(w.rendition("720p").map(RenditionLog::next_msn), Some(17_640_000_000));
        // A smaller source leaves the 720p rung out: its open playlist is the caller's to end.
        let stale = w.begin_publish(vec![("360p".into(), None)], None, 2, at(60));
        assert_eq!(stale, ["720p"]);
        assert_eq!(w.end("720p"), Some(17_640_000_000));
        assert!(w.open() == ["360p"] && w.end("nope").is_none());
    }

    #[test]
    fn the_window_keeps_its_length_and_objects_stay_for_the_rfc_period_after_it() {
        let mut w = ChannelWindow::default();
        w.begin_publish(vec![("a".into(), None)], None, 2, at(0));
        let log = w.rendition_mut("a").expect("a");
        let first = log.next_msn();
        assert_eq!(log.start_track(&video(640, 360), false, true), Some(first));
        // Segment 0 completes at 2 s and leaves the playlist (window 3) when segment 3 completes,
        // at 8 s. The longest playlist that listed it had three segments and the four parts of
        // the fourth: 8 s. So it stays until 8 + 2 + 8 = 18 s, when segment 8 completes.
        for k in 0..8 {
            assert_eq!(segment(&mut w, "a", 4, 3).expired, [], "segment {k}");
        }
        // The init segment goes only with the last segment that uses it (never here: all share it).
        assert_eq!(segment(&mut w, "a", 4, 3).expired, [Leaving { msn: first, init: None, parts: 4 }]);
        let log = w.rendition("a").expect("a");
        assert_eq!((log.segments_in_window(), log.media_sequence, log.last_msn()), (3, first + 6, Some(first + 8)));
        let leaving: Vec<u64> = log.leaving.iter().map(|(_, l)| l.msn).collect();
        assert_eq!(leaving, (first + 1..first + 6).collect::<Vec<_>>(), "left the playlist, still served");
        let text = playlist::render_media(&w.media_playlist("a", HOW).expect("playlist"));
        assert!(text.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{}", first + 6)), "{text}");
        assert!(text.contains(&format!("#EXT-X-MAP:URI=\"init-{first}.mp4\"")), "{text}");
        assert!(text.contains(&format!("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{}.0.m4s\"", first + 9)), "{text}");
        assert_eq!(log.frame_rate(), Some(30.0));
    }

    /// RFC 8216 §6.2.2 counts the longest playlist that contained the segment: one long segment
    /// (a raised EXT-X-TARGETDURATION) keeps its neighbours longer too.
    #[test]
    fn a_long_segment_keeps_itself_and_its_neighbours_longer() {
        let mut w = ChannelWindow::default();
        w.begin_publish(vec![("a".into(), None)], None, 2, at(0));
        let log = w.rendition_mut("a").expect("a");
        let first = log.next_msn();
        let mut add = |duration: f64, now: f64| {
            let done = CompleteSegment { duration, bytes: 1, program_date_time: at(0), frames: 60 };
            let msns = log.add_segment("s.m4s".into(), done, 2, clock(now)).expired;
            msns.iter().map(|l| l.msn - first).collect::<Vec<_>>()
        };
        let none: [u64; 0] = [];
        assert_eq!(add(2.0, 2.0), none);
        assert_eq!(add(7.5, 9.5), none, "EXT-X-TARGETDURATION raised to 8");
        // Segment 0 leaves at 11.5 s; the longest playlist with it listed 0 and 1: 9.5 s.
        assert_eq!(add(2.0, 11.5), none);
        // Segment 1 leaves at 13.5 s; its longest playlist, 9.5 s, plus its own 7.5 s.
        assert_eq!(add(2.0, 13.5), none);
        assert_eq!(add(2.0, 22.75), none, "0 is kept until 11.5 + 2 + 9.5 s");
        assert_eq!(add(2.0, 23.0), [0]);
        assert_eq!(add(2.0, 30.25), none, "1 is kept until 13.5 + 7.5 + 9.5 s");
        // Segment 2 was listed beside 1 as well: it is kept as long after it left.
        assert_eq!(add(2.0, 30.5), [1]);
    }

    #[test]
    fn the_nominal_retention_is_a_segment_and_a_playlist_with_its_open_parts() {
        assert_eq!(nominal_retention(2.0, 6), Duration::from_secs(16));
        assert_eq!(nominal_retention(1.5, 4), Duration::from_secs(12), "target durations are whole seconds");
    }

    #[test]
    fn a_new_track_gets_its_own_init_segment_and_a_discontinuity() {
        let mut w = ChannelWindow::default();
        w.begin_publish(vec![("a".into(), None)], None, 2, at(0));
        let first = w.rendition("a").expect("a").next_msn();
        w.rendition_mut("a").expect("a").start_track(&video(640, 360), false, true);
        segment(&mut w, "a", 2, 2);
        // A phone turned sideways: new parameters, a new init segment named after the next segment.
        let log = w.rendition_mut("a").expect("a");
        assert_eq!(log.start_track(&video(360, 640), true, true), Some(first + 1));
        assert_eq!((log.width(), log.height()), (360, 640));
        segment(&mut w, "a", 2, 2);
        assert_eq!(segment(&mut w, "a", 2, 2).expired, []);
        let text = playlist::render_media(&w.media_playlist("a", HOW).expect("playlist"));
        assert!(text.contains("#EXT-X-DISCONTINUITY\n") && text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0"), "{text}");
        // Segment 0 left the playlist at 6 s; its longest playlist was two segments and the two
        // parts of a third (6 s), so it goes at 6 + 2 + 6 = 14 s, when segment 6 completes, with
        // the first init segment: nothing else used it.
        for k in 3..6 {
            assert_eq!(segment(&mut w, "a", 2, 2).expired, [], "segment {k}");
        }
        let gone = segment(&mut w, "a", 2, 2).expired;
        assert_eq!(gone, [Leaving { msn: first, init: Some(first), parts: 2 }]);
        let text = playlist::render_media(&w.media_playlist("a", HOW).expect("playlist"));
        assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1"), "{text}");
    }

    #[test]
    fn a_long_segment_raises_the_target_duration_for_good() {
        let mut w = ChannelWindow::default();
        w.begin_publish(vec![("a".into(), None)], None, 2, at(0));
        let log = w.rendition_mut("a").expect("a");
        let long = CompleteSegment { duration: 7.6, bytes: 1, program_date_time: at(0), frames: 228 };
        let added = log.add_segment("x.m4s".into(), long, 5, clock(8.0));
        assert_eq!((added.raised_target, added.target_duration), (Some(8), 8));
        let short = CompleteSegment { duration: 2.0, ..long };
        assert_eq!(log.add_segment("y.m4s".into(), short, 5, clock(10.0)).raised_target, None);
        let text = playlist::render_media(&w.media_playlist("a", HOW).expect("playlist"));
        assert!(text.contains("#EXT-X-TARGETDURATION:8\n"), "{text}");
    }

    #[test]
    fn the_master_waits_for_every_live_rendition_and_changes_only_with_the_facts() {
        let mut w = ChannelWindow::default();
        w.begin_publish(
            vec![("720p".into(), Some(2_000_000)), ("360p".into(), Some(600_000))],
            Some("audio".into()),
            2,
            at(0),
        );
        w.rendition_mut("720p").expect("720p").start_track(&video(1280, 720), false, true);
        w.rendition_mut("360p").expect("360p").start_track(&video(640, 360), false, true);
        w.rendition_mut("audio").expect("audio").start_track(&audio(), false, true);
        segment(&mut w, "720p", 2, 5);
        segment(&mut w, "audio", 2, 5);
        assert_eq!(w.master_update(), None, "360p has no segment yet");
        segment(&mut w, "360p", 2, 5);
        let master = w.master_update().expect("every rendition measured");
        assert!(master.contains("RESOLUTION=1280x720") && master.contains("720p/index.m3u8"), "{master}");
        assert!(master.contains("CODECS=\"avc1.64001f,mp4a.40.2\"") && master.contains("URI=\"audio/index.m3u8\""));
        // Each rendition measures 1 Mbit/s. While the window fills the nominal rate is the floor:
        // 720p's peak is its 2 Mbit/s plus 10 %, its average 2 Mbit/s, audio's added to both.
        assert!(master.contains("BANDWIDTH=3200000,AVERAGE-BANDWIDTH=3000000,"), "{master}");
        assert_eq!(w.master_update(), None, "unchanged");
        // A rung that failed before its first segment is left out rather than holding it back.
        let mut w2 = ChannelWindow::default();
        w2.begin_publish(vec![("a".into(), None), ("b".into(), None)], None, 2, at(0));
        w2.rendition_mut("a").expect("a").start_track(&video(640, 360), false, true);
        segment(&mut w2, "a", 1, 5);
        assert_eq!(w2.master_update(), None);
        w2.end("b");
        assert!(w2.master_update().is_some_and(|m| !m.contains("b/index.m3u8")));
    }

    #[test]
    fn rendition_reports_name_each_sibling_and_its_last_part() {
        let mut w = ChannelWindow::default();
        w.begin_publish(vec![("a".into(), None), ("b".into(), None)], None, 2, at(0));
        let msn = w.rendition("b").expect("b").next_msn();
        segment(&mut w, "a", 3, 5);
        let b = w.rendition_mut("b").expect("b");
        b.add_part("p".into(), at(0), 0.2, true);
        let reports = w.media_playlist("a", HOW).expect("a").low_latency.expect("ll").rendition_reports;
        assert_eq!(reports, [RenditionReport { uri: "../b/index.m3u8".into(), last_msn: msn, last_part: Some(0) }]);
        let reports = w.media_playlist("b", HOW).expect("b").low_latency.expect("ll").rendition_reports;
        assert_eq!(reports, [RenditionReport { uri: "../a/index.m3u8".into(), last_msn: msn, last_part: Some(2) }]);
    }

    #[test]
    fn metadata_ids_wrap_past_zero_and_each_is_published_once() {
        let mut board = MetadataBoard { next_id: u32::MAX, ..MetadataBoard::default() };
        let a = board.post(10, bytes::Bytes::from_static(b"a"), at(1));
        let b = board.post(20, bytes::Bytes::from_static(b"b"), at(2));
        assert_eq!((a, b), (u32::MAX, 1), "0 is skipped");
        assert_eq!(board.after(a).map(|m| m.id).collect::<Vec<_>>(), [1]);
        assert_eq!(board.after(u32::MAX - 1).count(), 2);
        assert_eq!(board.published(&[1]), [at(2)]);
        assert!(board.published(&[1]).is_empty(), "counted once, in the first rendition");
        for i in 0..100 {
            board.post(i, bytes::Bytes::new(), at(3));
        }
        assert_eq!(board.entries.len(), BOARD_LIMIT);
    }
}
