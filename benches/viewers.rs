//! Viewer faults: 500 simulated LL-HLS viewers pull parts from a live channel on loopback, first
//! alone, then beside hostile and broken clients (2,000 idle connections, half of which never
//! send a byte and half of which went quiet after a request, slowloris clients that send a
//! request head a byte at a time, and viewers that stop reading mid-segment). For each kind of
//! object it prints how long the viewers waited, p50 and p99, in both phases: the hostile ones
//! must not make the others wait.
//!
//! A viewer does what hls.js does in low-latency mode: a blocking playlist reload for the part
//! the preload hint names (`_HLS_msn`, `_HLS_part`), then a GET of that part, and at each new
//! segment a GET of the segment before it (a player that switched renditions, or a CDN filling
//! its cache). The blocking reload's time includes the wait for the part to exist, so it is
//! printed for what it is; parts and segments are answered from memory and show the origin.
//!
//! Run with `benches/viewers.sh` (it raises the open-file limit), or `cargo bench --bench viewers
//! -- [SECONDS PER PHASE] [VIEWERS] [IDLE]` (defaults 20, 500, 2000). ladderd runs in this
//! process on a runtime of its own; the publisher is the `ffmpeg` CLI.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

const CONFIG: &str = r#"
rtmp: { listen: "127.0.0.1:0" }
http: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
hls: { segment_duration: 2.0, part_duration: 0.2, window: 6 }
transcode: { hardware: cpu, x264_preset: ultrafast, encoder_threads: 1 }
log: { level: warn }
ladders:
  small:
    - { name: "360p", width: 640, height: 360, video_bitrate: 700000 }
channels:
  - { name: shop, stream_key: viewers-bench-key-0123456789, ladder: small }
"#;

/// Latencies of one kind of object in one phase, in microseconds.
#[derive(Default)]
struct Samples {
    micros: Vec<u64>,
    errors: u64,
}

#[derive(Default)]
struct Phase {
    blocking: Samples,
    part: Samples,
    segment: Samples,
}

struct Shared {
    origin: SocketAddr,
    /// Which phase viewers record into (0: warm-up, not recorded; 1: alone; 2: beside attackers).
    phase: AtomicU64,
    phases: [Mutex<Phase>; 3],
    stop: AtomicBool,
}

/// A keep-alive HTTP/1.1 connection (ladderd always sends Content-Length).
struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self { io: BufReader::new(TcpStream::connect(addr).await?) })
    }

    /// GET `path`: the status and body.
    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.io.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().map_err(|_| std::io::ErrorKind::InvalidData)?;
            }
        }
        let mut body = vec![0; length];
        self.io.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// The part the playlist's preload hint names, as (msn, part).
fn hinted(playlist: &str) -> Option<(u64, u64)> {
    let line = playlist.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))?;
    let uri = line.split("URI=\"").nth(1)?.split('"').next()?;
    let mut it = uri.trim_end_matches(".m4s").split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

async fn record(shared: &Shared, what: fn(&mut Phase) -> &mut Samples, started: Instant, ok: bool) {
    let phase = shared.phase.load(Ordering::Relaxed) as usize;
    if phase == 0 {
        return;
    }
    let mut p = shared.phases[phase].lock().await;
    let s = what(&mut p);
    if ok {
        s.micros.push(started.elapsed().as_micros() as u64);
    } else {
        s.errors += 1;
    }
}

/// One LL-HLS viewer of the 360p rendition, until `stop`.
async fn viewer(shared: Arc<Shared>) {
    let base = "/live/shop/360p";
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = Conn::open(shared.origin).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok((200, body)) = conn.get(&format!("{base}/index.m3u8")).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(mut next) = hinted(&String::from_utf8_lossy(&body)) else { continue };
        while !shared.stop.load(Ordering::Relaxed) {
            let (msn, part) = next;
            let started = Instant::now();
            let reply = conn.get(&format!("{base}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}")).await;
            let Ok((status, body)) = reply else {
                record(&shared, |p| &mut p.blocking, started, false).await;
                break;
            };
            record(&shared, |p| &mut p.blocking, started, status == 200).await;
            if status != 200 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            let Some(hint) = hinted(&String::from_utf8_lossy(&body)) else { break };
            let started = Instant::now();
            match conn.get(&format!("{base}/{msn}.{part}.m4s")).await {
                Ok((status, _)) => record(&shared, |p| &mut p.part, started, status == 200).await,
                Err(_) => {
                    record(&shared, |p| &mut p.part, started, false).await;
                    break;
                }
            }
            if hint.0 > msn {
                // Segment `msn` is complete: fetch it whole.
                let started = Instant::now();
                match conn.get(&format!("{base}/{msn}.m4s")).await {
                    Ok((status, _)) => record(&shared, |p| &mut p.segment, started, status == 200).await,
                    Err(_) => {
                        record(&shared, |p| &mut p.segment, started, false).await;
                        break;
                    }
                }
            }
            next = hint;
        }
    }
}

