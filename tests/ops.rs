//! Running ladderd as a service: the systemd unit verifies, and the daemon tells systemd it is
//! ready only once it serves.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/ladderd.service")).expect("unit");
    // The unit names the installed binary; point it at the one just built.
    let unit = unit.replace("/usr/bin/ladderd", env!("CARGO_BIN_EXE_ladderd"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ladderd.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn ready_is_sent_after_the_listeners_are_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let config = dir.path().join("ladderd.yaml");
    std::fs::write(
        &config,
        "rtmp: { listen: \"127.0.0.1:0\" }\nhttp: { listen: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\n\
         ladders:\n  l:\n    - { name: \"360p\", width: 640, height: 360, video_bitrate: 700000 }\n\
         channels:\n  - { name: \"c\", stream_key: \"c-key\", ladder: \"l\" }\n",
    )
    .expect("config");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ladderd"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ladderd");
    let mut buf = [0u8; 128];
    let got = socket.recv(&mut buf);
    // SIGTERM drains and exits 0, after telling systemd it is stopping.
    let _ = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status();
    let stopping = socket.recv(&mut buf[64..]).map(|n| String::from_utf8_lossy(&buf[64..64 + n]).into_owned());
    let status = daemon.wait().expect("exit");
    let n = got.expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(stopping.ok().as_deref(), Some("STOPPING=1"));
    assert!(status.success(), "{status:?}");
}
