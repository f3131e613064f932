//! Prometheus metrics: one registry per daemon (so tests can run several in one process) and
//! typed handles for every stage. Label values are bounded: channel and rung names come from the
//! configuration, reasons, stages, routes and status codes from fixed lists. docs/metrics.md lists
//! every metric; a test below keeps it complete.

use std::collections::HashMap;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency from a frame's arrival at ingest to a pipeline stage: a few milliseconds for decoding,
/// tens for encoding, a part duration and more for packaging, seconds when something is wrong.
const STAGE_BUCKETS: [f64; 18] =
    [0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];
/// Time to answer an HTTP request: sub-millisecond from memory, up to the LL-HLS hold bound (three
/// target durations) for blocking reloads and preload-hinted parts.
const HTTP_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0];

pub struct Metrics {
    registry: Registry,
    /// Every metric family registered, for the documentation and dashboard checks.
    families: Vec<Family>,
    /// Bytes of RTMP payload received, per channel.
    pub ingest_bytes: IntCounterVec,
    /// Source video frames per second of media time, per channel, measured over about a second.
    pub ingest_frame_rate: GaugeVec,
    /// Seconds between the two latest source keyframes, per channel.
    pub ingest_keyframe_interval: GaugeVec,
    /// Publishes accepted, per channel.
    pub publishes: IntCounterVec,
    /// Publishes refused, by reason (`unknown_key`, `busy`, `throttled`, `unsupported_codec`, `bad_app`, `draining`).
    pub publish_rejections: IntCounterVec,
    /// Publisher timed text (`onTextData`, `onCuePoint`) dropped, per channel and reason (`size`, `rate`).
    pub ingest_timed_text_dropped: IntCounterVec,
    /// Bytes of media queued between each publish's connection and its channel.
    pub ingest_queued_bytes: IntGaugeVec,
    /// Audio tags dropped at ingest while the video goes on, per channel and reason (`unsupported_codec`).
    pub ingest_audio_dropped: IntCounterVec,
    /// Runs of a track's timestamps that stopped advancing (its frames then timed by their count),
    /// per channel and track (`audio`, `video`).
    pub ingest_frozen_tracks: IntCounterVec,
    /// Publishes that replaced a live publisher gone silent (a reconnecting encoder), per channel.
    pub publisher_takeovers: IntCounterVec,
    /// Publishers lost (their connection dropped or went idle without ending the publish) whose
    /// playlists were held open for `rtmp.reconnect_grace`, per channel and outcome: `resumed`
    /// (a publisher came back within it) or `ended` (it passed, or the daemon stopped).
    pub publishers_lost: IntCounterVec,
    /// RTMP connections open now.
    pub rtmp_connections: IntGauge,
    /// RTMP connections whose publish has not been accepted yet (handshakes, `connect`), now.
    pub rtmp_pending_connections: IntGauge,
    /// RTMP connections closed by the server, by reason (`limit`, `pending`, `pending_per_address`, `handshake_timeout`, `idle_timeout`, `protocol`, `bitrate`, `tls`, `panic`).
    pub rtmp_connections_dropped: IntCounterVec,
    /// Channels with a live publisher (1) or not (0).
    pub channel_live: IntGaugeVec,
    /// Source video frames decoded, per channel.
    pub frames_decoded: IntCounterVec,
    /// Frames encoded, per channel and rung.
    pub frames_encoded: IntCounterVec,
    /// Cut pictures an encoder was told to make IDRs of and did not, per channel and rung.
    pub forced_idr_missed: IntCounterVec,
    /// Frames not encoded, per channel, rung and [`DropReason`]; take a rung's set with
    /// [`Metrics::frame_drops`].
    pub frames_dropped: IntCounterVec,
    /// Pictures waiting in a rung's input queue (between the decode thread and the rung's encoder).
    pub encoder_queue_depth: IntGaugeVec,
    /// Time from a frame's arrival at ingest to each stage: `decode` (rendition ""), `encode`
    /// (per rung), `package` (per rendition: the frame is in a published part).
    pub stage_latency: HistogramVec,
    /// Segments published, per channel and rendition.
    pub segments_published: IntCounterVec,
    /// Time from a segment's first frame arriving at ingest to the segment being published.
    pub segment_latency: HistogramVec,
    /// `EXT-X-TARGETDURATION` of each rendition's playlist: above `hls.segment_duration` (rounded
    /// up) when segments came out longer than the target.
    pub hls_target_duration: IntGaugeVec,
    /// Time from a part's first frame arriving at ingest to the part being published.
    pub part_latency: HistogramVec,
    /// Time from timed metadata being posted (or arriving over RTMP) to the first part carrying it being published.
    pub metadata_latency: HistogramVec,
    /// LL-HLS requests held now, waiting for a playlist update or a preload-hinted part.
    pub held_requests: IntGauge,
    /// LL-HLS requests answered 503 at once because `http.max_held_requests` were held.
    pub held_refused: IntCounter,
    /// HTTP/2 connections that reached `http.max_streams_per_connection` streams in flight, per
    /// listener.
    pub http_stream_limit_reached: IntCounterVec,
    /// HTTP requests answered, per listener (`origin`, `admin`), route and status code; count
    /// them with [`Metrics::observe_http`].
    pub http_requests: IntCounterVec,
    /// Time from a request's arrival to its response headers, per listener and route.
    pub http_request_duration: HistogramVec,
    /// Origin requests under `/live/{channel}/`, per configured channel and route: what viewers
    /// (or the CDN in front of them) ask for.
    pub origin_requests: IntCounterVec,
    /// Pipeline errors that ended a publish, per channel and stage.
    pub pipeline_errors: IntCounterVec,
    /// 1 for the backend (`cpu`, `nvidia`) each stage of each rung of a channel runs on; decode,
    /// done once per channel, has an empty `rung`. A combination no longer in use is set to 0
    /// rather than removed, so "this rung left NVENC" reads as a change of value, not as a series
    /// that stopped (which looks like a scrape gap). Bounded: channels and rungs come from the
    /// configuration, stages and backends from fixed lists. Set it with [`Metrics::set_backend_info`].
    pub backend_info: IntGaugeVec,
    /// Stages that run on the CPU although NVIDIA was asked for (`auto`, `nvidia`), one per stage
    /// and plan, by reason (`no_driver`, `no_nvenc`, `no_nvdec`, `gpu_full`, `gpu_error`,
    /// `not_built`; every one exported from the start, at 0).
    pub backend_fallbacks: IntCounterVec,
    /// NVENC sessions ladderd holds, per GPU (CUDA device ordinal).
    pub gpu_nvenc_sessions: IntGaugeVec,
    /// 1 while a GPU is quarantined after repeated errors (new channels are placed elsewhere).
    pub gpu_quarantined: IntGaugeVec,
    /// Utilization of a GPU's engines (`gpu`, `encoder`, `decoder`) from 0 to 1, as NVML last
    /// reported it; set with [`Metrics::set_gpu_stats`].
    pub gpu_utilization: GaugeVec,
    /// GPU memory in use, all processes, bytes.
    pub gpu_memory_used: IntGaugeVec,
    /// GPU memory in total, bytes.
    pub gpu_memory_total: IntGaugeVec,
    /// Configuration reloads (SIGHUP), by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
}

