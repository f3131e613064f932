//! The transcoding threads of one publish: a decode thread that decodes the source once and
//! decides where segments cut ([`decode`](super::decode)), and one scale+encode thread per rung
//! ([`rung`](super::rung)). This file starts, feeds and joins them.
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

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntGauge;

use crate::ffi;
use crate::media::{RenditionSink, Sample, SegmentClock, TIMESCALE, Ticks};
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::transcode::decode::{DecodeWorker, Respawn, RungFeed, open_decoder};
use crate::transcode::rung::{self, RungThreads};
use crate::transcode::scale;
use crate::transcode::spec::{
    DECODE_QUEUE, DecodeInput, DecoderChoice, EncoderChoice, FINISH_LIMIT, SharedSink, TranscodeError, TranscodeSpec,
    Watched, now_ms, send_watched,
};
use crate::transcode::thumbnail::Thumbnailer;

/// A running transcode.
pub struct Transcoder {
    channel: String,
    spec: Arc<TranscodeSpec>,
    metrics: Arc<Metrics>,
    input: Option<SyncSender<DecodeInput>>,
    decoder: Option<JoinHandle<Result<(), TranscodeError>>>,
    /// When the decode thread last took a packet.
    decode_heartbeat: Arc<AtomicU64>,
    rungs: RungThreads,
    /// `ladderd_encoder_queue_depth` of each rung, zeroed once the threads are joined (a rung that
    /// failed leaves pictures in its queue uncounted).
    queue_depths: Vec<IntGauge>,
    /// Packets before the next keyframe are dropped: a decoder rebuilt after a stall starts on one.
    wait_for_keyframe: bool,
}

