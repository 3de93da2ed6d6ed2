//! Differential transparency: the same bytes sent to PostgreSQL directly and through pgwarden
//! must come back the same (message types, SQLSTATEs, rows), and the session must stay usable.
//! Regressions from a raw-frame differential against PostgreSQL 15: large statements, startup
//! packets of other protocol versions, a Query sent with the startup packet, deep nesting,
//! non-ASCII text pipelined behind unanswered statements.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{self, login, msg, query, read_msg, Msg};
use crate::support::{connect, shipped_policies, within, Proxy, PG_DB, PG_HOST, PG_PORT, PG_USER};

const BOUND: Duration = Duration::from_secs(120);

fn direct_addr() -> SocketAddr {
    format!("{PG_HOST}:{PG_PORT}").parse().unwrap()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Every message up to and including the `n`th ReadyForQuery (or the end of the stream).
async fn read_batches(s: &mut TcpStream, n: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut ready = 0;
    while ready < n {
        let Some(m) = read_msg(s).await else { break };
        ready += usize::from(m.tag == b'Z');
        out.push(m);
    }
    out
}

/// The messages, with what differs between two backends (BackendKeyData) blanked.
fn comparable(ms: &[Msg]) -> Vec<(char, Vec<u8>)> {
    ms.iter()
        .map(|m| {
            let body = if m.tag == b'K' {
                Vec::new()
            } else {
                m.body.clone()
            };
            (m.tag as char, body)
        })
        .collect()
}

fn tags(ms: &[Msg]) -> String {
    ms.iter().map(|m| m.tag as char).collect()
}

/// Logs in to `addr`, sends `bytes`, and reads the answers up to `readies` ReadyForQuery.
async fn answers(addr: SocketAddr, bytes: &[u8], readies: usize) -> (TcpStream, Vec<Msg>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    login(&mut s, PG_USER, PG_DB).await;
    s.write_all(bytes).await.unwrap();
    let ms = read_batches(&mut s, readies).await;
    (s, ms)
}

/// Sends `bytes` to PostgreSQL and to the proxy; asserts both answer alike; returns the answers.
async fn same_answers(proxy: &Proxy, bytes: &[u8], readies: usize) -> Vec<Msg> {
    let (_d, direct) = within(BOUND, "direct", answers(direct_addr(), bytes, readies)).await;
    let (mut s, via) = within(BOUND, "via pgwarden", answers(proxy.addr, bytes, readies)).await;
    assert_eq!(
        comparable(&via),
        comparable(&direct),
        "via pgwarden {} / direct {}",
        tags(&via),
        tags(&direct)
    );
    assert_usable(&mut s).await;
    via
}

/// The session answers a plain query.
async fn assert_usable(s: &mut TcpStream) {
    s.write_all(&query("SELECT 7")).await.unwrap();
    let ms = within(BOUND, "a query after", read_batches(s, 1)).await;
    assert_eq!(tags(&ms), "TDCZ", "{ms:?}");
    assert!(ms[1].body.ends_with(b"7"));
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0i16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind of `statement` to the unnamed portal with text parameters.
fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut b = cstr("");
    b.extend(cstr(statement));
    b.extend(0i16.to_be_bytes());
    b.extend((params.len() as i16).to_be_bytes());
    for p in params {
        b.extend((p.len() as i32).to_be_bytes());
        b.extend(p.as_bytes());
    }
    b.extend(0i16.to_be_bytes());
    msg(b'B', &b)
}

fn execute() -> Vec<u8> {
    let mut b = cstr("");
    b.extend(0i32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

// 1. Statement size.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_statement_is_answered_as_postgres_answers_it() {
    let proxy = Proxy::start().await;
    let text = format!("SELECT length('{}')", "x".repeat(50 << 20));
    let ms = same_answers(&proxy, &query(&text), 1).await;
    assert_eq!(tags(&ms), "TDCZ");
    assert!(ms[1].body.ends_with(b"52428800"));
    proxy.stop().await;
}

/// A Query header announcing `len` bytes of text, then the text in 1 MiB writes (so the test
/// itself never holds it), then its terminator.
async fn send_streamed_query(s: &mut TcpStream, len: usize) {
    let mut head = vec![b'Q'];
    head.extend(((len + "SELECT ''".len() + 5) as u32).to_be_bytes());
    head.extend(b"SELECT '");
    s.write_all(&head).await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    s.write_all(b"'\0").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_the_limit_is_an_error_and_the_session_goes_on() {
    let proxy = Proxy::start_with(|c| c.limits.max_statement_bytes = 1 << 20).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;

    // Simple Query: ErrorResponse 54000 + ReadyForQuery, never FATAL; bytes skipped as they
    // come (100 MiB, far more than pgwarden may hold for a statement).
    within(BOUND, "send", send_streamed_query(&mut s, 100 << 20)).await;
    let ms = within(BOUND, "refusal", read_batches(&mut s, 1)).await;
    assert_eq!(tags(&ms), "EZ", "{ms:?}");
    assert_eq!(ms[0].sqlstate().as_deref(), Some("54000"));
    assert_eq!(ms[0].field(b'V').as_deref(), Some("ERROR"));
    assert!(ms[0].field(b'H').unwrap().contains("max_statement_bytes"));
    assert_eq!(ms[1].body, b"I");
    assert_usable(&mut s).await;

    // Extended protocol: the Parse fails, the rest is skipped to Sync, as the server does.
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    let mut bytes = parse("big", &big);
    bytes.extend(bind("big", &[]));
    bytes.extend(execute());
    bytes.extend(sync());
    s.write_all(&bytes).await.unwrap();
    let ms = within(BOUND, "Parse refusal", read_batches(&mut s, 1)).await;
    assert_eq!(tags(&ms), "EZ", "{ms:?}");
    assert_eq!(ms[0].sqlstate().as_deref(), Some("54000"));
    assert_usable(&mut s).await;

    // Inside a transaction it aborts the transaction, as an error of the server's would.
    s.write_all(&query("BEGIN")).await.unwrap();
    within(BOUND, "BEGIN", read_batches(&mut s, 1)).await;
    s.write_all(&query(&big)).await.unwrap();
    let ms = within(BOUND, "refusal in a block", read_batches(&mut s, 1)).await;
    assert_eq!(tags(&ms), "EZ");
    assert_eq!(ms[1].body, b"E");
    s.write_all(&query("COMMIT")).await.unwrap();
    let ms = within(BOUND, "COMMIT", read_batches(&mut s, 1)).await;
    assert_eq!(ms[0].body, b"ROLLBACK\0");
    assert_usable(&mut s).await;
    proxy.stop().await;
}

// 2. Protocol versions.

/// Everything the server sends on a fresh connection after `packet` (until the first
/// ReadyForQuery or the end of the stream), as raw bytes: a protocol-2 answer is not framed.
async fn startup_reply(addr: SocketAddr, packet: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(packet).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if ends_ready(&got) {
            break;
        }
    }
    (s, got)
}

/// Whether `b` is whole frames ending with a ReadyForQuery.
fn ends_ready(b: &[u8]) -> bool {
    let mut pos = 0;
    let mut last = 0;
    while pos + 5 <= b.len() {
        let len = u32::from_be_bytes([b[pos + 1], b[pos + 2], b[pos + 3], b[pos + 4]]) as usize;
        last = b[pos];
        pos += 1 + len;
    }
    pos == b.len() && last == b'Z'
}

/// The frames of `b` with BackendKeyData's body blanked, or the raw bytes if not framed.
fn blank_keys(b: &[u8]) -> Vec<u8> {
    if !ends_ready(b) {
        return b.to_vec();
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let len = u32::from_be_bytes([b[pos + 1], b[pos + 2], b[pos + 3], b[pos + 4]]) as usize;
        let frame = &b[pos..pos + 1 + len];
        if frame[0] == b'K' {
            out.extend_from_slice(&frame[..5]);
        } else {
            out.extend_from_slice(frame);
        }
        pos += 1 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_with_other_protocol_versions_gets_the_servers_own_answer() {
    let proxy = Proxy::start().await;
    for (major, minor) in [
        (4u32, 0u32),
        (3, 1),
        (3, 2),
        (3, 99),
        (2, 0),
        (0, 0),
        (1234, 5681),
    ] {
        let packet = raw::startup_message(
            (major << 16) | minor,
            &[("user", PG_USER), ("database", PG_DB)],
        );
        let (_d, direct) = within(BOUND, "direct", startup_reply(direct_addr(), &packet)).await;
        let (mut s, via) = within(BOUND, "via", startup_reply(proxy.addr, &packet)).await;
        assert!(!direct.is_empty());
        assert_eq!(
            blank_keys(&via),
            blank_keys(&direct),
            "protocol {major}.{minor}: via {:?} / direct {:?}",
            String::from_utf8_lossy(&via),
            String::from_utf8_lossy(&direct)
        );
        if ends_ready(&direct) {
            // Negotiated down by the server (NegotiateProtocolVersion first): the session
            // goes on at the server's version.
            assert_eq!(direct[0], b'v', "{major}.{minor}");
            assert_usable(&mut s).await;
        }
    }
    proxy.stop().await;
}

// 3. A Query in the same write as the startup packet.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_behind_the_startup_packet_is_answered_after_startup_like_postgres() {
    let proxy = Proxy::start_with(|c| c.policies = shipped_policies()).await;
    let mut bytes = raw::startup(PG_USER, PG_DB);
    bytes.extend(query("SELECT 1"));
    let run = |addr: SocketAddr| {
        let bytes = bytes.clone();
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let ms = read_batches(&mut s, 2).await;
            (s, ms)
        }
    };
    let (_d, direct) = within(BOUND, "direct", run(direct_addr())).await;
    let (mut s, via) = within(BOUND, "via", run(proxy.addr)).await;
    assert_eq!(comparable(&via), comparable(&direct));
    assert!(tags(&via).starts_with('R'));
    assert!(tags(&via).ends_with("ZTDCZ"), "{}", tags(&via));
    assert_usable(&mut s).await;

    // A statement the policy refuses, in that position: an ERROR, not FATAL.
    let t = crate::support::unique("early");
    crate::support::direct()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (v int)"))
        .await
        .unwrap();
    let mut bytes = raw::startup(PG_USER, PG_DB);
    bytes.extend(query(&format!("DROP TABLE {t}")));
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let ms = within(BOUND, "refused early", read_batches(&mut s, 2)).await;
    assert!(tags(&ms).ends_with("ZEZ"), "{}", tags(&ms));
    let e = &ms[ms.len() - 2];
    assert_eq!(e.sqlstate().as_deref(), Some("42501"));
    assert_eq!(e.field(b'V').as_deref(), Some("ERROR"));
    assert_usable(&mut s).await;
    crate::support::direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
    proxy.stop().await;
}

// 4. Deep nesting.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_queries_are_answered_as_postgres_answers_them() {
    let proxy = Proxy::start_with(|c| c.policies = shipped_policies()).await;
    let chain = |n: usize| format!("SELECT {}", vec!["1"; n].join("+"));
    let cases = [
        (chain(47), "TDCZ"),
        (chain(1000), "TDCZ"),
        (
            format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200)),
            "TDCZ",
        ),
        (
            format!("SELECT {}1{}", "(SELECT ".repeat(100), ")".repeat(100)),
            "TDCZ",
        ),
        (format!("SELECT {}true", "NOT ".repeat(500)), "TDCZ"),
        (
            format!("SELECT {}1{}", "coalesce(".repeat(300), ")".repeat(300)),
            "TDCZ",
        ),
        // PostgreSQL's own refusal (arrays have at most 6 dimensions) reaches the client.
        (
            format!("SELECT {}1{}", "ARRAY[".repeat(300), "]".repeat(300)),
            "EZ",
        ),
        (
            format!("SELECT '{{}}'::jsonb{}", "->'a'".repeat(300)),
            "TDCZ",
        ),
        // Deeper than PostgreSQL's own max_stack_depth (2MB): its own error, 54001.
        (chain(4600), "EZ"),
    ];
    let ms = same_answers(&proxy, &query(&chain(4600)), 1).await;
    assert_eq!(ms[0].sqlstate().as_deref(), Some("54001"));
    for (sql, want) in &cases {
        let ms = same_answers(&proxy, &query(sql), 1).await;
        assert_eq!(tags(&ms), *want, "{sql:.60}");
        if *want == "EZ" {
            assert_ne!(ms[0].sqlstate().as_deref(), Some("42501"), "not pgwarden's");
        }
    }
    // Extended protocol, the same.
    let mut bytes = parse("", &chain(1000));
    bytes.extend(bind("", &[]));
    bytes.extend(execute());
    bytes.extend(sync());
    let ms = same_answers(&proxy, &bytes, 1).await;
    assert_eq!(tags(&ms), "12DCZ");

    // Past what the parser serialises: refused (fail closed), no decoder internals shown,
    // and the proxy lives on.
    let (mut s, ms) = answers(proxy.addr, &query(&chain(20_000)), 1).await;
    assert_eq!(tags(&ms), "EZ");
    for f in [b'M', b'D', b'H'] {
        let v = ms[0].field(f).unwrap_or_default();
        assert!(!v.contains("Node.") && !v.contains("Protobuf"), "{v}");
    }
    assert_usable(&mut s).await;
    let c = connect(&proxy.dsn(PG_USER, PG_DB)).await;
    c.simple_query("SELECT 1").await.unwrap();
    proxy.stop().await;
}