/// One registered metric family, as Prometheus names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// The full name, `ladderd_…`; a histogram's series add `_bucket`, `_sum` and `_count`.
    pub name: String,
    pub kind: Kind,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One `ladderd_backend_info` series of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSeries {
    /// The rung's name; empty for decode, which feeds every rung.
    pub rung: String,
    /// `decode`, `scale` or `encode`.
    pub stage: &'static str,
    /// `cpu` or `nvidia`.
    pub backend: &'static str,
}

/// Holds one unit of a gauge (an open connection, a held request) for as long as it lives, and
/// gives it back however its holder ends, unwinding included.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a source picture was not encoded by a rung (`ladderd_frames_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Video before the first keyframe of a publish (no ladder yet, so `rung` is empty), or
    /// between a decoder's failure and the next keyframe the CPU decoder can start from.
    AwaitingKeyframe,
    /// Above `transcode.max_frame_rate`.
    FrameRateCap,
    /// The decoder refused the packet or failed.
    DecodeError,
    /// A decoded picture or an encoded packet came without a timestamp.
    NoTimestamp,
    /// The rung's queue was full (behind real time): it skips to the next segment start.
    Lagging,
    /// Lost when a GPU encoder failed: the pictures inside it, and those until the CPU encoder
    /// takes over at the next segment start.
    EncoderFallback,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::AwaitingKeyframe,
        DropReason::FrameRateCap,
        DropReason::DecodeError,
        DropReason::NoTimestamp,
        DropReason::Lagging,
        DropReason::EncoderFallback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::AwaitingKeyframe => "awaiting_keyframe",
            DropReason::FrameRateCap => "frame_rate_cap",
            DropReason::DecodeError => "decode_error",
            DropReason::NoTimestamp => "no_timestamp",
            DropReason::Lagging => "lagging",
            DropReason::EncoderFallback => "encoder_fallback",
        }
    }
}

