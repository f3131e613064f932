//! What a transcode is asked to do and the types its threads share: the spec of one publish's
//! ladder, the decoder and encoders chosen for it, the pictures handed from the decode thread
//! to the rungs, and the errors every thread reports.

use std::sync::Arc;
use std::time::SystemTime;

use ffmpeg_next as ffmpeg;

use crate::ffi::{self, SharedFrame};
use crate::media::{Alignment, Sample, Ticks, VideoParams, avc};
use crate::transcode::ladder::Rung;
use crate::transcode::thumbnail::ThumbnailSpec;

/// Source packets queued for the decoder. When full, the channel thread waits, and behind it
/// ingest and the publisher's TCP connection.
pub(super) const DECODE_QUEUE: usize = 64;
/// Decoded pictures queued for one rung (about half a second at 30 fps). A rung whose queue is
/// full is behind real time by that much and skips to the next segment start. Pictures are
/// shared between rungs, so this bounds memory to this many source pictures, not per rung.
pub const RUNG_QUEUE: usize = 16;

/// What to transcode.
#[derive(Debug, Clone)]
pub struct TranscodeSpec {
    pub channel: String,
    pub source: VideoParams,
    pub rungs: Vec<Rung>,
    pub alignment: Alignment,
    pub segment_target: Ticks,
    pub x264_preset: String,
    pub max_frame_rate: f64,
    pub encoder_threads: usize,
    /// The encoder of each rung (`rungs[i]` → `encoders[i]`); a rung without an entry uses libx264.
    pub encoders: Vec<EncoderChoice>,
    pub decoder: DecoderChoice,
    /// Thumbnails of the decoded source, if wanted.
    pub thumbnails: Option<ThumbnailSpec>,
    /// Pictures each rung may have waiting before it counts as behind real time ([`RUNG_QUEUE`]).
    pub rung_queue: usize,
}

/// The decoder a channel's source runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderChoice {
    /// FFmpeg's h264 decoder.
    #[default]
    Cpu,
    /// NVDEC through `h264_cuvid` on the given GPU, pictures handed back in system memory.
    Nvdec { gpu: u32 },
    /// NVDEC through FFmpeg's h264 decoder with the CUDA hwaccel on the given GPU: pictures stay
    /// in GPU memory, and one CUDA graph on the decode thread scales them for every rung
    /// (`transcode::scale`). Chosen when decode and scale are both planned on NVIDIA.
    NvdecCuda { gpu: u32 },
    /// The CPU decoder with that graph made of software `scale` filters: the GPU path's
    /// plumbing where there is no GPU.
    #[cfg(test)]
    SoftwareGraph,
}

/// The encoder a rung runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderChoice {
    /// libx264.
    X264,
    /// `h264_nvenc` on the given GPU, fed the rung's GPU pictures on the zero-copy path, or
    /// system-memory pictures (which NVENC uploads itself) otherwise.
    Nvenc { gpu: u32 },
    /// libx264 that reports an encoder error after this many pictures, as a failing GPU encoder
    /// would: exercises the mid-stream move to the CPU.
    #[cfg(test)]
    FailAfter { pictures: usize },
}

impl EncoderChoice {
    pub(super) fn is_hardware(self) -> bool {
        match self {
            EncoderChoice::X264 => false,
            EncoderChoice::Nvenc { .. } => true,
            #[cfg(test)]
            EncoderChoice::FailAfter { .. } => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("channel {channel}: {what}: {source}")]
    Decoder { channel: String, what: &'static str, source: ffmpeg::Error },
    #[error("channel {channel}, rung {rung}: {what}: {source}")]
    Encoder { channel: String, rung: String, what: &'static str, source: ffmpeg::Error },
    #[error("channel {channel}, rung {rung}, pts {pts}: scaling failed: {source}")]
    Scale { channel: String, rung: String, pts: Ticks, source: ffmpeg::Error },
    #[error("channel {channel}, rung {rung}: libx264 wrote unusable parameter sets: {source}")]
    EncoderParams { channel: String, rung: String, source: avc::AvcError },
    #[error("channel {channel}: {source}")]
    Ffi { channel: String, source: ffi::FfiError },
    #[error("channel {channel}: {source}")]
    Hw { channel: String, source: ffi::hwctx::HwError },
    #[error("channel {channel}, rung {rung}, pts {pts}: {source}")]
    GpuPicture { channel: String, rung: String, pts: Ticks, source: ffi::hwctx::HwError },
    #[error("channel {channel}: cannot start a transcoding thread: {source}")]
    Thread { channel: String, source: std::io::Error },
    #[error("channel {channel}: the decode thread has stopped")]
    Stopped { channel: String },
    #[error("channel {channel}: the {thread} thread panicked")]
    Panicked { channel: String, thread: String },
}

/// A source access unit for the decode thread, with its arrival time at ingest.
pub(super) struct DecodeInput(pub(super) Sample, pub(super) SystemTime);

/// A decoded source picture on its way to the rungs.
pub(super) struct Picture {
    pub(super) frame: Arc<SharedFrame>,
    pub(super) pts: Ticks,
    pub(super) segment_start: bool,
    pub(super) ingest_time: SystemTime,
    /// The source's frame rate, when its SPS says.
    pub(super) frame_rate: Option<f64>,
}
