//! Hostile clients against the daemon, with real ffmpeg publishers beside them: whatever the
//! attacker does, a publisher with a valid key gets in, the other channels carry on, nothing
//! published disappears early and memory stays bounded.

mod support;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

const RUNGS: &[TestRung] = &[("180p", 320, 180, 250_000)];

/// Resident memory of this process (the daemon runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// What the process grew by since `before` stays under `limit_mib` (a channel's transcoder and
/// buffers, not an attacker's backlog).
fn memory_bounded(before: u64, limit_mib: u64, what: &str) {
    let grown = rss().saturating_sub(before);
    assert!(grown < limit_mib << 20, "{what}: memory grew by {} MiB (limit {limit_mib} MiB)", grown >> 20);
}

/// Lets this process hold a few thousand sockets (the flood's and the daemon's ends), raising the
/// soft limit on open files to the hard one where it is lower.
fn allow_many_sockets() {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files limit");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    if soft.parse::<u64>().is_ok_and(|s| s >= 4096) {
        return;
    }
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "cannot raise the open files limit from {soft} to {hard}");
}

/// Connections opened at `rate` per second, each from the next of `sources`, each sending
/// `payload` and then nothing; the newest `hold` are kept open (the oldest closed beyond that).
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(to: SocketAddr, sources: Vec<Ipv4Addr>, hold: usize, rate: u32, payload: &'static [u8]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (stop2, opened2) = (stop.clone(), opened.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                use tokio::io::AsyncWriteExt;
                let mut held = VecDeque::new();
                let interval = Duration::from_secs(1) / rate;
                let mut next = tokio::time::Instant::now();
                let mut i = 0usize;
                while !stop2.load(Ordering::Relaxed) {
                    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                    socket.bind(SocketAddr::from((sources[i % sources.len()], 0))).expect("bind source");
                    i += 1;
                    // A refused or reset connection is what a flood expects now and then.
                    if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), socket.connect(to)).await {
                        let _ = stream.write_all(payload).await;
                        held.push_back(stream);
                        opened2.fetch_add(1, Ordering::Relaxed);
                        if held.len() > hold {
                            held.pop_front();
                        }
                    }
                    next += interval;
                    tokio::time::sleep_until(next).await;
                }
            });
        });
        Flood { stop, opened, thread: Some(thread) }
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn counter(daemon: &Running, reason: &str) -> u64 {
    daemon.metrics.rtmp_connections_dropped.with_label_values(&[reason]).get()
}

fn live(daemon: &Running, channel: &str) -> bool {
    daemon.metrics.channel_live.with_label_values(&[channel]).get() == 1
}

