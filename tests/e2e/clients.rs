//! Real clients through the proxy: tokio-postgres (simple, extended, pipelining, COPY,
//! LISTEN/NOTIFY, cancel, large rows) and psql scripts compared with direct runs.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use crate::support::{self, direct, psql, sqlstate, unique, via, within, Proxy, PG_DB, PG_USER};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_match_direct() {
    let proxy = Proxy::start().await;
    let c = via(&proxy).await;
    let d = direct().await;
    let sql = "SELECT 1 AS a, 'x'::text AS b; SELECT generate_series(1,3) AS n";
    let render = |msgs: Vec<SimpleQueryMessage>| {
        msgs.into_iter()
            .map(|m| match m {
                SimpleQueryMessage::Row(r) => (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect::<Vec<_>>()
                    .join(","),
                SimpleQueryMessage::CommandComplete(n) => format!("C{n}"),
                _ => "other".into(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        render(c.simple_query(sql).await.unwrap()),
        render(d.simple_query(sql).await.unwrap())
    );
    let row = c
        .query_one("SELECT $1::int + 1, $2::text", &[&41i32, &"hi"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, &str>(1), "hi");
    let stmt = c.prepare("SELECT $1::bigint * 2").await.unwrap();
    for i in 0..10i64 {
        assert_eq!(
            c.query_one(&stmt, &[&i]).await.unwrap().get::<_, i64>(0),
            i * 2
        );
    }
    // The server's own errors come through unchanged.
    let e1 = c.simple_query("SELECT 1/0").await.unwrap_err();
    let e2 = d.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e1).as_deref(), Some("22012"));
    assert_eq!(
        e1.as_db_error().unwrap().message(),
        e2.as_db_error().unwrap().message()
    );
    // Empty query and a cursor.
    c.simple_query("").await.unwrap();
    c.batch_execute("BEGIN; DECLARE cur CURSOR FOR SELECT generate_series(1,10) AS g")
        .await
        .unwrap();
    let rows = c.query("FETCH 4 FROM cur", &[]).await.unwrap();
    assert_eq!(rows.len(), 4);
    c.batch_execute("COMMIT").await.unwrap();
    // Still usable after an error.
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_1000_queries_with_an_error_in_the_middle() {
    let proxy = Proxy::start().await;
    let c = via(&proxy).await;
    let stmt = c.prepare("SELECT 10 / $1::int").await.unwrap();
    let futs = (0..1000i32).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move {
            let divisor = if i == 500 { 0 } else { 1 };
            c.query_one(stmt, &[&divisor])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = within(LONG, "pipeline", futures_util::future::join_all(futs)).await;
    for (i, r) in results.iter().enumerate() {
        if i == 500 {
            assert_eq!(sqlstate(r.as_ref().unwrap_err()).as_deref(), Some("22012"));
        } else {
            assert_eq!(*r.as_ref().unwrap(), 10, "query {i}");
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_100_mb() {
    let proxy = Proxy::start().await;
    let c = via(&proxy).await;
    let table = unique("copy_big");
    c.batch_execute(&format!("CREATE TABLE {table} (id int, payload text)"))
        .await
        .unwrap();
    let line_payload = "y".repeat(1000);
    let rows = 100_000usize; // ~100 MB
    let sink = c
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..rows {
        chunk.push_str(&format!("{i}\t{line_payload}\n"));
        if chunk.len() > 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sink.send(Bytes::from(chunk)).await.unwrap();
    let n = within(LONG, "copy in", sink.finish()).await.unwrap();
    assert_eq!(n as usize, rows);

    let stream = c
        .copy_out(&format!("COPY {table} TO STDOUT"))
        .await
        .unwrap();
    let total = within(
        LONG,
        "copy out",
        stream.try_fold(0usize, |acc, b| async move { Ok(acc + b.len()) }),
    )
    .await
    .unwrap();
    assert!(total > 100_000_000, "copied out {total} bytes");

    // CopyFail: a sink dropped without finishing aborts the COPY; the session goes on.
    {
        let sink = c
            .copy_in(&format!("COPY {table} FROM STDIN"))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\tz\n")).await.unwrap();
    }
    let count: i64 = c
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as usize, rows);
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_row_each_way() {
    let proxy = Proxy::start().await;
    let c = via(&proxy).await;
    let size = 100 * 1024 * 1024;
    let row = within(
        LONG,
        "100 MB row out",
        c.query_one("SELECT repeat('x', $1)", &[&(size as i32)]),
    )
    .await
    .unwrap();
    let s: &str = row.get(0);
    assert_eq!(s.len(), size);
    // And in: a 100 MB parameter (a streamed Bind).
    let big = "z".repeat(size);
    let row = within(
        LONG,
        "100 MB row in",
        c.query_one("SELECT length($1::text)", &[&big]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0) as usize, size);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reaches_an_idle_client_and_notices_pass() {
    let proxy = Proxy::start().await;
    let (client, mut conn) = tokio_postgres::connect(&proxy.dsn(PG_USER, PG_DB), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            let _ = tx.send(m);
        }
    });
    let channel = unique("chan");
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();
    let other = direct().await;
    other
        .batch_execute(&format!("NOTIFY {channel}, 'payload-1'"))
        .await
        .unwrap();
    let (mut saw_notice, mut saw_notify) = (false, false);
    within(Duration::from_secs(30), "notice and notification", async {
        while !(saw_notice && saw_notify) {
            match rx.recv().await.expect("connection open") {
                AsyncMessage::Notice(n) => {
                    assert_eq!(n.message(), "hello from plpgsql");
                    saw_notice = true;
                }
                AsyncMessage::Notification(n) => {
                    assert_eq!(n.channel(), channel);
                    assert_eq!(n.payload(), "payload-1");
                    saw_notify = true;
                }
                _ => {}
            }
        }
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_pg_sleep_returns_57014_and_session_lives() {
    let proxy = Proxy::start().await;
    let c = via(&proxy).await;
    let token = c.cancel_token();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(30)").await;
        (c, r)
    });
    // Wait until the server is really running the sleep, then cancel through the proxy.
    let d = direct().await;
    support::eventually(Duration::from_secs(20), "pg_sleep to start", || {
        let d = &d;
        async move {
            let row = d
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'", &[&pid])
                .await
                .unwrap();
            (row.get::<_, i64>(0) == 1).then_some(())
        }
    })
    .await;
    token.cancel_query(NoTls).await.unwrap();
    // 20 s bounds a hang; the sleep itself would take 30.
    let (c, r) = within(Duration::from_secs(20), "cancelled query", sleeper)
        .await
        .unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()).as_deref(), Some("57014"));
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_output_is_identical_to_direct() {
    let proxy = Proxy::start().await;
    let table = unique("psql_t");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in.tsv");
    std::fs::write(&data, "1\tone\n2\ttwo\n3\tthree\n").unwrap();
    let out = dir.path().join("out.tsv");
    let script = format!(
        r#"CREATE TABLE {table} (id int primary key, name text not null);
\copy {table} FROM '{data}'
\d {table}
SELECT * FROM {table} ORDER BY id;
DO $$ BEGIN RAISE NOTICE 'rows: %', (SELECT count(*) FROM {table}); END $$;
BEGIN;
INSERT INTO {table} VALUES (4, 'four');
SELECT 1/0;
SELECT 'not run';
ROLLBACK;
SELECT count(*) FROM {table};
\copy (SELECT * FROM {table} ORDER BY id) TO '{out}'
SELECT 'done';
DROP TABLE {table};
"#,
        data = data.display(),
        out = out.display()
    );
    let script_path = dir.path().join("script.sql");
    std::fs::write(&script_path, &script).unwrap();
    let run = |port: u16| {
        let conn = format!("host=127.0.0.1 port={port} user={PG_USER} dbname={PG_DB}");
        let r = psql(&conn, &["-f", script_path.to_str().unwrap()], None);
        let copied = std::fs::read_to_string(&out).unwrap();
        (r, copied)
    };
    let port = proxy.port();
    let via_proxy = tokio::task::block_in_place(|| run(port));
    let directly = tokio::task::block_in_place(|| run(support::PG_PORT));
    assert!(via_proxy.0 .1.contains("rows: 3") || via_proxy.0 .2.contains("rows: 3"));
    assert!(
        via_proxy.0 .2.contains("division by zero"),
        "{:?}",
        via_proxy.0
    );
    assert_eq!(via_proxy, directly);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_through_function_call() {
    // psql's \lo_import / \lo_export use libpq's lo_* functions, which speak the
    // FunctionCall protocol message.
    let proxy = Proxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("blob.bin");
    let dst = dir.path().join("back.bin");
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &blob).unwrap();
    let conn = proxy.dsn(PG_USER, PG_DB);
    let script = format!(
        "BEGIN;\n\\lo_import '{}'\n\\set oid :LASTOID\n\\lo_export :oid '{}'\n\\lo_unlink :oid\nCOMMIT;\n",
        src.display(),
        dst.display()
    );
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || psql(&conn, &["-v", "ON_ERROR_STOP=1"], Some(&script)))
            .await
            .unwrap();
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert_eq!(std::fs::read(&dst).unwrap(), blob);
    proxy.stop().await;
}
