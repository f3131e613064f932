//! The connection driven over real sockets: handshakes, publishes, refusals, limits and the
//! hostile shapes the chunk guard keeps from rml_rtmp.

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
    /// The publish's [`Publish::finished`].
    finished: Arc<std::sync::atomic::AtomicBool>,
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
            finished: Default::default(),
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
            finished: self.finished.clone(),
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
    let video = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p"];
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
    // ffmpeg ends its publish (FCUnpublish, deleteStream) before it closes the connection.
    assert!(gate.finished.load(Ordering::Acquire), "the publisher ended the publish itself");
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
    assert!(out.status.success(), "the publisher was slowed, not dropped: {}", String::from_utf8_lossy(&out.stderr));
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
    assert!(!gate.finished.load(Ordering::Acquire), "the publisher did not end the publish; it was sent away");
    server.stop().await;
}
