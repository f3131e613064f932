//! (being written)
pub struct TranscodeSpec;
pub struct Transcoder;
#[derive(Debug, thiserror::Error)]
#[error("transcode")]
pub struct TranscodeError;
