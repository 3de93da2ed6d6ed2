//! Inspections cached by exact statement text (and how it is read), shared by all sessions.
//! Extended-protocol and prepared clients send the same text again and again, so after the
//! first time an inspection costs one hash lookup. Bounded: when full, the cache is emptied
//! and refills with what is in use (simple, no per-hit bookkeeping on the hot path).

use std::sync::Arc;

use dashmap::DashMap;

use super::{inspect, Inspection, ReadAs};

#[derive(Debug)]
pub struct InspectCache {
    map: DashMap<(bool, Box<str>), Arc<Inspection>>,
    capacity: usize,
}

impl InspectCache {
    pub fn new(capacity: usize) -> Self {
        InspectCache {
            map: DashMap::new(),
            capacity,
        }
    }

    /// The inspection of `text`, from the cache or computed now.
    pub fn inspect(&self, text: &str, read_as: ReadAs) -> Arc<Inspection> {
        let key = (read_as.standard_conforming_strings, Box::<str>::from(text));
        if let Some(hit) = self.map.get(&key) {
            return hit.clone();
        }
        let ins = Arc::new(inspect(text, read_as));
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(key, ins.clone());
        ins
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for InspectCache {
    fn default() -> Self {
        InspectCache::new(20_000)
    }
}
