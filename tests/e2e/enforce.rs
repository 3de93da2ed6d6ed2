//! Enforcement on the wire: refusal errors (42501, rule, file, hint), server state after a
//! refusal exactly as if PostgreSQL had raised it (transactions, savepoints, implicit
//! transactions, pipelines), monitor mode, and the same decision from `pgwarden check`.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{self, login, msg, read_msg};
use crate::support::{
    direct, psql, shipped_policies, sqlstate, unique, via, within, Proxy, PG_DB, PG_USER,
};

const BOUND: Duration = Duration::from_secs(60);

/// A proxy with the shipped policy pack, production environment.
async fn pack() -> Proxy {
    Proxy::start_with(|c| c.policies = shipped_policies()).await
}

async fn table(rows: i32) -> String {
    let t = unique("enf");
    let d = direct().await;
    d.batch_execute(&format!(
        "CREATE TABLE {t} (id int); INSERT INTO {t} SELECT generate_series(1, {rows})"
    ))
    .await
    .unwrap();
    t
}

async fn count(t: &str) -> i64 {
    direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn exists(t: &str) -> bool {
    direct()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
        .await
        .unwrap()
        .get(0)
}

async fn drop_direct(t: &str) {
    direct()
        .await
        .batch_execute(&format!("DROP TABLE IF EXISTS {t}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_names_rule_file_and_way_through() {
    let proxy = pack().await;
    let t = table(3).await;
    let c = via(&proxy).await;
    let e = c
        .simple_query(&format!("DROP TABLE {t}"))
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message()
            .starts_with("pgwarden: destructive.drop-table: "),
        "{}",
        db.message()
    );
    assert!(db.detail().unwrap().contains(".toml"), "{:?}", db.detail());
    assert!(
        db.hint().unwrap().contains("pgwarden.ticket"),
        "{:?}",
        db.hint()
    );
    assert!(exists(&t).await);
    // The session goes on.
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    // Extended protocol: refused at Parse, same error.
    let e = c
        .execute(&format!("DELETE FROM {t}"), &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    assert_eq!(count(&t).await, 3);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_in_a_transaction_aborts_it_like_postgres() {
    let proxy = pack().await;
    let t = table(0).await;
    let c = via(&proxy).await;
    c.batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let e = c.simple_query(&format!("TRUNCATE {t}")).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    // The transaction is aborted: further statements fail with 25P02, COMMIT rolls back.
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("25P02"));
    let msgs = c.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        &msgs[0],
        tokio_postgres::SimpleQueryMessage::CommandComplete(_)
    ));
    assert_eq!(count(&t).await, 0, "the insert must be gone");

    // Savepoints: ROLLBACK TO works after a refusal, and what came before it commits.
    c.batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES (1); SAVEPOINT s"))
        .await
        .unwrap();
    let e = c
        .simple_query(&format!("DELETE FROM {t}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    c.batch_execute(&format!(
        "ROLLBACK TO SAVEPOINT s; INSERT INTO {t} VALUES (2); COMMIT"
    ))
    .await
    .unwrap();
    assert_eq!(count(&t).await, 2);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_statement_query_with_a_refused_statement_runs_none_of_it() {
    let proxy = pack().await;
    let t = table(0).await;
    let c = via(&proxy).await;
    let e = c
        .simple_query(&format!(
            "INSERT INTO {t} VALUES (1); DELETE FROM {t}; INSERT INTO {t} VALUES (2)"
        ))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    assert_eq!(count(&t).await, 0);
    // Not in a transaction afterwards.
    c.batch_execute(&format!("INSERT INTO {t} VALUES (3)"))
        .await
        .unwrap();
    assert_eq!(count(&t).await, 1);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_with_a_refused_statement_in_the_middle() {
    let proxy = pack().await;
    let t = table(5).await;
    let c = via(&proxy).await;
    let q_count = format!("SELECT count(*) FROM {t}");
    let q_delete = format!("DELETE FROM {t}");
    let (a, b, d) = tokio::join!(
        c.query_one(&q_count, &[]),
        c.execute(&q_delete, &[]),
        c.query_one(&q_count, &[]),
    );
    assert_eq!(a.unwrap().get::<_, i64>(0), 5);
    assert_eq!(sqlstate(&b.unwrap_err()).as_deref(), Some("42501"));
    assert_eq!(d.unwrap().get::<_, i64>(0), 5);

    // Raw extended protocol: P(refused) B E S then P B E S in one write: the first batch
    // fails at Parse and skips to Sync; the second runs.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;
    let parse = |sql: &str| {
        let mut b = b"\0".to_vec();
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(b"\0\0\0");
        msg(b'P', &b)
    };
    let bind = msg(b'B', b"\0\0\0\0\0\0\0\0");
    let exec = msg(b'E', b"\0\0\0\0\0");
    let sync = msg(b'S', b"");
    let mut bytes = parse(&q_delete);
    bytes.extend(&bind);
    bytes.extend(&exec);
    bytes.extend(&sync);
    bytes.extend(parse(&q_count));
    bytes.extend(&bind);
    bytes.extend(&exec);
    bytes.extend(&sync);
    s.write_all(&bytes).await.unwrap();
    let mut tags = Vec::new();
    within(BOUND, "two batches", async {
        let mut zs = 0;
        while zs < 2 {
            let m = read_msg(&mut s).await.unwrap();
            if m.tag == b'E' {
                assert_eq!(m.sqlstate().as_deref(), Some("42501"));
            }
            zs += (m.tag == b'Z') as i32;
            tags.push(m.tag);
        }
    })
    .await;
    assert_eq!(tags, vec![b'E', b'Z', b'1', b'2', b'D', b'C', b'Z']);
    assert_eq!(count(&t).await, 5);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_corpus_is_refused() {
    let proxy = pack().await;
    let t = table(2).await;
    let c = via(&proxy).await;
    let corpus = [
        format!("COPY {t} FROM STDIN;\nDROP TABLE {t}"),
        format!("/* harmless */ dRoP /* still */ TaBlE {t}"),
        format!("DROP TABLE \"{t}\""),
        format!("DROP TABLE U&\"{}\"", t.replace('_', "\\005f")),
        format!("EXPLAIN ANALYZE DELETE FROM {t}"),
        format!("WITH d AS (DELETE FROM {t} RETURNING *) SELECT * FROM d"),
        format!("COPY (DELETE FROM {t} RETURNING *) TO STDOUT"),
        format!("DO $$ BEGIN EXECUTE 'DROP TABLE {t}'; END $$"),
        format!("DO $body$ BEGIN DELETE FROM {t}; END $body$"),
        format!("UPDATE {t} SET id = 0 WHERE 1 = 1"),
        format!("DELETE FROM {t} WHERE id = id OR true"),
        format!("SELECT E'\\'' ; DROP TABLE {t}"),
        "SELECT set_config('role', 'postgres', false)".to_owned(),
        "SET standard_conforming_strings = off".to_owned(),
        "SET client_encoding = 'SJIS'".to_owned(),
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        "SELEC 1".to_owned(),
    ];
    for sql in &corpus {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(
            sqlstate(&e).as_deref(),
            Some("42501"),
            "not refused: {}",
            &sql[..sql.len().min(80)]
        );
    }
    // PREPARE of a refused statement is refused; EXECUTE of anything not prepared fails.
    let e = c
        .simple_query(&format!("PREPARE p AS DELETE FROM {t}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    assert_eq!(count(&t).await, 2);
    assert!(exists(&t).await);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_role_option_is_decided_like_set_role() {
    let proxy = pack().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&raw::startup_message(
        0x0003_0000,
        &[
            ("user", PG_USER),
            ("database", PG_DB),
            ("options", "-c role=pg_read_server_files"),
        ],
    ))
    .await
    .unwrap();
    let e = within(BOUND, "refused", raw::read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("42501"), "{e:?}");
    assert_eq!(e.field(b'V').as_deref(), Some("FATAL"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_payload_after_standard_conforming_strings_off_cannot_pass() {
    // SET standard_conforming_strings = off is refused, so the server keeps reading strings
    // the way pgwarden does; the payload then parses as the harmless literal it is.
    let proxy = pack().await;
    let t = table(1).await;
    let c = via(&proxy).await;
    assert!(c
        .simple_query("SET standard_conforming_strings = off")
        .await
        .is_err());
    let rows = c
        .simple_query(&format!("SELECT 'a\\'; DROP TABLE {t}; --'"))
        .await;
    // With conforming strings this is two statements, and the DROP is refused.
    assert_eq!(sqlstate(&rows.unwrap_err()).as_deref(), Some("42501"));
    assert!(exists(&t).await);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_reports_and_refuses_nothing() {
    let proxy = Proxy::start_with(|c| {
        c.policies = shipped_policies();
        c.mode = pgwarden::policy::Mode::Monitor;
    })
    .await;
    let t = table(2).await;
    let c = via(&proxy).await;
    c.batch_execute(&format!("DELETE FROM {t}")).await.unwrap();
    assert_eq!(count(&t).await, 0);
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    assert!(!exists(&t).await);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_the_refusal() {
    let proxy = pack().await;
    let t = table(1).await;
    let conn = proxy.dsn(PG_USER, PG_DB);
    let sql = format!("DELETE FROM {t};\nSELECT 'after';\n");
    let (status, stdout, stderr) =
        tokio::task::block_in_place(|| psql(&conn, &["-v", "ON_ERROR_STOP=0"], Some(&sql)));
    assert_eq!(status, 0);
    assert!(
        stderr.contains("ERROR:  pgwarden: dml.delete-without-where"),
        "{stderr}"
    );
    assert!(stderr.contains("HINT:"), "{stderr}");
    assert!(stdout.contains("after"));
    assert_eq!(count(&t).await, 1);
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_wire_decide_alike() {
    let proxy = pack().await;
    let t = table(1).await;
    let c = via(&proxy).await;
    let statements = [
        format!("SELECT * FROM {t}"),
        format!("DELETE FROM {t}"),
        format!("DELETE FROM {t} WHERE id = 7"),
        format!("UPDATE {t} SET id = 1"),
        format!("TRUNCATE {t}"),
        format!("DROP TABLE {t}"),
        "ALTER SYSTEM SET work_mem = '1GB'".to_owned(),
        format!("COPY {t} TO PROGRAM 'cat'"),
        "SELECT pg_read_file('/etc/passwd')".to_owned(),
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC".to_owned(),
        "SET ROLE postgres".to_owned(),
        "DO $$ BEGIN RAISE NOTICE 'x'; END $$".to_owned(),
        "SELEC 1".to_owned(),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, sql) in statements.iter().enumerate() {
        let f = dir.path().join(format!("{i}.sql"));
        std::fs::write(&f, sql).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["check", "--policies"])
            .arg(shipped_policies())
            .arg(&f)
            .output()
            .unwrap();
        let offline_refused = match out.status.code() {
            Some(0) => false,
            Some(1) => true,
            other => panic!(
                "check exited {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        // On the wire, inside a transaction rolled back afterwards, so nothing sticks.
        c.batch_execute("BEGIN").await.unwrap();
        let wire = c.simple_query(sql).await;
        let wire_refused = matches!(&wire, Err(e) if sqlstate(e).as_deref() == Some("42501"));
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(
            offline_refused, wire_refused,
            "{sql}: check and wire disagree ({wire:?})"
        );
    }
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_messages_are_decided_too() {
    // psql's \lo_import speaks the FunctionCall (fast-path) protocol.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fastpath.toml"),
        r#"[[rule]]
id = "test.no-fastpath"
description = "refuse every FunctionCall message"
action = "block"
message = "fast-path function calls are not allowed"
[rule.match]
tags = ["FUNCTION CALL"]
"#,
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let proxy = Proxy::start_with(|c| c.policies = d.clone()).await;
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, vec![7u8; 1000]).unwrap();
    let conn = proxy.dsn(PG_USER, PG_DB);
    let script = format!(
        "BEGIN;\n\\lo_import '{}'\nSELECT 'after';\nCOMMIT;\n",
        blob.display()
    );
    let (_, stdout, stderr) = tokio::task::block_in_place(|| psql(&conn, &[], Some(&script)));
    assert!(
        stderr.contains("pgwarden: test.no-fastpath"),
        "{stdout}{stderr}"
    );
    // The refusal aborted the transaction exactly as a server error would.
    assert!(
        stderr.contains("current transaction is aborted"),
        "{stderr}"
    );
    assert!(stdout.contains("ROLLBACK"), "{stdout}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_all_decided() {
    // In SJIS the byte 0x5c (backslash) can be the second byte of a character, so a reader
    // that does not decode SJIS exactly can see a string end where the server does not.
    // Every top-level startup parameter is a setting PostgreSQL applies; options flags may be
    // clustered the getopt way; a repeated parameter is ambiguous.
    let proxy = pack().await;
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("client_encoding", "SJIS")], "42501"),
        (&[("role", "pg_read_server_files")], "42501"),
        (&[("standard_conforming_strings", "off")], "42501"),
        (&[("options", "-bc role=pg_read_server_files")], "42501"),
        (&[("database", "postgres")], "08P01"),
    ];
    for (extra, code) in cases {
        let mut params = vec![("user", PG_USER), ("database", PG_DB)];
        params.extend_from_slice(extra);
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&raw::startup_message(0x0003_0000, &params))
            .await
            .unwrap();
        let e = within(BOUND, "refused", raw::read_error_then_eof(&mut s))
            .await
            .expect("refused");
        assert_eq!(e.sqlstate().as_deref(), Some(code), "{extra:?}: {e:?}");
        assert_eq!(e.field(b'V').as_deref(), Some("FATAL"));
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_calls_other_than_large_objects_are_refused() {
    let proxy = pack().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;
    // FunctionCall of set_config (OID 2078) with three text arguments.
    let mut body = 2078u32.to_be_bytes().to_vec();
    body.extend(1i16.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    body.extend(3i16.to_be_bytes());
    for a in ["standard_conforming_strings", "off", "false"] {
        body.extend((a.len() as i32).to_be_bytes());
        body.extend(a.as_bytes());
    }
    body.extend(0i16.to_be_bytes());
    s.write_all(&msg(b'F', &body)).await.unwrap();
    let e = within(BOUND, "refusal", raw::read_until(&mut s, b'E'))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("42501"), "{e:?}");
    within(BOUND, "ready", raw::read_until(&mut s, b'Z'))
        .await
        .unwrap();
    s.write_all(&raw::query("SHOW standard_conforming_strings"))
        .await
        .unwrap();
    let row = within(BOUND, "row", raw::read_until(&mut s, b'D'))
        .await
        .unwrap();
    assert!(row.body.ends_with(b"on"), "{row:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_text_is_read_both_ways_until_the_session_settles() {
    // A function changes standard_conforming_strings; the payload right behind it in the same
    // write is read by the server with the new setting. pgwarden reads it both ways.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("drop.toml"),
        "[[rule]]\nid = \"test.drop\"\ndescription = \"d\"\naction = \"block\"\nmessage = \"no drops\"\n[rule.match]\ntags = [\"DROP TABLE\"]\n",
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let proxy = Proxy::start_with(|c| c.policies = d.clone()).await;
    let t = table(1).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;
    s.write_all(&raw::query(
        "CREATE FUNCTION pg_temp.nonconforming() RETURNS void LANGUAGE sql AS $$ SET standard_conforming_strings = off $$",
    ))
    .await
    .unwrap();
    within(BOUND, "created", raw::read_until(&mut s, b'Z'))
        .await
        .unwrap();
    let mut bytes = raw::query("SELECT pg_temp.nonconforming()");
    bytes.extend(raw::query(&format!("SELECT 'a\\''; DROP TABLE {t}; --'")));
    s.write_all(&bytes).await.unwrap();
    let mut codes = Vec::new();
    within(BOUND, "both answers", async {
        let mut zs = 0;
        while zs < 2 {
            let m = read_msg(&mut s).await.unwrap();
            if m.tag == b'E' {
                codes.push(m.sqlstate().unwrap());
            }
            zs += (m.tag == b'Z') as i32;
        }
    })
    .await;
    assert_eq!(codes, vec!["42501"]);
    assert!(
        exists(&t).await,
        "the DROP hidden behind the setting change ran"
    );
    drop_direct(&t).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_created_in_the_session_are_exempt() {
    let proxy = pack().await;
    let old = table(1).await;
    let c = via(&proxy).await;
    let scratch = unique("scratch");
    // A temporary table, then an index on it and its removal: no ticket, no hold.
    c.batch_execute(&format!("CREATE TEMP TABLE {scratch} (id int primary key)"))
        .await
        .unwrap();
    c.batch_execute(&format!("CREATE INDEX ON {scratch} (id)"))
        .await
        .unwrap();
    c.batch_execute(&format!("DROP TABLE {scratch}"))
        .await
        .unwrap();
    // The same statements against a table that existed before are refused.
    let e = c
        .batch_execute(&format!("CREATE INDEX ON {old} (id)"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("lock.create-index-not-concurrent"));
    let e = c
        .batch_execute(&format!("DROP TABLE {old}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    drop_direct(&old).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_counts_only_when_it_happened() {
    let proxy = pack().await;
    let old = table(1).await;
    let c = via(&proxy).await;
    let refused = |r: Result<(), tokio_postgres::Error>| matches!(&r, Err(e) if sqlstate(e).as_deref() == Some("42501"));
    // IF NOT EXISTS on an existing table created nothing.
    c.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {old} (id int)"))
        .await
        .unwrap();
    assert!(refused(c.batch_execute(&format!("DROP TABLE {old}")).await));
    // A CREATE that failed created nothing.
    assert!(c
        .batch_execute(&format!("CREATE TABLE {old} (id int)"))
        .await
        .is_err());
    assert!(refused(c.batch_execute(&format!("DROP TABLE {old}")).await));
    // A creation rolled back created nothing.
    let gone = unique("rolled_back");
    c.batch_execute(&format!("BEGIN; CREATE TABLE {gone} (id int); ROLLBACK"))
        .await
        .unwrap();
    // A temporary table shadowing an old one: the first DROP removes the temporary table,
    // the second would drop the old one and is refused.
    c.batch_execute(&format!("CREATE TEMP TABLE {old} (id int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("DROP TABLE {old}")).await.unwrap();
    assert!(refused(c.batch_execute(&format!("DROP TABLE {old}")).await));
    assert!(exists(&old).await);
    // A creation committed in a transaction is exempt afterwards.
    let fresh = unique("committed");
    c.batch_execute(&format!("BEGIN; CREATE TABLE {fresh} (id int)"))
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute(&format!("DROP TABLE {fresh}"))
        .await
        .unwrap();
    drop_direct(&old).await;
    proxy.stop().await;
}
