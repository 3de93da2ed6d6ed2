//! Live-catalog facts on the wire: every size-gated rule of the shipped pack against a real
//! table above and below the threshold, a table created in the same transaction (or
//! session, for statements that cannot run in one), and a temporary table; the catalog's
//! other facts (NOT NULL proofs, binary-coercible type changes, planner estimates, role
//! attributes); a catalog that cannot answer; and `pgwarden check --catalog`.
//!
//! Thresholds are lowered (large from 1,000 rows, a large write from 500) so the tables stay
//! small enough to build in milliseconds; the code paths are the production ones.

use std::time::Duration;

use pgwarden::catalog::client::CatalogConfig;
use tokio_postgres::Client;

use crate::support::{direct, free_port, shipped_policies, sqlstate, unique, via, within, Proxy};

const BOUND: Duration = Duration::from_secs(60);
const LARGE: i32 = 2_000;
const SMALL: i32 = 10;

fn catalog_config(dsn: &str) -> CatalogConfig {
    let mut c = CatalogConfig {
        dsn: dsn.into(),
        ..CatalogConfig::default()
    };
    c.thresholds.large_rows = 1_000.0;
    c.thresholds.large_write_rows = 500.0;
    // Sizes change within a test: answers are not reused.
    c.ttl = Duration::from_millis(0);
    c
}

/// The shipped pack with a catalog connection to the machine's PostgreSQL.
async fn proxy() -> Proxy {
    Proxy::start_with(|c| {
        c.policies = shipped_policies();
        c.catalog = Some(catalog_config("host=127.0.0.1 port=5432 user=postgres"));
    })
    .await
}

/// One size-gated rule and a statement it matches (`{t}`: the table).
struct Case {
    rule: &'static str,
    /// Run before the statement, in the same place the table was made.
    setup: &'static str,
    stmt: &'static str,
    /// The statement can run inside a transaction block.
    in_txn: bool,
    /// The statement must run inside one (LOCK TABLE).
    needs_txn: bool,
}

const CASES: &[Case] = &[
    Case { rule: "lock.create-index-not-concurrent", setup: "", stmt: "CREATE INDEX ON {t} (a)", in_txn: true, needs_txn: false },
    Case { rule: "lock.drop-index-not-concurrent", setup: "CREATE INDEX {t}_a ON {t} (a)", stmt: "DROP INDEX {t}_a", in_txn: true, needs_txn: false },
    Case { rule: "lock.fk-without-not-valid", setup: "", stmt: "ALTER TABLE {t} ADD CONSTRAINT {t}_fk FOREIGN KEY (c) REFERENCES {t} (id)", in_txn: true, needs_txn: false },
    Case { rule: "lock.check-without-not-valid", setup: "", stmt: "ALTER TABLE {t} ADD CONSTRAINT {t}_ck CHECK (a >= 0)", in_txn: true, needs_txn: false },
    Case { rule: "lock.set-not-null", setup: "", stmt: "ALTER TABLE {t} ALTER COLUMN a SET NOT NULL", in_txn: true, needs_txn: false },
    Case { rule: "lock.constraint-builds-index", setup: "", stmt: "ALTER TABLE {t} ADD CONSTRAINT {t}_uq UNIQUE (a)", in_txn: true, needs_txn: false },
    Case { rule: "lock.column-type-change", setup: "", stmt: "ALTER TABLE {t} ALTER COLUMN a TYPE bigint", in_txn: true, needs_txn: false },
    Case { rule: "lock.add-column-rewrite", setup: "", stmt: "ALTER TABLE {t} ADD COLUMN d timestamptz DEFAULT clock_timestamp()", in_txn: true, needs_txn: false },
    Case { rule: "lock.table-rewrite-maintenance", setup: "", stmt: "VACUUM FULL {t}", in_txn: false, needs_txn: false },
    Case { rule: "lock.table-rewrite-maintenance-cluster", setup: "", stmt: "CLUSTER {t} USING {t}_pkey", in_txn: true, needs_txn: false },
    Case { rule: "lock.table-rewrite-maintenance-alter", setup: "", stmt: "ALTER TABLE {t} SET TABLESPACE pg_default", in_txn: true, needs_txn: false },
    Case { rule: "lock.missing-concurrently", setup: "", stmt: "REINDEX TABLE {t}", in_txn: true, needs_txn: false },
    Case { rule: "lock.missing-concurrently-detach", setup: "CREATE TABLE {t}_p (id int, a int) PARTITION BY RANGE (id); CREATE TABLE {t}_p1 PARTITION OF {t}_p FOR VALUES FROM (0) TO (1000000); INSERT INTO {t}_p SELECT id, a FROM {t}", stmt: "ALTER TABLE {t}_p DETACH PARTITION {t}_p1", in_txn: true, needs_txn: false },
    Case { rule: "lock.explicit-lock-table", setup: "", stmt: "LOCK TABLE {t} IN SHARE MODE", in_txn: true, needs_txn: true },
];

