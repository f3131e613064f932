//! Prometheus metrics: one registry per daemon (so tests can run several in one process) and
//! typed handles for every stage. Label values are bounded: channel and rung names come from the
//! configuration, reasons and classes from fixed lists.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Bytes of RTMP payload received, per channel.
    pub ingest_bytes: IntCounterVec,
    /// Publishes accepted, per channel.
    pub publishes: IntCounterVec,
    /// Publishes refused, by reason (`unknown_key`, `busy`, `unsupported_codec`, `bad_app`, `protocol`).
    pub publish_rejections: IntCounterVec,
    /// RTMP connections open now.
    pub rtmp_connections: IntGauge,
    /// RTMP connections closed by the server, by reason (`limit`, `handshake_timeout`, `idle_timeout`, `protocol`, `panic`).
    pub rtmp_connections_dropped: IntCounterVec,
    /// Channels with a live publisher (1) or not (0).
    pub channel_live: IntGaugeVec,
    /// Source video frames decoded, per channel.
    pub frames_decoded: IntCounterVec,
    /// Frames encoded, per channel and rung.
    pub frames_encoded: IntCounterVec,
    /// Frames not encoded, per channel, rung and reason (`frame_rate_cap`, `decode_error`, `lagging`).
    pub frames_dropped: IntCounterVec,
    /// Segments published, per channel and rendition.
    pub segments_published: IntCounterVec,
    /// Time from a segment's first frame arriving at ingest to the segment being published.
    pub segment_latency: HistogramVec,
    /// Time from a part's first frame arriving at ingest to the part being published.
    pub part_latency: HistogramVec,
    /// Time from timed metadata being posted (or arriving over RTMP) to the first part carrying it being published.
    pub metadata_latency: HistogramVec,
    /// LL-HLS requests held now, waiting for a playlist update or a preload-hinted part.
    pub held_requests: IntGauge,
    /// HTTP requests answered, per listener (`origin`, `admin`) and status class (`2xx` …).
    pub http_requests: IntCounterVec,
    /// Pipeline errors that ended a publish, per channel and stage.
    pub pipeline_errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ladderd".into()), None).expect("static prefix is valid");
        fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            r.register(Box::new(c.clone())).expect("metric registered once");
            c
        }
        let rtmp_connections = IntGauge::new("rtmp_connections", "RTMP connections open now").expect("static metric");
        registry.register(Box::new(rtmp_connections.clone())).expect("metric registered once");
        let channel_live =
            IntGaugeVec::new(Opts::new("channel_live", "1 while a channel has a live publisher"), &["channel"])
                .expect("static metric");
        registry.register(Box::new(channel_live.clone())).expect("metric registered once");
        let segment_latency = HistogramVec::new(
            HistogramOpts::new(
                "segment_publish_latency_seconds",
                "Time from a segment's first frame arriving at ingest to the segment being published",
            )
            .buckets(vec![0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0]),
            &["channel", "rendition"],
        )
        .expect("static metric");
        registry.register(Box::new(segment_latency.clone())).expect("metric registered once");
        let part_latency = HistogramVec::new(
            HistogramOpts::new(
                "part_publish_latency_seconds",
                "Time from an LL-HLS part's first frame arriving at ingest to the part being published",
            )
            .buckets(vec![0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]),
            &["channel", "rendition"],
        )
        .expect("static metric");
        registry.register(Box::new(part_latency.clone())).expect("metric registered once");

        let metadata_latency = HistogramVec::new(
            HistogramOpts::new(
                "metadata_latency_seconds",
                "Time from timed metadata being posted to the first part carrying it being published",
            )
            .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]),
            &["channel"],
        )
        .expect("static metric");
        registry.register(Box::new(metadata_latency.clone())).expect("metric registered once");
        let held_requests = IntGauge::new(
            "http_held_requests",
            "LL-HLS requests held now, waiting for a playlist update or a preload-hinted part",
        )
        .expect("static metric");
        registry.register(Box::new(held_requests.clone())).expect("metric registered once");

        let r = &registry;
        Self {
            ingest_bytes: counter(r, "ingest_bytes_total", "RTMP media payload bytes received", &["channel"]),
            publishes: counter(r, "publishes_total", "Publishes accepted", &["channel"]),
            publish_rejections: counter(r, "publish_rejections_total", "Publishes refused, by reason", &["reason"]),
            rtmp_connections,
            rtmp_connections_dropped: counter(
                r,
                "rtmp_connections_dropped_total",
                "RTMP connections closed by the server, by reason",
                &["reason"],
            ),
            channel_live,
            frames_decoded: counter(r, "frames_decoded_total", "Source video frames decoded", &["channel"]),
            frames_encoded: counter(r, "frames_encoded_total", "Video frames encoded", &["channel", "rung"]),
            frames_dropped: counter(
                r,
                "frames_dropped_total",
                "Video frames not encoded, by reason",
                &["channel", "rung", "reason"],
            ),
            segments_published: counter(
                r,
                "segments_published_total",
                "HLS segments published",
                &["channel", "rendition"],
            ),
            segment_latency,
            part_latency,
            metadata_latency,
            held_requests,
            http_requests: counter(
                r,
                "http_requests_total",
                "HTTP requests answered, by listener and status class",
                &["listener", "class"],
            ),
            pipeline_errors: counter(r, "pipeline_errors_total", "Errors that ended a publish", &["channel", "stage"]),
            registry,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `2xx`, `4xx`… for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
