//! One RTMP connection: its task drives an `rml_rtmp` server session (the listener that starts
//! it is `listener.rs`).
//!
//! rml_rtmp is sans-IO, unmaintained, and has known panics on hostile input. So each connection
//! runs under `catch_unwind` (a panic ends that connection only), every wait on the peer has a
//! deadline, and the chunk stream passes through a [`ChunkGuard`] before rml_rtmp sees it (it
//! bounds message sizes, chunk streams, commands and AMF0 nesting).

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec};
use rml_rtmp::handshake::{Handshake, HandshakeError, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RtmpConfig;
use crate::ingest::admission::{Stage, Ticket};
use crate::ingest::cadence::CadenceGauges;
use crate::ingest::chunk_guard::{ChunkGuard, ChunkViolation, timed_text_payload};
use crate::ingest::flv::{self, AudioTag, FlvError, VideoDemuxer, VideoTag};
use crate::ingest::timeline::{Freeze, Timeline, TrackClock};
use crate::ingest::{Publish, PublishGate, Refusal};
use crate::media::{Arrival, MediaPacket, QueueCharge, Sample, Ticks};
use crate::metrics::Metrics;
use crate::rate::TokenBucket;

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 64 * 1024;
/// The most bytes handed to rml_rtmp in one call. It returns every result of a call in one
/// `Vec`, about a hundred bytes each, and a message can be a single byte on the wire (a type 3
/// header of a zero-length message), so a whole read of those would cost a hundred times its
/// size at once; in slices this size it costs at most a few hundred kilobytes.
pub const SESSION_INPUT_SLICE: usize = 4096;
/// Chunk size of what we send. Our messages are small commands; 4096 is what ffmpeg and OBS use.
const OUTBOUND_CHUNK_SIZE: u32 = 4096;
/// Largest timed text forwarded, the same limit the metadata API has (Amazon IVS's).
const MAX_TIMED_TEXT: usize = 1024;
/// Malformed FLV tags in a row after which the publish is ended.
const MALFORMED_TAGS_LIMIT: u32 = 50;
/// How long a connection we are closing is drained, so that our last response (a refusal) reaches
/// the client instead of being discarded by the reset a close with unread data would cause.
const LINGER: Duration = Duration::from_secs(1);
/// C0 and C1 (RTMP spec §5.2.2-5.2.3): a client that has sent them is getting somewhere. (The
/// session answers S0+S1 to the very first byte, so its responses do not tell.)
const C0_C1_LEN: usize = 1 + 1536;
/// How often a publish waiting on a full ingest queue is marked as active.
const ACTIVITY_REFRESH: Duration = Duration::from_millis(500);

/// The byte stream of one connection: plain TCP, or TLS over TCP for RTMPS (or, for the fuzz
/// target that drives a connection, bytes in memory).
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// The time and size limits of a connection, from `rtmp.*`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Handshake, `connect` and `publish` together.
    pub(super) handshake: Duration,
    /// Silence from a publisher.
    idle: Duration,
    /// Largest message before the publish is accepted.
    before_publish: usize,
    /// `rtmp.max_bitrate`, bits per second; 0 for none.
    max_bitrate: u64,
}

impl Limits {
    pub fn new(config: &RtmpConfig) -> Self {
        // The config is validated; this only keeps a NaN or a negative from turning into a panic.
        let secs = |v: f64, fallback: u64| {
            Duration::try_from_secs_f64(v).ok().filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(fallback))
        };
        Self {
            handshake: secs(config.handshake_timeout, 5),
            idle: secs(config.idle_timeout, 10),
            before_publish: config.max_message_before_publish,
            max_bitrate: config.max_bitrate,
        }
    }
}

/// How a connection ended when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client hung up (or reset the connection).
    ClientClosed,
    /// The client ended its publish (`FCUnpublish`/`deleteStream`).
    PublishFinished,
    /// The gate refused the publish; the client was told.
    Refused(Refusal),
    /// The channel cancelled the publish's kick token.
    Kicked,
    /// The channel dropped its end of the media queue.
    ChannelClosed,
    /// The daemon is shutting down.
    Shutdown,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::ClientClosed => f.write_str("client closed the connection"),
            Ended::PublishFinished => f.write_str("client ended the publish"),
            Ended::Refused(r) => write!(f, "publish refused ({})", r.label()),
            Ended::Kicked => f.write_str("channel ended the publish"),
            Ended::ChannelClosed => f.write_str("channel stopped taking media"),
            Ended::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// The channel a connection publishes to, if it got that far.
#[derive(Debug, Clone, Default)]
pub struct ChannelName(Option<String>);

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or("none"))
    }
}

/// Why the server closed an RTMP connection.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("RTMP peer {peer}: handshake, connect and publish not done within {limit:?}")]
    HandshakeTimeout { peer: SocketAddr, limit: Duration },
    #[error("RTMP peer {peer} (channel {channel}): nothing received for {limit:?}")]
    IdleTimeout { peer: SocketAddr, channel: ChannelName, limit: Duration },
    #[error("RTMP peer {peer}: handshake failed: {source}")]
    Handshake {
        peer: SocketAddr,
        #[source]
        source: HandshakeError,
    },
    #[error("RTMP peer {peer} (channel {channel}): {source}")]
    Session {
        peer: SocketAddr,
        channel: ChannelName,
        #[source]
        source: ServerSessionError,
    },
    #[error("RTMP peer {peer} (channel {channel}): chunk stream refused: {source}")]
    Chunk {
        peer: SocketAddr,
        channel: ChannelName,
        #[source]
        source: ChunkViolation,
    },
    #[error("RTMP peer {peer} (channel {channel}): socket: {source}")]
    Io {
        peer: SocketAddr,
        channel: ChannelName,
        #[source]
        source: io::Error,
    },
    #[error(
        "publish refused: unsupported codec {what} (channel {channel}, peer {peer}, RTMP timestamp {timestamp} ms)"
    )]
    UnsupportedCodec { peer: SocketAddr, channel: String, what: String, timestamp: u32 },
    #[error(
        "channel {channel}, peer {peer}: {measured_bps} bit/s over the last {window_s} s, more than twice rtmp.max_bitrate ({limit_bps} bit/s)"
    )]
    BitrateExceeded { peer: SocketAddr, channel: String, measured_bps: u64, limit_bps: u64, window_s: u64 },
    #[error(
        "channel {channel}, peer {peer}: {count} malformed FLV tags in a row, the last at RTMP timestamp {timestamp} ms: {source}"
    )]
    MalformedTags {
        peer: SocketAddr,
        channel: String,
        count: u32,
        timestamp: u32,
        #[source]
        source: FlvError,
    },
}

impl IngestError {
    /// The `reason` label of `rtmp_connections_dropped`, for the errors that count there.
    pub(super) fn drop_reason(&self) -> Option<&'static str> {
        match self {
            IngestError::HandshakeTimeout { .. } => Some("handshake_timeout"),
            IngestError::IdleTimeout { .. } => Some("idle_timeout"),
            IngestError::Handshake { .. }
            | IngestError::Session { .. }
            | IngestError::Chunk { .. }
            | IngestError::MalformedTags { .. } => Some("protocol"),
            IngestError::BitrateExceeded { .. } => Some("bitrate"),
            // Counted as a publish rejection instead.
            IngestError::UnsupportedCodec { .. } => None,
            IngestError::Io { .. } => None,
        }
    }

    pub(super) fn log(&self) {
        match self {
            IngestError::HandshakeTimeout { .. } | IngestError::IdleTimeout { .. } => {
                tracing::info!(error = %self, "RTMP connection dropped");
            }
            IngestError::UnsupportedCodec { .. } => tracing::error!("{self}"),
            _ => tracing::warn!(error = %self, "RTMP connection dropped"),
        }
    }
}

/// What ends the connection loop: a clean end or an error.
enum Stop {
    Ended(Ended),
    Failed(IngestError),
}

