//! TLS between clients and pgwarden, in front of the machine's PostgreSQL: libpq's
//! `verify-full` against the test CA, PostgreSQL 17 direct SSL (ALPN `postgresql`, with and
//! without it), bytes smuggled after SSLRequest / GSSENCRequest (CVE-2021-23214), GSSENCRequest
//! declined, and the `require` and `disable` modes. After each hostile case a fresh session
//! through the same proxy must still answer `SELECT 1`.

use std::time::Duration;

use pgwarden::config::ClientTlsMode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::certs::{self, Pki};
use crate::support::raw::{self, Msg};
use crate::support::{psql, via, within, Proxy, PG_DB, PG_USER};

const LIMIT: Duration = Duration::from_secs(30);

async fn tls_proxy(pki: &Pki, mode: ClientTlsMode) -> Proxy {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    Proxy::start_with(move |cfg| {
        cfg.tls.mode = mode;
        cfg.tls.cert = Some(cert);
        cfg.tls.key = Some(key);
    })
    .await
}

/// Runs psql off the async threads.
async fn psql_async(conninfo: String, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    within(
        Duration::from_secs(60),
        "psql",
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            psql(&conninfo, &args, None)
        }),
    )
    .await
    .unwrap()
}

/// A libpq connection string to the proxy by the name the certificate carries.
fn conninfo(proxy: &Proxy, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={PG_USER} dbname={PG_DB} {extra}",
        proxy.port()
    )
}

/// Sends `SELECT 1` on a logged-in raw link and checks the row and the ReadyForQuery.
async fn raw_select_1<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(&raw::query("SELECT 1")).await.unwrap();
    let row = raw::read_until(s, b'D').await.expect("DataRow");
    // One column, four-byte length 1, "1".
    assert_eq!(row.body, [0, 1, 0, 0, 0, 1, b'1']);
    let z = raw::read_until(s, b'Z').await.expect("ReadyForQuery");
    assert_eq!(z.body, b"I");
}

/// A fresh plaintext tokio-postgres session through `proxy` answers SELECT 1.
async fn plain_session_works(proxy: &Proxy) {
    within(LIMIT, "fresh plaintext session", async {
        let c = via(proxy).await;
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    })
    .await;
}

/// A fresh session over TLS negotiated with SSLRequest (as libpq before 17 does, no ALPN)
/// answers SELECT 1.
async fn tls_session_works(proxy: &Proxy, pki: &Pki) {
    within(LIMIT, "fresh TLS session", async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&raw::ssl_request()).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'S');
        let mut tls = certs::connector(&pki.ca_der, &[])
            .connect(certs::localhost(), tcp)
            .await
            .expect("TLS handshake after SSLRequest");
        raw::login(&mut tls, PG_USER, PG_DB).await;
        raw_select_1(&mut tls).await;
    })
    .await;
}

/// Every message until the link ends.
async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> Vec<Msg> {
    let mut out = Vec::new();
    while let Some(m) = raw::read_msg(r).await {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_against_the_test_ca() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;

    let (status, stdout, stderr) = psql_async(
        conninfo(
            &proxy,
            &format!("sslmode=verify-full sslrootcert={}", pki.ca.display()),
        ),
        &["-At", "-c", "SELECT 1", "-c", "\\conninfo"],
    )
    .await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("1"), "{stdout}");
    assert!(
        stdout.contains("SSL connection (protocol: TLSv1."),
        "{stdout}"
    );

    // Another CA does not vouch for pgwarden's certificate: libpq refuses.
    let (status, stdout, stderr) = psql_async(
        conninfo(
            &proxy,
            &format!("sslmode=verify-full sslrootcert={}", pki.other_ca.display()),
        ),
        &["-At", "-c", "SELECT 1"],
    )
    .await;
    assert_ne!(status, 0, "{stdout}{stderr}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    plain_session_works(&proxy).await;
    tls_session_works(&proxy, &pki).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ssl_with_alpn_postgresql_logs_in() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;

    // PostgreSQL 17's sslnegotiation=direct: the ClientHello is the first thing sent.
    within(LIMIT, "direct SSL session", async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut tls = certs::connector(&pki.ca_der, &[b"postgresql"])
            .connect(certs::localhost(), tcp)
            .await
            .expect("direct TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        tls.write_all(&raw::startup(PG_USER, PG_DB)).await.unwrap();
        let z = raw::read_until(&mut tls, b'Z')
            .await
            .expect("ReadyForQuery");
        assert_eq!(z.body, b"I");
        raw_select_1(&mut tls).await;
        tls.write_all(&raw::msg(b'X', b"")).await.unwrap();
    })
    .await;

    // An SSLRequest inside the direct TLS link is refused.
    within(LIMIT, "SSLRequest over TLS", async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut tls = certs::connector(&pki.ca_der, &[b"postgresql"])
            .connect(certs::localhost(), tcp)
            .await
            .unwrap();
        tls.write_all(&raw::ssl_request()).await.unwrap();
        let e = raw::read_error_then_eof(&mut tls)
            .await
            .expect("an ErrorResponse");
        assert_eq!(e.sqlstate().as_deref(), Some("08P01"));
    })
    .await;

    plain_session_works(&proxy).await;
    tls_session_works(&proxy, &pki).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ssl_without_alpn_is_refused() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;

    within(LIMIT, "direct SSL without ALPN", async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        match certs::connector(&pki.ca_der, &[])
            .connect(certs::localhost(), tcp)
            .await
        {
            Ok(mut tls) => {
                assert_eq!(tls.get_ref().1.alpn_protocol(), None);
                let msgs = read_all(&mut tls).await;
                assert!(
                    msgs.iter().all(|m| m.tag == b'E'),
                    "no session may start: {msgs:?}"
                );
                if let Some(e) = msgs.first() {
                    assert_eq!(e.sqlstate().as_deref(), Some("08P01"), "{e:?}");
                    assert_eq!(e.field(b'S').as_deref(), Some("FATAL"));
                    assert!(e.field(b'M').unwrap().contains("ALPN"), "{e:?}");
                }
            }
            // Closing during the handshake is also a refusal.
            Err(e) => eprintln!("handshake refused: {e}"),
        }
    })
    .await;

    plain_session_works(&proxy).await;
    tls_session_works(&proxy, &pki).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ssl_to_a_proxy_without_tls_is_closed() {
    let pki = certs::generate();
    // Certificate configured but mode=disable: no TLS at all.
    let proxy = tls_proxy(&pki, ClientTlsMode::Disable).await;
    within(LIMIT, "direct SSL to disabled TLS", async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let r = certs::connector(&pki.ca_der, &[b"postgresql"])
            .connect(certs::localhost(), tcp)
            .await;
        assert!(r.is_err(), "a TLS session was established");
    })
    .await;
    plain_session_works(&proxy).await;
    proxy.stop().await;
}

