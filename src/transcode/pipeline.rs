//! The transcoding threads of one publish: a decode thread that decodes the source once and
//! decides where segments cut, and one scale+encode thread per rung.
//!
//! ```text
//! channel thread ──(bounded)──► decode thread ──(bounded, per rung)──► rung thread ──► RenditionSink
//!   push(sample)                 h264 decoder                           swscale
//!                                SegmentClock (one for all rungs)       libx264, IDR forced on cuts
//!                                frame-rate cap
//! ```
//!
//! Every rung receives the same pictures with the same `segment_start` marks and forces an IDR on
//! exactly those, so segment N starts at the same instant in every rendition. A rung that falls
//! behind skips pictures up to the next cut (counted) instead of holding the others back; the cut
//! picture itself is always delivered, so no rung ever misses a segment boundary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::{Dictionary, Packet, Rational, codec, frame};
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::config::Hardware;
use crate::ffi::{self, SharedFrame};
use crate::media::{Alignment, EncodedPacket, RenditionSink, Sample, SegmentClock, TIMESCALE, Ticks, VideoParams, avc};
use crate::metrics::{DropReason, FrameDrops, Metrics};
use crate::transcode::ladder::Rung;
use crate::transcode::scale::{self, EncoderInput, FrameError, Routed, RungFrames, SourceDecoder};
use crate::transcode::thumbnail::{ThumbnailSpec, Thumbnailer};