impl From<Ended> for Stop {
    fn from(e: Ended) -> Self {
        Stop::Ended(e)
    }
}

impl From<IngestError> for Stop {
    fn from(e: IngestError) -> Self {
        Stop::Failed(e)
    }
}

/// The live publish of a connection.
struct ActivePublish {
    channel: String,
    media: mpsc::Sender<Arrival>,
    kick: CancellationToken,
    activity: Arc<AtomicU64>,
    timeline: Timeline,
    /// Each track's timestamps kept advancing before the timeline places them.
    video_clock: TrackClock,
    audio_clock: TrackClock,
    frozen_tracks: IntCounterVec,
    video: VideoDemuxer,
    ingest_bytes: IntCounter,
    /// The source's frame rate and keyframe interval.
    cadence: CadenceGauges,
    malformed_in_a_row: u32,
    malformed_total: u64,
    /// Jumps of the publisher's clock so far, to log them sparingly.
    timeline_jumps: u64,
    /// Presentation time of the latest video frame: where timed text from the publisher goes.
    last_video_pts: Ticks,
    timed_text: TokenBucket,
    timed_text_dropped: IntCounterVec,
    /// The audio codec this ingest does not take, once one was seen: its tags are dropped from
    /// then on, and the video goes on alone.
    unsupported_audio: Option<String>,
    audio_dropped: IntCounter,
    queue_budget: Arc<tokio::sync::Semaphore>,
    queue_limit: usize,
    queued_bytes: prometheus::IntGauge,
    /// Whether this publish has waited on a full queue budget yet (said once).
    queue_full_said: bool,
    /// Timed text messages dropped so far, to log them sparingly.
    timed_text_drops: u64,
    bitrate: BitrateWindow,
}

/// The window over which a publisher's bitrate is held to `rtmp.max_bitrate`: long enough that
/// keyframes and a catch-up after a network stall (bursts of a few seconds) pass.
const BITRATE_WINDOW: Duration = Duration::from_secs(5);
/// How far over `rtmp.max_bitrate` a publisher may go over a window before it is ended.
const BITRATE_TOLERANCE: u64 = 2;

/// Bytes of media received in the current [`BITRATE_WINDOW`].
struct BitrateWindow {
    limit_bps: u64,
    start: Instant,
    bytes: u64,
}

impl BitrateWindow {
    /// Counts `bytes`; the rate measured if it is over the tolerance, ended early once the
    /// window's allowance is spent (a flood need not be taken for a whole window).
    fn add(&mut self, bytes: usize) -> Option<u64> {
        if self.limit_bps == 0 {
            return None;
        }
        self.bytes = self.bytes.saturating_add(bytes as u64);
        let allowance = self.limit_bps.saturating_mul(BITRATE_TOLERANCE).saturating_mul(BITRATE_WINDOW.as_secs()) / 8;
        let elapsed = self.start.elapsed();
        if self.bytes > allowance {
            let secs = elapsed.as_secs_f64().max(0.001);
            return Some((self.bytes as f64 * 8.0 / secs) as u64);
        }
        if elapsed >= BITRATE_WINDOW {
            (self.start, self.bytes) = (Instant::now(), 0);
        }
        None
    }
}

impl ActivePublish {
    fn new(publish: Publish, metrics: &Metrics, max_bitrate: u64) -> Self {
        let ingest_bytes = metrics.ingest_bytes.with_label_values(&[&publish.channel]);
        let queued_bytes = metrics.ingest_queued_bytes.with_label_values(&[&publish.channel]);
        let audio_dropped = metrics.ingest_audio_dropped.with_label_values(&[&publish.channel, "unsupported_codec"]);
        let cadence = CadenceGauges::new(
            metrics.ingest_frame_rate.with_label_values(&[&publish.channel]),
            metrics.ingest_keyframe_interval.with_label_values(&[&publish.channel]),
        );
        Self {
            channel: publish.channel,
            media: publish.media,
            kick: publish.kick,
            activity: publish.activity,
            timeline: Timeline::new(),
            video_clock: TrackClock::new(1000.0 / 30.0),
            // An AAC frame is 1024 samples; 48 kHz is the common rate.
            audio_clock: TrackClock::new(1024.0 / 48.0),
            frozen_tracks: metrics.ingest_frozen_tracks.clone(),
            video: VideoDemuxer::new(),
            ingest_bytes,
            cadence,
            malformed_in_a_row: 0,
            malformed_total: 0,
            timeline_jumps: 0,
            last_video_pts: 0,
            timed_text: publish.timed_text,
            timed_text_dropped: metrics.ingest_timed_text_dropped.clone(),
            unsupported_audio: None,
            audio_dropped,
            queue_budget: publish.queue_budget,
            queue_limit: publish.queue_limit,
            queued_bytes,
            queue_full_said: false,
            bitrate: BitrateWindow { limit_bps: max_bitrate, start: Instant::now(), bytes: 0 },
            timed_text_drops: 0,
        }
    }

    /// Ends the publish when it runs far over `rtmp.max_bitrate`.
    fn check_bitrate(&mut self, peer: SocketAddr, bytes: usize) -> Result<(), IngestError> {
        match self.bitrate.add(bytes) {
            None => Ok(()),
            Some(measured_bps) => Err(IngestError::BitrateExceeded {
                peer,
                channel: self.channel.clone(),
                measured_bps,
                limit_bps: self.bitrate.limit_bps,
                window_s: BITRATE_WINDOW.as_secs(),
            }),
        }
    }

    /// A track's timestamp, kept advancing; says so when the track froze or resumed.
    fn track_time(&mut self, peer: SocketAddr, track: &'static str, rtmp_ms: u32) -> u32 {
        let clock = if track == "video" { &mut self.video_clock } else { &mut self.audio_clock };
        let (placed, said) = clock.place(rtmp_ms);
        let channel = &self.channel;
        match said {
            Freeze::None => {}
            Freeze::Frozen { at_ms } => {
                self.frozen_tracks.with_label_values(&[channel, track]).inc();
                tracing::warn!(
                    %peer,
                    %channel,
                    track,
                    at_ms,
                    "RTMP {track} timestamps stopped advancing while the publisher keeps sending (an encoder fault); its frames are timed by their count so the channel keeps publishing"
                );
            }
            Freeze::Resumed { frozen_ms } => {
                tracing::info!(%peer, %channel, track, frozen_ms = frozen_ms.round(), "RTMP {track} timestamps advance again");
            }
        }
        placed
    }

    /// Logs a jump of the publisher's clock that the timeline absorbed while placing the last packet.
    fn log_timeline_jump(&mut self, peer: SocketAddr, track: &'static str) {
        let Some(jump) = self.timeline.take_jump() else { return };
        self.timeline_jumps += 1;
        let (channel, from_ms, to_ms, placed_ms) = (&self.channel, jump.from_ms, jump.to_ms, jump.placed_ms);
        // A publisher whose tracks run on two different clocks jumps on every packet: say it
        // loudly at first, then sparingly.
        if self.timeline_jumps <= 10 || self.timeline_jumps.is_multiple_of(100) {
            tracing::warn!(%peer, %channel, track, from_ms, to_ms, placed_ms, total = self.timeline_jumps, "RTMP timestamps jumped; timeline re-anchored");
        } else {
            tracing::debug!(%peer, %channel, track, from_ms, to_ms, placed_ms, "RTMP timestamps jumped; timeline re-anchored");
        }
    }
}

/// One RTMP connection, from the first handshake byte to its end; the listener runs one per
/// accepted socket, inside `catch_unwind`.
pub struct Connection {
    socket: Box<dyn Socket>,
    peer: SocketAddr,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// When handshake, `connect` and `publish` must be done by.
    deadline: Instant,
    /// Responses waiting to be written, in the order rml_rtmp serialized them.
    out: Vec<u8>,
    guard: ChunkGuard,
    publish: Option<ActivePublish>,
    /// This connection's place among the open ones; it moves up as the client gets further.
    ticket: Ticket,
}

