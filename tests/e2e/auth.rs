//! Authentication relayed through pgwarden to private clusters: trust, cleartext password,
//! md5 and SCRAM-SHA-256 logins; PostgreSQL's own error for a wrong password; a Unix-socket
//! upstream; TLS to the upstream (`verify-full`, `verify-ca`, a wrong CA); and SCRAM channel
//! binding, which cannot pass a proxy terminating TLS on both links and is refused with a hint.

use std::time::Duration;

use pgwarden::config::{ClientTlsMode, UpstreamAddr, UpstreamTlsMode};
use tokio_postgres::{Client, NoTls};

use crate::support::certs::{self, Pki};
use crate::support::cluster::Cluster;
use crate::support::{psql, sqlstate, within, Proxy};

const LIMIT: Duration = Duration::from_secs(60);

const TRUST_USER: &str = "trust_user";
const PASSWORD_USER: &str = "password_user";
const PASSWORD_PW: &str = "pw-cleartext";
const MD5_USER: &str = "md5_user";
const MD5_PW: &str = "pw-md5";
const SCRAM_USER: &str = "scram_user";
const SCRAM_PW: &str = "pw-scram";

/// A cluster with one role per method, reachable over TCP (and SCRAM over the socket).
fn start_plain_cluster() -> Cluster {
    let hba = format!(
        "local all postgres trust\n\
         local all {SCRAM_USER} scram-sha-256\n\
         host all {TRUST_USER} 127.0.0.1/32 trust\n\
         host all {PASSWORD_USER} 127.0.0.1/32 password\n\
         host all {MD5_USER} 127.0.0.1/32 md5\n\
         host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n"
    );
    let cluster = Cluster::start(&hba, "", &[]);
    create_roles(&cluster);
    cluster
}

/// A cluster with TLS on, the test certificate, and `hba` as its pg_hba.conf.
fn start_tls_cluster(pki: &Pki, hba: &str) -> Cluster {
    let cluster = Cluster::start(
        hba,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        &[
            ("server.crt", pki.cert_pem.as_bytes()),
            ("server.key", pki.key_pem.as_bytes()),
        ],
    );
    create_roles(&cluster);
    cluster
}

fn create_roles(cluster: &Cluster) {
    cluster.psql(&format!(
        "CREATE ROLE {TRUST_USER} LOGIN;\n\
         CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD_PW}';\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PW}';\n\
         SET password_encryption = 'scram-sha-256';\n\
         CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PW}';"
    ));
    // The premise of the md5 and SCRAM cases: the stored verifiers are of those kinds.
    let kinds = cluster.psql(&format!(
        "SELECT rolname || ':' || left(rolpassword, 3) FROM pg_authid \
         WHERE rolname IN ('{MD5_USER}', '{SCRAM_USER}') ORDER BY rolname"
    ));
    assert_eq!(
        kinds.lines().collect::<Vec<_>>(),
        [format!("{MD5_USER}:md5"), format!("{SCRAM_USER}:SCR")],
        "stored password kinds"
    );
}

fn tcp(cluster: &Cluster) -> UpstreamAddr {
    UpstreamAddr::Tcp {
        host: "127.0.0.1".into(),
        port: cluster.port,
    }
}

fn dsn(port: u16, user: &str, password: Option<&str>) -> String {
    let mut s = format!("host=127.0.0.1 port={port} user={user} dbname=postgres");
    if let Some(pw) = password {
        s.push_str(&format!(" password={pw}"));
    }
    s
}