/// Source packets queued for the decoder. When full, the channel thread waits, and behind it
/// ingest and the publisher's TCP connection.
const DECODE_QUEUE: usize = 64;
/// Decoded pictures queued for one rung (about half a second at 30 fps). A rung whose queue is
/// full is behind real time by that much and skips to the next segment start. Pictures are
/// shared between rungs, so this bounds memory to this many source pictures, not per rung.
pub const RUNG_QUEUE: usize = 16;
/// Source packets whose arrival time and keyframe flag are remembered until their picture is
/// decoded. H.264 reorders by at most 16 pictures; this leaves room for decode errors.
const PENDING_LIMIT: usize = 128;
/// Frame rate assumed when the source's SPS carries no timing information.
const DEFAULT_FRAME_RATE: f64 = 30.0;

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
    pub hardware: Hardware,
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
    fn is_hardware(self) -> bool {
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
struct DecodeInput(Sample, SystemTime);

/// A decoded source picture on its way to the rungs.
struct Picture {
    frame: Arc<SharedFrame>,
    pts: Ticks,
    segment_start: bool,
    ingest_time: SystemTime,
    /// The source's frame rate, when its SPS says.
    frame_rate: Option<f64>,
}

/// A running transcode.
pub struct Transcoder {
    channel: String,
    input: Option<SyncSender<DecodeInput>>,
    decoder: Option<JoinHandle<Result<(), TranscodeError>>>,
    rungs: Vec<(String, JoinHandle<Result<(), TranscodeError>>)>,
    /// `ladderd_encoder_queue_depth` of each rung, zeroed once the threads are joined (a rung that
    /// failed leaves pictures in its queue uncounted).
    queue_depths: Vec<IntGauge>,
}

impl Transcoder {
    /// Opens the decoder and starts the threads; `sinks[i]` receives `spec.rungs[i]`.
    pub fn start(
        spec: TranscodeSpec,
        sinks: Vec<Box<dyn RenditionSink>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TranscodeError> {
        ffi::init();
        let channel = spec.channel.clone();
        // Which backend each stage runs on was chosen (and logged) by the channel; a GPU decoder or
        // encoder that does not open here falls back below, and says so.
        let mut decoder_choice = spec.decoder;
        let fallbacks = scale::Fallbacks {
            decoder: metrics.pipeline_errors.with_label_values(&[&channel, "decoder_fallback"]),
            scaler: metrics.pipeline_errors.with_label_values(&[&channel, "scaler_fallback"]),
        };
        let decoder = match open_decoder(&channel, decoder_choice, &spec.source, (&spec.rungs, &fallbacks)) {
            Ok(d) => d,
            Err(e) if decoder_choice != DecoderChoice::Cpu => {
                tracing::warn!(channel = %channel, error = %e, "NVDEC did not open; decoding on the CPU");
                metrics.pipeline_errors.with_label_values(&[&channel, "decoder_fallback"]).inc();
                decoder_choice = DecoderChoice::Cpu;
                open_decoder(&channel, decoder_choice, &spec.source, (&spec.rungs, &fallbacks))?
            }
            Err(e) => return Err(e),
        };
        let mut feeds = Vec::new();
        let mut rungs = Vec::new();
        let mut queue_depths = Vec::new();
        for (rung, sink) in spec.rungs.iter().zip(sinks) {
            let (tx, rx) = mpsc::sync_channel(spec.rung_queue.max(1));
            let mut worker = RungWorker::new(&spec, rung.clone(), &metrics);
            worker.queue_depth.set(0);
            queue_depths.push(worker.queue_depth.clone());
            let (drops, queue_depth) = (worker.drops.clone(), worker.queue_depth.clone());
            worker.choice = spec.encoders.get(rungs.len()).copied().unwrap_or(EncoderChoice::X264);
            let handle = std::thread::Builder::new()
                .name(format!("rung-{}-{}", channel, rung.name))
                .spawn(move || worker.run(rx, sink))
                .map_err(|source| TranscodeError::Thread { channel: channel.clone(), source })?;
            rungs.push((rung.name.clone(), handle));
            feeds.push(RungFeed { name: rung.name.clone(), tx: Some(tx), lagging: false, drops, queue_depth });
        }
        let thumbnails = spec
            .thumbnails
            .clone()
            .map(|t| Thumbnailer::start(&channel, t))
            .transpose()
            .map_err(|source| TranscodeError::Thread { channel: channel.clone(), source })?;
        let (input, rx) = mpsc::sync_channel(DECODE_QUEUE);
        let worker = DecodeWorker {
            channel: channel.clone(),
            decoder,
            decoder_choice,
            source: spec.source.clone(),
            wait_for_keyframe: false,
            decoder_fallbacks: metrics.pipeline_errors.with_label_values(&[&channel, "decoder_fallback"]),
            gpu_fallbacks: fallbacks,
            clock: SegmentClock::new(spec.segment_target, spec.alignment),
            min_frame_gap: (f64::from(TIMESCALE) / spec.max_frame_rate).round() as Ticks,
            pending: BTreeMap::new(),
            last_kept: None,
            feeds,
            decoded: metrics.frames_decoded.with_label_values(&[&channel]),
            decode_latency: metrics.stage_latency.with_label_values(&[&channel, "", "decode"]),
            thumbnails,
        };
        let decoder = std::thread::Builder::new()
            .name(format!("decode-{channel}"))
            .spawn(move || {
                worker.run(rx);
                Ok(())
            })
            .map_err(|source| TranscodeError::Thread { channel: channel.clone(), source })?;
        Ok(Self { channel, input: Some(input), decoder: Some(decoder), rungs, queue_depths })
    }

    /// One source access unit, in decode order. Blocks while the decoder's queue is full.
    /// (New stream parameters start a new `Transcoder`: the ladder plan may change with them.)
    pub fn push(&mut self, sample: Sample, at: SystemTime) -> Result<(), TranscodeError> {
        let stopped = || TranscodeError::Stopped { channel: self.channel.clone() };
        let input = self.input.as_ref().ok_or_else(stopped)?;
        input.send(DecodeInput(sample, at)).map_err(|_| stopped())
    }

    /// Flushes the decoder and every encoder (their last packets reach the sinks, which are then
    /// finished) and joins the threads. Returns the first error any thread met.
    pub fn finish(mut self) -> Result<(), TranscodeError> {
        drop(self.input.take());
        let mut first: Option<TranscodeError> = None;
        let mut keep = |r: Result<(), TranscodeError>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "transcoding thread failed");
                first.get_or_insert(e);
            }
        };
        if let Some(h) = self.decoder.take() {
            keep(join(&self.channel, "decode", h));
        }
        for (name, h) in std::mem::take(&mut self.rungs) {
            keep(join(&self.channel, &name, h));
        }
        for depth in &self.queue_depths {
            depth.set(0);
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Transcoder {
    fn drop(&mut self) {
        // Dropping the input ends the decode thread, which ends the rung threads; they finish on
        // their own. Joining here would block whoever drops us, so only `finish` joins.
        drop(self.input.take());
    }
}

fn join(channel: &str, thread: &str, h: JoinHandle<Result<(), TranscodeError>>) -> Result<(), TranscodeError> {
    h.join().unwrap_or_else(|_| Err(TranscodeError::Panicked { channel: channel.into(), thread: thread.into() }))
}

/// Opens the source decoder; for the GPU path (`NvdecCuda`) with the channel's scaling graph for
/// `rungs`, counting its fallbacks in `fallbacks`.
fn open_decoder(
    channel: &str,
    choice: DecoderChoice,
    source: &VideoParams,
    (rungs, fallbacks): (&[Rung], &scale::Fallbacks),
) -> Result<SourceDecoder, TranscodeError> {
    let err = |what, source| TranscodeError::Decoder { channel: channel.into(), what, source };
    let codec = match choice {
        DecoderChoice::NvdecCuda { gpu } => {
            let filter = scale::ScaleFilter::available().map_err(ffi::hwctx::HwError);
            return filter
                .and_then(|f| SourceDecoder::cuda(channel, gpu, source, f, rungs, fallbacks.clone()))
                .map_err(|source| TranscodeError::Hw { channel: channel.into(), source });
        }
        #[cfg(test)]
        DecoderChoice::SoftwareGraph => ffmpeg::decoder::find(codec::Id::H264),
        DecoderChoice::Cpu => ffmpeg::decoder::find(codec::Id::H264),
        DecoderChoice::Nvdec { .. } => ffmpeg::decoder::find_by_name("h264_cuvid"),
    }
    .ok_or_else(|| err("find the h264 decoder", ffmpeg::Error::DecoderNotFound))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    ffi::set_extradata(&mut ctx, &source.avcc)
        .map_err(|source| TranscodeError::Ffi { channel: channel.into(), source })?;
    let mut opts = Dictionary::new();
    match choice {
        // Slice threads add no delay; frame threads would hold back one picture per thread.
        #[cfg(test)]
        DecoderChoice::SoftwareGraph => {
            ctx.set_threading(codec::threading::Config { kind: codec::threading::Type::Slice, ..Default::default() })
        }
        DecoderChoice::Cpu => {
            ctx.set_threading(codec::threading::Config { kind: codec::threading::Type::Slice, ..Default::default() })
        }
        // cuvid options (libavcodec/cuviddec.c): which GPU, and the decode surface pool (cuvid
        // raises it to what the stream needs). The low-delay flag asks for no display delay in the
        // parser (up to four pictures held back otherwise) where cuviddec.c reads it; a version
        // that does not ignores it.
        DecoderChoice::Nvdec { gpu } => {
            ctx.set_flags(codec::Flags::LOW_DELAY);
            opts.set("gpu", &gpu.to_string());
            opts.set("surfaces", "8");
            // The process's CUDA context on that GPU rather than one of its own; without it
            // (the device cannot be made) cuvid makes its own from `gpu`, and says why not.
            if let Ok(device) = ffi::hwctx::HwDevice::cuda_shared(gpu) {
                let _ = ffi::hwctx::set_hw_device(&mut ctx, &device);
            }
        }
        DecoderChoice::NvdecCuda { .. } => {}
    }
    let mut decoder = ctx.decoder();
    decoder.set_packet_time_base(Rational(1, TIMESCALE as i32));
    let decoder =
        decoder.open_as_with(codec, opts).and_then(|o| o.video()).map_err(|e| err("open the h264 decoder", e))?;
    #[cfg(test)]
    if choice == DecoderChoice::SoftwareGraph {
        let filter = scale::ScaleFilter::Software;
        return Ok(SourceDecoder::with_graph(channel, decoder, filter, rungs, fallbacks.clone()));
    }
    Ok(SourceDecoder::plain(channel, decoder))
}

/// The decode thread's state.
struct DecodeWorker {
    channel: String,
    /// Where decoding runs now; NVDEC that fails mid-stream is replaced by the CPU decoder.
    decoder_choice: DecoderChoice,
    source: VideoParams,
    /// After a move to the CPU decoder, packets up to the next keyframe cannot be decoded.
    wait_for_keyframe: bool,
    decoder_fallbacks: IntCounter,
    gpu_fallbacks: scale::Fallbacks,
    decoder: SourceDecoder,
    clock: SegmentClock,
    /// Pictures closer together than this are dropped (the `max_frame_rate` cap).
    min_frame_gap: Ticks,
    /// By pts: arrival time and keyframe flag of packets sent to the decoder.
    pending: BTreeMap<Ticks, (SystemTime, bool)>,
    last_kept: Option<Ticks>,
    feeds: Vec<RungFeed>,
    decoded: IntCounter,
    /// Arrival at ingest → picture out of the decoder.
    decode_latency: Histogram,
    thumbnails: Option<Thumbnailer>,
}

impl DecodeWorker {
    fn run(mut self, rx: Receiver<DecodeInput>) {
        for DecodeInput(sample, at) in rx {
            self.decode(sample, at);
            if self.feeds.iter().all(|f| f.tx.is_none()) {
                tracing::error!(channel = %self.channel, "every rung has stopped; ending the transcode");
                break;
            }
        }
        self.drain();
    }

    fn decode(&mut self, sample: Sample, at: SystemTime) {
        if self.wait_for_keyframe {
            if !sample.keyframe {
                self.count_drop(DropReason::AwaitingKeyframe);
                return;
            }
            self.wait_for_keyframe = false;
        }
        self.pending.insert(sample.pts, (at, sample.keyframe));
        while self.pending.len() > PENDING_LIMIT {
            self.pending.pop_first();
        }
        let mut packet = Packet::copy(&sample.data);
        packet.set_pts(Some(sample.pts));
        packet.set_dts(Some(sample.dts));
        if sample.keyframe {
            packet.set_flags(codec::packet::Flags::KEY);
        }
        let mut sent = self.decoder.send_packet(&packet);
        if sent == Err(ffmpeg::Error::Other { errno: EAGAIN }) {
            // The decoder wants its output read before it takes more input.
            self.receive();
            sent = self.decoder.send_packet(&packet);
        }
        if let Err(e) = sent {
            tracing::warn!(channel = %self.channel, pts = sample.pts, error = %e, "source packet did not decode");
            self.count_drop(DropReason::DecodeError);
            if self.decoder_choice != DecoderChoice::Cpu {
                self.move_to_cpu();
                return;
            }
        }
        self.receive();
    }

    /// NVDEC failed: decode on the CPU from the next source keyframe. The pictures in between are
    /// lost; the segment clock is unchanged, so cuts stay aligned.
    fn move_to_cpu(&mut self) {
        match open_decoder(&self.channel, DecoderChoice::Cpu, &self.source, (&[], &self.gpu_fallbacks)) {
            Ok(d) => {
                tracing::warn!(channel = %self.channel, "NVDEC failed; decoding on the CPU from the next keyframe");
                self.decoder = d;
                self.decoder_choice = DecoderChoice::Cpu;
                self.wait_for_keyframe = true;
                self.decoder_fallbacks.inc();
            }
            Err(e) => tracing::error!(channel = %self.channel, error = %e, "cannot open the CPU decoder"),
        }
    }

    fn drain(&mut self) {
        if self.decoder.send_eof().is_ok() {
            self.receive();
        }
    }

    fn receive(&mut self) {
        loop {
            let mut frame = frame::Video::empty();
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => self.picture(frame),
                Err(ffmpeg::Error::Other { errno: EAGAIN }) | Err(ffmpeg::Error::Eof) => return,
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "decoder error");
                    self.count_drop(DropReason::DecodeError);
                    if self.decoder_choice != DecoderChoice::Cpu {
                        self.move_to_cpu();
                    }
                    return;
                }
            }
        }
    }

    /// A source picture no rung gets.
    fn count_drop(&self, reason: DropReason) {
        for f in &self.feeds {
            f.drops.inc(reason);
        }
    }

    fn picture(&mut self, frame: frame::Video) {
        let Some(pts) = frame.timestamp().or(frame.pts()) else {
            tracing::debug!(channel = %self.channel, "decoded picture without a timestamp; dropped");
            self.count_drop(DropReason::NoTimestamp);
            return;
        };
        self.decoded.inc();
        // Forget packets whose pictures will never come (decode errors), then take this one's.
        while self.pending.first_key_value().is_some_and(|(&p, _)| p < pts) {
            self.pending.pop_first();
        }
        let (ingest_time, keyframe) = match self.pending.remove(&pts) {
            Some((at, keyframe)) => {
                if let Ok(latency) = at.elapsed() {
                    self.decode_latency.observe(latency.as_secs_f64());
                }
                (at, keyframe)
            }
            None => (SystemTime::now(), frame.is_key()),
        };
        let segment_start = self.clock.is_cut(pts, keyframe);
        // Frame-rate cap: drop pictures that come sooner than the cap allows, never a cut. A tenth
        // of a frame of slack absorbs millisecond rounding of RTMP timestamps.
        if !segment_start && self.last_kept.is_some_and(|l| pts - l < self.min_frame_gap - self.min_frame_gap / 10) {
            self.count_drop(DropReason::FrameRateCap);
            return;
        }
        self.last_kept = Some(pts);
        let frame_rate = self.decoder.frame_rate().map(f64::from).filter(|r| r.is_finite() && *r > 0.0);
        let picture = |frame| {
            Arc::new(Picture { frame: Arc::new(SharedFrame::new(frame)), pts, segment_start, ingest_time, frame_rate })
        };
        // On the GPU path each rung gets its own picture, scaled already; otherwise they share one.
        match self.decoder.route(frame) {
            Ok(Routed::Shared(frame)) => {
                let picture = picture(frame);
                if let Some(t) = self.thumbnails.as_mut() {
                    t.offer(pts, &picture.frame);
                }
                for f in &mut self.feeds {
                    f.offer(&self.channel, &picture);
                }
            }
            Ok(Routed::PerRung(frames)) => {
                let pictures: Vec<_> = frames.into_iter().map(picture).collect();
                // The top rung's picture, in GPU memory: the thumbnail thread downloads it.
                if let (Some(t), Some(top)) = (self.thumbnails.as_mut(), pictures.first()) {
                    t.offer(pts, &top.frame);
                }
                for (f, picture) in self.feeds.iter_mut().zip(&pictures) {
                    f.offer(&self.channel, picture);
                }
            }
            Err(e) => {
                tracing::warn!(channel = %self.channel, pts, error = %e, "a decoded picture cannot leave the GPU");
                // Lost with the GPU, as a picture the decoder could not give.
                self.count_drop(DropReason::DecodeError);
                self.move_to_cpu();
            }
        }
    }
}

