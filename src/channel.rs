//! A channel ties one published stream through the stages: it accepts or refuses publishes,
//! starts the transcoder and packagers for each publish, and keeps what outlives a publish (the
//! playlist window, media sequence numbers, discontinuities) so a publisher that comes back
//! continues the same playlists.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Hardware;
use crate::config::{ChannelConfig, Config, Container};
use crate::gpu;
use crate::ingest::{Publish, PublishGate, Refusal};
use crate::media::{
    Alignment, Arrival, AudioParams, EncodedPacket, MediaPacket, RenditionSink, Sample, SegmentClock, Ticks,
    VideoParams, secs_to_ticks, ticks_to_secs,
};
use crate::metrics::BackendSeries;
use crate::metrics::DropReason;
use crate::metrics::Metrics;
use crate::origin::THUMBNAIL;
use crate::origin::content_type;
use crate::package::fmp4::TrackParams;
use crate::package::id3;
use crate::package::playlist::{
    self, AudioRendition, LowLatency, MasterPlaylist, MediaPlaylist, OpenSegment, PlaylistPart, PlaylistSegment,
    RenditionReport, Variant,
};
use crate::package::segmenter::{self as segmenter, Metadata, Part, Segment, Segmenter};
use crate::store::{Cacheability, ChannelObjects, Object, Progress, Store};
use crate::transcode::backend::{self, Backend, FallbackReason, NoHardware, NvidiaOffer, StagePlan, Unavailable};
use crate::transcode::ladder;
use crate::transcode::pipeline::{DecoderChoice, EncoderChoice};
use crate::transcode::placement::{GpuState, Placement, Placer, Rejected, SessionGuard};
use crate::transcode::thumbnail::ThumbnailSpec;
use crate::transcode::{TranscodeSpec, Transcoder};

/// Name of the audio rendition (rung names may not use it).
const AUDIO: &str = "audio";
/// Source packets buffered between ingest and the channel thread. Beyond this, ingest waits and
/// TCP pushes back on the publisher.
const INGEST_QUEUE: usize = 512;
/// Segments kept in the store after they leave the playlist, for players that fetched the
/// playlist just before.
pub const GRACE_SEGMENTS: usize = 2;
/// Store key of a rendition playlist's delta update (`_HLS_skip=YES`), next to `index.m3u8`.
pub const DELTA_PLAYLIST: &str = "index.m3u8#skip";

/// Every configured channel, and the gate ingest asks about publishes.
pub struct Channels {
    /// The configuration new publishes use; [`Channels::reload`] replaces it.
    config: RwLock<Arc<Config>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Configured channels, plus channels a reload removed while they were live (until their
    /// publish ends and the next reload drops them).
    channels: RwLock<HashMap<String, Arc<ChannelState>>>,
    draining: AtomicBool,
    /// NVENC sessions per GPU, shared by every channel of the daemon.
    placer: Placer,
}

struct ChannelState {
    name: String,
    /// The live publish, if there is one.
    live: Mutex<Option<LivePublish>>,
    /// The thread of the latest publish (it may still be flushing after the publisher left).
    thread: Mutex<Option<JoinHandle<()>>>,
    history: Arc<Mutex<History>>,
    /// Timed metadata posted through the API, waiting for the channel thread to stamp it.
    posted_metadata: Mutex<VecDeque<(Bytes, SystemTime)>>,
    /// Id of the latest timed metadata on the board (in `History`); rendition publishers compare
    /// it with what they have taken, so that checking for news costs no lock.
    metadata_latest: Arc<AtomicU32>,
    /// The `ladderd_backend_info` series this channel set last.
    backend_series: Mutex<Vec<BackendSeries>>,
    /// Who is publishing and since when; meaningful only while `live` is set.
    publisher: Mutex<Option<PublisherStatus>>,
    /// The source of the current publish's latest session; cleared when a publish begins.
    source: Mutex<Option<SourceStatus>>,
    /// The stage plan of the latest session, kept after it ends so that fallbacks stay visible.
    backend: Mutex<Option<BackendStatus>>,
    /// The two latest samples of `ladderd_ingest_bytes_total` (older first), for the ingest rate.
    ingest_samples: Mutex<[Option<(Instant, u64)>; 2]>,
    /// The same of `ladderd_origin_requests_total`, for the viewers' request rate.
    request_samples: Mutex<[Option<(Instant, u64)>; 2]>,
}

impl ChannelState {
    fn new(name: &str, store: &Store, metrics: &Metrics) -> Arc<Self> {
        // The origin tells a configured channel (404, briefly cached) from an unknown one by
        // whether the store has it.
        store.channel(name);
        metrics.channel_live.with_label_values(&[name]).set(0);
        Arc::new(Self {
            name: name.to_owned(),
            live: Mutex::new(None),
            thread: Mutex::new(None),
            history: Arc::new(Mutex::new(History::default())),
            posted_metadata: Mutex::new(VecDeque::new()),
            metadata_latest: Arc::new(AtomicU32::new(0)),
            backend_series: Mutex::new(Vec::new()),
            publisher: Mutex::new(None),
            source: Mutex::new(None),
            backend: Mutex::new(None),
            ingest_samples: Mutex::new([None, None]),
            request_samples: Mutex::new([None, None]),
        })
    }
}

/// The live publish of a channel.
struct LivePublish {
    /// Tells this publish from the one that replaces it (see [`TAKEOVER_SILENCE`]).
    id: u64,
    /// Sends the publisher away.
    kick: CancellationToken,
    /// When its connection last received bytes ([`crate::ingest::activity_clock`]).
    activity: Arc<AtomicU64>,
}

/// A live publisher that has sent nothing for this long gives way to a new connection on its
/// stream key. An encoder that lost its network (OBS reconnecting after a Wi-Fi drop) comes back
/// on a new connection while the old one still looks open, until the idle timeout; a publisher
/// that is sending is never displaced, so a second encoder on the same key is still refused.
const TAKEOVER_SILENCE: Duration = Duration::from_secs(2);

/// Ids of publishes, unique in the process.
static PUBLISH_IDS: AtomicU64 = AtomicU64::new(1);

/// What a configuration reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    /// Channels whose stream key, ladder or container changed; their next publish uses it.
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Removed channels whose publish goes on until the publisher leaves (or whose last publish
    /// is still flushing); a later reload forgets them.
    pub still_live: Vec<String>,
    /// Changed settings that take a restart; their running values are kept.
    pub restart_only: Vec<String>,
}

/// Posted metadata the channel thread has not stamped yet; more than a few means it is stuck.
const POSTED_METADATA_LIMIT: usize = 64;
/// Stamped metadata kept for rendition publishers that have not taken it yet.
const BOARD_LIMIT: usize = 64;

impl Channels {
    pub fn new(config: Arc<Config>, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        let channels =
            config.channels.iter().map(|c| (c.name.clone(), ChannelState::new(&c.name, &store, &metrics))).collect();
        let placer = Placer::with_gauge(config.transcode.max_sessions_per_gpu, metrics.gpu_nvenc_sessions.clone());
        Self {
            config: RwLock::new(config),
            store,
            metrics,
            channels: RwLock::new(channels),
            draining: AtomicBool::new(false),
            placer,
        }
    }

    /// The configuration in force: what new publishes, the admin API and the channel list use.
    pub fn config(&self) -> Arc<Config> {
        read(&self.config).clone()
    }

    fn state(&self, channel: &str) -> Option<Arc<ChannelState>> {
        read(&self.channels).get(channel).cloned()
    }

    fn all_states(&self) -> Vec<Arc<ChannelState>> {
        read(&self.channels).values().cloned().collect()
    }

