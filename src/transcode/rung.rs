//! A rung's thread: each picture scaled for the rung (on the CPU, or already on the GPU), encoded
//! with libx264 or NVENC (the encoder options are set up here), IDRs forced on the cuts the
//! decode thread marked, and the encoded access units handed to the rung's [`RenditionSink`]. An
//! encoder that fails (or misses a forced IDR) is replaced by libx264 at the next segment start;
//! one that hangs is replaced by the decode thread (`decode.rs`), which takes the sink over.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::{Dictionary, Packet, Rational, codec, frame};
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::ffi;
use crate::media::{EncodedPacket, Sample, TIMESCALE, Ticks, avc};
use crate::metrics::{DropReason, FrameDrops, Metrics};
use crate::sync::lock;
use crate::transcode::faults::{self, Stage};
use crate::transcode::ladder::Rung;
use crate::transcode::scale::{EncoderInput, FrameError, RungFrames};
use crate::transcode::spec::{EncoderChoice, Picture, SharedSink, StageMoves, TranscodeError, TranscodeSpec, now_ms};

/// Frame rate assumed when the source's SPS carries no timing information.
const DEFAULT_FRAME_RATE: f64 = 30.0;

/// Encoders a rung may lose in a minute (errors, missed IDRs) and still be rebuilt; one more ends
/// its rendition, rather than flapping between broken encoders.
const MAX_REBUILDS_PER_MINUTE: usize = 3;

/// A rung's thread, with the sink it serves.
pub(super) struct RungThread {
    pub(super) name: String,
    pub(super) handle: JoinHandle<Result<(), TranscodeError>>,
    pub(super) sink: SharedSink,
    /// Given up on (it stopped taking pictures): never joined, its sink taken by a replacement.
    pub(super) abandoned: bool,
}

/// Every rung thread a transcode has started, replacements included: the decode thread adds to
/// it, and the transcoder joins what it holds at the end.
pub(super) type RungThreads = Arc<Mutex<Vec<RungThread>>>;

/// The decode thread's handles on a rung thread just started.
pub(super) struct Started {
    pub(super) tx: SyncSender<Arc<Picture>>,
    pub(super) heartbeat: Arc<AtomicU64>,
    pub(super) drops: FrameDrops,
    pub(super) queue_depth: IntGauge,
}

/// Starts the thread of `spec.rungs[index]` on `choice`, serving `sink`, and records it in
/// `threads`.
pub(super) fn start(
    spec: &TranscodeSpec,
    metrics: &Metrics,
    index: usize,
    choice: EncoderChoice,
    sink: SharedSink,
    threads: &RungThreads,
) -> Result<Started, TranscodeError> {
    let rung = spec.rungs[index].clone();
    let (tx, rx) = mpsc::sync_channel(spec.rung_queue.max(1));
    let mut worker = RungWorker::new(spec, rung.clone(), metrics);
    worker.queue_depth.set(0);
    worker.choice = choice;
    let started = Started {
        tx,
        heartbeat: worker.heartbeat.clone(),
        drops: worker.drops.clone(),
        queue_depth: worker.queue_depth.clone(),
    };
    let thread_sink = sink.clone();
    let handle = std::thread::Builder::new()
        .name(format!("rung-{}-{}", spec.channel, rung.name))
        .spawn(move || worker.run(rx, thread_sink))
        .map_err(|source| TranscodeError::Thread { channel: spec.channel.clone(), source })?;
    lock(threads).push(RungThread { name: rung.name, handle, sink, abandoned: false });
    Ok(started)
}

/// One rung's thread: scales the shared pictures and encodes them with libx264.
pub(super) struct RungWorker {
    pub(super) channel: String,
    pub(super) rung: Rung,
    pub(super) preset: String,
    pub(super) threads: usize,
    pub(super) max_frame_rate: f64,
    /// Where the rung starts; a hardware encoder that fails moves it to libx264.
    pub(super) choice: EncoderChoice,
    pub(super) encoded: IntCounter,
    pub(super) failures: IntCounter,
    pub(super) fallbacks: IntCounter,
    /// libx264 encoders rebuilt after an error.
    pub(super) restarts: IntCounter,
    pub(super) idr_missed: IntCounter,
    pub(super) drops: FrameDrops,
    pub(super) queue_depth: IntGauge,
    /// Arrival at ingest → encoded packet out of this rung's encoder.
    pub(super) encode_latency: Histogram,
    /// When this thread last took a picture ([`now_ms`]): the decode thread's stall watch.
    pub(super) heartbeat: Arc<AtomicU64>,
    pub(super) moves: StageMoves,
}

