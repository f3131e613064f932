//! A channel ties one published stream through the stages: it accepts or refuses publishes,
//! starts the transcoder and packagers for each publish, and keeps what outlives a publish (the
//! playlist window, media sequence numbers, discontinuities) so a publisher that comes back
//! continues the same playlists.
//!
//! This module is the registry of channels (reload and drain included) and the gate ingest asks
//! about publishes; [`publish`] runs one publish through the stages, and [`status`] is what the
//! admin API shows of a channel.

mod publish;
mod status;

pub use status::{
    BackendStatus, ChannelStatus, IngestStatus, MoveStatus, OriginStatus, PublisherStatus, RefusedStatus,
    RenditionStatus, RungBackendStatus, SourceStatus,
};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::{Publish, PublishGate, Refusal};
use crate::metrics::{BackendSeries, Metrics};
use crate::package::window::ChannelWindow;
use crate::rate::TokenBucket;
use crate::store::Store;
use crate::sync::{lock, read, write};
use crate::transcode::placement::Placer;

/// Source packets buffered between ingest and the channel thread. Beyond this, ingest waits and
/// TCP pushes back on the publisher.
const INGEST_QUEUE: usize = 512;

/// Every configured channel, and the gate ingest asks about publishes.
pub struct Channels {
    /// The configuration new publishes use; [`Channels::reload`] replaces it.
    config: RwLock<Arc<Config>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Configured channels, plus channels a reload removed while they were live (until their
    /// publish ends and the next reload drops them).
    channels: RwLock<HashMap<String, Arc<ChannelState>>>,
    /// Shared with the channel threads, which end a reconnect grace early when it is set.
    draining: Arc<AtomicBool>,
    /// NVENC sessions per GPU, shared by every channel of the daemon.
    placer: Placer,
}

struct ChannelState {
    name: String,
    /// The live publish, if there is one.
    live: Mutex<Option<LivePublish>>,
    /// The thread of the latest publish (it may still be flushing after the publisher left, or
    /// holding the playlists open for the publisher's return).
    thread: Mutex<Option<JoinHandle<()>>>,
    /// While a lost publisher's playlists are held open (`rtmp.reconnect_grace`): what tells that
    /// thread a new publish continues them. Taken (under `live`) by the publish that does, or by
    /// the drain, which drops it to end them.
    reconnect: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    /// When that hold ends, for the status.
    reconnect_until: Mutex<Option<SystemTime>>,
    /// Its playlists over time, shared by the renditions' publishers.
    window: Arc<Mutex<ChannelWindow>>,
    /// Timed metadata posted through the API, waiting for the channel thread to stamp it.
    posted_metadata: Mutex<VecDeque<(Bytes, SystemTime)>>,
    /// Id of the latest timed metadata on the window's board
    /// ([`Packaging::metadata_latest`](crate::package::publisher::Packaging::metadata_latest)).
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
            reconnect: Mutex::new(None),
            reconnect_until: Mutex::new(None),
            window: Arc::new(Mutex::new(ChannelWindow::default())),
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

impl Channels {
    pub fn new(config: Arc<Config>, store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        let channels =
            config.channels.iter().map(|c| (c.name.clone(), ChannelState::new(&c.name, &store, &metrics))).collect();
        let health = crate::transcode::health::GpuHealth::new(
            Arc::new(crate::transcode::probe::reprobe),
            Some(metrics.gpu_quarantined.clone()),
        );
        let placer =
            Placer::with_health(config.transcode.max_sessions_per_gpu, metrics.gpu_nvenc_sessions.clone(), health);
        Self {
            config: RwLock::new(config),
            store,
            metrics,
            channels: RwLock::new(channels),
            draining: Arc::new(AtomicBool::new(false)),
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
        let restart_only = new.keep_restart_only(&old);

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
            let live = lock(&state.live);
            if let Some(live) = live.as_ref() {
                live.kick.cancel();
            }
            // A channel whose publisher was lost ends its playlists now: nobody may come back.
            lock(&state.reconnect).take();
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

/// The admin API's controls.
impl Channels {
    /// GPUs quarantined after repeated errors, for `/readyz`.
    pub fn quarantined_gpus(&self) -> Vec<crate::transcode::health::Quarantined> {
        self.placer.health().map(|h| h.quarantined()).unwrap_or_default()
    }

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
        let finished = Arc::new(AtomicBool::new(false));
        let activity = Arc::new(AtomicU64::new(crate::ingest::activity_clock()));

        let (tx, rx) = mpsc::channel(INGEST_QUEUE);
        let ctx = publish::PublishContext {
            placer: self.placer.clone(),
            state: state.clone(),
            channel: channel.clone(),
            config: config.clone(),
            objects: self.store.channel(name),
            metrics: self.metrics.clone(),
            kick: kick.clone(),
            finished: finished.clone(),
            draining: self.draining.clone(),
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
            publish::run(ctx, rx);
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
        // A lost publisher's thread holding the playlists open lets them be, and ends; this
        // publish's thread, which waits for it, continues them.
        let resumes = lock(&state.reconnect).take().is_some_and(|held| held.send(()).is_ok());
        *live = Some(LivePublish { id, kick: kick.clone(), activity: activity.clone() });
        // Set under `live` so that a status read never pairs this publish with the last one's facts.
        let since = status::rfc3339(SystemTime::now());
        *lock(&state.publisher) = Some(PublisherStatus { peer: peer.to_string(), since });
        *lock(&state.source) = None;
        self.metrics.publishes.with_label_values(&[name]).inc();
        self.metrics.channel_live.with_label_values(&[name]).set(1);
        if resumes {
            self.metrics.publishers_lost.with_label_values(&[name, "resumed"]).inc();
            tracing::info!(channel = %name, %peer, "publish started: the lost publisher is back, its playlists go on");
        } else {
            tracing::info!(channel = %name, %peer, "publish started");
        }
        drop(thread);
        drop(live);
        drop(channels);
        let timed_text = TokenBucket::new(config.admin.metadata_rate, config.admin.metadata_burst);
        let queue_limit = config.rtmp.max_queued_bytes.min(tokio::sync::Semaphore::MAX_PERMITS);
        let queue_budget = Arc::new(tokio::sync::Semaphore::new(queue_limit));
        Ok(Publish {
            channel: name.clone(),
            media: tx,
            kick,
            activity,
            timed_text,
            queue_budget,
            queue_limit,
            finished,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Container;
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
