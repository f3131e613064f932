//! The HTTP plumbing shared by the origin and the admin listener: an accept loop that speaks
//! HTTP/1.1 (keep-alive) and HTTP/2 (prior knowledge, h2c) on the same port, and a body type that
//! serves stored chunks without copying them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sync::lock;

/// A response body made of immutable chunks, sent in order, with an exact length.
pub struct Body {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Body {
    pub fn from_chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self { chunks, remaining }
    }

    pub fn empty() -> Self {
        Self { chunks: VecDeque::new(), remaining: 0 }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Self::from_chunks([b])
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Self::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Self::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Self::from(Bytes::from(v))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.chunks.pop_front() {
            Some(c) => {
                self.remaining -= c.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// How long a new connection has to show which protocol it speaks (see [`Opening`]).
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an HTTP/1.1 request head may take from its first byte to the start of the request
/// (slowloris bound), on a new connection as between keep-alive requests. hyper's own header
/// timer is the idle limit as well (it runs from the end of one response to the next head), so
/// it is set to `http.idle_timeout` and this bound is kept by [`Idle`].
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 connection preface (RFC 9113 §3.4), which a prior-knowledge client sends first.
const H2_PREFACE_LEN: usize = 24;

/// A new connection until it has shown its protocol: its first byte, or for HTTP/2 the whole
/// 24-byte preface, must come within [`OPENING_TIMEOUT`]. hyper's own header timeout starts
/// only after the automatic HTTP/1-or-2 detection has read those bytes, so without this a client
/// that connects and sends nothing (or half a preface) would hold a connection slot for ever.
///
/// Over HTTP/1.1 it also tells the connection's [`Idle`] when bytes arrive while no request is in
/// flight: the start of the next request head, which must be complete within [`HEADER_TIMEOUT`].
struct Opening<S> {
    inner: S,
    /// Bytes still to come before the protocol is known; 0 once it is.
    awaiting: usize,
    /// The connection speaks HTTP/1 (known from its first byte).
    http1: bool,
    idle: Arc<Idle>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Opening<S> {
    fn new(inner: S, idle: Arc<Idle>) -> Self {
        Self {
            inner,
            awaiting: H2_PREFACE_LEN,
            http1: false,
            idle,
            deadline: Box::pin(tokio::time::sleep(OPENING_TIMEOUT)),
        }
    }
}

/// The largest write HTTP/2 makes of its own accord: a PING (RFC 9113 §6.7, 17 bytes) or a
/// SETTINGS acknowledgement. A larger one carries a response's headers or data.
const H2_CONTROL_WRITE: usize = 64;

impl<S> Opening<S> {
    /// `n` bytes went out: part of a response unless an HTTP/2 connection's own control frames.
    fn wrote(&self, n: usize) {
        if n > 0 && (self.http1 || n > H2_CONTROL_WRITE) {
            self.idle.wrote();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Opening<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                let got = !read.is_empty();
                if self.awaiting > 0 && got {
                    if before == 0 && self.awaiting == H2_PREFACE_LEN && read[0] != b'P' {
                        // Not "PRI * HTTP/2.0…": HTTP/1.
                        self.awaiting = 0;
                        self.http1 = true;
                    } else {
                        self.awaiting = self.awaiting.saturating_sub(read.len());
                    }
                }
                if self.http1 && got {
                    self.idle.head_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if self.awaiting > 0 && self.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Opening<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(n);
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.wrote(n);
        }
        written
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// HTTP/2 flow-control windows (RFC 9113 §6.9.2) for what a client sends: the spec's initial
/// 64 KiB, not hyper's 1 MiB. GET and HEAD have no body, so this only bounds what a client can
/// make the server buffer unread on a stream (or a connection) it holds open.
const H2_WINDOW: u32 = 65_535;

/// HTTP/2 keep-alive: with no header timeout on h2, a ping that goes unanswered is what closes
/// the connection of a peer that vanished.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may take to finish after shutdown. Held origin requests answer 503 at
/// once on shutdown, so this bounds only slow readers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN protocols an HTTPS listener offers (RFC 7301), preferred first: HTTP/2 lets a CDN
/// multiplex its blocking playlist reloads on few connections.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What a listener's connections may hold and for how long.
#[derive(Clone)]
pub struct Limits {
    /// A connection holds one while open; when none is free, accepting pauses (new connections
    /// wait in the kernel's backlog) until one is.
    pub slots: Arc<Semaphore>,
    /// How long a connection may stay without a request in flight (`http.idle_timeout`). Over
    /// HTTP/1.1 hyper's header timer keeps it: it runs while hyper waits for a request head,
    /// between requests too, and never while a response is pending, so requests the origin holds
    /// (LL-HLS blocking reloads) do not count against it; a head that has begun to arrive has
    /// ten seconds more. HTTP/2 has no such timer in hyper: a client that answers pings
    /// would keep its slot for ever without this.
    pub idle_timeout: Duration,
    /// Streams one HTTP/2 connection may have open (`http.max_streams_per_connection`), which
    /// SETTINGS_MAX_CONCURRENT_STREAMS announces; a stream beyond it is refused (REFUSED_STREAM).
    pub max_streams: u32,
    /// Counts connections that reached `max_streams` (`ladderd_http_stream_limit_reached_total`).
    pub stream_limit_reached: prometheus::IntCounter,
}

/// Serves `handler` on `listener` until `shutdown`, then waits (bounded) for requests in flight.
/// With `tls`, every connection is HTTPS.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    name: &'static str,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let tracker = TaskTracker::new();
    loop {
        let slots = &limits.slots;
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(listener = name, "connection limit reached; new connections wait until one closes");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        tracker.spawn(async move {
            let _slot = slot;
            match tls {
                None => connection(stream, peer, name, &limits, handler, shutdown).await,
                Some(acceptor) => {
                    let accepted = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        accepted = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => accepted,
                    };
                    match accepted {
                        Ok(Ok(stream)) => connection(stream, peer, name, &limits, handler, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(listener = name, %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
}

/// One connection, HTTP/1.1 or HTTP/2 (by its first bytes), until it closes or shutdown drains it.
async fn connection<S, H, F>(
    stream: S,
    peer: SocketAddr,
    name: &'static str,
    limits: &Limits,
    handler: Arc<H>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // Requests in flight on this connection, and when the last one ended: a connection with none
    // for `idle_timeout` gives its slot back.
    let idle = Arc::new(Idle::default());
    let tracked = idle.clone();
    let idle_timeout = limits.idle_timeout;
    let (max_streams, limit_reached) = (limits.max_streams, limits.stream_limit_reached.clone());
    let service = service_fn(move |req| {
        let fut = handler(req);
        let request = tracked.begin();
        // Only HTTP/2 has requests side by side; once per connection is enough to say which
        // peer runs into the bound (hyper refuses the streams beyond it).
        if tracked.in_flight.load(std::sync::atomic::Ordering::SeqCst) >= max_streams as usize
            && !tracked.reached_stream_limit.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            limit_reached.inc();
            tracing::warn!(
                listener = name,
                %peer,
                limit = max_streams,
                config_key = "http.max_streams_per_connection",
                "HTTP/2 connection at its stream limit; further streams are refused (REFUSED_STREAM) until some end"
            );
        }
        async move {
            let resp = fut.await;
            drop(request);
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(idle_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(Opening::new(stream, idle.clone())), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval(idle_timeout.min(HEADER_TIMEOUT) / 4);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended");
                }
                return;
            }
            _ = shutdown.cancelled() => break,
            _ = check.tick() => {
                if idle.for_at_least(idle_timeout) {
                    tracing::debug!(listener = name, %peer, "connection idle; closing it");
                    break;
                }
                if idle.head_overdue(HEADER_TIMEOUT) {
                    tracing::debug!(listener = name, %peer, "request head too slow; closing the connection");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
}

/// The requests in flight on one connection, when the last one ended (or the last of its response
/// went out), and when the head of the next one began to arrive.
#[derive(Default)]
struct Idle {
    in_flight: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<Option<tokio::time::Instant>>,
    head_since: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The connection has had `Limits::max_streams` requests in flight (said once).
    reached_stream_limit: std::sync::atomic::AtomicBool,
}

/// One request in flight; ending it (drop, also on cancellation) may make the connection idle.
struct InFlight(Arc<Idle>);

impl Idle {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *lock(&self.head_since) = None;
        InFlight(self.clone())
    }

    /// Bytes of a response went out: a body still being written to a slow reader (after its
    /// handler returned) keeps the connection from counting as idle.
    fn wrote(&self) {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            *lock(&self.since) = Some(tokio::time::Instant::now());
        }
    }

    /// Bytes came in: with no request in flight, they begin the next request's head.
    fn head_bytes(&self) {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            lock(&self.head_since).get_or_insert_with(tokio::time::Instant::now);
        }
    }

    /// A request head has been arriving for `limit` without its request starting.
    fn head_overdue(&self, limit: Duration) -> bool {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return false;
        }
        lock(&self.head_since).is_some_and(|t| t.elapsed() >= limit)
    }

    /// No request in flight, and none for `limit`.
    fn for_at_least(&self, limit: Duration) -> bool {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return false;
        }
        let mut since = lock(&self.since);
        let start = *since.get_or_insert_with(tokio::time::Instant::now);
        start.elapsed() >= limit
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            *lock(&self.0.since) = Some(tokio::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(stream: &mut TcpStream) -> String {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("send");
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The idle limit of the test servers.
    const IDLE: Duration = Duration::from_secs(75);

    /// `slots` connections, 1024 streams each, the stream-limit counter a fresh one.
    fn test_limits(slots: usize, idle_timeout: Duration) -> Limits {
        Limits {
            slots: Arc::new(Semaphore::new(slots)),
            idle_timeout,
            max_streams: 1024,
            stream_limit_reached: prometheus::IntCounter::new("t", "t").expect("counter"),
        }
    }

    /// A server answering "ok" with `slots` connection slots: its address, its shutdown token, its task.
    async fn start(slots: usize) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            None,
            test_limits(slots, IDLE),
            "test",
            |_req| async { Response::new(Body::from("ok")) },
            shutdown.clone(),
        ));
        (addr, shutdown, server)
    }

    /// A request on a fresh connection, answered once a slot is free.
    async fn served(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        get(&mut c).await
    }

    // Paused time: the runtime jumps to the next timer whenever it has nothing else to do, so the
    // ten-second limit passes at once.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_shows_its_protocol_gives_its_slot_back() {
        let (addr, shutdown, server) = start(1).await;
        // Silent, then half an HTTP/2 preface: each holds the only slot until the limit.
        for opening in [&b""[..], b"PRI * HTTP/2.0\r\n\r\n"] {
            let mut stalled = TcpStream::connect(addr).await.expect("connect");
            stalled.write_all(opening).await.expect("send");
            let started = tokio::time::Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(60), served(addr)).await;
            assert!(answer.expect("served within a minute").starts_with("HTTP/1.1 200"));
            assert!(started.elapsed() >= OPENING_TIMEOUT, "served only once the stalled one was closed");
            let mut rest = Vec::new();
            assert_eq!(stalled.read_to_end(&mut rest).await.expect("closed"), 0, "the server closed it");
        }
        shutdown.cancel();
        server.await.expect("server stops");
    }

    /// Reads one HTTP/2 frame (RFC 9113 §4.1): its type, flags and payload; `None` at the end.
    async fn frame(c: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
        let mut head = [0u8; 9];
        c.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        c.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], payload))
    }

    // An HTTP/2 client that opens no stream but answers every PING: hyper's keep-alive sees a live
    // peer and would keep the connection, and its slot, for ever.
    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_without_streams_is_closed_after_the_idle_limit() {
        const SETTINGS: u8 = 0x4;
        const PING: u8 = 0x6;
        const GOAWAY: u8 = 0x7;
        const ACK: u8 = 0x1;
        let (addr, shutdown, server) = start(4).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        c.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await.expect("settings");
        let opened = tokio::time::Instant::now();
        let (mut pings, mut goaway) = (0, false);
        let ended = tokio::time::timeout(4 * IDLE, async {
            while let Some((kind, flags, payload)) = frame(&mut c).await {
                match kind {
                    SETTINGS if flags & ACK == 0 => {
                        c.write_all(&[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]).await.expect("ack")
                    }
                    PING if flags & ACK == 0 => {
                        pings += 1;
                        let mut ack = vec![0, 0, 8, PING, ACK, 0, 0, 0, 0];
                        ack.extend_from_slice(&payload);
                        c.write_all(&ack).await.expect("pong");
                    }
                    GOAWAY => goaway = true,
                    _ => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the server closed the connection");
        assert!(goaway, "with a GOAWAY first (graceful)");
        assert!(pings >= 2, "the client kept answering pings ({pings})");
        assert!(opened.elapsed() >= IDLE, "not before the idle limit: {:?}", opened.elapsed());
        shutdown.cancel();
        server.await.expect("server stops");
    }

    // A CDN keeps its connections to the origin open between requests; closing one as it sends
    // a request fails that request at the CDN, so the origin waits out its idle limit.
    #[tokio::test(start_paused = true)]
    async fn an_http1_connection_stays_open_between_requests_until_the_idle_limit() {
        let (addr, shutdown, server) = start(4).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        assert!(get(&mut c).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(IDLE - Duration::from_secs(5)).await;
        assert!(get(&mut c).await.starts_with("HTTP/1.1 200"), "the same connection answers again");
        let answered = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(2 * IDLE, c.read_to_end(&mut rest)).await;
        assert_eq!(closed.expect("closed after the idle limit").expect("read"), 0);
        assert!(answered.elapsed() >= IDLE, "not before the idle limit: {:?}", answered.elapsed());
        shutdown.cancel();
        server.await.expect("server stops");
    }

    // Slowloris: a request head sent a few bytes at a time holds its connection slot for at most
    // HEADER_TIMEOUT (and the drain after it), not the idle limit, on a new connection as after a
    // keep-alive request.
    #[tokio::test(start_paused = true)]
    async fn a_request_head_that_trickles_in_is_cut_off() {
        let (addr, shutdown, server) = start(4).await;
        for after_a_request in [false, true] {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            if after_a_request {
                assert!(get(&mut c).await.starts_with("HTTP/1.1 200"));
            }
            let started = tokio::time::Instant::now();
            let trickle = async {
                for byte in b"GET / HTTP/1.1\r\nHost: t\r\n" {
                    if c.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            };
            let _ = tokio::time::timeout(2 * IDLE, trickle).await;
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(2 * IDLE, c.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "closed");
            let took = started.elapsed();
            assert!(
                took >= HEADER_TIMEOUT && took < IDLE / 2,
                "after a request: {after_a_request}, closed after {took:?}"
            );
        }
        shutdown.cancel();
        server.await.expect("server stops");
    }

    // A viewer on a slow link reading a large segment: the request is in flight until its body
    // is out, so neither the idle limit nor the drain after it cuts the body short.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_of_a_large_body_is_not_an_idle_connection() {
        const SIZE: usize = 16 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let big = Bytes::from(vec![7u8; SIZE]);
        let limits = test_limits(4, Duration::from_secs(5));
        let server = tokio::spawn(serve(
            listener,
            None,
            limits,
            "test",
            move |_req| {
                let big = big.clone();
                async move { Response::new(Body::from(big)) }
            },
            shutdown.clone(),
        ));
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("send");
        let started = tokio::time::Instant::now();
        let (mut got, mut buf) = (0, vec![0u8; 256 << 10]);
        while got < SIZE {
            let n = c.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(got >= SIZE, "the whole body arrived: {got} bytes after {:?}", started.elapsed());
        assert!(started.elapsed() > Duration::from_secs(10), "slower than the idle limit and the drain together");
        shutdown.cancel();
        server.await.expect("server stops");
    }

    #[tokio::test]
    async fn a_full_listener_makes_new_connections_wait_for_a_free_slot() {
        let (addr, shutdown, server) = start(1).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        // The first connection is kept alive and holds the only slot.
        let mut second = TcpStream::connect(addr).await.expect("connect (the kernel backlog takes it)");
        let waiting = tokio::time::timeout(Duration::from_millis(500), get(&mut second)).await;
        assert!(waiting.is_err(), "the second connection is not served while the first holds the slot");
        drop(first);
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = vec![0u8; 1024];
            // The request was sent above; only the response is still to come.
            let n = second.read(&mut buf).await.expect("read");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await
        .expect("served once the first connection closed");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
        shutdown.cancel();
        server.await.expect("server stops");
    }

    #[tokio::test]
    async fn an_http2_connection_is_held_to_its_stream_limit_and_says_so_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let mut limits = test_limits(4, IDLE);
        limits.max_streams = 4;
        let reached = limits.stream_limit_reached.clone();
        // Every request waits for the gate: requests pile up as held LL-HLS requests do.
        let gate = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (g, n) = (gate.clone(), started.clone());
        let server = tokio::spawn(serve(
            listener,
            None,
            limits,
            "test",
            move |_req| {
                let (g, n) = (g.clone(), n.clone());
                async move {
                    n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    g.notified().await;
                    Response::new(Body::from("ok"))
                }
            },
            shutdown.clone(),
        ));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let mut answers = Vec::new();
        for _ in 0..6 {
            let request = http::Request::get(format!("http://{addr}/")).body(()).expect("request");
            // Beyond SETTINGS_MAX_CONCURRENT_STREAMS a client queues a stream, or, sent before
            // the SETTINGS arrived, has it refused.
            let (answer, _) = client.send_request(request, true).expect("send");
            answers.push(answer);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 4, "four streams at a time reach the handler");
        assert_eq!(reached.get(), 1, "the connection at its limit is counted once");
        // Released, the four are answered and the two queued ones go through; at most four at a
        // time again, and the connection is not counted a second time.
        for _ in 0..2 {
            gate.notify_waiters();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut refused = 0;
        for (i, answer) in answers.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(5), answer).await.expect("answered") {
                Ok(response) => assert_eq!(response.status(), 200),
                // A client that sent the stream before it read the SETTINGS has it refused, to retry.
                Err(e) if i >= 4 && e.reason() == Some(h2::Reason::REFUSED_STREAM) => refused += 1,
                Err(e) => panic!("stream {i}: {e}"),
            }
        }
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 6 - refused);
        assert_eq!(reached.get(), 1);
        shutdown.cancel();
        server.await.expect("server stops");
    }
}
