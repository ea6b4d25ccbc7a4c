//! Verified tokens, remembered until they expire, so a repeated token costs a
//! sharded map lookup instead of a signature check. Bounded; failures are
//! never cached (a flood of bad tokens cannot push good ones out).

use std::sync::Arc;

use dashmap::DashMap;

use super::verify::Claims;

struct Entry {
    claims: Arc<Claims>,
    /// Unix seconds after which the token is no longer valid (exp + leeway).
    valid_until: u64,
    /// The key-set generation that verified it.
    generation: u64,
}

pub struct TokenCache {
    entries: DashMap<Box<str>, Entry, ahash::RandomState>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            entries: DashMap::with_hasher(ahash::RandomState::new()),
            capacity,
        }
    }

    pub fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Claims>> {
        if self.capacity == 0 {
            return None;
        }
        {
            let entry = self.entries.get(token)?;
            if now <= entry.valid_until && entry.generation == generation {
                return Some(entry.claims.clone());
            }
        }
        self.entries.remove(token);
        None
    }

    pub fn insert(
        &self,
        token: &str,
        claims: Arc<Claims>,
        valid_until: u64,
        generation: u64,
        now: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries
                .retain(|_, e| now <= e.valid_until && e.generation == generation);
            let excess = (self.entries.len() + 1).saturating_sub(self.capacity);
            if excess > 0 {
                // Still full of live tokens: drop some arbitrary ones, plus slack so the
                // next inserts do not each pay for a sweep.
                let victims: Vec<Box<str>> = self
                    .entries
                    .iter()
                    .take(excess + self.capacity / 8)
                    .map(|e| e.key().clone())
                    .collect();
                for victim in victims {
                    self.entries.remove(&victim);
                }
            }
        }
        self.entries.insert(
            token.into(),
            Entry {
                claims,
                valid_until,
                generation,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
