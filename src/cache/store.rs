//! The cached answers: a map for lookups and an ordered index of last use,
//! so the least recently used goes first when `max_bytes` is reached.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Key, Snapshot};

struct Entry {
    snap: Arc<Snapshot>,
    /// Fresh until then; kept (for `stale_if_error`) until `keep`.
    expires: Instant,
    keep: Instant,
    size: u64,
    used: u64,
    /// The counter when stored: its place in `expiry`.
    born: u64,
}

#[derive(Default)]
pub(super) struct Store {
    map: HashMap<Key, Entry>,
    /// Last use (a counter) -> key.
    order: BTreeMap<u64, Key>,
    /// End of keeping -> keys, so expired entries are purged, not only pushed
    /// out by the LRU bound. The counter makes equal instants distinct.
    expiry: BTreeMap<(Instant, u64), Key>,
    tick: u64,
    bytes: u64,
}

impl Store {
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn get(&mut self, key: &Key, now: Instant) -> Option<(Arc<Snapshot>, Duration)> {
        self.lookup(key, now, true)
    }

    /// An entry past its freshness but still kept: how long ago it expired.
    pub(super) fn get_stale(
        &mut self,
        key: &Key,
        now: Instant,
    ) -> Option<(Arc<Snapshot>, Duration)> {
        self.lookup(key, now, false)
    }

    /// A fresh entry and the time it has left, or (`fresh` false) a stale
    /// one and how long ago it expired; either counts as a use.
    fn lookup(
        &mut self,
        key: &Key,
        now: Instant,
        fresh: bool,
    ) -> Option<(Arc<Snapshot>, Duration)> {
        self.purge(now);
        let e = self.map.get_mut(key)?;
        if (e.expires > now) != fresh {
            return None;
        }
        let age = if fresh {
            e.expires - now
        } else {
            now - e.expires
        };
        self.tick += 1;
        let previous = std::mem::replace(&mut e.used, self.tick);
        let snap = e.snap.clone();
        self.order.remove(&previous);
        self.order.insert(self.tick, key.clone());
        Some((snap, age))
    }

    pub(super) fn put(
        &mut self,
        key: Key,
        snap: Arc<Snapshot>,
        expires: Instant,
        keep: Instant,
        max: u64,
    ) -> bool {
        let size = snap.size() + key.size();
        if size > max {
            return false;
        }
        self.remove(&key);
        self.shrink(max - size);
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.expiry.insert((keep, self.tick), key.clone());
        self.bytes += size;
        self.map.insert(
            key,
            Entry {
                snap,
                expires,
                keep,
                size,
                used: self.tick,
                born: self.tick,
            },
        );
        true
    }

    /// Drops the least recently used until at most `max` bytes are held.
    pub(super) fn shrink(&mut self, max: u64) {
        while self.bytes > max {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&key) {
                self.expiry.remove(&(e.keep, e.born));
                self.bytes -= e.size;
            }
        }
    }

    pub(super) fn evict(&mut self, mut which: impl FnMut(&Key) -> bool) {
        let gone: Vec<Key> = self.map.keys().filter(|k| which(k)).cloned().collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Drops every entry expired at `now`.
    pub(super) fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.remove(&key);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.used);
            self.expiry.remove(&(e.keep, e.born));
            self.bytes -= e.size;
        }
    }
}
