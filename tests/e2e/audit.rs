//! The audit log on the wire: recorded statements are in the log (synced) before they run,
//! with their outcome after; plain reads are not recorded, refusals always are; prepared
//! statements are recorded at every run; a log that cannot be written refuses what it must
//! record and turns /readyz unready; kill -9 in the middle of a write stream leaves a log that
//! verifies, holding every statement the client saw succeed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::process::Process;
use crate::support::{eventually, shipped_policies, sqlstate, unique, via, within, Proxy};

fn records(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `pgwarden audit verify` on `file` with its checkpoints and public key: (status, stdout).
fn verify(file: &Path, public_key: &Path) -> (i32, String) {
    let mut cp = file.as_os_str().to_owned();
    cp.push(".checkpoints");
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["audit", "verify"])
        .arg(file)
        .arg("--checkpoints")
        .arg(PathBuf::from(cp))
        .arg("--public-key")
        .arg(public_key)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn statements<'a>(recs: &'a [Value], needle: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["type"] == "statement")
        .filter(|r| {
            r["statement"]["text"]
                .as_str()
                .unwrap_or("")
                .contains(needle)
        })
        .collect()
}

#[tokio::test]
async fn statements_are_recorded_with_their_outcomes_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let key = dir.path().join("signing.key");
    let (f, k) = (file.clone(), key.clone());
    let proxy = Proxy::start_with(move |c| {
        c.policies = shipped_policies();
        c.audit.file = Some(f);
        c.audit.signing_key = Some(k);
    })
    .await;
    let t = unique("audited");
    let c = via(&proxy).await;
    c.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"))
        .await
        .unwrap();
    let insert = c
        .prepare(&format!("INSERT INTO {t} VALUES ($1, $2)"))
        .await
        .unwrap();
    c.execute(&insert, &[&1i32, &"one"]).await.unwrap();
    c.execute(&insert, &[&2i32, &"two"]).await.unwrap();
    c.batch_execute(&format!("UPDATE {t} SET v = 'secret-literal' WHERE id = 1"))
        .await
        .unwrap();
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // Another session: dropping what this session created is exempt.
    let other = via(&proxy).await;
    let e = other
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    let e = c
        .batch_execute(&format!("INSERT INTO {t} VALUES (1, 'dup')"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23505"));
    // The client has the error as soon as the ErrorResponse arrives; the outcome is
    // recorded when the ReadyForQuery behind it does, which may be a read later.
    let log = proxy.shared.audit.as_ref().unwrap();
    let recs = eventually(
        Duration::from_secs(30),
        "the failed INSERT's outcome",
        || async {
            log.flush().await;
            let recs = records(&file);
            recs.iter()
                .any(|r| r["type"] == "outcome" && r["error"]["sqlstate"] == "23505")
                .then_some(recs)
        },
    )
    .await;

    // CREATE TABLE: recorded before it ran, its outcome after.
    let create = statements(&recs, "CREATE TABLE");
    assert_eq!(create.len(), 1, "{recs:#?}");
    assert_eq!(create[0]["statement"]["classes"][0], "ddl");
    assert_eq!(create[0]["statement"]["tags"][0], "CREATE TABLE");
    assert_eq!(create[0]["session"]["user"], "postgres");
    assert_eq!(create[0]["decision"]["refused"], false);
    let seq = create[0]["seq"].as_u64().unwrap();
    let outcome = recs
        .iter()
        .find(|r| r["type"] == "outcome" && r["decisions"][0] == seq)
        .expect("an outcome for CREATE TABLE");
    assert_eq!(outcome["commands"][0]["tag"], "CREATE TABLE");
    assert!(outcome["seq"].as_u64().unwrap() > seq);

    // The prepared INSERT: one record per run, each with its row count; then the simple
    // INSERT with literals (redacted to the same text) that failed.
    let inserts: Vec<&Value> = statements(&recs, "INSERT INTO")
        .into_iter()
        .filter(|r| r["statement"]["text"].as_str().unwrap().contains("$1, $2"))
        .collect();
    assert_eq!(inserts.len(), 3, "{inserts:#?}");
    for r in &inserts[..2] {
        let seq = r["seq"].as_u64().unwrap();
        let o = recs
            .iter()
            .find(|o| o["type"] == "outcome" && o["decisions"][0] == seq)
            .expect("an outcome for each run");
        assert_eq!(o["commands"][0]["tag"], "INSERT");
        assert_eq!(o["commands"][0]["rows"], 1);
    }

    // Literals are redacted; rows counted.
    let update = statements(&recs, "UPDATE");
    assert_eq!(update.len(), 1);
    let text = update[0]["statement"]["text"].as_str().unwrap();
    assert!(
        !text.contains("secret-literal") && text.contains("$1"),
        "{text}"
    );
    assert!(update[0]["statement"]["fingerprint"].is_string());

    // Plain reads are not recorded; refusals are, with their SQLSTATE.
    assert!(statements(&recs, "count(*)").is_empty());
    let drop = statements(&recs, "DROP TABLE");
    assert_eq!(drop.len(), 1);
    assert_eq!(drop[0]["decision"]["refused"], true);
    assert_eq!(drop[0]["decision"]["rules"][0], "destructive.drop-table");
    assert_eq!(drop[0]["refusal"]["sqlstate"], "42501");

    // A server error is the outcome.
    assert!(
        statements(&recs, "'dup'").is_empty(),
        "literals are redacted"
    );
    let seq = inserts[2]["seq"].as_u64().unwrap();
    let failed = recs
        .iter()
        .find(|r| r["type"] == "outcome" && r["decisions"][0] == seq)
        .expect("the failed INSERT has an outcome");
    assert_eq!(failed["error"]["sqlstate"], "23505");
    assert!(failed["commands"].as_array().unwrap().is_empty());

    // Lifecycle: the policy and the session.
    assert!(recs.iter().any(|r| r["type"] == "policy_loaded"));
    assert!(recs.iter().any(|r| r["type"] == "session_started"));

    drop_table(&proxy, &t).await;
    proxy.stop().await;
    let (code, out) = verify(&file, &key.with_extension("pub"));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact:"), "{out}");
    // The session's end was recorded at shutdown, and the final head checkpointed.
    assert!(records(&file).iter().any(|r| r["type"] == "session_ended"));
    assert!(out.contains("checkpoint(s) verified"), "{out}");
}

async fn drop_table(_proxy: &Proxy, t: &str) {
    let c = crate::support::direct().await;
    c.batch_execute(&format!("DROP TABLE IF EXISTS {t}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unwritable_audit_log_refuses_what_it_must_record_and_readyz_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (hook_url, mut hooks) = crate::alerts::receiver().await;
    let proxy = Proxy::start_with(move |c| {
        c.webhooks = vec![pgwarden::alerts::WebhookConfig::new("ops", hook_url)];
        c.audit.file = Some(PathBuf::from("/dev/full"));
        c.audit.checkpoints = Some(d.join("cp"));
        c.audit.signing_key = Some(d.join("key"));
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut events = proxy.shared.events.subscribe();
    let c = via(&proxy).await;
    let t = unique("unaudited");
    let e = c
        .batch_execute(&format!("CREATE TABLE {t} (id int)"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("58030"), "{e:?}");
    let db = e.as_db_error().unwrap();
    assert!(
        db.message().contains("audit log cannot be written"),
        "{db:?}"
    );
    // The table was not created: nothing ran unrecorded.
    let direct = crate::support::direct().await;
    let exists: bool = direct
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
    // Plain reads still run, and the session goes on.
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // The alert event went out.
    let failing = eventually(Duration::from_secs(10), "the audit failure event", || {
        let got = loop {
            match events.try_recv() {
                Ok(e) if e.event.kind() == "audit_sink_failing" => break Some(()),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        async move { got }
    })
    .await;
    assert_eq!(failing, ());
    // ... and reached the webhook.
    within(Duration::from_secs(30), "the audit alert webhook", async {
        loop {
            let got = hooks.recv().await.expect("the receiver runs");
            if String::from_utf8_lossy(&got).contains("audit_sink_failing") {
                break;
            }
        }
    })
    .await;
    // /readyz is unready and says why.
    let url = format!("{}/readyz", proxy.admin_url());
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["checks"]["audit"]
            .as_str()
            .unwrap()
            .contains("cannot be written"),
        "{body}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn kill_9_mid_stream_leaves_a_log_that_verifies_with_every_acknowledged_statement() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let key = dir.path().join("signing.key");
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let cfg = dir.path().join("pgwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\n[state]\ndir = \"{}\"\n[admin]\nlisten = \"off\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n[audit]\nfile = \"{}\"\nsigning_key = \"{}\"\ncheckpoint_interval = \"100ms\"\n",
            dir.path().join("policies").display(),
            dir.path().join("state").display(),
            file.display(),
            key.display(),
        ),
    )
    .unwrap();
    let p = Process::start(&cfg, false);
    let t = unique("killed");
    let direct = crate::support::direct().await;
    direct
        .batch_execute(&format!("CREATE TABLE {t} (id int)"))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for w in 0..4 {
        let dsn = p.dsn();
        let t = t.clone();
        writers.push(tokio::spawn(async move {
            let c = crate::support::connect(&dsn).await;
            let mut acked = 0u64;
            for i in 0.. {
                match c
                    .batch_execute(&format!("INSERT INTO {t} VALUES ({})", w * 1_000_000 + i))
                    .await
                {
                    Ok(()) => acked += 1,
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    let f = file.clone();
    eventually(Duration::from_secs(60), "200 audit records", || {
        let n = std::fs::read_to_string(&f)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        async move { (n >= 200).then_some(()) }
    })
    .await;
    p.kill9().await;
    let mut acked = 0;
    for w in writers {
        acked += w.await.unwrap();
    }
    let (code, out) = verify(&file, &key.with_extension("pub"));
    assert_eq!(code, 0, "{out}");
    // Every INSERT a client saw succeed had its record synced first.
    let recorded = records(&file)
        .iter()
        .filter(|r| r["type"] == "statement")
        .filter(|r| r["statement"]["tags"][0] == "INSERT")
        .count() as u64;
    assert!(
        recorded >= acked,
        "recorded {recorded} < acknowledged {acked}"
    );
    let rows: i64 = direct
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(rows as u64 <= recorded, "{rows} rows, {recorded} records");
    direct
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    crate::support::raw::msg(b'P', &b)
}

fn bind_execute(name: &str) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    let mut out = crate::support::raw::msg(b'B', &b);
    out.extend(crate::support::raw::msg(b'E', &[0, 0, 0, 0, 0]));
    out
}

fn sync() -> Vec<u8> {
    crate::support::raw::msg(b'S', &[])
}

/// Reads to the next ReadyForQuery: the SQLSTATEs of the errors and the command tags.
async fn batch(s: &mut tokio::net::TcpStream) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut tags) = (Vec::new(), Vec::new());
    loop {
        let m = crate::support::raw::read_msg(s)
            .await
            .expect("the session stays");
        match m.tag {
            b'E' => errors.push(m.sqlstate().unwrap_or_default()),
            b'C' => tags.push(
                String::from_utf8_lossy(&m.body)
                    .trim_end_matches('\0')
                    .to_owned(),
            ),
            b'Z' => return (errors, tags),
            _ => {}
        }
    }
}

/// A proxy writing its audit log to a temp file, a table made for the test, and a raw
/// session through the proxy.
struct RawFixture {
    proxy: Proxy,
    file: PathBuf,
    table: String,
    direct: tokio_postgres::Client,
    s: tokio::net::TcpStream,
    _dir: tempfile::TempDir,
}

async fn raw_fixture(prefix: &str) -> RawFixture {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let f = file.clone();
    let proxy = Proxy::start_with(move |c| c.audit.file = Some(f)).await;
    let table = unique(prefix);
    let direct = crate::support::direct().await;
    direct
        .batch_execute(&format!("CREATE TABLE {table} (id int)"))
        .await
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    crate::support::raw::login(&mut s, "postgres", "test").await;
    RawFixture {
        proxy,
        file,
        table,
        direct,
        s,
        _dir: dir,
    }
}

impl RawFixture {
    /// Flushes the log: its records, and the table's row count.
    async fn finish(self) -> (Vec<Value>, i64) {
        self.proxy.shared.audit.as_ref().unwrap().flush().await;
        let recs = records(&self.file);
        let rows: i64 = self
            .direct
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .unwrap()
            .get(0);
        self.direct
            .batch_execute(&format!("DROP TABLE {}", self.table))
            .await
            .unwrap();
        self.proxy.stop().await;
        (recs, rows)
    }
}

#[tokio::test]
async fn a_reparse_the_server_rejects_does_not_unrecord_the_statement_it_keeps() {
    use tokio::io::AsyncWriteExt;
    let mut fx = raw_fixture("reparsed").await;
    let (t, s) = (fx.table.clone(), &mut fx.s);
    let insert = format!("INSERT INTO {t} VALUES (1)");
    // Parse and Bind pipelined in one batch: the run is recorded.
    let mut w = parse("s1", &insert);
    w.extend(bind_execute("s1"));
    w.extend(sync());
    s.write_all(&w).await.unwrap();
    let (errors, tags) = batch(s).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags, ["INSERT 0 1"]);
    // A Parse of the taken name fails (42P05); an error earlier in a batch skips another.
    let mut w = parse("s1", "SELECT 1");
    w.extend(sync());
    w.extend(bind_execute("nosuch"));
    w.extend(parse("s1", "SELECT 2"));
    w.extend(sync());
    // The statement the server kept is the INSERT: its run is recorded.
    w.extend(bind_execute("s1"));
    w.extend(sync());
    s.write_all(&w).await.unwrap();
    assert_eq!(batch(s).await.0, ["42P05"]);
    assert_eq!(batch(s).await.0, ["26000"]);
    let (errors, tags) = batch(s).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags, ["INSERT 0 1"]);
    let (recs, rows) = fx.finish().await;
    let runs = statements(&recs, &format!("INSERT INTO {t}")).len();
    assert_eq!(rows, 2);
    assert_eq!(runs, 2, "every run of the INSERT has its record");
}

#[tokio::test]
async fn a_sql_prepared_statement_run_by_a_protocol_bind_is_recorded_each_run() {
    use tokio::io::AsyncWriteExt;
    let mut fx = raw_fixture("sqlprep").await;
    let (t, s) = (fx.table.clone(), &mut fx.s);
    s.write_all(&crate::support::raw::query(&format!(
        "PREPARE sq AS INSERT INTO {t} VALUES (7)"
    )))
    .await
    .unwrap();
    assert!(batch(s).await.0.is_empty());
    let mut w = bind_execute("sq");
    w.extend(sync());
    w.extend(bind_execute("sq"));
    w.extend(sync());
    s.write_all(&w).await.unwrap();
    for _ in 0..2 {
        let (errors, tags) = batch(s).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(tags, ["INSERT 0 1"]);
    }
    let (recs, rows) = fx.finish().await;
    assert_eq!(rows, 2);
    assert_eq!(statements(&recs, "EXECUTE \"sq\"").len(), 2, "{recs:#?}");
}
