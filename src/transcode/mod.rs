//! Transcoding: decode the source once, scale and encode it for each rung of the ladder.

pub mod backend;
mod decode;
pub mod faults;
pub mod health;
pub mod ladder;
pub mod pipeline;
pub mod placement;
pub mod probe;
mod rung;
pub mod scale;
pub mod spec;
pub mod thumbnail;

pub use pipeline::Transcoder;
pub use spec::{StageMove, StageMoves, TranscodeError, TranscodeSpec};
