//! A real Prometheus server (Debian's `prometheus`; path overridable with `PROMETHEUS`) scrapes
//! ladderd while it transcodes a live publish. Prometheus marks the target up only when the
//! whole exposition parses; its query API then returns ladderd's series with live values; every
//! query of the Grafana dashboard (config/grafana/ladderd.json) is PromQL it evaluates, and the
//! panels that must have data on a CPU host do.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::*;

const TOKEN: &str = "prometheus-test-token";

const RUNGS: &[TestRung] = &[("180p", 320, 180, 300_000), ("90p", 160, 90, 100_000)];
const CHANNELS: &[&str] = &["cam", "idle"];

fn prometheus_binary() -> String {
    std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

/// A Prometheus server with its own configuration and storage in a temporary directory, killed
/// on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target`'s `/metrics` every second as job `ladderd`.
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ladderd\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        // A free port: bound and released; nothing else on this machine races for it in between.
        let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("prometheus must be installed (scripts/setup.sh installs Debian's prometheus)");
        let server = Self { child, addr, dir };
        eventually(Duration::from_secs(30), "Prometheus ready", || {
            std::net::TcpStream::connect(addr).ok()?;
            (http_get(addr, "/-/ready").status == 200).then_some(())
        });
        server
    }

    /// An instant query through the HTTP API; panics unless Prometheus says `success`.
    fn query(&self, promql: &str) -> Vec<Value> {
        let resp = http_get(self.addr, &format!("/api/v1/query?query={}", percent_encode(promql)));
        let body: Value = serde_json::from_slice(&dechunk(&resp)).expect("the query API answers JSON");
        assert_eq!(body["status"], "success", "{promql}: {body}\n{}", self.log());
        match &body["data"]["result"] {
            Value::Array(series) => series.clone(),
            // Scalars and strings come as one [time, value] pair.
            other => vec![serde_json::json!({ "metric": {}, "value": other })],
        }
    }

    /// The values of an instant vector, by the metric's labels.
    fn values(&self, promql: &str) -> BTreeMap<String, f64> {
        self.query(promql)
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (s["metric"].to_string(), value)
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters, for a query parameter.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of a response that may use chunked transfer coding (RFC 9112 §7.1), as Go's HTTP
/// server does for bodies it has not buffered whole.
fn dechunk(resp: &HttpResponse) -> Vec<u8> {
    if !resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return resp.body.clone();
    }
    let (mut out, mut rest) = (Vec::new(), &resp.body[..]);
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("chunk size").split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text.trim(), 16).expect("hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Every `expr` of the dashboard with the panel's title, rows' panels included.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/ladderd.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).expect("dashboard")).expect("JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((p["title"].as_str().unwrap_or("").into(), t["expr"].as_str().unwrap_or("").into()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn prometheus_scrapes_ladderd_and_the_dashboard_queries_evaluate() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 2.0);
    cfg.admin.token = Some(TOKEN.into());
    let daemon = Running::start(cfg);
    let (rtmp, http, admin) = (daemon.rtmp, daemon.http, daemon.admin);
    let prometheus = Prometheus::start(admin);

    // A keyframe every 60 frames at 30 fps: a 2 s source GOP.
    let publisher = publish(rtmp, "cam-key", "320x180", 120, &[]);
    wait_for_master(http, "cam");
    // A viewer polling the origin, so that there are requests to count.
    let watching = Arc::new(AtomicBool::new(true));
    let viewer = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                http_get(http, "/live/cam/180p/index.m3u8");
                http_get(http, "/live/idle/master.m3u8");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // Scraped, parsed and queryable: the encoders' counters as Prometheus stores them.
    let encoded = eventually(Duration::from_secs(30), "ladderd_frames_encoded_total in Prometheus", || {
        let v = prometheus.values(r#"ladderd_frames_encoded_total{channel="cam"}"#);
        (v.len() == 2 && v.values().all(|&n| n > 30.0)).then_some(v)
    });
    assert!(encoded.keys().any(|k| k.contains(r#""rung":"90p""#)), "{encoded:?}");
    let up = prometheus.values(r#"up{job="ladderd"}"#);
    assert_eq!(up.values().copied().collect::<Vec<_>>(), vec![1.0], "the whole exposition parses: {up:?}");

    // Live values as they reach a real scraper. Rates need a few seconds of samples.
    std::thread::sleep(Duration::from_secs(4));
    let one = |promql: &str| -> f64 {
        let v = prometheus.values(promql);
        assert_eq!(v.len(), 1, "{promql}: {v:?}");
        v.into_values().next().unwrap_or(f64::NAN)
    };
    let fps = one(r#"ladderd_ingest_frame_rate{channel="cam"}"#);
    assert!((27.0..=33.0).contains(&fps), "ingest frame rate {fps}");
    let gop = one(r#"ladderd_ingest_keyframe_interval_seconds{channel="cam"}"#);
    assert!((1.9..=2.1).contains(&gop), "keyframe interval {gop}");
    for stage in ["decode", "encode", "package"] {
        let p50 = one(&format!(
            r#"histogram_quantile(0.5, sum by (le) (rate(ladderd_stage_latency_seconds_bucket{{channel="cam",stage="{stage}"}}[10s])))"#
        ));
        assert!(p50 > 0.0 && p50 < 3.0, "{stage} p50 {p50}");
    }
    // Each rung encodes the source's 30 fps, but for pictures it skipped when it fell behind
    // real time (counted as such).
    let encoder_fps = prometheus.values(
        r#"sum by (rung) (rate(ladderd_frames_encoded_total{channel="cam"}[5s])) + sum by (rung) (rate(ladderd_frames_dropped_total{channel="cam",reason="lagging"}[5s]))"#,
    );
    assert!(!encoder_fps.is_empty(), "a rate per rung");
    assert!(encoder_fps.values().all(|r| (20.0..=40.0).contains(r)), "{encoder_fps:?}");
    let requests = prometheus.values(r#"sum by (channel, route) (ladderd_origin_requests_total)"#);
    assert!(
        requests.iter().any(|(k, &v)| k.contains(r#""route":"media_playlist""#) && k.contains(r#""cam""#) && v > 5.0),
        "{requests:?}"
    );
    let by_code = prometheus.values(r#"sum by (route, code) (ladderd_http_requests_total{listener="origin"})"#);
    assert!(by_code.keys().any(|k| k.contains(r#""code":"404""#) && k.contains(r#""route":"master""#)), "{by_code:?}");

    // Every dashboard query is valid PromQL; the panels that must show something on a CPU host do.
    let must_have_data = [
        "Live channels",
        "Ingest bitrate",
        "Ingest frame rate",
        "Source keyframe interval",
        "Stage latency p50",
        "Stage latency p95",
        "Encode latency p95 per rung",
        "Part publish latency",
        "Encoder frame rate per rung",
        "Encoder queue depth",
        "Origin requests by route and status",
        "Viewer requests per channel",
        "Backend per stage",
    ];
    let queries = dashboard_queries();
    for title in must_have_data {
        assert!(queries.iter().any(|(t, _)| t == title), "panel {title:?} on the dashboard");
    }
    for (title, expr) in &queries {
        let promql = expr.replace("$channel", "cam").replace("$__rate_interval", "10s");
        let result = prometheus.query(&promql);
        if must_have_data.contains(&title.as_str()) {
            assert!(!result.is_empty(), "{title}: {promql} has no data");
        }
    }

    // The admin API shows the viewers' request rate, sampled like the ingest rate.
    let status = eventually(Duration::from_secs(10), "a request rate in the channel status", || {
        let r = http_get_auth(admin, "/api/v1/channels/cam", TOKEN);
        let status: Value = serde_json::from_slice(&r.body).ok()?;
        (status["origin"]["requests_per_second"].as_f64()? > 0.0).then_some(status)
    });
    assert!(status["origin"]["requests_total"].as_u64().is_some_and(|n| n > 5), "{status}");
    let rate = status["origin"]["requests_per_second"].as_f64().unwrap_or_default();
    // The viewer asks for one playlist of this channel every 200 ms or so; its requests for the
    // idle channel are that channel's.
    assert!(rate < 10.0, "{rate} requests per second");

    watching.store(false, Ordering::Relaxed);
    let _ = viewer.join();
    // Live through every check above, however slow the machine: a long publish, stopped here.
    stop_publisher(publisher);
    daemon.stop();
    drop(prometheus);
}
