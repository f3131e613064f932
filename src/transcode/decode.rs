//! The decode thread of a transcode: the source decoded once (on the CPU, NVDEC, or NVDEC into
//! GPU memory with the channel's scaling graph), segment cuts decided for every rung at once, the
//! frame-rate cap, and each picture offered to every rung's queue (a rung that lags skips to the
//! next cut).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::{Dictionary, Packet, Rational, codec, frame};
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::ffi::{self, SharedFrame};
use crate::media::{Sample, SegmentClock, TIMESCALE, Ticks, VideoParams};
use crate::metrics::{DropReason, FrameDrops, Metrics};
use crate::sync::lock;
use crate::transcode::faults::{self, Stage};
use crate::transcode::ladder::Rung;
use crate::transcode::rung::{self, RungThreads};
use crate::transcode::scale::{self, Routed, SourceDecoder};
use crate::transcode::spec::{
    DecodeInput, DecoderChoice, EncoderChoice, Picture, SharedSink, StageMoves, TranscodeError, TranscodeSpec, Watched,
    now_ms, send_watched,
};
use crate::transcode::thumbnail::Thumbnailer;

/// Source packets whose arrival time and keyframe flag are remembered until their picture is
/// decoded. H.264 reorders by at most 16 pictures; this leaves room for decode errors.
const PENDING_LIMIT: usize = 128;

