//! RTMP ingest: accepts publishers, authenticates stream keys, parses FLV tags into
//! [`MediaPacket`](crate::media::MediaPacket)s for the channel.

pub mod admission;
pub mod cadence;
pub mod chunk_guard;
pub mod flv;
pub mod listener;
pub mod rtmp;
pub mod timeline;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::media::Arrival;
use crate::rate::TokenBucket;

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No channel has this stream key.
    UnknownKey,
    /// The channel already has a live publisher, and it is sending.
    Busy,
    /// The URL's application name is not the configured one.
    BadApp,
    /// The daemon is shutting down.
    Draining,
    /// The client's address sent too many unknown keys lately (`rtmp.key_failures_per_minute`);
    /// the key was not looked at.
    Throttled,
}

impl Refusal {
    /// The `reason` label of `ladderd_publish_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown_key",
            Refusal::Busy => "busy",
            Refusal::BadApp => "bad_app",
            Refusal::Draining => "draining",
            Refusal::Throttled => "throttled",
        }
    }
}

/// An accepted publish: where its media goes, and how the daemon can end it.
pub struct Publish {
    pub channel: String,
    /// Media in arrival order. Dropping it ends the publish for the channel.
    pub media: mpsc::Sender<Arrival>,
    /// Cancelled when the daemon wants the publisher gone (kick, shutdown, pipeline failure).
    pub kick: CancellationToken,
    /// When bytes last came from the publisher, on [`activity_clock`]: ingest sets it on every
    /// read, and the gate reads it to tell a connection that went silent (a publisher that
    /// reconnects after a network drop leaves one behind) from one that is sending.
    pub activity: Arc<AtomicU64>,
    /// What the publisher's own timed text (`onTextData`, `onCuePoint`) may spend: the same rate
    /// and burst as posts to the metadata API (`admin.metadata_rate`, `admin.metadata_burst`).
    pub timed_text: TokenBucket,
    /// Bytes of media queued for the channel and not yet taken by it (`rtmp.max_queued_bytes`):
    /// a packet takes its size from here before it is queued, so a channel that falls behind
    /// slows its publisher's socket instead of holding its backlog in memory.
    pub queue_budget: Arc<tokio::sync::Semaphore>,
    /// The budget's size.
    pub queue_limit: usize,
    /// Set by ingest when the publisher itself ended the publish (`FCUnpublish`, `deleteStream`)
    /// before the media queue closes: the channel then ends its playlists at once, where a
    /// publisher that was lost (the connection dropped or went idle) may be back shortly.
    pub finished: Arc<AtomicBool>,
}

/// Milliseconds on a monotonic clock that ingest and the gate share.
pub fn activity_clock() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The daemon's side of a publish request.
pub trait PublishGate: Send + Sync + 'static {
    /// Called once the client has sent `publish`; `app` and `stream_key` come from the URL.
    fn begin(&self, app: &str, stream_key: &str, peer: SocketAddr) -> Result<Publish, Refusal>;
}
