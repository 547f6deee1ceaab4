//! A bounded, expiring, sharded cache of verified tokens.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use crate::Synthetic;

const SHARDS: usize = 16;

type Shard = HashMap<std::sync::Arc<str>, Synthetic, foldhash::fast::RandomState>;

#[derive(Debug)]
pub(crate) struct VerifiedCache {
    shards: [Mutex<Shard>; SHARDS],
    per_shard: usize,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        VerifiedCache {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, token: &str) -> MutexGuard<'_, Shard> {
        // The last characters of a valid token are HMAC output, so they spread tokens evenly
        // without hashing twice. A forged token only picks which shard it misses in.
        let i = token.as_bytes().last().map_or(0, |b| usize::from(*b)) % SHARDS;
        // A panic while holding the lock cannot leave a HashMap half-updated in a way that
        // matters here: the worst case is a missing entry, i.e. one more HMAC.
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached verification of `token`, if any and still valid at `cutoff` (now minus skew).
    pub(crate) fn get(&self, token: &str, cutoff: u64) -> Option<Synthetic> {
        let mut shard = self.shard(token);
        let hit = shard.get(token)?;
        if hit.expires_at() >= cutoff {
            return Some(hit.clone());
        }
        shard.remove(token);
        None
    }

    pub(crate) fn insert(&self, synthetic: Synthetic, cutoff: u64) {
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

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}
