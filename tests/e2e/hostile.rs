//! Hostile and broken input, and links that fail: each case ends only its own session with
//! a clear PostgreSQL error, and a fresh session through the same proxy still answers.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::raw::{self, login, msg, query, read_error_then_eof, read_msg, read_until};
use crate::support::{direct, eventually, sqlstate, unique, via, within, Proxy, PG_DB, PG_USER};

const BOUND: Duration = Duration::from_secs(30);

async fn still_answers(proxy: &Proxy) {
    let c = via(proxy).await;
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

async fn raw_conn(proxy: &Proxy) -> TcpStream {
    TcpStream::connect(proxy.addr).await.unwrap()
}

/// Sends `bytes` on a fresh connection and returns the error the proxy answered with.
async fn error_for(proxy: &Proxy, bytes: &[u8]) -> raw::Msg {
    let mut s = raw_conn(proxy).await;
    s.write_all(bytes).await.unwrap();
    within(BOUND, "error then close", read_error_then_eof(&mut s))
        .await
        .expect("an ErrorResponse")
}

/// The server process behind a raw session (a one-column text DataRow).
async fn backend_pid(s: &mut TcpStream) -> i32 {
    s.write_all(&query("SELECT pg_backend_pid()"))
        .await
        .unwrap();
    let row = read_until(s, b'D').await.unwrap();
    let pid = String::from_utf8_lossy(&row.body[6..]).parse().unwrap();
    read_until(s, b'Z').await.unwrap();
    pid
}

async fn logged_in(proxy: &Proxy) -> TcpStream {
    let mut s = raw_conn(proxy).await;
    within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_lengths_in_startup() {
    let proxy = Proxy::start().await;
    let e = error_for(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    assert!(e
        .field(b'M')
        .unwrap()
        .contains("invalid length of startup packet"));
    still_answers(&proxy).await;

    let e = error_for(&proxy, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await;
    assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    let e = error_for(&proxy, &[0, 0, 0, 3]).await;
    assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    still_answers(&proxy).await;

    // Truncated startup: half a packet, then the client leaves.
    let full = raw::startup(PG_USER, PG_DB);
    let mut s = raw_conn(&proxy).await;
    s.write_all(&full[..full.len() / 2]).await.unwrap();
    drop(s);
    still_answers(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_after_login_end_only_that_session() {
    let proxy = Proxy::start().await;
    let bystander = via(&proxy).await;
    for (what, bytes) in [
        ("length 0x7fffffff", vec![b'Q', 0x7f, 0xff, 0xff, 0xff]),
        ("length below 4", vec![b'Q', 0, 0, 0, 3]),
        ("unknown type", msg(b'z', b"")),
        ("oversized Sync", vec![b'S', 0, 1, 0, 0]),
    ] {
        let mut s = logged_in(&proxy).await;
        s.write_all(&bytes).await.unwrap();
        let e = within(BOUND, what, read_error_then_eof(&mut s))
            .await
            .expect(what);
        assert_eq!(e.sqlstate().as_deref(), Some("08P01"), "{what}");
        assert_eq!(e.field(b'V').as_deref(), Some("FATAL"), "{what}");
    }
    assert_eq!(
        bystander
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    still_answers(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unterminated_query_cannot_smuggle_a_second_query() {
    // DESIGN's probe: a Query frame whose text has no terminator, followed by a second
    // Query. Neither may run; the session ends with a protocol error.
    let proxy = Proxy::start().await;
    let (t1, t2) = (unique("smuggle_a"), unique("smuggle_b"));
    let mut s = logged_in(&proxy).await;
    let mut bytes = msg(b'Q', format!("CREATE TABLE {t1} ()").as_bytes());
    bytes.extend(query(&format!("CREATE TABLE {t2} ()")));
    s.write_all(&bytes).await.unwrap();
    let e = within(BOUND, "smuggle", read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    let d = direct().await;
    for t in [&t1, &t2] {
        let exists: bool = d
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[t])
            .await
            .unwrap()
            .get(0);
        assert!(!exists, "{t} was created");
    }
    // A Query with an interior NUL (text after it would be ignored by the server) likewise.
    let mut s = logged_in(&proxy).await;
    s.write_all(&msg(
        b'Q',
        format!("SELECT 1\0CREATE TABLE {t1} ()\0").as_bytes(),
    ))
    .await
    .unwrap();
    let e = within(BOUND, "interior NUL", read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    still_answers(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_abandoned_startups() {
    let proxy = Proxy::start().await;
    let full = raw::startup(PG_USER, PG_DB);
    let mut conns = Vec::new();
    for i in 0..500 {
        let mut s = raw_conn(&proxy).await;
        s.write_all(&full[..(i % (full.len() - 1)) + 1])
            .await
            .unwrap();
        conns.push(s);
    }
    drop(conns);
    still_answers(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_per_second_client_is_timed_out() {
    let proxy = Proxy::start_with(|c| c.startup_timeout = Duration::from_secs(2)).await;
    let full = raw::startup(PG_USER, PG_DB);
    let mut s = raw_conn(&proxy).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0;
    // The startup packet is ~35 bytes: at a byte a second the client would need ~35 s.
    let closed = within(BOUND, "slow client closed", async {
        loop {
            tick.tick().await;
            if sent == full.len() {
                return false;
            }
            if s.write_all(&full[sent..sent + 1]).await.is_err() {
                return true;
            }
            sent += 1;
            let mut b = [0u8; 1];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
                if matches!(r, Ok(0) | Err(_)) {
                    return true;
                }
            }
        }
    })
    .await;
    assert!(closed, "the proxy let a byte-a-second startup finish");
    assert!(sent < full.len());
    still_answers(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_gives_53300() {
    let proxy = Proxy::start_with(|c| c.max_client_connections = 2).await;
    let a = via(&proxy).await;
    let b = via(&proxy).await;
    let err = tokio_postgres::connect(&proxy.dsn(PG_USER, PG_DB), tokio_postgres::NoTls)
        .await
        .err()
        .expect("third connection refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    drop(a);
    // A slot frees once a session ends.
    eventually(BOUND, "a free slot", || async {
        tokio_postgres::connect(&proxy.dsn(PG_USER, PG_DB), tokio_postgres::NoTls)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    drop(b);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_08006_naming_it() {
    let port = crate::support::free_port();
    let proxy = Proxy::start_with(|c| {
        c.upstream.address = pgwarden::config::UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    })
    .await;
    let err = tokio_postgres::connect(&proxy.dsn(PG_USER, PG_DB), tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "08006");
    assert!(
        db.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        db.message()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_drops_the_link_gives_a_fatal_not_a_hang() {
    // An upstream that accepts, reads the startup packet and closes without a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut b = [0u8; 256];
            let _ = s.read(&mut b).await;
        }
    });
    let proxy = Proxy::start_with(|c| {
        c.upstream.address = pgwarden::config::UpstreamAddr::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    })
    .await;
    let mut s = raw_conn(&proxy).await;
    s.write_all(&raw::startup(PG_USER, PG_DB)).await.unwrap();
    let e = within(BOUND, "fatal", read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("08006"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fatal_while_idle_reaches_the_client() {
    let proxy = Proxy::start().await;
    let mut s = logged_in(&proxy).await;
    let pid = backend_pid(&mut s).await;
    let d = direct().await;
    d.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The idle client receives the server's own FATAL, then the link closes.
    let e = within(BOUND, "fatal to idle client", read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("57P01"));
    still_answers(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_closes_the_upstream() {
    let proxy = Proxy::start().await;
    let mut s = logged_in(&proxy).await;
    let pid = backend_pid(&mut s).await;
    // Leave in the middle of a transaction, without Terminate.
    s.write_all(&query("BEGIN")).await.unwrap();
    read_until(&mut s, b'Z').await.unwrap();
    drop(s);
    let d = direct().await;
    eventually(BOUND, "backend to exit", || {
        let d = &d;
        async move {
            let n: i64 = d
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        }
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_msg_helper_sanity() {
    // The raw reader the other tests rely on sees a whole login as the server sends it.
    let proxy = Proxy::start().await;
    let mut s = raw_conn(&proxy).await;
    s.write_all(&raw::startup(PG_USER, PG_DB)).await.unwrap();
    let first = read_msg(&mut s).await.unwrap();
    assert_eq!(first.tag, b'R');
    proxy.stop().await;
}