    /// Replaces the configuration that new publishes use (SIGHUP). Channels, stream keys,
    /// ladders, `transcode` and the admin API's token and metadata limits take effect at once;
    /// live publishes keep the configuration they started with until their publisher leaves. A
    /// channel removed while live stays live until then. Settings that only a restart applies (all
    /// of `rtmp` and `http`, `admin.listen`, `hls` timing and containers, `log`,
    /// `transcode.max_sessions_per_gpu`, TLS on or off) keep their running values and are named in
    /// the returned summary.
    pub fn reload(&self, new: Config) -> ReloadSummary {
        let mut new = new;
        let old = self.config();
        let mut restart_only = Vec::new();
        // Keep the running values of what a restart applies, so that what the daemon reports as
        // its configuration is what it runs.
        macro_rules! keep {
            ($($field:ident).+, $name:expr) => {
                if new.$($field).+ != old.$($field).+ {
                    restart_only.push($name.to_string());
                    new.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        keep!(rtmp, "rtmp");
        keep!(http, "http");
        keep!(admin.listen, "admin.listen");
        keep!(hls.segment_duration, "hls.segment_duration");
        keep!(hls.part_duration, "hls.part_duration");
        keep!(hls.window, "hls.window");
        keep!(log, "log");
        // New certificate paths apply (the daemon reads them); turning TLS on or off takes
        // listeners, so a restart.
        if new.tls.is_some() != old.tls.is_some() {
            restart_only.push("tls".into());
            new.tls = old.tls.clone();
        }
        keep!(transcode.max_sessions_per_gpu, "transcode.max_sessions_per_gpu");
        // A channel's playlists continue across publishes, and fMP4 and TS segments cannot share
        // one (the TS ones would follow the fMP4 EXT-X-MAP): the container a channel has keeps.
        keep!(hls.container, "hls.container");
        for c in &mut new.channels {
            if let Some(before) = old.channel(&c.name)
                && old.container(before) != new.hls.container_for(c)
            {
                restart_only.push(format!("channels[{}].container", c.name));
                c.container = before.container;
            }
        }

        let mut summary = ReloadSummary { restart_only, ..ReloadSummary::default() };
        let new = Arc::new(new);
        {
            let mut channels = write(&self.channels);
            for c in &new.channels {
                match old.channel(&c.name) {
                    None => summary.added.push(c.name.clone()),
                    // Its own settings, or the rungs of its ladder.
                    Some(before) if before != c || old.ladders.get(&before.ladder) != new.ladders.get(&c.ladder) => {
                        summary.changed.push(c.name.clone())
                    }
                    Some(_) => {}
                }
                channels
                    .entry(c.name.clone())
                    .or_insert_with(|| ChannelState::new(&c.name, &self.store, &self.metrics));
            }
            // Drop the channels no longer configured, unless a publish still runs on them.
            let gone: Vec<String> = channels.keys().filter(|n| new.channel(n).is_none()).cloned().collect();
            for name in gone {
                // A channel still publishing, or whose thread still flushes after its publisher
                // left, stays until a later reload: forgetting it now would let that thread bring
                // back the metric series (and store entries) of a channel no longer configured.
                let idle = channels.get(&name).is_some_and(|s| {
                    lock(&s.live).is_none() && lock(&s.thread).as_ref().is_none_or(|t| t.is_finished())
                });
                if old.channel(&name).is_some() {
                    summary.removed.push(name.clone());
                }
                if idle {
                    channels.remove(&name);
                    self.store.remove_channel(&name);
                    self.metrics.forget_channel(&name);
                } else {
                    summary.still_live.push(name);
                }
            }
            *write(&self.config) = new;
        }
        summary
    }

    /// Refuses new publishes and ends the live ones; returns once every channel has flushed its
    /// last segment and ended its playlists.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let states = self.all_states();
        for state in &states {
            if let Some(live) = lock(&state.live).as_ref() {
                live.kick.cancel();
            }
        }
        for state in &states {
            let handle = lock(&state.thread).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }

    pub fn is_live(&self, channel: &str) -> bool {
        self.state(channel).is_some_and(|s| lock(&s.live).is_some())
    }

    /// Queues a timed-metadata payload (already validated: UTF-8, 1..=1024 bytes) for a live
    /// channel. It is stamped with the presentation time of the next video frame the channel
    /// packages and inserted in every rendition at that time.
    pub fn post_metadata(&self, channel: &str, payload: Bytes) -> Result<(), PostError> {
        let state = self.state(channel).ok_or(PostError::UnknownChannel)?;
        // Holding `live` while queueing keeps a publish from ending between the check and the push.
        let live = lock(&state.live);
        if live.is_none() {
            return Err(PostError::NotLive);
        }
        let mut queue = lock(&state.posted_metadata);
        if queue.len() >= POSTED_METADATA_LIMIT {
            queue.pop_front();
            tracing::warn!(channel, "timed metadata is not being stamped (no video?); the oldest post was dropped");
        }
        queue.push_back((payload, SystemTime::now()));
        Ok(())
    }
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

/// Read-only status for the admin API, and the disconnect it offers.
impl Channels {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sends the live publisher of `channel` away: its connection is closed, and the channel
    /// flushes and ends its playlists as when a publisher leaves.
    pub fn disconnect(&self, channel: &str) -> Result<(), PostError> {
        let state = self.state(channel).ok_or(PostError::UnknownChannel)?;
        let live = lock(&state.live);
        live.as_ref().ok_or(PostError::NotLive)?.kick.cancel();
        tracing::info!(channel, "publisher disconnected through the admin API");
        Ok(())
    }

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
        let h = lock(&state.history);
        // Variants highest first, then audio, then renditions only earlier publishes had.
        let order: Vec<&String> = h.variants.iter().map(|(n, _)| n).chain(h.audio.iter()).collect();
        let rest = h.renditions.keys().filter(|n| !order.contains(n));
        let renditions = order
            .iter()
            .copied()
            .chain(rest)
            .filter_map(|name| {
                let log = h.renditions.get(name)?;
                Some(RenditionStatus {
                    name: name.clone(),
                    width: log.width,
                    height: log.height,
                    codec: log.codec.clone(),
                    bandwidth: measured(log).map(|(peak, _)| peak),
                    frame_rate: (log.frame_rate > 0.0).then_some(log.frame_rate),
                    last_msn: log.segments.back().and_then(|_| log.next_msn.checked_sub(1)),
                    segments_in_window: log.segments.len(),
                    ended: log.ended,
                })
            })
            .collect();
        drop(h);
        Some(ChannelStatus {
            name: channel.to_string(),
            live,
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

/// A serializable copy of a session's [`StagePlan`].
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub decode: &'static str,
    pub scale: &'static str,
    pub encode: &'static str,
    pub gpu: Option<u32>,
    pub refused: Vec<RefusedStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedStatus {
    pub stage: &'static str,
    pub backend: &'static str,
    /// The fixed cause, as in `ladderd_backend_fallbacks_total{reason}`.
    pub cause: &'static str,
    pub reason: String,
}

impl BackendStatus {
    fn of(plan: &StagePlan) -> Self {
        Self {
            decode: plan.decode.name(),
            scale: plan.scale.name(),
            encode: plan.encode.name(),
            gpu: plan.gpu,
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

/// Why timed metadata (or a disconnect) was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    UnknownChannel,
    NotLive,
}

impl PublishGate for Channels {
    fn begin(&self, app: &str, stream_key: &str, peer: SocketAddr) -> Result<Publish, Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        // The channel map stays read-locked until this publish is in its channel's `live` slot and
        // its thread is recorded: a reload cannot drop the channel in between (it takes the map
        // for writing, and replaces the configuration inside that), and a drain that begins
        // meanwhile finds both, to kick and to join.
        let channels = read(&self.channels);
        let config = self.config();
        if app != config.rtmp.app {
            return Err(Refusal::BadApp);
        }
        let channel = config.channel_by_key(stream_key).ok_or(Refusal::UnknownKey)?.clone();
        let name = &channel.name;
        let state = channels.get(name).cloned().ok_or(Refusal::UnknownKey)?;
        let mut live = lock(&state.live);
        // Again under the lock: drain sets the flag before it takes any channel's `live`.
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        if let Some(current) = live.as_ref() {
            let silent_ms = crate::ingest::activity_clock().saturating_sub(current.activity.load(Ordering::Relaxed));
            if silent_ms < TAKEOVER_SILENCE.as_millis() as u64 {
                return Err(Refusal::Busy);
            }
            // The live connection has gone quiet: it is most likely this same encoder's, left
            // behind by a reconnect. Send it away; its thread flushes before the new one starts.
            tracing::info!(channel = %name, %peer, silent_ms, "the live publisher is silent; the new connection takes over");
            current.kick.cancel();
            self.metrics.publisher_takeovers.with_label_values(&[name]).inc();
        }
        let kick = CancellationToken::new();
        let id = PUBLISH_IDS.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(AtomicU64::new(crate::ingest::activity_clock()));

        let (tx, rx) = mpsc::channel(INGEST_QUEUE);
        let ctx = PublishContext {
            placer: self.placer.clone(),
            state: state.clone(),
            channel: channel.clone(),
            config: config.clone(),
            objects: self.store.channel(name),
            metrics: self.metrics.clone(),
            kick: kick.clone(),
            id,
        };
        let mut thread = lock(&state.thread);
        let previous = thread.take();
        let (previous_tx, previous_rx) = std::sync::mpsc::channel::<Option<JoinHandle<()>>>();
        let spawned = std::thread::Builder::new().name(format!("ch-{name}")).spawn(move || {
            // The previous publish may still be flushing its last segments; keep the order.
            if let Ok(Some(p)) = previous_rx.recv() {
                let _ = p.join();
            }
            run_publish(ctx, rx);
        });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(channel = %name, error = %e, "cannot start channel thread");
                *thread = previous;
                return Err(Refusal::Draining);
            }
        };
        let _ = previous_tx.send(previous);
        *thread = Some(handle);
        *live = Some(LivePublish { id, kick: kick.clone(), activity: activity.clone() });
        // Set under `live` so that a status read never pairs this publish with the last one's facts.
        let since = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        *lock(&state.publisher) = Some(PublisherStatus { peer: peer.to_string(), since });
        *lock(&state.source) = None;
        self.metrics.publishes.with_label_values(&[name]).inc();
        self.metrics.channel_live.with_label_values(&[name]).set(1);
        tracing::info!(channel = %name, %peer, "publish started");
        drop(thread);
        drop(live);
        drop(channels);
        Ok(Publish { channel: name.clone(), media: tx, kick, activity })
    }
}

struct PublishContext {
    placer: Placer,
    state: Arc<ChannelState>,
    /// The channel's configuration when the publish began; a reload applies to the next one.
    channel: ChannelConfig,
    /// The whole configuration when the publish began.
    config: Arc<Config>,
    objects: Arc<ChannelObjects>,
    metrics: Arc<Metrics>,
    kick: CancellationToken,
    /// This publish's id in the channel's `live` slot.
    id: u64,
}

/// How long a publish may send audio with no video to start the ladder before a warning says so.
const AUDIO_ALONE_WARNING: Duration = Duration::from_secs(5);

/// The channel thread of one publish: runs until the publisher leaves, then flushes.
fn run_publish(ctx: PublishContext, rx: mpsc::Receiver<Arrival>) {
    let name = ctx.channel.name.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| publish_loop(&ctx, rx)));
    if outcome.is_err() {
        ctx.metrics.pipeline_errors.with_label_values(&[&name, "panic"]).inc();
        tracing::error!(channel = %name, "channel pipeline panicked; publish ended");
        ctx.kick.cancel();
        // The loop did not get to free the channel: do it, unless a new publish already has it.
        release_live(&ctx);
        ctx.objects.remove(THUMBNAIL);
    }
    tracing::info!(channel = %name, "publish ended");
}

/// Frees the channel's `live` slot if it still holds this publish, with the posts waiting to be
/// stamped and the live gauge; whether another publish holds it (took the channel over).
fn release_live(ctx: &PublishContext) -> bool {
    let mut live = lock(&ctx.state.live);
    match live.as_ref() {
        Some(l) if l.id == ctx.id => {
            *live = None;
            // Posts not yet stamped belong to this publish, not to the next one.
            lock(&ctx.state.posted_metadata).clear();
            ctx.metrics.channel_live.with_label_values(&[&ctx.channel.name]).set(0);
            false
        }
        Some(_) => true,
        None => false,
    }
}

fn publish_loop(ctx: &PublishContext, mut rx: mpsc::Receiver<Arrival>) {
    let name = &ctx.channel.name;
    let mut video_params: Option<VideoParams> = None;
    let mut audio_params: Option<AudioParams> = None;
    let mut session: Option<Session> = None;
    let mut dropped_before_start = 0u64;
    let (mut audio_alone_since, mut warned_audio_alone) = (None::<SystemTime>, false);
    // Before the first keyframe there is no ladder yet, so these drops belong to no rung.
    let awaiting_keyframe =
        ctx.metrics.frames_dropped.with_label_values(&[name, "", DropReason::AwaitingKeyframe.as_str()]);

    while let Some(arrival) = rx.blocking_recv() {
        // Sent away (disconnect, drain, or a new connection took over): what is still queued is
        // not this publish's to package any more, and must not touch what is now the successor's
        // (posted metadata, the source in the status).
        if ctx.kick.is_cancelled() {
            break;
        }
        let result = match arrival.packet {
            MediaPacket::VideoParams(p) => {
                if session.as_ref().is_some_and(|s| s.source != p) {
                    restart(ctx, &mut session, "video parameters changed");
                }
                video_params = Some(p);
                Ok(())
            }
            MediaPacket::AudioParams(p) => {
                if session.as_ref().is_some_and(|s| s.audio_params.as_ref() != Some(&p)) {
                    restart(ctx, &mut session, "audio parameters changed");
                }
                audio_params = Some(p);
                Ok(())
            }
            MediaPacket::Video(sample) => {
                if session.is_none() {
                    match (&video_params, sample.keyframe) {
                        (Some(vp), true) => {
                            match Session::start(ctx, vp.clone(), audio_params.clone(), sample.pts, arrival.at) {
                                Ok(s) => {
                                    session = Some(s);
                                    // Audio before this keyframe was not alone for long; a later
                                    // restart counts afresh.
                                    (audio_alone_since, warned_audio_alone) = (None, false);
                                }
                                Err(e) => {
                                    tracing::error!(channel = %name, error = %e, "cannot start the pipeline; ending the publish");
                                    ctx.metrics.pipeline_errors.with_label_values(&[name, "start"]).inc();
                                    break;
                                }
                            }
                        }
                        _ => {
                            dropped_before_start += 1;
                            awaiting_keyframe.inc();
                            continue;
                        }
                    }
                }
                if session.is_some() {
                    stamp_posted_metadata(ctx, sample.pts);
                }
                match session.as_mut() {
                    Some(s) => s.video(sample, arrival.at),
                    None => Ok(()),
                }
            }
            MediaPacket::Metadata { pts, payload } => {
                if session.is_some() {
                    put_on_board(ctx, pts, &payload, arrival.at);
                }
                Ok(())
            }
            MediaPacket::Audio(sample) => match session.as_mut() {
                Some(s) => s.audio(sample, arrival.at),
                None => {
                    // Audio is packaged beside the video ladder, never alone: a publisher that
                    // sends only audio (or whose video never starts) publishes nothing, so say so.
                    let first = *audio_alone_since.get_or_insert(arrival.at);
                    if !warned_audio_alone && arrival.at.duration_since(first).is_ok_and(|d| d >= AUDIO_ALONE_WARNING) {
                        warned_audio_alone = true;
                        tracing::warn!(
                            channel = %name,
                            seconds = AUDIO_ALONE_WARNING.as_secs(),
                            has_video_parameters = video_params.is_some(),
                            "audio but no H.264 keyframe yet: nothing is published until the video starts \
                             (audio-only channels are not served)"
                        );
                    }
                    Ok(())
                }
            },
        };
        if let Err(e) = result {
            tracing::error!(channel = %name, error = %e, "pipeline failed; ending the publish");
            ctx.metrics.pipeline_errors.with_label_values(&[name, e.stage()]).inc();
            break;
        }
    }
    // The publisher is gone (or is being sent away): the channel is free for the next one while
    // this thread flushes.
    ctx.kick.cancel();
    drop(rx);
    // Unless a new publish has taken the channel over already: then the slot, the posts waiting to
    // be stamped and the live gauge are the new publish's, and the playlists stay open for it (an
    // ENDLIST now would make players stop before the new publisher's first segment).
    let superseded = release_live(ctx);
    if dropped_before_start > 0 {
        tracing::debug!(channel = %name, packets = dropped_before_start, "dropped video before the first keyframe");
    }
    match session {
        Some(s) => s.finish(superseded),
        None if !superseded => end_open_playlists(ctx),
        None => {}
    }
    // The thumbnail shows the stream live; once it is over there is none (its thread has been
    // joined by the transcoder's finish, so no later one comes).
    ctx.objects.remove(THUMBNAIL);
}

/// A publisher of one rendition of this publish; `anchor` is the wall-clock time of pts 0.
fn rendition_publisher(ctx: &PublishContext, rendition: &str, anchor: SystemTime) -> RenditionPublisher {
    RenditionPublisher {
        channel: ctx.channel.name.clone(),
        rendition: rendition.to_string(),
        history: ctx.state.history.clone(),
        objects: ctx.objects.clone(),
        metrics: ctx.metrics.clone(),
        config: ctx.config.clone(),
        segmenter: None,
        track: None,
        anchor,
        metadata_latest: ctx.state.metadata_latest.clone(),
        metadata_seen: ctx.state.metadata_latest.load(Ordering::Acquire),
        container: ctx.config.container(&ctx.channel),
        finished: false,
    }
}

/// Ends every playlist of the channel still open: after a publish that never started a session,
/// playlists a predecessor left open for it (it was taken over) would otherwise stay open.
fn end_open_playlists(ctx: &PublishContext) {
    let open: Vec<String> =
        lock(&ctx.state.history).renditions.iter().filter(|(_, log)| !log.ended).map(|(n, _)| n.clone()).collect();
    for rendition in open {
        rendition_publisher(ctx, &rendition, SystemTime::now()).end();
    }
}

/// Where a session's stages run: places the channel on a GPU (or not), applies `on_gpu_full`,
/// chooses each stage's backend, logs refusals, and exports `ladderd_backend_info`. Returns the
/// ladder plan without the rungs `drop_top_rung` left out.
fn place(
    ctx: &PublishContext,
    mut plan: ladder::Plan,
) -> Result<(ladder::Plan, StagePlan, Option<SessionGuard>), SessionError> {
    let name = &ctx.channel.name;
    let transcode = &ctx.config.transcode;
    let hardware = transcode.hardware_for(&ctx.channel.ladder);
    let mut placement = if hardware == Hardware::Cpu || plan.encoded.is_empty() {
        Placement::cpu(plan.encoded.len(), None)
    } else {
        let probe = gpu::probe_cached();
        // Engines from the probe, how busy each GPU is from NVML now (read at most every 2 s).
        let live = gpu::live_stats();
        let gpus: Vec<GpuState> = probe
            .gpus
            .iter()
            .map(|g| g.placement_state(live.iter().find(|s| s.index == g.index), ctx.placer.held(g.index)))
            .collect();
        let mut placement =
            ctx.placer.place(name, plan.encoded.len(), &gpus, &transcode.gpus, transcode.on_gpu_full)?;
        if gpus.is_empty() && placement.reason.is_none() {
            placement.reason =
                probe.driver.as_ref().err().map(|e| Unavailable::new(FallbackReason::NoDriver, e.clone()));
        }
        placement
    };
    let offer = if hardware == Hardware::Cpu {
        // Not consulted: `cpu` puts every stage on the CPU without probing.
        let no = || Err("transcode.hardware is cpu".to_string());
        NvidiaOffer { decode: no(), scale: no(), encode: no() }
    } else {
        gpu::probe_cached().nvidia_offer(placement.gpu)
    };
    let stages = backend::choose_placed(hardware, &offer, &mut placement)?;
    *lock(&ctx.state.backend) = Some(BackendStatus::of(&stages));
    if !stages.refused.is_empty() {
        let reasons: Vec<String> = stages.refused.iter().map(ToString::to_string).collect();
        tracing::warn!(channel = %name, refused = %reasons.join("; "), "hardware backends refused; those stages run on the CPU");
    }
    let dropped: Vec<String> =
        plan.encoded.iter().enumerate().filter(|(i, _)| !placement.keeps(*i)).map(|(_, r)| r.name.clone()).collect();
    if !dropped.is_empty() {
        tracing::warn!(channel = %name, rungs = %dropped.join(", "), "GPU full (on_gpu_full: drop_top_rung): rungs left out");
        let keep: Vec<bool> = (0..plan.encoded.len()).map(|i| placement.keeps(i)).collect();
        let mut k = keep.iter();
        plan.encoded.retain(|_| k.next().copied().unwrap_or(true));
        plan.skipped.extend(dropped.into_iter().map(|n| (n, "GPU full".to_string())));
    }
    tracing::info!(
        channel = %name,
        decode = stages.decode.name(),
        scale = stages.scale.name(),
        encode = stages.encode.name(),
        gpu = ?stages.gpu,
        "transcode backends chosen"
    );
    let mut previous = lock(&ctx.state.backend_series);
    let names = plan.encoded.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    *previous = stages.export(&ctx.metrics, name, &names, &previous);
    drop(previous);
    Ok((plan, stages, placement.sessions.take()))
}

/// Where a session's thumbnails go: `thumb.jpg` in the channel's objects, cacheable until the
/// next one (`hls.thumbnail_interval`, 0: none).
fn thumbnails(ctx: &PublishContext) -> Option<ThumbnailSpec> {
    let every = ctx.config.hls.thumbnail_interval;
    if every <= 0.0 {
        return None;
    }
    let objects = ctx.objects.clone();
    let max_age = every.ceil().max(1.0) as u32;
    let sink = Arc::new(move |jpeg: Bytes| {
        objects.put(THUMBNAIL, Object::new(vec![jpeg], content_type(THUMBNAIL), Cacheability::Refreshed(max_age)));
    });
    Some(ThumbnailSpec { interval: secs_to_ticks(every), sink })
}

/// Stamps the metadata posted through the API with `pts`, the next video frame to be packaged.
fn stamp_posted_metadata(ctx: &PublishContext, pts: Ticks) {
    let posted: Vec<(Bytes, SystemTime)> = lock(&ctx.state.posted_metadata).drain(..).collect();
    for (payload, at) in posted {
        put_on_board(ctx, pts, &payload, at);
    }
}

/// Makes `payload` an ID3 tag at `pts` for every rendition of the channel.
fn put_on_board(ctx: &PublishContext, pts: Ticks, payload: &[u8], posted: SystemTime) {
    let tag = match id3::txxx_tag("", payload) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(channel = %ctx.channel.name, error = %e, "timed metadata dropped");
            return;
        }
    };
    let mut h = lock(&ctx.state.history);
    let id = h.board.next_id.max(1);
    h.board.next_id = id.wrapping_add(1).max(1);
    h.board.entries.push_back(BoardEntry { metadata: Metadata { pts, id, tag }, posted, published: false });
    while h.board.entries.len() > BOARD_LIMIT {
        h.board.entries.pop_front();
    }
    drop(h);
    ctx.state.metadata_latest.store(id, Ordering::Release);
    tracing::debug!(channel = %ctx.channel.name, id, pts, "timed metadata stamped");
}

/// Ends the session without ending its playlists; the next keyframe starts a new one with the
/// new parameters (a new ladder plan, new init segments, a discontinuity in every rendition).
fn restart(ctx: &PublishContext, session: &mut Option<Session>, why: &str) {
    if let Some(s) = session.take() {
        tracing::info!(channel = %ctx.channel.name, reason = why, "restarting the ladder at the next keyframe");
        s.finish(true);
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("transcode: {0}")]
    Transcode(#[from] crate::transcode::TranscodeError),
    #[error(
        "the source ({width}x{height}) is smaller than every rung of ladder {ladder:?} and the ladder has no passthrough rung"
    )]
    NothingToEncode { ladder: String, width: u32, height: u32 },
    #[error(
        "no source keyframe for {secs:.1} s: a ladder with a passthrough rung cuts segments on the source's keyframes, so the publisher's keyframe interval should be at most hls.segment_duration ({target} s)"
    )]
    KeyframesTooFarApart { secs: f64, target: f64 },
    #[error("audio went on for {secs:.1} s without video; segments cannot be cut")]
    NoVideo { secs: f64 },
    #[error("{0}")]
    NoHardware(#[from] NoHardware),
    #[error("{0}")]
    GpuFull(#[from] Rejected),
}

impl SessionError {
    /// The `stage` label of `ladderd_pipeline_errors_total`.
    fn stage(&self) -> &'static str {
        match self {
            SessionError::Transcode(_) => "transcode",
            SessionError::NothingToEncode { .. } | SessionError::NoHardware(_) | SessionError::GpuFull(_) => "start",
            SessionError::KeyframesTooFarApart { .. } | SessionError::NoVideo { .. } => "ingest",
        }
    }
}

/// With source-keyframe alignment, how many segment targets may pass without a cut before the
/// publish is ended: bounds the memory an open segment holds and says clearly what is wrong.
const MAX_SEGMENT_TARGETS: i64 = 5;

/// The stages of one publish (or of one stretch of it with unchanged stream parameters).
struct Session {
    /// The parameters this session was started with; a change restarts it.
    source: VideoParams,
    audio_params: Option<AudioParams>,
    history: Arc<Mutex<History>>,
    /// Longest a segment may grow with source-keyframe alignment.
    max_segment: Ticks,
    transcoder: Option<Transcoder>,
    passthrough: Option<(RenditionPublisher, SegmentClock)>,
    audio: Option<AudioTrack>,
    /// NVENC sessions held on a GPU while this session's encoders run; last, so that it is
    /// dropped after the transcoder.
    _sessions: Option<SessionGuard>,
}

struct AudioTrack {
    publisher: RenditionPublisher,
    /// With cadence alignment, audio cuts on the cadence by itself.
    clock: SegmentClock,
    /// The pts of the latest video cut not yet followed by audio. The session starts with the
    /// first video keyframe here, so audio's first segment starts with video's in both modes.
    pending_cut: Option<Ticks>,
    /// Whether audio has made its first cut.
    started: bool,
    /// Pts of audio's latest cut.
    last_cut: Ticks,
    alignment: Alignment,
}

impl Session {
    fn start(
        ctx: &PublishContext,
        source: VideoParams,
        audio: Option<AudioParams>,
        first_pts: Ticks,
        first_arrival: SystemTime,
    ) -> Result<Session, SessionError> {
        let name = &ctx.channel.name;
        let ladder_name = &ctx.channel.ladder;
        let rungs = ctx.config.ladders.get(ladder_name).map(Vec::as_slice).unwrap_or_default();
        let plan = ladder::plan(rungs, source.width, source.height);
        for (rung, why) in &plan.skipped {
            tracing::info!(channel = %name, rung = %rung, reason = %why, "rung left out");
        }
        if plan.encoded.is_empty() && plan.passthrough.is_none() {
            return Err(SessionError::NothingToEncode {
                ladder: ladder_name.clone(),
                width: source.width,
                height: source.height,
            });
        }
        *lock(&ctx.state.source) = Some(SourceStatus {
            width: source.width,
            height: source.height,
            codec: source.codec.clone(),
            audio_codec: audio.as_ref().map(|a| a.codec.clone()),
        });
        let (plan, stages, sessions) = place(ctx, plan)?;
        let alignment = if plan.passthrough.is_some() { Alignment::SourceKeyframes } else { Alignment::Cadence };
        let target = secs_to_ticks(ctx.config.hls.segment_duration);

        // Variants in the master playlist, highest first: passthrough, then the rungs as configured.
        let mut video: Vec<(String, Option<u64>)> = Vec::new();
        if let Some(p) = &plan.passthrough {
            video.push((p.clone(), None));
        }
        video.extend(plan.encoded.iter().map(|r| (r.name.clone(), Some(r.bitrate))));
        let renditions: Vec<String> =
            video.iter().map(|(n, _)| n.clone()).chain(audio.iter().map(|_| AUDIO.to_string())).collect();
        // Wall-clock time of pts 0, so that EXT-X-PROGRAM-DATE-TIME = anchor + pts.
        let anchor = first_arrival - Duration::from_secs_f64(ticks_to_secs(first_pts.max(0)));
        let audio_params = audio.clone();
        {
            let mut h = lock(&ctx.state.history);
            h.begin_publish(renditions.clone(), &ctx.objects, &ctx.config);
            h.variants = video.clone();
            h.audio = audio.as_ref().map(|_| AUDIO.to_string());
        }
        // Renditions of an earlier session that this one does not have (a source that got
        // smaller, a rung that failed) are ended, so that no player waits on them.
        let stale: Vec<String> = lock(&ctx.state.history)
            .renditions
            .iter()
            .filter(|(name, log)| !log.ended && !renditions.contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        let publisher = |rendition: &str| rendition_publisher(ctx, rendition, anchor);

        for name in &stale {
            publisher(name).end();
        }
        let passthrough = plan.passthrough.as_ref().map(|p| {
            let mut publisher = publisher(p);
            publisher.start_track(TrackParams::Video(source.clone()));
            (publisher, SegmentClock::new(target, alignment))
        });
        let audio = audio.map(|a| {
            let mut publisher = publisher(AUDIO);
            publisher.start_track(TrackParams::Audio(a));
            AudioTrack {
                publisher,
                clock: SegmentClock::new(target, Alignment::Cadence),
                pending_cut: Some(first_pts),
                started: false,
                last_cut: first_pts,
                alignment,
            }
        });
        let transcoder = if plan.encoded.is_empty() {
            None
        } else {
            let sinks: Vec<Box<dyn RenditionSink>> =
                plan.encoded.iter().map(|r| Box::new(publisher(&r.name)) as Box<dyn RenditionSink>).collect();
            let spec = TranscodeSpec {
                channel: name.clone(),
                source: source.clone(),
                rungs: plan.encoded.clone(),
                alignment,
                segment_target: target,
                x264_preset: ctx.config.transcode.x264_preset.clone(),
                max_frame_rate: ctx.config.transcode.max_frame_rate,
                encoder_threads: ctx.config.transcode.encoder_threads,
                hardware: ctx.config.transcode.hardware_for(ladder_name),
                encoders: plan
                    .encoded
                    .iter()
                    .map(|_| match (stages.encode, stages.gpu) {
                        (Backend::Nvidia, Some(gpu)) => EncoderChoice::Nvenc { gpu },
                        _ => EncoderChoice::X264,
                    })
                    .collect(),
                decoder: match (stages.decode, stages.scale, stages.gpu) {
                    // Decode and scale on the GPU: the zero-copy path (pictures stay on the GPU).
                    (Backend::Nvidia, Backend::Nvidia, Some(gpu)) => DecoderChoice::NvdecCuda { gpu },
                    (Backend::Nvidia, _, Some(gpu)) => DecoderChoice::Nvdec { gpu },
                    _ => DecoderChoice::Cpu,
                },
                thumbnails: thumbnails(ctx),
                rung_queue: crate::transcode::pipeline::RUNG_QUEUE,
            };
            Some(Transcoder::start(spec, sinks, ctx.metrics.clone())?)
        };
        Ok(Session {
            _sessions: sessions,
            source,
            audio_params,
            history: ctx.state.history.clone(),
            max_segment: target * MAX_SEGMENT_TARGETS,
            transcoder,
            passthrough,
            audio,
        })
    }

    fn video(&mut self, sample: Sample, at: SystemTime) -> Result<(), SessionError> {
        if let Some((publisher, clock)) = self.passthrough.as_mut() {
            let mut s = sample.clone();
            s.segment_start = clock.is_cut(s.pts, s.keyframe);
            if s.segment_start {
                if let Some(a) = self.audio.as_mut() {
                    a.pending_cut = Some(s.pts);
                }
            } else if let Some(last) = clock.last_cut()
                && s.pts - last > self.max_segment
            {
                return Err(SessionError::KeyframesTooFarApart {
                    secs: ticks_to_secs(s.pts - last),
                    target: ticks_to_secs(self.max_segment / MAX_SEGMENT_TARGETS),
                });
            }
            publisher.packet(EncodedPacket { sample: s, ingest_time: at });
        }
        if let Some(t) = self.transcoder.as_mut() {
            t.push(sample, at)?;
        }
        Ok(())
    }

    fn audio(&mut self, mut sample: Sample, at: SystemTime) -> Result<(), SessionError> {
        let Some(a) = self.audio.as_mut() else { return Ok(()) };
        sample.segment_start = if !a.started || a.alignment == Alignment::SourceKeyframes {
            // Cut on the first frame at or after the pending video cut.
            match a.pending_cut {
                Some(cut) if sample.pts >= cut => {
                    a.pending_cut = None;
                    if !a.started && a.alignment == Alignment::Cadence {
                        // Starts audio's own cadence from the same bucket as video's first cut.
                        a.clock.is_audio_cut(sample.pts);
                    }
                    a.started = true;
                    true
                }
                _ => false,
            }
        } else {
            a.clock.is_audio_cut(sample.pts)
        };
        if sample.segment_start {
            a.last_cut = sample.pts;
        } else if a.started && a.alignment == Alignment::SourceKeyframes && sample.pts - a.last_cut > self.max_segment {
            return Err(SessionError::NoVideo { secs: ticks_to_secs(sample.pts - a.last_cut) });
        }
        a.publisher.packet(EncodedPacket { sample, ingest_time: at });
        Ok(())
    }

    /// Flushes every rendition. `restart`: another session follows at once, so the playlists
    /// stay open (no ENDLIST) and continue after a discontinuity.
    fn finish(self, restart: bool) {
        lock(&self.history).restarting = restart;
        if let Some(t) = self.transcoder
            && let Err(e) = t.finish()
        {
            tracing::warn!(error = %e, "transcoder did not flush cleanly");
        }
        if let Some((p, _)) = self.passthrough {
            Box::new(p).finish();
        }
        if let Some(a) = self.audio {
            Box::new(a.publisher).finish();
        }
        lock(&self.history).restarting = false;
    }
}

/// What a channel remembers across publishes.
#[derive(Default)]
struct History {
    renditions: BTreeMap<String, RenditionLog>,
    /// Video variants of the current (or last) publish, highest first, with their nominal bitrate.
    variants: Vec<(String, Option<u64>)>,
    audio: Option<String>,
    /// The master playlist as last published.
    master: String,
    /// The session being finished is followed by another: keep the playlists open.
    restarting: bool,
    /// Timed metadata stamped for the renditions of the current publish.
    board: MetadataBoard,
}

#[derive(Default)]
struct MetadataBoard {
    entries: VecDeque<BoardEntry>,
    next_id: u32,
}

struct BoardEntry {
    metadata: Metadata,
    /// When it was posted (API) or arrived (RTMP), for `ladderd_metadata_latency_seconds`.
    posted: SystemTime,
    /// A part carrying it has been published in some rendition.
    published: bool,
}

/// One rendition's playlist state.
struct RenditionLog {
    segments: VecDeque<LoggedSegment>,
    /// Names of objects that left the playlist but stay a little longer in the store.
    /// (segment, init segment if no remaining segment uses it, the segment's parts).
    leaving: VecDeque<(String, Option<String>, Vec<String>)>,
    /// Media sequence number of `segments[0]` (or of the next segment when empty).
    media_sequence: u64,
    next_msn: u64,
    discontinuity_sequence: u64,
    target_duration: u64,
    ended: bool,
    /// The next segment starts after a gap (a new publish or new stream parameters).
    discontinuity_next: bool,
    init_uri: Option<String>,
    /// Parts of the segment being built (its number is `next_msn`), and its start time.
    open_parts: Vec<PlaylistPart>,
    open_pdt: Option<SystemTime>,
    /// Facts for the master playlist.
    width: u32,
    height: u32,
    codec: String,
    channels: u8,
    frame_rate: f64,
}

impl RenditionLog {
    /// The last (msn, part index) this rendition has, for `EXT-X-RENDITION-REPORT`.
    fn last_part(&self) -> Option<(u64, Option<u64>)> {
        if !self.open_parts.is_empty() {
            return Some((self.next_msn, Some(self.open_parts.len() as u64 - 1)));
        }
        let last = self.segments.back()?;
        Some((self.next_msn.checked_sub(1)?, last.parts.len().checked_sub(1).map(|p| p as u64)))
    }
}

struct LoggedSegment {
    uri: String,
    map_uri: String,
    duration: f64,
    program_date_time: SystemTime,
    discontinuity: bool,
    bytes: u64,
    parts: Vec<PlaylistPart>,
}

impl RenditionLog {
    /// An empty log whose first segment will be number `msn`.
    fn new(msn: u64, target_duration: u64) -> Self {
        Self {
            segments: VecDeque::new(),
            leaving: VecDeque::new(),
            media_sequence: msn,
            next_msn: msn,
            discontinuity_sequence: 0,
            target_duration,
            ended: false,
            discontinuity_next: false,
            init_uri: None,
            open_parts: Vec::new(),
            open_pdt: None,
            width: 0,
            height: 0,
            codec: String::new(),
            channels: 0,
            frame_rate: 0.0,
        }
    }
}

impl History {
    /// Readies the logs of the renditions of a new publish. A rendition with segments listed
    /// goes on from its own next number: a segment's media sequence number is its position in
    /// the playlist (RFC 8216 §6.2.1), so none can be skipped. Renditions usually end a publish
    /// with the same count, and then keep one common number for the same instant; one that
    /// ended with a segment fewer (audio that stopped before the last video cut) keeps its own
    /// numbers, which §6.3.2 allows: clients match renditions by time, not by number. A new or
    /// emptied rendition starts at the highest number, aligned with the others where it can be.
    fn begin_publish(&mut self, names: Vec<String>, objects: &ChannelObjects, config: &Config) {
        let base = self.renditions.values().map(|r| r.next_msn).max().unwrap_or_else(first_media_sequence);
        let target = config.hls.segment_duration.ceil() as u64;
        for log in self.renditions.values_mut() {
            if log.segments.is_empty() {
                log.next_msn = base;
            }
        }
        for name in &names {
            let log = self.renditions.entry(name.clone()).or_insert_with(|| RenditionLog::new(base, target));
            if log.segments.is_empty() {
                log.media_sequence = base;
            }
            log.discontinuity_next = !log.segments.is_empty();
            log.ended = false;
        }
        // Renditions the new publish does not have are ended by the session that starts it.
        let _ = objects;
    }
}

/// Media sequence numbers start from the wall clock (tenths of a second since the Unix epoch) so
/// that segment names are never reused across restarts: their URLs are cached as immutable.
fn first_media_sequence() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64 / 100).unwrap_or(0)
}

