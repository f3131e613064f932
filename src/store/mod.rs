//! What the origin serves: per channel, the objects of the current window (playlists, init
//! segments, media segments), kept in memory. Writers are the channel's packaging threads;
//! readers are HTTP handlers. Objects are immutable `Bytes` chunks, so a read is a few refcount
//! bumps under a short lock. Every object is stored under an [`ObjectName`], the one vocabulary
//! of names that packager and origin share.

mod names;

pub use names::{ObjectName, PLAYLIST_TYPE};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;
use xxhash_rust::xxh3::Xxh3;

use crate::sync::{lock, read, write};

/// How an object may be cached (the origin turns this into headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheability {
    /// Changes as the stream goes on (media and master playlists).
    Live,
    /// Never changes once published (init and media segments; their names are never reused).
    Immutable,
    /// Replaced under the same name about every this many seconds (the channel's thumbnail).
    Refreshed(u32),
}

/// One servable object.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes, in order; several chunks so that media payloads are never copied into one buffer.
    pub chunks: Arc<[Bytes]>,
    pub content_type: &'static str,
    pub cache: Cacheability,
    /// A hash of the bytes, taken once when the object is made; the origin's entity tag. Derived
    /// from the content rather than a counter so that it stays the same across restarts and
    /// across origins serving the same bytes, and never names different bytes after a restart.
    pub digest: u64,
    /// When the object was made: its `Last-Modified`.
    pub stored_at: SystemTime,
    /// The gzip-compressed bytes, made on the first request that accepts them and shared by
    /// every copy of the object; `None` inside when compressing does not make it smaller.
    gzipped: Arc<OnceLock<Option<Bytes>>>,
}

impl Object {
    pub fn new(chunks: Vec<Bytes>, content_type: &'static str, cache: Cacheability) -> Self {
        // XXH3 is a specified algorithm (unlike std's DefaultHasher, whose output may change
        // between Rust releases), so the same bytes give the same entity tag in every build and on
        // every origin. Hashing is one fast pass over bytes the packager just wrote, once per object.
        let mut hasher = Xxh3::new();
        for chunk in &chunks {
            hasher.update(chunk);
        }
        Self {
            chunks: chunks.into(),
            content_type,
            cache,
            digest: hasher.digest(),
            stored_at: SystemTime::now(),
            gzipped: Arc::default(),
        }
    }

    /// The object gzip-compressed (RFC 1952), if that is smaller. Made once per object: every
    /// viewer woken by the same playlist update shares one compression. The gzip header carries
    /// no time or name, so the same bytes compress to the same bytes on every origin.
    pub fn gzipped(&self) -> Option<Bytes> {
        self.gzipped
            .get_or_init(|| {
                use std::io::Write;
                let mut encoder = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::with_capacity(self.len() / 3), flate2::Compression::default());
                for chunk in self.chunks.iter() {
                    encoder.write_all(chunk).ok()?;
                }
                let out = encoder.finish().ok()?;
                (out.len() < self.len()).then(|| Bytes::from(out))
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

/// How far a rendition has got: what LL-HLS blocking requests wait on (RFC 8216bis §6.2.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Media sequence number of the segment being built (the next one to complete).
    pub msn: u64,
    /// Parts of that segment published so far.
    pub parts: u64,
    /// The playlist has `EXT-X-ENDLIST`: nothing more will come until a new publish.
    pub ended: bool,
    /// The playlist's `EXT-X-PART-INF:PART-TARGET`, microseconds: the longest part listed, so
    /// below `hls.part_duration` where parts of whole frames cannot reach it (24 fps). 0 where
    /// not known; the configured part duration applies then.
    pub part_target_us: u64,
}

/// One channel's objects, keyed by their name (the path below `/live/{channel}/`).
#[derive(Default)]
pub struct ChannelObjects {
    objects: Mutex<HashMap<String, Object>>,
    /// Per rendition name (the first path segment), its progress; receivers wake on each change.
    progress: Mutex<HashMap<String, watch::Sender<Progress>>>,
}

impl ChannelObjects {
    pub fn get(&self, name: &ObjectName<'_>) -> Option<Object> {
        self.lock().get(&name.to_string()).cloned()
    }

    /// Publishes (or replaces) an object; its content type follows from its name.
    pub fn put(&self, name: &ObjectName<'_>, chunks: Vec<Bytes>, cache: Cacheability) {
        self.lock().insert(name.to_string(), Object::new(chunks, name.content_type(), cache));
    }

    /// Removes objects that left the window.
    pub fn remove(&self, name: &ObjectName<'_>) {
        self.lock().remove(&name.to_string());
    }

    /// Announces a rendition's progress. Call after the objects it describes (parts, playlist)
    /// are in place, so that a woken waiter finds them.
    pub fn set_progress(&self, rendition: &str, progress: Progress) {
        let mut map = lock(&self.progress);
        match map.get(rendition) {
            Some(tx) => {
                tx.send_replace(progress);
            }
            None => {
                map.insert(rendition.to_owned(), watch::Sender::new(progress));
            }
        }
    }

    /// A rendition's progress and a receiver that wakes when it changes; `None` for a rendition
    /// that has not published anything.
    pub fn watch(&self, rendition: &str) -> Option<watch::Receiver<Progress>> {
        lock(&self.progress).get(rendition).map(watch::Sender::subscribe)
    }

    /// The names stored now, sorted (for diagnostics and tests).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Object>> {
        lock(&self.objects)
    }
}

/// All channels' objects.
#[derive(Default)]
pub struct Store {
    channels: RwLock<HashMap<String, Arc<ChannelObjects>>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel's objects, created empty on first use.
    pub fn channel(&self, name: &str) -> Arc<ChannelObjects> {
        if let Some(c) = self.read().get(name) {
            return c.clone();
        }
        let mut w = write(&self.channels);
        w.entry(name.to_owned()).or_default().clone()
    }