/// Waits for `channel` to go live with `publisher`, which must not give up first.
fn got_in_within(daemon: &Running, channel: &str, publisher: &mut std::process::Child, limit: Duration) {
    let t0 = Instant::now();
    while !live(daemon, channel) {
        if let Ok(Some(status)) = publisher.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = publisher.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("the publisher for {channel} gave up ({status}) after {:?}: {err}", t0.elapsed());
        }
        assert!(t0.elapsed() < limit, "{channel}: no publish within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The channel carries on: its playlist moved on since `since` (a media sequence number, or the
/// newest segment's), and its oldest listed segment is still there. Returns its newest segment.
fn carries_on(http: SocketAddr, channel: &str, since: Option<&str>) -> String {
    let path = format!("/live/{channel}/180p/index.m3u8");
    let text = http_get(http, &path).text();
    let p = parse_media_playlist(&text);
    let (oldest, newest) = match (p.segments.first(), p.segments.last()) {
        (Some(o), Some(n)) => (o.0.clone(), n.0.clone()),
        _ => panic!("{channel}: no segments:\n{text}"),
    };
    assert!(!p.ended, "{channel} ended:\n{text}");
    if let Some(before) = since {
        assert_ne!(newest, before, "{channel} published nothing new:\n{text}");
    }
    let r = http_get(http, &format!("/live/{channel}/180p/{oldest}"));
    assert_eq!(r.status, 200, "{channel}: the oldest listed segment {oldest} is gone");
    newest
}

/// The first packet of an RTMP handshake (C0+C1, RTMP spec §5.2.2-5.2.3): the version, then
/// 1536 bytes. Enough for a connection to look like a client that is getting somewhere.
static C0_C1: [u8; 1537] = {
    let mut b = [0u8; 1537];
    b[0] = 3;
    b
};

#[test]
fn floods_of_half_open_connections_never_keep_an_encoder_out() {
    init_tracing();
    allow_many_sockets();
    let daemon = Running::start(config(&ladder(RUNGS, &["calm", "shop", "late"]), 1.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);

    let calm = publish(rtmp, "calm-key", "320x180", 120, &[]);
    wait_for_master(http, "calm");
    let mut newest = carries_on(http, "calm", None);
    let before = rss();

    // (1) From 200 addresses: connections that send one byte and wait, 1,000 held at a time.
    let sources: Vec<Ipv4Addr> = (1..=200).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let flood = Flood::start(rtmp, sources, 1000, 400, b"\x03");
    eventually(Duration::from_secs(20), "1,000 flood connections, the pending places full", || {
        (flood.opened() >= 1000 && counter(&daemon, "pending") > 0).then_some(())
    });
    let during = rss();
    assert!(
        during < before + (64 << 20),
        "memory grew by {} MiB under the flood",
        (during.saturating_sub(before)) >> 20
    );
    let t0 = Instant::now();
    let mut shop = publish(rtmp, "shop-key", "320x180", 120, &[]);
    got_in_within(&daemon, "shop", &mut shop, Duration::from_secs(10));
    let got_in = t0.elapsed();
    wait_for_master(http, "shop");
    eprintln!(
        "flood from 200 addresses: {} connections opened, {} displaced; the encoder got in after {got_in:?}",
        flood.opened(),
        counter(&daemon, "pending")
    );
    newest = carries_on(http, "calm", Some(&newest));
    drop(flood);

    // (2) From the encoder's own address: connections that send a whole C0+C1 and stall, which
    // makes them look further along than a connection just accepted.
    let flood = Flood::start(rtmp, vec![Ipv4Addr::LOCALHOST], 1000, 300, &C0_C1);
    eventually(Duration::from_secs(20), "the flood to fill its address's places", || {
        (counter(&daemon, "pending_per_address") > 0).then_some(())
    });
    let t0 = Instant::now();
    let mut late = publish(rtmp, "late-key", "320x180", 120, &[]);
    got_in_within(&daemon, "late", &mut late, Duration::from_secs(10));
    let got_in = t0.elapsed();
    wait_for_master(http, "late");
    eprintln!(
        "flood from the encoder's address: {} connections opened, {} displaced; the encoder got in after {got_in:?}",
        flood.opened(),
        counter(&daemon, "pending_per_address")
    );
    carries_on(http, "calm", Some(&newest));
    carries_on(http, "shop", None);
    drop(flood);
    assert!(rss() < before + (96 << 20), "memory stays bounded: {} MiB more", rss().saturating_sub(before) >> 20);
    assert_eq!(counter(&daemon, "panic"), 0);
    assert_eq!(counter(&daemon, "limit"), 0, "nobody was refused at accept: displacement made room");

    for p in [calm, shop, late] {
        stop_publisher(p);
    }
    daemon.stop();
}

/// The tags of an FLV file: (type, timestamp in ms, body). FLV spec §E.4.
fn flv_tags(flv: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut tags = Vec::new();
    let mut at = 9 + 4;
    while at + 11 <= flv.len() {
        let kind = flv[at];
        let size = u32::from_be_bytes([0, flv[at + 1], flv[at + 2], flv[at + 3]]) as usize;
        let ts = u32::from_be_bytes([flv[at + 7], flv[at + 4], flv[at + 5], flv[at + 6]]);
        let Some(body) = flv.get(at + 11..at + 11 + size) else { break };
        tags.push((kind, ts, body.to_vec()));
        at += 11 + size + 4;
    }
    tags
}

/// What [`raw_publish`] does beyond publishing faithfully.
#[derive(Clone, Copy, Default)]
struct Misbehaviour {
    /// Every audio tag stamped this many milliseconds.
    audio_ms: Option<u32>,
    /// `onTextData` messages sent with each video frame (30 a second); every tenth is over 1 KiB.
    texts_per_frame: u32,
    /// Bytes of filler data (an H.264 NAL unit of type 12, which CBR encoders pad with) added to
    /// each video frame.
    filler_per_frame: usize,
}

/// An H.264 filler data NAL unit (ITU-T H.264 §7.3.2.7) of `len` bytes, with its 4-byte length.
fn filler_nal(len: usize) -> Vec<u8> {
    let mut nal = (len as u32).to_be_bytes().to_vec();
    nal.push(0x0C);
    nal.resize(4 + len, 0xFF);
    nal
}

/// An AMF0 data message `["onTextData", {"text": text}]`, as one chunk (fmt 0) on chunk stream
/// 20, which the client session does not use (so its header compression is undisturbed).
fn on_text_data(text: &str, stream_id: u32) -> Vec<u8> {
    let mut amf = vec![0x02, 0, 10];
    amf.extend_from_slice(b"onTextData");
    amf.extend_from_slice(&[0x03, 0, 4]);
    amf.extend_from_slice(b"text");
    amf.push(0x02);
    amf.extend_from_slice(&(text.len() as u16).to_be_bytes());
    amf.extend_from_slice(text.as_bytes());
    amf.extend_from_slice(&[0, 0, 0x09]);
    let len = (amf.len() as u32).to_be_bytes();
    let mut chunk = vec![20, 0, 0, 0, len[1], len[2], len[3], 18];
    chunk.extend_from_slice(&stream_id.to_le_bytes());
    chunk.extend(amf);
    chunk
}

/// A real ffmpeg encoding (H.264 and AAC in FLV) sent in real time over RTMP by an RTMP client
/// of our own (rml_rtmp's), misbehaving as `bad` says. (ffmpeg cannot be made to send a frozen
/// audio clock itself: its muxer interleaves by timestamp and holds the video back behind audio
/// that never advances.)
/// The thread returns how many `onTextData` it sent, and over how long.
fn raw_publish(rtmp: SocketAddr, key: &str, bad: Misbehaviour, stop: Arc<AtomicBool>) -> JoinHandle<(u32, Duration)> {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
    };
    use rml_rtmp::time::RtmpTimestamp;
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().expect("tempdir");
    let flv = dir.path().join("source.flv");
    let out = std::process::Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "40"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .args(["-f", "flv"])
        .arg(&flv)
        .output()
        .expect("ffmpeg must be installed (scripts/setup.sh)");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    let tags = flv_tags(&std::fs::read(&flv).expect("read the FLV"));
    let key = key.to_string();
    std::thread::spawn(move || {
        let _dir = dir;
        let mut socket = std::net::TcpStream::connect(rtmp).expect("connect");
        let mut buf = vec![0u8; 65536];
        let mut hs = Handshake::new(PeerType::Client);
        socket.write_all(&hs.generate_outbound_p0_and_p1().expect("c0c1")).expect("write");
        let leftover = loop {
            let n = socket.read(&mut buf).expect("read");
            assert!(n > 0, "closed during the handshake");
            match hs.process_bytes(&buf[..n]).expect("handshake") {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    socket.write_all(&response_bytes).expect("write")
                }
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    socket.write_all(&response_bytes).expect("write");
                    break remaining_bytes;
                }
            }
        };
        let (mut session, _) = ClientSession::new(ClientSessionConfig::new()).expect("session");
        let send = |socket: &mut std::net::TcpStream, r: ClientSessionResult| {
            if let ClientSessionResult::OutboundResponse(p) = r {
                socket.write_all(&p.bytes).expect("write");
            }
        };
        // Reads until the session raises `wanted`, answering what needs an answer.
        let mut wait_for = |socket: &mut std::net::TcpStream,
                            session: &mut ClientSession,
                            mut pending: Vec<u8>,
                            wanted: ClientSessionEvent| loop {
            let mut seen = false;
            if !pending.is_empty() {
                // Every result in order: packets after the event (a Set Chunk Size) must go too.
                for r in session.handle_input(&pending).expect("input") {
                    match r {
                        ClientSessionResult::RaisedEvent(e) if e == wanted => seen = true,
                        ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestRejected {
                            description,
                        }) => {
                            panic!("refused: {description}")
                        }
                        other => send(socket, other),
                    }
                }
            }
            if seen {
                return;
            }
            let n = socket.read(&mut buf).expect("read");
            assert!(n > 0, "the server closed the connection");
            pending = buf[..n].to_vec();
        };
        let r = session.request_connection("live".into()).expect("connect");
        send(&mut socket, r);
        wait_for(&mut socket, &mut session, leftover, ClientSessionEvent::ConnectionRequestAccepted);
        let r = session.request_publishing(key, PublishRequestType::Live).expect("publish");
        send(&mut socket, r);
        wait_for(&mut socket, &mut session, Vec::new(), ClientSessionEvent::PublishRequestAccepted);
        let start = Instant::now();
        let mut sent_texts = 0u32;
        for (kind, ts, body) in tags {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = start + Duration::from_millis(u64::from(ts));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let r = match kind {
                8 => session.publish_audio_data(body.into(), RtmpTimestamp::new(bad.audio_ms.unwrap_or(ts)), false),
                9 => {
                    for i in 0..bad.texts_per_frame {
                        sent_texts += 1;
                        let text = if sent_texts.is_multiple_of(10) {
                            "x".repeat(1100)
                        } else {
                            format!("quiz {sent_texts} at {ts} ({i})")
                        };
                        if socket.write_all(&on_text_data(&text, 1)).is_err() {
                            return (sent_texts, start.elapsed());
                        }
                    }
                    let mut body = body;
                    // An AVC NALU packet (not the sequence header) takes the padding.
                    if bad.filler_per_frame > 0 && body.get(1) == Some(&1) {
                        body.extend(filler_nal(bad.filler_per_frame));
                    }
                    session.publish_video_data(body.into(), RtmpTimestamp::new(ts), false)
                }
                _ => continue,
            };
            let ClientSessionResult::OutboundResponse(packet) = r.expect("serialize") else { continue };
            if socket.write_all(&packet.bytes).is_err() {
                break;
            }
        }
        (sent_texts, start.elapsed())
    })
}

