//! Inspections cached by exact statement text (and how it is read), shared by all sessions.
//! Extended-protocol and prepared clients send the same text again and again, so after the
//! first time an inspection costs one hash lookup. Clients that inline literals get a second
//! chance: the literal-free key ([`super::normalize::key`]) finds an inspection made for the
//! same statement with other literals — used only when none of its facts depends on a literal.
//! Bounded: when full, a map is emptied and refills with what is in use (no per-hit
//! bookkeeping on the hot path).

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
        InspectCache {
            exact: [DashMap::new(), DashMap::new()],
            normalized: DashMap::new(),
            capacity,
        }
    }

    /// The inspection of `text`, from the cache or computed now.
    pub fn inspect(&self, text: &str, read_as: ReadAs) -> Arc<Inspection> {
        self.inspect_with_source(text, read_as).0
    }

    pub fn inspect_with_source(&self, text: &str, read_as: ReadAs) -> (Arc<Inspection>, Source) {
        if text.len() > super::MAX_TEXT_BYTES {
            // Refused without hashing, scanning or keeping the text.
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
        if exact.len() >= self.capacity {
            exact.clear();
        }
        exact.insert(Box::from(text), ins.clone());
        if let Some(nk) = nkey.filter(|_| !ins.literal_sensitive && ins.unparsed.is_none()) {
            if self.normalized.len() >= self.capacity {
                self.normalized.clear();
            }
            self.normalized.insert(nk.into_boxed_str(), ins.clone());
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
}
