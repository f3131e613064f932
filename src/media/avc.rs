//! H.264 bitstream facts the pipeline needs without a decoder: SPS fields, avcC records,
//! Annex B ⇄ length-prefixed conversion (ITU-T H.264 §7.3, ISO/IEC 14496-15 §5.3).

use bytes::Bytes;

use super::VideoParams;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AvcError {
    #[error("avcC record truncated or malformed: {0}")]
    BadRecord(&'static str),
    #[error("SPS malformed: {0}")]
    BadSps(&'static str),
    #[error("no SPS/PPS found")]
    MissingParameterSets,
}

/// The fields of a sequence parameter set that packaging and planning need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    /// The byte after profile_idc (constraint_set0..5 flags and reserved bits).
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// Cropped luma size in pixels.
    pub width: u32,
    pub height: u32,
}

/// Parses an SPS NAL unit (including its 1-byte NAL header, with emulation-prevention bytes).
pub fn parse_sps(_nal: &[u8]) -> Result<Sps, AvcError> {
    todo!("parse_sps")
}

/// `avc1.PPCCLL` (RFC 6381 §3.3).
pub fn codec_string(sps: &Sps) -> String {
    format!("avc1.{:02X}{:02X}{:02X}", sps.profile_idc, sps.constraint_flags, sps.level_idc)
}

/// The parameter sets of an AVCDecoderConfigurationRecord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcRecord {
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// NAL unit length size in bytes (1, 2 or 4).
    pub length_size: u8,
}

/// Parses an AVCDecoderConfigurationRecord.
pub fn parse_avcc(_record: &[u8]) -> Result<AvcRecord, AvcError> {
    todo!("parse_avcc")
}

/// Builds an AVCDecoderConfigurationRecord with 4-byte NAL lengths from parameter sets.
pub fn build_avcc(_sps: &[Bytes], _pps: &[Bytes]) -> Result<Bytes, AvcError> {
    todo!("build_avcc")
}

/// [`VideoParams`] from an avcC record (as carried by an RTMP AVC sequence header).
pub fn params_from_avcc(_record: Bytes) -> Result<VideoParams, AvcError> {
    todo!("params_from_avcc")
}

/// [`VideoParams`] from Annex B parameter sets (as libx264 writes its global header).
pub fn params_from_annexb(_data: &[u8]) -> Result<VideoParams, AvcError> {
    todo!("params_from_annexb")
}

/// The NAL units of an Annex B byte stream, start codes removed.
pub fn annexb_nals(_data: &[u8]) -> Vec<&[u8]> {
    todo!("annexb_nals")
}

/// Converts an Annex B access unit to 4-byte length-prefixed NAL units, dropping SPS/PPS/AUD
/// NAL units (they live in the avcC record).
pub fn annexb_to_length_prefixed(_data: &[u8]) -> Bytes {
    todo!("annexb_to_length_prefixed")
}
