//! The shared vocabulary of the pipeline: what one stage hands the next.
//!
//! Every stage speaks in [`Ticks`] on one 90 kHz timeline that starts at 0 when a publish starts
//! (ingest unwraps and rebases RTMP's 32-bit millisecond timestamps onto it).

pub mod aac;
pub mod avc;
pub mod bits;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;

/// The media segment format of a channel's renditions.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// CMAF fragmented MP4 (what every current player wants).
    #[default]
    Fmp4,
    /// MPEG-2 transport stream, for legacy players.
    Ts,
}

/// Ticks of the one internal clock, 90 kHz (the MPEG system clock rate, so MPEG-TS needs no conversion).
pub type Ticks = i64;

/// Ticks per second.
pub const TIMESCALE: u32 = 90_000;

/// Converts seconds to [`Ticks`], rounding to the nearest tick.
pub fn secs_to_ticks(secs: f64) -> Ticks {
    (secs * f64::from(TIMESCALE)).round() as Ticks
}

/// Converts [`Ticks`] to seconds.
pub fn ticks_to_secs(ticks: Ticks) -> f64 {
    ticks as f64 / f64::from(TIMESCALE)
}

/// H.264 stream parameters, as carried by an AVC sequence header (ISO/IEC 14496-15 §5.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoParams {
    /// The AVCDecoderConfigurationRecord (`avcC` box payload), NAL length size 4.
    pub avcc: Bytes,
    /// Coded picture size after cropping, from the SPS.
    pub width: u32,
    pub height: u32,
    /// RFC 6381 codec string, `avc1.PPCCLL`, from the SPS.
    pub codec: String,
}

/// AAC stream parameters, from the AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioParams {
    /// The raw AudioSpecificConfig bytes.
    pub asc: Bytes,
    pub sample_rate: u32,
    pub channels: u8,
    /// RFC 6381 codec string, e.g. `mp4a.40.2`.
    pub codec: String,
    /// Samples per AAC frame (1024 for AAC-LC; 960 for the rare 960-sample variant).
    pub frame_samples: u32,
}

/// One access unit: a video picture (H.264, length-prefixed NAL units, 4-byte lengths) or one raw AAC frame.
#[derive(Debug, Clone)]
pub struct Sample {
    pub pts: Ticks,
    pub dts: Ticks,
    /// An IDR picture (video) — every audio frame is a sync sample, so this is `true` for audio.
    pub keyframe: bool,
    /// This sample opens a new segment. Set by the stage that decides where segments cut (see
    /// [`SegmentClock`]); the packager cuts exactly here and nowhere else.
    pub segment_start: bool,
    pub data: Bytes,
}

/// What ingest hands a channel's pipeline, in arrival order.
#[derive(Debug, Clone)]
pub enum MediaPacket {
    /// A (new) AVC sequence header. A change mid-stream restarts decoding from the next keyframe.
    VideoParams(VideoParams),
    /// A (new) AAC sequence header.
    AudioParams(AudioParams),
    /// A source video access unit (`segment_start` is not set by ingest).
    Video(Sample),
    /// A source audio frame (`segment_start` is not set by ingest).
    Audio(Sample),
    /// Timed metadata from the publisher (`onTextData`/`onCuePoint`), to be shown at `pts`.
    Metadata { pts: Ticks, payload: Bytes },
}

/// What a rung's encoder (or the passthrough path) hands the packager.
#[derive(Debug, Clone)]
pub struct EncodedPacket {
    pub sample: Sample,
    /// Wall-clock time at which the source frame of this packet arrived at ingest; becomes
    /// `EXT-X-PROGRAM-DATE-TIME` on the segment it opens and feeds the latency metrics.
    pub ingest_time: SystemTime,
}

/// A source packet with the wall-clock time it arrived at ingest.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub packet: MediaPacket,
    pub at: SystemTime,
    /// The share of its publish's queue budget (`rtmp.max_queued_bytes`) this packet holds until
    /// the channel is done with it; `None` for packets that were not charged.
    pub charge: Option<Arc<QueueCharge>>,
}

impl MediaPacket {
    /// Bytes of media or metadata the packet carries: what it costs in a queue.
    pub fn payload_len(&self) -> usize {
        match self {
            MediaPacket::Video(s) | MediaPacket::Audio(s) => s.data.len(),
            MediaPacket::Metadata { payload, .. } => payload.len(),
            MediaPacket::VideoParams(_) | MediaPacket::AudioParams(_) => 0,
        }
    }
}

/// Bytes of a publish's ingest queue held by one packet; given back (and taken off the
/// `ladderd_ingest_queued_bytes` gauge) when the packet is dropped.
#[derive(Debug)]
pub struct QueueCharge {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: i64,
    gauge: prometheus::IntGauge,
}

