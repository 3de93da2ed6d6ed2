//! Test harness: start pgwarden in-process or as a binary, connect real clients, start
//! private PostgreSQL clusters, poll with deadlines instead of sleeping.

#![allow(dead_code)]

pub mod admin;
pub mod certs;
pub mod cluster;
pub mod process;
pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use pgwarden::config::{Config, UpstreamAddr};
use pgwarden::server::Server;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The machine's PostgreSQL, trust auth.
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const PG_USER: &str = "postgres";
pub const PG_DB: &str = "test";

/// A proxy running inside the test process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub shared: std::sync::Arc<pgwarden::session::Shared>,
    /// The admin API's address.
    pub admin: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    _policy_dir: tempfile::TempDir,
    _state_dir: tempfile::TempDir,
}

/// The policy pack shipped in the repository.
pub fn shipped_policies() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

impl Proxy {
    /// Starts pgwarden on a free port in front of the machine's PostgreSQL.
    pub async fn start() -> Proxy {
        Proxy::start_with(|_| {}).await
    }

    /// Starts pgwarden with a configuration adjusted by `f` (listen is forced to port 0).
    /// Unless `f` sets `policies`, the proxy runs with an empty policy (a bare relay).
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Proxy {
        let policy_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            policies: policy_dir.path().to_path_buf(),
            state_dir: state_dir.path().to_path_buf(),
            ..Config::default()
        };
        cfg.upstream.address = UpstreamAddr::Tcp {
            host: PG_HOST.into(),
            port: PG_PORT,
        };
        // The admin listener only where a test asks for it (holds then wait for approval).
        cfg.admin.listen = None;
        f(&mut cfg);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        if cfg.admin.listen.is_some() {
            cfg.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        }
        let shutdown = CancellationToken::new();
        let server = Server::bind(cfg, shutdown.clone())
            .await
            .expect("proxy binds");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let shared = server.shared();
        let task = tokio::spawn(server.run());
        Proxy {
            addr,
            shutdown,
            shared,
            admin,
            task,
            _policy_dir: policy_dir,
            _state_dir: state_dir,
        }
    }

    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin.expect("the admin API listens"))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A connection string for this proxy.
    pub fn dsn(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={db}",
            self.port()
        )
    }

    /// Stops the proxy and waits for it to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Connects tokio-postgres to `dsn`, driving the connection in a task.
pub async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A client through `proxy` to the machine's test database.
pub async fn via(proxy: &Proxy) -> Client {
    connect(&proxy.dsn(PG_USER, PG_DB)).await
}

/// A client straight to the machine's PostgreSQL.
pub async fn direct() -> Client {
    connect(&format!(
        "host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={PG_DB}"
    ))
    .await
}

/// A name unique to this test process and call, for tables shared with other tests.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` until it returns `Some`, or panics after `limit` (a bound for a broken
/// build, not a timing assertion).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`, failing the test if it takes longer than `limit` (a hang guard).
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The SQLSTATE of a tokio-postgres error, if the server (or pgwarden) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// Runs psql with `args` (a connection string first), returning (status, stdout, stderr).
pub fn psql(conninfo: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("psql")
        .arg("-X")
        .arg(conninfo)
        .args(args)
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is on the PATH");
    let mut sin = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        sin.write_all(s.as_bytes()).unwrap();
    }
    drop(sin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A proxy whose only policy file is `rules.toml` holding `rules`; the directory lives as long
/// as this does (a test may rewrite the file and reload).
pub struct RulesProxy {
    pub proxy: Proxy,
    pub dir: tempfile::TempDir,
}

pub async fn with_rules(rules: &str) -> RulesProxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    let path = dir.path().to_path_buf();
    let proxy = Proxy::start_with(|c| c.policies = path).await;
    RulesProxy { proxy, dir }
}

/// A table `{t} (id int primary key, v int)` with `rows` rows, made directly; its name starts
/// with `prefix`.
pub async fn keyed_table(prefix: &str, rows: i32) -> String {
    let t = unique(prefix);
    direct()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v int); \
             INSERT INTO {t} SELECT g, g FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    t
}

/// The one bigint `sql` returns, asked directly.
pub async fn scalar_i64(sql: &str) -> i64 {
    direct().await.query_one(sql, &[]).await.unwrap().get(0)
}