fn fill(sql: &str, t: &str) -> String {
    sql.replace("{t}", t)
}

/// `CREATE [TEMP] TABLE t` with `rows` rows, analyzed so the planner's statistics are set.
fn create_sql(t: &str, rows: i32, temp: bool) -> String {
    let temp = if temp { "TEMP " } else { "" };
    format!(
        "CREATE {temp}TABLE {t} (id int PRIMARY KEY, a int, b varchar(10), c int);
         INSERT INTO {t} SELECT g, g, 'x', NULL FROM generate_series(1, {rows}) g"
    )
}

/// Runs `stmt` as the client would: on its own, or in a transaction when it needs one.
async fn run(c: &Client, stmt: &str, needs_txn: bool) -> Result<(), tokio_postgres::Error> {
    if needs_txn {
        c.batch_execute("BEGIN").await?;
        let r = c.batch_execute(stmt).await;
        c.batch_execute("ROLLBACK").await?;
        r
    } else {
        c.batch_execute(stmt).await
    }
}

/// A pre-existing table with `rows` rows, made directly (not through the proxy).
async fn existing(rows: i32) -> String {
    let t = unique("cat");
    let d = direct().await;
    d.batch_execute(&create_sql(&t, rows, false)).await.unwrap();
    d.batch_execute(&format!("ANALYZE {t}")).await.unwrap();
    t
}

async fn drop_all(t: &str) {
    direct()
        .await
        .batch_execute(&format!("DROP TABLE IF EXISTS {t}, {t}_p CASCADE"))
        .await
        .unwrap();
}

fn refused_by(r: Result<(), tokio_postgres::Error>, rule: &str) -> String {
    let e = r.expect_err(&format!("{rule}: expected a refusal"));
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{rule}: {e:?}");
    let db = e.as_db_error().unwrap();
    assert!(
        db.message().contains(rule),
        "{rule}: refused by another rule: {}",
        db.message()
    );
    db.detail().unwrap_or_default().to_owned()
}