/// Sends `first` and a StartupMessage in one write; expects FATAL 08P01 naming `what`.
async fn smuggled_startup_is_refused(proxy: &Proxy, first: Vec<u8>, what: &str) {
    within(LIMIT, what, async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut bytes = first;
        bytes.extend(raw::startup(PG_USER, PG_DB));
        tcp.write_all(&bytes).await.unwrap();
        // No 'S' / 'N' answer byte precedes the error: the request is refused as a whole.
        let e = raw::read_error_then_eof(&mut tcp)
            .await
            .unwrap_or_else(|| panic!("an ErrorResponse for {what}"));
        assert_eq!(e.sqlstate().as_deref(), Some("08P01"), "{e:?}");
        assert_eq!(e.field(b'S').as_deref(), Some("FATAL"));
        assert_eq!(
            e.field(b'M').as_deref(),
            Some(format!("received unencrypted data after {what} request").as_str())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_ssl_request_are_refused() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;
    smuggled_startup_is_refused(&proxy, raw::ssl_request(), "SSL").await;
    plain_session_works(&proxy).await;
    tls_session_works(&proxy, &pki).await;
    proxy.stop().await;

    // The same when pgwarden would have answered 'N'.
    let proxy = tls_proxy(&pki, ClientTlsMode::Disable).await;
    smuggled_startup_is_refused(&proxy, raw::ssl_request(), "SSL").await;
    plain_session_works(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_gssenc_request_are_refused() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;
    smuggled_startup_is_refused(&proxy, raw::gssenc_request(), "GSSAPI encryption").await;
    plain_session_works(&proxy).await;
    tls_session_works(&proxy, &pki).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_is_declined_then_plain_login_works() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;
    within(LIMIT, "GSSENCRequest", async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&raw::gssenc_request()).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'N');
        raw::login(&mut tcp, PG_USER, PG_DB).await;
        raw_select_1(&mut tcp).await;
    })
    .await;
    // libpq's order when it has Kerberos credentials: GSSENCRequest, 'N', then SSLRequest.
    within(LIMIT, "GSSENCRequest then SSLRequest", async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&raw::gssenc_request()).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'N');
        tcp.write_all(&raw::ssl_request()).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'S');
        let mut tls = certs::connector(&pki.ca_der, &[])
            .connect(certs::localhost(), tcp)
            .await
            .unwrap();
        raw::login(&mut tls, PG_USER, PG_DB).await;
        raw_select_1(&mut tls).await;
    })
    .await;
    plain_session_works(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_mode_refuses_plaintext_and_accepts_tls() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Require).await;

    within(LIMIT, "plaintext startup", async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&raw::startup(PG_USER, PG_DB)).await.unwrap();
        let msgs = read_all(&mut tcp).await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(msgs[0].tag, b'E');
        assert_eq!(msgs[0].sqlstate().as_deref(), Some("28000"), "{msgs:?}");
        assert_eq!(msgs[0].field(b'S').as_deref(), Some("FATAL"));
    })
    .await;
    // A plaintext startup after a declined GSSENCRequest is refused just the same.
    within(LIMIT, "GSSENC then plaintext", async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&raw::gssenc_request()).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'N');
        tcp.write_all(&raw::startup(PG_USER, PG_DB)).await.unwrap();
        let e = raw::read_error_then_eof(&mut tcp).await.expect("FATAL");
        assert_eq!(e.sqlstate().as_deref(), Some("28000"));
    })
    .await;

    // libpq: sslmode=disable is refused with pgwarden's message, sslmode=require works.
    let (status, stdout, stderr) = psql_async(
        conninfo(&proxy, "sslmode=disable"),
        &["-At", "-c", "SELECT 1"],
    )
    .await;
    assert_ne!(status, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("pgwarden: this proxy accepts only TLS connections"),
        "{stderr}"
    );
    let (status, stdout, stderr) = psql_async(
        conninfo(&proxy, "sslmode=require"),
        &["-At", "-c", "SELECT 1", "-c", "\\conninfo"],
    )
    .await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("1\n"), "{stdout}");
    assert!(stdout.contains("SSL connection"), "{stdout}");

    // Direct SSL counts as TLS.
    within(LIMIT, "direct SSL under require", async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut tls = certs::connector(&pki.ca_der, &[b"postgresql"])
            .connect(certs::localhost(), tcp)
            .await
            .unwrap();
        raw::login(&mut tls, PG_USER, PG_DB).await;
        raw_select_1(&mut tls).await;
    })
    .await;
    tls_session_works(&proxy, &pki).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_mode_answers_n_and_serves_plaintext() {
    let pki = certs::generate();
    // A certificate is configured, but mode=disable wins.
    let proxy = tls_proxy(&pki, ClientTlsMode::Disable).await;
    within(LIMIT, "SSLRequest under disable", async {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&raw::ssl_request()).await.unwrap();
        assert_eq!(tcp.read_u8().await.unwrap(), b'N');
        raw::login(&mut tcp, PG_USER, PG_DB).await;
        raw_select_1(&mut tcp).await;
    })
    .await;
    // libpq: sslmode=require fails on the client side, prefer falls back to plaintext.
    let (status, stdout, stderr) = psql_async(
        conninfo(&proxy, "sslmode=require"),
        &["-At", "-c", "SELECT 1"],
    )
    .await;
    assert_ne!(status, 0, "{stdout}{stderr}");
    assert!(stderr.contains("server does not support SSL"), "{stderr}");
    let (status, stdout, stderr) = psql_async(
        conninfo(&proxy, "sslmode=prefer"),
        &["-At", "-c", "SELECT 1", "-c", "\\conninfo"],
    )
    .await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("1\n"), "{stdout}");
    assert!(!stdout.contains("SSL connection"), "{stdout}");
    plain_session_works(&proxy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_over_tls_and_direct_tls_reaches_the_server() {
    let pki = certs::generate();
    let proxy = tls_proxy(&pki, ClientTlsMode::Allow).await;
    for direct in [false, true] {
        // A plaintext session whose BackendKeyData we keep, running a long sleep.
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&raw::startup(PG_USER, PG_DB)).await.unwrap();
        let key = within(LIMIT, "login", raw::read_until(&mut s, b'K'))
            .await
            .expect("BackendKeyData");
        within(LIMIT, "ready", raw::read_until(&mut s, b'Z'))
            .await
            .unwrap();
        s.write_all(&raw::query("SELECT pg_sleep(30)"))
            .await
            .unwrap();
        let d = crate::support::direct().await;
        let pid = i32::from_be_bytes([key.body[0], key.body[1], key.body[2], key.body[3]]);
        crate::support::eventually(LIMIT, "pg_sleep to start", || {
            let d = &d;
            async move {
                let n: i64 = d
                    .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'", &[&pid])
                    .await
                    .unwrap()
                    .get(0);
                (n == 1).then_some(())
            }
        })
        .await;
        // The CancelRequest travels inside TLS: after SSLRequest, or as direct TLS.
        let mut packet = ((12 + key.body.len() - 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&80_877_102u32.to_be_bytes());
        packet.extend_from_slice(&key.body);
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        if !direct {
            tcp.write_all(&raw::ssl_request()).await.unwrap();
            assert_eq!(tcp.read_u8().await.unwrap(), b'S');
        }
        let alpn: &[&[u8]] = if direct { &[b"postgresql"] } else { &[] };
        let mut tls = certs::connector(&pki.ca_der, alpn)
            .connect(certs::localhost(), tcp)
            .await
            .unwrap();
        tls.write_all(&packet).await.unwrap();
        tls.flush().await.unwrap();
        // 20 s bounds a hang; the sleep itself would take 30.
        let e = within(
            Duration::from_secs(20),
            "cancelled",
            raw::read_until(&mut s, b'E'),
        )
        .await
        .unwrap();
        assert_eq!(e.sqlstate().as_deref(), Some("57014"), "direct = {direct}");
    }
    proxy.stop().await;
}