/// The open encoder of a rung, with what must be matched to its output packets.
pub(super) struct Encoding {
    pub(super) encoder: ffmpeg::encoder::Video,
    pub(super) choice: EncoderChoice,
    /// What the encoder was opened to take: system memory, or GPU frames of one frames context.
    pub(super) input: EncoderInput,
    /// Pictures sent so far.
    pub(super) sent: usize,
    /// Pts of the pictures forced to IDR that have not come out yet.
    pub(super) cuts: VecDeque<Ticks>,
    /// Ingest time by pts of the pictures inside the encoder.
    pub(super) ingest: BTreeMap<Ticks, SystemTime>,
}

impl RungWorker {
    pub(super) fn new(spec: &TranscodeSpec, rung: Rung, metrics: &Metrics) -> Self {
        Self {
            encoded: metrics.frames_encoded.with_label_values(&[&spec.channel, &rung.name]),
            failures: metrics.pipeline_errors.with_label_values(&[&spec.channel, "encode"]),
            drops: metrics.frame_drops(&spec.channel, &rung.name),
            queue_depth: metrics.encoder_queue_depth.with_label_values(&[&spec.channel, &rung.name]),
            encode_latency: metrics.stage_latency.with_label_values(&[&spec.channel, &rung.name, "encode"]),
            restarts: metrics.pipeline_errors.with_label_values(&[&spec.channel, "encoder_restart"]),
            idr_missed: metrics.forced_idr_missed.with_label_values(&[&spec.channel, &rung.name]),
            channel: spec.channel.clone(),
            rung,
            preset: spec.x264_preset.clone(),
            threads: spec.encoder_threads,
            max_frame_rate: spec.max_frame_rate,
            choice: EncoderChoice::X264,
            fallbacks: metrics.pipeline_errors.with_label_values(&[&spec.channel, "encoder_fallback"]),
            heartbeat: Arc::new(AtomicU64::new(now_ms())),
            moves: spec.moves.clone(),
        }
    }

