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
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;
use std::time::SystemTime;

use prometheus::IntGauge;

use crate::ffi;
use crate::media::{RenditionSink, Sample, SegmentClock, TIMESCALE, Ticks};
use crate::metrics::Metrics;
use crate::transcode::decode::{DecodeWorker, RungFeed, open_decoder};
use crate::transcode::rung::RungWorker;
use crate::transcode::scale;
use crate::transcode::spec::{DECODE_QUEUE, DecodeInput, DecoderChoice, EncoderChoice, TranscodeError, TranscodeSpec};
use crate::transcode::thumbnail::Thumbnailer;

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
