//! The origin's answers, request by request, against a store filled as the packager fills it.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::conditional::parse_http_date;
use super::*;
use crate::config::{CacheConfig, HlsConfig};
use crate::store::Progress;

/// Target duration 2 s (hold bound 6 s, blocking max-age 2), part target 0.2 s (Advance Part
/// Limit 15). The tests run on the real clock: tokio's paused clock needs its `test-util`
/// feature, which this crate does not enable.
const TARGETS: Targets = Targets { target_duration: Duration::from_secs(2), part_target: 0.2 };
const HOLD: Duration = Duration::from_secs(6);
/// What "at once" means on a busy test machine: well under the hold bound.
const AT_ONCE: Duration = Duration::from_millis(500);
const CACHE_BLOCKING: &str = "public, max-age=2";
// The built-in values as they go on the wire.
const CACHE_LIVE: &str = "public, max-age=1";
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
const CACHE_NOT_LIVE: &str = "public, max-age=2";
const CACHE_MISS: &str = "no-store";
const CACHE_RETRY: &str = "no-store";

struct Fixture {
    store: Arc<Store>,
    origin: Arc<Origin>,
    channel: Arc<ChannelObjects>,
    shutdown: CancellationToken,
}

fn named(key: &str) -> ObjectName<'_> {
    ObjectName::from_key(key).unwrap_or_else(|| panic!("{key} is not a stored name"))
}

fn put(ch: &ChannelObjects, path: &str, bytes: &'static [u8], cache: Cacheability) {
    ch.put(&named(path), vec![Bytes::from_static(bytes)], cache);
}

/// Publishes as the packager does: objects first, then the progress that describes them.
fn publish(ch: &ChannelObjects, playlist: &'static [u8], delta: &'static [u8], progress: Progress) {
    put(ch, "720p/index.m3u8", playlist, Cacheability::Live);
    put(ch, "720p/index.m3u8#skip", delta, Cacheability::Live);
    ch.set_progress("720p", progress);
}

fn put_part(ch: &ChannelObjects, msn: u64, part: u64, bytes: &'static [u8]) {
    put(ch, &format!("720p/{msn}.{part}.m4s"), bytes, Cacheability::Immutable);
}

/// A channel whose `720p` rendition has segments up to 4 complete and parts 5.0 and 5.1 out.
fn fixture() -> Fixture {
    let store = Arc::new(Store::new());
    let channel = store.channel("demo");
    put(&channel, "master.m3u8", b"#EXTM3U\n", Cacheability::Live);
    channel.put(
        &named("720p/1.m4s"),
        vec![Bytes::from_static(b"moof"), Bytes::from_static(b"mdat")],
        Cacheability::Immutable,
    );
    put_part(&channel, 5, 0, b"part 5.0");
    put_part(&channel, 5, 1, b"part 5.1");
    publish(&channel, b"playlist v1", b"delta v1", Progress { msn: 5, parts: 2, ..Default::default() });
    let shutdown = CancellationToken::new();
    let origin = Arc::new(Origin::new(store.clone(), Arc::new(Metrics::new()), TARGETS, shutdown.clone()));
    Fixture { store, origin, channel, shutdown }
}

async fn get(o: &Origin, method: Method, path: &str) -> Response<Body> {
    get_with(o, method, path, &[]).await
}

async fn get_with(o: &Origin, method: Method, path: &str, headers: &[(header::HeaderName, &str)]) -> Response<Body> {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    o.handle(&req.body(()).expect("request")).await
}

fn with_cache(f: &Fixture, yaml: &str) -> Origin {
    let cache: CacheConfig = serde_yaml::from_str(yaml).expect("cache config");
    Origin::new(f.store.clone(), Arc::new(Metrics::new()), TARGETS, f.shutdown.clone())
        .with_cache_policy(CachePolicy::from_config(&cache, Duration::from_secs(16)))
}

fn cdn(r: &Response<Body>) -> Option<&str> {
    r.headers().get("cdn-cache-control").map(|v| v.to_str().expect("ascii"))
}

#[tokio::test]
async fn the_cdn_preset_adds_cdn_cache_control_and_overrides_replace_either_header() {
    let f = fixture();
    f.store.channel("idle");
    let o = with_cache(&f, "preset: cdn");
    let r = get(&o, Method::GET, "/live/demo/720p/1.m4s").await;
    assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_IMMUTABLE, Some("max-age=16")));
    let r = get(&o, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=9").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_RETRY, Some("max-age=1")));
    let r = get(&o, Method::GET, "/live/idle/master.m3u8").await;
    assert_eq!(cdn(&r), Some("max-age=2"));
    // Playlists and plain misses keep one header for everyone.
    let r = get(&o, Method::GET, "/live/demo/master.m3u8").await;
    assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_LIVE, None));
    let r = get(&o, Method::GET, "/live/nope/master.m3u8").await;
    assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_MISS, None));

    let o = with_cache(
        &f,
        "cache_control: { playlist: \"public, max-age=0, must-revalidate\", media: \"public, max-age=600\" }\n\
         cdn_cache_control: { blocking_playlist: \"max-age=4\" }",
    );
    let r = get(&o, Method::GET, "/live/demo/720p/index.m3u8").await;
    assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=0, must-revalidate");
    let r = get(&o, Method::GET, "/live/demo/720p/5.0.m4s").await;
    assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), ("public, max-age=600", None));
    let r = get(&o, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=1").await;
    assert_eq!((r.headers()[header::CACHE_CONTROL].to_str().unwrap(), cdn(&r)), (CACHE_BLOCKING, Some("max-age=4")));
    // A 304 carries the configured fields too (RFC 9110 §15.4.5).
    let r = get_with(&o, Method::GET, "/live/demo/720p/5.0.m4s", &[(header::IF_NONE_MATCH, "*")]).await;
    assert_eq!(
        (r.status(), r.headers()[header::CACHE_CONTROL].to_str().unwrap()),
        (StatusCode::NOT_MODIFIED, "public, max-age=600")
    );
}