    /// The channel's objects if it exists.
    pub fn get_channel(&self, name: &str) -> Option<Arc<ChannelObjects>> {
        self.read().get(name).cloned()
    }

    /// Forgets a channel that is no longer configured; its URLs become unknown (404 no-store).
    pub fn remove_channel(&self, name: &str) {
        write(&self.channels).remove(name);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ChannelObjects>>> {
        read(&self.channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove() {
        let store = Store::new();
        assert!(store.get_channel("a").is_none());
        let ch = store.channel("a");
        let name = ObjectName::Segment { rendition: "r", msn: 7, container: crate::media::Container::Fmp4 };
        ch.put(&name, vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")], Cacheability::Immutable);
        let got = store.get_channel("a").and_then(|c| c.get(&name)).expect("present");
        assert_eq!((got.len(), got.content_type), (3, "video/iso.segment"));
        assert_eq!(ch.names(), ["r/7.m4s"]);
        ch.remove(&name);
        assert!(ch.get(&name).is_none());
    }

    #[test]
    fn gzip_is_made_once_is_deterministic_and_only_when_smaller() {
        use std::io::Read;
        let text: Vec<u8> = (0..200).flat_map(|i| format!("#EXTINF:2.000,\n{i}.m4s\n").into_bytes()).collect();
        let half = text.len() / 2;
        let make = || {
            Object::new(
                vec![Bytes::copy_from_slice(&text[..half]), Bytes::copy_from_slice(&text[half..])],
                "application/vnd.apple.mpegurl",
                Cacheability::Live,
            )
        };
        let a = make();
        let gz = a.gzipped().expect("a playlist compresses");
        assert!(gz.len() < text.len() / 4, "{} of {}", gz.len(), text.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).expect("valid gzip");
        assert_eq!(back, text);
        // Shared by clones, and the same bytes from another object with the same content.
        assert_eq!(a.clone().gzipped().expect("cached").as_ptr(), gz.as_ptr());
        assert_eq!(make().gzipped(), Some(gz));
        // Random-looking bytes do not shrink: no compressed form.
        let noise: Vec<u8> = (0u32..256).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        assert_eq!(Object::new(vec![Bytes::from(noise)], "video/mp4", Cacheability::Immutable).gzipped(), None);
    }

    #[test]
    fn the_digest_follows_the_bytes() {
        let make = |chunks: &[&'static [u8]]| {
            Object::new(chunks.iter().map(|c| Bytes::from_static(c)).collect(), "video/mp4", Cacheability::Immutable)
        };
        assert_eq!(make(&[b"moof", b"mdat"]).digest, make(&[b"moof", b"mdat"]).digest);
        assert_ne!(make(&[b"moof", b"mdat"]).digest, make(&[b"moof", b"mdaT"]).digest);
        assert_ne!(make(&[b"a"]).digest, make(&[b"a", b"a"]).digest);
        // Chunking does not matter, only the bytes; and the value is XXH3-64's, stable across builds
        // (XXH3_64bits of the empty input, from the xxHash specification's test vectors).
        assert_eq!(make(&[b"moof", b"mdat"]).digest, make(&[b"mo", b"ofmd", b"at"]).digest);
        assert_eq!(make(&[]).digest, 0x2d06_8005_38d3_94c2);
    }
}
