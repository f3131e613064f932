//! TLS end to end: the real ffmpeg publishes over RTMPS, curl and ffprobe read the origin over
//! HTTPS (HTTP/2 by ALPN), and a reload presents a renewed certificate to new connections while a
//! broken certificate file is refused and the one in use stays.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// A self-signed certificate for 127.0.0.1 written to `cert` and `key` (replacing them).
fn make_certificate(cert: &Path, key: &Path, name: &str) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed (scripts/setup.sh)");
    assert!(status.success(), "openssl req");
}

/// curl over HTTPS trusting only `ca`; returns the output with `-w` giving the HTTP version.
fn curl(ca: &Path, url: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg("--cacert")
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl must be installed (scripts/setup.sh)")
}

/// The subject of the certificate the RTMPS listener presents to a new connection.
fn rtmps_subject(addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-brief"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| l.contains("Peer certificate")).unwrap_or_default().to_string()
}

fn copy(from: &Path, to: &str) -> PathBuf {
    let to = from.with_file_name(to);
    std::fs::copy(from, &to).expect("copy");
    to
}

#[test]
fn rtmps_ingest_https_origin_and_certificate_reload() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    make_certificate(&cert, &key, "first");
    let first_ca = copy(&cert, "first-ca.pem");
    let file = dir.path().join("ladderd.yaml");
    std::fs::write(
        &file,
        format!(
            "tls: {{ cert_file: \"{}\", key_file: \"{}\" }}\n\
             rtmp: {{ listen: \"127.0.0.1:0\", tls_listen: \"127.0.0.1:0\", handshake_timeout: 3, idle_timeout: 5 }}\n\
             http: {{ listen: \"127.0.0.1:0\", tls_listen: \"127.0.0.1:0\" }}\n\
             admin: {{ listen: \"127.0.0.1:0\" }}\n\
             hls: {{ segment_duration: 1.0, window: 30 }}\n\
             transcode: {{ hardware: cpu, x264_preset: ultrafast, encoder_threads: 1 }}\n\
             ladders: {{ small: [{{ name: \"180p\", width: 320, height: 180, video_bitrate: 300000 }}] }}\n\
             channels: [{{ name: \"sec\", stream_key: \"sec-key\", ladder: \"small\" }}]\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    let cfg = ladderd::Config::load(&file).expect("valid config");
    let daemon = Running::start(cfg);
    let (rtmps, https, http) = (daemon.rtmps.expect("rtmps"), daemon.https.expect("https"), daemon.http);
    let reloader = daemon.reloader.clone();

    // Plain RTMP on the TLS port is refused by the TLS handshake, and nothing goes live.
    let plain = publish(rtmps, "sec-key", "320x180", 2, &[]);
    assert!(!wait_with_timeout(plain, Duration::from_secs(20)).status.success(), "RTMP without TLS is refused");
    assert_eq!(http_get(http, "/live/sec/master.m3u8").status, 404);

    let publisher = publish_url(&format!("rtmps://{rtmps}/live/sec-key"), "320x180", 12, &[]);
    let master = format!("https://{https}/live/sec/master.m3u8");
    eventually(Duration::from_secs(20), "the master playlist over HTTPS", || {
        let out = curl(&first_ca, &master);
        (String::from_utf8_lossy(&out.stdout) == "200 2").then_some(())
    });
    // A real player stack reads the ladder over HTTPS.
    let probe = Command::new(ffprobe())
        .args(["-v", "error", "-show_entries", "stream=codec_name,width", "-of", "csv=p=0"])
        .arg(&master)
        .output()
        .expect("ffprobe");
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(streams.contains("h264,320"), "ffprobe over HTTPS: {streams} {}", String::from_utf8_lossy(&probe.stderr));
    // The plain listener serves the same objects.
    assert_eq!(http_get(http, "/live/sec/master.m3u8").status, 200);
    assert!(rtmps_subject(rtmps).contains("CN = first"), "{}", rtmps_subject(rtmps));

    // A renewed certificate at the same paths applies to new connections after a reload.
    make_certificate(&cert, &key, "second");
    let second_ca = copy(&cert, "second-ca.pem");
    assert!(String::from_utf8_lossy(&curl(&second_ca, &master).stdout) != "200 2", "not before the reload");
    reloader.reload(&file).expect("the reload succeeds");
    let out = curl(&second_ca, &master);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!curl(&first_ca, &master).status.success(), "the old certificate is no longer presented");
    assert!(rtmps_subject(rtmps).contains("CN = second"), "{}", rtmps_subject(rtmps));

    // A broken certificate file is refused; the renewed certificate stays in use.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").expect("write");
    let err = reloader.reload(&file).expect_err("a broken certificate is refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
    assert_eq!(String::from_utf8_lossy(&curl(&second_ca, &master).stdout), "200 2");
    // `check-config` (what `systemctl reload` runs first) refuses it too.
    let check = Command::new(env!("CARGO_BIN_EXE_ladderd")).arg("check-config").arg(&file).output().expect("ladderd");
    assert_eq!(check.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&check.stderr).contains("cert.pem"), "{}", String::from_utf8_lossy(&check.stderr));

    let out = wait_with_timeout(publisher, Duration::from_secs(30));
    assert!(out.status.success(), "the RTMPS publish ran to its end: {}", String::from_utf8_lossy(&out.stderr));
    let ended = eventually(Duration::from_secs(20), "ENDLIST", || {
        let p = parse_media_playlist(&http_get(http, "/live/sec/180p/index.m3u8").text());
        p.ended.then_some(p)
    });
    let total: f64 = ended.segments.iter().map(|(_, d)| d).sum();
    assert!((10.0..=13.0).contains(&total), "about 12 s published over RTMPS, got {total:.2} s");

    daemon.stop();
}