#[tokio::test]
async fn playlists_are_gzipped_for_clients_that_accept_it_with_their_own_tag() {
    use std::io::Read;
    let f = fixture();
    let text: String = (0..100).map(|i| format!("#EXTINF:2.00000,\n{i}.m4s\n")).collect();
    let text: &'static str = Box::leak(text.into_boxed_str());
    put(&f.channel, "720p/index.m3u8", text.as_bytes(), Cacheability::Live);
    let path = "/live/demo/720p/index.m3u8";

    let plain = get(&f.origin, Method::GET, path).await;
    assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    assert_eq!(header(&plain, header::VARY), "Accept-Encoding");
    let plain_tag = header(&plain, header::ETAG).to_owned();

    let gz = get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, "br;q=1, gzip;q=0.8")]).await;
    assert_eq!(header(&gz, header::CONTENT_ENCODING), "gzip");
    assert_eq!(header(&gz, header::VARY), "Accept-Encoding");
    let gz_tag = header(&gz, header::ETAG).to_owned();
    assert_ne!(gz_tag, plain_tag, "each form has its own strong tag");
    let length: usize = header(&gz, header::CONTENT_LENGTH).parse().unwrap();
    let bytes = body(gz).await;
    assert_eq!(bytes.len(), length);
    assert!(length < text.len() / 3, "{length} of {}", text.len());
    let mut back = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut back).expect("gzip");
    assert_eq!(back, text);

    // Revalidation compares the tag of the form asked for.
    let r =
        get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, "gzip"), (header::IF_NONE_MATCH, &gz_tag)])
            .await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = get_with(
        &f.origin,
        Method::GET,
        path,
        &[(header::ACCEPT_ENCODING, "gzip"), (header::IF_NONE_MATCH, &plain_tag)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);

    // gzip refused, or not offered: identity; media is never compressed.
    for refused in ["gzip;q=0", "identity", "*;q=0", "br"] {
        let r = get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, refused)]).await;
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none(), "{refused}");
    }
    let r = get_with(&f.origin, Method::GET, path, &[(header::ACCEPT_ENCODING, "*")]).await;
    assert_eq!(header(&r, header::CONTENT_ENCODING), "gzip");
    let r = get_with(&f.origin, Method::GET, "/live/demo/720p/1.m4s", &[(header::ACCEPT_ENCODING, "gzip")]).await;
    assert!(r.headers().get(header::CONTENT_ENCODING).is_none() && r.headers().get(header::VARY).is_none());
}

/// A segment of three chunks, `0123` `4567` `89ab`, stored as `720p/2.m4s`.
fn put_chunked_segment(ch: &ChannelObjects) {
    let chunks = [&b"0123"[..], b"4567", b"89ab"].map(Bytes::from_static).to_vec();
    ch.put(&named("720p/2.m4s"), chunks, Cacheability::Immutable);
}

fn header(r: &Response<Body>, name: header::HeaderName) -> &str {
    r.headers().get(&name).map_or("", |v| v.to_str().expect("text"))
}

/// Starts a GET that may be held; the returned task yields the response.
fn spawn_get(o: &Arc<Origin>, path: &str) -> tokio::task::JoinHandle<Response<Body>> {
    let (o, path) = (o.clone(), path.to_owned());
    tokio::spawn(async move { get(&o, Method::GET, &path).await })
}

async fn body(resp: Response<Body>) -> Bytes {
    match resp.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    }
}

/// Lets spawned requests run until they block (the paused clock does not move).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn playlists_are_short_lived_and_segments_immutable() {
    let f = fixture();
    let r = get(&f.origin, Method::GET, "/live/demo/master.m3u8").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/vnd.apple.mpegurl");
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
    assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8").await;
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
    assert_eq!(body(r).await, "playlist v1");
    let r = get(&f.origin, Method::GET, "/live/demo/720p/1.m4s").await;
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "8");
    assert_eq!(r.headers()[header::CONTENT_TYPE], "video/iso.segment");
}

#[tokio::test]
async fn unknown_names_are_404_and_not_cached() {
    let f = fixture();
    for p in ["/live/nope/master.m3u8", "/live/demo/720p/2.m4s", "/live/demo/", "/x", "/live/demo/../demo/master.m3u8"]
    {
        let r = get(&f.origin, Method::GET, p).await;
        assert_eq!(r.status(), 404, "{p}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_MISS, "{p}");
    }
}

/// Every object has one URL: another spelling of a stored name (a number with a leading zero)
/// is not an alias a cache would keep a second copy under, and is not held as a hinted part.
#[tokio::test]
async fn another_spelling_of_a_stored_name_is_not_found_at_once() {
    let f = fixture();
    assert_eq!(get(&f.origin, Method::GET, "/live/demo/720p/5.0.m4s").await.status(), 200);
    for p in
        ["/live/demo/720p/05.0.m4s", "/live/demo/720p/5.00.m4s", "/live/demo/720p/01.m4s", "/live/demo/720p/5.02.m4s"]
    {
        let started = Instant::now();
        let r = get(&f.origin, Method::GET, p).await;
        assert_eq!(
            (r.status(), r.headers()[header::CACHE_CONTROL].to_str().ok()),
            (StatusCode::NOT_FOUND, Some(CACHE_MISS)),
            "{p}"
        );
        assert!(started.elapsed() < AT_ONCE, "{p} was held");
    }
}

#[tokio::test]
async fn head_has_length_and_no_body_and_other_methods_are_refused() {
    let f = fixture();
    let r = get(&f.origin, Method::HEAD, "/live/demo/720p/1.m4s").await;
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "8");
    assert!(http_body::Body::is_end_stream(r.body()));
    assert_eq!(get(&f.origin, Method::POST, "/live/demo/master.m3u8").await.status(), 405);
    assert_eq!(get(&f.origin, Method::OPTIONS, "/live/demo/master.m3u8").await.status(), 204);
}

