//! Transcoding: decode the source once, scale and encode it for each rung of the ladder.

pub mod backend;
pub mod gpu_path;
pub mod ladder;
pub mod pipeline;
pub mod placement;
pub mod thumbnail;

pub use pipeline::{TranscodeError, TranscodeSpec, Transcoder};