/// Packages one rendition and publishes it into the store: the [`RenditionSink`] behind a rung's
/// encoder, and the writer of the passthrough and audio renditions.
struct RenditionPublisher {
    channel: String,
    rendition: String,
    history: Arc<Mutex<History>>,
    objects: Arc<ChannelObjects>,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    segmenter: Option<Segmenter>,
    /// The parameters the current segmenter was made for.
    track: Option<TrackParams>,
    /// Wall-clock time of pts 0, for EXT-X-PROGRAM-DATE-TIME (one anchor for all renditions).
    anchor: SystemTime,
    /// The channel's latest timed-metadata id, and the latest this rendition has taken.
    metadata_latest: Arc<AtomicU32>,
    metadata_seen: u32,
    container: Container,
    /// `end` ran (or began): the drop guard below has nothing to do.
    finished: bool,
}

impl Drop for RenditionPublisher {
    /// A publisher dropped without `end` — the channel thread panicked — still ends its playlist,
    /// so that players and blocked requests are not left waiting for parts that never come. What
    /// the segmenter holds is dropped unflushed: flushing is what may have panicked.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.segmenter = None;
            self.close_playlist();
        }
    }
}

impl RenditionPublisher {
    /// Starts (or restarts, on new parameters) the track: a new init segment, and a discontinuity
    /// if segments were already published with the old one.
    fn start_track(&mut self, track: TrackParams) {
        // Publishers repeat sequence headers (some every second); only a change starts a new track.
        if self.track.as_ref() == Some(&track) {
            return;
        }
        let had_track = self.track.replace(track.clone()).is_some();
        if let Some(mut old) = self.segmenter.take() {
            self.publish_output(old.finish_parts());
        }
        let part_target = secs_to_ticks(self.config.hls.part_duration);
        let segmenter = Segmenter::with_parts(track.clone(), Some(part_target)).with_container(self.container);
        let mut h = lock(&self.history);
        let log = h.renditions.get_mut(&self.rendition).expect("rendition log created at publish start");
        if had_track && !log.segments.is_empty() {
            log.discontinuity_next = true;
        }
        // Init segments are named after the first segment they serve: a later one (new
        // parameters) never reuses a cached name. MPEG-TS has none: every part carries its tables.
        let init = segmenter.init_segment().map(|bytes| (format!("init-{}.mp4", log.next_msn), bytes));
        log.init_uri = init.as_ref().map(|(uri, _)| uri.clone());
        match &track {
            TrackParams::Video(v) => {
                log.width = v.width;
                log.height = v.height;
                log.codec = v.codec.clone();
            }
            TrackParams::Audio(a) => {
                log.codec = a.codec.clone();
                log.channels = a.channels;
            }
        }
        drop(h);
        if let Some((uri, bytes)) = init {
            self.objects.put(
                format!("{}/{}", self.rendition, uri),
                Object::new(vec![bytes], content_type(&uri), Cacheability::Immutable),
            );
        }
        self.segmenter = Some(segmenter);
    }

