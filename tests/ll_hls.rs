//! Low-Latency HLS end to end: the real `ffmpeg` publishes over RTMP; a client follows a rendition
//! with blocking playlist reloads the way a player does (RFC 8216bis §6.2.5.2), and every playlist
//! it gets is read by m3u8-parser (tests/browser/parse-m3u8.mjs), a parser written independently
//! of ladderd's renderer. Plain-HLS clients (ffprobe, GStreamer) must still play the same stream.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const RUNGS: &[TestRung] = &[("360p", 640, 360, 700_000), ("180p", 320, 180, 250_000)];
const CHANNELS: &[&str] = &["ll"];

/// 1 s segments in a 20-segment window: CAN-SKIP-UNTIL (six target durations) leaves older
/// segments to skip once the stream has run for a few seconds longer than that.
const SEGMENT: f64 = 1.0;
/// `hls.part_duration` is left at its default.
const PART_TARGET: f64 = 0.2;
/// One frame of the 30 fps source: parts and EXTINF are both rounded, so their sums may differ by
/// less than that.
const FRAME: f64 = 1.0 / 30.0;
/// Durations are decimal text; a part exactly on target may print a hair over it.
const EPS: f64 = 0.0005;
/// Longer than every live check below takes on a loaded machine; the test stops the publisher
/// when they are done.
const PUBLISH_SECS: u32 = 120;
/// How long the client follows the playlist part by part.
const FOLLOW: Duration = Duration::from_secs(8);
/// A blocking request for the next part should come back after about one part duration. The
/// machine is shared and transcodes on the CPU, so this bound only catches a request that hangs
/// or waits for a whole segment; the measured figures are printed.
const NEXT_PART_LIMIT: Duration = Duration::from_millis(1500);
/// 100 simultaneous requests on a 2-core machine: the same idea, with room for scheduling.
const CONCURRENT_LIMIT: Duration = Duration::from_secs(3);

/// Reads playlist texts with m3u8-parser; one JSON value per text.
fn parse_playlists(texts: &[String]) -> Vec<Value> {
    let dir = browser_dir(&["m3u8-parser"]);
    let mut child = Command::new("node")
        .arg(dir.join("parse-m3u8.mjs"))
        .arg("--array")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed (scripts/setup.sh)");
    // The script reads all of stdin before it writes anything, so writing first cannot deadlock.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(texts).expect("texts as JSON"))
        .expect("write playlists");
    let out = child.wait_with_output().expect("parse-m3u8.mjs output");
    assert!(out.status.success(), "parse-m3u8.mjs failed: {}", String::from_utf8_lossy(&out.stderr));
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parse-m3u8.mjs prints JSON");
    assert_eq!(parsed.len(), texts.len());
    parsed
}

fn parse_playlist(text: &str) -> Value {
    parse_playlists(&[text.to_string()]).remove(0)
}

/// An `EXT-X-PART` as the parser read it, placed in its parent segment.
#[derive(Debug, Clone, PartialEq)]
struct ListedPart {
    /// Media sequence number of the parent segment (from its position in the playlist).
    msn: u64,
    /// Position within the parent segment, from the URI (`{msn}.{index}.m4s`).
    index: u64,
    uri: String,
    duration: f64,
    independent: bool,
}

#[derive(Debug)]
struct ListedSegment {
    msn: u64,
    uri: String,
    duration: f64,
    /// Listed parts (recent segments only).
    parts: Vec<ListedPart>,
}

/// What the tests judge of one media playlist, from m3u8-parser's JSON.
#[derive(Debug)]
struct Ll {
    version: u64,
    target_duration: f64,
    media_sequence: u64,
    /// `EXT-X-SKIP:SKIPPED-SEGMENTS` of a delta update.
    skipped: Option<u64>,
    segments: Vec<ListedSegment>,
    /// The segment being built: its msn and the parts it has so far.
    open_msn: u64,
    open: Vec<ListedPart>,
    /// `EXT-X-PRELOAD-HINT`s: (TYPE, URI).
    hints: Vec<(String, String)>,
    /// `EXT-X-RENDITION-REPORT`s: (URI, LAST-MSN, LAST-PART).
    reports: Vec<(String, Option<u64>, Option<u64>)>,
    can_block_reload: bool,
    part_hold_back: Option<f64>,
    can_skip_until: Option<f64>,
    part_target: Option<f64>,
    ended: bool,
    warnings: Vec<String>,
}