/// Connects tokio-postgres (plaintext), bounded in time.
async fn try_connect(dsn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = within(LIMIT, dsn, tokio_postgres::connect(dsn, NoTls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn connect_ok(dsn: &str) -> Client {
    try_connect(dsn)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e} ({:?})", e.as_db_error()))
}

/// Connects, expecting a refusal; `what` says why it should fail.
async fn connect_err(dsn: &str, what: &str) -> tokio_postgres::Error {
    match try_connect(dsn).await {
        Ok(_) => panic!("{what}: {dsn} logged in"),
        Err(e) => e,
    }
}

async fn current_user(c: &Client) -> String {
    c.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn upstream_ssl(c: &Client) -> bool {
    c.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// psql arguments printing `<current_user> <upstream link is TLS>`.
const CURRENT_USER_AND_SSL: [&str; 3] = [
    "-At",
    "-c",
    "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
];

/// A libpq connection string for the SCRAM user through pgwarden on `port`.
fn scram_conninfo(port: u16, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PW} dbname=postgres {extra}"
    )
}

/// Runs psql off the async threads.
async fn psql_async(conninfo: String, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    within(
        LIMIT,
        "psql",
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            psql(&conninfo, &args, None)
        }),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_password_md5_and_scram_logins_are_relayed() {
    let cluster = tokio::task::block_in_place(start_plain_cluster);
    let proxy = Proxy::start_with(|cfg| cfg.upstream.address = tcp(&cluster)).await;
    for (user, pw) in [
        (TRUST_USER, None),
        (PASSWORD_USER, Some(PASSWORD_PW)),
        (MD5_USER, Some(MD5_PW)),
        (SCRAM_USER, Some(SCRAM_PW)),
    ] {
        let c = connect_ok(&dsn(proxy.port(), user, pw)).await;
        assert_eq!(current_user(&c).await, user);
        // The server saw pgwarden's plaintext TCP link.
        assert!(!upstream_ssl(&c).await, "{user}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gives_postgresqls_own_error() {
    let cluster = tokio::task::block_in_place(start_plain_cluster);
    let proxy = Proxy::start_with(|cfg| cfg.upstream.address = tcp(&cluster)).await;
    for user in [MD5_USER, SCRAM_USER, PASSWORD_USER] {
        let wrong = Some("not-the-password");
        let direct = connect_err(&dsn(cluster.port, user, wrong), "wrong password, direct").await;
        let via = connect_err(
            &dsn(proxy.port(), user, wrong),
            "wrong password, via pgwarden",
        )
        .await;
        let (d, v) = (
            direct.as_db_error().expect("server error, direct"),
            via.as_db_error()
                .unwrap_or_else(|| panic!("server error via pgwarden, got {via}")),
        );
        assert_eq!(sqlstate(&direct).as_deref(), Some("28P01"), "{user}");
        assert_eq!(v.code(), d.code(), "{user}");
        assert_eq!(v.severity(), d.severity(), "{user}");
        assert_eq!(v.message(), d.message(), "{user}");
        assert_eq!(v.detail(), d.detail(), "{user}");
        assert_eq!(v.hint(), d.hint(), "{user}");
        assert!(v.message().contains(user), "{}", v.message());
    }
    // The proxy is unharmed: a right password still works.
    let c = connect_ok(&dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW))).await;
    assert_eq!(current_user(&c).await, SCRAM_USER);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_over_unix_socket_upstream() {
    let cluster = tokio::task::block_in_place(start_plain_cluster);
    let socket = cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port));
    let proxy = Proxy::start_with(|cfg| cfg.upstream.address = UpstreamAddr::Unix(socket)).await;
    let c = connect_ok(&dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW))).await;
    assert_eq!(current_user(&c).await, SCRAM_USER);
    // The backend's client is a Unix socket: no server address.
    let unix: bool = c
        .query_one("SELECT inet_server_addr() IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unix, "the upstream link is the Unix socket");
    // The socket's pg_hba line is scram: a wrong password fails there too.
    let e = connect_err(
        &dsn(proxy.port(), SCRAM_USER, Some("nope")),
        "wrong password",
    )
    .await;
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verify_full_and_verify_ca() {
    let pki = certs::generate();
    let hba =
        format!("local all postgres trust\nhostssl all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n");
    let cluster = tokio::task::block_in_place(|| start_tls_cluster(&pki, &hba));
    let upstream = |mode: UpstreamTlsMode, ca: &std::path::Path, name: Option<&str>| {
        let addr = tcp(&cluster);
        let ca = ca.to_path_buf();
        let name = name.map(str::to_owned);
        move |cfg: &mut pgwarden::config::Config| {
            cfg.upstream.address = addr;
            cfg.upstream.tls = mode;
            cfg.upstream.ca = Some(ca);
            cfg.upstream.server_name = name;
        }
    };

    // verify-full, naming the server "localhost": a plaintext client logs in with SCRAM and
    // the backend sees TLS.
    let proxy = Proxy::start_with(upstream(
        UpstreamTlsMode::VerifyFull,
        &pki.ca,
        Some("localhost"),
    ))
    .await;
    let c = connect_ok(&dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW))).await;
    assert_eq!(current_user(&c).await, SCRAM_USER);
    assert!(upstream_ssl(&c).await, "pgwarden -> PostgreSQL is TLS");
    proxy.stop().await;

    // verify-full with the default name (the host, 127.0.0.1: the certificate's IP SAN).
    let proxy = Proxy::start_with(upstream(UpstreamTlsMode::VerifyFull, &pki.ca, None)).await;
    let c = connect_ok(&dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW))).await;
    assert!(upstream_ssl(&c).await);
    proxy.stop().await;

    // The wrong CA: pgwarden's own FATAL 08006, naming the upstream.
    let upstream_name = format!("127.0.0.1:{}", cluster.port);
    for (mode, name) in [
        (UpstreamTlsMode::VerifyFull, Some("localhost")),
        (UpstreamTlsMode::VerifyCa, Some("localhost")),
    ] {
        let proxy = Proxy::start_with(upstream(mode, &pki.other_ca, name)).await;
        let e = connect_err(
            &dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW)),
            &format!("{mode:?} with the wrong CA"),
        )
        .await;
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("a FATAL from pgwarden, got {e}"));
        assert_eq!(db.code().code(), "08006", "{mode:?}: {db:?}");
        assert_eq!(db.severity(), "FATAL");
        assert!(
            db.message().starts_with("pgwarden:") && db.message().contains(&upstream_name),
            "{mode:?}: {}",
            db.message()
        );
        proxy.stop().await;
    }

    // verify-ca checks the chain, not the name.
    let proxy = Proxy::start_with(upstream(
        UpstreamTlsMode::VerifyCa,
        &pki.ca,
        Some("wrong.example"),
    ))
    .await;
    let c = connect_ok(&dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW))).await;
    assert_eq!(current_user(&c).await, SCRAM_USER);
    assert!(upstream_ssl(&c).await);
    proxy.stop().await;

    // verify-full does check the name.
    let proxy = Proxy::start_with(upstream(
        UpstreamTlsMode::VerifyFull,
        &pki.ca,
        Some("wrong.example"),
    ))
    .await;
    let e = connect_err(
        &dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW)),
        "verify-full with a name the certificate does not carry",
    )
    .await;
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{e}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_over_two_tls_links_is_refused_with_a_hint() {
    let pki = certs::generate();
    let hba =
        format!("local all postgres trust\nhost all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n");
    let cluster = tokio::task::block_in_place(|| start_tls_cluster(&pki, &hba));
    let (cert, key, ca) = (pki.cert.clone(), pki.key.clone(), pki.ca.clone());
    let addr = tcp(&cluster);
    let proxy = Proxy::start_with(|cfg| {
        cfg.tls.mode = ClientTlsMode::Allow;
        cfg.tls.cert = Some(cert.clone());
        cfg.tls.key = Some(key.clone());
        cfg.upstream.address = addr.clone();
        cfg.upstream.tls = UpstreamTlsMode::VerifyFull;
        cfg.upstream.ca = Some(ca);
        cfg.upstream.server_name = Some("localhost".into());
    })
    .await;
    let query = CURRENT_USER_AND_SSL;

    // libpq's default, channel_binding=prefer, over TLS to pgwarden: the server offers
    // SCRAM-SHA-256-PLUS on its TLS link, libpq binds to pgwarden's certificate, and pgwarden
    // refuses before the server fails with a confusing error.
    let (status, stdout, stderr) = psql_async(
        scram_conninfo(proxy.port(), "sslmode=require channel_binding=prefer"),
        &query,
    )
    .await;
    assert_ne!(status, 0, "{stdout}{stderr}");
    assert!(stderr.contains("FATAL"), "{stderr}");
    assert!(
        stderr.contains("pgwarden: channel binding cannot be relayed"),
        "{stderr}"
    );
    assert!(stderr.contains("HINT"), "{stderr}");
    assert!(stderr.contains("channel_binding=disable"), "{stderr}");

    // channel_binding=disable over the same links works.
    let (status, stdout, stderr) = psql_async(
        scram_conninfo(proxy.port(), "sslmode=require channel_binding=disable"),
        &query,
    )
    .await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("{SCRAM_USER} true"));

    // A plaintext client to pgwarden, TLS upstream, SCRAM: tokio-postgres says it does not
    // support channel binding (gs2 flag 'n'), which is the truth; login works. (libpq: see
    // plaintext_libpq_client_scram_over_tls_upstream.)
    let c = connect_ok(&dsn(proxy.port(), SCRAM_USER, Some(SCRAM_PW))).await;
    assert_eq!(current_user(&c).await, SCRAM_USER);
    assert!(upstream_ssl(&c).await);
    proxy.stop().await;

    // TLS client, plaintext upstream: the server offers no PLUS mechanism, libpq says it
    // could bind but the server cannot ('y'), which the server accepts on a plain link.
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    let proxy = Proxy::start_with(|cfg| {
        cfg.tls.mode = ClientTlsMode::Allow;
        cfg.tls.cert = Some(cert);
        cfg.tls.key = Some(key);
        cfg.upstream.address = addr;
    })
    .await;
    let (status, stdout, stderr) = psql_async(
        scram_conninfo(proxy.port(), "sslmode=require channel_binding=prefer"),
        &query,
    )
    .await;
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("{SCRAM_USER} false"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_libpq_client_scram_over_tls_upstream() {
    let pki = certs::generate();
    let hba =
        format!("local all postgres trust\nhostssl all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n");
    let cluster = tokio::task::block_in_place(|| start_tls_cluster(&pki, &hba));
    let (addr, ca) = (tcp(&cluster), pki.ca.clone());
    let proxy = Proxy::start_with(|cfg| {
        cfg.upstream.address = addr;
        cfg.upstream.tls = UpstreamTlsMode::VerifyFull;
        cfg.upstream.ca = Some(ca);
        cfg.upstream.server_name = Some("localhost".into());
    })
    .await;
    // The server offers SCRAM-SHA-256-PLUS on its TLS link to pgwarden. libpq (every
    // version since 13) aborts when offered -PLUS over a link that is not TLS, whatever
    // channel_binding says, so pgwarden must not pass that offer to a plaintext client; the
    // server accepts the client's gs2 flag 'n' for plain SCRAM-SHA-256.
    for cb in ["prefer", "disable"] {
        let (status, stdout, stderr) = psql_async(
            scram_conninfo(
                proxy.port(),
                &format!("sslmode=disable channel_binding={cb}"),
            ),
            &CURRENT_USER_AND_SSL,
        )
        .await;
        assert!(
            !stderr.contains(
                "server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection"
            ),
            "pgwarden bug: a plaintext libpq client (channel_binding={cb}) cannot log in with \
             SCRAM through a TLS upstream, because pgwarden relays the server's \
             AuthenticationSASL offer of SCRAM-SHA-256-PLUS unchanged; it should drop -PLUS \
             from the offer when the client link is not TLS. psql said: {stderr}"
        );
        assert_eq!(status, 0, "channel_binding={cb}: {stdout}{stderr}");
        assert_eq!(stdout.trim(), format!("{SCRAM_USER} true"));
    }
    proxy.stop().await;
}
