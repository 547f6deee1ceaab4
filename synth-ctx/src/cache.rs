//! A bounded, expiring, sharded cache of verified tokens, with a small per-thread front.
//!
//! A load test sends one token per run, so nearly every lookup is for the same few tokens. A
//! shared lock would make every core queue on one shard; instead each thread first checks the
//! few tokens it verified last (no shared writes at all), then the shard.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::Synthetic;

const SHARDS: usize = 16;
const RECENT_PER_THREAD: usize = 4;

/// Caches are told apart by id, never by address: a new cache at a freed cache's address must
/// not see the old one's entries (its verifier may hold other keys).
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static RECENT: RefCell<[Option<(u64, Synthetic)>; RECENT_PER_THREAD]> = const { RefCell::new([const { None }; RECENT_PER_THREAD]) };
}

type Shard = HashMap<Arc<str>, Synthetic, foldhash::fast::RandomState>;

#[derive(Debug)]
pub(crate) struct VerifiedCache {
    id: u64,
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
    capacity: usize,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        VerifiedCache {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            capacity,
        }
    }

    /// The capacity it was made with.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn shard(&self, token: &str) -> MutexGuard<'_, Shard> {
        // The last characters of a valid token are HMAC output, so they spread tokens evenly
        // without hashing twice. A forged token only picks which shard it misses in.
        let i = token.as_bytes().last().map_or(0, |b| usize::from(*b)) % SHARDS;
        // A panic while holding the lock cannot leave a HashMap half-updated in a way that
        // matters here: the worst case is a missing entry, i.e. one more HMAC.
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn recent(&self, token: &str, cutoff: u64) -> Option<Synthetic> {
        RECENT
            .try_with(|recent| {
                recent.borrow().iter().flatten().find_map(|(id, s)| {
                    (*id == self.id && s.token() == token && s.expires_at() >= cutoff).then(|| s.clone())
                })
            })
            .ok()
            .flatten()
    }

    fn remember(&self, synthetic: &Synthetic) {
        let _ = RECENT.try_with(|recent| {
            let mut recent = recent.borrow_mut();
            // Most recent first: move this token to the front, or push the oldest out.
            let same = |e: &Option<(u64, Synthetic)>| {
                e.as_ref().is_some_and(|(id, s)| *id == self.id && s.token() == synthetic.token())
            };
            let pos = recent.iter().position(same).unwrap_or(RECENT_PER_THREAD - 1);
            recent[..=pos].rotate_right(1);
            recent[0] = Some((self.id, synthetic.unshared()));
        });
    }

    /// The cached verification of `token`, if any and still valid at `cutoff` (now minus skew).
    pub(crate) fn get(&self, token: &str, cutoff: u64) -> Option<Synthetic> {
        if let Some(hit) = self.recent(token, cutoff) {
            return Some(hit);
        }
        let shared = {
            let mut shard = self.shard(token);
            let hit = shard.get(token)?;
            if hit.expires_at() < cutoff {
                shard.remove(token);
                return None;
            }
            hit.clone()
        };
        self.remember(&shared);
        // Hand out this thread's own copy from now on.
        Some(self.recent(token, cutoff).unwrap_or(shared))
    }

    pub(crate) fn insert(&self, synthetic: Synthetic, cutoff: u64) {
        self.remember(&synthetic);
        let mut shard = self.shard(synthetic.token());
        if shard.len() >= self.per_shard {
            shard.retain(|_, s| s.expires_at() >= cutoff);
        }
        if shard.len() >= self.per_shard {
            // Still full of live tokens: drop an arbitrary one. It is re-verified if seen again.
            if let Some(victim) = shard.keys().next().cloned() {
                shard.remove(&victim);
            }
        }
        shard.insert(synthetic.token_arc(), synthetic);
    }

    /// Entries in the shared part (the per-thread front holds a few copies of them).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyId, Origin, RunId};

    fn synthetic(run: &str, expires_at: u64) -> Synthetic {
        let token = format!("v1.load.{run}.{expires_at}.k1.{}", "A".repeat(43));
        Synthetic::new(Origin::Load, RunId::new(run).unwrap(), expires_at, KeyId::new("k1").unwrap(), &token)
    }

    #[test]
    fn thread_front_is_per_cache_and_respects_expiry() {
        let a = VerifiedCache::new(64);
        let b = VerifiedCache::new(64);
        let s = synthetic("r1", 100);
        a.insert(s.clone(), 50);
        assert_eq!(a.get(s.token(), 100), Some(s.clone()));
        assert_eq!(b.get(s.token(), 50), None, "another cache never sees a's entries");
        assert_eq!(a.get(s.token(), 101), None, "expired in the front and in the shard");
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn thread_front_keeps_the_latest_few() {
        let c = VerifiedCache::new(1024);
        let tokens: Vec<Synthetic> = (0..6).map(|i| synthetic(&format!("r{i}"), 100)).collect();
        for s in &tokens {
            c.insert(s.clone(), 0);
        }
        for s in &tokens {
            assert_eq!(c.get(s.token(), 0).as_ref(), Some(s));
        }
    }
}
