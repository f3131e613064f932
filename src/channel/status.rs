//! What the admin API shows of a channel (`GET /api/v1/channels`, see docs/api.md): who
//! publishes, the source, ingest and request rates, each rendition's window, and the stage plan.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::Channels;
use crate::sync::lock;
use crate::transcode::backend::StagePlan;

/// `t` as the API shows times: RFC 3339 in UTC.
pub(super) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Samples of a counter further apart than this give no rate: it would no longer describe the
/// last few seconds.
const INGEST_RATE_MAX_AGE: Duration = Duration::from_secs(10);

/// The rate per second between two samples of a counter (older first), if they are recent.
fn per_second(samples: &[Option<(Instant, u64)>; 2]) -> Option<f64> {
    match *samples {
        [Some((t0, v0)), Some((t1, v1))]
            if t1 > t0 && Instant::now().saturating_duration_since(t1) <= INGEST_RATE_MAX_AGE =>
        {
            Some(v1.saturating_sub(v0) as f64 / (t1 - t0).as_secs_f64())
        }
        _ => None,
    }
}

/// Read-only status for the admin API.
impl Channels {
    /// Records a sample of every channel's `ladderd_ingest_bytes_total` and
    /// `ladderd_origin_requests_total`; the rates in [`Channels::status`] are the rates between
    /// the two latest samples.
    pub fn sample_rates(&self, now: Instant) {
        let requests = self.metrics.origin_requests_by_channel();
        for state in self.all_states() {
            let name = &state.name;
            let bytes = self.metrics.ingest_bytes.with_label_values(&[name]).get();
            let mut samples = lock(&state.ingest_samples);
            *samples = [samples[1], Some((now, bytes))];
            let mut samples = lock(&state.request_samples);
            *samples = [samples[1], Some((now, requests.get(name).copied().unwrap_or(0)))];
        }
    }

    /// Every configured channel's status, in configuration order.
    pub fn statuses(&self) -> Vec<ChannelStatus> {
        self.config().channels.iter().filter_map(|c| self.status(&c.name)).collect()
    }

    /// The status of `channel`; `None` when no such channel is configured.
    pub fn status(&self, channel: &str) -> Option<ChannelStatus> {
        let state = self.state(channel)?;
        let (live, publisher, source) = {
            let live = lock(&state.live);
            match live.as_ref() {
                Some(_) => (true, lock(&state.publisher).clone(), lock(&state.source).clone()),
                None => (false, None, None),
            }
        };
        let bytes_total = self.metrics.ingest_bytes.with_label_values(&[channel]).get();
        let bitrate_bps = per_second(&lock(&state.ingest_samples)).map(|bytes| (bytes * 8.0).round() as u64);
        let requests = *lock(&state.request_samples);
        let origin = OriginStatus {
            requests_total: requests[1].map_or(0, |(_, n)| n),
            requests_per_second: per_second(&requests).map(|r| (r * 100.0).round() / 100.0),
        };
        let w = lock(&state.window);
        let renditions = w
            .renditions()
            .into_iter()
            .map(|(name, log)| RenditionStatus {
                name: name.to_string(),
                width: log.width(),
                height: log.height(),
                codec: log.codec().to_string(),
                bandwidth: log.measured().map(|(peak, _)| peak),
                frame_rate: log.frame_rate(),
                last_msn: log.last_msn(),
                segments_in_window: log.segments_in_window(),
                ended: log.ended(),
            })
            .collect();
        drop(w);
        let reconnect_until = (*lock(&state.reconnect_until)).map(rfc3339);
        Some(ChannelStatus {
            name: channel.to_string(),
            live,
            reconnect_until,
            publisher,
            source,
            ingest: IngestStatus {
                bytes_total,
                bitrate_bps,
                // The gauges read 0 when nothing is known (not live, or too early to say).
                frame_rate: live
                    .then(|| self.metrics.ingest_frame_rate.with_label_values(&[channel]).get())
                    .filter(|v| *v > 0.0),
                keyframe_interval_seconds: live
                    .then(|| self.metrics.ingest_keyframe_interval.with_label_values(&[channel]).get())
                    .filter(|v| *v > 0.0),
            },
            origin,
            renditions,
            backend: lock(&state.backend).clone(),
        })
    }
}