/// Outcome of one socket read.
enum ReadOutcome {
    Bytes(usize),
    Stop(Stop),
    TimedOut,
}

impl Connection {
    pub fn new(
        socket: Box<dyn Socket>,
        peer: SocketAddr,
        limits: Limits,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        ticket: Ticket,
    ) -> Self {
        Self {
            socket,
            peer,
            limits,
            metrics,
            shutdown,
            deadline: Instant::now() + limits.handshake,
            out: Vec::new(),
            guard: ChunkGuard::with_limit_before_publish(limits.before_publish),
            publish: None,
            ticket,
        }
    }

    /// Runs the connection to its end: handshake, `connect`, `publish` (asked of `gate`), media.
    pub async fn run<G: PublishGate>(mut self, gate: &G) -> Result<Ended, IngestError> {
        let result = self.drive(gate).await;
        // Dropping the sender is what ends the publish for the channel; do it before lingering.
        self.publish = None;
        match result {
            Ok(never) => match never {},
            Err(Stop::Ended(end)) => {
                if matches!(end, Ended::Refused(_) | Ended::PublishFinished) {
                    self.linger().await;
                }
                Ok(end)
            }
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    /// Runs the connection until something ends it; only the error side returns.
    async fn drive<G: PublishGate>(&mut self, gate: &G) -> Result<Infallible, Stop> {
        let mut buf = vec![0u8; READ_BUFFER];
        let leftover = self.handshake(&mut buf).await?;
        let (mut session, initial) = ServerSession::new(session_config()).map_err(|e| self.session_error(e))?;
        self.queue(initial);
        self.flush().await?;
        if !leftover.is_empty() {
            self.feed(&mut session, &leftover, gate).await?;
        }
        loop {
            let n = self.read(&mut buf).await?;
            self.feed(&mut session, &buf[..n], gate).await?;
        }
    }

    /// Runs the RTMP handshake (RTMP spec §5.2); returns the bytes that followed it.
    async fn handshake(&mut self, buf: &mut [u8]) -> Result<Vec<u8>, Stop> {
        let mut handshake = Handshake::new(PeerType::Server);
        let mut received = 0usize;
        loop {
            let n = self.read(buf).await?;
            received += n;
            if received >= C0_C1_LEN {
                self.ticket.reached(Stage::Handshaking);
            }
            let step = handshake
                .process_bytes(&buf[..n])
                .map_err(|source| IngestError::Handshake { peer: self.peer, source })?;
            match step {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.out.extend_from_slice(&response_bytes);
                    self.flush().await?;
                }
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    self.ticket.reached(Stage::Handshaken);
                    self.out.extend_from_slice(&response_bytes);
                    self.flush().await?;
                    return Ok(remaining_bytes);
                }
            }
        }
    }

    /// The deadline of the next read or write: the handshake deadline until a publish is
    /// accepted, then the idle timeout.
    fn io_deadline(&self) -> Instant {
        match self.publish {
            None => self.deadline,
            Some(_) => Instant::now() + self.limits.idle,
        }
    }

    fn timeout_error(&self) -> IngestError {
        match self.publish {
            None => IngestError::HandshakeTimeout { peer: self.peer, limit: self.limits.handshake },
            Some(_) => {
                IngestError::IdleTimeout { peer: self.peer, channel: self.channel_name(), limit: self.limits.idle }
            }
        }
    }

    fn channel_name(&self) -> ChannelName {
        ChannelName(self.publish.as_ref().map(|p| p.channel.clone()))
    }

    fn session_error(&self, source: ServerSessionError) -> Stop {
        Stop::Failed(IngestError::Session { peer: self.peer, channel: self.channel_name(), source })
    }

