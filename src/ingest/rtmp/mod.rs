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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// [`Publish::finished`].
    finished: Arc<AtomicBool>,
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
            finished: publish.finished,
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
        if let (Err(Stop::Ended(Ended::PublishFinished)), Some(p)) = (&result, &self.publish) {
            // Before the queue closes, so that the channel reads it when it sees the end.
            p.finished.store(true, Ordering::Release);
        }
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
mod tests;
