//! A rung's thread: each picture scaled for the rung (on the CPU, or already on the GPU), encoded
//! with libx264 or NVENC (the encoder options are set up here), IDRs forced on the cuts the
//! decode thread marked, and the encoded access units handed to the rung's [`RenditionSink`]. A
//! hardware encoder that fails moves the rung to libx264 at the next segment start.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::SystemTime;

use ffmpeg_next as ffmpeg;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::error::EAGAIN;
use ffmpeg_next::{Dictionary, Packet, Rational, codec, frame};
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::ffi;
use crate::media::{EncodedPacket, RenditionSink, Sample, TIMESCALE, Ticks, avc};
use crate::metrics::{DropReason, FrameDrops, Metrics};
use crate::transcode::ladder::Rung;
use crate::transcode::scale::{EncoderInput, FrameError, RungFrames};
use crate::transcode::spec::{EncoderChoice, Picture, TranscodeError, TranscodeSpec};

/// Frame rate assumed when the source's SPS carries no timing information.
const DEFAULT_FRAME_RATE: f64 = 30.0;

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
    pub(super) drops: FrameDrops,
    pub(super) queue_depth: IntGauge,
    /// Arrival at ingest → encoded packet out of this rung's encoder.
    pub(super) encode_latency: Histogram,
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
            channel: spec.channel.clone(),
            rung,
            preset: spec.x264_preset.clone(),
            threads: spec.encoder_threads,
            max_frame_rate: spec.max_frame_rate,
            choice: EncoderChoice::X264,
            fallbacks: metrics.pipeline_errors.with_label_values(&[&spec.channel, "encoder_fallback"]),
        }
    }

    pub(super) fn run(
        self,
        rx: Receiver<Arc<Picture>>,
        mut sink: Box<dyn RenditionSink>,
    ) -> Result<(), TranscodeError> {
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

    pub(super) fn encode_all(
        &self,
        rx: Receiver<Arc<Picture>>,
        sink: &mut dyn RenditionSink,
    ) -> Result<(), TranscodeError> {
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

    pub(super) fn send(&self, enc: &mut Encoding, picture: &frame::Video) -> Result<(), TranscodeError> {
        enc.sent += 1;
        #[cfg(test)]
        if let EncoderChoice::FailAfter { pictures } = enc.choice
            && enc.sent > pictures
        {
            return Err(self.encoder_error("send a picture", ffmpeg::Error::External));
        }
        enc.encoder.send_frame(picture).map_err(|e| self.encoder_error("send a picture", e))
    }

    pub(super) fn receive(&self, enc: &mut Encoding, sink: &mut dyn RenditionSink) -> Result<(), TranscodeError> {
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