    fn io_error(&self, source: io::Error) -> Stop {
        // A publisher that goes away mid-stream often resets rather than closes: not an error.
        match source.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Stop::Ended(Ended::ClientClosed),
            _ => Stop::Failed(IngestError::Io { peer: self.peer, channel: self.channel_name(), source }),
        }
    }

    /// Reads some bytes (never zero: end of stream is [`Ended::ClientClosed`]), watching the
    /// deadlines, the kick token of the publish and shutdown.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Stop> {
        let limit = self.io_deadline();
        let kick = self.publish.as_ref().map(|p| p.kick.clone());
        let kicked = async move {
            match kick {
                Some(k) => k.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => ReadOutcome::Stop(Ended::Shutdown.into()),
            () = kicked => ReadOutcome::Stop(Ended::Kicked.into()),
            read = tokio::time::timeout_at(limit, self.socket.read(buf)) => match read {
                Err(_) => ReadOutcome::TimedOut,
                Ok(Ok(0)) => ReadOutcome::Stop(Ended::ClientClosed.into()),
                Ok(Ok(n)) => ReadOutcome::Bytes(n),
                Ok(Err(e)) => ReadOutcome::Stop(self.io_error(e)),
            },
        };
        match outcome {
            ReadOutcome::Bytes(n) => {
                if let Some(p) = &self.publish {
                    p.activity.store(super::activity_clock(), Ordering::Relaxed);
                }
                Ok(n)
            }
            ReadOutcome::Stop(stop) => Err(stop),
            ReadOutcome::TimedOut => Err(self.timeout_error().into()),
        }
    }

    /// Writes the queued responses. A client that stops reading is treated like one that stops
    /// sending: the same deadline applies.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let limit = self.io_deadline();
        let written = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => None,
            written = tokio::time::timeout_at(limit, self.socket.write_all(&self.out)) => Some(written),
        };
        match written {
            None => Err(Ended::Shutdown.into()),
            Some(Err(_)) => Err(self.timeout_error().into()),
            Some(Ok(Err(e))) => Err(self.io_error(e)),
            Some(Ok(Ok(()))) => {
                self.out.clear();
                if self.out.capacity() > READ_BUFFER {
                    self.out = Vec::new();
                }
                Ok(())
            }
        }
    }

    /// Half-closes and drains for a moment, so the client reads our last response.
    async fn linger(&mut self) {
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            let _ = self.flush().await;
            let _ = self.socket.shutdown().await;
            while let Ok(n) = self.socket.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Queues the outbound packets of `results`, logs what else is there, and returns the events.
    fn queue(&mut self, results: Vec<ServerSessionResult>) -> Vec<ServerSessionEvent> {
        let mut events = Vec::new();
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => self.out.extend_from_slice(&packet.bytes),
                ServerSessionResult::RaisedEvent(event) => events.push(event),
                ServerSessionResult::UnhandleableMessageReceived(payload) => {
                    tracing::debug!(peer = %self.peer, type_id = payload.type_id, "RTMP message ignored");
                }
            }
        }
        events
    }

    /// Hands bytes from the socket to the session and acts on what comes out.
    async fn feed<G: PublishGate>(&mut self, session: &mut ServerSession, bytes: &[u8], gate: &G) -> Result<(), Stop> {
        self.guard.check(bytes).map_err(|source| IngestError::Chunk {
            peer: self.peer,
            channel: self.channel_name(),
            source,
        })?;
        for message in self.guard.take_timed_text() {
            self.timed_text(&message).await?;
        }
        for slice in bytes.chunks(SESSION_INPUT_SLICE) {
            let results = session.handle_input(slice).map_err(|e| self.session_error(e))?;
            // The packets of this batch were serialized before anything an event handler adds,
            // and rml_rtmp's header compression needs them sent in serialization order.
            let events = self.queue(results);
            self.flush().await?;
            for event in events {
                self.event(session, event, gate).await?;
            }
        }
        Ok(())
    }

    async fn event<G: PublishGate>(
        &mut self,
        session: &mut ServerSession,
        event: ServerSessionEvent,
        gate: &G,
    ) -> Result<(), Stop> {
        let peer = self.peer;
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, app_name } => {
                tracing::debug!(%peer, app = ?app_name, "RTMP connect");
                let results = session.accept_request(request_id).map_err(|e| self.session_error(e))?;
                self.ticket.reached(Stage::Connected);
                self.queue_nested(results);
                self.flush().await
            }
            ServerSessionEvent::PublishStreamRequested { request_id, app_name, stream_key, mode } => {
                tracing::debug!(%peer, app = ?app_name, key = %redact(&stream_key), ?mode, "RTMP publish");
                self.publish_requested(session, request_id, &app_name, &stream_key, gate).await
            }
            ServerSessionEvent::PublishStreamFinished { .. } => Err(Ended::PublishFinished.into()),
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                tracing::debug!(%peer, "RTMP play refused: this is an ingest server");
                let results = session
                    .reject_request(request_id, "NetStream.Play.Failed", "this server only accepts publishers")
                    .map_err(|e| self.session_error(e))?;
                self.queue_nested(results);
                self.flush().await
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                tracing::debug!(%peer, channel = %self.channel_name(), ?metadata, "stream metadata");
                Ok(())
            }
            ServerSessionEvent::VideoDataReceived { data, timestamp, .. } => self.video(data, timestamp.value).await,
            ServerSessionEvent::AudioDataReceived { data, timestamp, .. } => self.audio(data, timestamp.value).await,
            ServerSessionEvent::UnhandleableAmf0Command { command_name, .. } => {
                // FCPublish, releaseStream, FCUnpublish, _checkbw: Adobe-specific, no answer needed.
                tracing::debug!(%peer, command = ?command_name, "RTMP command ignored");
                Ok(())
            }
            ServerSessionEvent::ReleaseStreamRequested { stream_key, .. } => {
                // Its Debug form would print the whole key.
                tracing::trace!(%peer, key = %redact(&stream_key), "RTMP releaseStream");
                Ok(())
            }
            ServerSessionEvent::PlayStreamFinished { .. }
            | ServerSessionEvent::ClientChunkSizeChanged { .. }
            | ServerSessionEvent::AcknowledgementReceived { .. }
            | ServerSessionEvent::PingResponseReceived { .. } => {
                tracing::trace!(%peer, ?event, "RTMP event");
                Ok(())
            }
        }
    }

    /// Queues the packets of an accept or reject; those raise no events of their own.
    fn queue_nested(&mut self, results: Vec<ServerSessionResult>) {
        for event in self.queue(results) {
            tracing::debug!(peer = %self.peer, ?event, "unexpected RTMP event from a response");
        }
    }

    async fn publish_requested<G: PublishGate>(
        &mut self,
        session: &mut ServerSession,
        request_id: u32,
        app: &str,
        stream_key: &str,
        gate: &G,
    ) -> Result<(), Stop> {
        if self.publish.is_some() {
            // The channel's queue belongs to this connection's one publish.
            let results = session
                .reject_request(request_id, "NetStream.Publish.BadName", "already publishing on this connection")
                .map_err(|e| self.session_error(e))?;
            self.queue_nested(results);
            return self.flush().await;
        }
        let outcome =
            if self.ticket.may_try_key() { gate.begin(app, stream_key, self.peer) } else { Err(Refusal::Throttled) };
        if outcome.as_ref().is_err_and(|r| *r == Refusal::UnknownKey) {
            self.ticket.key_failed();
        }
        match outcome {
            Ok(publish) => {
                let results = session.accept_request(request_id).map_err(|e| self.session_error(e))?;
                tracing::debug!(peer = %self.peer, channel = %publish.channel, "publish accepted");
                self.ticket.publishing();
                self.guard.publishing();
                self.publish = Some(ActivePublish::new(publish, &self.metrics, self.limits.max_bitrate));
                self.queue_nested(results);
                self.flush().await
            }
            Err(refusal) => {
                self.metrics.publish_rejections.with_label_values(&[refusal.label()]).inc();
                if refusal == Refusal::Throttled {
                    // Admission warned once for the address; a guesser must not flood the log.
                    tracing::debug!(peer = %self.peer, "publish refused: address throttled");
                } else {
                    tracing::warn!(
                        peer = %self.peer,
                        app,
                        key = %redact(stream_key),
                        reason = refusal.label(),
                        "publish refused"
                    );
                }
                // The client is not told which: a "busy" would confirm that a guessed key is
                // right, and a "throttled" that guessing is noticed.
                let description = match refusal {
                    Refusal::UnknownKey | Refusal::Busy | Refusal::Throttled => "publish refused".to_string(),
                    Refusal::BadApp | Refusal::Draining => format!("publish refused: {}", refusal.label()),
                };
                let results = session
                    .reject_request(request_id, "NetStream.Publish.BadName", &description)
                    .map_err(|e| self.session_error(e))?;
                self.queue_nested(results);
                self.flush().await?;
                Err(Ended::Refused(refusal).into())
            }
        }
    }

    async fn video(&mut self, body: Bytes, timestamp: u32) -> Result<(), Stop> {
        let peer = self.peer;
        let Some(p) = self.publish.as_mut() else { return Ok(()) };
        p.ingest_bytes.inc_by(body.len() as u64);
        p.check_bitrate(peer, body.len())?;
        let packet = match p.video.parse(body) {
            Ok(VideoTag::Params(params)) => MediaPacket::VideoParams(params),
            Ok(VideoTag::Frame { keyframe, composition_ms, data }) => {
                let timestamp = p.track_time(peer, "video", timestamp);
                let (dts, pts) = p.timeline.video(timestamp, composition_ms);
                p.log_timeline_jump(peer, "video");
                p.last_video_pts = pts;
                p.cadence.frame(dts, pts, keyframe);
                MediaPacket::Video(Sample { pts, dts, keyframe, segment_start: false, data })
            }
            Ok(VideoTag::Nothing) => {
                p.malformed_in_a_row = 0;
                return Ok(());
            }
            Err(e) => return self.bad_tag(e, "video", timestamp),
        };
        p.malformed_in_a_row = 0;
        self.forward(packet).await
    }

    /// `onTextData`/`onCuePoint` from the publisher become timed metadata at the latest video
    /// frame, as posts to the API do (Amazon IVS does the same with them).
    async fn timed_text(&mut self, amf: &[u8]) -> Result<(), Stop> {
        let peer = self.peer;
        let Some(p) = self.publish.as_mut() else { return Ok(()) };
        let Some(payload) = timed_text_payload(amf) else { return Ok(()) };
        let refused = if payload.len() > MAX_TIMED_TEXT {
            Some("size")
        } else if p.timed_text.take(std::time::Instant::now()).is_err() {
            Some("rate")
        } else {
            None
        };
        if let Some(reason) = refused {
            p.timed_text_dropped.with_label_values(&[&p.channel, reason]).inc();
            p.timed_text_drops += 1;
            // A flood must not flood the log: the first few, then one in a hundred.
            if p.timed_text_drops <= 5 || p.timed_text_drops.is_multiple_of(100) {
                tracing::warn!(
                    channel = %p.channel,
                    %peer,
                    bytes = payload.len(),
                    reason,
                    total = p.timed_text_drops,
                    "publisher timed text dropped: over 1024 bytes, or over admin.metadata_rate / admin.metadata_burst"
                );
            }
            return Ok(());
        }
        let pts = p.last_video_pts;
        self.forward(MediaPacket::Metadata { pts, payload }).await
    }

    async fn audio(&mut self, body: Bytes, timestamp: u32) -> Result<(), Stop> {
        let peer = self.peer;
        let Some(p) = self.publish.as_mut() else { return Ok(()) };
        p.ingest_bytes.inc_by(body.len() as u64);
        p.check_bitrate(peer, body.len())?;
        if p.unsupported_audio.is_some() {
            p.audio_dropped.inc();
            return Ok(());
        }
        let packet = match flv::parse_audio(body) {
            Ok(AudioTag::Params(params)) => MediaPacket::AudioParams(params),
            Ok(AudioTag::Frame(data)) => {
                let timestamp = p.track_time(peer, "audio", timestamp);
                let dts = p.timeline.dts(timestamp);
                p.log_timeline_jump(peer, "audio");
                MediaPacket::Audio(Sample { pts: dts, dts, keyframe: true, segment_start: false, data })
            }
            Ok(AudioTag::Nothing) => {
                p.malformed_in_a_row = 0;
                return Ok(());
            }
            Err(FlvError::UnsupportedCodec(what)) => {
                // The video needs no audio; dropping this keeps the channel on the air (the audio
                // rendition is simply not there).
                tracing::warn!(
                    %peer,
                    channel = %p.channel,
                    codec = %what,
                    "RTMP audio in a codec this ingest does not take: the audio is dropped, the video goes on (publish AAC to have audio)"
                );
                p.audio_dropped.inc();
                p.unsupported_audio = Some(what);
                return Ok(());
            }
            Err(e) => return self.bad_tag(e, "audio", timestamp),
        };
        p.malformed_in_a_row = 0;
        self.forward(packet).await
    }

    /// An FLV tag that did not parse: an unsupported codec ends the publish at once; a malformed
    /// tag is dropped, and only a run of them ends the publish.
    fn bad_tag(&mut self, error: FlvError, kind: &'static str, timestamp: u32) -> Result<(), Stop> {
        let peer = self.peer;
        let Some(p) = self.publish.as_mut() else { return Ok(()) };
        if let FlvError::UnsupportedCodec(what) = error {
            self.metrics.publish_rejections.with_label_values(&["unsupported_codec"]).inc();
            return Err(IngestError::UnsupportedCodec { peer, channel: p.channel.clone(), what, timestamp }.into());
        }
        p.malformed_in_a_row += 1;
        p.malformed_total += 1;
        if p.malformed_in_a_row >= MALFORMED_TAGS_LIMIT {
            return Err(IngestError::MalformedTags {
                peer,
                channel: p.channel.clone(),
                count: p.malformed_in_a_row,
                timestamp,
                source: error,
            }
            .into());
        }
        // A broken encoder sends a broken tag per frame: say it loudly at first, then sparingly.
        if p.malformed_total <= 10 || p.malformed_total % 100 == 0 {
            tracing::warn!(%peer, channel = %p.channel, kind, timestamp, total = p.malformed_total, error = %error, "malformed FLV tag dropped");
        } else {
            tracing::debug!(%peer, channel = %p.channel, kind, timestamp, error = %error, "malformed FLV tag dropped");
        }
        Ok(())
    }

    /// Sends a packet to the channel. Waiting here is the backpressure: while the channel is
    /// behind, the socket is not read and TCP slows the publisher down.
    async fn forward(&mut self, packet: MediaPacket) -> Result<(), Stop> {
        let peer = self.peer;
        let Some(p) = self.publish.as_mut() else { return Ok(()) };
        let at = SystemTime::now();
        // Its size of the queue budget first: a channel that is behind slows the socket.
        let bytes = packet.payload_len().clamp(1, p.queue_limit) as u32;
        let charge = loop {
            if let Ok(permit) = p.queue_budget.clone().try_acquire_many_owned(bytes) {
                break permit;
            }
            if !std::mem::replace(&mut p.queue_full_said, true) {
                tracing::warn!(
                    %peer,
                    channel = %p.channel,
                    config_key = "rtmp.max_queued_bytes",
                    limit = p.queue_limit,
                    "the channel is behind its publisher: its ingest queue is full, reading from the publisher waits (said once per publish)"
                );
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Ended::Shutdown.into()),
                () = p.kick.cancelled() => return Err(Ended::Kicked.into()),
                permit = p.queue_budget.clone().acquire_many_owned(bytes) => match permit {
                    Ok(permit) => break permit,
                    Err(_) => return Err(Ended::ChannelClosed.into()),
                },
                () = tokio::time::sleep(ACTIVITY_REFRESH) => {
                    p.activity.store(super::activity_clock(), Ordering::Relaxed);
                }
            }
        };
        let charge = Some(Arc::new(QueueCharge::new(charge, p.queued_bytes.clone())));
        let arrival = Arrival { packet, at, charge };
        let p = &*p;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Ended::Shutdown.into()),
                () = p.kick.cancelled() => return Err(Ended::Kicked.into()),
                permit = p.media.reserve() => return match permit {
                    Ok(permit) => {
                        permit.send(arrival);
                        Ok(())
                    }
                    Err(_) => Err(Ended::ChannelClosed.into()),
                },
                // The channel is behind and the socket is not being read: the publisher is still
                // sending, and must not look silent to a connection that would take its place.
                () = tokio::time::sleep(ACTIVITY_REFRESH) => {
                    p.activity.store(super::activity_clock(), Ordering::Relaxed);
                }
            }
        }
    }
}

