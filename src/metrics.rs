//! Prometheus metrics: one registry per daemon (so tests can run several in one process) and
//! typed handles for every stage. Label values are bounded: channel and rung names come from the
//! configuration, reasons and classes from fixed lists.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::transcode::backend::FallbackReason;

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
    /// RTMP connections closed by the server, by reason (`limit`, `handshake_timeout`, `idle_timeout`, `protocol`, `tls`, `panic`).
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
    /// Configuration reloads (SIGHUP), by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
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

        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let backend_info = gauge_vec(
            "backend_info",
            "1 for the backend each stage of a rung runs on, 0 for one it no longer does",
            &["channel", "rung", "stage", "backend"],
        );
        let gpu_nvenc_sessions = gauge_vec("gpu_nvenc_sessions", "NVENC sessions ladderd holds, per GPU", &["gpu"]);

        let r = &registry;
        let backend_fallbacks = counter(
            r,
            "backend_fallbacks_total",
            "Stages run on the CPU although NVIDIA was asked for, by reason",
            &["reason"],
        );
        for reason in FallbackReason::ALL {
            backend_fallbacks.with_label_values(&[reason.as_str()]);
        }
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
            backend_info,
            backend_fallbacks,
            gpu_nvenc_sessions,
            config_reloads: {
                let c = counter(r, "config_reloads_total", "Configuration reloads, by result", &["result"]);
                // Both results exist from the start, so an alert on `error` sees an increase.
                for result in ["ok", "error"] {
                    c.with_label_values(&[result]);
                }
                c
            },
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
    fn every_fallback_reason_is_exported_from_the_start() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf-8");
        for reason in FallbackReason::ALL {
            let line = format!("ladderd_backend_fallbacks_total{{reason=\"{}\"}} 0", reason.as_str());
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
