//! ladderd: RTMP in, an ABR ladder transcoded once per channel, low-latency HLS out.
//!
//! [`start`] binds the listeners and returns a [`Daemon`] handle (tests use it with ephemeral
//! ports); [`run`] is `start` followed by waiting for shutdown.
// Memory-unsafe code lives in `ffi` alone, where every block is documented and does one thing.
#![deny(unsafe_code)]

// A connection that feeds a parser bad input is ended by catching its panic (ingest and every
// channel thread rely on unwinding to contain a fault); with `panic = "abort"` one bad
// publisher would take the whole daemon down.
#[cfg(panic = "abort")]
compile_error!("ladderd must be built with panic = \"unwind\": it contains a faulty connection by catching its panic");

pub mod api;
pub mod channel;
pub mod config;
#[allow(unsafe_code)]
pub mod ffi;
pub mod gpu;
pub mod http;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod origin;
pub mod package;
pub mod rate;
pub mod secret;
pub mod store;
pub mod sync;
pub mod systemd;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::api::Admin;
use crate::channel::Channels;
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::store::Store;

/// How often the ingest byte and origin request counters are sampled; the admin API's rates span
/// one interval.
const INGEST_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How often the GPU gauges are refreshed from NVML.
const GPU_STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections the admin listener keeps open at once: Prometheus, health checks and operators.
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Streams an HTTP/2 connection to the admin listener may have open: its clients make a request
/// at a time, or a few.
const ADMIN_MAX_STREAMS: u32 = 32;

