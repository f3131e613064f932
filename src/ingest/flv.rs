//! FLV tag bodies as RTMP carries them: video (FLV spec v10.1 §E.4.3.1, AVCVIDEOPACKET) and audio
//! (§E.4.2.1, AACAUDIODATA), plus the enhanced-RTMP FourCC video header (E-RTMP v1), which is
//! recognised only to refuse it clearly.

use bytes::Bytes;

use crate::media::aac::AacError;
use crate::media::avc::AvcError;
use crate::media::{AudioParams, VideoParams};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlvError {
    #[error("tag body truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    #[error("AVC: {0}")]
    Avc(#[from] AvcError),
    #[error("AAC: {0}")]
    Aac(#[from] AacError),
    #[error("video frame before any AVC sequence header")]
    NoSequenceHeader,
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// What one video tag body carries.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoTag {
    /// An AVC sequence header (AVCDecoderConfigurationRecord).
    Params(VideoParams),
    /// One access unit, NAL units with 4-byte length prefixes (whatever the source's length size).
    Frame {
        keyframe: bool,
        /// Composition time offset in milliseconds (pts = dts + this).
        composition_ms: i32,
        data: Bytes,
    },
    /// AVC end of sequence, or a frame that carries no NAL unit: nothing to forward.
    Nothing,
}

/// What one audio tag body carries.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioTag {
    /// An AAC sequence header (AudioSpecificConfig).
    Params(AudioParams),
    /// One raw AAC frame.
    Frame(Bytes),
}

/// Parses the video tags of one publish; remembers the NAL length size of the latest sequence header.
#[derive(Debug, Default)]
pub struct VideoDemuxer {
    length_size: Option<u8>,
}

impl VideoDemuxer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn parse(&mut self, _body: Bytes) -> Result<VideoTag, FlvError> {
        todo!("VideoDemuxer::parse")
    }
}

/// Parses one audio tag body.
pub fn parse_audio(_body: Bytes) -> Result<AudioTag, FlvError> {
    todo!("parse_audio")
}
