//! Bypasses of the session's bookkeeping, closed as classes: a prepared statement decided at
//! Parse and run later under changed conditions; protocol orderings that push the
//! ReadyForQuery accounting out of step; the created-in-session exemption reached through
//! another object; and memory a client controls. Every case runs against real PostgreSQL
//! through the real proxy, with a raw client where no well-behaved client would go.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{
    self, answer, bind, close_statement, execute, flush, login, msg, parse, q, query, sync, Answer,
    Msg,
};
use crate::support::{direct, unique, with_rules, within, RulesProxy, PG_DB, PG_USER};

const BOUND: Duration = Duration::from_secs(60);

/// The rules these tests refuse with.
const RULES: &str = r#"
[[rule]]
id = "t.drop-old"
description = "DROP / TRUNCATE / ALTER of a table this session did not create"
action = "block"
message = "old table"
[rule.match]
tags = ["DROP TABLE", "TRUNCATE TABLE", "TRUNCATE", "ALTER TABLE"]
created_in_session = false

[[rule]]
id = "t.delete-in-tx"
description = "DELETE inside a transaction block"
action = "block"
message = "no DELETE in a transaction"
[rule.match]
tags = ["DELETE"]
[rule.session]
in_transaction = true

[[rule]]
id = "t.marker"
description = "a statement naming the refused marker table"
action = "block"
message = "refused marker"
[rule.match]
objects = ["*pgw_refused_marker*"]
"#;

type Pack = RulesProxy;

async fn pack() -> Pack {
    with_rules(RULES).await
}

async fn pack_with(rules: &str) -> Pack {
    with_rules(rules).await
}

async fn session(p: &Pack) -> TcpStream {
    raw::session(p.proxy.addr).await
}

/// Runs prepared statement `name` (Bind, Execute, Sync).
async fn run(s: &mut TcpStream, name: &str) -> Answer {
    let mut b = bind("", name);
    b.extend(execute("", 0));
    b.extend(sync());
    s.write_all(&b).await.unwrap();
    answer(s).await
}

/// Prepares `sql` as `name` (Parse, Sync).
async fn prepare(s: &mut TcpStream, name: &str, sql: &str) -> Answer {
    let mut b = parse(name, sql);
    b.extend(sync());
    s.write_all(&b).await.unwrap();
    answer(s).await
}

async fn exists(t: &str) -> bool {
    direct()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
        .await
        .unwrap()
        .get(0)
}

async fn rows(t: &str) -> i64 {
    direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0)
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

/// The session still refuses what the pack refuses, allows what it allows, and its idea of
/// the transaction is the server's (checked through a rule on `in_transaction`).
async fn still_in_step(s: &mut TcpStream, expect_status: u8) {
    if expect_status == b'T' {
        // In a transaction block: DELETE is refused there (and the refusal aborts the
        // transaction, as PostgreSQL's own error would); the marker is refused still.
        let t = unique("pgw_step");
        let a = q(s, &format!("CREATE TEMP TABLE {t} (a int)")).await;
        assert!(a.ok() && a.status == b'T', "{a:?}");
        let a = q(s, &format!("DELETE FROM {t}")).await;
        assert!(a.refused() && a.status == b'E', "{a:?}");
        let a = q(s, "DROP TABLE pgw_refused_marker").await;
        assert!(a.refused() && a.status == b'E', "{a:?}");
        return;
    }
    let a = q(s, "DROP TABLE pgw_refused_marker").await;
    assert!(a.refused(), "the marker statement is refused: {a:?}");
    let a = q(s, "SELECT 1").await;
    assert_eq!(a.status, expect_status, "ReadyForQuery status");
    if expect_status == b'E' {
        assert_eq!(a.errors, vec!["25P02".to_owned()], "{a:?}");
        return;
    }
    assert!(a.ok(), "an allowed statement runs: {a:?}");
    // DELETE of nothing: allowed outside a transaction block.
    let t = unique("pgw_step");
    let a = q(s, &format!("CREATE TEMP TABLE {t} (a int)")).await;
    assert!(a.ok(), "{a:?}");
    let a = q(s, &format!("DELETE FROM {t}")).await;
    assert!(a.ok(), "DELETE allowed outside a transaction: {a:?}");
}