    pub(super) fn run(self, rx: Receiver<Arc<Picture>>, sink: SharedSink) -> Result<(), TranscodeError> {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.encode_all(rx, &sink)))
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
        // Whatever happened, the rendition's last segment is published and its playlist ended
        // (unless a replacement thread has the sink now: then it is that thread's to finish).
        let sink = lock(&sink).take();
        if let Some(sink) = sink {
            sink.finish();
        }
        result
    }

    pub(super) fn encode_all(&self, rx: Receiver<Arc<Picture>>, shared: &SharedSink) -> Result<(), TranscodeError> {
        // Scales on the CPU, downloads GPU pictures, or passes them on to NVENC (scale.rs).
        let mut frames = RungFrames::new(self.rung.width, self.rung.height);
        let mut encoding: Option<Encoding> = None;
        let mut choice = self.choice;
        let mut waiting_for_cut = false;
        // When encoders of this rung were lost, for MAX_REBUILDS_PER_MINUTE.
        let mut rebuilt: VecDeque<Instant> = VecDeque::new();
        // `handled`: pictures this thread has taken, counted from 1, for injected faults.
        for (handled, picture) in (1u64..).zip(rx) {
            self.heartbeat.store(now_ms(), Ordering::Relaxed);
            self.queue_depth.dec();
            if lock(shared).is_none() {
                // The decode thread gave up on this thread (it hung) and another has the sink.
                tracing::info!(channel = %self.channel, rung = %self.rung.name, "a replaced rung thread came back; it stops");
                return Ok(());
            }
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
                        self.moves.report(Some(&self.rung.name), "encode", format!("NVENC did not open: {err}"));
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
                if let Some(sink) = lock(shared).as_mut() {
                    sink.params(params);
                }
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
                .and_then(|out| self.send(enc, &out, handled))
                .and_then(|()| self.receive(enc, shared));
            if copied == 0 && frames.copied_between_pools > 0 && sent.is_ok() {
                tracing::info!(channel = %self.channel, rung = %self.rung.name, pts = picture.pts, "GPU pictures now come from a new frames context (the decoder re-initialised); NVENC gets copies on the GPU");
            }
            match sent {
                Ok(()) => {}
                Err(err) if Self::replaceable(&err) => {
                    // An encoder that fails mid-stream (a GPU's Xid error, a lost device, a session
                    // limit; a codec error), that missed a forced IDR, or a GPU picture that cannot
                    // be used (the GPU is gone, or decoding moved to the CPU under an NVENC fed GPU
                    // frames): libx264 takes over from the next segment, and the segments stay
                    // aligned. Where its parameter sets differ (after NVENC) the rendition gets a
                    // new init segment and a discontinuity there.
                    let now = Instant::now();
                    while rebuilt.front().is_some_and(|t| now.duration_since(*t).as_secs() >= 60) {
                        rebuilt.pop_front();
                    }
                    if rebuilt.len() >= MAX_REBUILDS_PER_MINUTE {
                        tracing::error!(channel = %self.channel, rung = %self.rung.name, error = %err, rebuilt = rebuilt.len(), "this rung's encoders keep failing; its rendition ends");
                        return Err(err);
                    }
                    rebuilt.push_back(now);
                    if enc.choice.is_hardware() {
                        tracing::warn!(channel = %self.channel, rung = %self.rung.name, error = %err, "GPU encoding failed; this rung moves to libx264 at the next segment");
                        self.fallbacks.inc();
                        self.moves.report(Some(&self.rung.name), "encode", format!("NVENC failed: {err}"));
                    } else if !matches!(err, TranscodeError::GpuPicture { .. }) {
                        // A libx264 rung that lost its GPU pictures restarts; it did not fail.
                        tracing::warn!(channel = %self.channel, rung = %self.rung.name, error = %err, "encoder failed; a new one takes this rung from the next segment");
                        self.restarts.inc();
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
                .and_then(|()| self.receive(enc, shared));
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

    /// Errors after which the rung goes on with a new libx264 encoder from the next cut.
    fn replaceable(err: &TranscodeError) -> bool {
        matches!(
            err,
            TranscodeError::Encoder { .. } | TranscodeError::GpuPicture { .. } | TranscodeError::MissedIdr { .. }
        )
    }

    /// Sends the `handled`th picture of this thread to the encoder.
    pub(super) fn send(&self, enc: &mut Encoding, picture: &frame::Video, handled: u64) -> Result<(), TranscodeError> {
        enc.sent += 1;
        match faults::check(Stage::Encode, &self.channel, &self.rung.name, handled) {
            Some(faults::Kind::Fail) => return Err(self.encoder_error("send a picture", ffmpeg::Error::External)),
            Some(faults::Kind::Hang) => faults::hang(),
            None => {}
        }
        enc.encoder.send_frame(picture).map_err(|e| self.encoder_error("send a picture", e))
    }

    /// Hands what the encoder has made to the sink, which is locked per packet only: a thread
    /// stuck in the encoder holds no lock its replacement needs.
    pub(super) fn receive(&self, enc: &mut Encoding, shared: &SharedSink) -> Result<(), TranscodeError> {
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
                // The segment cannot start here in this rendition, and an encoder that ignores
                // forced IDRs will miss the next ones too: counted, and rebuilt from the next cut.
                tracing::warn!(channel = %self.channel, rung = %self.rung.name, pts, "encoder did not make the forced IDR; it is replaced at the next segment start");
                self.idr_missed.inc();
                return Err(TranscodeError::MissedIdr {
                    channel: self.channel.clone(),
                    rung: self.rung.name.clone(),
                    pts,
                });
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
            let mut guard = lock(shared);
            let Some(sink) = guard.as_mut() else { return Ok(()) };
            sink.packet(EncodedPacket {
                sample: Sample { pts, dts, keyframe, segment_start: segment_start && keyframe, data },
                ingest_time,
            });
        }
    }

    pub(super) fn open_encoder(
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

    pub(super) fn encoder_error(&self, what: &'static str, source: ffmpeg::Error) -> TranscodeError {
        TranscodeError::Encoder { channel: self.channel.clone(), rung: self.rung.name.clone(), what, source }
    }

    pub(super) fn frame_error(&self, pts: Ticks, e: FrameError) -> TranscodeError {
        let (channel, rung) = (self.channel.clone(), self.rung.name.clone());
        match e {
            FrameError::Scale(source) => TranscodeError::Scale { channel, rung, pts, source },
            FrameError::Gpu(source) => TranscodeError::GpuPicture { channel, rung, pts, source },
        }
    }
}