#[tokio::test]
async fn blocking_reload_already_satisfied_is_answered_at_once() {
    let f = fixture();
    let start = Instant::now();
    for query in [
        "_HLS_msn=4",
        "_HLS_msn=5&_HLS_part=1",
        "_HLS_msn=0",
        "_HLS_msn=4&_HLS_part=0",
        // Unknown parameters are ignored.
        "token=abc&_HLS_msn=4&flag",
    ] {
        let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
        assert_eq!(r.status(), 200, "{query}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING, "{query}");
        assert_eq!(body(r).await, "playlist v1", "{query}");
    }
    assert!(start.elapsed() < AT_ONCE, "nothing waited");
    assert_eq!(f.origin.waiting(), 0);
}

#[tokio::test]
async fn held_reload_is_answered_by_the_update_that_satisfies_it() {
    let f = fixture();
    let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2");
    let whole = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5");
    settle().await;
    assert_eq!(f.origin.waiting(), 2);
    // An update that does not reach part 5.2 keeps both waiting.
    publish(&f.channel, b"playlist v1 again", b"delta", Progress { msn: 5, parts: 2, ..Default::default() });
    settle().await;
    assert_eq!(f.origin.waiting(), 2);
    let start = Instant::now();
    put_part(&f.channel, 5, 2, b"part 5.2");
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    let r = held.await.expect("task");
    assert!(start.elapsed() < AT_ONCE, "answered on the update, not by a timer");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING);
    assert_eq!(body(r).await, "playlist v2");
    settle().await;
    assert_eq!(f.origin.waiting(), 1, "segment 5 is not complete yet");
    publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 0, ..Default::default() });
    assert_eq!(body(whole.await.expect("task")).await, "playlist v3");
    assert_eq!(f.origin.waiting(), 0);
}