// ---- 1. Decided once, run later ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_decides_again_after_the_table_name_means_another_table() {
    let p = pack().await;
    let t = unique("pgw_redecide");
    let mut s = session(&p).await;
    assert!(q(&mut s, &format!("CREATE TABLE {t} (a int)")).await.ok());
    // Decided at Parse: the table is this session's, so emptying it is exempt.
    assert!(prepare(&mut s, "wipe", &format!("TRUNCATE {t}")).await.ok());
    assert!(run(&mut s, "wipe").await.ok());
    assert!(q(&mut s, &format!("DROP TABLE {t}")).await.ok());
    // Another session puts an old table with data under the name.
    old_table(&t).await;
    let a = run(&mut s, "wipe").await;
    assert!(a.refused(), "{a:?}");
    assert!(exists(&t).await, "the old table is still there");
    assert_eq!(rows(&t).await, 2);
    still_in_step(&mut s, b'I').await;
    cleanup(&format!("DROP TABLE IF EXISTS {t}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_decides_again_after_search_path_changes() {
    let p = pack().await;
    let (fresh, old, t) = (unique("pgw_sp_new"), unique("pgw_sp_old"), unique("pgw_t"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {fresh}; CREATE SCHEMA {old}; CREATE TABLE {old}.{t} (a int); INSERT INTO {old}.{t} VALUES (1)"
        ))
        .await
        .unwrap();
    let mut s = session(&p).await;
    assert!(q(&mut s, &format!("SET search_path = {fresh}")).await.ok());
    assert!(q(&mut s, &format!("CREATE TABLE {t} (a int)")).await.ok());
    assert!(prepare(&mut s, "trunc", &format!("TRUNCATE {t}"))
        .await
        .ok());
    // Unchanged: bound again and again, it runs.
    for _ in 0..3 {
        let a = run(&mut s, "trunc").await;
        assert!(a.ok(), "{a:?}");
    }
    assert!(q(&mut s, &format!("SET search_path = {old}")).await.ok());
    let a = run(&mut s, "trunc").await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&format!("{old}.{t}")).await, 1);
    // Back to where it was decided: allowed again.
    assert!(q(&mut s, &format!("SET search_path = {fresh}")).await.ok());
    still_in_step(&mut s, b'I').await;
    cleanup(&format!(
        "DROP SCHEMA {fresh} CASCADE; DROP SCHEMA {old} CASCADE"
    ))
    .await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_decides_again_after_a_policy_reload() {
    let p = pack_with("").await;
    let t = unique("pgw_reload");
    old_table(&t).await;
    let mut s = session(&p).await;
    assert!(prepare(&mut s, "wipe", &format!("TRUNCATE {t}")).await.ok());
    std::fs::write(p.dir.path().join("rules.toml"), RULES).unwrap();
    pgwarden::reload::reload(p.proxy.shared.reload_target()).unwrap();
    let a = run(&mut s, "wipe").await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&t).await, 2);
    still_in_step(&mut s, b'I').await;
    cleanup(&format!("DROP TABLE IF EXISTS {t}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_decides_again_inside_a_transaction() {
    let p = pack().await;
    let t = unique("pgw_txn");
    old_table(&t).await;
    let mut s = session(&p).await;
    // Decided outside a transaction block, where DELETE is allowed.
    assert!(
        prepare(&mut s, "del", &format!("DELETE FROM {t} WHERE a = 1"))
            .await
            .ok()
    );
    assert_eq!(q(&mut s, "BEGIN").await.status, b'T');
    let a = run(&mut s, "del").await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(a.status, b'E');
    assert_eq!(q(&mut s, "ROLLBACK").await.status, b'I');
    // Outside again: allowed.
    let a = run(&mut s, "del").await;
    assert!(a.ok(), "{a:?}");
    assert_eq!(rows(&t).await, 1);
    cleanup(&format!("DROP TABLE IF EXISTS {t}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_decides_again_after_set_role() {
    let rules = r#"
[[rule]]
id = "t.role-truncate"
description = "TRUNCATE as the restricted role"
action = "block"
message = "restricted role"
[rule.match]
tags = ["TRUNCATE*"]
[rule.session]
roles = ["pgw_restricted"]
"#;
    let p = pack_with(rules).await;
    let _ = direct()
        .await
        .batch_execute("DO $$BEGIN CREATE ROLE pgw_restricted; EXCEPTION WHEN duplicate_object THEN NULL; END$$; GRANT ALL ON SCHEMA public TO pgw_restricted")
        .await;
    let t = unique("pgw_role");
    old_table(&t).await;
    direct()
        .await
        .batch_execute(&format!("GRANT ALL ON {t} TO pgw_restricted"))
        .await
        .unwrap();
    let mut s = session(&p).await;
    assert!(prepare(&mut s, "wipe", &format!("TRUNCATE {t}")).await.ok());
    assert!(q(&mut s, "SET ROLE pgw_restricted").await.ok());
    let a = run(&mut s, "wipe").await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&t).await, 2);
    // A RESET ROLE prepared but never run changes nothing: still the restricted role.
    assert!(prepare(&mut s, "unrole", "RESET ROLE").await.ok());
    let a = q(&mut s, &format!("TRUNCATE {t}")).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&t).await, 2);
    // Run, it does.
    assert!(run(&mut s, "unrole").await.ok());
    assert!(run(&mut s, "wipe").await.ok());
    assert_eq!(rows(&t).await, 0);
    cleanup(&format!("DROP TABLE IF EXISTS {t}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_in_the_same_batch_after_an_execute_that_changes_the_context() {
    // Parse, then (in one extended batch, before Sync) an Execute of a SET, then the Bind:
    // the Bind is decided under the SET's context.
    let p = pack().await;
    let (fresh, old, t) = (unique("pgw_b_new"), unique("pgw_b_old"), unique("pgw_t"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {fresh}; CREATE SCHEMA {old}; CREATE TABLE {old}.{t} (a int); INSERT INTO {old}.{t} VALUES (1)"
        ))
        .await
        .unwrap();
    let mut s = session(&p).await;
    assert!(q(&mut s, &format!("SET search_path = {fresh}")).await.ok());
    assert!(q(&mut s, &format!("CREATE TABLE {t} (a int)")).await.ok());
    let mut b = parse("trunc", &format!("TRUNCATE {t}"));
    b.extend(parse("sp", &format!("SET search_path = {old}")));
    b.extend(bind("", "sp"));
    b.extend(execute("", 0));
    b.extend(bind("", "trunc"));
    b.extend(execute("", 0));
    b.extend(sync());
    s.write_all(&b).await.unwrap();
    let a = answer(&mut s).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&format!("{old}.{t}")).await, 1);
    cleanup(&format!(
        "DROP SCHEMA {fresh} CASCADE; DROP SCHEMA {old} CASCADE"
    ))
    .await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_of_a_closed_or_never_parsed_statement_is_refused() {
    let p = pack().await;
    let mut s = session(&p).await;
    assert!(prepare(&mut s, "one", "SELECT 1").await.ok());
    assert!(run(&mut s, "one").await.ok());
    let mut b = close_statement("one");
    b.extend(sync());
    s.write_all(&b).await.unwrap();
    assert!(answer(&mut s).await.ok());
    let a = run(&mut s, "one").await;
    assert_eq!(a.errors, vec!["26000".to_owned()], "{a:?}");
    let a = run(&mut s, "never").await;
    assert_eq!(a.errors, vec!["26000".to_owned()], "{a:?}");
    still_in_step(&mut s, b'I').await;
    p.proxy.stop().await;
}

