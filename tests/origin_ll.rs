//! The LL-HLS origin behind the real listener: HTTP/2 with prior knowledge (h2c) and HTTP/1.1,
//! many held requests on one connection, and shutdown releasing them.
//!
//! The crate has no HTTP/2 client (hyper's `client` feature is off), so a minimal one speaks the
//! frames of RFC 9113 directly: requests use only static-table HPACK entries and literals, and
//! response status codes are read from the static table (RFC 7541 Appendix A), which the server's
//! encoder uses for 200, 400 and 404.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ladderd::metrics::Metrics;
use ladderd::origin::{Origin, Targets};
use ladderd::store::{Cacheability, ChannelObjects, ObjectName, Progress, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Reply {
    /// `None` when the status is not one of the static table's.
    status: Option<u16>,
    body: Vec<u8>,
    ended: bool,
}

/// One HTTP/2 connection with prior knowledge.
struct H2 {
    tcp: TcpStream,
    next_stream: u32,
    /// The server's SETTINGS, by identifier.
    settings: HashMap<u16, u32>,
    goaway: bool,
}

impl H2 {
    async fn connect(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.write_all(PREFACE).await.expect("preface");
        let mut h2 = Self { tcp, next_stream: 1, settings: HashMap::new(), goaway: false };
        h2.send(SETTINGS, 0, 0, &[]).await;
        // The server's first frame is its SETTINGS (RFC 9113 §3.4).
        let first = h2.frame().await;
        assert_eq!((first.kind, first.flags & ACK), (SETTINGS, 0), "server preface");
        for s in first.payload.chunks_exact(6) {
            h2.settings.insert(u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
        }
        h2.send(SETTINGS, ACK, 0, &[]).await;
        h2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await.expect("send frame");
    }

    /// Opens a stream with `GET path`; returns its identifier.
    async fn get(&mut self, path: &str) -> u32 {
        // :method GET (static 2), :scheme http (static 6), then :path and :authority as literals
        // without indexing on static names 4 and 1 (RFC 7541 §6.2.2).
        let mut block = vec![0x82, 0x86];
        for (name_index, value) in [(0x04u8, path), (0x01, "localhost")] {
            assert!(value.len() < 127, "one-byte length");
            block.push(name_index);
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        let id = self.next_stream;
        self.next_stream += 2;
        self.send(HEADERS, END_STREAM | END_HEADERS, id, &block).await;
        id
    }

    async fn frame(&mut self) -> Frame {
        let mut head = [0u8; 9];
        self.tcp.read_exact(&mut head).await.expect("frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.tcp.read_exact(&mut payload).await.expect("frame payload");
        Frame { kind: head[3], flags: head[4], stream, payload }
    }

    /// Reads frames, answering pings, until the server closes the connection. A server shutting
    /// down gracefully pings after its first GOAWAY and waits for the answer (RFC 9113 §6.8).
    async fn read_until_closed(&mut self) {
        let mut head = [0u8; 9];
        while self.tcp.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if self.tcp.read_exact(&mut payload).await.is_err() {
                break;
            }
            match head[3] {
                GOAWAY => self.goaway = true,
                PING if head[4] & ACK == 0 => {
                    // The connection may already be closing: a failed answer ends the loop.
                    let len = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
                    let mut frame = vec![len[1], len[2], len[3], PING, ACK, 0, 0, 0, 0];
                    frame.extend_from_slice(&payload);
                    if self.tcp.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads until every stream in `ids` has ended, failing on a reset stream.
    async fn replies(&mut self, ids: &[u32], limit: Duration) -> HashMap<u32, Reply> {
        let mut replies: HashMap<u32, Reply> = ids.iter().map(|&id| (id, Reply::default())).collect();
        tokio::time::timeout(limit, async {
            while replies.values().any(|r| !r.ended) {
                let f = self.frame().await;
                match f.kind {
                    GOAWAY => self.goaway = true,
                    PING if f.flags & ACK == 0 => self.send(PING, ACK, 0, &f.payload).await,
                    RST_STREAM => panic!("stream {} reset: {:?}", f.stream, f.payload),
                    HEADERS | DATA => {
                        let reply = replies.get_mut(&f.stream).expect("a stream we opened");
                        if f.kind == HEADERS {
                            reply.status = static_status(f.payload[0]);
                        } else {
                            reply.body.extend_from_slice(&f.payload);
                        }
                        reply.ended |= f.flags & END_STREAM != 0;
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("every stream answered in time");
        replies
    }
}

/// The status of a response header block that starts with an indexed `:status` field.
fn static_status(first: u8) -> Option<u16> {
    match first {
        0x88 => Some(200),
        0x8c => Some(400),
        0x8d => Some(404),
        _ => None,
    }
}

/// An origin over a store the test fills, on the real accept loop, as `ladderd::start` wires it.
struct Served {
    addr: SocketAddr,
    origin: Arc<Origin>,
    channel: Arc<ChannelObjects>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

async fn serve() -> Served {
    let store = Arc::new(Store::new());
    let channel = store.channel("demo");
    put(&channel, "720p/5.0.m4s", b"part 5.0", Cacheability::Immutable);
    put(&channel, "720p/index.m3u8", b"playlist v1", Cacheability::Live);
    channel.set_progress("720p", Progress { msn: 5, parts: 1, ..Default::default() });
    let shutdown = CancellationToken::new();
    let targets = Targets { target_duration: Duration::from_secs(2), part_target: 0.2 };
    let origin = Arc::new(Origin::new(store, Arc::new(Metrics::new()), targets, shutdown.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let handler = origin.clone();
    let server = tokio::spawn(ladderd::http::serve(
        listener,
        None,
        ladderd::http::Limits {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(4096)),
            idle_timeout: std::time::Duration::from_secs(75),
            max_streams: 1024,
            stream_limit_reached: prometheus::IntCounter::new("t", "t").expect("counter"),
        },
        "origin",
        move |req| {
            let origin = handler.clone();
            async move { origin.handle(&req).await }
        },
        shutdown.clone(),
    ));
    Served { addr, origin, channel, shutdown, server }
}

fn put(channel: &ChannelObjects, name: &str, bytes: &'static [u8], cache: Cacheability) {
    let name = ObjectName::from_key(name).unwrap_or_else(|| panic!("{name} is not a stored name"));
    channel.put(&name, vec![Bytes::from_static(bytes)], cache);
}

/// Stops the listener; it must not need its drain timeout, since nothing is in flight.
async fn stop(s: Served) {
    s.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), s.server).await.expect("server stops promptly").expect("server task");
}

/// Waits until `n` requests are held (they reach the origin a moment after being sent).
async fn until_waiting(origin: &Origin, n: usize) {
    let start = Instant::now();
    while origin.waiting() != n {
        assert!(start.elapsed() < Duration::from_secs(3), "{} requests held, expected {n}", origin.waiting());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn five_hundred_held_requests_share_one_h2_connection() {
    let s = serve().await;
    let mut h2 = H2::connect(s.addr).await;
    assert_eq!(h2.settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS), Some(&1024));
    let mut parts = Vec::new();
    for _ in 0..400 {
        parts.push(h2.get("/live/demo/720p/5.1.m4s").await);
    }
    let mut playlists = Vec::new();
    for _ in 0..100 {
        playlists.push(h2.get("/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=1").await);
    }
    until_waiting(&s.origin, 500).await;

    put(&s.channel, "720p/5.1.m4s", b"part 5.1", Cacheability::Immutable);
    put(&s.channel, "720p/index.m3u8", b"playlist v2", Cacheability::Live);
    s.channel.set_progress("720p", Progress { msn: 5, parts: 2, ..Default::default() });

    let all: Vec<u32> = parts.iter().chain(&playlists).copied().collect();
    let replies = h2.replies(&all, Duration::from_secs(5)).await;
    for id in &parts {
        assert_eq!(replies[id].status, Some(200), "stream {id}");
        assert_eq!(replies[id].body, b"part 5.1", "stream {id}");
    }
    for id in &playlists {
        assert_eq!(replies[id].status, Some(200), "stream {id}");
        assert_eq!(replies[id].body, b"playlist v2", "stream {id}");
    }
    assert_eq!(s.origin.waiting(), 0);
    drop(h2);
    stop(s).await;
}

#[tokio::test]
async fn h2_answers_at_once_what_is_there_and_refuses_at_once_what_is_not_coming() {
    let s = serve().await;
    let mut h2 = H2::connect(s.addr).await;
    let start = Instant::now();
    let present = h2.get("/live/demo/720p/index.m3u8?_HLS_msn=4").await;
    let ahead = h2.get("/live/demo/720p/index.m3u8?_HLS_msn=9").await;
    let unhinted = h2.get("/live/demo/720p/5.7.m4s").await;
    let replies = h2.replies(&[present, ahead, unhinted], Duration::from_secs(2)).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!((replies[&present].status, replies[&present].body.as_slice()), (Some(200), &b"playlist v1"[..]));
    assert_eq!(replies[&ahead].status, Some(400));
    assert_eq!(replies[&unhinted].status, Some(404));
    drop(h2);
    stop(s).await;
}

#[tokio::test]
async fn http1_blocking_reload_is_answered_on_the_update() {
    let s = serve().await;
    let addr = s.addr;
    let held = tokio::task::spawn_blocking(move || {
        support::http_get(addr, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=1&_HLS_skip=YES")
    });
    until_waiting(&s.origin, 1).await;
    put(&s.channel, "720p/5.1.m4s", b"part 5.1", Cacheability::Immutable);
    put(&s.channel, "720p/index.m3u8", b"playlist v2", Cacheability::Live);
    put(&s.channel, "720p/index.m3u8#skip", b"delta v2", Cacheability::Live);
    s.channel.set_progress("720p", Progress { msn: 5, parts: 2, ..Default::default() });
    let r = held.await.expect("client thread");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=2"));
    assert_eq!(r.text(), "delta v2");
    stop(s).await;
}

#[tokio::test]
async fn shutdown_releases_held_requests_promptly() {
    let s = serve().await;
    let mut h2 = H2::connect(s.addr).await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(h2.get("/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=1").await);
    }
    let addr = s.addr;
    let http1 = tokio::task::spawn_blocking(move || support::http_get(addr, "/live/demo/720p/5.1.m4s"));
    until_waiting(&s.origin, 51).await;

    let start = Instant::now();
    s.shutdown.cancel();
    let replies = h2.replies(&ids, Duration::from_secs(2)).await;
    for id in &ids {
        // 503 is not in HPACK's static table; the body says what it is.
        assert_eq!(replies[id].status, None, "stream {id}");
        assert_eq!(replies[id].body, b"shutting down\n", "stream {id}");
    }
    let r = http1.await.expect("client thread");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let (server, ()) =
        tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(s.server, h2.read_until_closed()) })
            .await
            .expect("server stops promptly");
    server.expect("server task");
    assert!(h2.goaway, "GOAWAY on shutdown");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(s.origin.waiting(), 0);
}

const RUNGS: &[support::TestRung] = &[("240p", 426, 240, 400_000)];
const CHANNELS: &[&str] = &["demo"];

#[tokio::test]
async fn the_daemon_speaks_h2c_and_stops_promptly_with_connections_open() {
    support::init_tracing();
    let token = CancellationToken::new();
    let daemon = ladderd::start(support::config(&support::ladder(RUNGS, CHANNELS), 2.0), token.clone())
        .await
        .expect("daemon starts");
    let mut h2 = H2::connect(daemon.http_addr).await;
    assert_eq!(h2.settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS), Some(&1024));
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(h2.get("/live/demo/240p/index.m3u8?_HLS_msn=3&_HLS_part=1").await);
    }
    let replies = h2.replies(&ids, Duration::from_secs(5)).await;
    assert!(ids.iter().all(|id| replies[id].status == Some(404)), "nothing published yet");

    let start = Instant::now();
    daemon.shutdown();
    tokio::time::timeout(Duration::from_secs(3), async { tokio::join!(daemon.wait(), h2.read_until_closed()) })
        .await
        .expect("daemon stops promptly");
    assert!(start.elapsed() < Duration::from_secs(3));
    // The open connection was told to go away rather than cut.
    assert!(h2.goaway, "GOAWAY on shutdown");
}