#[tokio::test]
async fn requests_beyond_the_held_limit_get_503_with_retry_after_at_once() {
    let f = fixture();
    let metrics = Arc::new(Metrics::new());
    let o = Arc::new(Origin::new(f.store.clone(), metrics.clone(), TARGETS, f.shutdown.clone()).with_held_limit(2));
    let held =
        [spawn_get(&o, "/live/demo/720p/5.2.m4s"), spawn_get(&o, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2")];
    settle().await;
    assert_eq!(o.waiting(), 2);
    let start = Instant::now();
    for path in ["/live/demo/720p/5.2.m4s", "/live/demo/720p/index.m3u8?_HLS_msn=6"] {
        let r = get(&o, Method::GET, path).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.headers()[header::RETRY_AFTER], "1", "{path}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY);
    }
    assert!(start.elapsed() < AT_ONCE, "refused without waiting");
    assert_eq!(metrics.held_refused.get(), 2);
    // What needs no hold is served as ever; the held ones are answered on the update.
    assert_eq!(get(&o, Method::GET, "/live/demo/720p/5.1.m4s").await.status(), 200);
    put_part(&f.channel, 5, 2, b"part 5.2");
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    for task in held {
        assert_eq!(task.await.expect("task").status(), 200);
    }
    // The places are free again.
    let again = spawn_get(&o, "/live/demo/720p/5.3.m4s");
    settle().await;
    assert_eq!(o.waiting(), 1);
    again.abort();
}

#[tokio::test]
async fn a_hundred_waiters_get_identical_bytes() {
    let f = fixture();
    let parts: Vec<_> = (0..100).map(|_| spawn_get(&f.origin, "/live/demo/720p/5.2.m4s")).collect();
    let playlists: Vec<_> =
        (0..100).map(|_| spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2")).collect();
    settle().await;
    assert_eq!(f.origin.waiting(), 200);
    put_part(&f.channel, 5, 2, b"part 5.2");
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    for task in parts {
        let r = task.await.expect("task");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
        assert_eq!(body(r).await, "part 5.2");
    }
    for task in playlists {
        assert_eq!(body(task.await.expect("task")).await, "playlist v2");
    }
    assert_eq!(f.origin.waiting(), 0);
}

#[tokio::test]
async fn held_requests_get_503_after_three_target_durations() {
    let f = fixture();
    let start = Instant::now();
    let paths = ["/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2", "/live/demo/720p/5.2.m4s"];
    let held: Vec<_> = paths.iter().map(|p| spawn_get(&f.origin, p)).collect();
    for (path, task) in paths.iter().zip(held) {
        let r = task.await.expect("task");
        assert_eq!(r.status(), 503, "{path}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY, "{path}");
        assert!(start.elapsed() >= HOLD && start.elapsed() < HOLD + AT_ONCE, "{path}: {:?}", start.elapsed());
    }
    assert_eq!(f.origin.waiting(), 0);
}

#[tokio::test]
async fn malformed_or_far_ahead_directives_are_400_at_once() {
    let f = fixture();
    let start = Instant::now();
    for query in [
        "_HLS_part=1",
        "_HLS_msn=abc",
        "_HLS_msn=",
        "_HLS_msn=-1",
        "_HLS_msn=+5",
        "_HLS_msn=5&_HLS_part=x",
        "_HLS_msn=99999999999999999999",
        // The last complete segment is 4: 4 + 2 is the furthest one may ask for.
        "_HLS_msn=7",
        // The last part out is 5.1; fifteen parts (3 s / 0.2 s) beyond it is the limit.
        "_HLS_msn=5&_HLS_part=17",
        "_HLS_msn=6&_HLS_part=15",
    ] {
        let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
        assert_eq!(r.status(), 400, "{query}");
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY, "{query}");
    }
    assert!(start.elapsed() < AT_ONCE, "refused without waiting");
    // Just inside the limits: held, not refused.
    let queries = ["_HLS_msn=6", "_HLS_msn=5&_HLS_part=16", "_HLS_msn=6&_HLS_part=14"];
    let held: Vec<_> =
        queries.iter().map(|q| spawn_get(&f.origin, &format!("/live/demo/720p/index.m3u8?{q}"))).collect();
    settle().await;
    assert_eq!(f.origin.waiting(), queries.len());
    for task in held {
        task.abort();
    }
}

/// At 24 fps the playlist advertises 1/6 s parts (0.16667): the limit is 3 / 0.16667 parts,
/// so 17 ahead are held, not the 15 of the configured 0.2 s.
#[tokio::test]
async fn the_advance_part_limit_follows_the_advertised_part_target() {
    let f = fixture();
    let progress = Progress { msn: 5, parts: 2, part_target_us: 166_667, ..Default::default() };
    publish(&f.channel, b"playlist 24 fps", b"delta 24 fps", progress);
    let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=19").await;
    assert_eq!(r.status(), 400, "18 parts ahead");
    let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=18");
    settle().await;
    assert_eq!(f.origin.waiting(), 1, "17 parts ahead is within the limit");
    held.abort();
}

#[tokio::test]
async fn ended_playlists_ignore_msn_and_part() {
    let f = fixture();
    publish(
        &f.channel,
        b"playlist ended",
        b"delta ended",
        Progress { msn: 6, parts: 0, ended: true, ..Default::default() },
    );
    let start = Instant::now();
    for query in ["_HLS_msn=99", "_HLS_msn=6&_HLS_part=3"] {
        let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
        assert_eq!(r.status(), 200, "{query}");
        assert_eq!(body(r).await, "playlist ended");
    }
    assert_eq!(get(&f.origin, Method::GET, "/live/demo/720p/6.0.m4s").await.status(), 404);
    assert!(start.elapsed() < AT_ONCE);
}

#[tokio::test]
async fn skip_serves_the_delta_update_alone_or_with_blocking() {
    let f = fixture();
    for (query, want) in [("_HLS_skip=YES", "delta v1"), ("_HLS_skip=v2", "delta v1"), ("_HLS_skip=NO", "playlist v1")]
    {
        let r = get(&f.origin, Method::GET, &format!("/live/demo/720p/index.m3u8?{query}")).await;
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE, "{query}");
        assert_eq!(body(r).await, want, "{query}");
    }
    let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2&_HLS_skip=YES");
    settle().await;
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    let r = held.await.expect("task");
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_BLOCKING);
    assert_eq!(body(r).await, "delta v2");
    // Without a stored delta update the whole playlist answers.
    f.channel.remove(&named("720p/index.m3u8#skip"));
    assert_eq!(
        body(get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_skip=YES").await).await,
        "playlist v2"
    );
}

#[tokio::test]
async fn preload_hinted_parts_are_held_until_published() {
    let f = fixture();
    let next = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
    // The segment may end after 5.1, so the hint may name the next segment's first part.
    let following = spawn_get(&f.origin, "/live/demo/720p/6.0.m4s");
    settle().await;
    assert_eq!(f.origin.waiting(), 2);
    put_part(&f.channel, 5, 2, b"part 5.2");
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    let r = next.await.expect("task");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_IMMUTABLE);
    assert_eq!(body(r).await, "part 5.2");
    settle().await;
    assert_eq!(f.origin.waiting(), 1);
    // Segment 5 completes; 6.0 comes with the next update.
    publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 0, ..Default::default() });
    settle().await;
    assert_eq!(f.origin.waiting(), 1);
    put_part(&f.channel, 6, 0, b"part 6.0");
    publish(&f.channel, b"playlist v4", b"delta v4", Progress { msn: 6, parts: 1, ..Default::default() });
    assert_eq!(body(following.await.expect("task")).await, "part 6.0");
}

#[tokio::test]
async fn a_hinted_part_the_segment_ended_without_is_404() {
    let f = fixture();
    let held = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
    settle().await;
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 6, parts: 0, ..Default::default() });
    let r = held.await.expect("task");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_MISS);
}

#[tokio::test]
async fn missing_parts_no_hint_names_are_404_at_once() {
    let f = fixture();
    let start = Instant::now();
    for path in [
        "/live/demo/720p/5.3.m4s",
        "/live/demo/720p/6.1.m4s",
        "/live/demo/720p/7.0.m4s",
        "/live/demo/720p/1.0.m4s",
        "/live/demo/720p/5.m4s",
        "/live/demo/480p/5.2.m4s",
        "/live/demo/720p/5.x.m4s",
    ] {
        let r = get(&f.origin, Method::GET, path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    assert!(start.elapsed() < AT_ONCE);
}

#[tokio::test]
async fn a_part_index_past_a_segments_end_means_the_next_segments_first_part() {
    let f = fixture();
    put_part(&f.channel, 5, 2, b"part 5.2");
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 6, parts: 0, ..Default::default() });
    // 5.2 is the last part of segment 5: answered at once.
    let r = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2").await;
    assert_eq!(body(r).await, "playlist v2");
    // 5.3 does not exist, so it stands for 6.0 (RFC 8216bis §6.2.5.2).
    let held = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=3");
    settle().await;
    assert_eq!(f.origin.waiting(), 1);
    put_part(&f.channel, 6, 0, b"part 6.0");
    publish(&f.channel, b"playlist v3", b"delta v3", Progress { msn: 6, parts: 1, ..Default::default() });
    assert_eq!(body(held.await.expect("task")).await, "playlist v3");
}

