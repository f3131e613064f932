//! AAC AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1).

use bytes::Bytes;

use super::AudioParams;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AacError {
    #[error("AudioSpecificConfig malformed: {0}")]
    Bad(&'static str),
}

/// Parses an AudioSpecificConfig into [`AudioParams`].
pub fn parse_asc(_asc: Bytes) -> Result<AudioParams, AacError> {
    todo!("parse_asc")
}