#[test]
fn frozen_audio_timestamps_are_detected_and_the_channel_keeps_publishing() {
    init_tracing();
    let daemon = Running::start(config(&ladder(RUNGS, &["frozen", "calm"]), 1.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let calm = publish(rtmp, "calm-key", "320x180", 120, &[]);
    wait_for_master(http, "calm");
    let calm_newest = carries_on(http, "calm", None);
    let before = rss();

    // Every audio packet at timestamp 0, from the first (an encoder whose audio clock is stuck),
    // while the video advances.
    let stop = Arc::new(AtomicBool::new(false));
    let frozen =
        raw_publish(rtmp, "frozen-key", Misbehaviour { audio_ms: Some(0), ..Default::default() }, stop.clone());
    let t0 = Instant::now();
    let frozen_audio = || daemon.metrics.ingest_frozen_tracks.with_label_values(&["frozen", "audio"]).get();
    eventually(Duration::from_secs(15), "the frozen audio track to be reported", || {
        (frozen_audio() == 1).then_some(())
    });
    eprintln!("frozen audio reported {:?} after the publisher started", t0.elapsed());
    // The channel publishes, audio included, and goes on doing so.
    wait_for_master(http, "frozen");
    let master = http_get(http, "/live/frozen/master.m3u8").text();
    assert!(master.contains("TYPE=AUDIO"), "the audio rendition is published:\n{master}");
    let newest = carries_on(http, "frozen", None);
    let audio = |http| {
        let text = http_get(http, "/live/frozen/audio/index.m3u8").text();
        let p = parse_media_playlist(&text);
        let newest = p.segments.last().map(|s| s.0.clone()).unwrap_or_else(|| panic!("audio segments:\n{text}"));
        let total: f64 = p.segments.iter().map(|s| s.1).sum();
        (newest, total, text)
    };
    let (audio_newest, _, _) = audio(http);
    std::thread::sleep(Duration::from_secs(3));
    carries_on(http, "frozen", Some(&newest));
    let (later, total, text) = audio(http);
    assert_ne!(later, audio_newest, "the audio rendition goes on:\n{text}");
    // Timed by their count, the audio segments last what the video's do (1 s each here).
    let video = parse_media_playlist(&http_get(http, "/live/frozen/180p/index.m3u8").text());
    let video_total: f64 = video.segments.iter().map(|s| s.1).sum();
    assert!((total - video_total).abs() < 2.5, "audio lists {total:.2} s, video {video_total:.2} s:\n{text}");
    // A late audio segment holds about a second of audio.
    let segment = http_get(http, &format!("/live/frozen/audio/{later}"));
    assert_eq!(segment.status, 200);
    let init = audio(http)
        .2
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\"").map(|v| v.trim_end_matches('"').to_string()));
    let mut bytes = init.map(|i| http_get(http, &format!("/live/frozen/audio/{i}")).body).unwrap_or_default();
    bytes.extend_from_slice(&segment.body);
    let probe = ffprobe_stdin(&bytes, &["-count_packets", "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"]);
    let frames: u32 = probe.trim().parse().unwrap_or_else(|_| panic!("ffprobe packets: {probe}"));
    // A second of AAC at 48 kHz is 46.9 frames of 1024 samples.
    assert!((35..=60).contains(&frames), "a late 1 s audio segment holds {frames} AAC frames");
    carries_on(http, "calm", Some(&calm_newest));
    assert_eq!(frozen_audio(), 1, "one freeze, counted once");
    // A second channel's ladder is the growth; frames piled up at one instant would be more.
    memory_bounded(before, 128, "a frozen audio track");

    stop.store(true, Ordering::Relaxed);
    let _ = frozen.join().expect("the RTMP client");
    stop_publisher(calm);
    daemon.stop();
}