#[tokio::test]
async fn shutdown_answers_held_requests_at_once() {
    let f = fixture();
    let playlist = spawn_get(&f.origin, "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2");
    let part = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
    settle().await;
    assert_eq!(f.origin.waiting(), 2);
    let start = Instant::now();
    f.shutdown.cancel();
    for task in [playlist, part] {
        let r = task.await.expect("task");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_RETRY);
    }
    assert!(start.elapsed() < AT_ONCE);
    assert_eq!(f.origin.waiting(), 0);
}

#[tokio::test]
async fn a_dropped_request_stops_counting_as_waiting() {
    let f = fixture();
    let held = spawn_get(&f.origin, "/live/demo/720p/5.2.m4s");
    settle().await;
    assert_eq!(f.origin.waiting(), 1);
    held.abort();
    let _ = held.await;
    assert_eq!(f.origin.waiting(), 0);
}

#[tokio::test]
async fn a_rendition_without_progress_serves_its_playlist_plainly() {
    let f = fixture();
    put(&f.channel, "audio/index.m3u8", b"audio playlist", Cacheability::Live);
    let r = get(&f.origin, Method::GET, "/live/demo/audio/index.m3u8?_HLS_msn=9&_HLS_part=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], CACHE_LIVE);
    assert_eq!(body(r).await, "audio playlist");
    let r = get(&f.origin, Method::GET, "/live/demo/video/index.m3u8?_HLS_msn=1").await;
    assert_eq!(r.status(), 404);
}

#[test]
fn http_dates_in_all_three_forms() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(SystemTime::UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    for form in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
        assert_eq!(parse_http_date(form), Some(784_111_777), "{form}");
    }
    for bad in
        ["", "yesterday", "Sun, 06 Nov 1994 08:49:37 CET", "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 8:49 GMT"]
    {
        assert_eq!(parse_http_date(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn objects_carry_a_strong_etag_and_last_modified() {
    let f = fixture();
    let stored = f.channel.get(&named("720p/1.m4s")).expect("stored");
    let r = get(&f.origin, Method::GET, "/live/demo/720p/1.m4s").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, header::ETAG), format!("\"8-{:016x}\"", stored.digest));
    assert_eq!(header(&r, header::LAST_MODIFIED), http_date(stored.stored_at));
    assert!(header(&r, header::LAST_MODIFIED).ends_with(" GMT"));
    assert_eq!(header(&r, header::ACCEPT_RANGES), "bytes");
    // The same bytes stored again are the same representation; other bytes are not.
    put_part(&f.channel, 7, 0, b"moofmdat");
    let again = get(&f.origin, Method::GET, "/live/demo/720p/7.0.m4s").await;
    assert_eq!(header(&again, header::ETAG), header(&r, header::ETAG));
    let playlist = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8").await;
    assert_ne!(header(&playlist, header::ETAG), header(&r, header::ETAG));
    assert_eq!(header(&playlist, header::ACCEPT_RANGES), "", "playlists are served whole");
}

#[tokio::test]
async fn if_none_match_round_trip_is_304_without_content() {
    let f = fixture();
    for path in ["/live/demo/720p/1.m4s", "/live/demo/master.m3u8"] {
        let first = get(&f.origin, Method::GET, path).await;
        let etag = header(&first, header::ETAG).to_owned();
        for value in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}"), "*".to_owned()] {
            let r = get_with(&f.origin, Method::GET, path, &[(header::IF_NONE_MATCH, &value)]).await;
            assert_eq!(r.status(), 304, "{path} {value}");
            assert_eq!(header(&r, header::ETAG), etag);
            assert_eq!(header(&r, header::CACHE_CONTROL), header(&first, header::CACHE_CONTROL));
            assert_eq!(header(&r, header::LAST_MODIFIED), header(&first, header::LAST_MODIFIED));
            assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
            assert!(r.headers().get(header::CONTENT_LENGTH).is_none());
            assert!(r.headers().get(header::CONTENT_TYPE).is_none());
            assert!(body(r).await.is_empty());
        }
        // A list split over two field lines.
        let r = get_with(
            &f.origin,
            Method::GET,
            path,
            &[(header::IF_NONE_MATCH, "\"a,b\""), (header::IF_NONE_MATCH, &etag)],
        )
        .await;
        assert_eq!(r.status(), 304, "{path}");
        for value in ["\"other\"", "W/\"other\", \"a,b\"", "garbage"] {
            let r = get_with(&f.origin, Method::GET, path, &[(header::IF_NONE_MATCH, value)]).await;
            assert_eq!(r.status(), 200, "{path} {value}");
            assert_eq!(header(&r, header::ETAG), etag);
        }
    }
}

