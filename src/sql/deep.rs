//! Room to inspect deeply nested text. Everything between the parser and the facts recurses
//! once per level of the parse tree: libpg_query's protobuf writer (which stops itself at
//! 10,000 nested messages or 2 MB of C stack, and says so), prost's decoder (no recursion
//! limit, so PostgreSQL's grammar and not the decoder decides what is too deep), the tree's
//! conversion to JSON, the walk, and the drops. Unoptimised, prost takes ~36 KB of stack per
//! level of `1+1+…`, so the deepest tree the parser accepts needs ~200 MB: a session's task
//! stack (2–8 MB) would overflow and abort the whole process.
//!
//! So text that could nest more than a few levels is inspected on a scoped thread whose stack
//! is sized from an upper bound on its depth. The bound is cheap and never too low: every
//! level of a tree needs at least one token, and every token starts with a word character or
//! is a punctuation byte. The stack is virtual memory until used; at most one such thread
//! runs per runtime worker (inspection is synchronous), which bounds what is touched.

/// Texts whose depth bound is at most this are inspected on the calling thread: a handful of
/// levels fits any thread's stack.
const INLINE_UNITS: usize = 24;
/// Stack for the skeleton of any statement (the levels no token pays for).
const BASE_STACK: usize = 16 << 20;
/// Stack per unit of the depth bound (measured: ≤ 20 KB per unit in a debug build).
const STACK_PER_UNIT: usize = 64 << 10;
/// Enough for the deepest tree libpg_query hands over (measured: < 256 MB in a debug build).
const MAX_STACK: usize = 512 << 20;

/// An upper bound on the nesting depth of the parse tree of `text`, in tokens: word starts
/// plus punctuation bytes (string contents are counted too, which only over-estimates).
pub(super) fn depth_bound(text: &str) -> usize {
    let mut units = 0usize;
    let mut in_word = false;
    for &b in text.as_bytes() {
        let word = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        if word {
            units += usize::from(!in_word);
        } else if !b.is_ascii_whitespace() {
            units += 1;
        }
        in_word = word;
    }
    units
}

/// The stack a text with this depth bound is inspected on; `None`: the calling thread's.
fn stack_for(units: usize) -> Option<usize> {
    (units > INLINE_UNITS).then(|| {
        BASE_STACK
            .saturating_add(units.saturating_mul(STACK_PER_UNIT))
            .min(MAX_STACK)
    })
}

/// Runs `f` (an inspection of `text`) where it has the stack it may need. `None` if no
/// thread could be started (then the caller fails closed).
pub(super) fn with_stack_for<T: Send>(text: &str, f: impl FnOnce() -> T + Send) -> Option<T> {
    let Some(stack) = stack_for(depth_bound(text)) else {
        return Some(f());
    };
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("pgwarden-inspect".into())
            .stack_size(stack)
            .spawn_scoped(s, f)
            .ok()?;
        // A panic is caught inside `f`; one escaping anyway is a failed inspection.
        handle.join().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{inspect, ReadAs};

    #[test]
    fn the_bound_counts_tokens_not_bytes() {
        assert_eq!(depth_bound("SELECT 1"), 2);
        assert_eq!(depth_bound("SELECT 1+1+1"), 6);
        assert_eq!(depth_bound(&format!("SELECT '{}'", "x".repeat(1000))), 4);
        assert!(stack_for(depth_bound("SELECT * FROM t WHERE id = $1")).is_none());
        assert_eq!(stack_for(usize::MAX), Some(MAX_STACK));
    }

    /// The deepest texts the parser accepts are inspected, on the calling test thread's
    /// small stack, without overflowing it (which would abort the test binary).
    #[test]
    fn deep_trees_are_inspected_without_overflowing_the_stack() {
        let chain = |n: usize| format!("SELECT {}", vec!["1"; n].join("+"));
        let subselects = |n: usize| format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n));
        let nots = |n: usize| format!("SELECT {}true", "NOT ".repeat(n));
        let arrays = |n: usize| format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n));
        let json = |n: usize| format!("SELECT '{{}}'::jsonb{}", "->'a'".repeat(n));
        for text in [
            chain(47),
            chain(1000),
            chain(4900),
            subselects(100),
            subselects(1600),
            nots(4900),
            arrays(1000),
            json(1000),
            format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200)),
        ] {
            let i = inspect(&text, ReadAs::default());
            assert!(i.unparsed.is_none(), "{:.40}: {:?}", text, i.unparsed);
            assert_eq!(i.statements.len(), 1);
        }
        // Past what libpg_query serialises: refused, with the parser's reason, and alive.
        for text in [chain(20_000), subselects(3000)] {
            let i = inspect(&text, ReadAs::default());
            let reason = i.unparsed.expect("too deep for the parser").reason;
            assert!(!reason.contains("Node."), "{reason}");
        }
    }
}
