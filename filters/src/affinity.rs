//! Sequence affinity for Triton's stateful models: every request of a sequence
//! must reach the instance holding its state, so the endpoint that served
//! `sequence_start` is remembered until `sequence_end` or until the sequence
//! has been idle too long (Triton drops idle sequences too, and clients that
//! vanish never send `sequence_end`).

use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::prehashed::PrehashedKey;
use crate::split::{mix, sticky_hash};

/// A Triton sequence id: the protocol allows an unsigned integer or a string,
/// and the two never name the same sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SequenceId {
    /// An integer id, as in `"sequence_id": 42`.
    Int(u64),
    /// A string id, as in `"sequence_id": "abc"`.
    Str(Box<str>),
}

impl SequenceId {
    /// A hash of this sequence of `model` that every process and release computes
    /// alike ([`sticky_hash`]), for choices a fleet of proxies must agree on.
    pub fn stable_hash(&self, model: &str) -> u64 {
        match self {
            SequenceId::Int(id) => sticky_hash(&[model.as_bytes(), &id.to_le_bytes()]),
            SequenceId::Str(id) => sticky_hash(&[model.as_bytes(), id.as_bytes()]),
        }
    }
}

/// Rendezvous (highest random weight) hashing: the candidate, given as
/// `(index, stable hash of its name, weight)`, that sequence `key` (a
/// [`SequenceId::stable_hash`]) goes to. Every proxy given the same candidates
/// picks the same one with no coordination; a candidate leaving moves only the
/// keys it had (to the others, in proportion), and one joining takes its
/// weight's share from every other. Each candidate scores `weight / -ln(u)` for
/// a uniform `u` drawn from the key and its name (weighted rendezvous hashing),
/// which with equal weights orders candidates as `u` does. `None`: no candidate.
pub fn rendezvous(
    key: u64,
    candidates: impl IntoIterator<Item = (usize, u64, u32)>,
) -> Option<usize> {
    candidates
        .into_iter()
        .filter(|&(_, _, weight)| weight > 0)
        .map(|(index, name, weight)| {
            // The top 53 bits, offset by half a step, make a fraction in (0, 1).
            let u = ((mix(key ^ mix(name)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (index, f64::from(weight) / -u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(index, _)| index)
}

impl std::fmt::Display for SequenceId {
    /// As the client wrote it: `42`, or `"abc"` quoted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Int(id) => write!(f, "{id}"),
            SequenceId::Str(id) => write!(f, "{id:?}"),
        }
    }
}

/// Returned by [`SequenceTable::bind`] when no room is left for a new sequence
/// even after forgetting the idle ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

impl fmt::Display for TableFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sequence table is full")
    }
}

impl std::error::Error for TableFull {}

/// Where one sequence goes. The model and id are kept to tell the sequence
/// apart from another whose key hash collides.
#[derive(Debug)]
struct Binding {
    model: Box<str>,
    id: SequenceId,
    endpoint: usize,
    last_used_ns: AtomicU64,
}

impl Binding {
    fn is(&self, model: &str, id: &SequenceId) -> bool {
        &*self.model == model && self.id == *id
    }

    fn is_idle(&self, now_ns: u64, idle_ttl_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_used_ns.load(Ordering::Acquire)) > idle_ttl_ns
    }

    /// `fetch_max` so that a caller with a slightly older clock never makes
    /// the sequence look idler than it is.
    fn touch(&self, now_ns: u64) {
        self.last_used_ns.fetch_max(now_ns, Ordering::AcqRel);
    }
}

/// Which endpoint each live sequence is bound to, per model.
///
/// Sharded (a [`DashMap`] keyed by a randomly seeded 64-bit hash of model and
/// id), so lookups neither allocate nor contend on one lock. Two sequences
/// whose hashes collide (odds about `n² / 2⁶⁵` for `n` live sequences) cannot
/// both be bound: the later `bind` replaces the earlier one, whose lookups
/// then find nothing rather than the wrong endpoint.
#[derive(Debug)]
pub struct SequenceTable {
    bindings: DashMap<u64, Binding, BuildHasherDefault<PrehashedKey>>,
    hasher: ahash::RandomState,
    idle_ttl_ns: u64,
    capacity: usize,
    /// Kept beside the map because `DashMap::len` visits every shard.
    entries: AtomicUsize,
}

