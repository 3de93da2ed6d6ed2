//! Protocol features seen from a raw client: protocol versions, startup parameters and
//! options, replication refusal, the extended protocol with Flush and error-until-Sync.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{self, login, msg, read_error_then_eof, read_msg, read_until};
use crate::support::{connect, within, Proxy, PG_DB, PG_USER};

const BOUND: Duration = Duration::from_secs(30);

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_is_negotiated_by_the_server_and_4_is_refused() {
    let proxy = Proxy::start().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&raw::startup_message(
        0x0003_0002,
        &[
            ("user", PG_USER),
            ("database", PG_DB),
            ("_pq_.made_up", "1"),
        ],
    ))
    .await
    .unwrap();
    // PostgreSQL 15 speaks 3.0: it answers NegotiateProtocolVersion, which passes through.
    let mut tags = Vec::new();
    within(BOUND, "3.2 login", async {
        while let Some(m) = read_msg(&mut s).await {
            tags.push(m.tag);
            if m.tag == b'Z' {
                break;
            }
        }
    })
    .await;
    assert_eq!(tags.first(), Some(&b'v'), "{tags:?}");
    assert_eq!(tags.last(), Some(&b'Z'));

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&raw::startup_message(0x0004_0000, &[("user", PG_USER)]))
        .await
        .unwrap();
    let e = within(BOUND, "4.0", read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("0A000"));
    assert!(e
        .field(b'M')
        .unwrap()
        .contains("unsupported frontend protocol 4.0"));
    // Word for word what the server itself says ("server supports 3.0 to 3.0" on 15).
    let mut d = TcpStream::connect((crate::support::PG_HOST, crate::support::PG_PORT))
        .await
        .unwrap();
    d.write_all(&raw::startup_message(0x0004_0000, &[("user", PG_USER)]))
        .await
        .unwrap();
    let direct = within(BOUND, "4.0 direct", read_error_then_eof(&mut d))
        .await
        .unwrap();
    assert_eq!(e.field(b'M'), direct.field(b'M'));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_are_refused_by_default() {
    let proxy = Proxy::start().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&raw::startup_message(
        0x0003_0000,
        &[
            ("user", PG_USER),
            ("database", PG_DB),
            ("replication", "database"),
        ],
    ))
    .await
    .unwrap();
    let e = within(BOUND, "replication", read_error_then_eof(&mut s))
        .await
        .unwrap();
    assert_eq!(e.sqlstate().as_deref(), Some("0A000"));
    assert!(e.field(b'M').unwrap().contains("replication"));
    assert!(e.field(b'H').unwrap().contains("allow_replication"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_and_options_reach_the_server() {
    let proxy = Proxy::start().await;
    let c = connect(&format!(
        "{} application_name=pgw_test options='-c work_mem=77MB -c DateStyle=SQL,\\\\ DMY'",
        proxy.dsn(PG_USER, PG_DB)
    ))
    .await;
    let row = c
        .query_one(
            "SELECT current_setting('work_mem'), current_setting('application_name'), current_setting('DateStyle')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "77MB");
    assert_eq!(row.get::<_, &str>(1), "pgw_test");
    assert_eq!(row.get::<_, &str>(2), "SQL, DMY");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_flush_and_error_until_sync() {
    let proxy = Proxy::start().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    within(BOUND, "login", login(&mut s, PG_USER, PG_DB)).await;

    // Parse / Bind / Describe / Execute then Flush (no Sync): the answers come anyway.
    let mut parse = cstr("s1");
    parse.extend(cstr("SELECT $1::int * 3"));
    parse.extend(0i16.to_be_bytes());
    let mut bind = cstr("");
    bind.extend(cstr("s1"));
    bind.extend(0i16.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    bind.extend(1i32.to_be_bytes());
    bind.extend(b"7");
    bind.extend(0i16.to_be_bytes());
    let mut execute = cstr("");
    execute.extend(0i32.to_be_bytes());
    let mut bytes = msg(b'P', &parse);
    bytes.extend(msg(b'B', &bind));
    bytes.extend(msg(b'D', b"P\0"));
    bytes.extend(msg(b'E', &execute));
    bytes.extend(msg(b'H', b""));
    s.write_all(&bytes).await.unwrap();
    let row = within(BOUND, "row after Flush", read_until(&mut s, b'D'))
        .await
        .unwrap();
    assert_eq!(&row.body[6..], b"21");
    within(BOUND, "complete", read_until(&mut s, b'C'))
        .await
        .unwrap();

    // An error in the middle of a batch: the rest is skipped until Sync, then one Z.
    let mut bad = cstr("");
    bad.extend(cstr("SELEC oops"));
    bad.extend(0i16.to_be_bytes());
    let mut bytes = msg(b'S', b"");
    bytes.extend(msg(b'P', &bad));
    bytes.extend(msg(b'B', &bind));
    bytes.extend(msg(b'E', &execute));
    bytes.extend(msg(b'S', b""));
    s.write_all(&bytes).await.unwrap();
    let mut tags = Vec::new();
    within(BOUND, "error until sync", async {
        let mut zs = 0;
        while zs < 2 {
            let m = read_msg(&mut s).await.unwrap();
            if m.tag == b'Z' {
                zs += 1;
            }
            if m.tag == b'E' {
                assert_eq!(m.sqlstate().as_deref(), Some("42601"));
            }
            tags.push(m.tag);
        }
    })
    .await;
    assert_eq!(tags, vec![b'Z', b'E', b'Z']);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_sent_with_the_startup_packet_is_answered_after_startup() {
    let proxy = Proxy::start().await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // One write: the startup packet and a Query behind it, before AuthenticationOk.
    let mut bytes = raw::startup_message(0x0003_0000, &[("user", PG_USER), ("database", PG_DB)]);
    bytes.extend_from_slice(&msg(b'Q', b"SELECT 40 + 2\0"));
    s.write_all(&bytes).await.unwrap();
    let mut tags = Vec::new();
    let mut row = None;
    within(BOUND, "the startup and the answer", async {
        let mut ready = 0;
        while let Some(m) = read_msg(&mut s).await {
            tags.push(m.tag);
            if m.tag == b'D' {
                row = Some(m.body.clone());
            }
            if m.tag == b'Z' {
                ready += 1;
                if ready == 2 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(!tags.contains(&b'E'), "{tags:?}");
    assert_eq!(tags.iter().filter(|&&t| t == b'Z').count(), 2, "{tags:?}");
    let row = row.expect("a DataRow");
    assert!(row.ends_with(b"42"), "{row:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_text_pipelined_behind_plain_statements_passes() {
    let proxy = Proxy::start_with(|c| c.policies = crate::support::shipped_policies()).await;
    let t = crate::support::unique("utf8_pipe");
    crate::support::direct()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (v text)"))
        .await
        .unwrap();
    let c = connect(&proxy.dsn(PG_USER, PG_DB)).await;
    // tokio-postgres pipelines concurrent statements: each is sent before the last answer.
    let insert = format!("INSERT INTO {t} VALUES ($1), ('grüße')");
    let (a, b, d) = tokio::join!(
        c.execute(insert.as_str(), &[&"héllo"]),
        c.execute(insert.as_str(), &[&"wörld"]),
        c.execute(insert.as_str(), &[&"日本"]),
    );
    assert_eq!((a.unwrap(), b.unwrap(), d.unwrap()), (2, 2, 2));
    // Behind a statement that may change client_encoding, it is still refused.
    let set = c.batch_execute("SET client_encoding = 'UTF8'");
    let after = c.execute(insert.as_str(), &[&"x"]);
    let (s, e) = tokio::join!(set, after);
    s.unwrap();
    let e = e.expect_err("uncertain encoding");
    assert_eq!(
        crate::support::sqlstate(&e).as_deref(),
        Some("42501"),
        "{e:?}"
    );
    crate::support::direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
    proxy.stop().await;
}
