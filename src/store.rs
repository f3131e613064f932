//! What the origin serves: per channel, the objects of the current window (playlists, init
//! segments, media segments), kept in memory. Writers are the channel's packaging threads;
//! readers are HTTP handlers. Objects are immutable `Bytes` chunks, so a read is a few refcount
//! bumps under a short lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

/// How an object may be cached (the origin turns this into headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacheability {
    /// Changes as the stream goes on (media and master playlists).
    Live,
    /// Never changes once published (init and media segments; their names are never reused).
    Immutable,
}

/// One servable object.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes, in order; several chunks so that media payloads are never copied into one buffer.
    pub chunks: Arc<[Bytes]>,
    pub content_type: &'static str,
    pub cache: Cacheability,
}

impl Object {
    pub fn new(chunks: Vec<Bytes>, content_type: &'static str, cache: Cacheability) -> Self {
        Self { chunks: chunks.into(), content_type, cache }
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.iter().all(Bytes::is_empty)
    }
}

/// One channel's objects, keyed by their path below `/live/{channel}/`.
#[derive(Default)]
pub struct ChannelObjects {
    objects: Mutex<HashMap<String, Object>>,
}

impl ChannelObjects {
    pub fn get(&self, name: &str) -> Option<Object> {
        self.lock().get(name).cloned()
    }

    /// Publishes (or replaces) an object.
    pub fn put(&self, name: impl Into<String>, object: Object) {
        self.lock().insert(name.into(), object);
    }

    /// Removes objects that left the window.
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Object>> {
        // A writer that panicked mid-insert leaves the map consistent (single inserts), so the
        // poison flag carries no meaning here.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut w = self.channels.write().unwrap_or_else(|p| p.into_inner());
        w.entry(name.to_owned()).or_default().clone()
    }

    /// The channel's objects if it exists.
    pub fn get_channel(&self, name: &str) -> Option<Arc<ChannelObjects>> {
        self.read().get(name).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<ChannelObjects>>> {
        self.channels.read().unwrap_or_else(|p| p.into_inner())
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
        ch.put(
            "x.m4s",
            Object::new(
                vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")],
                "video/iso.segment",
                Cacheability::Immutable,
            ),
        );
        let got = store.get_channel("a").and_then(|c| c.get("x.m4s")).expect("present");
        assert_eq!(got.len(), 3);
        ch.remove("x.m4s");
        assert!(ch.get("x.m4s").is_none());
    }
}
