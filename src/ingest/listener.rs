//! The RTMP listener: accepts connections (RTMPS too) as [`admission`](super::admission) allows,
//! and runs each as its own task until it closes or is displaced, with its outcome counted and
//! logged. What a connection says is [`rtmp`](super::rtmp)'s.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RtmpConfig;
use crate::ingest::PublishGate;
use crate::ingest::admission::{Admission, Stage, Ticket};
use crate::ingest::rtmp::{Connection, Ended, Limits, Socket};
use crate::metrics::{GaugeGuard, Metrics};

/// Pause after a failed accept (e.g. out of file descriptors), which would otherwise fail at once again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts RTMP connections until `shutdown`; with `tls`, each connection is RTMPS (RTMP inside a
/// TLS session, as OBS and ffmpeg speak it for `rtmps://` URLs).
/// `admission` bounds the connections open at once; RTMP and RTMPS share it.
#[allow(clippy::too_many_arguments)]
pub async fn serve<G: PublishGate>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    admission: Arc<Admission>,
    gate: Arc<G>,
    config: RtmpConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let limits = Limits::new(&config);
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "RTMP accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Some(ticket) = admission.admit(peer.ip()) else {
            metrics.rtmp_connections_dropped.with_label_values(&["limit"]).inc();
            tracing::debug!(%peer, limit = config.max_connections, "RTMP connection refused: rtmp.max_connections publishers are live");
            drop(socket);
            continue;
        };
        tasks.spawn(connection(
            socket,
            tls.clone(),
            peer,
            gate.clone(),
            limits,
            metrics.clone(),
            shutdown.clone(),
            ticket,
        ));
    }
    tasks.close();
    tasks.wait().await;
}

/// One connection from accept to close, with its outcome counted and logged.
#[allow(clippy::too_many_arguments)]
async fn connection<G: PublishGate>(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    gate: Arc<G>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    ticket: Ticket,
) {
    // Keeps `ladderd_rtmp_connections` right however the task ends, unwinding included.
    let _open = GaugeGuard::new(&metrics.rtmp_connections);
    // Displacement (counted by the admission) drops the connection wherever it is waiting.
    let displaced = ticket.displaced();
    tokio::select! {
        biased;
        () = displaced.cancelled() => tracing::debug!(%peer, "RTMP connection closed: displaced by newer pending connections"),
        () = run(socket, tls, peer, gate, limits, metrics, shutdown, ticket) => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<G: PublishGate>(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    gate: Arc<G>,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut ticket: Ticket,
) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let socket: Box<dyn Socket> = match tls {
        None => Box::new(socket),
        Some(acceptor) => {
            // The TLS handshake gets the same time limit as the RTMP handshake that follows it.
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = tokio::time::timeout(limits.handshake, acceptor.accept(socket)) => accepted,
            };
            match accepted {
                Ok(Ok(stream)) => {
                    ticket.reached(Stage::Handshaking);
                    Box::new(stream)
                }
                Ok(Err(e)) => {
                    metrics.rtmp_connections_dropped.with_label_values(&["tls"]).inc();
                    tracing::info!(%peer, error = %e, "RTMPS connection closed: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.rtmp_connections_dropped.with_label_values(&["handshake_timeout"]).inc();
                    tracing::info!(%peer, limit = ?limits.handshake, "RTMPS connection closed: TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let conn = Connection::new(socket, peer, limits, metrics.clone(), shutdown, ticket);
    // A panic inside rml_rtmp or a parser unwinds to here: nothing it touched is shared with
    // other connections except through the channel's queue, which stays consistent.
    match AssertUnwindSafe(conn.run(&*gate)).catch_unwind().await {
        Ok(Ok(Ended::Kicked)) => tracing::info!(%peer, "publisher disconnected by the channel"),
        Ok(Ok(end)) => tracing::debug!(%peer, %end, "RTMP connection closed"),
        Ok(Err(e)) => {
            if let Some(reason) = e.drop_reason() {
                metrics.rtmp_connections_dropped.with_label_values(&[reason]).inc();
            }
            e.log();
        }
        Err(panic) => {
            metrics.rtmp_connections_dropped.with_label_values(&["panic"]).inc();
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("non-string panic payload");
            tracing::error!(%peer, panic = what, "RTMP connection panicked and was closed");
        }
    }
}
