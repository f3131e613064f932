//! ladderd: RTMP in, an ABR ladder transcoded once per channel, low-latency HLS out.
//!
//! [`start`] binds the listeners and returns a [`Daemon`] handle (tests use it with ephemeral
//! ports); [`run`] is `start` followed by waiting for shutdown.

pub mod api;
pub mod channel;
pub mod config;
pub mod ffi;
pub mod gpu;
pub mod http;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod origin;
pub mod package;
pub mod store;
pub mod systemd;
pub mod transcode;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
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

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
}

/// A running daemon.
pub struct Daemon {
    pub rtmp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub channels: Arc<Channels>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// Binds every listener (so a port conflict fails here, before anything runs) and starts serving.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Daemon, RunError> {
    let config = Arc::new(config);
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Bind { what, addr, source })
    };
    let rtmp = bind("rtmp", config.rtmp.listen).await?;
    let http = bind("http", config.http.listen).await?;
    let admin = bind("admin", config.admin.listen).await?;
    let local = |l: &TcpListener, fallback: SocketAddr| l.local_addr().unwrap_or(fallback);
    let (rtmp_addr, http_addr, admin_addr) =
        (local(&rtmp, config.rtmp.listen), local(&http, config.http.listen), local(&admin, config.admin.listen));

    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(Store::new());
    let channels = Arc::new(Channels::new(config.clone(), store.clone(), metrics.clone()));

    let mut tasks = JoinSet::new();
    tasks.spawn(ingest::rtmp::serve(rtmp, channels.clone(), config.rtmp.clone(), metrics.clone(), shutdown.clone()));
    let origin = Arc::new(
        Origin::new(store, metrics.clone(), origin::Targets::from_config(&config.hls), shutdown.clone())
            .with_preview(origin::Preview::load(&config.http)),
    );
    tasks.spawn(http::serve(
        http,
        "origin",
        move |req| {
            let origin = origin.clone();
            async move { origin.handle(&req).await }
        },
        shutdown.clone(),
    ));
    let admin_svc = Arc::new(Admin::new(metrics.clone(), channels.clone(), &config));
    // `/readyz` waits for the GPU probe, which can take seconds (driver load, NVML), so that a
    // publish admitted once ready is not held up by it.
    let probed = admin_svc.clone();
    tokio::task::spawn_blocking(move || {
        gpu::probe_cached();
        probed.mark_gpu_probed();
    });
    // Samples for the ingest and request rates the admin API reports.
    let (sampled, stop) = (channels.clone(), shutdown.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(INGEST_SAMPLE_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => sampled.sample_rates(std::time::Instant::now()),
            }
        }
    });
    tasks.spawn(http::serve(
        admin,
        "admin",
        move |req| {
            let admin_svc = admin_svc.clone();
            async move { admin_svc.handle(req).await }
        },
        shutdown.clone(),
    ));
    tracing::info!(%rtmp_addr, %http_addr, %admin_addr, channels = config.channels.len(), "ladderd listening");
    Ok(Daemon { rtmp_addr, http_addr, admin_addr, metrics, channels, shutdown, tasks })
}

impl Daemon {
    /// Waits for the shutdown token, then ends every publish (playlists get ENDLIST) and stops
    /// the listeners.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        let channels = self.channels.clone();
        // Joining channel threads blocks; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || channels.drain()).await;
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("ladderd stopped");
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    start(config, shutdown).await?.wait().await;
    Ok(())
}
