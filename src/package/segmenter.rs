//! Cuts one rendition's packets into LL-HLS parts and segments, sans-IO: packets in, finished
//! parts and segments out. Segments start exactly where a packet says `segment_start`, never
//! elsewhere; within a segment, a part closes as soon as one more sample would take it past the
//! part target (RFC 8216bis §4.4.3.7: no part may be longer than PART-TARGET). A segment's bytes
//! are its parts' bytes in order, so both can be served from the same buffers.
//!
//! Samples are kept in a pending list in the track timescale with their decode times; a fragment
//! is built from any run of them once the decode time that follows the run is known (the next
//! sample's, or an estimate at the end of the stream). A segment is written as one such
//! fragment; LL-HLS parts are shorter runs of the same list.

use std::time::SystemTime;

use bytes::Bytes;

use crate::media::Container;
use crate::media::{AudioParams, EncodedPacket, TIMESCALE, Ticks};
use crate::package::fmp4::{self, Fragment, FragmentSample, TrackParams};
use crate::package::ts::{TsSample, TsWriter};

/// A finished segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Presentation time of the segment's first sample (90 kHz).
    pub start_pts: Ticks,
    /// Duration (90 kHz).
    pub duration: Ticks,
    pub fragment: Fragment,
    /// Samples in the segment.
    pub frames: u32,
    /// When the segment's first sample arrived at ingest.
    pub program_date_time: SystemTime,
}

/// Duration given to the last video sample of a stream when no earlier sample tells (one frame
/// at 30 fps).
const DEFAULT_VIDEO_SAMPLE_DURATION: i64 = 3000;
/// AAC-LC's frame length, used if the parameters say 0.
const DEFAULT_AAC_FRAME_SAMPLES: u32 = 1024;

/// A sample waiting to be written, timed in the track timescale.
#[derive(Debug, Clone)]
struct PendingSample {
    /// Presentation time on the 90 kHz clock, as it came.
    pts: Ticks,
    dts: i64,
    composition_offset: i32,
    keyframe: bool,
    data: Bytes,
}

/// The segment being filled.
#[derive(Debug)]
struct OpenSegment {
    start_pts: Ticks,
    program_date_time: SystemTime,
    /// Decode time of the segment's first sample (track timescale).
    first_dts: i64,
    /// Decode time where the closed parts end.
    closed_end: i64,
    /// Bytes of the closed parts, in order.
    chunks: Vec<Bytes>,
    frames: u32,
    parts_closed: u32,
    /// The open part's samples and when its first one arrived at ingest.
    part: Vec<PendingSample>,
    part_ingest_time: SystemTime,
    /// When each of the open part's samples arrived at ingest.
    part_arrivals: Vec<SystemTime>,
    /// Timed metadata that goes ahead of the open part.
    part_metadata: Vec<Metadata>,
}

/// Timed metadata for a rendition: an ID3 tag to be presented at `pts`. It is written ahead of
/// the part that holds the first sample presented at or after `pts` (fMP4: an `emsg` box before
/// that part's `moof`).
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    pub pts: Ticks,
    pub id: u32,
    pub tag: Bytes,
}

/// Metadata waiting for its sample. Posts are rate-limited upstream; this only bounds memory if
/// a rendition stops receiving samples.
const PENDING_METADATA_LIMIT: usize = 64;

/// A finished LL-HLS part: one `moof`+`mdat` of consecutive samples of a segment.
#[derive(Debug, Clone)]
pub struct Part {
    /// Index within its segment, from 0.
    pub index: u32,
    /// Presentation time of the part's first sample (90 kHz).
    pub start_pts: Ticks,
    /// Duration (90 kHz).
    pub duration: Ticks,
    /// The part starts with a sync sample (`INDEPENDENT=YES`).
    pub independent: bool,
    pub fragment: Fragment,
    /// When the part's first sample arrived at ingest.
    pub ingest_time: SystemTime,
    /// When each of its samples arrived at ingest, in decode order.
    pub arrivals: Vec<SystemTime>,
    /// Ids of the timed metadata written in this part.
    pub metadata: Vec<u32>,
}

/// What one packet (or the end of the stream) finished: parts in order, then the segment they
/// complete, if any.
#[derive(Debug, Default)]
pub struct Output {
    pub parts: Vec<Part>,
    pub segment: Option<Segment>,
}

/// The running decode clock of an AAC track, in samples. RTMP carries millisecond timestamps,
/// too coarse for 1024-sample frames (21.33 ms at 48 kHz), so durations come from the frame
/// length and the packet timestamps only re-anchor the clock after a real gap.
#[derive(Debug, Clone, Copy)]
struct AudioClock {
    next: i64,
}