fn parts_of(segment: &Value, msn: u64) -> Vec<ListedPart> {
    segment["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    let uri = p["uri"].as_str().unwrap_or_default().to_string();
                    ListedPart {
                        msn,
                        index: part_name(&uri).filter(|(m, _)| *m == msn).map_or(u64::MAX, |(_, i)| i),
                        duration: p["duration"].as_f64().unwrap_or(f64::NAN),
                        independent: p["independent"].as_bool().unwrap_or(false),
                        uri,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Ll {
    fn from_json(v: &Value) -> Self {
        let media_sequence = v["mediaSequence"].as_u64().unwrap_or(0);
        let skipped = v["skip"]["skippedSegments"].as_u64();
        // After EXT-X-SKIP, the first listed segment is the first one not skipped.
        let first = media_sequence + skipped.unwrap_or(0);
        let segments: Vec<ListedSegment> = v["segments"]
            .as_array()
            .map(|s| {
                s.iter()
                    .zip(first..)
                    .map(|(s, msn)| ListedSegment {
                        msn,
                        uri: s["uri"].as_str().unwrap_or_default().to_string(),
                        duration: s["duration"].as_f64().unwrap_or(f64::NAN),
                        parts: parts_of(s, msn),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let open_msn = first + segments.len() as u64;
        let sc = &v["serverControl"];
        Self {
            version: v["version"].as_u64().unwrap_or(0),
            target_duration: v["targetDuration"].as_f64().unwrap_or(f64::NAN),
            media_sequence,
            skipped,
            open: parts_of(&v["preloadSegment"], open_msn),
            open_msn,
            segments,
            hints: v["preloadHints"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h["type"].as_str().unwrap_or_default().to_string(),
                                h["uri"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            reports: v["renditionReports"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|r| {
                            (
                                r["uri"].as_str().unwrap_or_default().to_string(),
                                r["lastMsn"].as_u64(),
                                r["lastPart"].as_u64(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            can_block_reload: sc["canBlockReload"].as_bool().unwrap_or(false),
            part_hold_back: sc["partHoldBack"].as_f64(),
            can_skip_until: sc["canSkipUntil"].as_f64(),
            part_target: v["partInf"]["partTarget"].as_f64(),
            ended: v["endList"].as_bool().unwrap_or(false),
            warnings: v["warnings"]
                .as_array()
                .map(|w| w.iter().filter_map(|w| w.as_str().map(String::from)).collect())
                .unwrap_or_default(),
        }
    }

    fn all_parts(&self) -> impl Iterator<Item = &ListedPart> {
        self.segments.iter().flat_map(|s| s.parts.iter()).chain(self.open.iter())
    }

    /// The newest part listed: (msn, index).
    fn last_part(&self) -> Option<(u64, u64)> {
        self.all_parts().map(|p| (p.msn, p.index)).max()
    }

    fn lists(&self, msn: u64, index: u64) -> bool {
        self.all_parts().any(|p| p.msn == msn && p.index == index)
    }

    /// Whether this playlist answers a blocking request for part `index` of segment `msn`. A part
    /// index past the last part of a segment that has since completed asks for part 0 of the next
    /// segment (RFC 8216bis §6.2.5.2): a preload hint can name a part that never comes to be when
    /// the segment ends first.
    fn answers(&self, msn: u64, index: u64) -> bool {
        if self.lists(msn, index) {
            return true;
        }
        let completed_with = self.segments.iter().find(|s| s.msn == msn).map(|s| s.parts.len() as u64);
        completed_with == Some(index) && self.lists(msn + 1, 0)
    }

    /// The newest complete segment whose parts are all listed.
    fn complete_with_parts(&self) -> Option<&ListedSegment> {
        self.segments.iter().rev().find(|s| s.parts.first().is_some_and(|p| p.index == 0))
    }
}

/// `{msn}.{index}.m4s` → (msn, index).
fn part_name(uri: &str) -> Option<(u64, u64)> {
    let (msn, index) = uri.strip_suffix(".m4s")?.split_once('.')?;
    Some((msn.parse().ok()?, index.parse().ok()?))
}

/// The part a player asks for next: the `EXT-X-PRELOAD-HINT:TYPE=PART` of a playlist's text, read
/// here rather than by the parser so that the next request goes out as soon as a player's would.
fn preload_hint(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:") && l.contains("TYPE=PART"))?;
    let uri = line.split("URI=\"").nth(1)?.split('"').next()?;
    part_name(uri)
}

/// How many parts the newest complete segment of a playlist's text lists.
fn last_segment_parts(text: &str) -> Option<u64> {
    let (mut parts, mut last) = (0, None);
    for line in text.lines() {
        if line.starts_with("#EXT-X-PART:") {
            parts += 1;
        } else if !line.starts_with('#') && !line.is_empty() {
            last = Some(parts);
            parts = 0;
        }
    }
    last.filter(|n| *n > 0)
}

/// Checks that hold for every LL-HLS media playlist, live or ended, full or delta. `siblings`: the
/// other media playlists of the channel, as URIs relative to this one.
fn check_playlist(p: &Ll, text: &str, siblings: &BTreeSet<String>) {
    assert!(p.warnings.is_empty(), "m3u8-parser warns {:?} about:\n{text}", p.warnings);
    assert!(p.can_block_reload, "CAN-BLOCK-RELOAD=YES:\n{text}");
    let part_target = p.part_target.unwrap_or_else(|| panic!("EXT-X-PART-INF:\n{text}"));
    // PART-TARGET is the longest part: hls.part_duration for 30 fps video (six frames), less for
    // AAC, whose 1024-sample frames do not divide 0.2 s.
    assert!(part_target > 0.0 && part_target <= PART_TARGET + EPS, "PART-TARGET within hls.part_duration:\n{text}");
    let hold_back = p.part_hold_back.unwrap_or_else(|| panic!("PART-HOLD-BACK:\n{text}"));
    // RFC 8216bis §4.4.3.8: PART-HOLD-BACK must be at least twice PART-TARGET and should be three
    // times; ladderd promises three (hls.js plays that close to the live edge).
    assert!(hold_back >= 3.0 * part_target - EPS, "PART-HOLD-BACK {hold_back} < 3 × {part_target}:\n{text}");
    // §4.4.3.8: CAN-SKIP-UNTIL at least six target durations.
    let skip_until = p.can_skip_until.unwrap_or_else(|| panic!("CAN-SKIP-UNTIL:\n{text}"));
    assert!(skip_until >= 6.0 * p.target_duration - EPS, "CAN-SKIP-UNTIL {skip_until}:\n{text}");

    for s in &p.segments {
        assert!(s.uri == format!("{}.m4s", s.msn), "segment {} is named {}:\n{text}", s.msn, s.uri);
    }
    let with_parts = p.segments.iter().map(|s| (s.msn, &s.parts)).chain([(p.open_msn, &p.open)]);
    for (msn, parts) in with_parts {
        for (k, part) in parts.iter().enumerate() {
            assert!(
                part.index != u64::MAX,
                "part {} of segment {msn} is not named {{msn}}.{{part}}.m4s:\n{text}",
                part.uri
            );
            if k > 0 {
                assert_eq!(part.index, parts[k - 1].index + 1, "parts of {msn} are listed in order:\n{text}");
            }
            // §4.4.4.9: no part longer than PART-TARGET.
            assert!(
                part.duration > 0.0 && part.duration <= part_target + EPS,
                "{} lasts {} (PART-TARGET {part_target}):\n{text}",
                part.uri,
                part.duration
            );
            // §4.4.4.9: at least 85 % of PART-TARGET, but for INDEPENDENT parts and a complete
            // segment's last (the parts of the segment being built are never its last: that one
            // is listed with the segment).
            let last_of_segment = msn != p.open_msn && k + 1 == parts.len();
            if !part.independent && !last_of_segment {
                assert!(
                    part.duration >= 0.85 * part_target - EPS,
                    "{} lasts {}, under 85 % of PART-TARGET {part_target}:\n{text}",
                    part.uri,
                    part.duration
                );
            }
            // Every segment starts with an IDR, so its first part can be decoded alone.
            if part.index == 0 {
                assert!(part.independent, "{} must be INDEPENDENT=YES:\n{text}", part.uri);
            }
        }
    }
    for s in &p.segments {
        if s.parts.first().is_some_and(|p| p.index == 0) {
            let sum: f64 = s.parts.iter().map(|p| p.duration).sum();
            assert!(
                (sum - s.duration).abs() <= FRAME,
                "parts of {} add up to {sum}, EXTINF {}:\n{text}",
                s.uri,
                s.duration
            );
        }
    }
    // The playlist lists the parts of recent segments (§6.2.2: the last three target durations).
    assert!(p.complete_with_parts().is_some() || !p.open.is_empty(), "parts of recent segments are listed:\n{text}");

    let part_hints: Vec<&String> = p.hints.iter().filter(|(t, _)| t == "PART").map(|(_, u)| u).collect();
    if p.ended {
        assert!(p.hints.is_empty(), "an ended playlist has no EXT-X-PRELOAD-HINT:\n{text}");
    } else {
        // The hint names the part after the newest one listed.
        let next = match p.open.last() {
            Some(last) => format!("{}.{}.m4s", p.open_msn, last.index + 1),
            None => format!("{}.0.m4s", p.open_msn),
        };
        assert_eq!(part_hints, vec![&next], "EXT-X-PRELOAD-HINT:TYPE=PART names the next part:\n{text}");
    }

    let reported: BTreeSet<String> = p.reports.iter().map(|(u, _, _)| u.clone()).collect();
    assert_eq!(&reported, siblings, "an EXT-X-RENDITION-REPORT for each other rendition:\n{text}");
    if let Some((msn, _)) = p.last_part() {
        let parts_per_segment = (p.target_duration / part_target).ceil() as u64;
        for (uri, last_msn, last_part) in &p.reports {
            let last_msn = last_msn.unwrap_or_else(|| panic!("LAST-MSN for {uri}:\n{text}"));
            let last_part = last_part.unwrap_or_else(|| panic!("LAST-PART for {uri}:\n{text}"));
            // Every rendition comes from the same decoded frames, cut at the same points.
            assert!(last_msn.abs_diff(msn) <= 2, "{uri} reported at {last_msn}, this one at {msn}:\n{text}");
            assert!(last_part <= 2 * parts_per_segment, "{uri}: LAST-PART {last_part}:\n{text}");
        }
    }
}

/// The other media playlists of the channel's master playlist, relative to a rendition playlist.
fn siblings_of(master: &str, own: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = master.lines().collect();
    let mut uris = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("#EXT-X-STREAM-INF:") {
            uris.insert(lines[i + 1].to_string());
        } else if l.starts_with("#EXT-X-MEDIA:")
            && let Some(uri) = l.split("URI=\"").nth(1).and_then(|r| r.split('"').next())
        {
            uris.insert(uri.to_string());
        }
    }
    assert!(uris.remove(own), "{own} in the master playlist:\n{master}");
    uris.into_iter().map(|u| format!("../{u}")).collect()
}

/// `n` GETs of `path` sent at once from their own threads; responses and how long each took.
fn concurrent_gets(http: SocketAddr, path: &str, n: usize) -> Vec<(HttpResponse, Duration)> {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (start, path) = (start.clone(), path.to_string());
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                let r = http_get(http, &path);
                (r, t0.elapsed())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("request thread")).collect()
}

fn summary(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |i: usize| d[i.min(d.len() - 1)].as_millis();
    format!(
        "n={} min={}ms p50={}ms p95={}ms max={}ms",
        d.len(),
        ms(0),
        ms(d.len() / 2),
        ms(d.len() * 95 / 100),
        ms(d.len() - 1)
    )
}

/// A child process that is killed if the test ends (panics) before waiting for it.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GStreamer's playbin on the master playlist, if GStreamer and its HLS demuxer are installed.
fn gstreamer(http: SocketAddr) -> Option<Child> {
    let gst = std::env::var("GST_LAUNCH").unwrap_or_else(|_| "gst-launch-1.0".into());
    let has_hls = Command::new("gst-inspect-1.0").arg("hlsdemux").output().is_ok_and(|o| o.status.success());
    if !has_hls {
        eprintln!("GStreamer with hlsdemux is not installed (scripts/setup.sh); skipping the GStreamer check");
        return None;
    }
    let child = Command::new(gst)
        .arg("playbin")
        .arg(format!("uri=http://{http}/live/ll/master.m3u8"))
        .args(["video-sink=fakesink", "audio-sink=fakesink"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0");
    Some(child)
}

#[test]
fn ll_hls_blocking_reloads_parts_delta_updates_and_plain_clients() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), SEGMENT);
    // A rung that falls behind real time skips to the next segment, and the part before the
    // skip then lasts until it (a held picture): the fastest preset keeps this test's CPU
    // transcode clear of that on a loaded machine.
    cfg.transcode.x264_preset = "ultrafast".into();
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);
    let playlist = "/live/ll/360p/index.m3u8";

    // A 1 s source GOP, so that segments are 1 s long and skipping starts early.
    let publisher = publish(rtmp, "ll-key", "640x360", PUBLISH_SECS, &["-g", "30", "-keyint_min", "30"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let r = http_get(http, playlist);
        if r.status == 200 && preload_hint(&r.text()).is_some() {
            break r.text();
        }
        assert!(
            Instant::now() < deadline,
            "no 360p playlist with a preload hint in 20 s; last: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The master playlist lists renditions once they have a whole segment (their bandwidth).
    let master = eventually(Duration::from_secs(10), "the master playlist", || {
        let r = http_get(http, "/live/ll/master.m3u8");
        (r.status == 200).then(|| r.text())
    });
    let siblings = siblings_of(&master, "360p/index.m3u8");
    assert!(siblings.contains("../180p/index.m3u8"), "{siblings:?}");
    // Plays along from here and must reach the end of the stream when the publisher stops.
    let mut gst = Reaped(gstreamer(http));

    // (a) Follow the playlist as a player does: ask for the preload-hinted part each time.
    let mut reloads: Vec<((u64, u64), Duration, String)> = Vec::new();
    let mut text = first;
    let follow = Instant::now();
    while follow.elapsed() < FOLLOW {
        let (msn, part) = preload_hint(&text).unwrap_or_else(|| panic!("a live playlist has a preload hint:\n{text}"));
        let path = format!("{playlist}?_HLS_msn={msn}&_HLS_part={part}");
        let t0 = Instant::now();
        let r = http_get(http, &path);
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/vnd.apple.mpegurl"), "GET {path}");
        text = r.text();
        reloads.push(((msn, part), took, text.clone()));
    }
    let took: Vec<Duration> = reloads.iter().map(|(_, d, _)| *d).collect();
    eprintln!("blocking reloads for the next part: {}", summary(took.clone()));
    // At 0.2 s parts, 8 s of following is about 40 parts; far fewer means requests waited for more.
    assert!(reloads.len() >= 20, "only {} reloads in {FOLLOW:?}: {}", reloads.len(), summary(took));
    let parsed = parse_playlists(&reloads.iter().map(|(_, _, t)| t.clone()).collect::<Vec<_>>());
    let mut previous: Option<(u64, (u64, u64))> = None;
    for (((msn, part), took, text), json) in reloads.iter().zip(&parsed) {
        let p = Ll::from_json(json);
        check_playlist(&p, text, &siblings);
        assert!(!p.ended, "live:\n{text}");
        assert!(p.answers(*msn, *part), "?_HLS_msn={msn}&_HLS_part={part} answered without that part:\n{text}");
        assert!(*took <= NEXT_PART_LIMIT, "?_HLS_msn={msn}&_HLS_part={part} took {took:?}");
        let newest = p.last_part().expect("parts listed");
        if let Some((sequence, previous_newest)) = previous {
            assert!(p.media_sequence >= sequence, "EXT-X-MEDIA-SEQUENCE went back to {}:\n{text}", p.media_sequence);
            assert!(newest > previous_newest, "{newest:?} after {previous_newest:?}:\n{text}");
        }
        previous = Some((p.media_sequence, newest));
    }

    // (b) A segment is its parts, byte for byte.
    let (text, p) = {
        let text = http_get(http, playlist).text();
        let p = Ll::from_json(&parse_playlist(&text));
        (text, p)
    };
    let segment = p.complete_with_parts().unwrap_or_else(|| panic!("a complete segment with its parts:\n{text}"));
    let whole = http_get(http, &format!("/live/ll/360p/{}", segment.uri));
    assert_eq!(whole.status, 200, "{}", segment.uri);
    let mut joined = Vec::new();
    for part in &segment.parts {
        let r = http_get(http, &format!("/live/ll/360p/{}", part.uri));
        assert_eq!(r.status, 200, "{}", part.uri);
        assert_eq!(r.header("content-type"), Some("video/iso.segment"), "{}", part.uri);
        assert!(!r.body.is_empty(), "{}", part.uri);
        joined.extend_from_slice(&r.body);
    }
    assert!(
        whole.body == joined,
        "{} ({} bytes) differs from its {} parts joined ({} bytes)",
        segment.uri,
        whole.body.len(),
        segment.parts.len(),
        joined.len()
    );

    // Rendition reports never run ahead of the rendition they report on.
    for uri in &siblings {
        let (_, msn, part) = p.reports.iter().find(|(u, _, _)| u == uri).cloned().expect("checked above");
        let (msn, part) = (msn.expect("LAST-MSN"), part.expect("LAST-PART"));
        let sibling = uri.strip_prefix("../").expect("relative URI");
        let sibling_text = http_get(http, &format!("/live/ll/{sibling}")).text();
        let s = Ll::from_json(&parse_playlist(&sibling_text));
        check_playlist(&s, &sibling_text, &siblings_of(&master, sibling));
        let actual = s.last_part().expect("parts listed");
        assert!((msn, part) <= actual, "{uri} reported at {:?} but has only {actual:?}", (msn, part));
    }

    // (c) A delta update (`_HLS_skip=YES`) is the full playlist with its oldest segments replaced
    // by EXT-X-SKIP. Fetch both for the same part so they describe the same moment; a part or a
    // segment completing between the two requests means trying again.
    let mut delta_pair = None;
    for _ in 0..5 {
        let (msn, part) = preload_hint(&http_get(http, playlist).text()).expect("preload hint");
        let query = format!("_HLS_msn={msn}&_HLS_part={part}");
        let full = http_get(http, &format!("{playlist}?{query}"));
        let delta = http_get(http, &format!("{playlist}?{query}&_HLS_skip=YES"));
        assert_eq!(full.status, 200, "?{query}: {}", full.text());
        assert_eq!(delta.status, 200, "?{query}&_HLS_skip=YES: {}", delta.text());
        let (full, delta) = (full.text(), delta.text());
        let parsed = parse_playlists(&[full.clone(), delta.clone()]);
        let (f, d) = (Ll::from_json(&parsed[0]), Ll::from_json(&parsed[1]));
        if (f.last_part(), &f.hints) == (d.last_part(), &d.hints) {
            delta_pair = Some((full, f, delta, d));
            break;
        }
    }
    let (full_text, f, delta_text, d) = delta_pair.expect("a full playlist and a delta update of the same moment");
    check_playlist(&d, &delta_text, &siblings);
    let skipped =
        d.skipped.unwrap_or_else(|| panic!("EXT-X-SKIP in the delta update of\n{full_text}\n---\n{delta_text}"));
    assert!(skipped > 0, "{delta_text}");
    assert!(f.skipped.is_none(), "{full_text}");
    // RFC 8216bis §8: EXT-X-SKIP needs protocol version 9.
    assert!(d.version >= 9, "a playlist with EXT-X-SKIP declares EXT-X-VERSION {}:\n{delta_text}", d.version);
    assert_eq!(d.media_sequence, f.media_sequence, "{full_text}\n---\n{delta_text}");
    assert_eq!(skipped as usize + d.segments.len(), f.segments.len(), "{full_text}\n---\n{delta_text}");
    let tail: Vec<&str> = f.segments[skipped as usize..].iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(d.segments.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(), tail, "{delta_text}");
    // §6.2.5.1: only segments beyond the Skip Boundary (CAN-SKIP-UNTIL from the end, open parts
    // included) are skipped; every skipped segment starts further back than that.
    let kept: f64 = d.segments.iter().map(|s| s.duration).sum::<f64>() + d.open.iter().map(|p| p.duration).sum::<f64>();
    let newest_skipped = f.segments[skipped as usize - 1].duration;
    let boundary = f.can_skip_until.expect("CAN-SKIP-UNTIL");
    eprintln!("delta update: {skipped} segments skipped, {kept:.3} s kept, CAN-SKIP-UNTIL {boundary}");
    assert!(
        kept + newest_skipped > boundary + EPS,
        "the delta skips a segment that starts {} s from the end, within CAN-SKIP-UNTIL {boundary}:\n{delta_text}",
        kept + newest_skipped
    );

    // (d) Requests the server cannot answer soon are refused at once (§6.2.5.2).
    let (msn, _) = preload_hint(&http_get(http, playlist).text()).expect("preload hint");
    for query in [format!("_HLS_msn={}&_HLS_part=0", msn + 10), format!("_HLS_msn={}", msn + 10), "_HLS_part=1".into()]
    {
        let t0 = Instant::now();
        let r = http_get(http, &format!("{playlist}?{query}"));
        assert_eq!(r.status, 400, "?{query} (current msn {msn}): {}", r.text());
        assert!(t0.elapsed() < NEXT_PART_LIMIT, "?{query} was held for {:?} before its 400", t0.elapsed());
    }

    // (e) 100 players asking for the next part at once: one blocked playlist reload each, then
    // one blocked GET each of the hinted part. Those waiting when it comes get the same bytes
    // (on a loaded machine some threads may start after it, and see a later playlist). The part
    // asked for is the last of its segment, the one whose arrival also completes the segment:
    // no one may see the playlist half-way between the two.
    let mut text = http_get(http, playlist).text();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (msn, part) = loop {
        let (msn, part) = preload_hint(&text).expect("preload hint");
        if Some(part) == last_segment_parts(&text).and_then(|n| n.checked_sub(1)) {
            break (msn, part);
        }
        assert!(Instant::now() < deadline, "no segment's last part hinted in 5 s:\n{text}");
        text = http_get(http, &format!("{playlist}?_HLS_msn={msn}&_HLS_part={part}")).text();
    };
    let path = format!("{playlist}?_HLS_msn={msn}&_HLS_part={part}");
    let answers = concurrent_gets(http, &path, 100);
    eprintln!("100 concurrent blocking reloads: {}", summary(answers.iter().map(|(_, d)| *d).collect()));
    for (r, took) in &answers {
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert!(*took <= CONCURRENT_LIMIT, "GET {path} took {took:?}");
    }
    // Answers by the newest part they list: one playlist text for each.
    // One parser run for all of them: a process per answer would take seconds on a loaded machine,
    // long enough for the live edge to move past the part looked at next.
    let texts: Vec<String> = answers.iter().map(|(r, _)| r.text()).collect();
    let mut distinct: BTreeMap<(u64, u64), (String, usize)> = BTreeMap::new();
    for (text, parsed) in texts.iter().zip(parse_playlists(&texts)) {
        let p = Ll::from_json(&parsed);
        assert!(p.answers(msn, part), "{path}:\n{text}");
        // The segment is complete in the very playlist that first lists its last part.
        assert!(p.open_msn > msn, "{path}: part listed, segment {msn} not complete:\n{text}");
        let newest = p.last_part().expect("parts listed");
        let (seen, n) = distinct.entry(newest).or_insert_with(|| (text.clone(), 0));
        assert_eq!(seen.as_str(), text.as_str(), "{path}: two different playlists with the same newest part");
        *n += 1;
    }
    let (first, (text, waited)) = distinct.iter().next().expect("answers");
    eprintln!("{path}: {waited} of 100 answered with the playlist up to {first:?}, {} later", 100 - waited);
    let text = text.clone();
    let (msn, part) = preload_hint(&text).expect("preload hint");
    let part_path = format!("/live/ll/360p/{msn}.{part}.m4s");
    let answers = concurrent_gets(http, &part_path, 100);
    eprintln!("100 concurrent GETs of the hinted part: {}", summary(answers.iter().map(|(_, d)| *d).collect()));
    let later = http_get(http, &part_path);
    if answers.iter().all(|(r, _)| r.status == 404) {
        // A hint for a part past the end of its segment names nothing once the segment is cut.
        let text = http_get(http, playlist).text();
        let p = Ll::from_json(&parse_playlist(&text));
        let parts = p.segments.iter().find(|s| s.msn == msn).map(|s| s.parts.len() as u64);
        assert_eq!(parts, Some(part), "GET {part_path} is 404 but the part was due:\n{text}");
    } else {
        assert_eq!(later.status, 200, "GET {part_path} after it was published");
        for (r, took) in &answers {
            assert_eq!(r.status, 200, "GET {part_path} while it was hinted: {}", r.text());
            assert!(r.body == later.body, "GET {part_path}: held requests got other bytes than a later GET");
            assert!(*took <= CONCURRENT_LIMIT, "GET {part_path} took {took:?}");
        }
    }

    // h2c: a player's blocked playlist reload and the hinted part, multiplexed on one connection.
    let (msn, part) = preload_hint(&http_get(http, playlist).text()).expect("preload hint");
    let h2_playlist = format!("{playlist}?_HLS_msn={msn}&_HLS_part={part}");
    let h2_part = format!("/live/ll/360p/{msn}.{part}.m4s");
    let out = Command::new("node")
        .arg(browser_dir(&[]).join("h2c-get.mjs"))
        .arg(format!("http://{http}{h2_playlist}"))
        .arg(format!("http://{http}{h2_part}"))
        .output()
        .expect("node must be installed (scripts/setup.sh)");
    assert!(out.status.success(), "h2c-get.mjs: {}", String::from_utf8_lossy(&out.stderr));
    let h2: Vec<Value> = serde_json::from_slice(&out.stdout).expect("h2c-get.mjs prints JSON");
    let body = |i: usize| -> Vec<u8> {
        let hex = h2[i]["body"].as_str().expect("body").as_bytes();
        hex.chunks(2).map(|b| u8::from_str_radix(std::str::from_utf8(b).expect("hex"), 16).expect("hex")).collect()
    };
    eprintln!("h2c: playlist after {} ms, part after {} ms", h2[0]["ms"], h2[1]["ms"]);
    assert_eq!(h2[0]["status"], 200, "h2c GET {h2_playlist}");
    let h2_text = String::from_utf8(body(0)).expect("UTF-8 playlist");
    assert!(Ll::from_json(&parse_playlist(&h2_text)).answers(msn, part), "h2c GET {h2_playlist}:\n{h2_text}");
    // A hinted part that never came to be (its segment ended first) is a 404 both ways.
    let later = http_get(http, &h2_part);
    assert_eq!(h2[1]["status"], later.status, "h2c GET {h2_part} while it was hinted, and later over HTTP/1.1");
    assert!(later.status != 200 || body(1) == later.body, "h2c GET {h2_part}: other bytes than a later GET");

    // (g) A plain-HLS client still reads the stream: LL-HLS tags are invisible to it.
    let probe = wait_with_timeout(
        Command::new(ffprobe())
            .args(["-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
            .arg(format!("http://{http}/live/ll/master.m3u8"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffprobe"),
        Duration::from_secs(30),
    );
    let streams = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success() && streams.contains("h264") && streams.contains("aac"),
        "ffprobe: {streams} {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // Everything above happened while the stream was live.
    let live = http_get(http, playlist).text();
    assert!(preload_hint(&live).is_some() && !live.contains("#EXT-X-ENDLIST"), "still live:\n{live}");

    // (f) The publisher stops: the playlists end, with nothing more hinted.
    stop_publisher(publisher);
    for rendition in ["360p", "180p"] {
        let path = format!("/live/ll/{rendition}/index.m3u8");
        let text = eventually(Duration::from_secs(20), "ENDLIST", || {
            let text = http_get(http, &path).text();
            text.contains("#EXT-X-ENDLIST").then_some(text)
        });
        let p = Ll::from_json(&parse_playlist(&text));
        assert!(p.ended, "{text}");
        assert!(p.hints.is_empty() && !text.contains("#EXT-X-PRELOAD-HINT"), "no preload hint after the end:\n{text}");
        assert!(p.open.is_empty(), "no unfinished segment after the end:\n{text}");
        check_playlist(&p, &text, &siblings_of(&master, &format!("{rendition}/index.m3u8")));
        // Every part the playlist lists can be fetched (RFC 8216bis §6.2.2).
        for uri in text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-PART:"))
            .filter_map(|l| l.split("URI=\"").nth(1).and_then(|rest| rest.split('"').next()))
        {
            let r = http_get(http, &format!("/live/ll/{rendition}/{uri}"));
            assert_eq!(r.status, 200, "{rendition}/{uri} is listed, so it must be there");
        }
    }

    if let Some(gst) = gst.0.take() {
        let out = wait_with_timeout(gst, Duration::from_secs(40));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Got EOS"),
            "GStreamer playbin must play the stream to its end: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    daemon.stop();
}