    /// The file extension of this rendition's segments and parts.
    fn extension(&self) -> &'static str {
        match self.container {
            Container::Fmp4 => "m4s",
            Container::Ts => "ts",
        }
    }

    fn publish_output(&mut self, out: segmenter::Output) {
        // When a packet completes a segment, its last part and the segment appear in one playlist
        // update: a client woken by the part must not see a hint for a part that never comes.
        let completes = out.segment.is_some();
        let count = out.parts.len();
        for (i, part) in out.parts.into_iter().enumerate() {
            self.publish_part(part, !(completes && i + 1 == count));
        }
        if let Some(seg) = out.segment {
            self.publish(seg);
        }
    }

    /// Publishes a part of the segment being built: its object, then (when `announce`) the
    /// playlists that list it and the progress that wakes blocked requests.
    fn publish_part(&mut self, part: Part, announce: bool) {
        let published_at = SystemTime::now();
        let mut h = lock(&self.history);
        let h = &mut *h;
        let Some(log) = h.renditions.get_mut(&self.rendition) else { return };
        let msn = log.next_msn;
        let uri = format!("{msn}.{}.{}", part.index, self.extension());
        self.objects.put(
            format!("{}/{}", self.rendition, uri),
            Object::new(part.fragment.chunks, content_type(&uri), Cacheability::Immutable),
        );
        if log.open_parts.is_empty() {
            log.open_pdt = Some(self.anchor + Duration::from_secs_f64(ticks_to_secs(part.start_pts.max(0))));
        }
        log.open_parts.push(PlaylistPart {
            uri,
            duration: ticks_to_secs(part.duration),
            independent: part.independent,
        });
        let mut progress = Progress { msn, parts: log.open_parts.len() as u64, ..Progress::default() };
        for entry in h.board.entries.iter_mut().filter(|e| !e.published && part.metadata.contains(&e.metadata.id)) {
            entry.published = true;
            if let Ok(latency) = published_at.duration_since(entry.posted) {
                self.metrics.metadata_latency.with_label_values(&[&self.channel]).observe(latency.as_secs_f64());
            }
        }
        if announce {
            progress.part_target_us = self.render_playlist(h);
            self.objects.set_progress(&self.rendition, progress);
        }
        if let Ok(latency) = published_at.duration_since(part.ingest_time) {
            self.metrics
                .part_latency
                .with_label_values(&[&self.channel, &self.rendition])
                .observe(latency.as_secs_f64());
        }
        let package = self.metrics.stage_latency.with_label_values(&[&self.channel, &self.rendition, "package"]);
        for arrival in &part.arrivals {
            if let Ok(latency) = published_at.duration_since(*arrival) {
                package.observe(latency.as_secs_f64());
            }
        }
    }

    fn publish(&mut self, seg: Segment) {
        let published_at = SystemTime::now();
        let window = self.config.hls.window;
        let mut h = lock(&self.history);
        let h = &mut *h;
        let Some(log) = h.renditions.get_mut(&self.rendition) else { return };
        let msn = log.next_msn;
        log.next_msn += 1;
        let uri = format!("{msn}.{}", self.extension());
        let duration = ticks_to_secs(seg.duration);
        let bytes = seg.fragment.len() as u64;
        let pdt = self.anchor + Duration::from_secs_f64(ticks_to_secs(seg.start_pts.max(0)));
        self.objects.put(
            format!("{}/{}", self.rendition, uri),
            Object::new(seg.fragment.chunks.clone(), content_type(&uri), Cacheability::Immutable),
        );
        let map_uri = log.init_uri.clone().unwrap_or_default();
        if duration > 0.0 && seg.frames > 1 && log.width > 0 {
            log.frame_rate = f64::from(seg.frames) / duration;
        }
        // RFC 8216bis §4.4.3.1: each EXTINF, rounded to the nearest integer, must not exceed the
        // target duration; the target never shrinks while the playlist lives.
        let rounded = duration.round() as u64;
        if rounded > log.target_duration {
            // Segments cut on the source's keyframes (a passthrough rung in the ladder) are as
            // long as the encoder's GOP: OBS's "auto" keyframe interval makes them 8 s or more.
            // Otherwise a gap in the source's timestamps (a stalled publisher) does it.
            tracing::warn!(
                channel = %self.channel,
                rendition = %self.rendition,
                segment_seconds = duration,
                segment_duration = self.config.hls.segment_duration,
                "segment longer than hls.segment_duration; EXT-X-TARGETDURATION raised to {rounded}. With a \
                 passthrough rung, segments are cut on the source's keyframes: set the encoder's keyframe \
                 interval to hls.segment_duration or a divisor of it. Without one, the source's timestamps \
                 jumped"
            );
            log.target_duration = rounded;
        }
        let target_duration = log.target_duration;
        let parts = std::mem::take(&mut log.open_parts);
        log.open_pdt = None;
        log.segments.push_back(LoggedSegment {
            uri,
            map_uri,
            duration,
            program_date_time: pdt,
            discontinuity: std::mem::take(&mut log.discontinuity_next),
            bytes,
            parts,
        });
        while log.segments.len() > window {
            let Some(old) = log.segments.pop_front() else { break };
            log.media_sequence += 1;
            if old.discontinuity {
                log.discontinuity_sequence += 1;
            }
            let init_still_used = log.segments.iter().any(|s| s.map_uri == old.map_uri);
            // Parts leave with their segment: they share its buffers, so keeping them costs no
            // memory, and whatever the playlist lists (RFC 8216bis §6.2.2) is always there.
            let parts = old.parts.into_iter().map(|p| p.uri).collect();
            log.leaving.push_back((
                old.uri,
                (!init_still_used && !old.map_uri.is_empty()).then_some(old.map_uri),
                parts,
            ));
        }
        while log.leaving.len() > GRACE_SEGMENTS {
            if let Some((uri, init, parts)) = log.leaving.pop_front() {
                self.objects.remove(&format!("{}/{}", self.rendition, uri));
                if let Some(init) = init {
                    self.objects.remove(&format!("{}/{}", self.rendition, init));
                }
                for part in parts {
                    self.objects.remove(&format!("{}/{}", self.rendition, part));
                }
            }
        }
        let part_target_us = self.render_playlist(h);
        self.objects.set_progress(&self.rendition, Progress { msn: msn + 1, parts: 0, ended: false, part_target_us });
        let master = render_master(h);
        if let Some(master) = master
            && master != h.master
        {
            self.objects.put(
                "master.m3u8",
                Object::new(vec![Bytes::from(master.clone())], content_type("master.m3u8"), Cacheability::Live),
            );
            h.master = master;
        }

        self.metrics.segments_published.with_label_values(&[&self.channel, &self.rendition]).inc();
        self.metrics
            .hls_target_duration
            .with_label_values(&[&self.channel, &self.rendition])
            .set(i64::try_from(target_duration).unwrap_or(i64::MAX));
        if let Ok(latency) = published_at.duration_since(seg.program_date_time) {
            self.metrics
                .segment_latency
                .with_label_values(&[&self.channel, &self.rendition])
                .observe(latency.as_secs_f64());
        }
    }

    /// Renders this rendition's playlist and its delta update into the store.
    /// Returns the PART-TARGET it advertises, in microseconds (0 when there is no playlist).
    fn render_playlist(&self, h: &History) -> u64 {
        let Some(log) = h.renditions.get(&self.rendition) else { return 0 };
        let hls = &self.config.hls;
        let low_latency = LowLatency {
            part_target: hls.part_duration,
            // Three part targets: what RFC 8216bis §4.4.3.8 recommends, and what makes hls.js
            // play closest to the live edge.
            part_hold_back_parts: 3.0,
            // §4.4.3.8: at least six target durations.
            can_skip_until: 6.0 * log.target_duration as f64,
            open: log.open_pdt.filter(|_| !log.open_parts.is_empty()).map(|pdt| OpenSegment {
                map_uri: log.init_uri.clone().unwrap_or_default(),
                program_date_time: pdt,
                discontinuity: log.discontinuity_next,
                parts: log.open_parts.clone(),
            }),
            preload_hint: (!log.ended)
                .then(|| format!("{}.{}.{}", log.next_msn, log.open_parts.len(), self.extension())),
            rendition_reports: h
                .variants
                .iter()
                .map(|(name, _)| name)
                .chain(h.audio.iter())
                .filter(|name| **name != self.rendition)
                .filter_map(|name| {
                    let (last_msn, last_part) = h.renditions.get(name)?.last_part()?;
                    Some(RenditionReport { uri: format!("../{name}/index.m3u8"), last_msn, last_part })
                })
                .collect(),
        };
        let playlist = MediaPlaylist {
            target_duration: log.target_duration,
            media_sequence: log.media_sequence,
            discontinuity_sequence: log.discontinuity_sequence,
            segments: log
                .segments
                .iter()
                .map(|s| PlaylistSegment {
                    uri: s.uri.clone(),
                    map_uri: s.map_uri.clone(),
                    duration: s.duration,
                    program_date_time: s.program_date_time,
                    discontinuity: s.discontinuity,
                    parts: s.parts.clone(),
                })
                .collect(),
            ended: log.ended,
            low_latency: Some(low_latency),
        };
        let live = |text: String| Object::new(vec![Bytes::from(text)], content_type("index.m3u8"), Cacheability::Live);
        self.objects.put(format!("{}/index.m3u8", self.rendition), live(playlist::render_media(&playlist)));
        self.objects.put(format!("{}/{DELTA_PLAYLIST}", self.rendition), live(playlist::render_media_delta(&playlist)));
        playlist::part_target(&playlist).map_or(0, |t| (t * 1e6).round() as u64)
    }

    fn end(&mut self) {
        self.finished = true;
        if let Some(mut s) = self.segmenter.take() {
            self.publish_output(s.finish_parts());
        }
        self.close_playlist();
    }

    /// Ends the playlist (ENDLIST, no preload hint) unless another session follows at once.
    fn close_playlist(&mut self) {
        let mut h = lock(&self.history);
        if h.restarting {
            return;
        }
        let Some(log) = h.renditions.get_mut(&self.rendition) else { return };
        log.ended = true;
        let msn = log.next_msn;
        let part_target_us = self.render_playlist(&h);
        self.objects.set_progress(&self.rendition, Progress { msn, parts: 0, ended: true, part_target_us });
    }
}