/// Why a stage that could run on NVIDIA runs on the CPU. These are the only values of
/// `ladderd_backend_fallbacks_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// No NVIDIA driver (libcuda or NVML cannot be loaded, or NVML lists no GPU).
    NoDriver,
    /// No usable GPU has an NVENC engine.
    NoNvenc,
    /// The chosen GPU has no NVDEC engine.
    NoNvdec,
    /// Every allowed GPU is short of NVENC sessions (`transcode.max_sessions_per_gpu`).
    GpuFull,
    /// The GPU failed: a session or context would not open, or a running one broke.
    GpuError,
    /// This build has no NVIDIA pipeline for the stage.
    NotBuilt,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::NoDriver,
        FallbackReason::NoNvenc,
        FallbackReason::NoNvdec,
        FallbackReason::GpuFull,
        FallbackReason::GpuError,
        FallbackReason::NotBuilt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NoDriver => "no_driver",
            FallbackReason::NoNvenc => "no_nvenc",
            FallbackReason::NoNvdec => "no_nvdec",
            FallbackReason::GpuFull => "gpu_full",
            FallbackReason::GpuError => "gpu_error",
            FallbackReason::NotBuilt => "not_built",
        }
    }
}

/// A rung's `ladderd_frames_dropped_total` counters, one per [`DropReason`]; made with every
/// reason at 0, so that `rate()` has a series from the start.
#[derive(Clone)]
pub struct FrameDrops([IntCounter; DropReason::ALL.len()]);

impl FrameDrops {
    pub fn inc(&self, reason: DropReason) {
        self.inc_by(reason, 1);
    }

    pub fn inc_by(&self, reason: DropReason, n: u64) {
        self.0[reason as usize].inc_by(n);
    }
}

/// What NVML says of one GPU; `None` where it could not say (the series is then removed rather
/// than left at a stale value).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuStats {
    /// Overall (SM) utilization, 0 to 1 (NVML's percent / 100).
    pub gpu_utilization: Option<f64>,
    /// NVENC utilization, 0 to 1.
    pub encoder_utilization: Option<f64>,
    /// NVDEC utilization, 0 to 1.
    pub decoder_utilization: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
}

/// Registers collectors and remembers what it registered.
struct Builder {
    registry: Registry,
    families: Vec<Family>,
}