/// The decode thread's end of one rung's queue.
struct RungFeed {
    name: String,
    /// `None` once the rung thread has gone.
    tx: Option<SyncSender<Arc<Picture>>>,
    /// The rung's queue overflowed: it gets nothing until the next segment start.
    lagging: bool,
    drops: FrameDrops,
    /// Raised before a picture is queued and lowered when the rung takes it (or it is not queued),
    /// so it never reads below 0.
    queue_depth: IntGauge,
}

impl RungFeed {
    fn offer(&mut self, channel: &str, picture: &Arc<Picture>) {
        let Some(tx) = &self.tx else { return };
        if !self.lagging || picture.segment_start {
            self.queue_depth.inc();
        }
        let sent = if picture.segment_start {
            // A segment start is never skipped, so a rung that lagged resumes exactly on a cut
            // with an IDR. Waiting here holds the other rungs back by at most the time this rung
            // needs for one picture, since its queue is only full of pictures it will encode.
            tx.send(picture.clone()).map_err(|_| ())
        } else if self.lagging {
            self.drops.inc(DropReason::Lagging);
            return;
        } else {
            match tx.try_send(picture.clone()) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(channel, rung = %self.name, pts = picture.pts, "rung is behind real time; skipping to the next segment");
                    self.lagging = true;
                    self.queue_depth.dec();
                    self.drops.inc(DropReason::Lagging);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => Err(()),
            }
        };
        match sent {
            Ok(()) => self.lagging = false,
            Err(()) => {
                tracing::debug!(channel, rung = %self.name, "rung thread has stopped");
                self.queue_depth.dec();
                self.tx = None;
            }
        }
    }
}