fn session_config() -> ServerSessionConfig {
    let mut config = ServerSessionConfig::new();
    config.chunk_size = OUTBOUND_CHUNK_SIZE;
    config
}

/// A stream key as logs may show it: enough to tell keys apart, not enough to publish with.
fn redact(key: &str) -> String {
    if key.chars().count() <= 4 {
        return "…".into();
    }
    let head: String = key.chars().take(2).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::ingest::admission::{Admission, AdmissionLimits};
    use crate::ingest::chunk_guard::AMF0_COMMAND;
    use crate::ingest::chunk_guard::tests::{amf_number, amf_string, chunks, nested_command};
    use crate::ingest::listener::serve;

    #[test]
    fn rtmp_keys_are_redacted() {
        assert_eq!(redact("demo-key-123"), "de…");
        assert_eq!(redact("abc"), "…");
        assert_eq!(redact("ключключ"), "кл…");
    }

    // ---- real sockets ----

    /// A gate that accepts one key once, and records every request.
    /// The key a [`FakeGate`] panics on.
    const PANIC_KEY: &str = "panic-in-the-gate";

    struct FakeGate {
        key: String,
        calls: Mutex<Vec<(String, String)>>,
        media: Mutex<Option<mpsc::Sender<Arrival>>>,
        kick: CancellationToken,
        queue_limit: usize,
    }

    impl FakeGate {
        fn new(key: &str) -> (Arc<Self>, mpsc::Receiver<Arrival>) {
            Self::with_queue(key, 64, 64 << 20)
        }

        /// A gate whose publish queue holds `packets` arrivals and `bytes` of their media.
        fn with_queue(key: &str, packets: usize, bytes: usize) -> (Arc<Self>, mpsc::Receiver<Arrival>) {
            let (tx, rx) = mpsc::channel(packets);
            let gate = FakeGate {
                key: key.into(),
                calls: Mutex::new(Vec::new()),
                media: Mutex::new(Some(tx)),
                kick: CancellationToken::new(),
                queue_limit: bytes,
            };
            (Arc::new(gate), rx)
        }

        fn calls(&self) -> Vec<(String, String)> {
            self.calls.lock().expect("lock").clone()
        }
    }

    impl PublishGate for FakeGate {
        fn begin(&self, app: &str, stream_key: &str, _peer: SocketAddr) -> Result<Publish, Refusal> {
            self.calls.lock().expect("lock").push((app.into(), stream_key.into()));
            assert_ne!(stream_key, PANIC_KEY, "the gate panics on this key");
            if stream_key != self.key {
                return Err(Refusal::UnknownKey);
            }
            let media = self.media.lock().expect("lock").take().ok_or(Refusal::Busy)?;
            Ok(Publish {
                channel: "test".into(),
                media,
                kick: self.kick.clone(),
                activity: Default::default(),
                timed_text: TokenBucket::new(5.0, 5),
                queue_budget: Arc::new(tokio::sync::Semaphore::new(self.queue_limit)),
                queue_limit: self.queue_limit,
            })
        }
    }

    struct Server {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(gate: Arc<FakeGate>, handshake_timeout: f64, max_connections: usize) -> Server {
            let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("ladderd=debug").try_init();
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let config = RtmpConfig {
                listen: addr,
                max_connections,
                handshake_timeout,
                idle_timeout: 5.0,
                app: "live".into(),
                ..RtmpConfig::default()
            };
            Self::start_with(listener, gate, config).await
        }

        async fn start_with(listener: TcpListener, gate: Arc<FakeGate>, config: RtmpConfig) -> Server {
            let addr = listener.local_addr().expect("local addr");
            let metrics = Arc::new(Metrics::new());
            let shutdown = CancellationToken::new();
            let admission = Admission::new(AdmissionLimits::new(&config), metrics.clone());
            let task = tokio::spawn(serve(listener, None, admission, gate, config, metrics.clone(), shutdown.clone()));
            Server { addr, metrics, shutdown, task }
        }

        fn dropped(&self, reason: &str) -> u64 {
            self.metrics.rtmp_connections_dropped.with_label_values(&[reason]).get()
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("serve ends").expect("no panic");
        }
    }

    /// Waits (up to 10 s) for a condition on shared state that another task sets.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes a synthetic 320x180 30 fps H.264 + AAC stream for `secs` with the ffmpeg CLI.
    async fn ffmpeg_publish(addr: SocketAddr, key: &str, secs: u32) -> std::process::Output {
        let video =
            ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p"];
        ffmpeg_publish_with(addr, key, secs, &video).await
    }

    /// Publishes the synthetic source with the given video encoder options.
    async fn ffmpeg_publish_with(addr: SocketAddr, key: &str, secs: u32, video: &[&str]) -> std::process::Output {
        let ffmpeg = std::env::var("FFMPEG").unwrap_or_else(|_| "ffmpeg".into());
        let url = format!("rtmp://{addr}/live/{key}");
        let secs = secs.to_string();
        let mut args: Vec<&str> = vec![
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            &secs,
        ];
        args.extend_from_slice(video);
        args.extend_from_slice(&["-c:a", "aac", "-f", "flv", &url]);
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(ffmpeg)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("ffmpeg runs (install it, or set FFMPEG)");
            // A server that never answers must fail the test, not hang it.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while child.try_wait().expect("wait for ffmpeg").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().expect("ffmpeg output")
        })
        .await
        .expect("join")
    }

    /// Runs the client side of the RTMP handshake.
    async fn client_handshake(socket: &mut TcpStream) {
        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs.generate_outbound_p0_and_p1().expect("c0c1");
        socket.write_all(&c0c1).await.expect("write c0c1");
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.expect("read s0s1s2");
            assert!(n > 0, "server closed during the handshake");
            match hs.process_bytes(&buf[..n]).expect("handshake") {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    socket.write_all(&response_bytes).await.expect("write");
                }
                HandshakeProcessResult::Completed { response_bytes, .. } => {
                    socket.write_all(&response_bytes).await.expect("write c2");
                    return;
                }
            }
        }
    }

    /// Reads until the server closes; true if it did within `limit`.
    async fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(limit, async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_ffmpeg_publish_delivers_params_then_timed_media() {
        let (gate, mut rx) = FakeGate::new("secret-key");
        let server = Server::start(gate.clone(), 5.0, 8).await;
        let collect = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(a) = rx.recv().await {
                got.push(a);
            }
            got
        });
        let out = ffmpeg_publish(server.addr, "secret-key", 2).await;
        assert!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
        let arrivals = tokio::time::timeout(Duration::from_secs(10), collect)
            .await
            .expect("the publish ends when ffmpeg leaves")
            .expect("join");

        assert_eq!(gate.calls(), vec![("live".to_string(), "secret-key".to_string())]);
        let first_video =
            arrivals.iter().position(|a| matches!(a.packet, MediaPacket::Video(_))).expect("video samples arrive");
        let params = arrivals[..first_video]
            .iter()
            .find_map(|a| match &a.packet {
                MediaPacket::VideoParams(p) => Some(p.clone()),
                _ => None,
            })
            .expect("video params before the first sample");
        assert_eq!((params.width, params.height), (320, 180));
        assert!(
            arrivals[..first_video].iter().any(|a| matches!(a.packet, MediaPacket::AudioParams(_))),
            "audio params before the first video sample"
        );

        let video: Vec<&Sample> = arrivals
            .iter()
            .filter_map(|a| match &a.packet {
                MediaPacket::Video(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(video[0].keyframe, "the first video sample is a keyframe");
        assert!((55..=65).contains(&video.len()), "about 60 frames in 2 s, got {}", video.len());
        assert!(video[0].dts.abs() <= 100 * 90, "first dts near 0: {}", video[0].dts);
        assert!(video.windows(2).all(|w| w[1].dts > w[0].dts), "video dts increases");
        assert!(video.iter().all(|s| s.pts >= s.dts && !s.segment_start && !s.data.is_empty()));
        let last = video.last().map(|s| s.dts).unwrap_or_default();
        assert!((150_000..=190_000).contains(&last), "2 s of 30 fps ends near 1.97 s: {last}");

        let audio: Vec<&Sample> = arrivals
            .iter()
            .filter_map(|a| match &a.packet {
                MediaPacket::Audio(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(audio.len() > 50, "2 s of 48 kHz AAC is ~94 frames, got {}", audio.len());
        assert!(audio.iter().all(|s| s.keyframe && s.pts == s.dts));

        assert!(server.metrics.ingest_bytes.with_label_values(&["test"]).get() > 10_000);
        eventually("connection gauge back to 0", || server.metrics.rtmp_connections.get() == 0).await;
        assert_eq!(server.dropped("protocol"), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_refused_key_fails_the_client_and_is_counted() {
        let (gate, _rx) = FakeGate::new("right-key");
        let server = Server::start(gate.clone(), 5.0, 8).await;
        let out = ffmpeg_publish(server.addr, "wrong-key", 1).await;
        assert!(!out.status.success(), "ffmpeg must fail when its publish is refused");
        assert_eq!(gate.calls(), vec![("live".to_string(), "wrong-key".to_string())]);
        assert_eq!(server.metrics.publish_rejections.with_label_values(&["unknown_key"]).get(), 1);
        eventually("connection gauge back to 0", || server.metrics.rtmp_connections.get() == 0).await;
        server.stop().await;
    }

    /// Log lines written at every level while it is held, on this thread (a current-thread
    /// runtime runs the server's tasks here).
    struct CapturedLogs {
        text: Arc<Mutex<Vec<u8>>>,
        _guard: tracing::subscriber::DefaultGuard,
    }

    impl CapturedLogs {
        fn start() -> Self {
            let text = Arc::new(Mutex::new(Vec::new()));
            let sink = text.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || SharedWriter(sink.clone()))
                .finish();
            CapturedLogs { text, _guard: tracing::subscriber::set_default(subscriber) }
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.text.lock().expect("lock")).into_owned()
        }
    }

    struct SharedWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn rtmp_keys_never_reach_the_log_and_refusals_do_not_say_why() {
        let logs = CapturedLogs::start();
        let (gate, mut rx) = FakeGate::new("Right-Key-0123456789");
        let server = Server::start(gate.clone(), 5.0, 8).await;
        let wrong = ffmpeg_publish(server.addr, "Wrong-Key-9876543210", 1).await;
        let stderr = String::from_utf8_lossy(&wrong.stderr);
        assert!(!wrong.status.success() && stderr.contains("publish refused"), "{stderr}");
        assert!(!stderr.contains("unknown"), "the client is not told why: {stderr}");
        // The key is taken once: a second publish of it is refused as busy, in the same words.
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let first = ffmpeg_publish(server.addr, "Right-Key-0123456789", 1).await;
        assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
        let busy = ffmpeg_publish(server.addr, "Right-Key-0123456789", 1).await;
        let busy_err = String::from_utf8_lossy(&busy.stderr);
        assert!(!busy.status.success() && busy_err.contains("publish refused"), "{busy_err}");
        assert!(!busy_err.contains("busy"), "a busy channel reads like a wrong key: {busy_err}");
        assert_eq!(server.metrics.publish_rejections.with_label_values(&["busy"]).get(), 1);
        assert_eq!(server.metrics.publish_rejections.with_label_values(&["unknown_key"]).get(), 1);
        server.stop().await;
        drain.abort();
        let text = logs.text();
        assert!(text.contains("key=Ri…") && text.contains("key=Wr…"), "the logs were captured:\n{text}");
        for key in ["Right-Key", "Wrong-Key", "0123456789", "9876543210"] {
            assert!(!text.contains(key), "{key} is in the log:\n{text}");
        }
    }

    #[tokio::test]
    async fn rtmp_unknown_keys_are_throttled_per_address() {
        let (gate, _rx) = FakeGate::new("Right-Key-0123456789");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let config = RtmpConfig { key_failures_per_minute: 3, ..RtmpConfig::default() };
        let server = Server::start_with(listener, gate.clone(), config).await;
        for i in 0..3 {
            let out = ffmpeg_publish(server.addr, &format!("guess-{i}"), 1).await;
            assert!(!out.status.success());
        }
        // The right key from the same address is refused too, without being looked at.
        let out = ffmpeg_publish(server.addr, "Right-Key-0123456789", 1).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("publish refused"), "{stderr}");
        assert_eq!(server.metrics.publish_rejections.with_label_values(&["throttled"]).get(), 1);
        assert_eq!(gate.calls().len(), 3, "a throttled publish never reaches the gate");
        server.stop().await;
    }

    #[tokio::test]
    async fn rtmp_silent_client_is_dropped_after_the_handshake_timeout() {
        let (gate, _rx) = FakeGate::new("k");
        let server = Server::start(gate.clone(), 0.3, 8).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await, "server closes a silent client");
        assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");
        eventually("handshake timeout counted", || server.dropped("handshake_timeout") == 1).await;

        // A handshake alone does not stop the clock either: connect and publish are part of it.
        let mut idle = TcpStream::connect(server.addr).await.expect("connect");
        client_handshake(&mut idle).await;
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
        eventually("second timeout counted", || server.dropped("handshake_timeout") == 2).await;
        assert!(gate.calls().is_empty());
        server.stop().await;
    }

    /// A connection from `source` (a loopback address: all of 127/8 is local on Linux).
    async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((source, 0))).expect("bind a loopback source address");
        socket.connect(to).await.expect("connect")
    }

    /// Whether the server has closed `socket` (it reads end of stream or a reset at once).
    async fn is_closed(socket: &mut TcpStream) -> bool {
        closed_within(socket, Duration::from_millis(300)).await
    }

    #[tokio::test]
    async fn rtmp_a_new_connection_displaces_the_least_advanced_pending_one() {
        let (gate, _rx) = FakeGate::new("k");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let config = RtmpConfig { max_pending: 2, max_pending_per_address: 8, ..RtmpConfig::default() };
        let server = Server::start_with(listener, gate, config).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        let mut shaken = TcpStream::connect(server.addr).await.expect("connect");
        client_handshake(&mut shaken).await;
        eventually("two pending", || server.metrics.rtmp_pending_connections.get() == 2).await;
        // The oldest of those that got least far goes: the silent one, not the handshaken one.
        let mut third = TcpStream::connect(server.addr).await.expect("connect");
        assert!(closed_within(&mut silent, Duration::from_secs(2)).await, "the silent connection is displaced");
        eventually("counted", || server.dropped("pending") == 1).await;
        // The third has not sent anything either, so the next newcomer displaces it, and again
        // the handshaken connection stays.
        let mut fourth = TcpStream::connect(server.addr).await.expect("connect");
        assert!(closed_within(&mut third, Duration::from_secs(2)).await, "the newer silent one goes next");
        eventually("counted", || server.dropped("pending") == 2).await;
        assert!(!is_closed(&mut shaken).await, "the handshaken connection keeps its place");
        assert!(!is_closed(&mut fourth).await, "the newest keeps its place");
        assert_eq!(server.dropped("limit"), 0, "nobody was refused at accept");
        assert_eq!(server.metrics.rtmp_pending_connections.get(), 2);
        server.stop().await;
    }

    #[tokio::test]
    async fn rtmp_pending_connections_per_address_displace_only_their_own() {
        let (gate, _rx) = FakeGate::new("k");
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let config = RtmpConfig { max_pending: 16, max_pending_per_address: 2, ..RtmpConfig::default() };
        let server = Server::start_with(listener, gate, config).await;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let mut other = connect_from([127, 0, 0, 2], to).await;
        let mut first = connect_from([127, 0, 0, 3], to).await;
        let mut second = connect_from([127, 0, 0, 3], to).await;
        eventually("three pending", || server.metrics.rtmp_pending_connections.get() == 3).await;
        let mut third = connect_from([127, 0, 0, 3], to).await;
        assert!(closed_within(&mut first, Duration::from_secs(2)).await, "that address's oldest is displaced");
        eventually("counted", || server.dropped("pending_per_address") == 1).await;
        for (name, socket) in [("other address", &mut other), ("second", &mut second), ("third", &mut third)] {
            assert!(!is_closed(socket).await, "{name} keeps its place");
        }
        assert_eq!(server.dropped("pending"), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_connections_beyond_the_publishers_are_refused_at_once() {
        let (gate, mut rx) = FakeGate::new("k1234");
        let server = Server::start(gate.clone(), 10.0, 1).await;
        let publisher = tokio::spawn(ffmpeg_publish(server.addr, "k1234", 3));
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("media arrives");
        assert!(first.is_some());
        assert_eq!(server.metrics.rtmp_pending_connections.get(), 0, "a publisher is not pending");
        // The only place is a publisher's: a newcomer cannot displace it.
        let mut second = TcpStream::connect(server.addr).await.expect("connect");
        assert!(closed_within(&mut second, Duration::from_secs(2)).await, "over the cap: closed at once");
        assert_eq!(server.dropped("limit"), 1);
        assert_eq!(server.metrics.rtmp_connections.get(), 1);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let out = publisher.await.expect("join");
        assert!(out.status.success(), "the publisher was never disturbed: {}", String::from_utf8_lossy(&out.stderr));
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_a_panic_while_serving_a_connection_ends_only_that_connection() {
        let (gate, _rx) = FakeGate::new("k");
        let server = Server::start(gate, 5.0, 8).await;
        // The chunk guard keeps every rml_rtmp panic known out; a panic anywhere in a connection's
        // task (here the gate's, on its key) must still end that connection alone.
        let _ = ffmpeg_publish_with(server.addr, PANIC_KEY, 1, &[]).await;
        eventually("panic counted", || server.dropped("panic") == 1).await;
        eventually("gauge released by the unwound task", || server.metrics.rtmp_connections.get() == 0).await;

        // The listener carries on.
        let mut good = TcpStream::connect(server.addr).await.expect("connect");
        client_handshake(&mut good).await;
        server.stop().await;
    }

    #[tokio::test]
    async fn rtmp_messages_rml_rtmp_would_panic_on_are_refused_before_it_sees_them() {
        let (gate, _rx) = FakeGate::new("k");
        let server = Server::start(gate, 5.0, 8).await;
        let command = |values: &[Vec<u8>]| values.concat();
        let (connect, one) = (amf_string("connect"), amf_number(1.0));
        let cases: Vec<(&str, u8, Vec<u8>)> = vec![
            ("a command of two values", AMF0_COMMAND, command(&[connect.clone(), one.clone()])),
            ("an empty command", AMF0_COMMAND, Vec::new()),
            ("an AMF3 command of two values", 17, command(&[vec![0], connect.clone(), one.clone()])),
            ("@setDataFrame alone", 18, amf_string("@setDataFrame")),
            ("@setDataFrame, onMetaData", 18, command(&[amf_string("@setDataFrame"), amf_string("onMetaData")])),
            ("the same as AMF3 data", 15, amf_string("@setDataFrame")),
        ];
        let mut streams: Vec<(&str, Vec<u8>)> =
            cases.iter().map(|(what, type_id, payload)| (*what, chunks(3, *type_id, payload, 128))).collect();
        // rml_rtmp subtracts 0xFFFFFF from the extended timestamp of a compressed first chunk,
        // which overflows below that: a full header, then a type 1 one on the same chunk stream
        // whose extended delta is 5.
        let mut small_delta = vec![0x03, 0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0, 0xAF];
        small_delta.extend([0x43, 0xFF, 0xFF, 0xFF, 0, 0, 1, 8, 0, 0, 0, 5, 0xAF]);
        streams.push(("an extended timestamp delta under 0xFFFFFF", small_delta));
        for (i, (what, stream)) in streams.iter().enumerate() {
            let mut socket = TcpStream::connect(server.addr).await.expect("connect");
            client_handshake(&mut socket).await;
            socket.write_all(stream).await.expect("write");
            assert!(closed_within(&mut socket, Duration::from_secs(5)).await, "{what}: closed");
            eventually(what, || server.dropped("protocol") == i as u64 + 1).await;
        }
        assert_eq!(server.dropped("panic"), 0, "refused before rml_rtmp parsed them");
        server.stop().await;
    }

    #[tokio::test]
    async fn rtmp_deeply_nested_amf_is_refused_before_parsing() {
        let (gate, _rx) = FakeGate::new("k");
        let server = Server::start(gate, 5.0, 8).await;
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        client_handshake(&mut socket).await;
        socket.write_all(&chunks(3, AMF0_COMMAND, &nested_command(5_000), 128)).await.ok();
        assert!(closed_within(&mut socket, Duration::from_secs(5)).await);
        eventually("protocol drop counted", || server.dropped("protocol") == 1).await;
        assert_eq!(server.dropped("panic"), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_unsupported_codec_ends_the_publish_and_is_counted() {
        let (gate, mut rx) = FakeGate::new("k1234");
        let server = Server::start(gate.clone(), 5.0, 8).await;
        // Sorenson H.263 (FLV codec id 2): a real FLV codec that this ingest does not take.
        let _ = ffmpeg_publish_with(server.addr, "k1234", 2, &["-c:v", "flv1"]).await;
        let arrivals = tokio::time::timeout(Duration::from_secs(10), async {
            let mut got = Vec::new();
            while let Some(a) = rx.recv().await {
                got.push(a);
            }
            got
        })
        .await
        .expect("the sender is dropped");
        assert!(arrivals.iter().all(|a| !matches!(a.packet, MediaPacket::Video(_) | MediaPacket::VideoParams(_))));
        assert_eq!(server.metrics.publish_rejections.with_label_values(&["unsupported_codec"]).get(), 1);
        eventually("connection gauge back to 0", || server.metrics.rtmp_connections.get() == 0).await;
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_unsupported_audio_is_dropped_and_the_video_goes_on() {
        let (gate, mut rx) = FakeGate::new("k1234");
        let server = Server::start(gate.clone(), 5.0, 8).await;
        let publisher = tokio::spawn(async move {
            let ffmpeg = std::env::var("FFMPEG").unwrap_or_else(|_| "ffmpeg".into());
            let url = format!("rtmp://{}/live/k1234", server.addr);
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(ffmpeg)
                    .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
                    .args(["-f", "lavfi", "-i", "testsrc2=size=160x90:rate=30"])
                    .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2"])
                    .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p"])
                    .args(["-c:a", "libmp3lame", "-f", "flv", &url])
                    .output()
                    .expect("ffmpeg runs")
            })
            .await
            .expect("join")
        });
        let mut frames = 0;
        let mut audio = 0;
        while let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            match a.packet {
                MediaPacket::Video(_) => frames += 1,
                MediaPacket::Audio(_) | MediaPacket::AudioParams(_) => audio += 1,
                _ => {}
            }
        }
        let out = publisher.await.expect("join");
        assert!(out.status.success(), "the publish is not ended: {}", String::from_utf8_lossy(&out.stderr));
        assert!(frames >= 50, "the video goes on: {frames} frames");
        assert_eq!(audio, 0, "no MP3 reaches the channel");
        let dropped = server.metrics.ingest_audio_dropped.with_label_values(&["test", "unsupported_codec"]).get();
        assert!(dropped >= 50, "each dropped MP3 tag is counted: {dropped}");
        assert_eq!(server.metrics.publish_rejections.with_label_values(&["unsupported_codec"]).get(), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_queued_media_is_bounded_in_bytes_and_a_slow_channel_slows_the_publisher() {
        // Room for 10,000 packets but only 30 kB of their media.
        let (gate, mut rx) = FakeGate::with_queue("k1234", 10_000, 30_000);
        let server = Server::start(gate.clone(), 5.0, 8).await;
        let queued = server.metrics.ingest_queued_bytes.with_label_values(&["test"]);
        let publisher = tokio::spawn(ffmpeg_publish(server.addr, "k1234", 3));
        // The channel takes nothing for 4 s: the queue fills to its budget and stays there.
        let mut peak = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            peak = peak.max(queued.get());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(peak > 15_000 && peak <= 30_000, "queued bytes peaked at {peak}");
        // Then it catches up: everything arrives, and the budget is all given back.
        let mut arrivals = 0;
        while let Ok(Some(a)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            arrivals += 1;
            drop(a);
        }
        let out = publisher.await.expect("join");
        assert!(
            out.status.success(),
            "the publisher was slowed, not dropped: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(arrivals > 90, "every frame arrives in the end: {arrivals}");
        assert_eq!(queued.get(), 0);
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_a_publisher_far_over_the_bitrate_cap_is_ended_with_the_reason() {
        let (gate, mut rx) = FakeGate::new("k1234");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        // 100 kbit/s: the synthetic source sends about 1.5 Mbit/s of video.
        let config = RtmpConfig { max_bitrate: 100_000, ..RtmpConfig::default() };
        let server = Server::start_with(listener, gate, config).await;
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let video = ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", "1500k", "-g", "30", "-pix_fmt", "yuv420p"];
        let started = Instant::now();
        let out = ffmpeg_publish_with(server.addr, "k1234", 10, &video).await;
        assert!(!out.status.success(), "the publisher is disconnected");
        assert!(started.elapsed() < Duration::from_secs(8), "well before its 10 s: {:?}", started.elapsed());
        eventually("counted", || server.dropped("bitrate") == 1).await;
        drain.abort();
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rtmp_kick_closes_the_publisher() {
        let (gate, mut rx) = FakeGate::new("k1234");
        let server = Server::start(gate.clone(), 5.0, 8).await;
        let publisher = tokio::spawn(ffmpeg_publish(server.addr, "k1234", 10));
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("media arrives");
        assert!(first.is_some());
        let kicked_at = Instant::now();
        gate.kick.cancel();
        // The connection closes, which ends the publish: the queue drains and closes.
        tokio::time::timeout(Duration::from_secs(5), async { while rx.recv().await.is_some() {} })
            .await
            .expect("the publish ends after a kick");
        let out = publisher.await.expect("join");
        assert!(kicked_at.elapsed() < Duration::from_secs(8), "ffmpeg gave up long before its 10 s");
        assert!(!out.status.success(), "a kicked ffmpeg reports an error");
        server.stop().await;
    }
}