/// Runs every case's statement through the proxy on a pre-existing table of `rows` rows
/// (its setup made directly), handing the outcome to `check`.
async fn each_on_existing(rows: i32, check: impl Fn(&Case, Result<(), tokio_postgres::Error>)) {
    let p = proxy().await;
    let c = via(&p).await;
    for case in CASES {
        let t = existing(rows).await;
        if !case.setup.is_empty() {
            let d = direct().await;
            d.batch_execute(&fill(case.setup, &t)).await.unwrap();
            d.batch_execute(&fill(
                "DO $$ BEGIN IF to_regclass('{t}_p') IS NOT NULL THEN ANALYZE {t}_p; END IF; END $$",
                &t,
            ))
            .await
            .unwrap();
        }
        let stmt = fill(case.stmt, &t);
        check(
            case,
            within(BOUND, case.rule, run(&c, &stmt, case.needs_txn)).await,
        );
        drop_all(&t).await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_gated_rules_hold_large_tables() {
    each_on_existing(LARGE, |case, r| {
        refused_by(r, case.rule);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_gated_rules_only_alert_on_small_tables() {
    each_on_existing(SMALL, |case, r| {
        if let Err(e) = r {
            panic!("{}: a small table must only alert: {e:?}", case.rule);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_in_the_same_transaction_or_session_are_exempt() {
    let p = proxy().await;
    for case in CASES {
        let c = via(&p).await;
        let t = unique("catnew");
        // Large, but new: nobody else can be waiting on it.
        if case.in_txn {
            c.batch_execute("BEGIN").await.unwrap();
        }
        c.batch_execute(&create_sql(&t, LARGE, false))
            .await
            .unwrap();
        if !case.setup.is_empty() {
            c.batch_execute(&fill(case.setup, &t)).await.unwrap();
        }
        let stmt = fill(case.stmt, &t);
        let r = within(BOUND, case.rule, c.batch_execute(&stmt)).await;
        if let Err(e) = r {
            panic!(
                "{}: created in this {}: {e:?}",
                case.rule,
                if case.in_txn {
                    "transaction"
                } else {
                    "session"
                }
            );
        }
        if case.in_txn {
            c.batch_execute("ROLLBACK").await.unwrap();
        } else {
            drop_all(&t).await;
        }
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_are_exempt() {
    let p = proxy().await;
    for case in CASES {
        let c = via(&p).await;
        let t = unique("cattmp");
        c.batch_execute(&create_sql(&t, LARGE, true)).await.unwrap();
        let setup = fill(case.setup, &t).replace("CREATE TABLE", "CREATE TEMP TABLE");
        if !setup.is_empty() {
            c.batch_execute(&setup).await.unwrap();
        }
        let r = within(
            BOUND,
            case.rule,
            run(&c, &fill(case.stmt, &t), case.needs_txn),
        )
        .await;
        if let Err(e) = r {
            panic!("{}: temporary table: {e:?}", case.rule);
        }
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_table_referencing_a_large_one_is_held() {
    let p = proxy().await;
    let c = via(&p).await;
    let (small, large) = (existing(SMALL).await, existing(LARGE).await);
    let r = c
        .batch_execute(&format!(
            "ALTER TABLE {small} ADD CONSTRAINT {small}_fk FOREIGN KEY (c) REFERENCES {large} (id)"
        ))
        .await;
    refused_by(r, "lock.fk-without-not-valid");
    // NOT VALID takes no long lock on either: allowed.
    c.batch_execute(&format!(
        "ALTER TABLE {small} ADD CONSTRAINT {small}_fk FOREIGN KEY (c) REFERENCES {large} (id) NOT VALID"
    ))
    .await
    .unwrap();
    drop_all(&small).await;
    drop_all(&large).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_that_cannot_answer_counts_as_large_and_says_so() {
    let port = free_port();
    let p = Proxy::start_with(|c| {
        c.policies = shipped_policies();
        let mut cat = catalog_config(&format!("host=127.0.0.1 port={port} user=postgres"));
        cat.timeout = Duration::from_secs(2);
        c.catalog = Some(cat);
    })
    .await;
    let c = via(&p).await;
    let t = existing(SMALL).await;
    let detail = refused_by(
        c.batch_execute(&format!("CREATE INDEX ON {t} (a)")).await,
        "lock.create-index-not-concurrent",
    );
    assert!(
        detail.contains("catalog lookup failed") && detail.contains("counted as large"),
        "{detail}"
    );
    // Statements no size-gated rule reads are not slowed or refused.
    c.batch_execute(&format!("SELECT * FROM {t}"))
        .await
        .unwrap();
    drop_all(&t).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_not_null_check_and_widening_types_are_exempt_on_large_tables() {
    let p = proxy().await;
    let c = via(&p).await;
    let t = existing(LARGE).await;
    refused_by(
        c.batch_execute(&format!("ALTER TABLE {t} ALTER COLUMN a SET NOT NULL"))
            .await,
        "lock.set-not-null",
    );
    direct()
        .await
        .batch_execute(&format!(
            "ALTER TABLE {t} ADD CONSTRAINT {t}_a_nn CHECK (a IS NOT NULL) NOT VALID;
             ALTER TABLE {t} VALIDATE CONSTRAINT {t}_a_nn"
        ))
        .await
        .unwrap();
    c.batch_execute(&format!("ALTER TABLE {t} ALTER COLUMN a SET NOT NULL"))
        .await
        .unwrap();
    // varchar(10) to varchar(20) / text: no rewrite. To varchar(5): a rewrite and a check.
    c.batch_execute(&format!("ALTER TABLE {t} ALTER COLUMN b TYPE varchar(20)"))
        .await
        .unwrap();
    refused_by(
        c.batch_execute(&format!("ALTER TABLE {t} ALTER COLUMN b TYPE varchar(5)"))
            .await,
        "lock.column-type-change",
    );
    drop_all(&t).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_are_held_by_the_planner_estimate() {
    let p = proxy().await;
    let c = via(&p).await;
    let t = existing(LARGE).await;
    refused_by(
        c.batch_execute(&format!("UPDATE {t} SET a = a + 1 WHERE id > 0"))
            .await,
        "dml.large-write",
    );
    c.batch_execute(&format!("UPDATE {t} SET a = a + 1 WHERE id = 7"))
        .await
        .unwrap();
    // Extended protocol with parameters: the generic plan's estimate.
    let e = c
        .execute(&format!("DELETE FROM {t} WHERE id > $1"), &[&0i32])
        .await
        .expect_err("a parameterised range delete of most rows is held");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    let n = c
        .execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // EXPLAIN ANALYZE runs its statement; PREPARE defines one to run: both are estimated.
    refused_by(
        c.batch_execute(&format!(
            "EXPLAIN ANALYZE UPDATE {t} SET a = a + 1 WHERE id > 0"
        ))
        .await,
        "dml.large-write",
    );
    refused_by(
        c.batch_execute(&format!(
            "PREPARE big_delete AS DELETE FROM {t} WHERE id > $1"
        ))
        .await,
        "dml.large-write",
    );
    // Never executed by the estimate: every other row is still there.
    let left: i64 = direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, i64::from(LARGE) - 1);
    drop_all(&t).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_a_privileged_role_is_blocked() {
    let p = proxy().await;
    let c = via(&p).await;
    let (su, plain) = (unique("pgw_su"), unique("pgw_plain"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {su} SUPERUSER NOLOGIN; CREATE ROLE {plain} NOLOGIN"
        ))
        .await
        .unwrap();
    let e = c
        .batch_execute(&format!("SET ROLE {su}"))
        .await
        .expect_err("superuser role");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    c.batch_execute(&format!("SET ROLE {plain}")).await.unwrap();
    c.batch_execute("RESET ROLE").await.unwrap();
    direct()
        .await
        .batch_execute(&format!("DROP ROLE {su}; DROP ROLE {plain}"))
        .await
        .unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_a_catalog_decides_like_the_proxy() {
    let (small, large) = (existing(SMALL).await, existing(LARGE).await);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgwarden.toml");
    std::fs::write(
        &cfg,
        "[catalog]\ndsn = \"host=127.0.0.1 port=5432 user=postgres dbname=test\"\nlarge_rows = 1000\n",
    )
    .unwrap();
    let check = |t: &str, catalog: bool| {
        let f = dir.path().join(format!("{t}.sql"));
        std::fs::write(&f, format!("CREATE INDEX ON {t} (a);\n")).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"));
        cmd.arg("check").arg("--policies").arg(shipped_policies());
        if catalog {
            cmd.arg("--config").arg(&cfg);
        }
        let out = cmd.arg(&f).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(&small, true);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check(&large, true);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = check(&small, false);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("decided as if every table were large"),
        "{out}"
    );
    drop_all(&small).await;
    drop_all(&large).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_follow_the_client_search_path() {
    let p = proxy().await;
    let c = via(&p).await;
    let (schema, t) = (unique("cats"), unique("catsp"));
    // An empty public table and a large one of the same name in the tenant's schema.
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE public.{t} (id int, a int);
             CREATE TABLE {schema}.{t} (id int, a int);
             INSERT INTO {schema}.{t} SELECT g, g FROM generate_series(1, {LARGE}) g;
             ANALYZE public.{t}; ANALYZE {schema}.{t}"
        ))
        .await
        .unwrap();
    c.batch_execute(&format!("DELETE FROM {t} WHERE id > 0"))
        .await
        .expect("public's table is empty: a small write");
    c.batch_execute(&format!("SET search_path = {schema}"))
        .await
        .unwrap();
    refused_by(
        c.batch_execute(&format!("DELETE FROM {t} WHERE id > 0"))
            .await,
        "dml.large-write",
    );
    direct()
        .await
        .batch_execute(&format!(
            "DROP SCHEMA {schema} CASCADE; DROP TABLE public.{t}"
        ))
        .await
        .unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_estimate_is_refused_once_and_tells_no_secrets() {
    let p = proxy().await;
    let c = via(&p).await;
    let t = existing(SMALL).await;
    let f = unique("leak");
    direct()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION {f}() RETURNS int IMMUTABLE LANGUAGE plpgsql AS
             $$BEGIN RAISE EXCEPTION 'secret-value-42'; END$$"
        ))
        .await
        .unwrap();
    // Pipelined behind an unanswered query (both string readings are decided): answered
    // once, never looping.
    let q1 = c.query("SELECT 1", &[]);
    let delete = format!("DELETE FROM {t} WHERE id = {f}()");
    let q2 = c.execute(&delete, &[]);
    let (r1, r2) = within(BOUND, "pipelined estimate", async { tokio::join!(q1, q2) }).await;
    r1.unwrap();
    let e = r2.expect_err("a write whose estimate fails counts as large");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    let db = e.as_db_error().unwrap();
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains("planner estimate failed (SQLSTATE P0001)"),
        "{detail}"
    );
    assert!(!format!("{e:?}").contains("secret-value-42"), "{e:?}");
    // The catalog's sessions still answer.
    c.batch_execute(&format!("DELETE FROM {t} WHERE id = 1"))
        .await
        .unwrap();
    direct()
        .await
        .batch_execute(&format!("DROP FUNCTION {f}()"))
        .await
        .unwrap();
    drop_all(&t).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_loaded_after_the_last_analyze_count() {
    let p = proxy().await;
    let c = via(&p).await;
    let t = existing(SMALL).await;
    let d = direct().await;
    d.batch_execute(&format!(
        "INSERT INTO {t} SELECT g, g, 'x', NULL FROM generate_series({SMALL} + 1, {LARGE}) g"
    ))
    .await
    .unwrap();
    d.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    // reltuples still says 10 (no ANALYZE since); the statistics collector knows better.
    crate::support::eventually(BOUND, "live tuple count", || async {
        d.batch_execute("SELECT 1").await.unwrap();
        let n: i64 = d
            .query_one("SELECT pg_stat_get_live_tuples($1::text::regclass)", &[&t])
            .await
            .unwrap()
            .get(0);
        (n >= i64::from(LARGE)).then_some(())
    })
    .await;
    refused_by(
        c.batch_execute(&format!("CREATE INDEX ON {t} (a)")).await,
        "lock.create-index-not-concurrent",
    );
    drop_all(&t).await;
    p.stop().await;
}

/// A catalog role that may read the catalog but not plan writes on the tables (EXPLAIN of an
/// UPDATE needs the UPDATE privilege): every write it would have to estimate fails, and
/// counts as large. What is allowed through such a catalog was proven from unique keys.
async fn unprivileged_catalog_proxy() -> Proxy {
    let d = direct().await;
    d.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgwarden_catalog_reader') THEN
             CREATE ROLE pgwarden_catalog_reader LOGIN;
           END IF;
         END $$",
    )
    .await
    .unwrap();
    Proxy::start_with(|c| {
        c.policies = shipped_policies();
        c.catalog = Some(catalog_config(
            "host=127.0.0.1 port=5432 user=pgwarden_catalog_reader",
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_unique_key_are_proven_small_without_the_planner() {
    let p = unprivileged_catalog_proxy().await;
    let c = via(&p).await;
    let t = existing(LARGE).await;
    let d = direct().await;
    d.batch_execute(&format!(
        "CREATE INDEX ON {t} (c);
         CREATE UNIQUE INDEX {t}_b_partial ON {t} (b) WHERE b <> 'x';
         CREATE TABLE {t}_d (id int, v int, CONSTRAINT {t}_d_uq UNIQUE (id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TABLE {t}_k (k1 int, k2 int, v int, UNIQUE (k1, k2));
         INSERT INTO {t}_k SELECT g % 50, g, g FROM generate_series(1, {LARGE}) g"
    ))
    .await
    .unwrap();
    // By primary key, literal or parameter, with or without more conditions: at most one row.
    c.batch_execute(&format!("UPDATE {t} SET a = a + 1 WHERE id = 7"))
        .await
        .unwrap();
    c.batch_execute(&format!("UPDATE {t} SET a = 0 WHERE id = 8 AND a > 0"))
        .await
        .unwrap();
    let n = c
        .execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.batch_execute(&format!("UPDATE {t}_k SET v = 0 WHERE k2 = 5 AND k1 = 5"))
        .await
        .unwrap();
    // Not proven (a plain index, part of a key, a partial unique index, a deferrable one):
    // the planner is asked, cannot answer for this role, and the write counts as large.
    for sql in [
        format!("UPDATE {t} SET a = 1 WHERE c = 7"),
        format!("UPDATE {t} SET a = 1 WHERE id > 7"),
        format!("UPDATE {t} SET a = 1 WHERE id = 7 OR id = 8"),
        format!("UPDATE {t} SET a = 1 WHERE b = 'y'"),
        format!("UPDATE {t}_k SET v = 1 WHERE k1 = 5"),
        format!("DELETE FROM {t}_d WHERE id = 1"),
    ] {
        let detail = refused_by(c.batch_execute(&sql).await, "dml.large-write");
        assert!(
            detail.contains("planner estimate failed"),
            "{sql}: {detail}"
        );
    }
    // `=` found before pg_catalog on the search_path could be anyone's operator.
    c.batch_execute("SET search_path = public, pg_catalog")
        .await
        .unwrap();
    refused_by(
        c.batch_execute(&format!("UPDATE {t} SET a = a + 1 WHERE id = 7"))
            .await,
        "dml.large-write",
    );
    d.batch_execute(&format!("DROP TABLE {t}_d, {t}_k"))
        .await
        .unwrap();
    drop_all(&t).await;
    p.stop().await;
}