/// One rung's thread: scales the shared pictures and encodes them with libx264.
struct RungWorker {
    channel: String,
    rung: Rung,
    preset: String,
    threads: usize,
    max_frame_rate: f64,
    /// Where the rung starts; a hardware encoder that fails moves it to libx264.
    choice: EncoderChoice,
    encoded: IntCounter,
    failures: IntCounter,
    fallbacks: IntCounter,
    drops: FrameDrops,
    queue_depth: IntGauge,
    /// Arrival at ingest → encoded packet out of this rung's encoder.
    encode_latency: Histogram,
}

/// The open encoder of a rung, with what must be matched to its output packets.
struct Encoding {
    encoder: ffmpeg::encoder::Video,
    choice: EncoderChoice,
    /// What the encoder was opened to take: system memory, or GPU frames of one frames context.
    input: EncoderInput,
    /// Pictures sent so far.
    sent: usize,
    /// Pts of the pictures forced to IDR that have not come out yet.
    cuts: VecDeque<Ticks>,
    /// Ingest time by pts of the pictures inside the encoder.
    ingest: BTreeMap<Ticks, SystemTime>,
}

impl RungWorker {
    fn new(spec: &TranscodeSpec, rung: Rung, metrics: &Metrics) -> Self {
        Self {
            encoded: metrics.frames_encoded.with_label_values(&[&spec.channel, &rung.name]),
            failures: metrics.pipeline_errors.with_label_values(&[&spec.channel, "encode"]),
            drops: metrics.frame_drops(&spec.channel, &rung.name),
            queue_depth: metrics.encoder_queue_depth.with_label_values(&[&spec.channel, &rung.name]),
            encode_latency: metrics.stage_latency.with_label_values(&[&spec.channel, &rung.name, "encode"]),
            channel: spec.channel.clone(),
            rung,
            preset: spec.x264_preset.clone(),
            threads: spec.encoder_threads,
            max_frame_rate: spec.max_frame_rate,
            choice: EncoderChoice::X264,
            fallbacks: metrics.pipeline_errors.with_label_values(&[&spec.channel, "encoder_fallback"]),
        }
    }

