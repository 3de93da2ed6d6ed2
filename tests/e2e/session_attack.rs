//! A second review of the session layer: attempts to run a refused statement through protocol
//! order and session state (decided once, run later; protocol bookkeeping; the
//! created-in-session exemption). Every attempt runs through the real proxy against real
//! PostgreSQL, and what happened is checked on the server directly.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{self, answer, bind, cstr, execute, msg, parse, q, query, send, sync};
use crate::support::{direct, unique, with_rules, RulesProxy};

/// DROP / TRUNCATE of a table this session did not create is refused; nothing else is.
const DROP_RULES: &str = r#"
[[rule]]
id = "t.drop-old"
description = "DROP / TRUNCATE of a table this session did not create"
action = "block"
message = "old table"
[rule.match]
tags = ["DROP TABLE", "TRUNCATE TABLE", "TRUNCATE"]
created_in_session = false
"#;

type Pack = RulesProxy;

async fn pack() -> Pack {
    with_rules(DROP_RULES).await
}

/// Parse, Bind and Execute `sql` as the unnamed statement and portal.
fn pbe(sql: &str) -> Vec<u8> {
    let mut b = parse("", sql);
    b.extend(bind("", ""));
    b.extend(execute("", 0));
    b
}

async fn session(p: &Pack) -> TcpStream {
    raw::session(p.proxy.addr).await
}

/// Rows in `t` as the server says (None: no such table).
async fn rows(t: &str) -> Option<i64> {
    direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

async fn old_table(t: &str) {
    direct()
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (a int); INSERT INTO {t} VALUES (1), (2)"
        ))
        .await
        .unwrap();
}

async fn cleanup(sql: &str) {
    let _ = direct().await.batch_execute(sql).await;
}

// ---- 1. Decided once, run later ----------------------------------------------------------

/// A portal bound while its table was this session's, executed (in the same implicit
/// transaction) after an old table was renamed into the name: TRUNCATE resolves its table
/// when it runs, not at Bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_bound_before_the_name_changed_does_not_run_on_the_old_table() {
    let p = pack().await;
    let mut s = session(&p).await;
    let (x, old) = (unique("pgw_pt"), unique("pgw_ptold"));
    old_table(&old).await;
    assert!(q(&mut s, &format!("CREATE TABLE {x} (a int)")).await.ok());
    let mut b = parse("w", &format!("TRUNCATE {x}"));
    b.extend(bind("p", "w"));
    b.extend(pbe(&format!("DROP TABLE {x}")));
    b.extend(pbe(&format!("ALTER TABLE {old} RENAME TO {x}")));
    b.extend(execute("p", 0));
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert!(a.refused(), "{a:?}");
    // Refused: the batch (the rename with it) is rolled back.
    assert_eq!(rows(&old).await, Some(2), "the old table keeps its rows");
    // The same across batches inside a transaction block (named portals live until its end).
    let (y, old2) = (unique("pgw_pt"), unique("pgw_ptold"));
    old_table(&old2).await;
    assert!(q(&mut s, &format!("CREATE TABLE {y} (a int)")).await.ok());
    assert!(q(&mut s, "BEGIN").await.ok());
    let mut b = parse("w2", &format!("TRUNCATE {y}"));
    b.extend(bind("p2", "w2"));
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert!(a.ok(), "{a:?}");
    assert!(q(&mut s, &format!("DROP TABLE {y}")).await.ok());
    assert!(q(&mut s, &format!("ALTER TABLE {old2} RENAME TO {y}"))
        .await
        .ok());
    let mut b = execute("p2", 0);
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert!(a.refused(), "{a:?}");
    let _ = q(&mut s, "COMMIT").await;
    assert_eq!(rows(&old2).await, Some(2), "the old table keeps its rows");
    // Bound and executed with nothing between, a utility portal runs.
    let z = unique("pgw_pt");
    assert!(q(&mut s, &format!("CREATE TABLE {z} (a int)")).await.ok());
    let mut b = parse("w3", &format!("TRUNCATE {z}"));
    b.extend(bind("p3", "w3"));
    b.extend(execute("p3", 0));
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert!(a.ok(), "{a:?}");
    cleanup(&format!(
        "DROP TABLE IF EXISTS {x}; DROP TABLE IF EXISTS {old}; DROP TABLE IF EXISTS {y}; DROP TABLE IF EXISTS {old2}; DROP TABLE IF EXISTS {z}"
    ))
    .await;
    p.proxy.stop().await;
}

