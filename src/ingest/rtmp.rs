//! The RTMP listener: one tokio task per connection drives an `rml_rtmp` server session.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::RtmpConfig;
use crate::ingest::PublishGate;
use crate::metrics::Metrics;

/// Accepts RTMP connections until `shutdown`.
pub async fn serve<G: PublishGate>(
    _listener: TcpListener,
    _gate: Arc<G>,
    _config: RtmpConfig,
    _metrics: Arc<Metrics>,
    _shutdown: CancellationToken,
) {
    todo!("rtmp::serve")
}