impl QueueCharge {
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit, gauge: prometheus::IntGauge) -> Self {
        let bytes = i64::from(permit.num_permits() as u32);
        gauge.add(bytes);
        Self { _permit: permit, bytes, gauge }
    }
}

impl Drop for QueueCharge {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Where one rendition's encoded output goes (the packager and store behind it). Called from the
/// thread that produced the packets; implementations must not block for long.
pub trait RenditionSink: Send + 'static {
    /// The stream parameters of what follows. Called before the first packet, and again only if
    /// they change (a new IDR with new SPS/PPS).
    fn params(&mut self, params: VideoParams);
    /// One encoded access unit, in decode order.
    fn packet(&mut self, packet: EncodedPacket);
    /// The end of this publish: flush what is buffered.
    fn finish(self: Box<Self>);
}

/// How segment boundaries are chosen for a channel, so that every rendition cuts at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Cut on the first frame at or after every multiple of the target duration (all rungs are
    /// re-encoded, so IDRs can be put anywhere).
    Cadence,
    /// Cut only on the source's keyframes (a passthrough rung cannot move them), the first one at
    /// least a target duration after the previous cut.
    SourceKeyframes,
}

/// Decides where segments start. One instance per decision point; two instances fed the same
/// timestamps make the same decisions, which is what keeps renditions aligned.
#[derive(Debug, Clone)]
pub struct SegmentClock {
    target: Ticks,
    alignment: Alignment,
    last_cut: Option<Ticks>,
}

impl SegmentClock {
    pub fn new(target: Ticks, alignment: Alignment) -> Self {
        assert!(target > 0, "segment target must be positive");
        Self { target, alignment, last_cut: None }
    }

    pub fn alignment(&self) -> Alignment {
        self.alignment
    }

    /// Pts of the latest cut.
    pub fn last_cut(&self) -> Option<Ticks> {
        self.last_cut
    }

    /// Whether a frame at `pts` (frames in presentation order) opens a new segment.
    /// `keyframe` is whether the source frame is a keyframe; it matters only for
    /// [`Alignment::SourceKeyframes`].
    pub fn is_cut(&mut self, pts: Ticks, keyframe: bool) -> bool {
        let cut = match (self.alignment, self.last_cut) {
            (Alignment::Cadence, None) => true,
            (Alignment::Cadence, Some(last)) => pts.div_euclid(self.target) > last.div_euclid(self.target),
            (Alignment::SourceKeyframes, None) => keyframe,
            // A tenth of a target of slack, so that a source GOP of exactly the target duration
            // with jittery timestamps still cuts on every keyframe.
            (Alignment::SourceKeyframes, Some(last)) => keyframe && pts - last >= self.target - self.target / 10,
        };
        if cut {
            self.last_cut = Some(pts);
        }
        cut
    }

    /// Whether an audio frame at `pts` opens a new segment, given the cadence alone (used with
    /// [`Alignment::Cadence`], where the video cuts are known in advance).
    pub fn is_audio_cut(&mut self, pts: Ticks) -> bool {
        let cut = match self.last_cut {
            None => true,
            Some(last) => pts.div_euclid(self.target) > last.div_euclid(self.target),
        };
        if cut {
            self.last_cut = Some(pts);
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_cuts_on_first_frame_past_each_multiple() {
        let mut c = SegmentClock::new(180_000, Alignment::Cadence);
        let frame = 3000;
        let cuts: Vec<Ticks> = (0..150).map(|i| i * frame).filter(|&pts| c.is_cut(pts, false)).collect();
        assert_eq!(cuts, vec![0, 180_000, 360_000]);
    }

    #[test]
    fn cadence_cut_lands_after_the_multiple_when_no_frame_is_on_it() {
        let mut c = SegmentClock::new(180_000, Alignment::Cadence);
        let cuts: Vec<Ticks> =
            [1000, 179_000, 181_000, 300_000, 362_000].into_iter().filter(|&pts| c.is_cut(pts, false)).collect();
        assert_eq!(cuts, vec![1000, 181_000, 362_000]);
    }

    #[test]
    fn keyframe_alignment_skips_keyframes_closer_than_target() {
        let mut c = SegmentClock::new(180_000, Alignment::SourceKeyframes);
        // A 1 s GOP with a 2 s target: every other keyframe cuts. A non-key frame never does.
        assert!(!c.is_cut(0, false));
        assert!(c.is_cut(3000, true));
        assert!(!c.is_cut(93_000, true));
        assert!(!c.is_cut(183_000, false));
        assert!(c.is_cut(183_000 - 9000, true)); // within the 10 % slack
        assert!(!c.is_cut(270_000, true));
    }
}
