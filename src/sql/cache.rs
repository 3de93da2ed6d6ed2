//! Inspections cached by exact statement text (and how it is read), shared by all sessions.
//! Extended-protocol and prepared clients send the same text again and again, so after the
//! first time an inspection costs one hash lookup. Clients that inline literals get a second
//! chance: the literal-free key ([`super::normalize::key`]) finds an inspection made for the
//! same statement with other literals — used only when none of its facts depends on a literal.
//! Bounded in entries and in bytes: texts over [`MAX_ENTRY_BYTES`] are not cached at all,
//! and when a map is full (by count, or by the estimated bytes of its keys and inspections)
//! it is emptied and refills with what is in use (no per-hit bookkeeping on the hot path).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::{inspect, normalize, Inspection, ReadAs};

#[derive(Debug)]
pub struct InspectCache {
    /// Exact text → inspection, one map per `standard_conforming_strings` reading, so a
    /// lookup borrows the text instead of building a key.
    exact: [DashMap<Box<str>, Arc<Inspection>>; 2],
    /// Literal-free key → literal-insensitive inspection (standard-conforming text only).
    normalized: DashMap<Box<str>, Arc<Inspection>>,
    capacity: usize,
    /// Estimated bytes held by each map ([`entry_bytes`]): `exact[0]`, `exact[1]`, `normalized`.
    bytes: [AtomicUsize; 3],
    /// The most each map may hold, in estimated bytes.
    byte_budget: usize,
}

/// Texts longer than this are inspected every time rather than cached: one would take the
/// room of thousands of ordinary statements, and is rarely sent twice.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// The default byte budget of the whole cache (split between its three maps).
pub const DEFAULT_BYTE_BUDGET: usize = 64 << 20;

/// The estimated heap bytes of one cache entry: its key, and its inspection (statement texts
/// and facts; a fixed allowance per statement, operation and name).
pub fn entry_bytes(key: &str, ins: &Inspection) -> usize {
    const PER_ITEM: usize = 256;
    let statements: usize = ins
        .statements
        .iter()
        .map(|s| {
            s.text.len()
                + PER_ITEM * (1 + s.ops.len() + s.functions.len() + s.tickets.len())
                + s.functions.iter().map(String::len).sum::<usize>()
        })
        .sum();
    key.len() + PER_ITEM + statements
}

/// Where an inspection came from (for benchmarks and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Exact,
    Normalized,
    Inspected,
}

impl InspectCache {
    pub fn new(capacity: usize) -> Self {
        InspectCache::with_budget(capacity, DEFAULT_BYTE_BUDGET)
    }

    /// A cache of at most `capacity` entries and `byte_budget` estimated bytes in all.
    pub fn with_budget(capacity: usize, byte_budget: usize) -> Self {
        InspectCache {
            exact: [DashMap::new(), DashMap::new()],
            normalized: DashMap::new(),
            capacity,
            bytes: Default::default(),
            byte_budget: byte_budget / 3,
        }
    }

    /// Inserts into map `which`, emptying it first when the entry would not fit.
    fn insert(&self, which: usize, key: Box<str>, ins: &Arc<Inspection>) {
        let map = match which {
            0 | 1 => &self.exact[which],
            _ => &self.normalized,
        };
        let size = entry_bytes(&key, ins);
        if size > self.byte_budget {
            return;
        }
        let held = &self.bytes[which];
        if map.len() >= self.capacity || held.load(Ordering::Relaxed) + size > self.byte_budget {
            map.clear();
            held.store(0, Ordering::Relaxed);
        }
        // A replaced entry (another session inspected the same text at the same moment) was
        // the same size: nothing to add.
        if map.insert(key, ins.clone()).is_none() {
            held.fetch_add(size, Ordering::Relaxed);
        }
    }