impl RenditionSink for RenditionPublisher {
    fn params(&mut self, params: VideoParams) {
        self.start_track(TrackParams::Video(params));
    }

    fn packet(&mut self, packet: EncodedPacket) {
        let Some(segmenter) = self.segmenter.as_mut() else {
            tracing::warn!(channel = %self.channel, rendition = %self.rendition, "packet before stream parameters; dropped");
            return;
        };
        if self.metadata_latest.load(Ordering::Acquire) != self.metadata_seen {
            // The board, not the counter, says what there is: the counter is set after the entry
            // is on the board, so an entry may already be there while the counter lags.
            let h = lock(&self.history);
            let seen = self.metadata_seen;
            for e in h.board.entries.iter().filter(|e| id_after(e.metadata.id, seen)) {
                segmenter.add_metadata(e.metadata.clone());
                self.metadata_seen = e.metadata.id;
            }
        }
        let out = segmenter.push_parts(packet);
        self.publish_output(out);
    }

    fn finish(mut self: Box<Self>) {
        self.end();
    }
}

/// Whether metadata id `id` came after `seen` (ids increase and wrap, skipping 0).
fn id_after(id: u32, seen: u32) -> bool {
    let d = id.wrapping_sub(seen);
    d != 0 && d < u32::MAX / 2
}