// 5. Non-ASCII text pipelined behind unanswered statements.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_text_pipelined_behind_statements_that_cannot_change_the_encoding_passes() {
    let proxy = Proxy::start_with(|c| c.policies = shipped_policies()).await;
    let c = connect(&proxy.dsn(PG_USER, PG_DB)).await;
    // tokio-postgres pipelines concurrent queries: each is sent before the last is answered.
    let (a, b, d, e) = tokio::join!(
        c.query_one("SELECT 'größe'::text", &[]),
        c.query_one("SELECT length('größe')", &[]),
        c.query_one("SELECT upper($1::text)", &[&"straße"]),
        c.query_one("SELECT '日本'::text || $1", &[&"ü"]),
    );
    assert_eq!(a.unwrap().get::<_, &str>(0), "größe");
    assert_eq!(b.unwrap().get::<_, i32>(0), 5);
    assert_eq!(d.unwrap().get::<_, &str>(0), "STRAßE");
    assert_eq!(e.unwrap().get::<_, &str>(0), "日本ü");

    // A JDBC-like batch: Parse/Bind/Execute × N, one Sync, UTF-8 in texts and parameters.
    let mut bytes = Vec::new();
    for (i, word) in ["größe", "café", "naïve", "日本語", "ÅÄÖ"]
        .iter()
        .enumerate()
    {
        let sql = format!("SELECT $1::text || '·{word}' AS v{i}");
        bytes.extend(parse("", &sql));
        bytes.extend(bind("", &[word]));
        bytes.extend(execute());
    }
    bytes.extend(sync());
    let ms = same_answers(&proxy, &bytes, 1).await;
    assert_eq!(tags(&ms), "12DC".repeat(5) + "Z");

    // Behind a statement that may change client_encoding, the text is uncertain: refused.
    for first in [
        "SET client_encoding = 'UTF8'",
        "SELECT set_config('client_encoding', 'UTF8', false)",
        "RESET ALL",
        "DISCARD ALL",
    ] {
        let mut bytes = query(first);
        bytes.extend(query("SELECT 'größe'"));
        let (mut s, ms) = answers(proxy.addr, &bytes, 2).await;
        let e = ms.iter().find(|m| m.tag == b'E').unwrap_or_else(|| {
            panic!("{first}: {}", tags(&ms));
        });
        assert_eq!(e.sqlstate().as_deref(), Some("42501"), "{first}");
        assert_usable(&mut s).await;
    }
    // ...but the same text alone, once that statement is answered, passes.
    let r = c.query_one("SELECT 'größe'::text", &[]).await.unwrap();
    assert_eq!(r.get::<_, &str>(0), "größe");
    proxy.stop().await;
}