/// One channel as `GET /api/v1/channels/{name}` shows it (see `docs/api.md`).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    pub live: bool,
    /// While the publisher is lost and its playlists are held open (`rtmp.reconnect_grace`):
    /// when they end unless it is back (RFC 3339).
    pub reconnect_until: Option<String>,
    pub publisher: Option<PublisherStatus>,
    pub source: Option<SourceStatus>,
    pub ingest: IngestStatus,
    pub origin: OriginStatus,
    pub renditions: Vec<RenditionStatus>,
    pub backend: Option<BackendStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublisherStatus {
    /// The publisher's address, `ip:port`.
    pub peer: String,
    /// When the publish began, RFC 3339 UTC.
    pub since: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub width: u32,
    pub height: u32,
    pub codec: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_codec: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestStatus {
    pub bytes_total: u64,
    pub bitrate_bps: Option<u64>,
    /// Source video frames per second of media time, over about the last second.
    pub frame_rate: Option<f64>,
    /// Seconds between the two latest source keyframes.
    pub keyframe_interval_seconds: Option<f64>,
}

/// What viewers (or the CDN in front of them) ask the origin for this channel.
#[derive(Debug, Clone, Serialize)]
pub struct OriginStatus {
    /// `ladderd_origin_requests_total` of the channel at the latest sample.
    pub requests_total: u64,
    pub requests_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RenditionStatus {
    pub name: String,
    /// 0 for the audio rendition.
    pub width: u32,
    pub height: u32,
    pub codec: String,
    /// Peak bits per second over the playlist window, as measured for the master playlist.
    pub bandwidth: Option<u64>,
    pub frame_rate: Option<f64>,
    /// Media sequence number of the latest complete segment.
    pub last_msn: Option<u64>,
    pub segments_in_window: usize,
    pub ended: bool,
}

/// Where a session's stages run now: its [`StagePlan`], and every stage that moved to the CPU
/// since, with why.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub decode: &'static str,
    pub scale: &'static str,
    /// What the plan gave the rungs' encoders; `rungs` says where each runs now.
    pub encode: &'static str,
    pub gpu: Option<u32>,
    pub refused: Vec<RefusedStatus>,
    pub rungs: Vec<RungBackendStatus>,
    /// Stages that moved to the CPU while the session ran, oldest first (the latest 32).
    pub moves: Vec<MoveStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RungBackendStatus {
    pub name: String,
    pub encode: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct MoveStatus {
    /// The rung whose encoder moved; absent for decode and scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rung: Option<String>,
    pub stage: &'static str,
    pub backend: &'static str,
    pub reason: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// Moves kept in a [`BackendStatus`].
const MOVES_KEPT: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct RefusedStatus {
    pub stage: &'static str,
    pub backend: &'static str,
    /// The fixed cause, as in `ladderd_backend_fallbacks_total{reason}`.
    pub cause: &'static str,
    pub reason: String,
}

impl BackendStatus {
    /// The plan of a session whose encoded rungs are `rungs`, in ladder order.
    pub(super) fn of(plan: &StagePlan, rungs: &[String]) -> Self {
        Self {
            decode: plan.decode.name(),
            scale: plan.scale.name(),
            encode: plan.encode.name(),
            gpu: plan.gpu,
            rungs: rungs
                .iter()
                .enumerate()
                .map(|(i, name)| RungBackendStatus {
                    name: name.clone(),
                    encode: plan.rung_encode(i).unwrap_or(plan.encode).name(),
                })
                .collect(),
            moves: Vec::new(),
            refused: plan
                .refused
                .iter()
                .map(|r| RefusedStatus {
                    stage: r.stage.name(),
                    backend: r.backend.name(),
                    cause: r.cause.as_str(),
                    reason: r.reason.clone(),
                })
                .collect(),
        }
    }
}

impl BackendStatus {
    /// Records a stage that moved to the CPU.
    pub(super) fn moved(&mut self, m: &crate::transcode::StageMove) {
        let cpu = crate::transcode::backend::Backend::Cpu.name();
        match (m.stage, m.rung.as_deref()) {
            ("decode", _) => self.decode = cpu,
            ("scale", _) => self.scale = cpu,
            (_, Some(rung)) => {
                if let Some(r) = self.rungs.iter_mut().find(|r| r.name == rung) {
                    r.encode = cpu;
                }
            }
            _ => {}
        }
        if self.moves.len() >= MOVES_KEPT {
            self.moves.remove(0);
        }
        self.moves.push(MoveStatus {
            rung: m.rung.clone(),
            stage: m.stage,
            backend: cpu,
            reason: m.reason.clone(),
            at: rfc3339(SystemTime::now()),
        });
    }
}