/// DISCARD ALL and DEALLOCATE ALL drop the server's prepared statements: a Bind of a name
/// pgwarden decided before is refused, not run undecided after a re-Parse it did not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_discarded_then_reused_are_decided_again() {
    let p = pack().await;
    let mut s = session(&p).await;
    let (x, old) = (unique("pgw_dsc"), unique("pgw_dscold"));
    old_table(&old).await;
    assert!(q(&mut s, &format!("CREATE TABLE {x} (a int)")).await.ok());
    let mut b = parse("w", &format!("TRUNCATE {x}"));
    b.extend(sync());
    assert!(send(&mut s, &b).await.ok());
    for reset in ["DISCARD ALL", "DEALLOCATE ALL"] {
        assert!(q(&mut s, reset).await.ok());
        let mut b = bind("", "w");
        b.extend(execute("", 0));
        b.extend(sync());
        let a = send(&mut s, &b).await;
        assert!(!a.ok(), "{a:?}");
    }
    // The old table under the name the discarded statement named.
    cleanup(&format!("DROP TABLE {x}")).await;
    assert!(q(&mut s, &format!("ALTER TABLE {old} RENAME TO {x}"))
        .await
        .ok());
    let a = q(&mut s, &format!("TRUNCATE {x}")).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&x).await, Some(2));
    cleanup(&format!(
        "DROP TABLE IF EXISTS {x}; DROP TABLE IF EXISTS {old}"
    ))
    .await;
    p.proxy.stop().await;
}

// ---- 3. The created-in-session exemption -------------------------------------------------

/// `"public.t"` is a table named with a dot, not `public.t`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_name_with_a_dot_is_not_the_qualified_name() {
    let p = pack().await;
    let mut s = session(&p).await;
    let t = unique("pgw_dot");
    old_table(&format!("public.{t}")).await;
    let a = q(&mut s, &format!("CREATE TABLE \"public.{t}\" (a int)")).await;
    assert!(a.ok(), "{a:?}");
    let a = q(&mut s, &format!("TRUNCATE public.{t}")).await;
    assert!(a.refused(), "{a:?}");
    let a = q(&mut s, &format!("DROP TABLE public.{t}")).await;
    assert!(a.refused(), "{a:?}");
    let a = q(&mut s, &format!("DROP TABLE \"public\".\"{t}\"")).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&format!("public.{t}")).await, Some(2));
    cleanup(&format!(
        "DROP TABLE IF EXISTS public.{t}; DROP TABLE IF EXISTS \"public.{t}\""
    ))
    .await;
    p.proxy.stop().await;
}

/// A schema created in the search_path after a table was created through it: the name now
/// resolves in the new schema, where an old table is moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_created_ahead_in_the_search_path_ends_the_exemption() {
    let p = pack().await;
    let mut s = session(&p).await;
    let (ahead, other, x) = (unique("pgw_ahead"), unique("pgw_oth"), unique("pgw_sx"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {other}; CREATE TABLE {other}.{x} (a int); INSERT INTO {other}.{x} VALUES (1), (2)"
        ))
        .await
        .unwrap();
    // `ahead` does not exist yet: the table is created in public.
    assert!(q(&mut s, &format!("SET search_path = {ahead}, public"))
        .await
        .ok());
    assert!(q(&mut s, &format!("CREATE TABLE {x} (a int)")).await.ok());
    assert!(q(&mut s, &format!("CREATE SCHEMA {ahead}")).await.ok());
    assert!(q(
        &mut s,
        &format!("ALTER TABLE {other}.{x} SET SCHEMA {ahead}")
    )
    .await
    .ok());
    let a = q(&mut s, &format!("TRUNCATE {x}")).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&format!("{ahead}.{x}")).await, Some(2));
    cleanup(&format!(
        "DROP SCHEMA IF EXISTS {ahead} CASCADE; DROP SCHEMA IF EXISTS {other} CASCADE; DROP TABLE IF EXISTS public.{x}"
    ))
    .await;
    p.proxy.stop().await;
}