/// How long the origin keeps serving after the drain has ended every playlist.
const END_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the drain may take before the daemon stops without the channels still flushing:
/// with `END_GRACE` and the five seconds in-flight responses get, well inside systemd's 30 s
/// `TimeoutStopSec` (systemd/ladderd.service).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running daemon.
pub struct Daemon {
    pub rtmp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTPS origin, when `http.tls_listen` is set.
    pub https_addr: Option<SocketAddr>,
    /// RTMPS ingest, when `rtmp.tls_listen` is set.
    pub rtmps_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub channels: Arc<Channels>,
    admin: Arc<Admin>,
    certificates: Option<Arc<tls::Certificates>>,
    shutdown: CancellationToken,
    /// Closes the listeners; cancelled by `wait` after the drain.
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// Binds every listener (so a port conflict fails here, before anything runs) and starts serving.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Daemon, RunError> {
    transcode::faults::arm_from_environment();
    let config = Arc::new(config);
    log_warnings(&config);
    // Certificates first: a bad file should fail the start before any port is taken.
    let certificates = config.tls.as_ref().map(tls::Certificates::load).transpose()?;
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Bind { what, addr, source })
    };
    let bind_tls = |what: &'static str, addr: Option<SocketAddr>| async move {
        match addr {
            Some(a) => bind(what, a).await.map(Some),
            None => Ok(None),
        }
    };
    let rtmp = bind("rtmp", config.rtmp.listen).await?;
    let rtmps = bind_tls("rtmps", config.rtmp.tls_listen).await?;
    let http = bind("http", config.http.listen).await?;
    let https = bind_tls("https", config.http.tls_listen).await?;
    let admin = bind("admin", config.admin.listen).await?;
    let local = |l: &TcpListener, fallback: SocketAddr| l.local_addr().unwrap_or(fallback);
    let (rtmp_addr, http_addr, admin_addr) =
        (local(&rtmp, config.rtmp.listen), local(&http, config.http.listen), local(&admin, config.admin.listen));
    let rtmps_addr = rtmps.as_ref().zip(config.rtmp.tls_listen).map(|(l, a)| local(l, a));
    let https_addr = https.as_ref().zip(config.http.tls_listen).map(|(l, a)| local(l, a));

    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(Store::new());
    let channels = Arc::new(Channels::new(config.clone(), store.clone(), metrics.clone()));

    // `shutdown` starts the drain; `stop` closes the listeners once the drain is over, so that the
    // ended playlists are still served (see `Daemon::wait`).
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // RTMP and RTMPS connections share one limit, as the origin's do.
    let rtmp_admission =
        ingest::admission::Admission::new(ingest::admission::AdmissionLimits::new(&config.rtmp), metrics.clone());
    let rtmp_serve = |listener, tls| {
        ingest::listener::serve(
            listener,
            tls,
            rtmp_admission.clone(),
            channels.clone(),
            config.rtmp.clone(),
            metrics.clone(),
            stop.clone(),
        )
    };
    tasks.spawn(rtmp_serve(rtmp, None));
    if let (Some(listener), Some(certs)) = (rtmps, &certificates) {
        // RTMP has no ALPN identifier; clients offer none.
        tasks.spawn(rtmp_serve(listener, Some(certs.acceptor(&[]))));
    }
    let origin = Arc::new(
        Origin::new(store, metrics.clone(), origin::Targets::from_config(&config.hls), stop.clone())
            .with_held_limit(config.http.max_held_requests)
            .with_preview(origin::Preview::load(&config.http))
            .with_cache_policy(origin::CachePolicy::from_config(&config.http.cache, media_lifetime(&config))),
    );
    // Plain and TLS origin connections share one limit.
    let idle_timeout = std::time::Duration::from_secs_f64(config.http.idle_timeout);
    let origin_limits = http::Limits {
        slots: Arc::new(Semaphore::new(config.http.max_connections.min(Semaphore::MAX_PERMITS))),
        idle_timeout,
        max_streams: config.http.max_streams_per_connection,
        stream_limit_reached: metrics.http_stream_limit_reached.with_label_values(&["origin"]),
    };
    let origin_serve = |listener, tls, name| {
        let origin = origin.clone();
        http::serve(
            listener,
            tls,
            origin_limits.clone(),
            name,
            move |req| {
                let origin = origin.clone();
                async move {
                    // What the answer needs is read out; the request itself (its headers, any
                    // body a client sends with a GET) is not kept while the answer is held.
                    let answer = origin.handle(&req);
                    drop(req);
                    answer.await
                }
            },
            stop.clone(),
        )
    };
    tasks.spawn(origin_serve(http, None, "origin"));
    if let (Some(listener), Some(certs)) = (https, &certificates) {
        tasks.spawn(origin_serve(listener, Some(certs.acceptor(&http::ALPN)), "origin_tls"));
    }
    let admin_svc = Arc::new(Admin::new(metrics.clone(), channels.clone(), &config));
    // `/readyz` waits for the GPU probe, which can take seconds (driver load, NVML), so that a
    // publish admitted once ready is not held up by it.
    let probed = admin_svc.clone();
    tokio::task::spawn_blocking(move || {
        transcode::probe::machine();
        probed.mark_gpu_probed();
    });
    // NVML's utilization and memory figures into the GPU gauges. Reading NVML blocks for a few
    // milliseconds, so off the async workers; `live_stats` reads it at most every two seconds.
    let (gauges, gauges_stop) = (metrics.clone(), stop.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(GPU_STATS_INTERVAL);
        loop {
            tokio::select! {
                _ = gauges_stop.cancelled() => break,
                _ = tick.tick() => {
                    // A hung NVML call must not hold up shutdown: stop waits for nobody.
                    let stats = tokio::select! {
                        _ = gauges_stop.cancelled() => break,
                        stats = tokio::task::spawn_blocking(transcode::probe::live_stats) => stats,
                    };
                    let Ok(stats) = stats else { continue };
                    for s in stats.iter() {
                        gauges.set_gpu_stats(s.index, &s.gauges());
                    }
                }
            }
        }
    });
    // Samples for the ingest and request rates the admin API reports.
    let (sampled, sampling_stop) = (channels.clone(), stop.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(INGEST_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = sampling_stop.cancelled() => break,
                _ = tick.tick() => sampled.sample_rates(std::time::Instant::now()),
            }
        }
    });
    let served = admin_svc.clone();
    tasks.spawn(http::serve(
        admin,
        None,
        http::Limits {
            slots: Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
            idle_timeout,
            max_streams: ADMIN_MAX_STREAMS,
            stream_limit_reached: metrics.http_stream_limit_reached.with_label_values(&["admin"]),
        },
        "admin",
        move |req| {
            let admin_svc = served.clone();
            async move { admin_svc.handle(req).await }
        },
        stop.clone(),
    ));
    tracing::info!(
        %rtmp_addr, %http_addr, %admin_addr, rtmps_addr = ?rtmps_addr, https_addr = ?https_addr,
        channels = config.channels.len(), "ladderd listening"
    );
    Ok(Daemon {
        rtmp_addr,
        http_addr,
        admin_addr,
        https_addr,
        rtmps_addr,
        metrics,
        channels,
        admin: admin_svc,
        certificates,
        shutdown,
        stop,
        tasks,
    })
}