#[test]
fn publisher_timed_text_is_held_to_the_api_limits_and_the_stream_goes_on() {
    init_tracing();
    // The API's limits: 5 a second, in bursts of 5 (the defaults).
    let daemon = Running::start(config(&ladder(RUNGS, &["quiz"]), 1.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let stop = Arc::new(AtomicBool::new(false));
    let before = rss();
    // 90 onTextData a second, every tenth over 1 KiB.
    let flood = raw_publish(rtmp, "quiz-key", Misbehaviour { texts_per_frame: 3, ..Default::default() }, stop.clone());
    wait_for_master(http, "quiz");
    let dropped = |reason: &str| daemon.metrics.ingest_timed_text_dropped.with_label_values(&["quiz", reason]).get();
    let newest = carries_on(http, "quiz", None);
    std::thread::sleep(Duration::from_secs(4));
    carries_on(http, "quiz", Some(&newest));
    stop.store(true, Ordering::Relaxed);
    let (sent, took) = flood.join().expect("the RTMP client");
    // What is dropped is counted as it arrives; give the last few a moment.
    std::thread::sleep(Duration::from_millis(300));
    let (rate, size) = (dropped("rate"), dropped("size"));
    let admitted = u64::from(sent) - rate - size;
    eprintln!("timed text: {sent} sent in {took:?}, {rate} over the rate, {size} over 1 KiB, {admitted} admitted");
    assert_eq!(size, u64::from(sent / 10), "every oversize text is dropped");
    // A full burst of 5, then 5 a second (and a second more for the daemon to read the last).
    let allowed = 5.0 + 5.0 * (took.as_secs_f64() + 1.0);
    assert!(admitted >= 5 && admitted as f64 <= allowed, "{admitted} admitted, {allowed:.1} allowed");
    memory_bounded(before, 128, "a timed text flood");
    assert_eq!(daemon.metrics.rtmp_connections_dropped.with_label_values(&["panic"]).get(), 0);
    daemon.stop();
}

#[test]
fn an_unsupported_audio_codec_beside_good_video_is_dropped_and_the_video_published() {
    init_tracing();
    let daemon = Running::start(config(&ladder(RUNGS, &["mp3"]), 1.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let before = rss();
    let publisher = std::process::Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "120"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "libmp3lame", "-f", "flv", &format!("rtmp://{rtmp}/live/mp3-key")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ffmpeg must be installed (scripts/setup.sh)");
    wait_for_master(http, "mp3");
    let master = http_get(http, "/live/mp3/master.m3u8").text();
    assert!(!master.contains("TYPE=AUDIO") && master.contains("180p/index.m3u8"), "video only:\n{master}");
    let newest = carries_on(http, "mp3", None);
    std::thread::sleep(Duration::from_secs(2));
    carries_on(http, "mp3", Some(&newest));
    let dropped = daemon.metrics.ingest_audio_dropped.with_label_values(&["mp3", "unsupported_codec"]).get();
    assert!(dropped > 20, "the MP3 tags are counted as dropped: {dropped}");
    assert_eq!(daemon.metrics.publish_rejections.with_label_values(&["unsupported_codec"]).get(), 0);
    memory_bounded(before, 128, "MP3 audio dropped beside the video");
    stop_publisher(publisher);
    daemon.stop();
}

/// A connection to `to` from `from` (one of 127.0.0.0/8): attackers with addresses of their own,
/// so that the per-address budget does not turn them away before they do their worst.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((from, 0))).expect("bind source");
        socket.connect(to).await.expect("connect")
    });
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// A client's side of a valid handshake (C0, C1, then C2 once S0, S1 and S2 are in); the socket
/// then speaks the chunk stream.
fn handshaken(from: Ipv4Addr, rtmp: SocketAddr) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut socket = connect_from(from, rtmp);
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    socket.write_all(&C0_C1).expect("C0+C1");
    let mut s0s1s2 = vec![0u8; 1 + 1536 + 1536];
    socket.read_exact(&mut s0s1s2).expect("S0+S1+S2");
    socket.write_all(&s0s1s2[1..1537]).expect("C2 (S1 echoed)");
    socket
}

/// One message as chunks of 128 bytes on chunk stream 3 (RTMP spec §5.3.1): a type 0 header
/// announcing `announced` bytes of type `type_id`, then `payload` (which may be shorter).
fn message(type_id: u8, announced: usize, payload: &[u8]) -> Vec<u8> {
    let len = (announced as u32).to_be_bytes();
    let mut out = vec![3, 0, 0, 0, len[1], len[2], len[3], type_id, 0, 0, 0, 0];
    for (i, chunk) in payload.chunks(128).enumerate() {
        if i > 0 {
            out.push(0xC3);
        }
        out.extend_from_slice(chunk);
    }
    out
}

/// An AMF0 `connect` command whose command object nests `depth` objects.
fn nested_connect(depth: usize) -> Vec<u8> {
    let mut amf = vec![0x02, 0, 7];
    amf.extend_from_slice(b"connect");
    amf.extend_from_slice(&[0x00, 0x3F, 0xF0, 0, 0, 0, 0, 0, 0]);
    for _ in 0..depth {
        amf.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    amf
}

/// Bytes that look like nothing (a fixed xorshift sequence).
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `bytes` and waits (a few seconds at most) for the daemon to close the connection.
fn closed_after(mut socket: std::net::TcpStream, bytes: &[u8]) -> bool {
    use std::io::{Read, Write};
    // The daemon may close while a large write is still going: that is the point.
    let _ = socket.write_all(bytes);
    socket.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
    let mut sink = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        match socket.read(&mut sink) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

#[test]
fn garbage_truncated_handshakes_and_hostile_amf_leave_a_live_channel_alone() {
    init_tracing();
    let daemon = Running::start(config(&ladder(RUNGS, &["calm", "next"]), 1.0));
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let calm = publish(rtmp, "calm-key", "320x180", 120, &[]);
    wait_for_master(http, "calm");
    let mut newest = carries_on(http, "calm", None);
    let before = rss();
    let (protocol0, timeout0) = (counter(&daemon, "protocol"), counter(&daemon, "handshake_timeout"));

    // Each kind 20 times, all at once, while `calm` is live.
    type Attack = (&'static str, fn(Ipv4Addr, SocketAddr, u64) -> bool);
    let attacks: &[Attack] = &[
        // Not RTMP at all: a version byte rml_rtmp refuses, then noise.
        ("garbage instead of a handshake", |from, rtmp, seed| {
            let mut bytes = garbage(4096, seed);
            bytes[0] = 0x47;
            closed_after(connect_from(from, rtmp), &bytes)
        }),
        // Half a C1, then silence until the handshake deadline (3 s here).
        ("a truncated handshake", |from, rtmp, _| closed_after(connect_from(from, rtmp), &C0_C1[..700])),
        ("noise after a valid handshake", |from, rtmp, seed| {
            closed_after(handshaken(from, rtmp), &garbage(8192, seed))
        }),
        // A command announcing the 16 MiB a chunk header can, its first kilobyte sent.
        ("a 16 MiB command", |from, rtmp, _| {
            closed_after(handshaken(from, rtmp), &message(20, 0xFF_FFFF, &[0x02; 1024]))
        }),
        // 8 MiB of video before any publish (rtmp.max_message_before_publish is 16 KiB), 1 MiB of it sent.
        ("8 MiB of video before a publish", |from, rtmp, _| {
            closed_after(handshaken(from, rtmp), &message(9, 8 << 20, &vec![0x17; 1 << 20]))
        }),
        // 3,000 nested AMF0 objects (12 KB) would overflow rml_amf0's recursion on a small stack.
        ("deeply nested AMF0", |from, rtmp, _| {
            let amf = nested_connect(3000);
            closed_after(handshaken(from, rtmp), &message(20, amf.len(), &amf))
        }),
    ];
    let mut threads = Vec::new();
    for (kind, (what, attack)) in attacks.iter().enumerate() {
        for i in 0..20u64 {
            let (what, attack) = (*what, *attack);
            let n = kind as u64 * 20 + i;
            let from = Ipv4Addr::new(127, 0, 2, n as u8 + 1);
            threads.push(std::thread::spawn(move || (what, attack(from, rtmp, n))));
        }
    }
    for t in threads {
        let (what, closed) = t.join().expect("attacker");
        assert!(closed, "{what}: the daemon closes the connection");
    }
    // Every attack is counted with its reason: the truncated handshakes time out; the oversize and
    // nested messages break the chunk guard's limits; noise breaks the protocol or, where it reads
    // as the start of a message still to come, times out too.
    eventually(Duration::from_secs(10), "every attack counted", || {
        let protocol = counter(&daemon, "protocol") - protocol0;
        let timeout = counter(&daemon, "handshake_timeout") - timeout0;
        (protocol >= 60 && timeout >= 20 && protocol + timeout >= 120).then_some(())
    });
    assert_eq!(counter(&daemon, "panic"), 0);
    let grown = rss().saturating_sub(before);
    eprintln!(
        "120 hostile connections: {} protocol errors, {} handshake timeouts; memory {} MiB more",
        counter(&daemon, "protocol") - protocol0,
        counter(&daemon, "handshake_timeout") - timeout0,
        grown >> 20
    );
    assert!(grown < 64 << 20, "memory grew by {} MiB under 120 hostile connections", grown >> 20);

    // The live channel carried on throughout, and an encoder still gets in.
    newest = carries_on(http, "calm", Some(&newest));
    let mut next = publish(rtmp, "next-key", "320x180", 120, &[]);
    got_in_within(&daemon, "next", &mut next, Duration::from_secs(10));
    wait_for_master(http, "next");
    carries_on(http, "calm", Some(&newest));
    for p in [calm, next] {
        stop_publisher(p);
    }
    daemon.stop();
}

#[test]
fn a_publisher_at_ten_times_the_bitrate_cap_is_ended_and_the_other_channels_carry_on() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, &["calm", "greedy"]), 1.0);
    // 3 Mbit/s: well above what `calm` sends (a 320x180 x264 stream, a few hundred kbit/s).
    cfg.rtmp.max_bitrate = 3_000_000;
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let calm = publish(rtmp, "calm-key", "320x180", 120, &[]);
    wait_for_master(http, "calm");
    let newest = carries_on(http, "calm", None);
    let before = rss();

    // 30 fps with 125 KB of filler in every frame: 30 Mbit/s, ten times the cap.
    let stop = Arc::new(AtomicBool::new(false));
    let greedy =
        raw_publish(rtmp, "greedy-key", Misbehaviour { filler_per_frame: 125_000, ..Default::default() }, stop.clone());
    eventually(Duration::from_secs(10), "greedy to go live", || live(&daemon, "greedy").then_some(()));
    let t0 = Instant::now();
    eventually(Duration::from_secs(15), "greedy ended for its bitrate", || {
        (counter(&daemon, "bitrate") == 1).then_some(())
    });
    eprintln!("a 30 Mbit/s publisher against a 3 Mbit/s cap was ended {:?} after it went live", t0.elapsed());
    let (_, sent_for) = greedy.join().expect("the RTMP client");
    assert!(sent_for < Duration::from_secs(30), "the greedy publisher was disconnected, not left to finish");
    eventually(Duration::from_secs(10), "greedy's channel to end", || (!live(&daemon, "greedy")).then_some(()));
    memory_bounded(before, 128, "a publisher far over the bitrate cap (rtmp.max_queued_bytes is 64 MiB)");
    carries_on(http, "calm", Some(&newest));
    assert_eq!(counter(&daemon, "bitrate"), 1, "calm, under the cap, was left alone");

    stop.store(true, Ordering::Relaxed);
    stop_publisher(calm);
    daemon.stop();
}