/// search_path changed by set_config (not SET): unqualified names created before may now
/// mean other tables (and pg_temp placed last lets public's table win over a temp one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_set_by_set_config_ends_the_exemption() {
    let p = pack().await;
    let mut s = session(&p).await;
    let t = unique("pgw_setcfg");
    old_table(&format!("public.{t}")).await;
    assert!(q(&mut s, &format!("CREATE TEMP TABLE {t} (a int)"))
        .await
        .ok());
    let a = q(
        &mut s,
        "SELECT set_config('search_path', 'public, pg_temp', false)",
    )
    .await;
    assert!(a.ok(), "{a:?}");
    let a = q(&mut s, &format!("TRUNCATE {t}")).await;
    assert!(a.refused(), "{a:?}");
    // The same through the extended protocol.
    let mut b = pbe("SELECT set_config('search_path', 'public, pg_temp', false)");
    b.extend(sync());
    assert!(send(&mut s, &b).await.ok());
    let a = q(&mut s, &format!("TRUNCATE {t}")).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&format!("public.{t}")).await, Some(2));
    cleanup(&format!("DROP TABLE IF EXISTS public.{t}")).await;
    p.proxy.stop().await;
}

/// A created table dropped as a side effect of another DROP (a partitioned parent, an
/// inheritance parent with CASCADE, a composite type with CASCADE): its name may then be
/// given to an old table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_table_dropped_by_cascade_is_no_longer_exempt() {
    let p = pack().await;
    let mut s = session(&p).await;
    let cases = [
        ("PARTITION", "CREATE TABLE {aux} (a int) PARTITION BY LIST (a); CREATE TABLE {x} PARTITION OF {aux} FOR VALUES IN (1)", "DROP TABLE {aux}"),
        ("INHERITS", "CREATE TABLE {aux} (a int); CREATE TABLE {x} () INHERITS ({aux})", "DROP TABLE {aux} CASCADE"),
        ("OF TYPE", "CREATE TYPE {aux} AS (a int); CREATE TABLE {x} OF {aux}", "DROP TYPE {aux} CASCADE"),
    ];
    let mut left = Vec::new();
    for (what, create, drop) in cases {
        let (aux, x, old) = (unique("pgw_aux"), unique("pgw_cx"), unique("pgw_cold"));
        old_table(&old).await;
        let sub = |t: &str| t.replace("{aux}", &aux).replace("{x}", &x);
        for stmt in sub(create).split("; ") {
            let a = q(&mut s, stmt).await;
            assert!(a.ok(), "{what}: {stmt}: {a:?}");
        }
        let a = q(&mut s, &sub(drop)).await;
        assert!(a.ok(), "{what}: {a:?}");
        assert!(rows(&x).await.is_none(), "{what}: {x} went with {aux}");
        assert!(q(&mut s, &format!("ALTER TABLE {old} RENAME TO {x}"))
            .await
            .ok());
        let a = q(&mut s, &format!("TRUNCATE {x}")).await;
        if !a.refused() || rows(&x).await != Some(2) {
            left.push(format!("{what}: {a:?}"));
        }
        cleanup(&format!(
            "DROP TABLE IF EXISTS {x}; DROP TABLE IF EXISTS {old}"
        ))
        .await;
    }
    assert!(left.is_empty(), "got through: {left:?}");
    p.proxy.stop().await;
}