#[tokio::test]
async fn if_modified_since_is_304_unless_if_none_match_is_present() {
    let f = fixture();
    let stored = f.channel.get(&named("720p/1.m4s")).expect("stored");
    let path = "/live/demo/720p/1.m4s";
    let at = http_date(stored.stored_at);
    let earlier = http_date(stored.stored_at - Duration::from_secs(2));
    let r = get_with(&f.origin, Method::GET, path, &[(header::IF_MODIFIED_SINCE, &at)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_IMMUTABLE);
    assert_eq!(header(&r, header::LAST_MODIFIED), at);
    for headers in [
        vec![(header::IF_MODIFIED_SINCE, earlier.as_str())],
        vec![(header::IF_MODIFIED_SINCE, "not a date")],
        // If-None-Match decides alone when present (RFC 9110 §13.1.3).
        vec![(header::IF_NONE_MATCH, "\"other\""), (header::IF_MODIFIED_SINCE, at.as_str())],
    ] {
        let r = get_with(&f.origin, Method::GET, path, &headers).await;
        assert_eq!(r.status(), 200, "{headers:?}");
        assert_eq!(body(r).await, "moofmdat");
    }
    // A playlist may have changed within the second its Last-Modified names.
    let playlist = f.channel.get(&named("720p/index.m3u8")).expect("stored");
    let same_second = http_date(playlist.stored_at);
    let next_second = http_date(playlist.stored_at + Duration::from_secs(1));
    let ask = |since: String| {
        let o = f.origin.clone();
        async move {
            get_with(&o, Method::GET, "/live/demo/720p/index.m3u8", &[(header::IF_MODIFIED_SINCE, &since)])
                .await
                .status()
        }
    };
    assert_eq!(ask(same_second).await, 200);
    assert_eq!(ask(next_second).await, 304);
}

#[tokio::test]
async fn blocking_reloads_revalidate_against_the_playlist_they_wait_for() {
    let f = fixture();
    let v1 = get(&f.origin, Method::GET, "/live/demo/720p/index.m3u8").await;
    let etag = header(&v1, header::ETAG).to_owned();
    let path = "/live/demo/720p/index.m3u8?_HLS_msn=4";
    let r = get_with(&f.origin, Method::GET, path, &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_BLOCKING);
    let held = {
        let (o, etag) = (f.origin.clone(), etag.clone());
        tokio::spawn(async move {
            let path = "/live/demo/720p/index.m3u8?_HLS_msn=5&_HLS_part=2";
            get_with(&o, Method::GET, path, &[(header::IF_NONE_MATCH, &etag)]).await
        })
    };
    settle().await;
    assert_eq!(f.origin.waiting(), 1);
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    let r = held.await.expect("task");
    assert_eq!(r.status(), 200);
    assert_ne!(header(&r, header::ETAG), etag);
    assert_eq!(body(r).await, "playlist v2");
}

#[tokio::test]
async fn single_byte_ranges_are_206_sliced_from_the_chunks() {
    let f = fixture();
    put_chunked_segment(&f.channel);
    let full = get(&f.origin, Method::GET, "/live/demo/720p/2.m4s").await;
    let etag = header(&full, header::ETAG).to_owned();
    for (range, content_range, want) in [
        ("bytes=0-0", "bytes 0-0/12", "0"),
        ("bytes=0-3", "bytes 0-3/12", "0123"),
        ("bytes=3-9", "bytes 3-9/12", "3456789"),
        ("bytes=4-7", "bytes 4-7/12", "4567"),
        ("bytes=-5", "bytes 7-11/12", "789ab"),
        ("bytes=-100", "bytes 0-11/12", "0123456789ab"),
        ("bytes=10-", "bytes 10-11/12", "ab"),
        ("bytes=8-1000", "bytes 8-11/12", "89ab"),
        ("BYTES=1-2", "bytes 1-2/12", "12"),
        ("bytes=1-2, ", "bytes 1-2/12", "12"),
    ] {
        let r = get_with(&f.origin, Method::GET, "/live/demo/720p/2.m4s", &[(header::RANGE, range)]).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(header(&r, header::CONTENT_RANGE), content_range, "{range}");
        assert_eq!(header(&r, header::CONTENT_LENGTH), want.len().to_string(), "{range}");
        assert_eq!(header(&r, header::CONTENT_TYPE), "video/iso.segment");
        assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_IMMUTABLE);
        assert_eq!(header(&r, header::ETAG), etag);
        assert_eq!(header(&r, header::ACCEPT_RANGES), "bytes");
        assert_eq!(body(r).await, want, "{range}");
    }
}

#[tokio::test]
async fn a_range_shares_the_stored_buffers() {
    static SEGMENT: [u8; 12] = *b"0123456789ab";
    let chunks = vec![Bytes::from_static(&SEGMENT[..4]), Bytes::from_static(&SEGMENT[4..])];
    let f = fixture();
    f.channel.put(&named("720p/3.m4s"), chunks, Cacheability::Immutable);
    let r = get_with(&f.origin, Method::GET, "/live/demo/720p/3.m4s", &[(header::RANGE, "bytes=2-9")]).await;
    let mut body = r.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("infallible").into_data() else { continue };
        frames.push(data);
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].as_ptr(), SEGMENT[2..].as_ptr());
    assert_eq!(frames[1].as_ptr(), SEGMENT[4..].as_ptr());
    assert_eq!(frames.concat(), b"23456789");
}

#[tokio::test]
async fn ranges_that_cannot_be_served_as_asked() {
    let f = fixture();
    put_chunked_segment(&f.channel);
    let path = "/live/demo/720p/2.m4s";
    for range in ["bytes=12-", "bytes=12-20", "bytes=-0"] {
        let r = get_with(&f.origin, Method::GET, path, &[(header::RANGE, range)]).await;
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, header::CONTENT_RANGE), "bytes */12", "{range}");
        assert_eq!(header(&r, header::CACHE_CONTROL), CACHE_MISS);
    }
    // Several ranges, invalid ones and other units: the whole segment.
    for range in ["bytes=0-1,4-5", "bytes=0-1, 20-30", "bytes=5-2", "bytes=a-b", "bytes=1", "items=0-1", "0-1"] {
        let r = get_with(&f.origin, Method::GET, path, &[(header::RANGE, range)]).await;
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(header(&r, header::CONTENT_LENGTH), "12", "{range}");
        assert!(r.headers().get(header::CONTENT_RANGE).is_none());
        assert_eq!(body(r).await, "0123456789ab", "{range}");
    }
    // Playlists are always whole.
    let r = get_with(&f.origin, Method::GET, "/live/demo/720p/index.m3u8", &[(header::RANGE, "bytes=0-3")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "playlist v1");
}