pub struct Segmenter {
    track: TrackParams,
    /// The track timescale (never 0, so conversions cannot divide by zero).
    timescale: u32,
    /// Longest part, in the track timescale (`i64::MAX`: a segment is one part).
    part_target: i64,
    /// `mfhd` sequence number of the next fragment (§8.8.5: starts at 1, increases by fragment).
    next_sequence: u32,
    open: Option<OpenSegment>,
    audio_clock: Option<AudioClock>,
    /// Decode time and spacing of the latest samples, to foresee the next sample's decode time.
    last_dts: Option<i64>,
    last_delta: Option<i64>,
    previous_delta: Option<i64>,
    /// Timed metadata whose sample has not come yet.
    pending_metadata: Vec<Metadata>,
    /// Set for MPEG-TS output; fMP4 otherwise.
    ts: Option<TsWriter>,
}

impl Segmenter {
    /// A segmenter that writes each segment as one fragment.
    pub fn new(track: TrackParams) -> Self {
        Self::with_parts(track, None)
    }

    /// A segmenter that also cuts segments into parts of at most `part_target` (90 kHz).
    pub fn with_parts(track: TrackParams, part_target: Option<Ticks>) -> Self {
        let timescale = track.timescale().max(1);
        let part_target = part_target.map_or(i64::MAX, |t| rescale(t, TIMESCALE, timescale).max(1));
        Self {
            track,
            timescale,
            part_target,
            next_sequence: 1,
            open: None,
            audio_clock: None,
            last_dts: None,
            last_delta: None,
            previous_delta: None,
            pending_metadata: Vec::new(),
            ts: None,
        }
    }

    /// Writes `container` instead of fMP4.
    pub fn with_container(mut self, container: Container) -> Self {
        self.ts = match container {
            Container::Fmp4 => None,
            Container::Ts => Some(TsWriter::new(&self.track)),
        };
        self
    }

    /// The fMP4 init segment; `None` for MPEG-TS, whose parts carry their own tables.
    pub fn init_segment(&self) -> Option<Bytes> {
        self.ts.is_none().then(|| fmp4::init_segment(&self.track))
    }

    /// Queues timed metadata; it is written with the first sample presented at or after its pts.
    pub fn add_metadata(&mut self, metadata: Metadata) {
        if self.pending_metadata.len() >= PENDING_METADATA_LIMIT {
            let dropped = self.pending_metadata.remove(0);
            tracing::warn!(id = dropped.id, pts = dropped.pts, "timed metadata waited too long for a sample; dropped");
        }
        self.pending_metadata.push(metadata);
    }

    /// Adds a packet (decode order); returns the segment it closed, if it opened a new one.
    pub fn push(&mut self, packet: EncodedPacket) -> Option<Segment> {
        self.push_parts(packet).segment
    }

    /// Closes the open segment, if it holds any sample.
    pub fn finish(&mut self) -> Option<Segment> {
        self.finish_parts().segment
    }

