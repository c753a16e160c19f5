//! A crate built on freeq, in miniature: a cache behind [`freeq::Mutex`]
//! that counts its writes in an atomic. Like any crate that model-checks
//! itself, it takes its atomics from loom under `--cfg loom`; freeq's locks
//! switch to loom on the same flag, so the cache needs nothing else.
#![deny(missing_docs)]

use std::collections::HashMap;

#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// A map whose replaced values are freed after the lock is released.
pub struct Cache<V> {
    map: freeq::Mutex<HashMap<u64, V>>,
    writes: AtomicUsize,
}

impl<V: Send + 'static> Cache<V> {
    /// An empty cache.
    pub fn new() -> Self {
        Cache {
            map: freeq::Mutex::new(HashMap::new()),
            writes: AtomicUsize::new(0),
        }
    }

    /// Stores `value` under `key` and returns the cache's version: the
    /// number of writes so far, this one included. A value it replaces is
    /// freed after the unlock.
    pub fn insert(&self, key: u64, value: V) -> usize {
        let mut map = self.map.lock().unwrap();
        let version = self.writes.fetch_add(1, SeqCst) + 1;
        if let Some(old) = map.insert(key, value) {
            freeq::defer(old);
        }
        version
    }

    /// The same, with a bug: the version is read under one lock and the
    /// write made under another, so two writers can get the same version.
    pub fn insert_racy(&self, key: u64, value: V) -> usize {
        let version = {
            let _map = self.map.lock().unwrap();
            self.writes.load(SeqCst) + 1
        };
        let mut map = self.map.lock().unwrap();
        self.writes.store(version, SeqCst);
        if let Some(old) = map.insert(key, value) {
            freeq::defer(old);
        }
        version
    }

    /// A copy of the value under `key`.
    pub fn get(&self, key: u64) -> Option<V>
    where
        V: Clone,
    {
        self.map.lock().unwrap().get(&key).cloned()
    }

    /// How many writes the cache has seen.
    pub fn writes(&self) -> usize {
        self.writes.load(SeqCst)
    }
}

impl<V: Send + 'static> Default for Cache<V> {
    fn default() -> Self {
        Cache::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Cache;

    #[test]
    fn versions_count_writes() {
        let cache = Cache::new();
        assert_eq!(cache.insert(1, String::from("a")), 1);
        assert_eq!(cache.insert(1, String::from("b")), 2);
        assert_eq!(cache.insert_racy(2, String::from("c")), 3);
        assert_eq!(cache.get(1).as_deref(), Some("b"));
        assert_eq!(cache.writes(), 3);
        assert_eq!(freeq::pending(), 0);
    }
}