#[tokio::test]
async fn if_range_gates_the_range_on_the_validator() {
    let f = fixture();
    put_chunked_segment(&f.channel);
    let path = "/live/demo/720p/2.m4s";
    let full = get(&f.origin, Method::GET, path).await;
    let etag = header(&full, header::ETAG).to_owned();
    let modified = header(&full, header::LAST_MODIFIED).to_owned();
    let ranged = |if_range: String| {
        let o = f.origin.clone();
        async move { get_with(&o, Method::GET, path, &[(header::RANGE, "bytes=4-7"), (header::IF_RANGE, &if_range)]).await }
    };
    for matching in [etag.clone(), modified] {
        let r = ranged(matching.clone()).await;
        assert_eq!(r.status(), 206, "{matching}");
        assert_eq!(body(r).await, "4567");
    }
    for other in ["\"other\"".to_owned(), format!("W/{etag}"), "Thu, 01 Jan 1970 00:00:00 GMT".to_owned()] {
        let r = ranged(other.clone()).await;
        assert_eq!(r.status(), 200, "{other}");
        assert_eq!(header(&r, header::CONTENT_LENGTH), "12");
        assert_eq!(body(r).await, "0123456789ab", "{other}");
    }
}

#[tokio::test]
async fn init_segments_and_held_parts_take_ranges() {
    let f = fixture();
    put(&f.channel, "720p/init-0.mp4", b"ftypmoov", Cacheability::Immutable);
    let r = get_with(&f.origin, Method::GET, "/live/demo/720p/init-0.mp4", &[(header::RANGE, "bytes=4-")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, header::CONTENT_TYPE), "video/mp4");
    assert_eq!(header(&r, header::CONTENT_RANGE), "bytes 4-7/8");
    assert_eq!(body(r).await, "moov");
    let held = {
        let o = f.origin.clone();
        tokio::spawn(async move {
            get_with(&o, Method::GET, "/live/demo/720p/5.2.m4s", &[(header::RANGE, "bytes=-3")]).await
        })
    };
    settle().await;
    assert_eq!(f.origin.waiting(), 1);
    put_part(&f.channel, 5, 2, b"part 5.2");
    publish(&f.channel, b"playlist v2", b"delta v2", Progress { msn: 5, parts: 3, ..Default::default() });
    let r = held.await.expect("task");
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, header::CONTENT_RANGE), "bytes 5-7/8");
    assert_eq!(body(r).await, "5.2");
}

#[tokio::test]
async fn head_has_the_headers_of_get() {
    let f = fixture();
    for path in ["/live/demo/720p/1.m4s", "/live/demo/720p/index.m3u8", "/live/demo/master.m3u8"] {
        let g = get(&f.origin, Method::GET, path).await;
        let h = get(&f.origin, Method::HEAD, path).await;
        assert_eq!(h.status(), 200);
        assert_eq!(h.headers(), g.headers(), "{path}");
        assert!(http_body::Body::is_end_stream(h.body()));
        let etag = header(&g, header::ETAG).to_owned();
        let h = get_with(&f.origin, Method::HEAD, path, &[(header::IF_NONE_MATCH, &etag)]).await;
        assert_eq!(h.status(), 304, "{path}");
    }
    // Range is defined for GET alone (RFC 9110 §14.2): HEAD describes the whole segment.
    let h = get_with(&f.origin, Method::HEAD, "/live/demo/720p/1.m4s", &[(header::RANGE, "bytes=0-1")]).await;
    assert_eq!(h.status(), 200);
    assert_eq!(header(&h, header::CONTENT_LENGTH), "8");
}