/// CREATE TABLE IF NOT EXISTS over an existing table, CREATE TABLE AS failing mid-way, and a
/// creation rolled back to a savepoint: none makes the name exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_that_did_not_happen_are_not_exempt() {
    let p = pack().await;
    let mut s = session(&p).await;
    let old = unique("pgw_ine");
    old_table(&old).await;
    assert!(
        q(&mut s, &format!("CREATE TABLE IF NOT EXISTS {old} (a int)"))
            .await
            .ok()
    );
    assert!(q(&mut s, &format!("TRUNCATE {old}")).await.refused());
    // Created, then the name given up in the same batch before the batch fails.
    let a = q(
        &mut s,
        &format!("CREATE TABLE {old}_n AS SELECT 1 / (a - 2) FROM {old}"),
    )
    .await;
    assert!(!a.ok(), "{a:?}");
    assert!(q(&mut s, &format!("TRUNCATE {old}")).await.refused());
    // In a transaction: created, then rolled back to a savepoint, then committed.
    assert!(q(&mut s, "BEGIN").await.ok());
    assert!(q(&mut s, "SAVEPOINT a").await.ok());
    assert!(q(&mut s, &format!("CREATE TABLE {old}_m (a int)"))
        .await
        .ok());
    assert!(q(&mut s, "ROLLBACK TO SAVEPOINT a").await.ok());
    assert!(q(&mut s, "COMMIT").await.ok());
    cleanup(&format!(
        "CREATE TABLE {old}_m (a int); INSERT INTO {old}_m VALUES (1)"
    ))
    .await;
    assert!(q(&mut s, &format!("TRUNCATE {old}_m")).await.refused());
    // Created inside a transaction whose COMMIT fails (a deferred constraint).
    let d = unique("pgw_def");
    assert!(
        q(&mut s, &format!("CREATE TABLE {d}_p (a int PRIMARY KEY)"))
            .await
            .ok()
    );
    assert!(q(&mut s, "BEGIN").await.ok());
    assert!(q(
        &mut s,
        &format!("CREATE TABLE {d} (a int REFERENCES {d}_p DEFERRABLE INITIALLY DEFERRED)")
    )
    .await
    .ok());
    assert!(q(&mut s, &format!("INSERT INTO {d} VALUES (5)")).await.ok());
    let a = q(&mut s, "COMMIT").await;
    assert!(!a.ok(), "{a:?}");
    cleanup(&format!(
        "CREATE TABLE {d} (a int); INSERT INTO {d} VALUES (1)"
    ))
    .await;
    let a = q(&mut s, &format!("TRUNCATE {d}")).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&old).await, Some(2));
    assert_eq!(rows(&format!("{old}_m")).await, Some(1));
    assert_eq!(rows(&d).await, Some(1));
    cleanup(&format!(
        "DROP TABLE IF EXISTS {old}; DROP TABLE IF EXISTS {old}_m; DROP TABLE IF EXISTS {d}; DROP TABLE IF EXISTS {d}_p"
    ))
    .await;
    p.proxy.stop().await;
}