/// Opens the source decoder; for the GPU path (`NvdecCuda`) with the channel's scaling graph for
/// `rungs`, counting its fallbacks in `fallbacks`.
pub(super) fn open_decoder(
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
pub(super) struct DecodeWorker {
    pub(super) channel: String,
    /// Where decoding runs now; NVDEC that fails mid-stream is replaced by the CPU decoder.
    pub(super) decoder_choice: DecoderChoice,
    pub(super) source: VideoParams,
    /// After a move to the CPU decoder, packets up to the next keyframe cannot be decoded.
    pub(super) wait_for_keyframe: bool,
    pub(super) decoder_fallbacks: IntCounter,
    pub(super) gpu_fallbacks: scale::Fallbacks,
    pub(super) decoder: SourceDecoder,
    pub(super) clock: SegmentClock,
    /// Pictures closer together than this are dropped (the `max_frame_rate` cap).
    pub(super) min_frame_gap: Ticks,
    /// By pts: arrival time and keyframe flag of packets sent to the decoder.
    pub(super) pending: BTreeMap<Ticks, (SystemTime, bool)>,
    pub(super) last_kept: Option<Ticks>,
    pub(super) feeds: Vec<RungFeed>,
    pub(super) decoded: IntCounter,
    /// Arrival at ingest → picture out of the decoder.
    pub(super) decode_latency: Histogram,
    pub(super) thumbnails: Option<Thumbnailer>,
    /// When this thread last took a packet ([`now_ms`]): the channel thread's stall watch.
    pub(super) heartbeat: Arc<AtomicU64>,
    /// Packets sent to the decoder, for injected faults.
    pub(super) sent: u64,
    pub(super) moves: StageMoves,
}

impl DecodeWorker {
    pub(super) fn run(mut self, rx: Receiver<DecodeInput>) {
        for DecodeInput(sample, at) in rx {
            self.heartbeat.store(now_ms(), Ordering::Relaxed);
            self.decode(sample, at);
            if self.feeds.iter().all(|f| f.tx.is_none()) {
                tracing::error!(channel = %self.channel, "every rung has stopped; ending the transcode");
                break;
            }
        }
        self.drain();
    }

    pub(super) fn decode(&mut self, sample: Sample, at: SystemTime) {
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
        self.sent += 1;
        let mut sent = match faults::check(Stage::Decode, &self.channel, "", self.sent) {
            Some(faults::Kind::Fail) => Err(ffmpeg::Error::External),
            Some(faults::Kind::Hang) => {
                faults::hang();
                self.decoder.send_packet(&packet)
            }
            None => self.decoder.send_packet(&packet),
        };
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
    pub(super) fn move_to_cpu(&mut self) {
        match open_decoder(&self.channel, DecoderChoice::Cpu, &self.source, (&[], &self.gpu_fallbacks)) {
            Ok(d) => {
                tracing::warn!(channel = %self.channel, "NVDEC failed; decoding on the CPU from the next keyframe");
                self.moves.report(None, "decode", "NVDEC failed mid-stream");
                self.decoder = d;
                self.decoder_choice = DecoderChoice::Cpu;
                self.wait_for_keyframe = true;
                self.decoder_fallbacks.inc();
            }
            Err(e) => tracing::error!(channel = %self.channel, error = %e, "cannot open the CPU decoder"),
        }
    }

    pub(super) fn drain(&mut self) {
        if self.decoder.send_eof().is_ok() {
            self.receive();
        }
    }

    pub(super) fn receive(&mut self) {
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
    pub(super) fn count_drop(&self, reason: DropReason) {
        for f in &self.feeds {
            f.drops.inc(reason);
        }
    }

    pub(super) fn picture(&mut self, frame: frame::Video) {
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
                    f.offer(&self.channel, &picture, &self.heartbeat);
                }
            }
            Ok(Routed::PerRung(frames)) => {
                let pictures: Vec<_> = frames.into_iter().map(picture).collect();
                // The top rung's picture, in GPU memory: the thumbnail thread downloads it.
                if let (Some(t), Some(top)) = (self.thumbnails.as_mut(), pictures.first()) {
                    t.offer(pts, &top.frame);
                }
                for (f, picture) in self.feeds.iter_mut().zip(&pictures) {
                    f.offer(&self.channel, picture, &self.heartbeat);
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
pub(super) struct RungFeed {
    pub(super) name: String,
    /// `None` once the rung thread has gone.
    pub(super) tx: Option<SyncSender<Arc<Picture>>>,
    /// The rung's queue overflowed: it gets nothing until the next segment start.
    pub(super) lagging: bool,
    pub(super) drops: FrameDrops,
    /// Raised before a picture is queued and lowered when the rung takes it (or it is not queued),
    /// so it never reads below 0.
    pub(super) queue_depth: IntGauge,
    /// When the rung thread last took a picture.
    pub(super) heartbeat: Arc<AtomicU64>,
    /// What a replacement for a stalled rung thread is made from.
    pub(super) respawn: Respawn,
}

/// What the decode thread needs to start a rung's thread again.
pub(super) struct Respawn {
    pub(super) spec: Arc<TranscodeSpec>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) index: usize,
    pub(super) sink: SharedSink,
    pub(super) threads: RungThreads,
}

impl RungFeed {
    /// Queues `picture` for the rung; `alive` is the decode thread's heartbeat, kept fresh while
    /// a cut waits for a full queue (the decode thread is waiting on a rung, not stuck).
    pub(super) fn offer(&mut self, channel: &str, picture: &Arc<Picture>, alive: &AtomicU64) {
        let Some(tx) = &self.tx else { return };
        if !self.lagging || picture.segment_start {
            self.queue_depth.inc();
        }
        let sent = if picture.segment_start {
            // A segment start is never skipped, so a rung that lagged resumes exactly on a cut
            // with an IDR. Waiting here holds the other rungs back by at most the time this rung
            // needs for one picture, since its queue is only full of pictures it will encode;
            // a rung that takes nothing for STALL_LIMIT is stuck, and is replaced.
            let alive_now = || alive.store(now_ms(), Ordering::Relaxed);
            match send_watched(tx, picture.clone(), &self.heartbeat, alive_now) {
                Watched::Sent => Ok(()),
                Watched::Closed => Err(()),
                Watched::Stalled { idle_ms } => {
                    self.replace(channel, picture, idle_ms);
                    return;
                }
            }
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

    /// The rung's thread has taken nothing for `idle_ms` with its queue full: an encoder call
    /// that does not return. It is given up on (it cannot be stopped, only left), and a new
    /// thread with libx264 takes the rung's sink from this cut, so the rendition goes on aligned
    /// (after a discontinuity where the new encoder's parameter sets differ) while the other
    /// rungs never waited more than STALL_LIMIT.
    fn replace(&mut self, channel: &str, cut: &Arc<Picture>, idle_ms: u64) {
        let r = &self.respawn;
        let sink = {
            let mut threads = lock(&r.threads);
            if let Some(t) = threads.iter_mut().rev().find(|t| t.name == self.name && !t.abandoned) {
                t.abandoned = true;
            }
            drop(threads);
            // The stuck thread holds the sink's lock only while it hands over a packet; one stuck
            // there (in the store) cannot be replaced.
            let taken = (0..100).find_map(|_| match r.sink.try_lock() {
                Ok(mut s) => Some(s.take()),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                }
            });
            taken.flatten()
        };
        r.metrics.pipeline_errors.with_label_values(&[channel, "encoder_stalled"]).inc();
        // What waited in the stuck thread's queue never comes out.
        let queued = u64::try_from(self.queue_depth.get()).unwrap_or(0).saturating_sub(1);
        self.drops.inc_by(DropReason::EncoderFallback, queued);
        self.queue_depth.set(0);
        self.tx = None;
        let Some(sink) = sink else {
            tracing::error!(channel, rung = %self.name, idle_ms, "rung stopped taking pictures and its sink cannot be taken back; the rung ends");
            return;
        };
        tracing::warn!(channel, rung = %self.name, idle_ms, pts = cut.pts, "rung stopped taking pictures (a hung encoder call); a libx264 thread takes it from this segment");
        let shared: SharedSink = Arc::new(std::sync::Mutex::new(Some(sink)));
        match rung::start(&r.spec, &r.metrics, r.index, EncoderChoice::X264, shared.clone(), &r.threads) {
            Ok(started) => {
                let was = r.spec.encoders.get(r.index).copied().unwrap_or(EncoderChoice::X264);
                if was.is_hardware() {
                    r.metrics.pipeline_errors.with_label_values(&[channel, "encoder_fallback"]).inc();
                }
                r.spec.moves.report(Some(&self.name), "encode", format!("stopped taking pictures for {idle_ms} ms"));
                self.respawn.sink = shared;
                self.heartbeat = started.heartbeat;
                self.queue_depth = started.queue_depth;
                self.queue_depth.inc();
                // An empty queue: the cut goes in at once.
                self.tx = started.tx.try_send(cut.clone()).is_ok().then_some(started.tx);
                self.lagging = false;
            }
            Err(e) => {
                tracing::error!(channel, rung = %self.name, error = %e, "cannot start a replacement rung thread; the rung ends");
                if let Some(sink) = lock(&shared).take() {
                    sink.finish();
                }
            }
        }
    }
}
