//! SIGHUP reloads the configuration file of the real daemon: a channel added while another is
//! live can be published to at once and the live one goes on; a file that does not validate is
//! refused with its error logged and changes nothing; a channel removed while live stays live
//! until its publisher leaves and its stream key admits nobody new. SIGTERM ends every playlist
//! before the listeners close.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    eventually, http_get, http_get_auth, metric, parse_media_playlist, publish, stop_publisher, try_http_get,
    wait_with_timeout,
};

const TOKEN: &str = "reload-test-token";

fn config(channels: &str) -> String {
    format!(
        "rtmp: {{ listen: \"127.0.0.1:0\", handshake_timeout: 3, idle_timeout: 5 }}\n\
         http: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\n\
         hls: {{ segment_duration: 1.0, window: 30 }}\n\
         transcode: {{ hardware: cpu, x264_preset: ultrafast, encoder_threads: 1 }}\n\
         ladders:\n  small:\n    - {{ name: \"180p\", width: 320, height: 180, video_bitrate: 300000 }}\n\
         channels:\n{channels}"
    )
}

fn channel(name: &str, ladder: &str) -> String {
    format!("  - {{ name: \"{name}\", stream_key: \"{name}-key\", ladder: \"{ladder}\" }}\n")
}

/// The daemon binary with its JSON log collected line by line.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    rtmp: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ladderd"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", "ladderd=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ladderd runs");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let listening = eventually(Duration::from_secs(20), "the listening log line", || {
            log.lock().unwrap().iter().find(|l| l.contains("ladderd listening")).cloned()
        });
        let event: serde_json::Value = serde_json::from_str(&listening).expect("a JSON log line");
        let addr = |field: &str| -> SocketAddr {
            event[field].as_str().unwrap_or_else(|| panic!("{field} in {listening}")).parse().expect("an address")
        };
        let (rtmp, http, admin) = (addr("rtmp_addr"), addr("http_addr"), addr("admin_addr"));
        Self { child, log, rtmp, http, admin }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(status.expect("kill runs").success());
    }

    fn metric(&self, name: &str, labels: &str) -> f64 {
        metric(&http_get(self.admin, "/metrics").text(), name, labels).unwrap_or(0.0)
    }

    fn channel_names(&self) -> Vec<String> {
        let r = http_get_auth(self.admin, "/api/v1/channels", TOKEN);
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        let list = v.get("channels").unwrap_or(&v).as_array().expect("a channel list").clone();
        list.iter().map(|c| c["name"].as_str().expect("name").to_string()).collect()
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Sends SIGHUP and waits until the reload is counted with `result`.
    fn reload(&self, result: &str) {
        let before = self.metric("ladderd_config_reloads_total", &format!("result=\"{result}\""));
        self.signal("HUP");
        eventually(Duration::from_secs(10), "the reload", || {
            (self.metric("ladderd_config_reloads_total", &format!("result=\"{result}\"")) > before).then_some(())
        });
    }
}

fn playlist(http: SocketAddr, channel: &str) -> Option<support::MediaPlaylist> {
    let r = http_get(http, &format!("/live/{channel}/180p/index.m3u8"));
    (r.status == 200).then(|| parse_media_playlist(&r.text()))
}

fn last_msn(p: &support::MediaPlaylist) -> u64 {
    p.media_sequence + p.segments.len() as u64 - 1
}