impl Builder {
    fn add<C: Collector + Clone + 'static>(&mut self, collector: C, kind: Kind) -> C {
        for desc in collector.desc() {
            self.families.push(Family {
                name: format!("ladderd_{}", desc.fq_name),
                kind,
                labels: desc.variable_labels.clone(),
            });
        }
        self.registry.register(Box::new(collector.clone())).expect("metric registered once");
        collector
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"), Kind::Counter)
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric"), Kind::Gauge)
    }

    fn float_gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("static metric"), Kind::Gauge)
    }

    fn scalar_counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("static metric"), Kind::Counter)
    }

    fn scalar_gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("static metric"), Kind::Gauge)
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("static metric"), Kind::Histogram)
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ladderd".into()), None).expect("static prefix is valid");
        let mut b = Builder { registry, families: Vec::new() };
        let ingest_bytes = b.counter("ingest_bytes_total", "RTMP media payload bytes received", &["channel"]);
        let ingest_frame_rate = b.float_gauge(
            "ingest_frame_rate",
            "Source video frames per second of media time, over about the last second; 0 when not live",
            &["channel"],
        );
        let ingest_keyframe_interval = b.float_gauge(
            "ingest_keyframe_interval_seconds",
            "Seconds between the two latest source keyframes; 0 when not live",
            &["channel"],
        );
        let publishes = b.counter("publishes_total", "Publishes accepted", &["channel"]);
        let publish_rejections = b.counter("publish_rejections_total", "Publishes refused, by reason", &["reason"]);
        let publisher_takeovers = b.counter(
            "publisher_takeovers_total",
            "Publishes that replaced a live publisher that had gone silent",
            &["channel"],
        );
        let publishers_lost = b.counter(
            "publishers_lost_total",
            "Publishers lost without ending their publish, whose playlists were held open for rtmp.reconnect_grace, by outcome (resumed, ended)",
            &["channel", "outcome"],
        );
        let ingest_timed_text_dropped = b.counter(
            "ingest_timed_text_dropped_total",
            "Timed text from publishers dropped: over 1024 bytes (size) or over the metadata API's rate and burst (rate)",
            &["channel", "reason"],
        );
        let ingest_queued_bytes = b.gauge(
            "ingest_queued_bytes",
            "Bytes of media received and not yet taken by the channel (at most rtmp.max_queued_bytes)",
            &["channel"],
        );
        let ingest_audio_dropped = b.counter(
            "ingest_audio_dropped_total",
            "Audio tags dropped at ingest while the video goes on (unsupported_codec: not AAC)",
            &["channel", "reason"],
        );
        let ingest_frozen_tracks = b.counter(
            "ingest_frozen_tracks_total",
            "Times a track's timestamps stopped advancing for 3 s of its media while it kept sending (its frames are then timed by their count)",
            &["channel", "track"],
        );
        let rtmp_connections = b.scalar_gauge("rtmp_connections", "RTMP connections open now");
        let rtmp_pending_connections = b.scalar_gauge(
            "rtmp_pending_connections",
            "RTMP connections open now whose publish has not been accepted yet",
        );
        let rtmp_connections_dropped = b.counter(
            "rtmp_connections_dropped_total",
            "RTMP connections closed by the server, by reason",
            &["reason"],
        );
        let channel_live = b.gauge("channel_live", "1 while a channel has a live publisher", &["channel"]);
        let frames_decoded = b.counter("frames_decoded_total", "Source video frames decoded", &["channel"]);
        let frames_encoded = b.counter("frames_encoded_total", "Video frames encoded", &["channel", "rung"]);
        let forced_idr_missed = b.counter(
            "forced_idr_missed_total",
            "Segment starts an encoder was told to make an IDR and did not (the segment cannot start there in that rendition)",
            &["channel", "rung"],
        );
        let frames_dropped =
            b.counter("frames_dropped_total", "Video frames not encoded, by reason", &["channel", "rung", "reason"]);
        let encoder_queue_depth =
            b.gauge("encoder_queue_depth", "Decoded pictures waiting in a rung's input queue", &["channel", "rung"]);
        let stage_latency = b.histogram(
            "stage_latency_seconds",
            "Time from a frame's arrival at ingest to the end of a stage: decode, encode, package (in a published part)",
            &["channel", "rendition", "stage"],
            &STAGE_BUCKETS,
        );
        let segments_published =
            b.counter("segments_published_total", "HLS segments published", &["channel", "rendition"]);
        let hls_target_duration = b.gauge(
            "hls_target_duration_seconds",
            "EXT-X-TARGETDURATION of the rendition's playlist; above hls.segment_duration when segments came out longer",
            &["channel", "rendition"],
        );
        let segment_latency = b.histogram(
            "segment_publish_latency_seconds",
            "Time from a segment's first frame arriving at ingest to the segment being published",
            &["channel", "rendition"],
            &[0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0],
        );
        let part_latency = b.histogram(
            "part_publish_latency_seconds",
            "Time from an LL-HLS part's first frame arriving at ingest to the part being published",
            &["channel", "rendition"],
            &[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0],
        );
        let metadata_latency = b.histogram(
            "metadata_latency_seconds",
            "Time from timed metadata being posted to the first part carrying it being published",
            &["channel"],
            &[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0],
        );
        let held_requests = b.scalar_gauge(
            "http_held_requests",
            "LL-HLS requests held now, waiting for a playlist update or a preload-hinted part",
        );
        let held_refused = b.scalar_counter(
            "http_held_refused_total",
            "LL-HLS requests answered 503 at once because http.max_held_requests requests were held",
        );
        let http_stream_limit_reached = b.counter(
            "http_stream_limit_reached_total",
            "HTTP/2 connections that reached http.max_streams_per_connection streams in flight, by listener",
            &["listener"],
        );
        let http_requests = b.counter(
            "http_requests_total",
            "HTTP requests answered, by listener, route and status code",
            &["listener", "route", "code"],
        );
        let http_request_duration = b.histogram(
            "http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response headers, by listener and route",
            &["listener", "route"],
            &HTTP_BUCKETS,
        );
        let origin_requests = b.counter(
            "origin_requests_total",
            "Origin requests for a configured channel's playlists and media, by route",
            &["channel", "route"],
        );
        let pipeline_errors = b.counter(
            "pipeline_errors_total",
            "Pipeline errors: those that ended a publish, and GPU work moved to the CPU (*_fallback)",
            &["channel", "stage"],
        );
        let backend_info = b.gauge(
            "backend_info",
            "1 for the backend each stage of a rung runs on, 0 for one it no longer does",
            &["channel", "rung", "stage", "backend"],
        );
        let backend_fallbacks = b.counter(
            "backend_fallbacks_total",
            "Stages run on the CPU although NVIDIA was asked for, by reason",
            &["reason"],
        );
        for reason in FallbackReason::ALL {
            backend_fallbacks.with_label_values(&[reason.as_str()]);
        }
        let gpu_nvenc_sessions = b.gauge("gpu_nvenc_sessions", "NVENC sessions ladderd holds, per GPU", &["gpu"]);
        let gpu_quarantined = b.gauge(
            "gpu_quarantined",
            "1 while a GPU is quarantined after 3 error incidents in 60 s: new channels are placed elsewhere until a probe after a 5 minute cool-down passes",
            &["gpu"],
        );
        let gpu_utilization = b.float_gauge(
            "gpu_utilization_ratio",
            "Utilization of a GPU engine (gpu, encoder, decoder) from 0 to 1, as NVML reports it",
            &["gpu", "engine"],
        );
        let gpu_memory_used = b.gauge("gpu_memory_used_bytes", "GPU memory in use, by every process", &["gpu"]);
        let gpu_memory_total = b.gauge("gpu_memory_total_bytes", "GPU memory in total", &["gpu"]);
        let config_reloads = b.counter("config_reloads_total", "Configuration reloads, by result", &["result"]);
        // Both results exist from the start, so an alert on `error` sees an increase.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let Builder { registry, families } = b;
        Self {
            registry,
            families,
            ingest_bytes,
            ingest_frame_rate,
            ingest_keyframe_interval,
            publishes,
            publish_rejections,
            publisher_takeovers,
            publishers_lost,
            ingest_timed_text_dropped,
            ingest_queued_bytes,
            ingest_audio_dropped,
            ingest_frozen_tracks,
            rtmp_connections,
            rtmp_pending_connections,
            rtmp_connections_dropped,
            channel_live,
            frames_decoded,
            frames_encoded,
            forced_idr_missed,
            frames_dropped,
            encoder_queue_depth,
            stage_latency,
            segments_published,
            segment_latency,
            hls_target_duration,
            part_latency,
            metadata_latency,
            held_requests,
            held_refused,
            http_stream_limit_reached,
            http_requests,
            http_request_duration,
            origin_requests,
            pipeline_errors,
            backend_info,
            backend_fallbacks,
            gpu_nvenc_sessions,
            gpu_quarantined,
            gpu_utilization,
            gpu_memory_used,
            gpu_memory_total,
            config_reloads,
        }
    }

    /// The text exposition format (what `/metrics` serves).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding to a Vec cannot fail for I/O reasons; a failure would be a bug in a metric name.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric family this registry has, whether or not it has series yet.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// `ladderd_origin_requests_total` of every channel that has any, summed over routes.
    pub fn origin_requests_by_channel(&self) -> HashMap<String, u64> {
        let mut totals = HashMap::new();
        for family in self.origin_requests.collect() {
            for metric in family.get_metric() {
                let channel = metric.get_label().iter().find(|l| l.name() == "channel");
                if let Some(channel) = channel {
                    // Counters hold whole numbers here; f64 carries them exactly up to 2^53.
                    *totals.entry(channel.value().to_owned()).or_default() += metric.get_counter().get_value() as u64;
                }
            }
        }
        totals
    }

    /// A rung's drop counters (`rung` empty: drops before a ladder exists), every reason at 0.
    pub fn frame_drops(&self, channel: &str, rung: &str) -> FrameDrops {
        FrameDrops(DropReason::ALL.map(|r| self.frames_dropped.with_label_values(&[channel, rung, r.as_str()])))
    }

    /// Counts an answered HTTP request. `route` must come from the listener's fixed list.
    pub fn observe_http(&self, listener: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.http_requests.with_label_values(&[listener, route, status_code(status)]).inc();
        self.http_request_duration.with_label_values(&[listener, route]).observe(elapsed.as_secs_f64());
    }

    /// Publishes what NVML says of GPU `gpu` (its CUDA device ordinal). Meant to be called
    /// periodically by whoever polls NVML; a `None` removes that series.
    pub fn set_gpu_stats(&self, gpu: u32, stats: &GpuStats) {
        let gpu = gpu.to_string();
        for (engine, value) in [
            ("gpu", stats.gpu_utilization),
            ("encoder", stats.encoder_utilization),
            ("decoder", stats.decoder_utilization),
        ] {
            match value {
                Some(v) => self.gpu_utilization.with_label_values(&[&gpu, engine]).set(v.clamp(0.0, 1.0)),
                None => {
                    let _ = self.gpu_utilization.remove_label_values(&[&gpu, engine]);
                }
            }
        }
        for (gauge, value) in
            [(&self.gpu_memory_used, stats.memory_used_bytes), (&self.gpu_memory_total, stats.memory_total_bytes)]
        {
            match value.map(|v| i64::try_from(v).unwrap_or(i64::MAX)) {
                Some(v) => gauge.with_label_values(&[&gpu]).set(v),
                None => {
                    let _ = gauge.remove_label_values(&[&gpu]);
                }
            }
        }
    }

    /// Moves `channel`'s `backend_info` from `previous` to `current`: every series of `previous`
    /// goes to 0, then every series of `current` to 1 (so one in both stays 1). `current` empty
    /// zeroes the channel, for when it stops.
    /// A reload removed `channel`: it no longer reports as a channel (live or not). Its counters
    /// stay until the process restarts, as counters of past work.
    pub fn forget_channel(&self, channel: &str) {
        let _ = self.channel_live.remove_label_values(&[channel]);
    }

    pub fn set_backend_info(&self, channel: &str, previous: &[BackendSeries], current: &[BackendSeries]) {
        for (series, value) in previous.iter().map(|s| (s, 0)).chain(current.iter().map(|s| (s, 1))) {
            self.backend_info.with_label_values(&[channel, &series.rung, series.stage, series.backend]).set(value);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `code` label of a status: the code itself for those ladderd sends, its class (`5xx`…)
/// for anything else, so the label stays bounded whatever a handler returns.
pub fn status_code(status: u16) -> &'static str {
    const SENT: [(u16, &str); 15] = [
        (200, "200"),
        (204, "204"),
        (206, "206"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (416, "416"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
    ];
    if let Some((_, label)) = SENT.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rung: &str, stage: &'static str, backend: &'static str) -> BackendSeries {
        BackendSeries { rung: rung.into(), stage, backend }
    }

    #[test]
    fn backend_info_moves_from_the_old_backend_to_the_new() {
        let m = Metrics::new();
        let gpu = [series("", "decode", "nvidia"), series("720p", "encode", "nvidia")];
        m.set_backend_info("demo", &[], &gpu);
        let cpu = [series("", "decode", "nvidia"), series("720p", "encode", "cpu")];
        m.set_backend_info("demo", &gpu, &cpu);
        let get = |rung, stage, backend| m.backend_info.with_label_values(&["demo", rung, stage, backend]).get();
        assert_eq!(
            (get("", "decode", "nvidia"), get("720p", "encode", "nvidia"), get("720p", "encode", "cpu")),
            (1, 0, 1)
        );
        m.set_backend_info("demo", &cpu, &[]);
        assert_eq!((get("", "decode", "nvidia"), get("720p", "encode", "cpu")), (0, 0));
    }

    #[test]
    fn each_drop_reason_has_its_own_series_from_the_start() {
        let m = Metrics::new();
        let drops = m.frame_drops("demo", "720p");
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            drops.inc_by(reason, i as u64 + 1);
        }
        for (i, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(m.frames_dropped.with_label_values(&["demo", "720p", reason.as_str()]).get(), i as u64 + 1);
        }
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert_eq!(text.lines().filter(|l| l.starts_with("ladderd_frames_dropped_total{")).count(), 6);
    }

    #[test]
    fn gpu_stats_are_set_as_ratios_and_removed_when_unknown() {
        let m = Metrics::new();
        let stats = GpuStats {
            gpu_utilization: Some(0.5),
            encoder_utilization: Some(0.25),
            decoder_utilization: Some(1.5),
            memory_used_bytes: Some(3 << 30),
            memory_total_bytes: Some(80 << 30),
        };
        m.set_gpu_stats(1, &stats);
        let util = |engine| m.gpu_utilization.with_label_values(&["1", engine]).get();
        assert_eq!((util("gpu"), util("encoder"), util("decoder")), (0.5, 0.25, 1.0));
        assert_eq!(m.gpu_memory_used.with_label_values(&["1"]).get(), 3 << 30);
        assert_eq!(m.gpu_memory_total.with_label_values(&["1"]).get(), 80 << 30);
        m.set_gpu_stats(1, &GpuStats { encoder_utilization: Some(0.75), ..GpuStats::default() });
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("ladderd_gpu_utilization_ratio{engine=\"encoder\",gpu=\"1\"} 0.75"), "{text}");
        for gone in [
            "engine=\"gpu\"",
            "engine=\"decoder\"",
            "ladderd_gpu_memory_used_bytes{",
            "ladderd_gpu_memory_total_bytes{",
        ] {
            assert!(!text.contains(gone), "{gone} removed: {text}");
        }
    }

    #[test]
    fn status_codes_are_a_bounded_label() {
        assert_eq!(status_code(404), "404");
        assert_eq!(status_code(206), "206");
        assert_eq!(status_code(418), "4xx");
        assert_eq!(status_code(102), "1xx");
        assert_eq!(status_code(999), "5xx");
        let labels: std::collections::HashSet<&str> = (0..=u16::MAX).map(status_code).collect();
        assert_eq!(labels.len(), 20);
    }

    /// The metric names a text mentions: `ladderd_…` words.
    fn mentioned(text: &str) -> Vec<(usize, &str)> {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        text.match_indices("ladderd_")
            .filter(|(i, _)| !text[..*i].ends_with(word))
            .map(|(i, _)| {
                let end = text[i..].find(|c| !word(c)).map_or(text.len(), |n| i + n);
                (i, &text[i..end])
            })
            // The prefix alone ("every name starts with `ladderd_`") names nothing.
            .filter(|(_, name)| name.len() > "ladderd_".len())
            .collect()
    }

    /// The family a series name belongs to (a histogram's `_bucket`, `_sum`, `_count` included).
    fn family_of<'a>(families: &'a [Family], series: &str) -> Option<&'a Family> {
        families.iter().find(|f| {
            f.name == series
                || (f.kind == Kind::Histogram
                    && ["_bucket", "_sum", "_count"].iter().any(|s| series.strip_suffix(s) == Some(f.name.as_str())))
        })
    }

    #[test]
    fn docs_metrics_md_lists_every_metric_and_no_other() {
        let doc = include_str!("../docs/metrics.md");
        let m = Metrics::new();
        let documented: std::collections::BTreeSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .filter(|name| name.starts_with("ladderd_"))
            .collect();
        let registered: std::collections::BTreeSet<&str> = m.families().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(documented, registered);
        for family in m.families() {
            let row = doc.lines().find(|l| l.starts_with(&format!("| `{}` |", family.name))).expect("row");
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            assert_eq!(cells[2], kind, "{}", family.name);
            let labels: Vec<&str> = cells[3].split(',').map(str::trim).filter(|l| !l.is_empty()).collect();
            assert_eq!(labels, family.labels, "{}", family.name);
        }
        // Every series named in the PromQL examples exists.
        for (_, name) in mentioned(doc) {
            assert!(family_of(m.families(), name).is_some(), "docs/metrics.md mentions {name}");
        }
    }

    /// Checks one PromQL expression of the dashboard against the registry: every `ladderd_` series
    /// exists, every label it matches on is one of that family's, and every `by (…)` label is one
    /// of the families it reads (or `le`).
    fn check_expr(families: &[Family], expr: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut used: Vec<&Family> = Vec::new();
        for (at, name) in mentioned(expr) {
            let Some(family) = family_of(families, name) else {
                problems.push(format!("{name}: no such metric"));
                continue;
            };
            used.push(family);
            let Some(selector) = expr[at + name.len()..].strip_prefix('{') else { continue };
            let Some(end) = selector.find('}') else {
                problems.push(format!("{name}: unclosed selector"));
                continue;
            };
            for matcher in selector[..end].split(',').filter(|m| !m.trim().is_empty()) {
                let label = matcher.split(['=', '!']).next().unwrap_or("").trim();
                let ok = family.labels.iter().any(|l| l == label) || (label == "le" && name.ends_with("_bucket"));
                if !ok {
                    problems.push(format!("{name}: no label {label:?}"));
                }
            }
        }
        if used.is_empty() {
            problems.push("reads no ladderd metric".into());
        }
        for (at, _) in expr.match_indices("by (") {
            let Some(list) = expr[at + 4..].split(')').next() else { continue };
            for label in list.split(',').map(str::trim) {
                if label != "le" && !used.iter().any(|f| f.labels.iter().any(|l| l == label)) {
                    problems.push(format!("by ({label}): no metric read has it"));
                }
            }
        }
        problems
    }

    /// Every panel, rows' nested panels included.
    fn panels(value: &serde_json::Value) -> Vec<&serde_json::Value> {
        let mut out = Vec::new();
        for p in value["panels"].as_array().into_iter().flatten() {
            out.push(p);
            out.extend(panels(p));
        }
        out
    }

    #[test]
    fn the_grafana_dashboard_reads_only_metrics_that_exist_and_shows_every_one() {
        let text = include_str!("../config/grafana/ladderd.json");
        let dashboard: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
        let m = Metrics::new();
        assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "importable with a data source input");
        assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
        let all = panels(&dashboard);
        let mut ids: Vec<u64> = all.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "panel ids are unique");
        let mut problems = Vec::new();
        let mut shown = std::collections::BTreeSet::new();
        for panel in all.iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or("?");
            let pos = &panel["gridPos"];
            let (x, w) = (pos["x"].as_u64().unwrap_or(99), pos["w"].as_u64().unwrap_or(99));
            if x + w > 24 || pos["h"].as_u64().unwrap_or(0) == 0 {
                problems.push(format!("{title}: gridPos {pos}"));
            }
            let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{title}: no query"));
            }
            for datasource in std::iter::once(&panel["datasource"]).chain(targets.iter().map(|t| &t["datasource"])) {
                if datasource["uid"] != "${DS_PROMETHEUS}" {
                    problems.push(format!("{title}: data source {datasource}"));
                }
            }
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                problems.extend(check_expr(m.families(), expr).into_iter().map(|p| format!("{title}: {expr}: {p}")));
                for (_, name) in mentioned(expr) {
                    shown.extend(family_of(m.families(), name).map(|f| f.name.clone()));
                }
            }
        }
        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            let query = variable["query"]["query"].as_str().unwrap_or_default();
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap_or_default();
            let (metric, label) = inner.split_once(',').unwrap_or_default();
            let ok = family_of(m.families(), metric.trim()).is_some_and(|f| f.labels.iter().any(|l| l == label.trim()));
            if !ok {
                problems.push(format!("variable {}: {query}", variable["name"]));
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
        let missing: Vec<&str> = m.families().iter().map(|f| f.name.as_str()).filter(|n| !shown.contains(*n)).collect();
        assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
    }

    #[test]
    fn the_dashboard_check_catches_what_it_should() {
        let m = Metrics::new();
        let f = m.families();
        assert!(
            check_expr(f, "sum by (rung) (rate(ladderd_frames_encoded_total{channel=~\"$channel\"}[5m]))").is_empty()
        );
        assert!(
            check_expr(f, "histogram_quantile(0.5, sum by (le) (rate(ladderd_stage_latency_seconds_bucket[1m])))")
                .is_empty()
        );
        let finds = |expr: &str, problem: &str| {
            let problems = check_expr(f, expr);
            assert!(problems.iter().any(|p| p.contains(problem)), "{expr}: {problems:?}");
        };
        finds("ladderd_frames_encode_total", "ladderd_frames_encode_total: no such metric");
        finds("ladderd_stage_latency_seconds_total", "no such metric");
        finds("ladderd_frames_encoded_total{reason=\"x\"}", "no label \"reason\"");
        finds("ladderd_channel_live{le=\"1\"}", "no label \"le\"");
        finds("sum by (gpu) (ladderd_channel_live)", "by (gpu)");
        finds("up", "reads no ladderd metric");
    }

    #[test]
    fn every_fallback_reason_is_exported_from_the_start() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf-8");
        for reason in FallbackReason::ALL {
            let line = format!("ladderd_backend_fallbacks_total{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
