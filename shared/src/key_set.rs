//! The set of (day, key) pairs an attachment has produced so far, for first-occurrence-wins
//! dedup over files of millions of rows.
//!
//! Dedup was the ingest's largest cost: a general hash table touches two cache lines per probe
//! (control bytes, then the bucket), and at a million keys both miss. This table is open
//! addressing with linear probing over one `u64` per slot (32 bits of the hash as a fingerprint,
//! 32 bits of entry index), so a probe is one cache line. (A prefetch a few rows ahead saved
//! about a tenth at 1M rows, but needs an `unsafe` intrinsic; a safe read in its place stalled
//! and cost more than none, so there is none.) Keys live back to back in one byte arena: one allocation per
//! file instead of one per row. Equality is exact (the arena is compared on a fingerprint match);
//! the fingerprint only spares most comparisons.

use std::hash::BuildHasher;

use chrono::{Datelike, NaiveDate};

/// Slots are at most half full: probe sequences stay short.
const MAX_LOAD: usize = 2;

pub struct KeySet {
    /// 0 = empty; else `fingerprint << 32 | (entry + 1)`.
    slots: Vec<u64>,
    /// Entry `i` is `arena[ends[i - 1]..ends[i]]` (from 0 for the first): the day as 4 bytes,
    /// then the key.
    ends: Vec<u32>,
    arena: Vec<u8>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl KeySet {
    /// Room for about `keys` keys taking about `arena_bytes` bytes in all before any regrowth.
    pub fn with_capacity(keys: usize, arena_bytes: usize) -> Self {
        KeySet {
            slots: vec![0; (keys.max(8) * MAX_LOAD).next_power_of_two()],
            ends: Vec::with_capacity(keys),
            arena: Vec::with_capacity(arena_bytes),
            hasher: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The hash [`KeySet::insert_hashed`] takes.
    pub fn hash(&self, date: NaiveDate, key: &str) -> u64 {
        self.hasher
            .hash_one((date.num_days_from_ce(), key.as_bytes()))
    }

    /// True when the pair is new (and now recorded).
    pub fn insert(&mut self, date: NaiveDate, key: &str) -> bool {
        let hash = self.hash(date, key);
        self.insert_hashed(hash, date, key)
    }

    /// [`KeySet::insert`] with the pair's hash from [`KeySet::hash`].
    pub fn insert_hashed(&mut self, hash: u64, date: NaiveDate, key: &str) -> bool {
        let day = date.num_days_from_ce().to_le_bytes();
        let fingerprint = hash >> 32;
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                break;
            }
            if slot >> 32 == fingerprint {
                let entry = self.entry((slot & u64::from(u32::MAX)) as usize - 1);
                if entry[..4] == day && &entry[4..] == key.as_bytes() {
                    return false;
                }
            }
            at = (at + 1) & mask;
        }
        self.arena.extend_from_slice(&day);
        self.arena.extend_from_slice(key.as_bytes());
        self.ends
            .push(u32::try_from(self.arena.len()).expect("an attachment's keys fit in 4 GiB"));
        self.slots[at] = fingerprint << 32 | self.ends.len() as u64;
        if self.ends.len() * MAX_LOAD > self.slots.len() {
            self.grow();
        }
        true
    }

    fn entry(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    /// Doubles the slots and places every entry again (rare: the set is sized from the file).
    fn grow(&mut self) {
        let mut slots = vec![0u64; self.slots.len() * 2];
        let mask = slots.len() - 1;
        for i in 0..self.ends.len() {
            let entry = self.entry(i);
            let day = i32::from_le_bytes(entry[..4].try_into().expect("4-byte day"));
            let hash = self.hasher.hash_one((day, &entry[4..]));
            let mut at = hash as usize & mask;
            while slots[at] != 0 {
                at = (at + 1) & mask;
            }
            slots[at] = hash >> 32 << 32 | (i as u64 + 1);
        }
        self.slots = slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2024, 3, d).unwrap()
    }

    #[test]
    fn a_pair_is_new_once_and_the_day_is_part_of_the_key() {
        let mut set = KeySet::with_capacity(4, 64);
        assert!(set.insert(day(14), "c1"));
        assert!(!set.insert(day(14), "c1"));
        assert!(set.insert(day(15), "c1"));
        assert!(set.insert(day(14), "c2"));
        assert!(set.insert(day(14), ""));
        assert!(!set.insert(day(14), ""));
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn growing_far_past_the_first_size_keeps_every_key() {
        let mut set = KeySet::with_capacity(1, 0);
        for i in 0..50_000 {
            assert!(set.insert(day(1 + i % 28), &format!("key-{i}")), "{i}");
        }
        for i in 0..50_000 {
            assert!(!set.insert(day(1 + i % 28), &format!("key-{i}")), "{i}");
            assert!(
                set.insert(day(1 + (i + 1) % 28), &format!("key-{i}")),
                "{i}"
            );
        }
        assert_eq!(set.len(), 100_000);
    }

    #[test]
    fn hashed_and_plain_inserts_agree() {
        let mut set = KeySet::with_capacity(16, 256);
        let hash = set.hash(day(3), "x");
        assert!(set.insert_hashed(hash, day(3), "x"));
        assert!(!set.insert(day(3), "x"));
    }
}