/// A new connection to `origin` for a hostile client, counted in `opened`; tried again every
/// 500 ms while the origin refuses, `None` once the phase is over.
async fn hostile_connection(origin: SocketAddr, stop: &AtomicBool, opened: &AtomicU64) -> Option<TcpStream> {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(s) = TcpStream::connect(origin).await {
            opened.fetch_add(1, Ordering::Relaxed);
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Waits (two minutes at most) for the origin to close `s`, reading nothing it does not send.
async fn until_closed(s: &mut (impl AsyncReadExt + Unpin)) {
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(120), s.read(&mut byte)).await;
}

/// A connection that never sends a byte; opened again whenever the origin closes it.
async fn silent(origin: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    while let Some(mut s) = hostile_connection(origin, &stop, &opened).await {
        until_closed(&mut s).await;
    }
}

/// A connection that made one request and went quiet on keep-alive; again when closed.
async fn quiet(origin: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    while let Some(s) = hostile_connection(origin, &stop, &opened).await {
        let mut c = Conn { io: BufReader::new(s) };
        if c.get("/live/shop/master.m3u8").await.is_ok() {
            until_closed(&mut c.io).await;
        }
    }
}

/// Slowloris: a request head a byte every 500 ms, again when the origin closes the connection.
async fn slowloris(origin: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let head = b"GET /live/shop/360p/index.m3u8 HTTP/1.1\r\nHost: bench\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    while let Some(mut s) = hostile_connection(origin, &stop, &opened).await {
        for b in head.iter() {
            if stop.load(Ordering::Relaxed) || s.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A viewer that asks for segments and stops reading: a 4 KiB receive buffer, 50 requests
/// written at once, nothing read. The origin's writes to it block; they must block only it.
async fn stalled_reader(origin: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = Conn::open(origin).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Ok((200, body)) = c.get("/live/shop/360p/index.m3u8").await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let Some(segment) = text.lines().rfind(|l| l.ends_with(".m4s") && !l.starts_with('#')) else {
            continue;
        };
        let socket = TcpSocket::new_v4().expect("socket");
        let _ = socket.set_recv_buffer_size(4096);
        let Ok(mut s) = socket.connect(origin).await else { continue };
        opened.fetch_add(1, Ordering::Relaxed);
        let request = format!("GET /live/shop/360p/{segment} HTTP/1.1\r\nHost: bench\r\n\r\n").repeat(50);
        let _ = s.write_all(request.as_bytes()).await;
        // Never read, and held to the end of the phase (shorter than the origin's idle limit).
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(20);
    let viewers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let idle: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let (slow, stalled) = (50usize, 20usize);

    let config = ladderd::Config::parse(CONFIG, Path::new("viewers.yaml")).expect("bench config");
    let daemon_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let daemon = daemon_rt.block_on(ladderd::start(config, shutdown.clone())).expect("ladderd starts");
    let (rtmp, origin) = (daemon.rtmp_addr, daemon.http_addr);
    let waiter = daemon_rt.spawn(daemon.wait());

    let ffmpeg = std::env::var("FFMPEG").unwrap_or_else(|_| "ffmpeg".into());
    let mut publisher = Command::new(ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440"])
        .args(["-t", &(seconds * 2 + 60).to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "60", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-f", "flv", &format!("rtmp://{rtmp}/live/viewers-bench-key-0123456789")])
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg must be installed (scripts/setup.sh)");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let shared =
        Arc::new(Shared { origin, phase: AtomicU64::new(0), phases: Default::default(), stop: AtomicBool::new(false) });
    let attack_stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        // The channel's first segments.
        let ready = Instant::now();
        loop {
            if let Ok(mut c) = Conn::open(origin).await
                && let Ok((200, _)) = c.get("/live/shop/360p/index.m3u8").await
            {
                break;
            }
            assert!(ready.elapsed() < Duration::from_secs(30), "the channel never went live");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut tasks = Vec::new();
        for _ in 0..viewers {
            tasks.push(tokio::spawn(viewer(shared.clone())));
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        println!("viewers: {viewers} on {origin}; {seconds} s alone, then {seconds} s beside {idle} idle connections, {slow} slowloris clients and {stalled} viewers that stop reading");
        shared.phase.store(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        shared.phase.store(0, Ordering::Relaxed);
        for i in 0..idle {
            let (o, s, n) = (origin, attack_stop.clone(), opened.clone());
            if i % 2 == 0 {
                tasks.push(tokio::spawn(silent(o, s, n)));
            } else {
                tasks.push(tokio::spawn(quiet(o, s, n)));
            }
        }
        for _ in 0..slow {
            tasks.push(tokio::spawn(slowloris(origin, attack_stop.clone(), opened.clone())));
        }
        for _ in 0..stalled {
            tasks.push(tokio::spawn(stalled_reader(origin, attack_stop.clone(), opened.clone())));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        shared.phase.store(2, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        shared.phase.store(0, Ordering::Relaxed);
        shared.stop.store(true, Ordering::Relaxed);
        attack_stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        println!("hostile connections opened: {}", opened.load(Ordering::Relaxed));
        println!(
            "{:<16} {:<20} {:>8} {:>7} {:>8} {:>8} {:>8}",
            "object", "phase", "answers", "errors", "p50 ms", "p99 ms", "max ms"
        );
        for (i, phase) in [(1, "alone"), (2, "beside hostile")] {
            let mut guard = shared.phases[i].lock().await;
            let p = &mut *guard;
            let kinds: [(&str, &mut Samples); 3] =
                [("part", &mut p.part), ("segment", &mut p.segment), ("blocking reload", &mut p.blocking)];
            for (kind, s) in kinds {
                s.micros.sort_unstable();
                println!(
                    "{:<16} {:<20} {:>8} {:>7} {:>8.1} {:>8.1} {:>8.1}",
                    kind,
                    phase,
                    s.micros.len(),
                    s.errors,
                    percentile(&s.micros, 0.5),
                    percentile(&s.micros, 0.99),
                    s.micros.last().map_or(f64::NAN, |m| *m as f64 / 1000.0)
                );
            }
        }
        println!("(a blocking reload waits for the next part to exist: about one part duration, 0.2 s)");
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = publisher.kill();
    let _ = publisher.wait();
    shutdown.cancel();
    let _ = daemon_rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), waiter).await });
}
