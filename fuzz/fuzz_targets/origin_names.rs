//! What the origin makes of a request path and query: the route label, and the stored object a
//! path names. Nothing panics; a name that parses renders back to the same path, and the route
//! is one of the fixed list.
#![no_main]

use ladderd::origin::route_of;
use ladderd::store::ObjectName;
use libfuzzer_sys::fuzz_target;

const ROUTES: [&str; 11] = [
    "master",
    "thumbnail",
    "media_playlist",
    "blocking_playlist",
    "delta_playlist",
    "init",
    "part",
    "segment",
    "preview",
    "player_js",
    "other",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    let (route, channel) = route_of(path, query);
    assert!(ROUTES.contains(&route), "{route}");
    if let Some(channel) = channel {
        assert!(!channel.contains('/'), "{channel}");
    }
    for key in [path, path.trim_start_matches('/')] {
        if let Some(name) = ObjectName::parse(key) {
            assert_eq!(name.to_string(), key, "{name:?}");
        }
        if let Some(name) = ObjectName::from_key(key) {
            assert_eq!(name.to_string(), key, "{name:?}");
        }
    }
});
