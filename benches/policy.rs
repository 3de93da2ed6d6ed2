//! Inspect + decide with the shipped policy pack for pgbench-size statements: an exact cache
//! hit (extended / prepared protocol), a normalized-key hit (literals inlined, `-M simple`),
//! and an uncached inspection (parse + facts + decide).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pgwarden::policy::{load_dir, Mode, SessionContext};
use pgwarden::sql::cache::{InspectCache, Source};
use pgwarden::sql::{inspect, ReadAs};

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
const UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";

fn benches(c: &mut Criterion) {
    let policy = load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        "production",
    )
    .expect("the shipped pack loads");
    let session = SessionContext {
        user: "app".into(),
        database: "app".into(),
        ..SessionContext::default()
    };
    let cache = InspectCache::default();
    let ra = ReadAs::default();

    let mut g = c.benchmark_group("inspect_decide");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    for (name, sql) in [("select", SELECT), ("update", UPDATE)] {
        assert_eq!(cache.inspect_with_source(sql, ra).1, Source::Inspected);
        g.bench_function(format!("cached_exact/{name}"), |b| {
            b.iter(|| {
                let ins = cache.inspect(sql, ra);
                policy.decide(&ins, &session, Mode::Enforce).action
            })
        });
        g.bench_function(format!("uncached/{name}"), |b| {
            b.iter(|| {
                let ins = inspect(sql, ra);
                policy.decide(&ins, &session, Mode::Enforce).action
            })
        });
    }

    // Literals inlined: every text is new, the normalized key is not.
    let n = AtomicU64::new(0);
    let first = "SELECT abalance FROM pgbench_accounts WHERE aid = 0;";
    cache.inspect(first, ra);
    g.bench_function("cached_normalized/select", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};");
            let (ins, src) = cache.inspect_with_source(&sql, ra);
            debug_assert_ne!(src, Source::Inspected);
            policy.decide(&ins, &session, Mode::Enforce).action
        })
    });
    g.bench_function("decide_only/select", |b| {
        let ins = inspect(SELECT, ra);
        b.iter(|| policy.decide(&ins, &session, Mode::Enforce).action)
    });
    g.finish();
}

criterion_group!(policy_benches, benches);
criterion_main!(policy_benches);