// ---- 2. Protocol bookkeeping ---------------------------------------------------------------

/// Sends raw bytes.
async fn send(s: &mut TcpStream, b: &[u8]) {
    s.write_all(b).await.unwrap();
}

/// Reads until a message of type `tag`, which is returned.
async fn until(s: &mut TcpStream, tag: u8) -> Msg {
    within(BOUND, "a message", crate::support::raw::read_until(s, tag))
        .await
        .expect("the session answers")
}

/// The creation credit attack: after an ordering that desynchronises the count, a CREATE
/// TABLE of an old table's name fails, and a later success must not credit it as created.
async fn failed_create_is_not_credited(s: &mut TcpStream, old: &str) {
    let a = q(s, &format!("CREATE TABLE {old} (a int)")).await;
    assert_eq!(a.errors, vec!["42P07".to_owned()], "{a:?}");
    assert!(q(s, "SELECT 1").await.ok());
    let a = q(s, &format!("DROP TABLE {old}")).await;
    assert!(a.refused(), "the old table is not this session's: {a:?}");
    assert!(exists(old).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_skipped_after_an_extended_error_does_not_shift_the_count() {
    let p = pack().await;
    let old = unique("pgw_skip");
    old_table(&old).await;
    let mut s = session(&p).await;
    // Parse fails at the server; the Query behind it, before Sync, is skipped.
    let mut b = parse("", "SELEC 1");
    b.extend(query("BEGIN"));
    b.extend(sync());
    send(&mut s, &b).await;
    let a = answer(&mut s).await;
    assert_eq!(a.errors, vec!["42601".to_owned()]);
    assert_eq!(a.status, b'I', "the BEGIN never ran");
    failed_create_is_not_credited(&mut s, &old).await;
    still_in_step(&mut s, b'I').await;
    cleanup(&format!("DROP TABLE IF EXISTS {old}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_inside_an_extended_batch_and_lone_syncs_and_flushes() {
    let p = pack().await;
    let old = unique("pgw_mid");
    old_table(&old).await;
    let mut s = session(&p).await;
    // A Query in the middle of an extended batch is answered with its own ReadyForQuery.
    let mut b = parse("", "SELECT 1");
    b.extend(bind("", ""));
    b.extend(execute("", 0));
    b.extend(query("BEGIN"));
    b.extend(sync());
    send(&mut s, &b).await;
    assert_eq!(answer(&mut s).await.status, b'T');
    assert_eq!(answer(&mut s).await.status, b'T');
    still_in_step(&mut s, b'T').await;
    assert_eq!(q(&mut s, "ROLLBACK").await.status, b'I');
    // Syncs with nothing before them, Flushes, stray CopyDone and CopyFail.
    let mut b = sync();
    b.extend(flush());
    b.extend(msg(b'c', b""));
    b.extend(msg(b'f', b"nothing\0"));
    b.extend(sync());
    send(&mut s, &b).await;
    assert!(answer(&mut s).await.ok());
    assert!(answer(&mut s).await.ok());
    // Parse then Flush: answered before any Sync.
    let mut b = parse("f1", "SELECT 2");
    b.extend(flush());
    send(&mut s, &b).await;
    assert_eq!(until(&mut s, b'1').await.tag, b'1');
    send(&mut s, &sync()).await;
    assert!(answer(&mut s).await.ok());
    failed_create_is_not_credited(&mut s, &old).await;
    still_in_step(&mut s, b'I').await;
    cleanup(&format!("DROP TABLE IF EXISTS {old}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_swallowed_by_copy_do_not_shift_the_count() {
    let p = pack().await;
    let old = unique("pgw_copy");
    old_table(&old).await;
    let mut s = session(&p).await;
    let t = unique("pgw_copy_tmp");
    assert!(q(&mut s, &format!("CREATE TEMP TABLE {t} (a int)"))
        .await
        .ok());
    // Simple-query COPY with Syncs and Flushes among its data: the server ignores them.
    send(&mut s, &query(&format!("COPY {t} FROM STDIN"))).await;
    until(&mut s, b'G').await;
    let mut b = msg(b'd', b"1\n");
    b.extend(sync());
    b.extend(flush());
    b.extend(msg(b'd', b"2\n"));
    b.extend(msg(b'c', b""));
    send(&mut s, &b).await;
    let a = answer(&mut s).await;
    assert!(a.ok(), "{a:?}");
    // Extended COPY the way libpq and tokio-postgres send it (Sync behind Execute, data,
    // CopyDone, Sync), succeeding and failing.
    for data in ["3\n", "not a number\n"] {
        let mut b = parse("", &format!("COPY {t} FROM STDIN"));
        b.extend(bind("", ""));
        b.extend(execute("", 0));
        b.extend(sync());
        send(&mut s, &b).await;
        until(&mut s, b'G').await;
        let mut b = msg(b'd', data.as_bytes());
        b.extend(msg(b'c', b""));
        b.extend(sync());
        send(&mut s, &b).await;
        let a = answer(&mut s).await;
        assert_eq!(a.ok(), data == "3\n", "{a:?}");
        failed_create_is_not_credited(&mut s, &old).await;
    }
    // An extended COPY that fails before it reads anything (into a view): the server
    // answers the Sync behind Execute on its own, then the one after the data. Data sent
    // before or after the failure is seen.
    let v = unique("pgw_copy_view");
    assert!(q(&mut s, &format!("CREATE TEMP VIEW {v} AS SELECT 1 AS a"))
        .await
        .ok());
    for data_first in [true, false] {
        let mut b = parse("", &format!("COPY {v} FROM STDIN"));
        b.extend(bind("", ""));
        b.extend(execute("", 0));
        b.extend(sync());
        send(&mut s, &b).await;
        until(&mut s, b'G').await;
        let mut data = msg(b'd', b"1\n");
        data.extend(msg(b'c', b""));
        data.extend(sync());
        if data_first {
            send(&mut s, &data).await;
        }
        let a = answer(&mut s).await;
        assert!(!a.ok(), "{a:?}");
        if !data_first {
            send(&mut s, &data).await;
        }
        assert!(answer(&mut s).await.ok());
        failed_create_is_not_credited(&mut s, &old).await;
    }
    // However many ReadyForQuery the server sends for it, the session stays in step.
    failed_create_is_not_credited(&mut s, &old).await;
    still_in_step(&mut s, b'I').await;
    cleanup(&format!("DROP TABLE IF EXISTS {old}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_into_copy_data_ends_the_session_and_runs_nothing() {
    let p = pack().await;
    let old = unique("pgw_copyq");
    old_table(&old).await;
    let mut s = session(&p).await;
    let t = unique("pgw_copyq_tmp");
    assert!(q(&mut s, &format!("CREATE TEMP TABLE {t} (a int)"))
        .await
        .ok());
    send(&mut s, &query(&format!("COPY {t} FROM STDIN"))).await;
    until(&mut s, b'G').await;
    let mut b = msg(b'd', b"1\n");
    // PostgreSQL takes this Query as bad COPY data and ends the connection (had the COPY
    // failed already, it would have run it: pgwarden could not tell which answer is whose).
    b.extend(query(&format!("CREATE TABLE {old} (a int)")));
    b.extend(query(&format!("DROP TABLE {old}")));
    send(&mut s, &b).await;
    let e = within(
        BOUND,
        "the end",
        crate::support::raw::read_error_then_eof(&mut s),
    )
    .await
    .expect("an error");
    assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    assert!(exists(&old).await);
    assert_eq!(rows(&old).await, 2);
    cleanup(&format!("DROP TABLE IF EXISTS {old}")).await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_statements_in_hostile_orderings_keep_the_session_in_step() {
    let p = pack().await;
    let old = unique("pgw_ref");
    old_table(&old).await;
    let mut s = session(&p).await;
    // A refused Parse, then a Query and a refused Bind behind it before Sync: one error,
    // everything skipped, one ReadyForQuery.
    let mut b = parse("r1", &format!("DROP TABLE {old}"));
    b.extend(query("BEGIN"));
    b.extend(bind("", "r1"));
    b.extend(execute("", 0));
    b.extend(sync());
    send(&mut s, &b).await;
    let a = answer(&mut s).await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(a.errors.len(), 1, "{a:?}");
    assert_eq!(a.status, b'I');
    // Inside a transaction: a refused Query aborts it, as PostgreSQL's own error would.
    assert_eq!(q(&mut s, "BEGIN").await.status, b'T');
    let a = q(&mut s, &format!("TRUNCATE {old}")).await;
    assert!(a.refused());
    assert_eq!(a.status, b'E');
    still_in_step(&mut s, b'E').await;
    assert_eq!(q(&mut s, "ROLLBACK").await.status, b'I');
    failed_create_is_not_credited(&mut s, &old).await;
    still_in_step(&mut s, b'I').await;
    assert_eq!(rows(&old).await, 2);
    cleanup(&format!("DROP TABLE IF EXISTS {old}")).await;
    p.proxy.stop().await;
}

// ---- 3. The created-in-session exemption --------------------------------------------------

/// Only DROP and TRUNCATE of tables the session did not create are refused: ALTER is free.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_parent_with_an_old_partition_or_child_is_not_exempt() {
    let p = pack_with(DROP_RULES).await;
    let mut s = session(&p).await;
    // Across statements: attach, then truncate and drop the parent.
    let (np, old) = (unique("pgw_np"), unique("pgw_part"));
    old_table(&old).await;
    let a = q(
        &mut s,
        &format!("CREATE TABLE {np} (a int) PARTITION BY LIST (a)"),
    )
    .await;
    assert!(a.ok(), "{a:?}");
    let a = q(
        &mut s,
        &format!("ALTER TABLE {np} ATTACH PARTITION {old} FOR VALUES IN (1, 2)"),
    )
    .await;
    assert!(a.ok(), "{a:?}");
    assert!(q(&mut s, &format!("TRUNCATE {np}")).await.refused());
    assert!(q(&mut s, &format!("DROP TABLE {np}")).await.refused());
    assert_eq!(rows(&old).await, 2);
    // In one text: created, attached and truncated at once.
    let (np2, old2) = (unique("pgw_np"), unique("pgw_part"));
    old_table(&old2).await;
    let a = q(
        &mut s,
        &format!(
            "CREATE TABLE {np2} (a int) PARTITION BY LIST (a); ALTER TABLE {np2} ATTACH PARTITION {old2} FOR VALUES IN (1, 2); TRUNCATE {np2}"
        ),
    )
    .await;
    assert!(a.refused(), "{a:?}");
    assert_eq!(rows(&old2).await, 2);
    // An old table made a child of a new one.
    let (parent, child) = (unique("pgw_parent"), unique("pgw_child"));
    old_table(&child).await;
    assert!(q(&mut s, &format!("CREATE TABLE {parent} (a int)"))
        .await
        .ok());
    assert!(q(&mut s, &format!("ALTER TABLE {child} INHERIT {parent}"))
        .await
        .ok());
    assert!(q(&mut s, &format!("TRUNCATE {parent}")).await.refused());
    assert!(q(&mut s, &format!("DROP TABLE {parent} CASCADE"))
        .await
        .refused());
    assert_eq!(rows(&child).await, 2);
    // CREATE TABLE ... PARTITION OF a new parent: all new, exempt.
    let (fresh, part) = (unique("pgw_fresh"), unique("pgw_fresh_p"));
    let a = q(
        &mut s,
        &format!(
            "CREATE TABLE {fresh} (a int) PARTITION BY LIST (a); CREATE TABLE {part} PARTITION OF {fresh} FOR VALUES IN (1)"
        ),
    )
    .await;
    assert!(a.ok(), "{a:?}");
    assert!(q(&mut s, &format!("TRUNCATE {fresh}")).await.ok());
    assert!(q(&mut s, &format!("DROP TABLE {fresh}")).await.ok());
    cleanup(&format!(
        "DROP TABLE IF EXISTS {np} CASCADE; DROP TABLE IF EXISTS {old}; DROP TABLE IF EXISTS {np2} CASCADE; DROP TABLE IF EXISTS {old2}; DROP TABLE IF EXISTS {parent} CASCADE; DROP TABLE IF EXISTS {child}"
    ))
    .await;
    p.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exemption_follows_the_table_not_the_spelling() {
    let p = pack_with(DROP_RULES).await;
    let mut s = session(&p).await;
    // An old table renamed into the name of a dropped new one.
    let (n, old) = (unique("pgw_n"), unique("pgw_old"));
    old_table(&old).await;
    assert!(q(&mut s, &format!("CREATE TABLE {n} (a int)")).await.ok());
    assert!(q(&mut s, &format!("DROP TABLE {n}")).await.ok());
    assert!(q(&mut s, &format!("ALTER TABLE {old} RENAME TO {n}"))
        .await
        .ok());
    assert!(q(&mut s, &format!("DROP TABLE {n}")).await.refused());
    assert_eq!(rows(&n).await, 2);
    // "Q" is not q.
    let lower = unique("pgw_case");
    let upper = lower.to_uppercase();
    old_table(&lower).await;
    assert!(q(&mut s, &format!("CREATE TABLE \"{upper}\" (a int)"))
        .await
        .ok());
    assert!(q(&mut s, &format!("DROP TABLE {upper}")).await.refused());
    assert!(q(&mut s, &format!("DROP TABLE \"{lower}\""))
        .await
        .refused());
    assert!(q(&mut s, &format!("DROP TABLE \"{upper}\"")).await.ok());
    assert_eq!(rows(&lower).await, 2);
    // Created through a schema that is then dropped: the name now means public's table.
    let (schema, t) = (unique("pgw_sch"), unique("pgw_t"));
    old_table(&format!("public.{t}")).await;
    direct()
        .await
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    assert!(q(&mut s, &format!("SET search_path = {schema}, public"))
        .await
        .ok());
    // Under a one-schema search_path, both spellings name the new table (and forgetting
    // one forgets the other): an old table renamed into the name is not exempt.
    let (one, x, oldx) = (unique("pgw_one"), unique("pgw_x"), unique("pgw_oldx"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {one}; CREATE TABLE {one}.{oldx} (a int); INSERT INTO {one}.{oldx} VALUES (1)"
        ))
        .await
        .unwrap();
    assert!(q(&mut s, &format!("SET search_path = {one}")).await.ok());
    assert!(q(&mut s, &format!("CREATE TABLE {x} (a int)")).await.ok());
    assert!(q(&mut s, &format!("TRUNCATE {one}.{x}")).await.ok());
    assert!(q(&mut s, &format!("DROP TABLE {one}.{x}")).await.ok());
    assert!(q(&mut s, &format!("ALTER TABLE {oldx} RENAME TO {x}"))
        .await
        .ok());
    assert!(q(&mut s, &format!("DROP TABLE {x}")).await.refused());
    assert!(q(&mut s, &format!("DROP TABLE {one}.{x}")).await.refused());
    assert_eq!(rows(&format!("{one}.{x}")).await, 1);
    cleanup(&format!("DROP SCHEMA {one} CASCADE")).await;
    assert!(q(&mut s, &format!("SET search_path = {schema}, public"))
        .await
        .ok());
    assert!(q(&mut s, &format!("CREATE TABLE {t} (a int)")).await.ok());
    assert!(
        q(&mut s, &format!("TRUNCATE {t}")).await.ok(),
        "its own, exempt"
    );
    assert!(q(&mut s, &format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .ok());
    assert!(q(&mut s, &format!("TRUNCATE {t}")).await.refused());
    assert_eq!(rows(&format!("public.{t}")).await, 2);
    still_in_step(&mut s, b'I').await;
    cleanup(&format!(
        "DROP TABLE IF EXISTS {n}; DROP TABLE IF EXISTS {lower}; DROP TABLE IF EXISTS public.{t}; DROP SCHEMA IF EXISTS {schema} CASCADE"
    ))
    .await;
    p.proxy.stop().await;
}

// ---- 4. Memory a client controls ----------------------------------------------------------

/// The pgwarden binary on its own (so its memory is its own), with `DROP_RULES`.
struct Binary {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start() -> Binary {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("rules.toml"), DROP_RULES).unwrap();
        let cfg = dir.path().join("pgwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\n[state]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n",
                policies.display(),
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("PGWARDEN_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("pgwarden serving") {
                    if let Some(rest) = line.split("listen=").nth(1) {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("pgwarden logs its address")
            .parse()
            .unwrap();
        Binary {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Resident memory, from /proc/<pid>/status.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    async fn session(&self) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;
        s
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A statement of about `size` bytes, distinct by `n` (in a literal, so the inspection
/// cache, which another part of pgwarden bounds, keeps one inspection for all of them).
fn big_select(n: usize, size: usize) -> String {
    format!("SELECT '{n:08}{}'", "x".repeat(size))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_memory_is_bounded_in_bytes() {
    const MIB: usize = 1 << 20;
    let b = Binary::start();
    let mut s = b.session().await;
    // Warm up: one large statement through, prepared and closed, so buffers and the
    // allocator have seen one.
    assert!(prepare(&mut s, "warm", &big_select(0, MIB)).await.ok());
    let mut c = close_statement("warm");
    c.extend(sync());
    send(&mut s, &c).await;
    assert!(answer(&mut s).await.ok());
    let before = b.rss_kib();
    // 200 distinct 1 MB named statements: pgwarden remembers at most 16 MiB of them (to
    // decide them again at Bind); the rest are refused with 54000, the session usable.
    let (mut kept, mut refused) = (Vec::new(), 0);
    for i in 0..200 {
        let a = prepare(&mut s, &format!("big{i}"), &big_select(i + 1, MIB)).await;
        if a.ok() {
            kept.push(i);
        } else {
            assert_eq!(a.errors, vec!["54000".to_owned()], "{a:?}");
            assert!(a.messages[0].contains("limit"), "{a:?}");
            refused += 1;
        }
    }
    let after = b.rss_kib();
    // The bound: the 16 MiB budget, plus a 1 MB frame held for inspection and its parse,
    // plus allocator slack. Remembering all of them would take over 200 MiB.
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "pgwarden grew by {grown_mib} MiB (from {before} KiB to {after} KiB)"
    );
    assert!(
        (14..=16).contains(&kept.len()),
        "about 16 MiB kept: {}",
        kept.len()
    );
    assert_eq!(refused, 200 - kept.len());
    // What was kept still runs; closing frees room for more.
    assert!(run(&mut s, &format!("big{}", kept[0])).await.ok());
    let mut c = Vec::new();
    for i in &kept {
        c.extend(close_statement(&format!("big{i}")));
    }
    c.extend(sync());
    send(&mut s, &c).await;
    assert!(answer(&mut s).await.ok());
    assert!(prepare(&mut s, "again", &big_select(999, MIB)).await.ok());
    assert!(run(&mut s, "again").await.ok());
    // Thousands of small named statements are fine, and cost little.
    for chunk in 0..10 {
        let mut m = Vec::new();
        for i in 0..300 {
            m.extend(parse(&format!("small{chunk}_{i}"), &format!("SELECT {i}")));
        }
        m.extend(sync());
        send(&mut s, &m).await;
        let a = answer(&mut s).await;
        assert!(a.ok(), "{a:?}");
    }
    assert!(run(&mut s, "small9_299").await.ok());
    let end = b.rss_kib();
    assert!(
        end.saturating_sub(before) / 1024 < 64,
        "from {before} KiB to {end} KiB"
    );
    // Refused messages sent without Sync keep nothing per message.
    let mut m = Vec::new();
    for _ in 0..20_000 {
        m.extend(parse("", "DROP TABLE pgw_refused_marker"));
    }
    m.extend(sync());
    send(&mut s, &m).await;
    let a = answer(&mut s).await;
    assert_eq!(a.errors.len(), 1, "one error, the rest skipped");
    assert!(a.refused());
    still_in_step(&mut s, b'I').await;
}