#[tokio::test]
async fn a_configured_channel_that_is_not_live_is_a_briefly_cached_404() {
    let f = fixture();
    f.store.channel("idle");
    let starting = f.store.channel("starting");
    put(&starting, "720p/init-0.mp4", b"ftypmoov", Cacheability::Immutable);
    starting.set_progress("720p", Progress { msn: 0, parts: 0, ..Default::default() });
    for path in [
        "/live/idle/master.m3u8",
        "/live/idle/720p/index.m3u8",
        "/live/idle/720p/index.m3u8?_HLS_msn=3",
        "/live/idle/720p/0.0.m4s",
        "/live/starting/master.m3u8",
        "/live/starting/720p/index.m3u8",
        "/live/starting/720p/9.m4s",
    ] {
        let r = get(&f.origin, Method::GET, path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(header(&r, header::CACHE_CONTROL), "public, max-age=2", "{path}");
        assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    }
    for path in ["/live/unknown/master.m3u8", "/live/unknown/720p/index.m3u8", "/live/demo/720p/9.m4s"] {
        let r = get(&f.origin, Method::GET, path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(header(&r, header::CACHE_CONTROL), "no-store", "{path}");
    }
}

#[tokio::test]
async fn cors_exposes_validators_and_ranges_and_preflight_allows_them() {
    let f = fixture();
    let expose = "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified";
    let segment = "/live/demo/720p/1.m4s";
    let etag = header(&get(&f.origin, Method::GET, segment).await, header::ETAG).to_owned();
    for r in [
        get(&f.origin, Method::GET, segment).await,
        get_with(&f.origin, Method::GET, segment, &[(header::RANGE, "bytes=0-1")]).await,
        get_with(&f.origin, Method::GET, segment, &[(header::IF_NONE_MATCH, &etag)]).await,
        get_with(&f.origin, Method::GET, segment, &[(header::RANGE, "bytes=99-")]).await,
        get(&f.origin, Method::GET, "/live/demo/nothing.m4s").await,
    ] {
        assert_eq!(header(&r, header::ACCESS_CONTROL_EXPOSE_HEADERS), expose, "{}", r.status());
        assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    }
    let r = get_with(
        &f.origin,
        Method::OPTIONS,
        segment,
        &[
            (header::ORIGIN, "https://player.example"),
            (header::ACCESS_CONTROL_REQUEST_METHOD, "GET"),
            (header::ACCESS_CONTROL_REQUEST_HEADERS, "range, if-none-match"),
        ],
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_METHODS), "GET, HEAD, OPTIONS");
    assert_eq!(header(&r, header::ACCESS_CONTROL_ALLOW_HEADERS), "*");
}

#[test]
fn targets_follow_the_config() {
    let hls = HlsConfig { segment_duration: 1.5, part_duration: 0.3, ..HlsConfig::default() };
    let t = Targets::from_config(&hls);
    assert_eq!(t.target_duration, Duration::from_secs(2));
    assert_eq!(t.hold_limit(), Duration::from_secs(6));
    assert_eq!(TARGETS.hold_limit(), HOLD);
    assert_eq!(t.advance_part_limit(), 10);
    assert_eq!(TARGETS.advance_part_limit(), 15);
    assert_eq!(Targets { part_target: 1.5, ..TARGETS }.advance_part_limit(), 3);
    assert_eq!(t.blocking_cache(), "public, max-age=2");
    assert_eq!(Targets { target_duration: Duration::from_secs(4), ..TARGETS }.blocking_cache(), "public, max-age=4");
}

#[tokio::test]
async fn the_thumbnail_is_a_jpeg_cached_for_its_refresh_interval() {
    let f = fixture();
    put(&f.channel, "thumb.jpg", b"\xFF\xD8\xFF\xE0 a jpeg", Cacheability::Refreshed(2));
    let r = get(&f.origin, Method::GET, "/live/demo/thumb.jpg").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, header::CONTENT_TYPE), "image/jpeg");
    assert_eq!(header(&r, header::CACHE_CONTROL), "public, max-age=2");
    assert_eq!(header(&r, header::ACCEPT_RANGES), "", "replaced under its name, so never ranged");
    let etag = header(&r, header::ETAG).to_owned();
    assert!(etag.starts_with('"'), "{etag}");
    let again = get_with(&f.origin, Method::GET, "/live/demo/thumb.jpg", &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, header::CACHE_CONTROL), "public, max-age=2");
    // A new thumbnail under the same name has a new validator.
    put(&f.channel, "thumb.jpg", b"\xFF\xD8 another", Cacheability::Refreshed(2));
    let r = get_with(&f.origin, Method::GET, "/live/demo/thumb.jpg", &[(header::IF_NONE_MATCH, &etag)]).await;
    assert_eq!(r.status(), 200);
    assert_ne!(header(&r, header::ETAG), etag);
    // Unknown channel: 404 no-store; a configured channel that is not live: briefly cached.
    let r = get(&f.origin, Method::GET, "/live/nope/thumb.jpg").await;
    assert_eq!((r.status(), header(&r, header::CACHE_CONTROL)), (StatusCode::NOT_FOUND, CACHE_MISS));
    f.store.channel("idle");
    let r = get(&f.origin, Method::GET, "/live/idle/thumb.jpg").await;
    assert_eq!((r.status(), header(&r, header::CACHE_CONTROL)), (StatusCode::NOT_FOUND, CACHE_NOT_LIVE));
}

#[test]
fn every_path_has_a_route_from_the_fixed_list() {
    let cases = [
        ("/live/demo/master.m3u8", None, "master"),
        ("/live/demo/720p/index.m3u8", None, "media_playlist"),
        ("/live/demo/720p/index.m3u8", Some("_HLS_msn=5&_HLS_part=1"), "blocking_playlist"),
        ("/live/demo/720p/index.m3u8", Some("_HLS_skip=YES"), "delta_playlist"),
        ("/live/demo/720p/index.m3u8", Some("_HLS_msn=5&_HLS_skip=v2"), "delta_playlist"),
        ("/live/demo/720p/index.m3u8", Some("_HLS_msn=x"), "media_playlist"),
        ("/live/demo/720p/init-17.mp4", None, "init"),
        ("/live/demo/thumb.jpg", None, "thumbnail"),
        ("/live/demo/720p/thumb.jpg", None, "other"),
        ("/live/demo/720p/17.m4s", None, "segment"),
        ("/live/demo/audio/17.ts", None, "segment"),
        ("/live/demo/720p/17.3.m4s", None, "part"),
        ("/live/demo/720p/17.3.ts", None, "part"),
        ("/live/demo/720p/x.m4s", None, "other"),
        ("/live/demo/720p/master.m3u8", None, "other"),
        ("/live/demo/index.m3u8", None, "other"),
        ("/preview/demo", None, "preview"),
        ("/preview/hls.min.js", None, "player_js"),
        ("/favicon.ico", None, "other"),
        ("/live/demo", None, "other"),
    ];
    for (path, query, route) in cases {
        assert_eq!(route_of(path, query).0, route, "{path}?{query:?}");
    }
    assert_eq!(route_of("/live/shop/720p/1.m4s", None).1, Some("shop"));
    assert_eq!(route_of("/preview/shop", None).1, None);
}

#[tokio::test]
async fn requests_are_counted_by_route_and_code_and_per_configured_channel() {
    let f = fixture();
    for path in ["/live/demo/master.m3u8", "/live/demo/720p/1.m4s", "/live/demo/720p/9.m4s", "/live/nope/master.m3u8"] {
        get(&f.origin, Method::GET, path).await;
    }
    let m = &f.origin.metrics;
    let count = |route: &str, code: &str| m.http_requests.with_label_values(&["origin", route, code]).get();
    assert_eq!((count("master", "200"), count("segment", "200"), count("segment", "404")), (1, 1, 1));
    assert_eq!(count("master", "404"), 1, "the unknown channel's request is counted by route");
    assert_eq!(m.http_request_duration.with_label_values(&["origin", "segment"]).get_sample_count(), 2);
    assert_eq!(m.origin_requests.with_label_values(&["demo", "master"]).get(), 1);
    assert_eq!(m.origin_requests.with_label_values(&["demo", "segment"]).get(), 2);
    let text = String::from_utf8(m.render()).expect("utf-8");
    assert!(!text.contains("channel=\"nope\""), "an unknown channel makes no series: {text}");
}
