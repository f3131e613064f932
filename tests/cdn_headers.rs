//! The origin's HTTP rules, as a real client (curl) sees them on a live channel: Cache-Control per
//! kind of object (and CDN-Cache-Control with the `cdn` preset), validators and a 304 round trip,
//! HEAD, byte ranges, CORS preflight, the three kinds of 404, LL-HLS errors, and no cookies.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::*;

const RUNGS: &[TestRung] = &[("180p", 320, 180, 300_000)];
const CHANNELS: &[&str] = &["shop", "idle"];

/// A response as curl reports it: status, headers (lower-case names) and body length.
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body_len: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> Seen {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-D", "-", "-o", "/dev/null", "-w", "\n%{size_download}"])
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl must be installed (scripts/setup.sh)");
    assert!(out.status.success(), "curl {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let mut headers = Vec::new();
    let mut body_len = 0;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        } else if let Ok(n) = line.trim().parse() {
            body_len = n;
        }
    }
    Seen { status, headers, body_len }
}

#[test]
fn origin_headers_seen_by_a_real_http_client() {
    init_tracing();
    let mut cfg = config(&ladder(RUNGS, CHANNELS), 1.0);
    cfg.http.cache.preset = ladderd::config::CachePreset::Cdn;
    // Segments of one second: listed for the window, then kept for one segment plus the
    // longest playlist (the window and the parts of one more segment) after they leave it.
    let lifetime = (2 * cfg.hls.window + 2) as u64;
    let daemon = Running::start(cfg);
    let (rtmp, http) = (daemon.rtmp, daemon.http);

    // Before any publish: a configured channel is a briefly cached 404, an unknown one is not cached.
    let idle = curl(http, "/live/idle/master.m3u8", &[]);
    assert_eq!((idle.status, idle.header("cache-control")), (404, Some("public, max-age=2")));
    assert_eq!(idle.header("cdn-cache-control"), Some("max-age=2"));
    let unknown = curl(http, "/live/nobody/master.m3u8", &[]);
    assert_eq!((unknown.status, unknown.header("cache-control")), (404, Some("no-store")));
    assert_eq!(unknown.header("cdn-cache-control"), None);

    let publisher = publish(rtmp, "shop-key", "320x180", 120, &[]);
    let playlist = eventually(Duration::from_secs(20), "two segments", || {
        let r = http_get(http, "/live/shop/180p/index.m3u8");
        (r.status == 200).then(|| parse_media_playlist(&r.text())).filter(|p| p.segments.len() >= 2)
    });

    let master = curl(http, "/live/shop/master.m3u8", &[]);
    assert_eq!(master.status, 200);
    assert_eq!(master.header("cache-control"), Some("public, max-age=1"));
    assert_eq!(master.header("content-type"), Some("application/vnd.apple.mpegurl"));
    assert_eq!(master.header("access-control-allow-origin"), Some("*"));
    assert!(master.header("last-modified").is_some_and(|v| v.ends_with(" GMT")), "an HTTP date");

    // Playlists are gzipped for clients that ask (curl --compressed checks the body decodes).
    let gz = curl(http, "/live/shop/180p/index.m3u8", &["--compressed"]);
    assert_eq!((gz.status, gz.header("content-encoding")), (200, Some("gzip")));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    let identity = curl(http, "/live/shop/180p/index.m3u8", &[]);
    assert_eq!(identity.header("content-encoding"), None);

    let segment = format!("/live/shop/180p/{}", playlist.segments[0].0);
    let full = curl(http, &segment, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.header("cache-control"), Some("public, max-age=31536000, immutable"));
    assert_eq!(full.header("cdn-cache-control"), Some(format!("max-age={lifetime}").as_str()));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header("vary"), None, "media does not vary");
    let etag = full.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong entity tag: {etag}");
    assert_eq!(full.header("content-length"), Some(full.body_len.to_string().as_str()));

    // Revalidation: the same tag gives 304 with the caching fields and no body.
    let revalidated = curl(http, &segment, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!((revalidated.status, revalidated.body_len), (304, 0));
    assert_eq!(revalidated.header("etag"), Some(etag.as_str()));
    assert_eq!(revalidated.header("cache-control"), full.header("cache-control"));
    let since = full.header("last-modified").expect("last-modified").to_string();
    assert_eq!(curl(http, &segment, &["-H", &format!("If-Modified-Since: {since}")]).status, 304);
    assert_eq!(curl(http, &segment, &["-H", "If-None-Match: \"other\""]).status, 200);

    // HEAD: the same headers, no body.
    let head = curl(http, &segment, &["-I"]);
    assert_eq!((head.status, head.body_len), (200, 0));
    assert_eq!(head.header("content-length"), full.header("content-length"));
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    // Byte ranges on media.
    let ranged = curl(http, &segment, &["-r", "0-99"]);
    assert_eq!((ranged.status, ranged.body_len), (206, 100));
    assert_eq!(ranged.header("content-range"), Some(format!("bytes 0-99/{}", full.body_len).as_str()));
    let beyond = curl(http, &segment, &["-r", &format!("{}-", full.body_len + 10)]);
    assert_eq!((beyond.status, beyond.header("cache-control")), (416, Some("no-store")));

    // CORS preflight from a player on another origin.
    let preflight = curl(
        http,
        &segment,
        &["-X", "OPTIONS", "-H", "Origin: https://shop.example", "-H", "Access-Control-Request-Method: GET"],
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    assert!(preflight.header("access-control-allow-methods").is_some_and(|m| m.contains("GET")));

    // LL-HLS: a blocking reload is cacheable for a target duration; too far ahead is an uncached
    // 400 that the CDN preset lets a shield hold for a second.
    let next = playlist.media_sequence + playlist.segments.len() as u64;
    let blocking = curl(http, &format!("/live/shop/180p/index.m3u8?_HLS_msn={next}"), &[]);
    assert_eq!((blocking.status, blocking.header("cache-control")), (200, Some("public, max-age=1")));
    let ahead = curl(http, &format!("/live/shop/180p/index.m3u8?_HLS_msn={}", next + 50), &[]);
    assert_eq!((ahead.status, ahead.header("cache-control")), (400, Some("no-store")));
    assert_eq!(ahead.header("cdn-cache-control"), Some("max-age=1"));

    // A name that does not exist under a live channel may appear with the next part: not cached.
    let missing = curl(http, "/live/shop/180p/999.m4s", &[]);
    assert_eq!((missing.status, missing.header("cache-control")), (404, Some("no-store")));

    // Nothing per viewer: no cookies anywhere.
    for seen in [&master, &full, &revalidated, &ranged, &blocking, &ahead, &idle] {
        assert!(seen.header("set-cookie").is_none());
    }

    // Live through every check above (the blocking and too-far-ahead answers need a live
    // playlist), however slow the machine: a long publish, stopped here.
    stop_publisher(publisher);
    daemon.stop();
}