    /// Adds a packet (decode order); returns the parts and the segment it finished.
    pub fn push_parts(&mut self, packet: EncodedPacket) -> Output {
        let sample = packet.sample;
        if !sample.segment_start && self.open.is_none() {
            // Before the first cut: a rendition starts where every other rendition starts.
            return Output::default();
        }
        let pending = match &self.track {
            TrackParams::Video(_) => PendingSample {
                pts: sample.pts,
                dts: sample.dts,
                composition_offset: clamp_i32(sample.pts.saturating_sub(sample.dts)),
                keyframe: sample.keyframe,
                data: sample.data,
            },
            TrackParams::Audio(a) => {
                let frame = aac_frame_samples(a);
                let at = rescale(sample.pts, TIMESCALE, self.timescale);
                let dts = match self.audio_clock {
                    // More than a frame ahead of the clock: frames went missing (a gap).
                    Some(c) if at > c.next.saturating_add(frame) => {
                        tracing::debug!(expected = c.next, packet = at, "audio timestamps jumped; clock re-synced");
                        at
                    }
                    // Within a frame of the clock (the timestamp's rounding) or behind it
                    // (timestamps that step back, or come closer than a frame): frames last what
                    // their samples say, and a track's decode time never goes back, which its
                    // parts' `tfdt`s would otherwise do (ISO/IEC 14496-12 §8.8.12).
                    Some(c) => {
                        if at < c.next.saturating_sub(frame) {
                            tracing::debug!(
                                expected = c.next,
                                packet = at,
                                "audio timestamps behind the sample clock; frames timed by their count"
                            );
                        }
                        c.next
                    }
                    None => at.max(0),
                };
                self.audio_clock = Some(AudioClock { next: dts.saturating_add(frame) });
                // Every AAC frame is a sync sample and is presented at its decode time.
                PendingSample { pts: sample.pts, dts, composition_offset: 0, keyframe: true, data: sample.data }
            }
        };
        if let Some(last) = self.last_dts {
            let delta = pending.dts.saturating_sub(last);
            if delta > 0 {
                self.previous_delta = self.last_delta.replace(delta);
            }
        }
        self.last_dts = Some(pending.dts);

        let mut out = Output::default();
        if sample.segment_start {
            out = self.close_segment(Some(pending.dts));
        } else if let Some(open) = &self.open
            && let Some(first) = open.part.first()
        {
            // Would this sample take the part past its target? Its own duration is not known
            // yet; the spacing of the samples before it foretells it. RTMP's millisecond
            // timestamps make 30 fps spacing alternate between 33 and 34 ms, so the shorter of
            // the last two spacings is the estimate: six frames still make one 0.2 s part.
            let spacing = match (self.last_delta, self.previous_delta) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(0),
            };
            let end_with_it = pending.dts.saturating_sub(first.dts).saturating_add(spacing);
            if end_with_it > self.part_target {
                out.parts.extend(self.close_part(pending.dts));
            }
        }
        let open = self.open.get_or_insert_with(|| OpenSegment {
            start_pts: sample.pts,
            program_date_time: packet.ingest_time,
            first_dts: pending.dts,
            closed_end: pending.dts,
            chunks: Vec::new(),
            frames: 0,
            parts_closed: 0,
            part: Vec::new(),
            part_ingest_time: packet.ingest_time,
            part_arrivals: Vec::new(),
            part_metadata: Vec::new(),
        });
        if open.part.is_empty() {
            open.part_ingest_time = packet.ingest_time;
        }
        open.frames = open.frames.saturating_add(1);
        open.part.push(pending);
        open.part_arrivals.push(packet.ingest_time);
        if !self.pending_metadata.is_empty() {
            let (due, later): (Vec<Metadata>, Vec<Metadata>) =
                std::mem::take(&mut self.pending_metadata).into_iter().partition(|m| m.pts <= sample.pts);
            self.pending_metadata = later;
            open.part_metadata.extend(due);
        }
        out
    }

    /// Closes the open part and segment, if they hold any sample.
    pub fn finish_parts(&mut self) -> Output {
        self.close_segment(None)
    }

    /// Closes the open part, whose last sample lasts until `end_dts`.
    fn close_part(&mut self, end_dts: i64) -> Option<Part> {
        let open = self.open.as_mut()?;
        let samples = std::mem::take(&mut open.part);
        let arrivals = std::mem::take(&mut open.part_arrivals);
        let metadata = std::mem::take(&mut open.part_metadata);
        let first = samples.first()?;
        let (start, start_pts, independent) = (first.dts, first.pts, first.keyframe);
        let ingest_time = open.part_ingest_time;
        let index = open.parts_closed;
        let (mut fragment, track_duration) = self.build_fragment(samples, end_dts, &metadata);
        if !metadata.is_empty() && self.ts.is_none() {
            // ISO/IEC 23009-1 §5.10.3.3: `emsg` boxes go before the `moof` they belong to.
            let mut chunks = Vec::with_capacity(metadata.len() + fragment.chunks.len());
            for m in &metadata {
                let at = rescale(m.pts.max(0), TIMESCALE, self.timescale) as u64;
                match fmp4::id3_emsg(self.timescale, at, m.id, &m.tag) {
                    Ok(b) => chunks.push(b),
                    Err(e) => tracing::warn!(id = m.id, error = %e, "timed metadata not written"),
                }
            }
            chunks.append(&mut fragment.chunks);
            fragment.chunks = chunks;
        }
        let open = self.open.as_mut()?;
        // The fragment's base decode time is clamped at 0 (`tfdt` is unsigned), so its run ends
        // that long after the clamped start.
        let base = start.max(0);
        let end = base.saturating_add(track_duration);
        open.closed_end = end;
        open.parts_closed = open.parts_closed.saturating_add(1);
        open.chunks.extend(fragment.chunks.iter().cloned());
        // Converting both ends (not the difference) keeps consecutive durations summing to the
        // track's own timeline, without accumulating rounding.
        let duration = rescale(end, self.timescale, TIMESCALE) - rescale(base, self.timescale, TIMESCALE);
        Some(Part {
            index,
            start_pts,
            duration: duration.max(0),
            independent,
            fragment,
            ingest_time,
            arrivals,
            metadata: metadata.iter().map(|m| m.id).collect(),
        })
    }

    /// Closes the open segment. `next_dts` is the decode time of the sample that follows it,
    /// which gives its last sample's duration; `None` at the end of the stream.
    fn close_segment(&mut self, next_dts: Option<i64>) -> Output {
        let mut out = Output::default();
        let Some(open) = &self.open else { return out };
        let end_dts = match next_dts.or_else(|| self.estimated_end(&open.part)) {
            Some(d) => d,
            None => {
                self.open = None;
                return out;
            }
        };
        out.parts.extend(self.close_part(end_dts));
        let Some(open) = self.open.take() else { return out };
        if open.frames == 0 {
            return out;
        }
        let start = rescale(open.first_dts.max(0), self.timescale, TIMESCALE);
        let end = rescale(open.closed_end.max(0), self.timescale, TIMESCALE);
        out.segment = Some(Segment {
            start_pts: open.start_pts,
            duration: end.saturating_sub(start),
            fragment: Fragment { chunks: open.chunks },
            frames: open.frames,
            program_date_time: open.program_date_time,
        });
        out
    }

    /// Where a run of samples ends when nothing follows it: the last sample lasts as long as the
    /// spacing before it (video), or one frame (audio, whose frames all have the same length).
    /// The estimate never takes the run's part past the part target.
    fn estimated_end(&self, samples: &[PendingSample]) -> Option<i64> {
        let last = samples.last()?;
        let duration = match &self.track {
            TrackParams::Audio(a) => aac_frame_samples(a),
            TrackParams::Video(_) => match (self.last_delta, self.previous_delta) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                _ => rescale(DEFAULT_VIDEO_SAMPLE_DURATION, TIMESCALE, self.timescale),
            },
        };
        let end = last.dts.saturating_add(duration);
        let part_limit = samples.first().map_or(end, |f| f.dts.saturating_add(self.part_target));
        Some(end.min(part_limit).max(last.dts.saturating_add(1)))
    }

    /// One `moof`+`mdat` of `samples`, whose run ends at decode time `end_dts`; also returns the
    /// run's duration in the track timescale. Each sample lasts until the next one's decode time
    /// (§8.8.8: `trun` durations are decode deltas); a decode time that goes backwards gives 0.
    fn build_fragment(&mut self, samples: Vec<PendingSample>, end_dts: i64, metadata: &[Metadata]) -> (Fragment, i64) {
        if let Some(ts) = self.ts.as_mut() {
            let total = end_dts.saturating_sub(samples.first().map_or(end_dts, |s| s.dts)).max(0);
            let timescale = self.timescale;
            let video = matches!(self.track, TrackParams::Video(_));
            let ts_samples: Vec<TsSample> = samples
                .into_iter()
                .map(|s| TsSample {
                    // Audio is timed by its own sample clock (see `AudioClock`), not by RTMP's
                    // millisecond timestamps.
                    pts: if video { s.pts } else { rescale(s.dts, timescale, TIMESCALE) },
                    dts: rescale(s.dts, timescale, TIMESCALE),
                    keyframe: s.keyframe,
                    data: s.data,
                })
                .collect();
            let tags: Vec<(Ticks, Bytes)> = metadata.iter().map(|m| (m.pts, m.tag.clone())).collect();
            return (Fragment { chunks: ts.write(&ts_samples, &tags) }, total);
        }
        let mut described = Vec::with_capacity(samples.len());
        let mut payloads = Vec::with_capacity(samples.len());
        let mut total: i64 = 0;
        let base = samples.first().map_or(0, |s| s.dts.max(0));
        for (i, s) in samples.iter().enumerate() {
            let next = samples.get(i + 1).map_or(end_dts, |n| n.dts);
            let duration = u32::try_from(next.saturating_sub(s.dts).max(0)).unwrap_or(u32::MAX);
            total = total.saturating_add(i64::from(duration));
            described.push(FragmentSample {
                duration,
                size: u32::try_from(s.data.len()).unwrap_or(u32::MAX),
                keyframe: s.keyframe,
                composition_offset: s.composition_offset,
            });
        }
        for s in samples {
            payloads.push(s.data);
        }
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1).max(1);
        (fmp4::fragment(sequence, base as u64, &described, payloads), total)
    }
}