impl SequenceTable {
    /// A table forgetting sequences idle longer than `idle_ttl`, holding at
    /// most `capacity` of them (zero refuses every binding).
    pub fn new(idle_ttl: Duration, capacity: usize) -> Self {
        SequenceTable {
            bindings: DashMap::default(),
            hasher: ahash::RandomState::new(),
            idle_ttl_ns: u64::try_from(idle_ttl.as_nanos()).unwrap_or(u64::MAX),
            capacity,
            entries: AtomicUsize::new(0),
        }
    }

    /// A table as [`new`](Self::new) makes it, holding `previous`'s bindings
    /// whose endpoint `moved` maps to an endpoint of the new pool (a config
    /// reload keeps sequences on the endpoints that remain, up to `capacity`).
    pub fn carried_over(
        idle_ttl: Duration,
        capacity: usize,
        previous: &SequenceTable,
        moved: impl Fn(usize) -> Option<usize>,
    ) -> Self {
        let table = SequenceTable {
            hasher: previous.hasher.clone(),
            ..SequenceTable::new(idle_ttl, capacity)
        };
        for entry in previous.bindings.iter() {
            let Some(endpoint) = moved(entry.endpoint) else {
                continue;
            };
            if !table.reserve() {
                break;
            }
            let binding = Binding {
                model: entry.model.clone(),
                id: entry.id.clone(),
                endpoint,
                last_used_ns: AtomicU64::new(entry.last_used_ns.load(Ordering::Acquire)),
            };
            table.bindings.insert(*entry.key(), binding);
        }
        table
    }

    /// The endpoint bound to (`model`, `id`), refreshing its idle timer; `None`
    /// if unbound or idle longer than the TTL.
    pub fn lookup(&self, model: &str, id: &SequenceId, now_ns: u64) -> Option<usize> {
        let key = self.key(model, id);
        {
            let binding = self.bindings.get(&key)?;
            if !binding.is(model, id) {
                return None;
            }
            if !binding.is_idle(now_ns, self.idle_ttl_ns) {
                binding.touch(now_ns);
                return Some(binding.endpoint);
            }
        }
        // Removing needs the shard's write lock, so the read guard above must
        // be gone first; the condition is checked again in case the sequence
        // was bound anew meanwhile.
        self.remove_if(key, |binding| {
            binding.is(model, id) && binding.is_idle(now_ns, self.idle_ttl_ns)
        });
        None
    }

    /// Binds (`model`, `id`) to `endpoint` at `sequence_start`, replacing any
    /// earlier binding. When the table is full, idle sequences are dropped
    /// first; `TableFull` if that leaves no room.
    pub fn bind(
        &self,
        model: &str,
        id: &SequenceId,
        endpoint: usize,
        now_ns: u64,
    ) -> Result<(), TableFull> {
        let key = self.key(model, id);
        let binding = Binding {
            model: model.into(),
            id: id.clone(),
            endpoint,
            last_used_ns: AtomicU64::new(now_ns),
        };
        match self.bindings.entry(key) {
            Entry::Occupied(mut occupied) => {
                occupied.insert(binding);
                return Ok(());
            }
            Entry::Vacant(vacant) => {
                if self.reserve() {
                    vacant.insert(binding);
                    return Ok(());
                }
            }
        }
        // Sweeping takes every shard's lock in turn, so the entry above must be
        // released before it.
        self.sweep(now_ns);
        if !self.reserve() {
            return Err(TableFull);
        }
        match self.bindings.entry(key) {
            Entry::Occupied(mut occupied) => {
                // Bound concurrently meanwhile: the room reserved is not needed.
                self.entries.fetch_sub(1, Ordering::AcqRel);
                occupied.insert(binding);
            }
            Entry::Vacant(vacant) => {
                vacant.insert(binding);
            }
        }
        Ok(())
    }

    /// Forgets (`model`, `id`) at `sequence_end`.
    pub fn release(&self, model: &str, id: &SequenceId) {
        self.remove_if(self.key(model, id), |binding| binding.is(model, id));
    }

