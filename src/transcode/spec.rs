//! What a transcode is asked to do and the types its threads share: the spec of one publish's
//! ladder, the decoder and encoders chosen for it, the pictures handed from the decode thread
//! to the rungs, and the errors every thread reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ffmpeg_next as ffmpeg;

use crate::ffi::{self, SharedFrame};
use crate::media::{Alignment, RenditionSink, Sample, Ticks, VideoParams, avc};
use crate::transcode::ladder::Rung;
use crate::transcode::thumbnail::ThumbnailSpec;

/// Source packets queued for the decoder. When full, the channel thread waits, and behind it
/// ingest and the publisher's TCP connection.
pub(super) const DECODE_QUEUE: usize = 64;
/// Decoded pictures queued for one rung (about half a second at 30 fps). A rung whose queue is
/// full is behind real time by that much and skips to the next segment start. Pictures are
/// shared between rungs, so this bounds memory to this many source pictures, not per rung.
pub const RUNG_QUEUE: usize = 16;

/// A stage that has taken nothing from a full queue for this long is stalled: a GPU (or codec)
/// call that does not return. The decode thread then rebuilds that rung on libx264, and the
/// channel the whole transcode on the CPU when it is the decoder. Long enough that a picture of a
/// CPU encoder on a loaded machine never comes near it; short enough that the other rungs, held
/// at a cut while a stalled one is judged, lose no more than a segment's parts.
pub const STALL_LIMIT: Duration = Duration::from_secs(2);
/// How long a transcode's threads have to finish once their input has ended, before those still
/// running are given up (their renditions are ended without them).
pub const FINISH_LIMIT: Duration = Duration::from_secs(5);

/// Milliseconds on a monotonic clock, for the threads' heartbeats.
pub(super) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How a [`send_watched`] ended.
pub(super) enum Watched {
    Sent,
    /// The receiver is gone.
    Closed,
    /// The queue stayed full and its consumer took nothing for `idle_ms` (≥ [`STALL_LIMIT`]);
    /// the item was not queued.
    Stalled {
        idle_ms: u64,
    },
}

/// Longest sleep between two tries of a full queue in [`send_watched`].
const WATCHED_WAIT: Duration = Duration::from_millis(5);

/// Puts `item` in a bounded queue, waiting while it is full, unless the consumer, whose heartbeat
/// ([`now_ms`] when it last took an item) is `consumer`, has taken nothing for [`STALL_LIMIT`]:
/// then it gives up. `waiting` runs before each wait.
pub(super) fn send_watched<T>(tx: &SyncSender<T>, item: T, consumer: &AtomicU64, mut waiting: impl FnMut()) -> Watched {
    let mut item = item;
    let mut wait = Duration::from_millis(1);
    loop {
        match tx.try_send(item) {
            Ok(()) => return Watched::Sent,
            Err(TrySendError::Disconnected(_)) => return Watched::Closed,
            Err(TrySendError::Full(back)) => {
                let idle_ms = now_ms().saturating_sub(consumer.load(Ordering::Relaxed));
                if idle_ms >= STALL_LIMIT.as_millis() as u64 {
                    return Watched::Stalled { idle_ms };
                }
                waiting();
                item = back;
                std::thread::sleep(wait);
                wait = (wait * 2).min(WATCHED_WAIT);
            }
        }
    }
}

/// A rung's [`RenditionSink`], shared by the thread that encodes for it and the decode thread:
/// when a rung's thread is stuck in an encoder call, its replacement takes the sink, and the old
/// thread, if it ever returns, finds it gone and stops.
pub(super) type SharedSink = Arc<Mutex<Option<Box<dyn RenditionSink>>>>;

/// A stage of a running transcode that moved to the CPU, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageMove {
    /// The rung whose encoder moved; `None` for decode and scale, which serve every rung.
    pub rung: Option<String>,
    /// `decode`, `scale` or `encode`.
    pub stage: &'static str,
    pub reason: String,
}

/// Where a transcode reports the stages that moved while it ran (the channel's status and
/// `ladderd_backend_info`).
#[derive(Clone, Default)]
pub struct StageMoves(Option<Arc<dyn Fn(StageMove) + Send + Sync>>);

impl StageMoves {
    pub fn new(report: impl Fn(StageMove) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(report)))
    }

    pub(super) fn report(&self, rung: Option<&str>, stage: &'static str, reason: impl Into<String>) {
        if let Some(f) = &self.0 {
            f(StageMove { rung: rung.map(str::to_string), stage, reason: reason.into() });
        }
    }
}

impl std::fmt::Debug for StageMoves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "StageMoves(reported)" } else { "StageMoves(none)" })
    }
}

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
    /// Told of every stage that moves to the CPU while this transcode runs.
    pub moves: StageMoves,
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
}

impl EncoderChoice {
    pub(super) fn is_hardware(self) -> bool {
        match self {
            EncoderChoice::X264 => false,
            EncoderChoice::Nvenc { .. } => true,
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
    #[error("channel {channel}, rung {rung}: the encoder did not make the IDR forced at pts {pts}")]
    MissedIdr { channel: String, rung: String, pts: Ticks },
    #[error("channel {channel}: the decode thread has stopped")]
    Stopped { channel: String },
    #[error("channel {channel}: the decoder has taken nothing for {secs:.1} s (a hung decoder or GPU call)")]
    DecoderStalled { channel: String, secs: f64 },
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