/// The master playlist, once every live rendition of the current publish has a segment (so that
/// RESOLUTION, CODECS and FRAME-RATE are measured, not guessed).
fn render_master(h: &History) -> Option<String> {
    let audio = match &h.audio {
        Some(name) => {
            let log = h.renditions.get(name)?;
            let (peak, avg) = measured(log)?;
            Some((name, log, peak, avg))
        }
        None => None,
    };
    let mut variants = Vec::new();
    for (name, nominal) in &h.variants {
        let log = h.renditions.get(name)?;
        let Some((peak, avg)) = measured(log) else {
            // A rung that failed before its first segment is left out rather than holding back
            // the whole ladder; one still starting up is waited for.
            if log.ended {
                continue;
            }
            return None;
        };
        // Before the window is full the measured figures are noisy; never declare less than the
        // configured rate (BANDWIDTH is an upper bound, RFC 8216bis §4.4.6.2).
        let peak = peak.max(nominal.map(|n| n + n / 10).unwrap_or(0));
        let avg = if log.segments.len() >= 3 { avg } else { avg.max(nominal.unwrap_or(0)) };
        let (a_peak, a_avg, a_codec) = match &audio {
            Some((_, alog, p, a)) => (*p, *a, Some(alog.codec.as_str())),
            None => (0, 0, None),
        };
        let codecs = match a_codec {
            Some(c) => format!("{},{}", log.codec, c),
            None => log.codec.clone(),
        };
        variants.push(Variant {
            uri: format!("{name}/index.m3u8"),
            bandwidth: peak + a_peak,
            average_bandwidth: avg + a_avg,
            width: log.width,
            height: log.height,
            frame_rate: log.frame_rate,
            codecs,
        });
    }
    if variants.is_empty() {
        return None;
    }
    let audio = audio.map(|(name, log, _, _)| AudioRendition {
        group_id: "audio".into(),
        name: "main".into(),
        uri: format!("{name}/index.m3u8"),
        channels: log.channels,
        language: None,
    });
    Some(playlist::render_master(&MasterPlaylist { variants, audio }))
}

