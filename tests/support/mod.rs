//! What the integration tests share: a daemon on ephemeral ports, a tiny HTTP client, and the
//! real `ffmpeg`/`ffprobe` tools (paths overridable with `FFMPEG`/`FFPROBE`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ladderd::Config;

pub fn ffmpeg() -> String {
    std::env::var("FFMPEG").unwrap_or_else(|_| "ffmpeg".into())
}

pub fn ffprobe() -> String {
    std::env::var("FFPROBE").unwrap_or_else(|_| "ffprobe".into())
}

/// ladderd running in the test's process on a runtime of its own, as `ladderd run` would run it:
/// every listener bound, the drain on [`Running::stop`].
pub struct Running {
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// RTMPS ingest, when `rtmp.tls_listen` is set.
    pub rtmps: Option<SocketAddr>,
    /// The HTTPS origin, when `http.tls_listen` is set.
    pub https: Option<SocketAddr>,
    pub metrics: std::sync::Arc<ladderd::metrics::Metrics>,
    pub reloader: ladderd::Reloader,
    shutdown: tokio_util::sync::CancellationToken,
    waiter: tokio::task::JoinHandle<()>,
    rt: tokio::runtime::Runtime,
}

impl Running {
    pub fn start(config: Config) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let daemon = rt.block_on(ladderd::start(config, shutdown.clone())).expect("daemon starts");
        let (rtmp, http, admin) = (daemon.rtmp_addr, daemon.http_addr, daemon.admin_addr);
        let (rtmps, https, metrics) = (daemon.rtmps_addr, daemon.https_addr, daemon.metrics.clone());
        let reloader = daemon.reloader();
        let waiter = rt.spawn(daemon.wait());
        Self { rtmp, http, admin, rtmps, https, metrics, reloader, shutdown, waiter, rt }
    }

    /// Shuts down as SIGTERM does (drain, then the listeners close) and waits for it, 20 s at most.
    pub fn stop(self) {
        self.shutdown.cancel();
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), self.waiter).await })
            .expect("daemon stops within 20 s")
            .expect("join");
    }
}