/// How long a segment stays servable after it is published: while in the playlist window, and
/// for the RFC 8216 §6.2.2 period after (the `cdn` cache preset's media lifetime at the CDN).
fn media_lifetime(config: &Config) -> std::time::Duration {
    let target = config.hls.segment_duration.ceil().max(1.0);
    let listed = std::time::Duration::from_secs_f64(target * config.hls.window as f64);
    listed + package::window::nominal_retention(config.hls.segment_duration, config.hls.window)
}

/// Why a reload was refused; the configuration in force stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<config::ConfigError>),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl Daemon {
    /// Waits for the shutdown token, then drains: new publishes are refused (and `/readyz` says
    /// so), live publishers are sent away and their playlists ended, requests held for the last
    /// update are answered with the ended playlists, and only then do the listeners close.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        let channels = self.channels.clone();
        // Joining channel threads blocks; keep it off the async workers. A thread stuck in a
        // codec call must not hold the exit past the service manager's stop timeout: what has
        // flushed by then is served, the rest is lost with the process.
        let drain = tokio::task::spawn_blocking(move || channels.drain());
        if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
            tracing::error!(
                seconds = DRAIN_LIMIT.as_secs(),
                "channels did not finish flushing in time; stopping without them"
            );
        }
        // The ended playlists wake every held request; give those (and a CDN's next reload) a
        // moment to be answered before the listeners go.
        tokio::time::sleep(END_GRACE).await;
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("ladderd stopped");
    }

    /// What applies a configuration read again from its file (SIGHUP); it outlives [`Daemon::wait`].
    pub fn reloader(&self) -> Reloader {
        Reloader {
            channels: self.channels.clone(),
            admin: self.admin.clone(),
            certificates: self.certificates.clone(),
            metrics: self.metrics.clone(),
        }
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// Applies a new configuration to a running daemon.
#[derive(Clone)]
pub struct Reloader {
    channels: Arc<Channels>,
    admin: Arc<Admin>,
    certificates: Option<Arc<tls::Certificates>>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Applies the configuration in `path`: see [`Channels::reload`] for
    /// what changes at once and what waits for the next publish or a restart. The certificate
    /// files are read again too. Nothing changes unless everything loads.
    pub fn reload(&self, path: &std::path::Path) -> Result<channel::ReloadSummary, ReloadError> {
        let outcome = self.try_reload(path);
        let result = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[result]).inc();
        outcome
    }

    fn try_reload(&self, path: &std::path::Path) -> Result<channel::ReloadSummary, ReloadError> {
        let new = Config::load(path).map_err(ReloadError::Config)?;
        log_warnings(&new);
        if let (Some(certs), Some(tls)) = (&self.certificates, &new.tls) {
            certs.reload(tls)?;
        }
        let summary = self.channels.reload(new);
        self.admin.configure(&self.channels.config(), &summary.still_live);
        Ok(summary)
    }
}

/// What the configuration allows but should not (`ladderd check-config` prints the same).
fn log_warnings(config: &Config) {
    for w in config.warnings() {
        tracing::warn!(key = %w.key, "configuration: {}", w.message);
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}
