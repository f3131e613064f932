//! CMAF/fMP4 boxes (ISO/IEC 14496-12, ISO/IEC 23000-19): the init segment of a track and the
//! `moof`+`mdat` of a fragment, encoded with `mp4-atom`. Sample payloads are never copied: a
//! fragment is the box header bytes followed by the samples' own `Bytes`.

use bytes::Bytes;

use crate::media::{AudioParams, TIMESCALE, VideoParams};

/// The one track of a CMAF track file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackParams {
    Video(VideoParams),
    Audio(AudioParams),
}

impl TrackParams {
    /// The track's timescale: 90 kHz for video (the internal clock), the sample rate for audio.
    pub fn timescale(&self) -> u32 {
        match self {
            TrackParams::Video(_) => TIMESCALE,
            TrackParams::Audio(a) => a.sample_rate,
        }
    }
}

/// One sample of a fragment, in the track's timescale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentSample {
    pub duration: u32,
    pub size: u32,
    pub keyframe: bool,
    /// pts − dts.
    pub composition_offset: i32,
}

/// Encoded bytes made of several chunks (box headers, then sample payloads as they were).
#[derive(Debug, Clone, Default)]
pub struct Fragment {
    pub chunks: Vec<Bytes>,
}

impl Fragment {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The init segment (`ftyp` + `moov` with one track and `mvex`).
pub fn init_segment(_track: &TrackParams) -> Bytes {
    todo!("init_segment")
}

/// One `moof` + `mdat`: `sequence` is the `mfhd` sequence number, `base_decode_time` the `tfdt`
/// in the track timescale, `payloads[i]` the bytes of `samples[i]`.
pub fn fragment(
    _sequence: u32,
    _base_decode_time: u64,
    _samples: &[FragmentSample],
    _payloads: Vec<Bytes>,
) -> Fragment {
    todo!("fragment")
}