/// A Bind larger than what pgwarden reads whole (64 KiB: here, 32,767 result-format codes,
/// which PostgreSQL ignores for a statement returning no rows) is decided like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_bind_is_decided_like_any_other() {
    let p = pack().await;
    let mut s = session(&p).await;
    let (x, old) = (unique("pgw_big"), unique("pgw_bigold"));
    old_table(&old).await;
    assert!(q(&mut s, &format!("CREATE TABLE {x} (a int)")).await.ok());
    let mut b = parse("w", &format!("TRUNCATE {x}"));
    b.extend(sync());
    assert!(send(&mut s, &b).await.ok());
    assert!(q(&mut s, &format!("DROP TABLE {x}")).await.ok());
    assert!(q(&mut s, &format!("ALTER TABLE {old} RENAME TO {x}"))
        .await
        .ok());
    let big_bind = |statement: &str| {
        let mut body = Vec::new();
        cstr(&mut body, b"");
        cstr(&mut body, statement.as_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&32_767i16.to_be_bytes());
        body.extend(std::iter::repeat_n(0u8, 65_534));
        msg(b'B', &body)
    };
    let mut b = big_bind("w");
    b.extend(execute("", 0));
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&x).await, Some(2));
    // A large Bind of a statement nothing defined is refused too, and the session goes on.
    let mut b = big_bind("never_parsed");
    b.extend(execute("", 0));
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert_eq!(a.errors, vec!["26000".to_owned()], "{a:?}");
    let a = q(&mut s, &format!("TRUNCATE {x}")).await;
    assert!(a.refused(), "{a:?}");
    let a = q(&mut s, "SELECT 1").await;
    assert!(a.ok() && a.status == b'I', "{a:?}");
    // A large Bind of an allowed statement runs.
    let mut b = parse("len", "SELECT length($1::text)");
    let mut body = Vec::new();
    cstr(&mut body, b"");
    cstr(&mut body, b"len");
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&100_000i32.to_be_bytes());
    body.extend(std::iter::repeat_n(b'x', 100_000));
    body.extend_from_slice(&0i16.to_be_bytes());
    b.extend(msg(b'B', &body));
    b.extend(execute("", 0));
    b.extend(sync());
    let a = send(&mut s, &b).await;
    assert!(a.ok(), "{a:?}");
    assert_eq!(rows(&x).await, Some(2));
    cleanup(&format!(
        "DROP TABLE IF EXISTS {x}; DROP TABLE IF EXISTS {old}"
    ))
    .await;
    p.proxy.stop().await;
}

// ---- 2. Protocol bookkeeping --------------------------------------------------------------

/// DELETE is refused inside a transaction block.
const TX_RULES: &str = r#"
[[rule]]
id = "t.delete-in-tx"
description = "DELETE inside a transaction block"
action = "block"
message = "no DELETE in a transaction"
[rule.match]
tags = ["DELETE"]
[rule.session]
in_transaction = true
"#;

/// BEGIN sent ahead, its ReadyForQuery not yet read: what follows runs in the transaction
/// block, and is decided as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_pipelined_behind_begin_are_decided_in_the_transaction() {
    let p = with_rules(TX_RULES).await;
    let t = unique("pgw_pipe");
    old_table(&t).await;
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        ("Query after Query", {
            let mut b = query("BEGIN");
            b.extend(query(&format!("DELETE FROM {t}")));
            b.extend(query("COMMIT"));
            b
        }),
        ("extended after Query", {
            let mut b = query("BEGIN");
            b.extend(pbe(&format!("DELETE FROM {t}")));
            b.extend(sync());
            b.extend(query("COMMIT"));
            b
        }),
        ("Bind before BEGIN, Execute after", {
            let mut b = parse("", &format!("DELETE FROM {t}"));
            b.extend(bind("", ""));
            b.extend(query("BEGIN"));
            b.extend(execute("", 0));
            b.extend(sync());
            b.extend(query("COMMIT"));
            b
        }),
        ("BEGIN in the extended batch", {
            let mut b = pbe("BEGIN");
            b.extend(pbe(&format!("DELETE FROM {t}")));
            b.extend(sync());
            b.extend(query("COMMIT"));
            b
        }),
    ];
    let mut left = Vec::new();
    for (what, b) in attempts {
        let mut s = session(&p).await;
        s.write_all(&b).await.unwrap();
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(answer(&mut s).await);
            if answers.last().is_some_and(|a| a.status == b'I') && answers.len() >= 2 {
                break;
            }
        }
        if rows(&t).await != Some(2) {
            left.push(format!("{what}: {answers:?}"));
            old_table(&t).await;
        }
    }
    assert!(left.is_empty(), "got through: {left:?}");
    cleanup(&format!("DROP TABLE IF EXISTS {t}")).await;
    p.proxy.stop().await;
}