    /// Drops every sequence idle longer than the TTL at `now_ns`; returns how many.
    pub fn sweep(&self, now_ns: u64) -> usize {
        let mut dropped = 0;
        self.bindings.retain(|_, binding| {
            let idle = binding.is_idle(now_ns, self.idle_ttl_ns);
            dropped += usize::from(idle);
            !idle
        });
        self.entries.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    /// Sequences bound to each of `endpoints` endpoints, idle ones not yet swept
    /// included; for reports, as it visits every shard.
    pub fn per_endpoint(&self, endpoints: usize) -> Vec<usize> {
        let mut counts = vec![0; endpoints];
        for binding in self.bindings.iter() {
            if let Some(count) = counts.get_mut(binding.endpoint) {
                *count += 1;
            }
        }
        counts
    }

    /// Sequences currently bound, idle ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    /// Whether no sequence is bound.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, model: &str, id: &SequenceId) -> u64 {
        self.hasher.hash_one((model, id))
    }

    /// Counts one more binding if there is room; done before inserting so
    /// that concurrent binds cannot overshoot the capacity together.
    fn reserve(&self) -> bool {
        self.entries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |entries| {
                (entries < self.capacity).then_some(entries + 1)
            })
            .is_ok()
    }

    fn remove_if(&self, key: u64, condition: impl FnOnce(&Binding) -> bool) {
        if self
            .bindings
            .remove_if(&key, |_, binding| condition(binding))
            .is_some()
        {
            self.entries.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const TTL: Duration = Duration::from_secs(30);

    fn int(id: u64) -> SequenceId {
        SequenceId::Int(id)
    }

    fn string(id: &str) -> SequenceId {
        SequenceId::Str(id.into())
    }

    #[test]
    fn a_carried_over_table_keeps_the_sequences_whose_endpoint_remains() {
        let old = SequenceTable::new(TTL, 10);
        old.bind("m", &int(1), 0, 0).unwrap();
        old.bind("m", &int(2), 1, 0).unwrap();
        let new = SequenceTable::carried_over(TTL, 10, &old, |e| (e == 1).then_some(0));
        assert_eq!(new.lookup("m", &int(1), SECOND), None);
        assert_eq!(new.lookup("m", &int(2), SECOND), Some(0));
        assert_eq!(new.len(), 1);
    }

    /// Endpoint names hashed as a pool hashes them, with their weights.
    fn endpoints(names: &[&str], weights: &[u32]) -> Vec<(usize, u64, u32)> {
        names
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (name, &weight))| (i, sticky_hash(&[name.as_bytes()]), weight))
            .collect()
    }

    /// The endpoint name each of 10000 sequences of model "m" goes to.
    fn placements(candidates: &[(usize, u64, u32)], names: &[&str]) -> Vec<String> {
        (0..10_000u64)
            .map(|id| {
                let key = int(id).stable_hash("m");
                let i = rendezvous(key, candidates.iter().copied()).expect("a candidate");
                names[i].to_owned()
            })
            .collect()
    }

    const FIVE: [&str; 5] = [
        "10.0.0.1:8000",
        "10.0.0.2:8000",
        "10.0.0.3:8000",
        "10.0.0.4:8000",
        "10.0.0.5:8000",
    ];

    #[test]
    fn rendezvous_is_stable_and_spreads_sequences_evenly() {
        let candidates = endpoints(&FIVE, &[1; 5]);
        let first = placements(&candidates, &FIVE);
        assert_eq!(
            first,
            placements(&candidates, &FIVE),
            "same inputs, same picks"
        );
        // The order endpoints are listed in does not matter: only their names.
        let reversed: Vec<_> = candidates.iter().rev().copied().collect();
        assert_eq!(first, placements(&reversed, &FIVE));
        for name in FIVE {
            let share = first.iter().filter(|p| *p == name).count();
            assert!((1700..2300).contains(&share), "{name}: {share} of 10000");
        }
        // Fixed across processes and releases: a fleet agrees.
        assert_eq!(
            rendezvous(int(42).stable_hash("m"), candidates.iter().copied()),
            rendezvous(int(42).stable_hash("m"), candidates.iter().copied())
        );
        assert_ne!(int(1).stable_hash("m"), string("1").stable_hash("m"));
        assert_eq!(rendezvous(1, []), None);
        assert_eq!(rendezvous(1, [(3, 9, 0)]), None, "weight 0 takes nothing");
    }

    #[test]
    fn rendezvous_moves_only_the_sequences_of_an_endpoint_that_leaves_or_the_share_one_joining_takes(
    ) {
        let all = endpoints(&FIVE, &[1; 5]);
        let before = placements(&all, &FIVE);
        // 10.0.0.3 leaves: its sequences spread over the others; no other moves.
        let without: Vec<_> = all.iter().copied().filter(|&(i, _, _)| i != 2).collect();
        let after = placements(&without, &FIVE);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == FIVE[2] {
                assert_ne!(a, FIVE[2]);
                moved += 1;
            } else {
                assert_eq!(a, b, "a sequence on an endpoint that stayed never moves");
            }
        }
        assert!((1700..2300).contains(&moved), "about 1/5 moved: {moved}");
        // Joining back (4 → 5 endpoints): only those come back, about 1/5 of all.
        let rejoined = placements(&all, &FIVE);
        assert_eq!(rejoined, before);
        // A sixth joins: it takes about 1/6, each from whichever endpoint had it.
        let six = [FIVE.as_slice(), &["10.0.0.6:8000"]].concat();
        let grown = placements(&endpoints(&six, &[1; 6]), &six);
        let mut taken = 0;
        for (b, g) in before.iter().zip(&grown) {
            if g != b {
                assert_eq!(g, six[5], "a sequence only moves to the new endpoint");
                taken += 1;
            }
        }
        assert!((1400..1950).contains(&taken), "about 1/6 moved: {taken}");
    }

    #[test]
    fn rendezvous_follows_weights() {
        let names = ["10.0.0.1:8000", "10.0.0.2:8000"];
        let placed = placements(&endpoints(&names, &[1, 3]), &names);
        let heavy = placed.iter().filter(|p| *p == names[1]).count();
        assert!((7200..7800).contains(&heavy), "about 3/4: {heavy}");
    }

    #[test]
    fn per_endpoint_counts_bound_sequences() {
        let table = SequenceTable::new(TTL, 10);
        table.bind("m", &int(1), 0, 0).unwrap();
        table.bind("m", &int(2), 2, 0).unwrap();
        table.bind("n", &int(2), 2, 0).unwrap();
        assert_eq!(table.per_endpoint(3), vec![1, 0, 2]);
    }

    #[test]
    fn bind_lookup_release() {
        let table = SequenceTable::new(TTL, 100);
        assert_eq!(table.lookup("lstm", &int(7), 0), None);
        table.bind("lstm", &int(7), 3, 0).unwrap();
        assert_eq!(table.lookup("lstm", &int(7), SECOND), Some(3));
        assert_eq!(table.len(), 1);
        // A new sequence_start with the same id moves it.
        table.bind("lstm", &int(7), 1, 2 * SECOND).unwrap();
        assert_eq!(table.lookup("lstm", &int(7), 3 * SECOND), Some(1));
        assert_eq!(table.len(), 1);
        table.release("lstm", &int(7));
        assert_eq!(table.lookup("lstm", &int(7), 4 * SECOND), None);
        assert!(table.is_empty());
        // Releasing what is not bound is harmless.
        table.release("lstm", &int(7));
        assert!(table.is_empty());
    }

    #[test]
    fn idle_sequences_expire_and_lookups_keep_them_alive() {
        let table = SequenceTable::new(TTL, 100);
        table.bind("m", &int(1), 0, 0).unwrap();
        table.bind("m", &int(2), 1, 0).unwrap();
        // Exactly the TTL idle is still alive; each lookup restarts the timer.
        assert_eq!(table.lookup("m", &int(1), 30 * SECOND), Some(0));
        assert_eq!(table.lookup("m", &int(1), 60 * SECOND), Some(0));
        assert_eq!(table.lookup("m", &int(2), 30 * SECOND + 1), None);
        // The expired one was dropped by the lookup that found it idle.
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup("m", &int(1), 90 * SECOND + 1), None);
        assert!(table.is_empty());
    }

    #[test]
    fn lookup_with_an_older_clock_does_not_shorten_the_ttl() {
        let table = SequenceTable::new(TTL, 100);
        table.bind("m", &int(1), 0, 10 * SECOND).unwrap();
        assert_eq!(table.lookup("m", &int(1), 5 * SECOND), Some(0));
        assert_eq!(table.lookup("m", &int(1), 40 * SECOND), Some(0));
    }

    #[test]
    fn sweep_drops_only_idle_sequences() {
        let table = SequenceTable::new(TTL, 100);
        for id in 0..10 {
            table.bind("m", &int(id), 0, id * SECOND).unwrap();
        }
        assert_eq!(table.sweep(35 * SECOND), 5);
        assert_eq!(table.len(), 5);
        assert_eq!(table.lookup("m", &int(4), 35 * SECOND), None);
        assert_eq!(table.lookup("m", &int(5), 35 * SECOND), Some(0));
        assert_eq!(table.sweep(35 * SECOND), 0);
    }

    #[test]
    fn a_full_table_drops_idle_sequences_before_refusing() {
        let table = SequenceTable::new(TTL, 3);
        table.bind("m", &int(1), 0, 0).unwrap();
        table.bind("m", &int(2), 0, 10 * SECOND).unwrap();
        table.bind("m", &int(3), 0, 20 * SECOND).unwrap();
        // Full, and nobody idle yet.
        assert_eq!(table.bind("m", &int(4), 0, 25 * SECOND), Err(TableFull));
        // Rebinding a sequence already there needs no room.
        table.bind("m", &int(3), 2, 25 * SECOND).unwrap();
        // Sequence 1 has gone idle: it makes way.
        table.bind("m", &int(4), 1, 31 * SECOND).unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(table.lookup("m", &int(1), 31 * SECOND), None);
        assert_eq!(table.lookup("m", &int(4), 31 * SECOND), Some(1));
        assert_eq!(table.bind("m", &int(5), 0, 31 * SECOND), Err(TableFull));
        let none = SequenceTable::new(TTL, 0);
        assert_eq!(none.bind("m", &int(1), 0, 0), Err(TableFull));
    }

    #[test]
    fn the_same_id_under_two_models_is_two_sequences() {
        let table = SequenceTable::new(TTL, 100);
        table.bind("a", &int(1), 10, 0).unwrap();
        table.bind("b", &int(1), 20, 0).unwrap();
        assert_eq!(table.lookup("a", &int(1), 0), Some(10));
        assert_eq!(table.lookup("b", &int(1), 0), Some(20));
        table.release("a", &int(1));
        assert_eq!(table.lookup("a", &int(1), 0), None);
        assert_eq!(table.lookup("b", &int(1), 0), Some(20));
        // Model and id do not run together: ("ab", "c") is not ("a", "bc").
        table.bind("ab", &string("c"), 1, 0).unwrap();
        assert_eq!(table.lookup("a", &string("bc"), 0), None);
    }

    #[test]
    fn string_and_integer_ids_are_distinct() {
        let table = SequenceTable::new(TTL, 100);
        table.bind("m", &int(42), 1, 0).unwrap();
        table.bind("m", &string("42"), 2, 0).unwrap();
        assert_eq!(table.lookup("m", &int(42), 0), Some(1));
        assert_eq!(table.lookup("m", &string("42"), 0), Some(2));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn colliding_keys_never_return_another_sequences_endpoint() {
        let table = SequenceTable::new(TTL, 100);
        // Forge a collision: store a binding for (m, 2) under (m, 1)'s key.
        let key = table.key("m", &int(1));
        table.bindings.insert(
            key,
            Binding {
                model: "m".into(),
                id: int(2),
                endpoint: 9,
                last_used_ns: AtomicU64::new(0),
            },
        );
        table.entries.fetch_add(1, Ordering::AcqRel);
        assert_eq!(table.lookup("m", &int(1), 0), None);
        table.release("m", &int(1));
        assert_eq!(table.len(), 1);
        table.bind("m", &int(1), 4, 0).unwrap();
        assert_eq!(table.lookup("m", &int(1), 0), Some(4));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn concurrent_binds_lookups_and_releases_stay_consistent() {
        let table = SequenceTable::new(TTL, 1000);
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let table = &table;
                scope.spawn(move || {
                    for round in 0..500u64 {
                        let id = int(thread * 1_000_000 + round);
                        let endpoint = (thread + round) as usize;
                        table.bind("m", &id, endpoint, round).unwrap();
                        assert_eq!(table.lookup("m", &id, round), Some(endpoint));
                        if round % 2 == 0 {
                            table.release("m", &id);
                            assert_eq!(table.lookup("m", &id, round), None);
                        }
                    }
                });
            }
        });
        assert_eq!(table.len(), 1000);
        assert_eq!(table.bindings.len(), 1000);
    }

    #[test]
    fn concurrent_binds_never_overshoot_the_capacity() {
        let table = SequenceTable::new(TTL, 100);
        let bound: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4u64)
                .map(|thread| {
                    let table = &table;
                    scope.spawn(move || {
                        (0..100u64)
                            .filter(|i| table.bind("m", &int(thread * 1000 + i), 0, 0).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(bound, 100);
        assert_eq!(table.len(), 100);
        assert_eq!(table.bindings.len(), 100);
    }
}
