//! Room to inspect deeply nested text. Everything between the parser and the facts recurses
//! once per level of the parse tree: libpg_query's protobuf writer (which stops itself at
//! 10,000 nested messages or 2 MB of C stack, and says so), prost's decoder (no recursion
//! limit, so PostgreSQL's grammar and not the decoder decides what is too deep), the tree's
//! conversion to JSON, the walk, and the drops. Unoptimised, prost takes ~36 KB of stack per
//! level of `1+1+…`, so the deepest tree the parser accepts needs ~200 MB: a session's task
//! stack (2–8 MB) would overflow and abort the whole process.
//!
//! So text that could nest more than a few levels is inspected where there is room: texts of
//! moderate depth on a small pool of long-lived inspection threads with large stacks (a thread
//! made per inspection costs ~90 µs, and its first parse ~200 µs more, against ~30 µs for the
//! inspection itself), the rare deeper ones on a scoped thread of their own, sized from the
//! bound and unmapped when it ends (so what a very deep tree touched does not stay resident).
//! The bound is cheap and never too low: every level of a tree needs at least one token, and
//! every token starts with a word character or is a punctuation byte.
//!
//! The pool is process-wide, like the allocator: it is a resource, not state. Callers block
//! while their text is inspected, as they do on inspection itself.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Texts whose depth bound is at most this are inspected on the calling thread: a handful of
/// levels fits any thread's stack.
const INLINE_UNITS: usize = 24;
/// Stack for the skeleton of any statement (the levels no token pays for).
const BASE_STACK: usize = 16 << 20;
/// Stack per unit of the depth bound (measured: ≤ 20 KB per unit in a debug build).
const STACK_PER_UNIT: usize = 64 << 10;
/// The pool threads' stacks: texts whose bound fits go to the pool.
const POOL_STACK: usize = 64 << 20;
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

/// Where a text with this depth bound is inspected.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Inline,
    Pool,
    /// A thread of its own with this stack.
    Own(usize),
}

fn room_for(units: usize) -> Room {
    if units <= INLINE_UNITS {
        return Room::Inline;
    }
    let stack = BASE_STACK
        .saturating_add(units.saturating_mul(STACK_PER_UNIT))
        .min(MAX_STACK);
    if stack <= POOL_STACK {
        Room::Pool
    } else {
        Room::Own(stack)
    }
}

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set on pool threads: a nested call runs in place rather than wait for the pool.
    static ON_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The pool's queue; its threads start on first use.
fn pool() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static POOL: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pgwarden-inspect-{i}"))
                .stack_size(POOL_STACK)
                .spawn(move || loop {
                    ON_POOL.set(true);
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // A panicking job drops its answer channel: its caller fails closed.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then(|| Mutex::new(tx))
    })
    .as_ref()
}

/// Runs `f(text, arg)` (an inspection) where it has the stack it may need. `None` if that
/// room could not be had (then the caller fails closed).
pub(super) fn with_stack_for<A, T>(text: &str, arg: A, f: fn(&str, A) -> T) -> Option<T>
where
    A: Send + 'static,
    T: Send + 'static,
{
    match room_for(depth_bound(text)) {
        Room::Inline => Some(f(text, arg)),
        Room::Pool if ON_POOL.get() => Some(f(text, arg)),
        Room::Pool => {
            let (tx, rx) = mpsc::sync_channel(1);
            let owned = text.to_owned();
            let job: Job = Box::new(move || {
                let _ = tx.send(f(&owned, arg));
            });
            pool()?.lock().ok()?.send(job).ok()?;
            rx.recv().ok()
        }
        Room::Own(stack) => std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("pgwarden-inspect-deep".into())
                .stack_size(stack)
                .spawn_scoped(s, || f(text, arg))
                .ok()?;
            handle.join().ok()
        }),
    }
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
        assert_eq!(
            room_for(depth_bound("SELECT * FROM t WHERE id = $1")),
            Room::Inline
        );
        assert_eq!(room_for(100), Room::Pool);
        assert_eq!(room_for(usize::MAX), Room::Own(MAX_STACK));
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
