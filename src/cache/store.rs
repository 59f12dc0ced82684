//! The cached answers: a map from key to the variants stored for it (one
//! per set of values of the request headers its `Vary` names, RFC 9111
//! §4.1), an ordered index of last use, so the least recently used goes
//! first when `max_bytes` is reached, and one of when each stops being kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::freshness::Freshness;
use super::{Key, Snapshot};

/// A stored answer as a lookup finds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub snap: Arc<Snapshot>,
    pub freshness: Freshness,
}

struct Entry {
    stored: Stored,
    /// The request's values of the headers `Variants::names` lists.
    values: Vec<Option<HeaderValue>>,
    /// Dropped then, fresh or not.
    keep: Instant,
    size: u64,
    used: u64,
    /// Unique: its place in `expiry`, and which variant of its key it is.
    id: u64,
}

/// What one key holds: the headers its answers vary by beyond the key's own
/// (the newest answer's `Vary` decides), and a variant per set of values.
#[derive(Default)]
struct Variants {
    names: Vec<HeaderName>,
    entries: Vec<Entry>,
}

/// Variants kept per key (see `put`).
const MAX_VARIANTS: usize = 16;

#[derive(Default)]
pub(super) struct Store {
    map: HashMap<Key, Variants>,
    /// Last use (a counter) -> key and id.
    order: BTreeMap<u64, (Key, u64)>,
    /// End of keeping -> key, so expired entries are purged, not only
    /// pushed out by the LRU bound. The id makes equal instants distinct.
    expiry: BTreeMap<(Instant, u64), Key>,
    tick: u64,
    bytes: u64,
}

/// A request's values of `names`, each header's lines as one list with the
/// spaces around its commas dropped (so `a, b` and `a,b` match).
pub(super) fn values(names: &[HeaderName], req: &HeaderMap) -> Vec<Option<HeaderValue>> {
    names
        .iter()
        .map(|n| {
            let mut all = req.get_all(n).iter().peekable();
            all.peek()?;
            let mut joined = Vec::new();
            for v in all {
                for part in v.as_bytes().split(|&b| b == b',') {
                    if !joined.is_empty() {
                        joined.push(b',');
                    }
                    joined.extend_from_slice(part.trim_ascii());
                }
            }
            HeaderValue::from_bytes(&joined).ok()
        })
        .collect()
}

impl Store {
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The variant of `key` that `req` selects, still kept at `now`; a use.
    pub(super) fn find(&mut self, key: &Key, req: &HeaderMap, now: Instant) -> Option<Stored> {
        self.purge(now);
        let v = self.map.get_mut(key)?;
        let e = if v.names.is_empty() {
            v.entries.first_mut()?
        } else {
            let want = values(&v.names, req);
            v.entries.iter_mut().find(|e| e.values == want)?
        };
        self.tick += 1;
        let previous = std::mem::replace(&mut e.used, self.tick);
        let stored = e.stored.clone();
        let id = e.id;
        self.order.remove(&previous);
        self.order.insert(self.tick, (key.clone(), id));
        Some(stored)
    }

    /// Stores a variant of `key`: it replaces the one with the same values,
    /// and every one when `names` changed.
    pub(super) fn put(
        &mut self,
        key: Key,
        names: Vec<HeaderName>,
        values: Vec<Option<HeaderValue>>,
        stored: Stored,
        keep: Instant,
        max: u64,
    ) -> bool {
        let extra: usize = values.iter().flatten().map(HeaderValue::len).sum();
        let size = stored.snap.size() + key.size() + extra as u64;
        if size > max {
            return false;
        }
        let mut gone: Vec<u64> = self.map.get(&key).map_or(Vec::new(), |v| {
            v.entries
                .iter()
                .filter(|e| v.names != names || e.values == values)
                .map(|e| e.id)
                .collect()
        });
        // A caller churning a header the answer varies by would otherwise
        // grow one key's variants without end, and every lookup of that key
        // scans them under the cache's lock: the least recently used goes.
        if let Some(v) = self.map.get(&key) {
            if v.entries.len() - gone.len() >= MAX_VARIANTS {
                let oldest = v
                    .entries
                    .iter()
                    .filter(|e| !gone.contains(&e.id))
                    .min_by_key(|e| e.used);
                gone.extend(oldest.map(|e| e.id));
            }
        }
        for id in gone {
            self.remove(&key, id);
        }
        self.shrink(max - size);
        self.tick += 1;
        let id = self.tick;
        self.order.insert(id, (key.clone(), id));
        self.expiry.insert((keep, id), key.clone());
        self.bytes += size;
        let v = self.map.entry(key).or_default();
        v.names = names;
        v.entries.push(Entry {
            stored,
            values,
            keep,
            size,
            used: id,
            id,
        });
        true
    }

    /// Drops the least recently used until at most `max` bytes are held.
    pub(super) fn shrink(&mut self, max: u64) {
        while self.bytes > max {
            let Some((_, (key, id))) = self.order.pop_first() else {
                break;
            };
            self.remove(&key, id);
        }
    }

    pub(super) fn evict(&mut self, mut which: impl FnMut(&Key) -> bool) {
        let gone: Vec<(Key, u64)> = self
            .map
            .iter()
            .filter(|(k, _)| which(k))
            .flat_map(|(k, v)| v.entries.iter().map(|e| (k.clone(), e.id)))
            .collect();
        for (k, id) in gone {
            self.remove(&k, id);
        }
    }

    /// Drops every entry no longer kept at `now`.
    pub(super) fn purge(&mut self, now: Instant) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.key().1;
            let key = entry.remove();
            self.remove(&key, id);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.values().map(|v| v.entries.len()).sum()
    }

    fn remove(&mut self, key: &Key, id: u64) {
        let Some(v) = self.map.get_mut(key) else {
            return;
        };
        let Some(i) = v.entries.iter().position(|e| e.id == id) else {
            return;
        };
        let e = v.entries.swap_remove(i);
        if v.entries.is_empty() {
            self.map.remove(key);
        }
        self.order.remove(&e.used);
        self.expiry.remove(&(e.keep, e.id));
        self.bytes -= e.size;
    }
}