/// A rung of a test ladder: name, width, height, video bitrate.
pub type TestRung = (&'static str, u32, u32, u64);

/// The `ladders:` and `channels:` YAML of a test: one ladder of `rungs`, and each of `channels`
/// on it, publishing with the stream key `{name}-key`.
pub fn ladder(rungs: &[TestRung], channels: &[&str]) -> String {
    ladder_with(rungs, channels, "")
}

/// [`ladder`], with `options` on every channel (`container: ts`).
pub fn ladder_with(rungs: &[TestRung], channels: &[&str], options: &str) -> String {
    let mut yaml = String::from("ladders:\n  small:\n");
    for (name, width, height, bitrate) in rungs {
        yaml += &format!("    - {{ name: \"{name}\", width: {width}, height: {height}, video_bitrate: {bitrate} }}\n");
    }
    yaml += "channels:\n";
    let options = if options.is_empty() { String::new() } else { format!(", {options}") };
    for name in channels {
        yaml += &format!("  - {{ name: \"{name}\", stream_key: \"{name}-key\", ladder: \"small\"{options} }}\n");
    }
    yaml
}

/// A configuration on ephemeral loopback ports with the given `ladders:` and `channels:` YAML.
pub fn config(ladders_and_channels: &str, segment_duration: f64) -> Config {
    let text = format!(
        "rtmp: {{ listen: \"127.0.0.1:0\", handshake_timeout: 3, idle_timeout: 5 }}\n\
         http: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\" }}\n\
         hls: {{ segment_duration: {segment_duration}, window: 20 }}\n\
         transcode: {{ x264_preset: superfast, encoder_threads: 1 }}\n\
         {ladders_and_channels}"
    );
    Config::parse(&text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("test config invalid: {e:?}"))
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "ladderd=info,warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Publishes `secs` seconds of a synthetic 30 fps source with AAC audio, in real time.
pub fn publish(rtmp: SocketAddr, key: &str, size: &str, secs: u32, extra_video_args: &[&str]) -> Child {
    publish_url(&format!("rtmp://{rtmp}/live/{key}"), size, secs, extra_video_args)
}

/// [`publish`] to any URL ffmpeg's FLV output takes (`rtmp://`, `rtmps://`).
pub fn publish_url(url: &str, size: &str, secs: u32, extra_video_args: &[&str]) -> Child {
    let mut cmd = Command::new(ffmpeg());
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", &format!("testsrc2=size={size}:rate=30")])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &secs.to_string()])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "60", "-keyint_min", "60"])
        .args(["-sc_threshold", "0", "-pix_fmt", "yuv420p", "-b:v", "1500k"])
        .args(extra_video_args)
        .args(["-c:a", "aac", "-b:a", "128k", "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().expect("ffmpeg must be installed (scripts/setup.sh)")
}

/// Stops a publisher that must still be running: SIGINT makes ffmpeg finish its stream and close
/// the connection, as an encoder stopped by its operator does. For tests that publish "long
/// enough" and end the stream when their live checks are done, however slow the machine.
pub fn stop_publisher(mut child: Child) -> Output {
    assert!(matches!(child.try_wait(), Ok(None)), "the publisher ended before the test was done with it");
    signal(child.id(), "INT");
    wait_with_timeout(child, Duration::from_secs(20))
}

/// Sends signal `name` (`STOP`, `CONT`, `INT`…) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits for a child for at most `limit`, killing it after that.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return child.wait_with_output().expect("collect output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 GET (the server always sends Content-Length).
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    try_http_get(addr, path).expect("connect")
}

/// [`http_get`], or `None` when nothing listens at `addr` any more.
pub fn try_http_get(addr: SocketAddr, path: &str) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send request");
    Some(read_response(s))
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ends a publish the way a publisher leaving does: drops its sender, waits until the channel has
/// taken everything queued and freed its slot, then joins the channel thread. (`Channels::drain`
/// alone sends the publish away, and what is still queued is then not packaged.)
pub fn end_publish(channels: &ladderd::channel::Channels, publish: ladderd::ingest::Publish) {
    let channel = publish.channel.clone();
    // As ingest says of a publisher that sent `deleteStream`: the playlists end at once.
    publish.finished.store(true, std::sync::atomic::Ordering::Release);
    drop(publish);
    eventually(Duration::from_secs(30), "the publish to end", || (!channels.is_live(&channel)).then_some(()));
    channels.drain();
}

/// `tests/browser`, where the Node.js scripts that drive Chromium and the npm packages they use
/// live, once each of `packages` is installed there (by scripts/setup.sh).
pub fn browser_dir(packages: &[&str]) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    for package in packages {
        assert!(dir.join("node_modules").join(package).exists(), "run scripts/setup.sh first ({package} is missing)");
    }
    dir
}

/// Waits (20 s at most) for `channel`'s master playlist: its ladder is publishing.
pub fn wait_for_master(http: SocketAddr, channel: &str) {
    let path = format!("/live/{channel}/master.m3u8");
    eventually(Duration::from_secs(20), "the master playlist", || (http_get(http, &path).status == 200).then_some(()));
}

/// hls.js in headless Chromium (`tests/browser/play.mjs`) playing a channel's master playlist.
pub struct Player(Child);

/// Starts a [`Player`] on `channel`'s master playlist for `secs` seconds, with play.mjs's
/// `options` (`--low-latency`, `--level N`, `--settle S`).
pub fn play(http: SocketAddr, channel: &str, secs: u32, options: &[&str]) -> Player {
    let dir = browser_dir(&["hls.js", "playwright-core"]);
    let child = Command::new("node")
        .arg(dir.join("play.mjs"))
        .arg(format!("http://{http}/live/{channel}/master.m3u8"))
        .arg(secs.to_string())
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed (scripts/setup.sh)");
    Player(child)
}

impl Player {
    /// Waits for the player to finish; what it saw (play.mjs's JSON report).
    pub fn report(self) -> serde_json::Value {
        let out = self.0.wait_with_output().expect("player");
        assert!(out.status.success(), "play.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("play.mjs prints JSON")
    }
}

/// Runs ffprobe on bytes given on stdin and returns its stdout.
pub fn ffprobe_stdin(bytes: &[u8], args: &[&str]) -> String {
    let mut child = Command::new(ffprobe())
        .args(["-v", "error"])
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffprobe must be installed");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("ffprobe output");
    let _ = writer.join();
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A media playlist's parsed essentials.
#[derive(Debug, Default)]
pub struct MediaPlaylist {
    pub map: Option<String>,
    pub segments: Vec<(String, f64)>,
    pub ended: bool,
    pub media_sequence: u64,
}

pub fn parse_media_playlist(text: &str) -> MediaPlaylist {
    let mut p = MediaPlaylist::default();
    let mut pending = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MAP:URI=\"") {
            p.map = Some(v.trim_end_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("#EXTINF:") {
            pending = v.split(',').next().and_then(|d| d.parse::<f64>().ok());
        } else if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_sequence = v.parse().expect("media sequence");
        } else if line == "#EXT-X-ENDLIST" {
            p.ended = true;
        } else if !line.starts_with('#') && !line.is_empty() {
            p.segments.push((line.to_string(), pending.take().expect("EXTINF before URI")));
        }
    }
    p
}

/// A real H.264 stream made by the `ffmpeg` CLI (`size` at `rate` fps for `secs`, a keyframe every
/// second), read back as parameters and access units on the 90 kHz clock, as ingest hands them on.
pub fn encoded_video(
    dir: &Path,
    size: &str,
    rate: u32,
    secs: u32,
) -> (ladderd::media::VideoParams, Vec<ladderd::media::Sample>) {
    use ffmpeg_next as ffmpeg;
    let file = dir.join(format!("{size}-{rate}.mp4"));
    let status = Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate={rate}"))
        .args(["-t", &secs.to_string(), "-c:v", "libx264", "-preset", "ultrafast", "-g", &rate.to_string()])
        .args(["-bf", "0", "-pix_fmt", "yuv420p"])
        .arg(&file)
        .status()
        .expect("ffmpeg must be installed");
    assert!(status.success());
    ladderd::ffi::init();
    let mut input = ffmpeg::format::input(&file).expect("open source");
    let stream = input.streams().best(ffmpeg::media::Type::Video).expect("video stream");
    let (index, tb) = (stream.index(), stream.time_base());
    let ctx = ffmpeg::codec::Context::from_parameters(stream.parameters()).expect("parameters");
    let params =
        ladderd::media::avc::params_from_avcc(bytes::Bytes::from(ladderd::ffi::extradata(&ctx))).expect("avcC");
    let ticks = |v: i64| v * 90_000 * i64::from(tb.numerator()) / i64::from(tb.denominator());
    let samples = input
        .packets()
        .filter(|(s, _)| s.index() == index)
        .map(|(_, p)| ladderd::media::Sample {
            pts: ticks(p.pts().expect("pts")),
            dts: ticks(p.dts().expect("dts")),
            keyframe: p.is_key(),
            segment_start: false,
            data: bytes::Bytes::copy_from_slice(p.data().expect("data")),
        })
        .collect();
    (params, samples)
}

/// A plain HTTP/1.1 POST with a bearer token.
pub fn http_post(addr: SocketAddr, path: &str, token: &str, body: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("send request");
    s.write_all(body).expect("send body");
    read_response(s)
}

/// A plain HTTP/1.1 GET with a bearer token.
pub fn http_get_auth(addr: SocketAddr, path: &str, token: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .expect("send request");
    read_response(s)
}

/// Reads a whole HTTP/1.1 response from a connection the server closes after it.
fn read_response(mut s: TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    HttpResponse { status, headers, body: raw[split + 4..].to_vec() }
}

/// The value of the series `name{labels}` (labels as written in the exposition, e.g.
/// `result="ok"`; empty for a series without labels) in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let series = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    exposition.lines().find_map(|l| l.strip_prefix(&series)?.strip_prefix(' ')?.trim().parse().ok())
}