/// (peak, average) bits per second over the window; `None` before the first segment.
fn measured(log: &RenditionLog) -> Option<(u64, u64)> {
    if log.segments.is_empty() {
        return None;
    }
    let segs: Vec<(u64, f64)> = log.segments.iter().map(|s| (s.bytes, s.duration)).collect();
    Some(playlist::measured_bandwidth(&segs))
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // The guarded values are replaced whole, so a writer that panicked left a consistent one.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks is updated in single assignments; a panicking holder leaves it usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str, channels: &[(&str, &str)]) -> Config {
        let mut text = format!(
            "{extra}\n\
             ladders:\n  l:\n    - {{ name: a, width: 640, height: 360, video_bitrate: 500000 }}\n  m:\n    - {{ name: b, width: 320, height: 180, video_bitrate: 300000 }}\nchannels:\n"
        );
        for (name, ladder) in channels {
            text.push_str(&format!("  - {{ name: {name}, stream_key: {name}-key, ladder: {ladder} }}\n"));
        }
        Config::parse(&text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Segments `first..first + count` of a rendition that has ended, as a publish leaves them.
    fn ended_log(first: u64, count: u64) -> RenditionLog {
        let segment = |msn: u64| LoggedSegment {
            uri: format!("{msn}.m4s"),
            map_uri: format!("init-{first}.mp4"),
            duration: 2.0,
            program_date_time: SystemTime::UNIX_EPOCH,
            discontinuity: false,
            bytes: 1000,
            parts: Vec::new(),
        };
        RenditionLog {
            segments: (first..first + count).map(segment).collect(),
            next_msn: first + count,
            ended: true,
            init_uri: Some(format!("init-{first}.mp4")),
            ..RenditionLog::new(first, 2)
        }
    }

    /// A segment's number is its position in the playlist: a rendition that ended a publish with
    /// a segment fewer than the others goes on from its own next number instead of skipping one
    /// (which would leave `{n}.m4s` at position n - 1, and blocking reloads for n answered at once
    /// for ever).
    #[test]
    fn a_returning_publisher_continues_every_rendition_without_a_gap_in_its_numbers() {
        let mut h = History::default();
        h.renditions.insert("a".into(), ended_log(100, 3));
        h.renditions.insert("audio".into(), ended_log(100, 2));
        let store = Store::new();
        let cfg = config(before_http(), &[("x", "l")]);
        h.begin_publish(vec!["a".into(), "audio".into(), "b".into()], &store.channel("x"), &cfg);
        for (name, next) in [("a", 103), ("audio", 102), ("b", 103)] {
            let log = &h.renditions[name];
            assert_eq!(log.next_msn, next, "{name}");
            assert_eq!(log.media_sequence + log.segments.len() as u64, log.next_msn, "{name}: no gap");
            assert!(!log.ended);
            assert_eq!(log.discontinuity_next, name != "b", "{name}: a discontinuity after the old segments");
        }
    }

    /// A removed channel whose thread still flushes its last segments is kept (its thread writes
    /// to its objects and metrics) until a reload after the thread is done.
    #[test]
    fn a_removed_channel_is_forgotten_only_once_its_thread_is_done() {
        let store = Arc::new(Store::new());
        let metrics = Arc::new(Metrics::new());
        let channels =
            Channels::new(Arc::new(config(before_http(), &[("x", "l"), ("y", "l")])), store.clone(), metrics);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let flushing = std::thread::spawn(move || {
            let _ = done_rx.recv();
        });
        *lock(&channels.state("y").expect("y").thread) = Some(flushing);

        let summary = channels.reload(config(before_http(), &[("x", "l")]));
        assert_eq!(
            (summary.removed.as_slice(), summary.still_live.as_slice()),
            (&["y".to_string()][..], &["y".to_string()][..])
        );
        assert!(store.get_channel("y").is_some(), "kept while its thread runs");

        done_tx.send(()).expect("thread waits");
        while !lock(&channels.state("y").expect("y").thread).as_ref().is_some_and(|t| t.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let summary = channels.reload(config(before_http(), &[("x", "l")]));
        assert!(summary.still_live.is_empty() && summary.removed.is_empty(), "{:?}", summary.still_live);
        assert!(store.get_channel("y").is_none() && channels.state("y").is_none(), "forgotten");
    }

    fn before_http() -> &'static str {
        "http: { listen: \"127.0.0.1:8080\" }"
    }

    #[test]
    fn a_reload_applies_channels_at_once_and_keeps_what_takes_a_restart() {
        let store = Arc::new(Store::new());
        let metrics = Arc::new(Metrics::new());
        let before = "http: { listen: \"127.0.0.1:8080\" }";
        let channels = Channels::new(Arc::new(config(before, &[("x", "l"), ("y", "l")])), store.clone(), metrics);
        assert!(store.get_channel("y").is_some());

        let new = config(
            "hls: { window: 9 }\nadmin: { listen: \"127.0.0.1:9999\", token: secret }\nhttp: { listen: \"127.0.0.1:8081\" }",
            &[("x", "m"), ("z", "l")],
        );
        let summary = channels.reload(new);
        assert_eq!(summary.added, ["z"]);
        assert_eq!(summary.changed, ["x"]);
        assert_eq!(summary.removed, ["y"]);
        assert!(summary.still_live.is_empty());
        assert_eq!(summary.restart_only, ["http", "admin.listen", "hls.window"]);

        let now = channels.config();
        assert_eq!(now.http.listen, "127.0.0.1:8080".parse().unwrap(), "listeners keep their running address");
        assert_eq!(now.hls.window, crate::config::HlsConfig::default().window);
        assert_eq!(now.admin.token.as_deref(), Some("secret"), "the admin token applies at once");
        assert_eq!(now.channel("x").map(|c| c.ladder.as_str()), Some("m"));
        assert!(store.get_channel("y").is_none(), "a removed idle channel is forgotten");
        assert!(store.get_channel("z").is_some(), "an added channel is known to the origin");
        assert!(channels.status("y").is_none() && channels.status("z").is_some_and(|s| !s.live));
        let names: Vec<String> = channels.statuses().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["x", "z"]);

        // A channel's container keeps: its playlists continue across publishes.
        let mut ts = config(before_http(), &[("x", "m"), ("z", "l")]);
        ts.channels[0].container = Some(Container::Ts);
        let summary = channels.reload(ts);
        assert_eq!(summary.restart_only, ["channels[x].container"]);
        assert_eq!(channels.config().container(&channels.config().channels[0]), Container::Fmp4);
        assert!(summary.changed.is_empty(), "{summary:?}");
        // New rungs in its ladder count as a change of the channel.
        let mut taller = config(before_http(), &[("x", "m"), ("z", "l")]);
        taller.ladders.get_mut("m").expect("ladder m")[0].height = Some(200);
        assert_eq!(channels.reload(taller).changed, ["x"]);
    }
}