fn aac_frame_samples(a: &AudioParams) -> i64 {
    i64::from(if a.frame_samples == 0 { DEFAULT_AAC_FRAME_SAMPLES } else { a.frame_samples })
}

/// `value` in timescale `from` converted to timescale `to`, rounded to nearest, saturating.
fn rescale(value: i64, from: u32, to: u32) -> i64 {
    if from == to || from == 0 {
        return value;
    }
    let half = i128::from(from) / 2;
    let scaled = i128::from(value) * i128::from(to);
    let rounded = if scaled >= 0 { (scaled + half) / i128::from(from) } else { (scaled - half) / i128::from(from) };
    i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX })
}

fn clamp_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(if v < 0 { i32::MIN } else { i32::MAX })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mp4_atom::{Codec, Decode, Encode, Moof, TrunEntry};

    use super::*;
    use crate::media::{Sample, VideoParams};
    use crate::package::fixture::read_fixture;
    use crate::testutil;

    fn video_track() -> TrackParams {
        TrackParams::Video(VideoParams {
            avcc: Bytes::from_static(&[1, 0x42, 0, 0x1e, 0xff, 0xe1, 0, 4, 0x67, 0x42, 0, 0x1e, 1, 0, 2, 0x68, 0xce]),
            width: 640,
            height: 360,
            codec: "avc1.42001e".into(),
        })
    }

    fn audio_track() -> TrackParams {
        TrackParams::Audio(AudioParams {
            asc: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        })
    }

    fn epoch(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn packet(pts: Ticks, dts: Ticks, keyframe: bool, segment_start: bool, tag: u8) -> EncodedPacket {
        EncodedPacket {
            sample: Sample { pts, dts, keyframe, segment_start, data: Bytes::from(vec![tag; 4 + tag as usize]) },
            ingest_time: epoch(dts.max(0) as u64),
        }
    }

    /// (sequence number, tfdt, trun entries, payload bytes in order) of a fragment.
    fn decode(f: &Fragment) -> (u32, u64, Vec<TrunEntry>, Vec<u8>) {
        let bytes: Vec<u8> = f.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut buf = bytes.as_slice();
        let moof = Moof::decode(&mut buf).expect("moof");
        let moof_len = bytes.len() - buf.len();
        let traf = &moof.traf[0];
        let trun = &traf.trun[0];
        assert_eq!(trun.data_offset, Some(moof_len as i32 + 8));
        (
            moof.mfhd.sequence_number,
            traf.tfdt.as_ref().expect("tfdt").base_media_decode_time,
            trun.samples.iter().collect(),
            bytes[moof_len + 8..].to_vec(),
        )
    }

    fn durations(entries: &[TrunEntry]) -> Vec<u32> {
        entries.iter().map(|e| e.duration.expect("duration")).collect()
    }

    #[test]
    fn cuts_exactly_at_segment_start_and_drops_what_comes_before() {
        let mut s = Segmenter::new(video_track());
        let mut out = Vec::new();
        for i in 0..12i64 {
            // Cuts at 2 and 7; the keyframe at 4 does not cut on its own.
            let start = i == 2 || i == 7;
            let key = start || i == 4;
            out.extend(s.push(packet(i * 3000, i * 3000, key, start, i as u8)));
        }
        assert_eq!(out.len(), 1, "only the second cut closes a segment");
        out.extend(s.finish());
        assert!(s.finish().is_none(), "finish twice gives nothing more");
        assert_eq!(out.len(), 2);

        let (a, b) = (&out[0], &out[1]);
        assert_eq!((a.start_pts, a.duration, a.frames), (6000, 15_000, 5));
        assert_eq!(a.program_date_time, epoch(6000));
        assert_eq!((b.start_pts, b.duration, b.frames), (21_000, 15_000, 5));

        let (seq, tfdt, entries, mdat) = decode(&a.fragment);
        assert_eq!((seq, tfdt), (1, 6000));
        assert_eq!(durations(&entries), vec![3000; 5]);
        let flags: Vec<u32> = entries.iter().map(|e| e.flags.expect("flags")).collect();
        assert_eq!(flags, vec![0x0200_0000, 0x0101_0000, 0x0200_0000, 0x0101_0000, 0x0101_0000]);
        let expected: Vec<u8> = (2u8..7).flat_map(|t| vec![t; 4 + t as usize]).collect();
        assert_eq!(mdat, expected, "the mdat holds exactly the samples 2..7, in order");

        let (seq, tfdt, entries, _) = decode(&b.fragment);
        assert_eq!((seq, tfdt), (2, 21_000));
        // The last sample of the stream lasts as long as the one before it.
        assert_eq!(durations(&entries), vec![3000; 5]);
    }

    /// Every byte of a fragment, in order.
    fn flat(f: &Fragment) -> Vec<u8> {
        f.chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn parts_never_exceed_the_target_and_make_up_the_segment_byte_for_byte() {
        // 30 fps, 0.2 s parts: six frames each, exactly on target; a 2 s segment has ten.
        let mut s = Segmenter::with_parts(video_track(), Some(18_000));
        let mut parts = Vec::new();
        let mut segments = Vec::new();
        for i in 0..121i64 {
            let out = s.push_parts(packet(i * 3000, i * 3000, i % 60 == 0, i % 60 == 0, (i % 7) as u8));
            parts.extend(out.parts);
            segments.extend(out.segment);
        }
        assert_eq!(segments.len(), 2, "two segments closed by the cuts at 2 s and 4 s");
        assert_eq!(parts.len(), 20);
        for (n, p) in parts.iter().enumerate() {
            assert_eq!(p.index as usize, n % 10);
            assert_eq!(p.duration, 18_000, "part {n}");
            assert_eq!(p.independent, n % 10 == 0, "only a segment's first part starts with an IDR");
            assert_eq!(decode(&p.fragment).2.len(), 6);
            let arrivals: Vec<SystemTime> = (n as u64 * 6..n as u64 * 6 + 6).map(|i| epoch(i * 3000)).collect();
            assert_eq!(p.arrivals, arrivals, "part {n}: each sample's arrival, in order");
            assert_eq!(p.ingest_time, arrivals[0]);
        }
        for (k, seg) in segments.iter().enumerate() {
            let joined: Vec<u8> = parts[k * 10..(k + 1) * 10].iter().flat_map(|p| flat(&p.fragment)).collect();
            assert_eq!(flat(&seg.fragment), joined, "segment {k} is its parts' bytes in order");
            assert_eq!(seg.duration, 180_000);
            assert_eq!(seg.frames, 60);
        }
        // The end of the stream closes the last part and segment (one frame: at 4 s).
        let out = s.finish_parts();
        assert_eq!(out.parts.len(), 1);
        assert_eq!(out.parts[0].duration, 3000);
        assert!(out.segment.is_some());
    }

    #[test]
    fn millisecond_timestamps_of_30_fps_still_make_six_frame_parts() {
        // RTMP carries 30 fps as 0, 33, 67, 100… ms: spacing alternates 2970 and 3060 ticks.
        let mut s = Segmenter::with_parts(video_track(), Some(18_000));
        let mut parts = Vec::new();
        for i in 0..61i64 {
            let t = (i * 1000 + 15) / 30 * 90;
            parts.extend(s.push_parts(packet(t, t, i % 60 == 0, i % 60 == 0, 1)).parts);
        }
        assert_eq!(parts.len(), 10, "a 2 s segment in ten parts");
        assert!(parts.iter().all(|p| p.duration == 18_000 && decode(&p.fragment).2.len() == 6));
    }

    #[test]
    fn timed_metadata_goes_ahead_of_the_part_holding_its_time() {
        let mut s = Segmenter::with_parts(video_track(), Some(18_000));
        let tag = Bytes::from_static(b"ID3-tag-bytes");
        let mut parts = Vec::new();
        for i in 0..60i64 {
            if i == 10 {
                // Posted while frame 10 is the latest: presented at frame 14 (42 000), in part 2.
                s.add_metadata(Metadata { pts: 40_000, id: 9, tag: tag.clone() });
            }
            parts.extend(s.push_parts(packet(i * 3000, i * 3000, i == 0, i == 0, 1)).parts);
        }
        let with: Vec<&Part> = parts.iter().filter(|p| !p.metadata.is_empty()).collect();
        assert_eq!(with.len(), 1, "written once");
        assert_eq!((with[0].index, with[0].metadata.clone()), (2, vec![9]));
        let bytes = flat(&with[0].fragment);
        let mut buf = &bytes[..];
        let emsg = mp4_atom::Emsg::decode(&mut buf).expect("emsg first");
        assert_eq!(emsg.presentation_time, mp4_atom::EmsgTimestamp::Absolute(40_000));
        assert_eq!((emsg.id, emsg.message_data), (9, tag.to_vec()));
        assert!(Moof::decode(&mut buf).is_ok(), "then the part's moof");
    }

    #[test]
    fn parts_at_awkward_frame_rates_stay_within_the_target() {
        // 29.97 fps (3003 ticks) and 24 fps (3750): a sixth or fifth frame would pass 0.2 s.
        for step in [3003i64, 3750] {
            let mut s = Segmenter::with_parts(video_track(), Some(18_000));
            let mut parts = Vec::new();
            for i in 0..100i64 {
                parts.extend(s.push_parts(packet(i * step, i * step, i == 0, i == 0, 1)).parts);
            }
            assert!(parts.len() >= 10, "{step}: {}", parts.len());
            assert!(parts.iter().all(|p| p.duration <= 18_000 && p.duration >= 18_000 - step), "{step}");
        }
        // AAC at 48 kHz: nine 1024-sample frames (0.192 s) per part.
        let mut s = Segmenter::with_parts(audio_track(), Some(18_000));
        let mut parts = Vec::new();
        for i in 0..40i64 {
            parts.extend(s.push_parts(packet(rtmp_audio_pts(i), rtmp_audio_pts(i), true, i == 0, 1)).parts);
        }
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.duration == 17_280 && p.independent && decode(&p.fragment).2.len() == 9));
    }

    #[test]
    fn video_durations_are_dts_deltas_and_offsets_are_signed() {
        let mut s = Segmenter::new(video_track());
        // Decode order I P B B with jittery decode times; the next cut's dts closes the segment.
        let frames = [(3000, 0, true, true), (12_000, 3003, false, false), (6000, 6006, false, false)];
        for (pts, dts, key, start) in frames {
            assert!(s.push(packet(pts, dts, key, start, 1)).is_none());
        }
        assert!(s.push(packet(9000, 9009, false, false, 1)).is_none());
        let seg = s.push(packet(15_000, 12_000, true, true, 1)).expect("closed by the cut");
        assert_eq!(seg.duration, 12_000, "next segment's first dts − first dts");
        let (_, tfdt, entries, _) = decode(&seg.fragment);
        assert_eq!(tfdt, 0);
        assert_eq!(durations(&entries), vec![3003, 3003, 3003, 2991]);
        let cts: Vec<i64> = entries.iter().map(|e| e.cts.expect("cts")).collect();
        assert_eq!(cts, vec![3000, 8997, -6, -9]);
    }

    #[test]
    fn negative_first_dts_clamps_the_base_decode_time() {
        let mut s = Segmenter::new(video_track());
        s.push(packet(0, -6000, true, true, 1));
        s.push(packet(9000, -3000, false, false, 1));
        let seg = s.finish().expect("segment");
        let (_, tfdt, entries, _) = decode(&seg.fragment);
        assert_eq!(tfdt, 0);
        assert_eq!(durations(&entries), vec![3000, 3000]);
        assert_eq!(seg.duration, 6000);
    }

    #[test]
    fn lone_sample_gets_the_default_duration() {
        let mut s = Segmenter::new(video_track());
        assert!(s.finish().is_none(), "nothing open");
        s.push(packet(0, 0, false, false, 1));
        assert!(s.finish().is_none(), "a packet before the first cut is dropped");
        s.push(packet(500, 500, true, true, 1));
        let seg = s.finish().expect("segment");
        assert_eq!((seg.frames, seg.duration), (1, 3000));

        let mut s = Segmenter::new(audio_track());
        s.push(packet(0, 0, true, true, 1));
        let seg = s.finish().expect("segment");
        assert_eq!(durations(&decode(&seg.fragment).2), vec![1024]);
        assert_eq!(seg.duration, 1920, "1024 samples at 48 kHz in 90 kHz ticks");
    }

    /// RTMP audio timestamps: whole milliseconds of a 1024-sample, 48 kHz frame clock.
    fn rtmp_audio_pts(frame: i64) -> Ticks {
        let ms = (frame * 1024 * 1000 + 24_000) / 48_000;
        ms * 90
    }

    #[test]
    fn audio_durations_come_from_the_frame_length_not_millisecond_timestamps() {
        let mut s = Segmenter::new(audio_track());
        let mut segments = Vec::new();
        for i in 0..100 {
            let pts = rtmp_audio_pts(i);
            segments.extend(s.push(packet(pts, pts, true, i % 40 == 0, 1)));
        }
        segments.extend(s.finish());
        assert_eq!(segments.len(), 3);
        let mut next_tfdt = 0;
        for (n, seg) in segments.iter().enumerate() {
            let (seq, tfdt, entries, _) = decode(&seg.fragment);
            assert_eq!(seq, n as u32 + 1);
            assert_eq!(tfdt, next_tfdt, "segments follow each other without gaps");
            assert!(durations(&entries).iter().all(|&d| d == 1024));
            next_tfdt += 1024 * entries.len() as u64;
        }
        assert_eq!([segments[0].frames, segments[1].frames, segments[2].frames], [40, 40, 20]);
        // 90 kHz durations add up to the exact sample count: 100 × 1024 samples = 192 000 ticks.
        let total: Ticks = segments.iter().map(|s| s.duration).sum();
        assert_eq!(total, 192_000);
        assert_eq!(segments[0].duration, 76_800);
        assert_eq!(segments[1].start_pts, rtmp_audio_pts(40));
    }

    #[test]
    fn audio_clock_resyncs_after_a_gap_and_starts_at_the_first_frame() {
        let mut s = Segmenter::new(audio_track());
        // Starts mid-stream at 1 s; frames 0..5, then 11 frames go missing, then 5 more.
        let base = 90_000;
        let frames: Vec<i64> = (0..5).chain(16..21).collect();
        for (n, i) in frames.iter().enumerate() {
            let pts = base + rtmp_audio_pts(*i);
            assert!(s.push(packet(pts, pts, true, n == 0, 1)).is_none());
        }
        let seg = s.finish().expect("segment");
        let (_, tfdt, entries, _) = decode(&seg.fragment);
        assert_eq!(tfdt, 48_000, "the clock starts from the first frame's time");
        // The frame before the gap lasts until the next frame's (re-synced) time.
        let gap_end = (rtmp_audio_pts(16) + base) * 48_000 / 90_000;
        let mut want = vec![1024; 10];
        want[4] = (gap_end - 48_000 - 4 * 1024) as u32;
        assert_eq!(durations(&entries), want);
        // Frame 16 is at 341.33 ms, carried as 341 ms: the clock takes the packet's time.
        assert_eq!(want[4], 12 * 1024 - 16);
    }

    #[test]
    fn audio_timestamps_that_step_back_never_take_the_decode_time_back() {
        let mut s = Segmenter::new(audio_track());
        // Five frames, then the timestamps go back 200 ms and come 1 ms apart: frames are timed
        // by their count from where the clock is.
        let times: Vec<i64> =
            (0..5).map(rtmp_audio_pts).chain((0..5).map(|i| rtmp_audio_pts(5) - 18_000 + i * 90)).collect();
        for (n, pts) in times.iter().enumerate() {
            assert!(s.push(packet(*pts, *pts, true, n == 0, 1)).is_none());
        }
        let seg = s.finish().expect("segment");
        let (_, tfdt, entries, _) = decode(&seg.fragment);
        assert_eq!(tfdt, 0);
        assert_eq!(durations(&entries), vec![1024; 10]);
    }

    #[test]
    fn hostile_timestamps_do_not_panic() {
        for track in [video_track(), audio_track()] {
            let mut s = Segmenter::new(track);
            let values = [i64::MIN, -1, 0, i64::MAX, 5, i64::MIN / 2, i64::MAX - 1];
            for (i, &pts) in values.iter().enumerate() {
                for &dts in &values {
                    let _ = s.push(packet(pts, dts, i % 2 == 0, i.wrapping_add(dts as usize) % 3 == 0, 1));
                }
            }
            let _ = s.finish();
        }
        let mut zero_rate = audio_track();
        if let TrackParams::Audio(a) = &mut zero_rate {
            a.sample_rate = 0;
            a.frame_samples = 0;
        }
        let mut s = Segmenter::new(zero_rate);
        s.push(packet(0, 0, true, true, 1));
        s.push(packet(1920, 1920, true, false, 1));
        assert!(s.finish().is_some());
    }

    fn ffprobe(input: &[u8], args: &[&str]) -> (String, String) {
        testutil::ffprobe(input, &[args, &["-of", "csv=p=0"]].concat())
    }

    fn record(avcc: &mp4_atom::Avcc) -> Bytes {
        let mut v = Vec::new();
        avcc.encode(&mut v).expect("avcC");
        Bytes::from(v.split_off(8))
    }

    fn write_out(s: &mut Segmenter, packets: Vec<EncodedPacket>) -> (Vec<u8>, Vec<Segment>) {
        let mut file = s.init_segment().expect("fMP4 has an init segment").to_vec();
        let mut segments = Vec::new();
        for p in packets {
            segments.extend(s.push(p));
        }
        segments.extend(s.finish());
        for seg in &segments {
            for c in &seg.fragment.chunks {
                file.extend_from_slice(c);
            }
        }
        (file, segments)
    }

    #[test]
    fn real_h264_access_units_make_a_file_ffprobe_reads() {
        // x264, 320x180, 30 fps, 2 s, an IDR every 15 frames, 2 B-frames, 90 kHz timescale.
        let (codec, _, samples) = read_fixture(include_bytes!("testdata/h264_320x180_30fps_2s.mp4"));
        let Codec::Avc1(avc1) = codec else { panic!("avc1 expected") };
        assert_eq!(samples.len(), 60);
        let track = TrackParams::Video(VideoParams {
            avcc: record(&avc1.avcc),
            width: 320,
            height: 180,
            codec: "avc1.64000d".into(),
        });
        let mut s = Segmenter::new(track);
        let packets = samples
            .iter()
            .map(|(dts, pts, key, data)| EncodedPacket {
                sample: Sample { pts: *pts, dts: *dts, keyframe: *key, segment_start: *key, data: data.clone() },
                ingest_time: SystemTime::UNIX_EPOCH,
            })
            .collect();
        let (file, segments) = write_out(&mut s, packets);
        assert_eq!(segments.len(), 4, "one segment per 15-frame GOP");
        for seg in &segments {
            assert_eq!((seg.frames, seg.duration), (15, 45_000));
        }

        let (out, err) = ffprobe(&file, &["-count_frames", "-show_entries", "stream=nb_read_frames,width,height"]);
        assert_eq!(out.trim(), "320,180,60");
        assert!(err.is_empty(), "ffprobe complained: {err}");

        // Every packet comes back at the time it went in.
        let (out, _) = ffprobe(&file, &["-show_entries", "packet=pts,dts,flags"]);
        // The flags column's width differs between ffprobe versions; its first letter is K or _.
        let got: Vec<String> = out.lines().map(|l| l.chars().take_while(|&c| c != '_').collect()).collect();
        let want: Vec<String> =
            samples.iter().map(|(dts, pts, key, _)| format!("{pts},{dts},{}", if *key { "K" } else { "" })).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn real_aac_frames_make_a_file_ffprobe_reads() {
        // ffmpeg's AAC encoder, 48 kHz stereo, 2 s.
        let (codec, _, samples) = read_fixture(include_bytes!("testdata/aac_48k_stereo_2s.mp4"));
        let Codec::Mp4a(mp4a) = codec else { panic!("mp4a expected") };
        let asc = mp4a.esds.es_desc.dec_config.dec_specific.expect("ASC").raw;
        let track = TrackParams::Audio(AudioParams {
            asc: Bytes::from(asc),
            sample_rate: 48_000,
            channels: 2,
            codec: "mp4a.40.2".into(),
            frame_samples: 1024,
        });
        let mut s = Segmenter::new(track);
        let packets = samples
            .iter()
            .enumerate()
            .map(|(i, (dts, _, _, data))| {
                // As RTMP would carry it: whole milliseconds, on the 90 kHz clock.
                let pts = (dts * 1000 + 24_000) / 48_000 * 90;
                EncodedPacket {
                    sample: Sample { pts, dts: pts, keyframe: true, segment_start: i % 47 == 0, data: data.clone() },
                    ingest_time: SystemTime::UNIX_EPOCH,
                }
            })
            .collect();
        let (file, segments) = write_out(&mut s, packets);
        assert_eq!(segments.iter().map(|s| s.frames as usize).sum::<usize>(), samples.len());

        let (out, err) =
            ffprobe(&file, &["-count_frames", "-show_entries", "stream=nb_read_frames,sample_rate,channels"]);
        assert_eq!(out.trim(), format!("48000,2,{}", samples.len()));
        assert!(err.is_empty(), "ffprobe complained: {err}");
        let (out, _) = ffprobe(&file, &["-show_entries", "packet=dts"]);
        let dts: Vec<i64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let want: Vec<i64> = (0..samples.len() as i64).map(|i| i * 1024).collect();
        assert_eq!(dts, want, "decode times on the 1024-sample grid");
    }
}