    /// Estimated bytes the cache holds (bounded by its byte budget).
    pub fn bytes(&self) -> usize {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The inspection of `text`, from the cache or computed now.
    pub fn inspect(&self, text: &str, read_as: ReadAs) -> Arc<Inspection> {
        self.inspect_with_source(text, read_as).0
    }

    pub fn inspect_with_source(&self, text: &str, read_as: ReadAs) -> (Arc<Inspection>, Source) {
        if text.len() > MAX_ENTRY_BYTES {
            // Inspected without hashing, scanning or keeping the text (and refused unread
            // past the inspection limit).
            metrics::counter!(crate::telemetry::INSPECTION_CACHE_MISSES_TOTAL).increment(1);
            return (Arc::new(inspect(text, read_as)), Source::Inspected);
        }
        let exact = &self.exact[read_as.standard_conforming_strings as usize];
        if let Some(hit) = exact.get(text) {
            metrics::counter!(crate::telemetry::INSPECTION_CACHE_HITS_TOTAL).increment(1);
            return (hit.clone(), Source::Exact);
        }
        // The scanner reads strings as a standard-conforming server does; with that setting
        // off, token boundaries could differ from the server's, so no shared key then.
        let nkey = if read_as.standard_conforming_strings {
            normalize::key(text)
        } else {
            None
        };
        if let Some(nk) = &nkey {
            if let Some(hit) = self.normalized.get(nk.as_str()) {
                metrics::counter!(crate::telemetry::INSPECTION_CACHE_HITS_TOTAL).increment(1);
                return (hit.clone(), Source::Normalized);
            }
        }
        metrics::counter!(crate::telemetry::INSPECTION_CACHE_MISSES_TOTAL).increment(1);
        let started = std::time::Instant::now();
        let ins = Arc::new(inspect(text, read_as));
        metrics::histogram!(crate::telemetry::INSPECTION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        self.insert(
            read_as.standard_conforming_strings as usize,
            Box::from(text),
            &ins,
        );
        if let Some(nk) = nkey.filter(|_| !ins.literal_sensitive && ins.unparsed.is_none()) {
            self.insert(2, nk.into_boxed_str(), &ins);
        }
        (ins, Source::Inspected)
    }

    pub fn len(&self) -> usize {
        self.exact.iter().map(DashMap::len).sum::<usize>() + self.normalized.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for InspectCache {
    fn default() -> Self {
        InspectCache::new(20_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::WhereState;

    #[test]
    fn literal_free_statements_share_an_inspection() {
        let c = InspectCache::new(100);
        let (_, s) = c.inspect_with_source("SELECT * FROM t WHERE id = 1", ReadAs::default());
        assert_eq!(s, Source::Inspected);
        let (_, s) = c.inspect_with_source("SELECT * FROM t WHERE id = 2", ReadAs::default());
        assert_eq!(s, Source::Normalized);
    }

    #[test]
    fn literal_dependent_facts_stay_correct() {
        let c = InspectCache::new(100);
        let a = c.inspect("DELETE FROM t WHERE 1 = 2", ReadAs::default());
        assert_eq!(a.statements[0].ops[0].where_clause, WhereState::Present);
        let (b, s) = c.inspect_with_source("DELETE FROM t WHERE 1 = 1", ReadAs::default());
        assert_eq!(s, Source::Inspected);
        assert_eq!(
            b.statements[0].ops[0].where_clause,
            WhereState::TriviallyTrue
        );
        let (_, s) = c.inspect_with_source("SET role = 'b'", ReadAs::default());
        assert_eq!(s, Source::Inspected);
        let (r, s) = c.inspect_with_source("SET role = 'c'", ReadAs::default());
        assert_eq!(s, Source::Inspected);
        assert_eq!(r.statements[0].ops[0].roles, vec!["c"]);
    }

    /// Regression: the cache was bounded by entries only (20,000 × up to 4 MB each).
    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let budget = 3 << 20;
        let c = InspectCache::with_budget(1_000_000, budget);
        let read_as = ReadAs::default();
        // Distinct texts of 100 KB each (distinct literal-free keys too): 30 would be 3 MB.
        let mut most = 0;
        for i in 0..100 {
            let text = format!("SELECT '{}' AS c{i}", "x".repeat(100_000));
            let (_, s) = c.inspect_with_source(&text, read_as);
            assert_eq!(s, Source::Inspected);
            most = most.max(c.bytes());
            assert!(c.bytes() <= budget, "{} > {budget}", c.bytes());
        }
        assert!(most > budget / 6, "the budget is used: {most}");
        // What the estimate counts is what the maps hold.
        let held: usize = c.exact[1]
            .iter()
            .map(|e| entry_bytes(e.key(), e.value()))
            .sum();
        assert_eq!(held, c.bytes[1].load(Ordering::Relaxed));
        // The text and the statement text it holds are both counted.
        assert!(held >= c.exact[1].len() * 200_000);
        // A text over the per-entry limit is never kept.
        let huge = format!("SELECT length('{}')", "x".repeat(MAX_ENTRY_BYTES));
        c.inspect(&huge, read_as);
        let (_, s) = c.inspect_with_source(&huge, read_as);
        assert_eq!(s, Source::Inspected);
        assert!(c.exact[1].iter().all(|e| e.key().len() <= MAX_ENTRY_BYTES));
    }
}