impl Transcoder {
    /// Opens the decoder and starts the threads; `sinks[i]` receives `spec.rungs[i]`.
    pub fn start(
        spec: TranscodeSpec,
        sinks: Vec<Box<dyn RenditionSink>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TranscodeError> {
        let sinks = sinks.into_iter().map(|s| Arc::new(Mutex::new(Some(s)))).collect();
        Self::start_shared(spec, sinks, metrics)
    }

    fn start_shared(
        spec: TranscodeSpec,
        sinks: Vec<SharedSink>,
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
                spec.moves.report(None, "decode", format!("NVDEC did not open: {e}"));
                decoder_choice = DecoderChoice::Cpu;
                open_decoder(&channel, decoder_choice, &spec.source, (&spec.rungs, &fallbacks))?
            }
            Err(e) => return Err(e),
        };
        let spec = Arc::new(spec);
        let threads: RungThreads = Arc::default();
        let mut feeds = Vec::new();
        let mut queue_depths = Vec::new();
        for (index, sink) in sinks.iter().enumerate().take(spec.rungs.len()) {
            let choice = spec.encoders.get(index).copied().unwrap_or(EncoderChoice::X264);
            let started = rung::start(&spec, &metrics, index, choice, sink.clone(), &threads)?;
            queue_depths.push(started.queue_depth.clone());
            feeds.push(RungFeed {
                name: spec.rungs[index].name.clone(),
                tx: Some(started.tx),
                lagging: false,
                drops: started.drops,
                queue_depth: started.queue_depth,
                heartbeat: started.heartbeat,
                respawn: Respawn {
                    spec: spec.clone(),
                    metrics: metrics.clone(),
                    index,
                    sink: sink.clone(),
                    threads: threads.clone(),
                },
            });
        }
        let thumbnails = spec
            .thumbnails
            .clone()
            .map(|t| Thumbnailer::start(&channel, t))
            .transpose()
            .map_err(|source| TranscodeError::Thread { channel: channel.clone(), source })?;
        let (input, rx) = mpsc::sync_channel(DECODE_QUEUE);
        let decode_heartbeat = Arc::new(AtomicU64::new(now_ms()));
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
            heartbeat: decode_heartbeat.clone(),
            sent: 0,
            moves: spec.moves.clone(),
        };
        let decoder = std::thread::Builder::new()
            .name(format!("decode-{channel}"))
            .spawn(move || {
                worker.run(rx);
                Ok(())
            })
            .map_err(|source| TranscodeError::Thread { channel: channel.clone(), source })?;
        Ok(Self {
            channel,
            spec,
            metrics,
            input: Some(input),
            decoder: Some(decoder),
            decode_heartbeat,
            rungs: threads,
            queue_depths,
            wait_for_keyframe: false,
        })
    }

    /// One source access unit, in decode order. Waits while the decoder's queue is full, and
    /// returns [`TranscodeError::DecoderStalled`] once the decoder has taken nothing for
    /// [`STALL_LIMIT`]: a hung decoder call, which [`Transcoder::rebuild_on_cpu`] gets around.
    /// (New stream parameters start a new `Transcoder`: the ladder plan may change with them.)
    pub fn push(&mut self, sample: Sample, at: SystemTime) -> Result<(), TranscodeError> {
        if self.wait_for_keyframe {
            if !sample.keyframe {
                return Ok(());
            }
            self.wait_for_keyframe = false;
        }
        let stopped = || TranscodeError::Stopped { channel: self.channel.clone() };
        let input = self.input.as_ref().ok_or_else(stopped)?;
        match send_watched(input, DecodeInput(sample, at), &self.decode_heartbeat, || {}) {
            Watched::Sent => Ok(()),
            Watched::Closed => Err(stopped()),
            Watched::Stalled { idle_ms } => {
                Err(TranscodeError::DecoderStalled { channel: self.channel.clone(), secs: idle_ms as f64 / 1000.0 })
            }
        }
    }

    /// The decode thread is stuck in a call that does not return (an NVDEC or CUDA call): leaves
    /// it and every rung thread behind, and starts the same ladder again with everything on the
    /// CPU, serving the same sinks from the next source keyframe. The renditions go on (after a
    /// discontinuity where the encoders' parameter sets change); what the old threads held is
    /// lost.
    pub fn rebuild_on_cpu(mut self) -> Result<Self, TranscodeError> {
        let channel = self.channel.clone();
        self.metrics.pipeline_errors.with_label_values(&[&channel, "decoder_stalled"]).inc();
        let mut spec = (*self.spec).clone();
        if spec.decoder != DecoderChoice::Cpu {
            spec.moves.report(None, "decode", "the decoder stopped taking packets");
        }
        if matches!(spec.decoder, DecoderChoice::NvdecCuda { .. }) {
            // Only this path scales on the decode thread's GPU graph.
            spec.moves.report(None, "scale", "the decoder stopped taking packets");
        }
        for (rung, choice) in spec.rungs.iter().zip(&spec.encoders) {
            if choice.is_hardware() {
                spec.moves.report(Some(&rung.name), "encode", "the decoder stopped taking packets");
            }
        }
        spec.decoder = DecoderChoice::Cpu;
        spec.encoders = vec![EncoderChoice::X264; spec.rungs.len()];
        // The stuck threads are never joined; their sinks move to the new ones, so that if they
        // ever come back they find nothing to write to.
        drop(self.input.take());
        self.decoder.take();
        let mut threads = lock(&self.rungs);
        for t in threads.iter_mut() {
            t.abandoned = true;
        }
        // Each rung's sink is with its latest thread (a replacement's, if it had one).
        let sinks: Vec<SharedSink> = spec
            .rungs
            .iter()
            .map(|r| {
                let sink = threads.iter().rev().find(|t| t.name == r.name).and_then(|t| lock(&t.sink).take());
                Arc::new(Mutex::new(sink))
            })
            .collect();
        drop(threads);
        tracing::warn!(channel = %channel, "the decoder stopped taking packets (a hung decoder call); the transcode starts again on the CPU at the next keyframe");
        let mut rebuilt = Self::start_shared(spec, sinks, self.metrics.clone())?;
        rebuilt.wait_for_keyframe = true;
        Ok(rebuilt)
    }

    /// Flushes the decoder and every encoder (their last packets reach the sinks, which are then
    /// finished) and joins the threads. Returns the first error any thread met. A thread that
    /// does not finish within [`FINISH_LIMIT`] (stuck in a codec call) is left behind, and the
    /// sinks it would have finished are finished here, so that every rendition ends.
    pub fn finish(mut self) -> Result<(), TranscodeError> {
        drop(self.input.take());
        let mut first: Option<TranscodeError> = None;
        let mut keep = |r: Result<(), TranscodeError>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "transcoding thread failed");
                first.get_or_insert(e);
            }
        };
        let deadline = Instant::now() + FINISH_LIMIT;
        if let Some(h) = self.decoder.take() {
            match join_by(&self.channel, "decode", h, deadline) {
                Some(r) => keep(r),
                None => {
                    // Its feeds are never dropped, so the rung threads wait for ever too.
                    for t in lock(&self.rungs).iter_mut() {
                        t.abandoned = true;
                    }
                }
            }
        }
        let threads = std::mem::take(&mut *lock(&self.rungs));
        for t in threads {
            if t.abandoned {
                finish_sink(&self.channel, &t.name, &t.sink);
                continue;
            }
            match join_by(&self.channel, &t.name, t.handle, deadline) {
                Some(r) => keep(r),
                None => finish_sink(&self.channel, &t.name, &t.sink),
            }
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

/// Joins `h` if it finishes by `deadline`; `None` (and the thread left behind) if it does not.
fn join_by(
    channel: &str,
    thread: &str,
    h: JoinHandle<Result<(), TranscodeError>>,
    deadline: Instant,
) -> Option<Result<(), TranscodeError>> {
    while !h.is_finished() {
        if Instant::now() >= deadline {
            tracing::error!(channel, thread, "transcoding thread did not finish (stuck in a codec call); left behind");
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(h.join().unwrap_or_else(|_| Err(TranscodeError::Panicked { channel: channel.into(), thread: thread.into() })))
}

/// Ends a rendition whose thread was left behind: what was published stays, its playlist ends.
fn finish_sink(channel: &str, rung: &str, sink: &SharedSink) {
    // The thread may be stuck holding the lock (inside the sink); then it stays with it.
    match sink.try_lock() {
        Ok(mut s) => {
            if let Some(s) = s.take() {
                tracing::warn!(channel, rung, "ending a rendition whose thread was left behind");
                s.finish();
            }
        }
        Err(_) => tracing::error!(channel, rung, "a rendition's thread was left behind holding it; it is not ended"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;
    use ffmpeg_next as ffmpeg;
    use ffmpeg_next::codec;

    use super::*;
    use crate::media::{Alignment, EncodedPacket, TIMESCALE, Ticks, VideoParams, avc};
    use crate::metrics::DropReason;
    use crate::transcode::faults;
    use crate::transcode::ladder::Rung;
    use crate::transcode::spec::RUNG_QUEUE;

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
            encoders: Vec::new(),
            decoder: DecoderChoice::Cpu,
            thumbnails: None,
            // Room for the whole test source: these tests count every picture, and a loaded
            // machine must not make a rung skip any (the lagging test sets the real depth).
            rung_queue: 4096,
            moves: Default::default(),
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

    /// Makes `spec` report its stage moves into the returned list.
    fn record_moves(spec: &mut TranscodeSpec) -> Arc<Mutex<Vec<crate::transcode::StageMove>>> {
        let moves = Arc::new(Mutex::new(Vec::new()));
        let seen = moves.clone();
        spec.moves = crate::transcode::StageMoves::new(move |m| seen.lock().expect("lock").push(m));
        moves
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
    fn an_encoder_failing_mid_stream_is_rebuilt_at_the_next_segment_and_the_other_rung_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 3);
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        let moves = record_moves(&mut s);
        // Rung 0's encoder fails on its 41st picture (pts 120 000, in the second segment), as a
        // GPU encoder whose device was lost would.
        faults::set(vec!["encode:fail@test/240p:after=40".parse().expect("fault")]);
        let seen = run(s, samples, metrics.clone());
        faults::set(Vec::new());
        let failed = seen[0].lock().expect("lock");
        let healthy = seen[1].lock().expect("lock");
        assert_eq!(cuts(&healthy), vec![0, 90_000, 180_000]);
        assert_eq!(cuts(&failed), cuts(&healthy), "every segment still starts in the rung that failed, aligned");
        assert_eq!(failed.params.len(), 2, "the new encoder's parameter sets after the rebuild");
        let moved_at = failed.params_at[1];
        assert_eq!(failed.packets[moved_at].pts, 180_000, "the new encoder starts on the next cut");
        assert!(failed.packets[moved_at].keyframe);
        // What each encoder made decodes on its own parameter sets.
        assert_eq!(decodes(&failed.params[0], &failed.packets[..moved_at]), moved_at);
        assert_eq!(decodes(&failed.params[1], &failed.packets[moved_at..]), failed.packets.len() - moved_at);
        assert_eq!(moved_at, 40, "the pictures the failing encoder had made");
        let lost = metrics.frames_dropped.with_label_values(&["test", "240p", "encoder_fallback"]).get();
        assert_eq!(lost + failed.packets.len() as u64, healthy.packets.len() as u64, "every lost picture counted");
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encoder_restart"]).get(), 1);
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encode"]).get(), 0, "the rung did not fail");
        assert!(moves.lock().expect("lock").is_empty(), "libx264 to libx264 is no move to the CPU");
    }

    /// An encoder call that never returns: the decode thread gives up on that rung's thread
    /// after STALL_LIMIT at the next cut and starts a libx264 thread on the same sink from that
    /// cut; the other rung waits no longer than that, the stuck thread is left behind, and the
    /// move is reported.
    #[test]
    fn a_hung_encoder_is_replaced_at_the_next_cut_and_the_other_rung_goes_on() {
        hung_encoder_is_replaced(DecoderChoice::Cpu);
    }

    /// The same on the GPU path's plumbing: each rung's own pictures from the channel's scaling
    /// graph, as NVDEC with `scale_cuda` gives them.
    #[test]
    fn a_hung_encoder_fed_by_the_scaling_graph_is_replaced_the_same_way() {
        hung_encoder_is_replaced(DecoderChoice::SoftwareGraph);
    }

    fn hung_encoder_is_replaced(decoder: DecoderChoice) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (params, samples) = source(dir.path(), 30, 5);
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        s.rung_queue = RUNG_QUEUE;
        s.decoder = decoder;
        let moves = record_moves(&mut s);
        faults::set(vec!["encode:hang@test/240p:after=40".parse().expect("fault")]);
        let seen = run_live(s, samples, metrics.clone(), &[]);
        faults::set(Vec::new());
        let hung = seen[0].lock().expect("lock");
        let healthy = seen[1].lock().expect("lock");
        let healthy_cuts = cuts(&healthy);
        assert_eq!(healthy_cuts, vec![0, 90_000, 180_000, 270_000, 360_000], "the other rung never missed a cut");
        assert!(hung.finished, "the replacement finished the rendition");
        // The stuck encoder took picture 41 (pts 120 000, at 1.33 s) and never gave it back; the
        // 16 behind it filled the queue by about 1.9 s, and the cut at 2 s waited until the rung
        // had been silent for STALL_LIMIT, then went to the replacement.
        assert_eq!(hung.params.len(), 2, "a new encoder's parameter sets");
        let back = hung.packets[hung.params_at[1]].pts;
        assert_eq!(back, 180_000, "the replacement starts on the cut that found the rung stuck");
        assert!(hung.packets.iter().all(|p| p.pts < 120_000 || p.pts >= back), "nothing from the stuck encoder");
        assert_eq!(cuts(&hung), healthy_cuts, "aligned again from the replacement on");
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "encoder_stalled"]).get(), 1);
        let moves = moves.lock().expect("lock");
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!((moves[0].rung.as_deref(), moves[0].stage), (Some("240p"), "encode"));
    }

    /// A decoder call that never returns: the channel's push finds the decode queue full and the
    /// decoder silent for STALL_LIMIT, and the transcode is rebuilt on the CPU, serving the same
    /// sinks from the next source keyframe, with the stuck threads left behind.
    #[test]
    fn a_hung_decoder_is_left_behind_and_the_transcode_goes_on_from_the_next_keyframe() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Keyframes every 1.5 s (the source's GOP is 45 pictures).
        let (params, samples) = source(dir.path(), 30, 6);
        let metrics = Arc::new(Metrics::new());
        let mut s = spec(params, Alignment::Cadence, 60.0);
        s.rung_queue = RUNG_QUEUE;
        let seen: Vec<Arc<Mutex<Seen>>> = s.rungs.iter().map(|_| Arc::default()).collect();
        let sinks =
            seen.iter().map(|x| Box::new(FakeSink(x.clone(), Duration::ZERO)) as Box<dyn RenditionSink>).collect();
        faults::set(vec!["decode:hang@test:after=40".parse().expect("fault")]);
        let mut t = Transcoder::start(s, sinks, metrics.clone()).expect("start");
        let (start, first) = (std::time::Instant::now(), samples.first().map_or(0, |s| s.dts));
        let mut stalled_at = None;
        for sample in samples {
            let due = Duration::from_secs_f64((sample.dts - first).max(0) as f64 / f64::from(TIMESCALE));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let dts = sample.dts;
            match t.push(sample, SystemTime::now()) {
                Err(TranscodeError::DecoderStalled { .. }) => {
                    assert!(stalled_at.is_none(), "one stall");
                    stalled_at = Some(dts);
                    t = t.rebuild_on_cpu().expect("rebuilt");
                }
                other => other.expect("push"),
            }
        }
        t.finish().expect("finish");
        faults::set(Vec::new());
        // Packet 41 (1.33 s) hung; 64 more filled the queue by about 3.5 s.
        let stalled_at = stalled_at.expect("the stall was seen");
        assert!((270_000..360_000).contains(&stalled_at), "seen when the queue filled: {stalled_at}");
        let starts: Vec<Ticks> = seen
            .iter()
            .map(|x| {
                let x = x.lock().expect("lock");
                assert!(x.finished, "the rebuilt transcode finished every rendition");
                assert_eq!(x.params.len(), 2, "new encoders after the rebuild");
                let back = &x.packets[x.params_at[1]];
                assert!(back.keyframe && back.segment_start, "it starts on a cut");
                back.pts
            })
            .collect();
        assert_eq!(starts[0], starts[1], "both rungs start again at the same instant");
        assert_eq!(starts[0], 405_000, "the first source keyframe after the stall");
        assert_eq!(metrics.pipeline_errors.with_label_values(&["test", "decoder_stalled"]).get(), 1);
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