    fn run(self, rx: Receiver<Arc<Picture>>, mut sink: Box<dyn RenditionSink>) -> Result<(), TranscodeError> {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.encode_all(rx, sink.as_mut())))
            .unwrap_or_else(|_| {
                Err(TranscodeError::Panicked {
                    channel: self.channel.clone(),
                    thread: format!("rung {}", self.rung.name),
                })
            });
        if let Err(e) = &result {
            // Said now, not when the publish ends: the other rungs carry on without this one.
            tracing::error!(channel = %self.channel, rung = %self.rung.name, error = %e, "rung failed; its rendition ends here");
            self.failures.inc();
        }
        // Whatever happened, the rendition's last segment is published and its playlist ended.
        sink.finish();
        result
    }

    fn encode_all(&self, rx: Receiver<Arc<Picture>>, sink: &mut dyn RenditionSink) -> Result<(), TranscodeError> {
        // Scales on the CPU, downloads GPU pictures, or passes them on to NVENC (scale.rs).
        let mut frames = RungFrames::new(self.rung.width, self.rung.height);
        let mut encoding: Option<Encoding> = None;
        let mut choice = self.choice;
        let mut waiting_for_cut = false;
        for picture in rx {
            self.queue_depth.dec();
            let src = picture.frame.frame();
            if encoding.is_none() {
                if waiting_for_cut && !picture.segment_start {
                    // After a hardware encoder failed: the CPU encoder starts on the next segment,
                    // so that its first picture is an IDR on the shared cut.
                    self.drops.inc(DropReason::EncoderFallback);
                    continue;
                }
                waiting_for_cut = false;
                let mut input = EncoderInput::for_picture(src, matches!(choice, EncoderChoice::Nvenc { .. }));
                let e = match self.open_encoder(choice, picture.frame_rate, &input) {
                    Ok(e) => e,
                    Err(err) if choice.is_hardware() => {
                        tracing::warn!(channel = %self.channel, rung = %self.rung.name, error = %err, "hardware encoder did not open; this rung runs on libx264");
                        self.fallbacks.inc();
                        choice = EncoderChoice::X264;
                        input = EncoderInput::System;
                        self.open_encoder(choice, picture.frame_rate, &input)?
                    }
                    Err(err) => return Err(err),
                };
                let params =
                    avc::params_from_annexb(&ffi::extradata(&e)).map_err(|source| TranscodeError::EncoderParams {
                        channel: self.channel.clone(),
                        rung: self.rung.name.clone(),
                        source,
                    })?;
                sink.params(params);
                encoding = Some(Encoding {
                    encoder: e,
                    choice,
                    input,
                    sent: 0,
                    cuts: VecDeque::new(),
                    ingest: BTreeMap::new(),
                });
            }
            let Some(enc) = encoding.as_mut() else { continue };
            if picture.segment_start {
                enc.cuts.push_back(picture.pts);
            }
            enc.ingest.insert(picture.pts, picture.ingest_time);
            let copied = frames.copied_between_pools;
            let sent = frames
                .prepare(src, &enc.input, picture.pts, picture.segment_start)
                .map_err(|e| self.frame_error(picture.pts, e))
                .and_then(|out| self.send(enc, &out))
                .and_then(|()| self.receive(enc, sink));
            if copied == 0 && frames.copied_between_pools > 0 && sent.is_ok() {
                tracing::info!(channel = %self.channel, rung = %self.rung.name, pts = picture.pts, "GPU pictures now come from a new frames context (the decoder re-initialised); NVENC gets copies on the GPU");
            }
            match sent {
                Ok(()) => {}
                Err(err) if enc.choice.is_hardware() || matches!(err, TranscodeError::GpuPicture { .. }) => {
                    // A GPU encoder that fails mid-stream (Xid error, lost device, session limit),
                    // or a GPU picture that cannot be used (the GPU is gone, or decoding moved to
                    // the CPU under an NVENC fed GPU frames): libx264 takes over from the next
                    // segment. This rendition gets a new init segment and a discontinuity there,
                    // and its segments stay aligned.
                    tracing::warn!(channel = %self.channel, rung = %self.rung.name, error = %err, "GPU encoding failed; this rung moves to libx264 at the next segment");
                    if enc.choice.is_hardware() {
                        // A libx264 rung that lost its GPU pictures restarts; it did not move.
                        self.fallbacks.inc();
                    }
                    // The pictures inside it (this one included) never come out.
                    self.drops.inc_by(DropReason::EncoderFallback, enc.ingest.len() as u64);
                    encoding = None;
                    choice = EncoderChoice::X264;
                    waiting_for_cut = true;
                }
                Err(err) => return Err(err),
            }
        }
        if let Some(enc) = encoding.as_mut() {
            let flushed = enc
                .encoder
                .send_eof()
                .map_err(|e| self.encoder_error("flush", e))
                .and_then(|()| self.receive(enc, sink));
            match flushed {
                // The last pictures of a failing GPU encoder are lost; the publish is over anyway.
                Err(e) if enc.choice.is_hardware() => {
                    tracing::warn!(channel = %self.channel, rung = %self.rung.name, error = %e, "hardware encoder failed while flushing");
                }
                other => other?,
            }
        }
        Ok(())
    }

    fn send(&self, enc: &mut Encoding, picture: &frame::Video) -> Result<(), TranscodeError> {
        enc.sent += 1;
        #[cfg(test)]
        if let EncoderChoice::FailAfter { pictures } = enc.choice
            && enc.sent > pictures
        {
            return Err(self.encoder_error("send a picture", ffmpeg::Error::External));
        }
        enc.encoder.send_frame(picture).map_err(|e| self.encoder_error("send a picture", e))
    }

    fn receive(&self, enc: &mut Encoding, sink: &mut dyn RenditionSink) -> Result<(), TranscodeError> {
        loop {
            let mut packet = Packet::empty();
            match enc.encoder.receive_packet(&mut packet) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other { errno: EAGAIN }) | Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) => return Err(self.encoder_error("receive a packet", e)),
            }
            let Some(pts) = packet.pts() else {
                self.drops.inc(DropReason::NoTimestamp);
                continue;
            };
            let dts = packet.dts().unwrap_or(pts);
            while enc.cuts.front().is_some_and(|&c| c < pts) {
                enc.cuts.pop_front();
            }
            let segment_start = enc.cuts.front() == Some(&pts);
            if segment_start {
                enc.cuts.pop_front();
            }
            let keyframe = packet.is_key();
            if segment_start && !keyframe {
                tracing::warn!(channel = %self.channel, rung = %self.rung.name, pts, "encoder did not make the forced IDR");
            }
            let ingest_time = match enc.ingest.remove(&pts) {
                Some(at) => {
                    if let Ok(latency) = at.elapsed() {
                        self.encode_latency.observe(latency.as_secs_f64());
                    }
                    at
                }
                None => SystemTime::now(),
            };
            while enc.ingest.first_key_value().is_some_and(|(&p, _)| p < pts) {
                enc.ingest.pop_first();
            }
            let data = avc::annexb_to_length_prefixed(packet.data().unwrap_or_default());
            self.encoded.inc();
            sink.packet(EncodedPacket {
                sample: Sample { pts, dts, keyframe, segment_start: segment_start && keyframe, data },
                ingest_time,
            });
        }
    }

    fn open_encoder(
        &self,
        choice: EncoderChoice,
        source_rate: Option<f64>,
        input: &EncoderInput,
    ) -> Result<ffmpeg::encoder::Video, TranscodeError> {
        let name = match choice {
            EncoderChoice::Nvenc { .. } => "h264_nvenc",
            _ => "libx264",
        };
        let codec = ffmpeg::encoder::find_by_name(name)
            .ok_or_else(|| self.encoder_error("find the encoder", ffmpeg::Error::EncoderNotFound))?;
        let mut enc = codec::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(|e| self.encoder_error("allocate the encoder", e))?;
        let fps = source_rate.unwrap_or(DEFAULT_FRAME_RATE).min(self.max_frame_rate);
        enc.set_width(self.rung.width);
        enc.set_height(self.rung.height);
        enc.set_format(Pixel::YUV420P);
        if let EncoderInput::Gpu(frames) = input {
            // NVENC reads the GPU pictures of this frames context as they are (libavcodec/nvenc.c
            // takes its CUDA context and sw_format from it).
            enc.set_format(Pixel::CUDA);
            ffi::hwctx::set_hw_frames(&mut enc, frames).map_err(|source| TranscodeError::GpuPicture {
                channel: self.channel.clone(),
                rung: self.rung.name.clone(),
                pts: 0,
                source,
            })?;
        }
        enc.set_time_base(Rational(1, TIMESCALE as i32));
        // A hint for rate control; timestamps carry the real timing.
        enc.set_frame_rate(Some(Rational((fps * 1000.0).round() as i32, 1000)));
        // SPS/PPS in extradata (the avcC of the init segment), not repeated in the stream.
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let bitrate = usize::try_from(self.rung.bitrate).unwrap_or(usize::MAX);
        enc.set_bit_rate(bitrate);
        enc.set_max_bit_rate(bitrate);
        let mut opts = Dictionary::new();
        // A one-second VBV keeps every segment near the declared bitrate (HLS BANDWIDTH).
        opts.set("bufsize", &bitrate.to_string());
        opts.set("profile", "high");
        // Keyframes only where the segment clock forces them (pict_type I → IDR), so every
        // rung's IDRs fall on the same timestamps.
        opts.set("forced-idr", "1");
        match choice {
            EncoderChoice::Nvenc { gpu } => {
                // FFmpeg's nvenc options (libavcodec/nvenc_h264.c): the fastest preset with
                // low-latency tuning, constant bitrate, no B-frames, no lookahead and no output
                // delay, so a picture in gives a packet out; GOP "infinite" (-1 is not accepted,
                // a very large value is) with IDRs only where forced.
                opts.set("preset", "p2");
                opts.set("tune", "ll");
                opts.set("rc", "cbr");
                opts.set("bf", "0");
                opts.set("rc-lookahead", "0");
                opts.set("delay", "0");
                opts.set("zerolatency", "1");
                opts.set("g", "100000");
                opts.set("gpu", &gpu.to_string());
                // Fed system memory, NVENC works in the process's CUDA context on that GPU
                // rather than one of its own per rung (fed GPU frames, it takes the frames'
                // context instead).
                if !matches!(input, EncoderInput::Gpu(_))
                    && let Ok(device) = ffi::hwctx::HwDevice::cuda_shared(gpu)
                {
                    let _ = ffi::hwctx::set_hw_device(&mut enc, &device);
                }
            }
            _ => {
                opts.set("preset", &self.preset);
                // zerolatency: no B-frames, no lookahead, sliced threads — a picture in, a packet out.
                opts.set("tune", "zerolatency");
                opts.set("x264-params", "keyint=infinite:scenecut=0:bframes=0:rc-lookahead=0");
                if self.threads > 0 {
                    opts.set("threads", &self.threads.to_string());
                }
            }
        }
        let enc = enc.open_as_with(codec, opts).map_err(|e| self.encoder_error("open the encoder", e))?;
        let gpu_frames = matches!(input, EncoderInput::Gpu(_));
        tracing::debug!(channel = %self.channel, rung = %self.rung.name, encoder = name, gpu_frames, width = self.rung.width, height = self.rung.height, fps, "encoder opened");
        Ok(enc)
    }

    fn encoder_error(&self, what: &'static str, source: ffmpeg::Error) -> TranscodeError {
        TranscodeError::Encoder { channel: self.channel.clone(), rung: self.rung.name.clone(), what, source }
    }

    fn frame_error(&self, pts: Ticks, e: FrameError) -> TranscodeError {
        let (channel, rung) = (self.channel.clone(), self.rung.name.clone());
        match e {
            FrameError::Scale(source) => TranscodeError::Scale { channel, rung, pts, source },
            FrameError::Gpu(source) => TranscodeError::GpuPicture { channel, rung, pts, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// What a fake sink saw.
    #[derive(Default)]
    struct Seen {
        params: Vec<VideoParams>,
        /// How many packets had come when each `params` call came.
        params_at: Vec<usize>,
        packets: Vec<Sample>,
        finished: bool,
    }

    /// Records what it is given; `delay` makes it a slow consumer.
    struct FakeSink(Arc<Mutex<Seen>>, Duration);

    impl RenditionSink for FakeSink {
        fn params(&mut self, params: VideoParams) {
            let mut seen = self.0.lock().expect("lock");
            let at = seen.packets.len();
            seen.params_at.push(at);
            seen.params.push(params);
        }
        fn packet(&mut self, packet: EncodedPacket) {
            std::thread::sleep(self.1);
            self.0.lock().expect("lock").packets.push(packet.sample);
        }
        fn finish(self: Box<Self>) {
            self.0.lock().expect("lock").finished = true;
        }
    }

    /// A real H.264 source made by the `ffmpeg` CLI, read back as (params, samples) on the 90 kHz clock.
    fn source(dir: &Path, rate: u32, secs: u32) -> (VideoParams, Vec<Sample>) {
        let file = dir.join("src.mp4");
        let status = Command::new(std::env::var("FFMPEG").unwrap_or_else(|_| "ffmpeg".into()))
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size=320x240:rate={rate}"))
            .args([
                "-t",
                &secs.to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "45",
                "-bf",
                "2",
                "-sc_threshold",
                "0",
            ])
            .args(["-pix_fmt", "yuv420p"])
            .arg(&file)
            .status()
            .expect("ffmpeg must be installed");
        assert!(status.success());
        ffi::init();
        let mut input = ffmpeg::format::input(&file).expect("open source");
        let stream = input.streams().best(ffmpeg::media::Type::Video).expect("video stream");
        let (index, tb) = (stream.index(), stream.time_base());
        let ctx = codec::Context::from_parameters(stream.parameters()).expect("parameters");
        let params = avc::params_from_avcc(Bytes::from(ffi::extradata(&ctx))).expect("avcC");
        let to_ticks = |v: i64| v * i64::from(TIMESCALE) * i64::from(tb.numerator()) / i64::from(tb.denominator());
        let mut samples = Vec::new();
        for (s, packet) in input.packets() {
            if s.index() != index {
                continue;
            }
            let pts = to_ticks(packet.pts().expect("pts"));
            samples.push(Sample {
                pts,
                dts: to_ticks(packet.dts().expect("dts")),
                keyframe: packet.is_key(),
                segment_start: false,
                data: Bytes::copy_from_slice(packet.data().expect("data")),
            });
        }
        (params, samples)
    }

    fn spec(source: VideoParams, alignment: Alignment, max_frame_rate: f64) -> TranscodeSpec {
        TranscodeSpec {
            channel: "test".into(),
            source,
            rungs: vec![
                Rung { name: "240p".into(), width: 320, height: 240, bitrate: 400_000 },
                Rung { name: "120p".into(), width: 160, height: 120, bitrate: 150_000 },
            ],
            alignment,
            segment_target: 90_000,
            x264_preset: "ultrafast".into(),
            max_frame_rate,
            encoder_threads: 1,
            hardware: Hardware::Cpu,
            encoders: Vec::new(),
            decoder: DecoderChoice::Cpu,
            thumbnails: None,
            // Room for the whole test source: these tests count every picture, and a loaded
            // machine must not make a rung skip any (the lagging test sets the real depth).
            rung_queue: 4096,
        }
    }

    /// Runs a transcode over `samples`, pushed in real time as a live publisher sends them;
    /// `delays[i]` slows rung i's sink down by that much per packet.
    fn run_live(
        spec: TranscodeSpec,
        samples: Vec<Sample>,
        metrics: Arc<Metrics>,
        delays: &[Duration],
    ) -> Vec<Arc<Mutex<Seen>>> {
        let seen: Vec<Arc<Mutex<Seen>>> = spec.rungs.iter().map(|_| Arc::default()).collect();
        let sinks = seen
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Box::new(FakeSink(s.clone(), delays.get(i).copied().unwrap_or_default())) as Box<dyn RenditionSink>
            })
            .collect();
        let mut t = Transcoder::start(spec, sinks, metrics).expect("start");
        let start = std::time::Instant::now();
        let first = samples.first().map_or(0, |s| s.dts);
        for s in samples {
            let due = Duration::from_secs_f64((s.dts - first).max(0) as f64 / f64::from(TIMESCALE));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            t.push(s, SystemTime::now()).expect("push");
        }
        t.finish().expect("finish");
        seen
    }

    fn run(spec: TranscodeSpec, samples: Vec<Sample>, metrics: Arc<Metrics>) -> Vec<Arc<Mutex<Seen>>> {
        run_live(spec, samples, metrics, &[])
    }

    fn cuts(seen: &Seen) -> Vec<Ticks> {
        seen.packets.iter().filter(|p| p.segment_start).map(|p| p.pts).collect()
    }

    #[test]
    fn every_rung_gets_idrs_on_the_same_cadence_and_nowhere_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        let n = samples.len();
        let metrics = Arc::new(Metrics::new());
        let seen = run(spec(params, Alignment::Cadence, 60.0), samples, metrics.clone());
        let first = cuts(&seen[0].lock().expect("lock"));
        // 1 s cadence over 3 s at 30 fps (pts step 3000): cuts on the first frame of every second.
        assert_eq!(first, vec![0, 90_000, 180_000]);
        for (s, size) in seen.iter().zip([(320, 240), (160, 120)]) {
            let s = s.lock().expect("lock");
            assert!(s.finished);
            assert_eq!(s.params.len(), 1);
            assert_eq!((s.params[0].width, s.params[0].height), size);
            let codec = &s.params[0].codec;
            assert!(
                codec.len() == 11 && codec.starts_with("avc1.") && codec[5..].chars().all(|c| c.is_ascii_hexdigit()),
                "{codec}"
            );
            assert_eq!(s.packets.len(), n, "no picture lost");
            assert_eq!(cuts(&s), first, "cuts are the same in every rung");
            let keys: Vec<Ticks> = s.packets.iter().filter(|p| p.keyframe).map(|p| p.pts).collect();
            assert_eq!(keys, first, "IDRs only where segments start");
            assert!(s.packets.windows(2).all(|w| w[1].dts > w[0].dts), "decode order is monotonic");
            // Length-prefixed NAL units: the first length covers the rest exactly or partly.
            let d = &s.packets[0].data;
            let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
            assert!(len + 4 <= d.len());
        }
        assert_eq!(metrics.frames_decoded.with_label_values(&["test"]).get(), n as u64);
        assert_eq!(metrics.frames_encoded.with_label_values(&["test", "120p"]).get(), n as u64);
        // Every picture's latency is observed once per stage, and the queues end empty.
        let stage = |rendition, stage| metrics.stage_latency.with_label_values(&["test", rendition, stage]);
        assert_eq!(stage("", "decode").get_sample_count(), n as u64);
        for rung in ["240p", "120p"] {
            let encode = stage(rung, "encode");
            assert_eq!(encode.get_sample_count(), n as u64);
            // Encoding comes after decoding, so it cannot have taken less time in total.
            assert!(encode.get_sample_sum() >= stage("", "decode").get_sample_sum());
            assert_eq!(metrics.encoder_queue_depth.with_label_values(&["test", rung]).get(), 0);
            for reason in DropReason::ALL {
                let dropped = metrics.frames_dropped.with_label_values(&["test", rung, reason.as_str()]).get();
                assert_eq!(dropped, 0, "{rung} {}", reason.as_str());
            }
        }
    }

    #[test]
    fn source_keyframe_alignment_cuts_on_source_keyframes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        // Source keyframes every 45 frames (1.5 s); target 1 s: every source keyframe cuts.
        let expected: Vec<Ticks> = samples.iter().filter(|s| s.keyframe).map(|s| s.pts).collect();
        assert_eq!(expected, vec![0, 135_000]);
        let seen = run(spec(params, Alignment::SourceKeyframes, 60.0), samples, Arc::new(Metrics::new()));
        for s in &seen {
            assert_eq!(cuts(&s.lock().expect("lock")), expected);
        }
    }

    #[test]
    fn the_frame_rate_cap_halves_a_60_fps_source_but_keeps_every_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 60, 2);
        let n = samples.len() as u64;
        let metrics = Arc::new(Metrics::new());
        let seen = run(spec(params, Alignment::Cadence, 30.0), samples, metrics.clone());
        let s = seen[1].lock().expect("lock");
        let kept = s.packets.len() as u64;
        assert!(kept.abs_diff(n / 2) <= 1, "{kept} of {n}");
        assert_eq!(cuts(&s), vec![0, 90_000]);
        let dropped = metrics.frames_dropped.with_label_values(&["test", "120p", "frame_rate_cap"]).get();
        assert_eq!(dropped + kept, n);
    }

    #[test]
    fn a_slow_rung_skips_to_the_next_segment_start_without_holding_back_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        let n = samples.len() as u64;
        let metrics = Arc::new(Metrics::new());
        // Rung 0 keeps up; rung 1's consumer takes 80 ms per picture, under 13 fps for a 30 fps source.
        let seen = run_live(
            TranscodeSpec { rung_queue: RUNG_QUEUE, ..spec(params, Alignment::Cadence, 60.0) },
            samples,
            metrics.clone(),
            &[Duration::ZERO, Duration::from_millis(80)],
        );
        let fast = seen[0].lock().expect("lock");
        let slow = seen[1].lock().expect("lock");
        // The rung that keeps up loses nothing but what a stall of the whole machine (over half
        // a second) would make it skip, counted as such.
        let fast_skipped = metrics.frames_dropped.with_label_values(&["test", "240p", "lagging"]).get();
        assert_eq!(fast.packets.len() as u64 + fast_skipped, n, "the rung that keeps up loses nothing");
        assert_eq!(cuts(&fast), vec![0, 90_000, 180_000]);
        assert_eq!(cuts(&slow), vec![0, 90_000, 180_000], "every segment start reaches the slow rung");
        let kept = slow.packets.len() as u64;
        let skipped = metrics.frames_dropped.with_label_values(&["test", "120p", "lagging"]).get();
        assert!(kept < n && skipped > 0, "kept {kept} of {n}");
        assert_eq!(kept + skipped, n);
        assert!(fast_skipped < skipped, "the slow rung skips, the fast one at most after a stall");
    }

    /// Packages `packets` (one encoder's run) and checks with ffprobe that every picture decodes.
    fn decodes(params: &VideoParams, packets: &[Sample]) -> usize {
        use crate::package::fmp4::TrackParams;
        use crate::package::segmenter::Segmenter;
        let mut s = Segmenter::new(TrackParams::Video(params.clone()));
        let mut file = s.init_segment().expect("init").to_vec();
        for p in packets {
            let packet = EncodedPacket { sample: p.clone(), ingest_time: SystemTime::now() };
            if let Some(seg) = s.push(packet) {
                file.extend(seg.fragment.chunks.iter().flat_map(|c| c.iter().copied()));
            }
        }
        if let Some(seg) = s.finish() {
            file.extend(seg.fragment.chunks.iter().flat_map(|c| c.iter().copied()));
        }
        let mut child = Command::new(std::env::var("FFPROBE").unwrap_or_else(|_| "ffprobe".into()))
            .args(["-v", "error", "-count_frames", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ffprobe");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &file));
        let out = child.wait_with_output().expect("ffprobe");
        let _ = writer.join();
        assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("frame count")
    }

    #[test]
    fn a_gpu_encoder_failing_mid_stream_moves_its_rung_to_libx264_at_the_next_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        // Rung 0's "GPU" encoder fails on its 41st picture (pts 120 000, in the second segment).
        s.encoders = vec![EncoderChoice::FailAfter { pictures: 40 }, EncoderChoice::X264];
        let seen = run(s, samples, metrics.clone());
        let failed = seen[0].lock().expect("lock");
        let healthy = seen[1].lock().expect("lock");
        assert_eq!(cuts(&healthy), vec![0, 90_000, 180_000]);
        assert_eq!(cuts(&failed), cuts(&healthy), "every segment still starts in the rung that failed, aligned");
        assert_eq!(failed.params.len(), 2, "libx264's own parameter sets after the move");
        let moved_at = failed.params_at[1];
        assert_eq!(failed.packets[moved_at].pts, 180_000, "the CPU encoder starts on the next cut");
        assert!(failed.packets[moved_at].keyframe);
        // What each encoder made decodes on its own parameter sets.
        assert_eq!(decodes(&failed.params[0], &failed.packets[..moved_at]), moved_at);
        assert_eq!(decodes(&failed.params[1], &failed.packets[moved_at..]), failed.packets.len() - moved_at);
        assert_eq!(moved_at, 40, "the pictures the failing encoder had made");
        let lost = metrics.frames_dropped.with_label_values(&["test", "240p", "encoder_fallback"]).get();
        assert_eq!(lost + failed.packets.len() as u64, healthy.packets.len() as u64, "every lost picture counted");
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encoder_fallback"]).get(), 1);
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encode"]).get(), 0, "the rung did not fail");
    }

    #[test]
    fn nvdec_and_nvenc_that_do_not_open_here_fall_back_to_the_cpu_and_say_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 2);
        let n = samples.len();
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        // This machine has no NVIDIA driver: h264_cuvid and h264_nvenc are in Debian's FFmpeg
        // but fail to open (they cannot load libcuda), as on a GPU host whose GPU went away.
        s.decoder = DecoderChoice::Nvdec { gpu: 0 };
        s.encoders = vec![EncoderChoice::Nvenc { gpu: 0 }, EncoderChoice::X264];
        let seen = run(s, samples, metrics.clone());
        for rung in &seen {
            let rung = rung.lock().expect("lock");
            assert_eq!(rung.packets.len(), n, "every picture encoded on the CPU");
            assert_eq!(cuts(&rung), vec![0, 90_000]);
        }
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "decoder_fallback"]).get(), 1);
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encoder_fallback"]).get(), 1);
    }

    #[test]
    fn the_graph_path_scales_every_rung_on_the_decode_thread_with_aligned_cuts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        let n = samples.len();
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        // The GPU path's decode thread (one graph, a picture per rung) with software filters.
        s.decoder = DecoderChoice::SoftwareGraph;
        let seen = run(s, samples, metrics.clone());
        for (rung, size) in seen.iter().zip([(320, 240), (160, 120)]) {
            let rung = rung.lock().expect("lock");
            assert!(rung.finished);
            assert_eq!((rung.params[0].width, rung.params[0].height), size);
            assert_eq!(rung.packets.len(), n, "no picture lost");
            assert_eq!(cuts(&rung), vec![0, 90_000, 180_000]);
            let keys: Vec<Ticks> = rung.packets.iter().filter(|p| p.keyframe).map(|p| p.pts).collect();
            assert_eq!(keys, cuts(&rung), "IDRs only on the cuts, as on the CPU path");
            assert_eq!(decodes(&rung.params[0], &rung.packets), n);
        }
        for stage in ["decoder_fallback", "scaler_fallback", "encoder_fallback"] {
            assert_eq!(metrics.pipeline_errors.with_label_values(&["test", stage]).get(), 0, "{stage}");
        }
    }

    #[test]
    fn a_plan_with_nvidia_decode_and_scale_falls_back_to_the_cpu_here_with_every_segment() {
        if ffi::cuda_driver_present() {
            return; // on a GPU host the GPU path runs instead (scripts/gpu-smoke.sh)
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        let n = samples.len();
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        // What channel.rs builds for decode and scale on NVIDIA: NVENC on one rung, libx264 on
        // the other (as on a GPU without NVENC).
        s.decoder = DecoderChoice::NvdecCuda { gpu: 0 };
        s.encoders = vec![EncoderChoice::Nvenc { gpu: 0 }, EncoderChoice::X264];
        let seen = run(s, samples, metrics.clone());
        for rung in &seen {
            let rung = rung.lock().expect("lock");
            assert_eq!(rung.packets.len(), n, "every picture encoded on the CPU");
            assert_eq!(cuts(&rung), vec![0, 90_000, 180_000], "every segment, aligned");
            assert_eq!(rung.params.len(), 1);
            assert_eq!(decodes(&rung.params[0], &rung.packets), n);
        }
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "decoder_fallback"]).get(), 1);
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encoder_fallback"]).get(), 1);
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encode"]).get(), 0);
    }
}