#[test]
fn sighup_adds_and_removes_channels_refuses_a_bad_file_and_keeps_live_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ladderd.yaml");
    std::fs::write(&file, config(&channel("a", "small"))).expect("write config");
    let mut daemon = Daemon::start(&file);
    let publisher_a = publish(daemon.rtmp, "a-key", "320x180", 40, &[]);
    let before = eventually(Duration::from_secs(20), "a live with two segments", || {
        playlist(daemon.http, "a").filter(|p| p.segments.len() >= 2)
    });

    // A file that does not validate: refused, logged with its line, nothing changes.
    std::fs::write(&file, config(&(channel("a", "small") + &channel("b", "missing")))).expect("write config");
    daemon.reload("error");
    assert!(daemon.logged("configuration reload refused"), "the refusal is logged");
    assert!(daemon.logged("no ladder named \\\"missing\\\""), "the log names the error");
    assert_eq!(daemon.channel_names(), ["a"]);
    assert_eq!(http_get(daemon.http, "/live/b/master.m3u8").status, 404);

    // Add b: it takes a publish at once, and a goes on without a break.
    std::fs::write(&file, config(&(channel("a", "small") + &channel("b", "small")))).expect("write config");
    daemon.reload("ok");
    assert_eq!(daemon.channel_names(), ["a", "b"]);
    let publisher_b = publish(daemon.rtmp, "b-key", "320x180", 4, &[]);
    eventually(Duration::from_secs(20), "b's first segment", || {
        playlist(daemon.http, "b").filter(|p| !p.segments.is_empty())
    });
    let out = wait_with_timeout(publisher_b, Duration::from_secs(30));
    assert!(out.status.success(), "publish to b: {}", String::from_utf8_lossy(&out.stderr));

    // Remove a while it is live: it stays live, its key admits nobody new.
    std::fs::write(&file, config(&channel("b", "small"))).expect("write config");
    daemon.reload("ok");
    assert_eq!(daemon.channel_names(), ["b"]);
    let refused_before = daemon.metric("ladderd_publish_rejections_total", "reason=\"unknown_key\"");
    let intruder = publish(daemon.rtmp, "a-key", "320x180", 2, &[]);
    let out = wait_with_timeout(intruder, Duration::from_secs(20));
    assert!(!out.status.success(), "a removed channel's key is refused");
    assert!(daemon.metric("ladderd_publish_rejections_total", "reason=\"unknown_key\"") > refused_before);
    let mark = last_msn(&playlist(daemon.http, "a").expect("a is still served"));
    let after = eventually(Duration::from_secs(15), "a's playlist growing after the reloads", || {
        playlist(daemon.http, "a").filter(|p| last_msn(p) >= mark + 2)
    });
    assert!(!after.ended, "a live publish is not ended by a reload");
    // One publish from start to here: no discontinuity, no gap in the sequence.
    assert_eq!(after.media_sequence, before.media_sequence, "the window has room for the whole publish");
    assert_eq!(&after.segments[..before.segments.len()], &before.segments[..]);

    // When a's publisher leaves, a ends as usual; the first reload after its thread has flushed
    // its last segments forgets it (the playlist ends a moment before the thread is done).
    stop_publisher(publisher_a);
    eventually(Duration::from_secs(20), "a ended", || playlist(daemon.http, "a").filter(|p| p.ended));
    let gone = eventually(Duration::from_secs(20), "a forgotten by a reload", || {
        daemon.reload("ok");
        let r = http_get(daemon.http, "/live/a/180p/index.m3u8");
        (r.status == 404).then_some(r)
    });
    assert_eq!(gone.header("cache-control"), Some("no-store"), "a removed channel is unknown");

    // SIGTERM drains: a viewer following the playlist with blocking reloads gets the ended
    // playlist (held requests are answered with it) before the listeners close, and the daemon
    // exits 0.
    let publisher_b = publish(daemon.rtmp, "b-key", "320x180", 30, &[]);
    let live = eventually(Duration::from_secs(20), "b live again", || {
        playlist(daemon.http, "b").filter(|p| !p.ended && p.segments.len() >= 4)
    });
    let http = daemon.http;
    let follower = std::thread::spawn(move || {
        let mut msn = last_msn(&live) + 2;
        loop {
            let r = try_http_get(http, &format!("/live/b/180p/index.m3u8?_HLS_msn={msn}"))?;
            if r.status != 200 {
                return Some(r);
            }
            let p = parse_media_playlist(&r.text());
            if p.ended {
                return Some(r);
            }
            msn = last_msn(&p) + 2;
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    daemon.signal("TERM");
    let signalled = std::time::Instant::now();
    let answer = follower.join().expect("follower").expect("answered before the listeners closed");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let ended = answer.text();
    assert!(parse_media_playlist(&ended).ended, "the follower gets the ended playlist");
    // The part being built when the signal came was finished into the last segment: nothing is
    // left open or hinted.
    assert!(!ended.contains("#EXT-X-PRELOAD-HINT"), "{ended}");
    let tail = &ended[ended.rfind("#EXTINF").expect("a segment")..];
    assert!(!tail.contains("#EXT-X-PART:"), "no parts after the last segment:\n{ended}");
    let status = loop {
        if let Some(status) = daemon.child.try_wait().expect("exit status") {
            break status;
        }
        // systemd/ladderd.service gives a stop 30 s (TimeoutStopSec) before SIGKILL.
        assert!(signalled.elapsed() < Duration::from_secs(15), "still running 15 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    eprintln!("SIGTERM to exit: {:?}", signalled.elapsed());
    let _ = wait_with_timeout(publisher_b, Duration::from_secs(5));
}
