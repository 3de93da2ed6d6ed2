//! Change tickets, break-glass and restarts on the wire: tickets created and approved through
//! the real admin API and CLI, attached with `SET pgwarden.ticket`, startup options or a
//! comment, and checked by the proxy in front of the machine's PostgreSQL; break-glass uses
//! listed for review; tickets, approvals and holds kept across a restart and a kill -9 of the
//! real binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::admin::{api, bin, hold_reaches, pending_hold, policy_dir, Tokens};
use crate::support::process::Process;
use crate::support::{
    connect, direct, eventually, psql, sqlstate, unique, within, Proxy, PG_DB, PG_HOST, PG_PORT,
    PG_USER,
};

const BOUND: Duration = Duration::from_secs(60);

/// `require_ticket` on dropping, truncating and deleting from `tk_*` tables, a hold on
/// dropping `hd_*` tables, a block on dropping `bk_*` tables; `root` may break the glass.
pub const RULES: &str = r#"
[break_glass]
users = ["root"]

[[rule]]
id = "test.tk-drop"
description = "Dropping a tk_ table needs a change ticket."
action = "require_ticket"
message = "dropping a tk_ table needs a change ticket"
hint = "Attach an approved ticket."
[rule.match]
tags = ["DROP TABLE"]
objects = ["*tk_*"]

[[rule]]
id = "test.tk-truncate"
description = "Truncating a tk_ table needs a change ticket."
action = "require_ticket"
message = "truncating a tk_ table needs a change ticket"
[rule.match]
tags = ["TRUNCATE TABLE"]
objects = ["*tk_*"]

[[rule]]
id = "test.tk-delete"
description = "Deleting from a tk_ table needs a change ticket."
action = "require_ticket"
message = "deleting from a tk_ table needs a change ticket"
[rule.match]
tags = ["DELETE"]
objects = ["*tk_*"]

[[rule]]
id = "test.hd-drop"
description = "Dropping an hd_ table needs a human approval."
action = "hold"
message = "dropping an hd_ table needs an approval"
[rule.match]
tags = ["DROP TABLE"]
objects = ["*hd_*"]

[[rule]]
id = "test.bk-drop"
description = "bk_ tables are never dropped."
action = "block"
message = "bk_ tables are never dropped"
[rule.match]
tags = ["DROP TABLE"]
objects = ["*bk_*"]
"#;

/// Token holders: `alice` requests tickets (database user `alice_db`), `alice2` is another
/// token of the same database user, `bob` and `carol` approve, `dev` is the database user
/// the tests connect as, `vera` only views, `root` is an admin.
fn tokens() -> Tokens {
    Tokens::new(&[
        ("alice", "approver", Some("alice_db"), &[]),
        ("alice2", "approver", Some("alice_db"), &[]),
        ("bob", "approver", Some("bob"), &["dba"]),
        ("carol", "approver", Some("carol"), &["dba"]),
        ("dev", "approver", Some(PG_USER), &[]),
        ("vera", "viewer", None, &[]),
        ("root", "admin", Some("root_admin"), &[]),
    ])
}

struct Fixture {
    proxy: Proxy,
    tokens: Tokens,
    admin: String,
    _policies: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let policies = policy_dir(RULES);
    let tokens = tokens();
    let (p, t) = (policies.path().to_path_buf(), tokens.file.clone());
    let proxy = Proxy::start_with(move |c| {
        c.policies = p;
        c.admin.tokens = Some(t);
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = proxy.admin_url();
    Fixture {
        proxy,
        tokens,
        admin,
        _policies: policies,
    }
}

/// The admin-side calls the tests make, against whichever pgwarden is running.
struct Admin<'a> {
    url: String,
    tokens: &'a Tokens,
}

impl Admin<'_> {
    fn secret(&self, who: &str) -> &str {
        self.tokens.secret(who)
    }

    /// `POST /api/tickets` as `who`, expecting 201.
    async fn create(&self, who: &str, body: Value) -> Value {
        let (s, v) = api(
            "POST",
            &format!("{}/api/tickets", self.url),
            Some(self.secret(who)),
            Some(body),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    async fn post(&self, who: Option<&str>, path: &str, body: Value) -> (u16, Value) {
        api(
            "POST",
            &format!("{}{path}", self.url),
            who.map(|w| self.secret(w)),
            Some(body),
        )
        .await
    }

    async fn approve(&self, id: &str, who: &str) -> (u16, Value) {
        self.post(
            Some(who),
            &format!("/api/tickets/{id}/approve"),
            json!({"comment": format!("ok from {who}")}),
        )
        .await
    }

    /// Approves as `who`, expecting 200.
    async fn approved(&self, id: &str, who: &str) -> Value {
        let (s, v) = self.approve(id, who).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn ticket(&self, id: &str) -> Value {
        let (s, v) = api(
            "GET",
            &format!("{}/api/tickets/{id}", self.url),
            Some(self.secret("vera")),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = api(
            "GET",
            &format!("{}{path}", self.url),
            Some(self.secret("vera")),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The real CLI as `who` (URL and token from the environment), off the runtime's
    /// workers.
    async fn cli(&self, who: &str, args: &[&str]) -> (i32, String, String) {
        let (url, token) = (self.url.clone(), self.secret(who).to_owned());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::support::admin::cli(&url, &token, &args)
        })
        .await
        .unwrap()
    }
}

impl Fixture {
    fn admin(&self) -> Admin<'_> {
        Admin {
            url: self.admin.clone(),
            tokens: &self.tokens,
        }
    }

    fn dsn(&self, user: &str) -> String {
        self.proxy.dsn(user, PG_DB)
    }
}

/// Tables made directly on the server; dropped (directly) when the test ends, passed or not.
struct Tables(Vec<String>);

impl Tables {
    async fn new(prefixes: &[&str]) -> Tables {
        let names: Vec<String> = prefixes.iter().map(|p| unique(p)).collect();
        let d = direct().await;
        for n in &names {
            d.batch_execute(&format!(
                "DROP TABLE IF EXISTS {n}; CREATE TABLE {n} (id int); INSERT INTO {n} VALUES (1), (2)"
            ))
            .await
            .unwrap();
        }
        Tables(names)
    }

    fn name(&self, i: usize) -> &str {
        &self.0[i]
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.0.join(", "));
        let _ = psql(
            &format!("host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={PG_DB}"),
            &["-q", "-c", &sql],
            None,
        );
    }
}

async fn exists(name: &str) -> bool {
    direct()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .unwrap()
        .get(0)
}

/// The refusal `e` must be: 42501 from rule `rule`, its detail saying `why`.
fn refused_by(e: &tokio_postgres::Error, rule: &str, why: &str) {
    assert_eq!(sqlstate(e).as_deref(), Some("42501"), "{e:?}");
    let db = e.as_db_error().unwrap();
    assert!(
        db.message().starts_with(&format!("pgwarden: {rule}: ")),
        "{}",
        db.message()
    );
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains(why),
        "wanted {why:?} in the detail: {detail}"
    );
}

/// The refusal of a statement under `ticket` that the ticket does not cover, for `reason`.
fn not_covered(e: &tokio_postgres::Error, rule: &str, ticket: &str, reason: &str) {
    refused_by(
        e,
        rule,
        &format!("Ticket {ticket} was attached but does not cover this statement: {reason}."),
    );
}

/// Runs `sql` in `c`, which must fail; returns once the server has ended its batch.
/// (tokio-postgres returns at the ErrorResponse; a SET sent before the ReadyForQuery behind
/// it reaches pgwarden would be pipelined behind a failed batch, which pgwarden gets wrong:
/// see `a_set_pipelined_behind_a_failed_batch_is_not_undone`.)
async fn fails(c: &tokio_postgres::Client, sql: &str) -> tokio_postgres::Error {
    let e = c.batch_execute(sql).await.expect_err(sql);
    c.simple_query("SELECT 1").await.unwrap();
    e
}

const NO_TICKET: &str = "No change ticket is attached.";

/// A whole-second timestamp `secs` from now (negative: in the past), RFC 3339.
fn from_now(secs: i64) -> String {
    let t = jiff::Timestamp::now().as_second() + secs;
    jiff::Timestamp::from_second(t).unwrap().to_string()
}

/// `SET pgwarden.ticket = 'id'` in `c`, as a statement of its own.
async fn attach(c: &tokio_postgres::Client, id: &str) {
    c.batch_execute(&format!("SET pgwarden.ticket = '{id}'"))
        .await
        .unwrap();
}

// ---- 1. SET / SHOW / RESET pgwarden.ticket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ticket_lets_a_drop_run_reset_refuses_the_next_and_uses_are_counted() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_set_a", "tk_set_b", "tk_set_c"]).await;
    let t = a
        .create(
            "alice",
            json!({"id": "CHG-101", "title": "drop old tables"}),
        )
        .await;
    assert_eq!(t["id"], "CHG-101");
    assert_eq!(t["status"], "pending");
    assert_eq!(t["approvals_required"], 1, "one approval by default");
    assert_eq!(t["uses"], 0);
    assert_eq!(t["requester"]["token"], "alice");
    assert_eq!(t["requester"]["db_user"], "alice_db");
    let t = a.approved("CHG-101", "bob").await;
    assert_eq!(t["status"], "approved");

    let c = connect(&fx.dsn(PG_USER)).await;
    // Nothing attached yet.
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(0))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(0)).await);

    attach(&c, "CHG-101").await;
    let shown: String = c
        .query_one("SHOW pgwarden.ticket", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "CHG-101");
    c.batch_execute(&format!("DROP TABLE {}", tables.name(0)))
        .await
        .unwrap();
    assert!(!exists(tables.name(0)).await);
    assert_eq!(a.ticket("CHG-101").await["uses"], 1);
    // The extended protocol too.
    c.execute(&format!("DROP TABLE {}", tables.name(1)) as &str, &[])
        .await
        .unwrap();
    assert!(!exists(tables.name(1)).await);
    assert_eq!(a.ticket("CHG-101").await["uses"], 2);

    c.batch_execute("RESET pgwarden.ticket").await.unwrap();
    let shown: String = c
        .query_one("SHOW pgwarden.ticket", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "");
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(2))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert_eq!(
        e.as_db_error().unwrap().hint(),
        Some("Attach an approved ticket.")
    );
    assert!(exists(tables.name(2)).await);
    let t = a.ticket("CHG-101").await;
    assert_eq!(t["uses"], 2, "a refused statement uses nothing: {t}");
    // The session goes on.
    c.simple_query("SELECT 1").await.unwrap();
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ticket_earlier_in_the_same_query_string_attaches_it() {
    // PostgreSQL runs `SET x = ..; DROP ..` in order, so `psql -c "SET pgwarden.ticket =
    // 'CHG-102'; DROP TABLE t"` or a migration file sent as one string means the DROP runs
    // under CHG-102.
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_same_a"]).await;
    a.create("alice", json!({"id": "CHG-102", "title": "one string"}))
        .await;
    a.approved("CHG-102", "bob").await;
    let c = connect(&fx.dsn(PG_USER)).await;
    c.batch_execute(&format!(
        "SET pgwarden.ticket = 'CHG-102'; DROP TABLE {}",
        tables.name(0)
    ))
    .await
    .unwrap();
    assert!(!exists(tables.name(0)).await);
    assert_eq!(a.ticket("CHG-102").await["uses"], 1);
    fx.proxy.stop().await;
}

// ---- 2. startup options

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_attach_the_ticket_for_tokio_postgres_and_psql() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_opt_a", "tk_opt_b"]).await;
    a.create("alice", json!({"id": "CHG-201", "title": "startup"}))
        .await;
    a.approved("CHG-201", "carol").await;

    // tokio-postgres: `options` in the connection string.
    let c = connect(&format!(
        "{} options='-c pgwarden.ticket=CHG-201'",
        fx.dsn(PG_USER)
    ))
    .await;
    let shown: String = c
        .query_one("SHOW pgwarden.ticket", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "CHG-201");
    c.batch_execute(&format!("DROP TABLE {}", tables.name(0)))
        .await
        .unwrap();
    assert!(!exists(tables.name(0)).await);
    assert_eq!(a.ticket("CHG-201").await["uses"], 1);

    // psql with PGOPTIONS.
    let (dsn, t1) = (fx.dsn(PG_USER), tables.name(1).to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .arg("-X")
            .arg(dsn)
            .args(["-At", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", "SHOW pgwarden.ticket"])
            .args(["-c", &format!("DROP TABLE {t1}")])
            .env("PGOPTIONS", "-c pgwarden.ticket=CHG-201")
            .env("PGCONNECT_TIMEOUT", "20")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "CHG-201\nDROP TABLE\n");
    assert!(!exists(tables.name(1)).await);
    assert_eq!(a.ticket("CHG-201").await["uses"], 2);

    // A startup option naming a ticket that does not cover: the session opens, the
    // statement is refused with the reason.
    let t = Tables::new(&["tk_opt_c"]).await;
    let c = connect(&format!(
        "{} options='-c pgwarden.ticket=CHG-nope'",
        fx.dsn(PG_USER)
    ))
    .await;
    let e = fails(&c, &format!("DROP TABLE {}", t.name(0))).await;
    not_covered(&e, "test.tk-drop", "CHG-nope", "there is no such ticket");
    assert!(exists(t.name(0)).await);
    fx.proxy.stop().await;
}

// ---- 3. the comment form

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_attaches_the_ticket_for_that_statement_only() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_cm_a", "tk_cm_b", "tk_cm_c", "tk_cm_d"]).await;
    a.create("alice", json!({"id": "CHG-301", "title": "comment"}))
        .await;
    a.approved("CHG-301", "bob").await;
    let c = connect(&fx.dsn(PG_USER)).await;

    c.batch_execute(&format!(
        "/* pgwarden:ticket=CHG-301 */ DROP TABLE {}",
        tables.name(0)
    ))
    .await
    .unwrap();
    assert!(!exists(tables.name(0)).await);
    // The next statement has no ticket.
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(1))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(1)).await);
    // Through the extended protocol as well.
    c.execute(
        &format!(
            "/* pgwarden:ticket=CHG-301 */ DROP TABLE {}",
            tables.name(1)
        ) as &str,
        &[],
    )
    .await
    .unwrap();
    assert!(!exists(tables.name(1)).await);
    assert_eq!(a.ticket("CHG-301").await["uses"], 2);

    // The comment wins over the session's ticket, for its statement only.
    c.batch_execute("SET pgwarden.ticket = 'CHG-unknown'")
        .await
        .unwrap();
    c.batch_execute(&format!(
        "/* pgwarden:ticket=CHG-301 */ DROP TABLE {}",
        tables.name(2)
    ))
    .await
    .unwrap();
    assert!(!exists(tables.name(2)).await);
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(3))).await;
    not_covered(&e, "test.tk-drop", "CHG-unknown", "there is no such ticket");
    assert!(exists(tables.name(3)).await);
    assert_eq!(a.ticket("CHG-301").await["uses"], 3);
    fx.proxy.stop().await;
}

// ---- 4. every way a ticket does not cover

/// Attaches `ticket` in `c` and tries `sql`, which must be refused by `rule` for `reason`;
/// nothing of it runs.
async fn refused_under(
    c: &tokio_postgres::Client,
    ticket: &str,
    sql: &str,
    rule: &str,
    reason: &str,
) {
    c.batch_execute(&format!("SET pgwarden.ticket = '{ticket}'"))
        .await
        .unwrap();
    let e = fails(c, sql).await;
    not_covered(&e, rule, ticket, reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_that_do_not_cover_are_refused_with_the_precise_reason() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_nc_a", "tk_nc_b", "tk_orders_nc"]).await;
    let (t0, t1, orders) = (tables.name(0), tables.name(1), tables.name(2));
    let drop0 = format!("DROP TABLE {t0}");
    let c = connect(&fx.dsn(PG_USER)).await;
    const DROP: &str = "test.tk-drop";

    // Unknown.
    refused_under(&c, "CHG-404", &drop0, DROP, "there is no such ticket").await;

    // Pending: two approvals needed, one given.
    a.create(
        "alice",
        json!({"id": "CHG-pend", "title": "t", "approvals_required": 2}),
    )
    .await;
    let t = a.approved("CHG-pend", "bob").await;
    assert_eq!(t["status"], "pending");
    refused_under(
        &c,
        "CHG-pend",
        &drop0,
        DROP,
        "it is pending: it does not have all its approvals yet",
    )
    .await;

    // Rejected.
    a.create("alice", json!({"id": "CHG-rej", "title": "t"}))
        .await;
    let (s, v) = a
        .post(
            Some("bob"),
            "/api/tickets/CHG-rej/reject",
            json!({"reason": "not now"}),
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("rejected")), "{v}");
    assert_eq!(v["reason"], "not now");
    assert_eq!(v["closed_by"], "bob");
    refused_under(&c, "CHG-rej", &drop0, DROP, "it was rejected").await;

    // Revoked after its approval (admins revoke; approvers may not).
    a.create("alice", json!({"id": "CHG-rev", "title": "t"}))
        .await;
    a.approved("CHG-rev", "bob").await;
    let (s, _) = a
        .post(
            Some("carol"),
            "/api/tickets/CHG-rev/revoke",
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(s, 403);
    let (code, out, err) = a
        .cli(
            "root",
            &["tickets", "revoke", "CHG-rev", "--reason", "incident over"],
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "ticket CHG-rev: revoked (1 of 1 approvals)\n");
    let v = a.ticket("CHG-rev").await;
    assert_eq!(v["reason"], "incident over");
    assert_eq!(v["closed_by"], "root");
    refused_under(&c, "CHG-rev", &drop0, DROP, "it was revoked").await;

    // Not yet valid.
    let from = from_now(3600);
    a.create(
        "alice",
        json!({"id": "CHG-later", "title": "t", "valid_from": from}),
    )
    .await;
    let t = a.approved("CHG-later", "bob").await;
    assert_eq!(t["status"], "approved");
    assert_eq!(t["valid_from"], from.as_str());
    refused_under(
        &c,
        "CHG-later",
        &drop0,
        DROP,
        &format!("it is not valid before {from}"),
    )
    .await;

    // Used up: one use, then refused.
    a.create(
        "alice",
        json!({"id": "CHG-once", "title": "t", "max_uses": 1}),
    )
    .await;
    a.approved("CHG-once", "bob").await;
    attach(&c, "CHG-once").await;
    c.batch_execute(&drop0).await.unwrap();
    assert!(!exists(t0).await);
    refused_under(
        &c,
        "CHG-once",
        &format!("DROP TABLE {t1}"),
        DROP,
        "it is used up (1 of 1 uses)",
    )
    .await;
    assert_eq!(a.ticket("CHG-once").await["uses"], 1);
    let drop1 = format!("DROP TABLE {t1}");

    // Out of scope: objects. An unqualified name is read as public.<name>.
    a.create(
        "alice",
        json!({"id": "CHG-obj", "title": "t", "scope": {"objects": ["public.tk_orders*"]}}),
    )
    .await;
    a.approved("CHG-obj", "bob").await;
    refused_under(
        &c,
        "CHG-obj",
        &drop1,
        DROP,
        &format!(
            "its scope does not cover the object \"{t1}\" (an unqualified name is read as public.{t1})"
        ),
    )
    .await;
    // ... while the table the glob names is covered, unqualified or not.
    c.batch_execute(&format!("DELETE FROM {orders} WHERE id = 1"))
        .await
        .unwrap();
    c.batch_execute(&format!("DROP TABLE public.{orders}"))
        .await
        .unwrap();
    assert!(!exists(orders).await);
    assert_eq!(a.ticket("CHG-obj").await["uses"], 2);

    // Out of scope: database, user, rule, environment, tag.
    for (id, scope, reason) in [
        (
            "CHG-db",
            json!({"databases": ["other_db"]}),
            format!("its scope does not cover the database \"{PG_DB}\""),
        ),
        (
            "CHG-user",
            json!({"users": ["root"]}),
            format!("its scope does not cover the user \"{PG_USER}\""),
        ),
        (
            "CHG-rule",
            json!({"rules": ["test.tk-truncate"]}),
            "its scope does not cover the rule \"test.tk-drop\"".to_owned(),
        ),
        (
            "CHG-env",
            json!({"environments": ["staging"]}),
            "its scope does not cover the environment \"production\"".to_owned(),
        ),
        (
            "CHG-tag",
            json!({"tags": ["TRUNCATE*"]}),
            "its scope does not cover the tag \"DROP TABLE\"".to_owned(),
        ),
    ] {
        a.create("alice", json!({"id": id, "title": "t", "scope": scope}))
            .await;
        a.approved(id, "bob").await;
        refused_under(&c, id, &drop1, DROP, &reason).await;
        assert_eq!(a.ticket(id).await["uses"], 0, "{id}");
    }
    assert!(exists(t1).await);
    // The same scopes cover what they name: the user root, the truncate rule and tag.
    let root = connect(&fx.dsn("root")).await;
    attach(&root, "CHG-user").await;
    root.batch_execute(&format!("TRUNCATE {t1}")).await.unwrap();
    attach(&c, "CHG-rule").await;
    c.batch_execute(&format!("TRUNCATE {t1}")).await.unwrap();
    attach(&c, "CHG-tag").await;
    c.batch_execute(&format!("TRUNCATE {t1}")).await.unwrap();
    for id in ["CHG-user", "CHG-rule", "CHG-tag"] {
        assert_eq!(a.ticket(id).await["uses"], 1, "{id}");
    }
    assert!(exists(t1).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_past_its_valid_until_is_refused_as_expired() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_exp_a", "tk_exp_b"]).await;
    // A ticket valid until a few seconds from now (one in the past cannot be created).
    let (s, v) = a
        .post(
            Some("alice"),
            "/api/tickets",
            json!({"id": "CHG-old", "title": "t", "valid_until": from_now(-60)}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("is in the past"),
        "{v}"
    );
    let until = from_now(8);
    a.create(
        "alice",
        json!({"id": "CHG-brief", "title": "t", "valid_until": until}),
    )
    .await;
    let t = a.approved("CHG-brief", "bob").await;
    assert_eq!(t["valid_until"], until.as_str());
    let c = connect(&fx.dsn(PG_USER)).await;
    attach(&c, "CHG-brief").await;
    c.batch_execute(&format!("DROP TABLE {}", tables.name(0)))
        .await
        .unwrap_or_else(|e| panic!("still valid for seconds: {e:?}"));
    // The expiry task closes it once its time has passed.
    let t = eventually(BOUND, "the ticket to expire", || async {
        let t = a.ticket("CHG-brief").await;
        (t["status"] == "expired").then_some(t)
    })
    .await;
    assert_eq!(t["uses"], 1);
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(1))).await;
    not_covered(
        &e,
        "test.tk-drop",
        "CHG-brief",
        &format!("it expired at {until}"),
    );
    assert!(exists(tables.name(1)).await);
    // An expired ticket can be approved no more.
    assert_eq!(a.approve("CHG-brief", "carol").await.0, 409);
    fx.proxy.stop().await;
}

// ---- 5. exact statements

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_of_a_migration_files_statements_covers_those_statements_only() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_mig_a", "tk_mig_b", "tk_mig_c"]).await;
    let (ta, tb, tc) = (tables.name(0), tables.name(1), tables.name(2));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("migration.sql");
    std::fs::write(
        &file,
        format!("-- drop legacy\nDELETE FROM {ta} WHERE id = 1;\n\nDROP TABLE {tb};\n"),
    )
    .unwrap();
    let (code, out, err) = a
        .cli(
            "alice",
            &[
                "tickets",
                "create",
                "CHG-7",
                "--title",
                "drop legacy",
                "--statements",
                file.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "ticket CHG-7 created: pending (0 of 1 approvals)\n");
    let fp = |s: &str| pgwarden::sql::fingerprint(s, Default::default()).unwrap();
    let t = a.ticket("CHG-7").await;
    assert_eq!(
        t["scope"]["statements"],
        json!([
            fp(&format!("DELETE FROM {ta} WHERE id = 1")),
            fp(&format!("DROP TABLE {tb}"))
        ]),
        "{t}"
    );
    let (code, out, err) = a
        .cli("bob", &["tickets", "approve", "CHG-7", "--comment", "fine"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "ticket CHG-7: approved (1 of 1 approvals)\n");

    let c = connect(&fx.dsn(PG_USER)).await;
    c.batch_execute("SET pgwarden.ticket = 'CHG-7'")
        .await
        .unwrap();
    // Another literal is the same statement (fingerprints leave literal values out), so are
    // layout and case.
    c.batch_execute(&format!("delete  from {ta}\n where id = 2"))
        .await
        .unwrap();
    // A parameter stands for a literal too.
    c.execute(&format!("DELETE FROM {ta} WHERE id = $1") as &str, &[&1i32])
        .await
        .unwrap();
    let n: i64 = direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {ta}") as &str, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Another statement on the same table is not.
    let other = format!("DELETE FROM {ta} WHERE id > 1");
    let e = fails(&c, &other).await;
    not_covered(
        &e,
        "test.tk-delete",
        "CHG-7",
        &format!("its scope does not cover the statement \"{}\"", fp(&other)),
    );
    // Nor the file's statement on another table.
    let other = format!("DROP TABLE {tc}");
    let e = fails(&c, &other).await;
    not_covered(
        &e,
        "test.tk-drop",
        "CHG-7",
        &format!("its scope does not cover the statement \"{}\"", fp(&other)),
    );
    assert!(exists(tc).await);
    c.batch_execute(&format!("DROP TABLE {tb}")).await.unwrap();
    assert!(!exists(tb).await);
    assert_eq!(a.ticket("CHG-7").await["uses"], 3);

    // `tickets show` prints the pinned fingerprints and the approval.
    let (code, out, err) = a.cli("vera", &["tickets", "show", "CHG-7"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("drop legacy"), "{out}");
    assert!(out.contains("approved (1 of 1 approvals)"), "{out}");
    assert!(out.contains(&fp(&format!("DROP TABLE {tb}"))), "{out}");
    assert!(out.contains("approved by    bob at "), "{out}");
    assert!(out.contains(": fine"), "{out}");
    fx.proxy.stop().await;
}

// ---- 6. who may approve

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_approvals_need_distinct_approvers_who_did_not_ask() {
    let fx = fixture().await;
    let a = fx.admin();
    // No token, a wrong token, a viewer creating.
    let (s, _) = a
        .post(None, "/api/tickets", json!({"title": "anonymous"}))
        .await;
    assert_eq!(s, 401);
    let (s, _) = api(
        "GET",
        &format!("{}/api/tickets", a.url),
        Some("pgw_wrong"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = a
        .post(Some("vera"), "/api/tickets", json!({"title": "viewer"}))
        .await;
    assert_eq!(s, 403);
    // A generated id.
    let t = a.create("alice", json!({"title": "no id given"})).await;
    let id = t["id"].as_str().unwrap();
    assert!(
        id.strip_prefix("CHG-")
            .is_some_and(|n| n.parse::<u64>().is_ok()),
        "{t}"
    );
    // A given id once.
    a.create(
        "alice",
        json!({"id": "CHG-6", "title": "two approvals", "approvals_required": 2}),
    )
    .await;
    let (s, _) = a
        .post(
            Some("bob"),
            "/api/tickets",
            json!({"id": "CHG-6", "title": "again"}),
        )
        .await;
    assert_eq!(s, 409);

    // The requester, by token and by database user, may not approve.
    let (s, v) = a.approve("CHG-6", "alice").await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("their own change"),
        "{v}"
    );
    let (s, v) = a.approve("CHG-6", "alice2").await;
    assert_eq!(s, 409, "the same database user: {v}");
    // Nor reject it.
    let (s, _) = a
        .post(
            Some("alice2"),
            "/api/tickets/CHG-6/reject",
            json!({"reason": "mine"}),
        )
        .await;
    assert_eq!(s, 409);
    // Viewers and anonymous callers never approve.
    assert_eq!(a.approve("CHG-6", "vera").await.0, 403);
    let (s, _) = a.post(None, "/api/tickets/CHG-6/approve", json!({})).await;
    assert_eq!(s, 401);
    // A rejection must say why.
    let (s, _) = a
        .post(
            Some("bob"),
            "/api/tickets/CHG-6/reject",
            json!({"reason": "  "}),
        )
        .await;
    assert_eq!(s, 400);

    // The CLI says the same, exit 1.
    let (code, out, err) = a.cli("alice", &["tickets", "approve", "CHG-6"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("their own change"), "{err}");
    assert!(err.contains("(HTTP 409)"), "{err}");
    let (code, _, err) = a.cli("vera", &["tickets", "approve", "CHG-6"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("(HTTP 403)"), "{err}");

    // Two distinct approvers.
    let (code, out, err) = a
        .cli("bob", &["tickets", "approve", "CHG-6", "--comment", "one"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "ticket CHG-6: pending (1 of 2 approvals)\n");
    let (s, v) = a.approve("CHG-6", "bob").await;
    assert_eq!(s, 409, "approving twice: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("approved this already"),
        "{v}"
    );
    assert_eq!(a.ticket("CHG-6").await["status"], "pending");
    let t = a.approved("CHG-6", "carol").await;
    assert_eq!(t["status"], "approved");
    let by: Vec<&str> = t["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, ["bob", "carol"]);
    assert_eq!(t["approvals"][0]["comment"], "one");
    assert_eq!(t["approvals"][1]["db_user"], "carol");
    // Once approved, more approvals and rejections are conflicts.
    assert_eq!(a.approve("CHG-6", "dev").await.0, 409);
    let (s, _) = a
        .post(
            Some("dev"),
            "/api/tickets/CHG-6/reject",
            json!({"reason": "late"}),
        )
        .await;
    assert_eq!(s, 409);
    // No such ticket.
    assert_eq!(a.approve("CHG-none", "bob").await.0, 404);

    // Rejected from the CLI: final.
    a.create("alice", json!({"id": "CHG-6r", "title": "to reject"}))
        .await;
    let (code, out, err) = a
        .cli("bob", &["tickets", "reject", "CHG-6r", "--reason", "nope"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "ticket CHG-6r: rejected (0 of 1 approvals)\n");
    assert_eq!(a.approve("CHG-6r", "carol").await.0, 409);

    // Every scope flag of `tickets create` lands in the ticket.
    let (code, out, err) = a
        .cli(
            "alice",
            &[
                "tickets",
                "create",
                "CHG-6f",
                "--title",
                "flags",
                "--approvals",
                "2",
                "--max-uses",
                "3",
                "--valid-for",
                "2h",
                "--env",
                "production",
                "--database",
                "test",
                "--user",
                "postgres",
                "--rule",
                "test.tk-*",
                "--tag",
                "DROP TABLE",
                "--object",
                "public.orders*",
                "--approver-group",
                "dba",
            ],
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = a
        .cli("vera", &["tickets", "show", "CHG-6f", "--format", "json"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        t,
        a.ticket("CHG-6f").await,
        "--format json is the API's answer"
    );
    assert_eq!(t["approvals_required"], 2);
    assert_eq!(t["max_uses"], 3);
    assert_eq!(t["approver_groups"], json!(["dba"]));
    assert_eq!(
        t["scope"],
        json!({"environments": ["production"], "databases": ["test"], "users": ["postgres"],
               "rules": ["test.tk-*"], "tags": ["DROP TABLE"], "objects": ["public.orders*"],
               "statements": []})
    );
    let created: jiff::Timestamp = t["created_at"].as_str().unwrap().parse().unwrap();
    let until: jiff::Timestamp = t["valid_until"].as_str().unwrap().parse().unwrap();
    let span = until.duration_since(created).as_secs();
    assert!((7100..=7300).contains(&span), "--valid-for 2h: {t}");
    // Its approver group: dev is no DBA.
    assert_eq!(a.approve("CHG-6f", "dev").await.0, 403);

    // The list, by the API and the CLI (flags instead of the environment).
    let all = a.get("/api/tickets").await;
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    let approved = a.get("/api/tickets?status=approved").await;
    assert_eq!(approved.as_array().unwrap().len(), 1, "{approved}");
    assert_eq!(approved[0]["id"], "CHG-6");
    let out = tokio::task::spawn_blocking({
        let (url, token) = (a.url.clone(), a.secret("vera").to_owned());
        move || {
            bin()
                .args(["tickets", "list", "--admin", &url, "--token", &token])
                .env_remove("PGWARDEN_ADMIN_URL")
                .env_remove("PGWARDEN_TOKEN")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("CHG-6 "))
        .unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["CHG-6", "approved", "2/2"], "{row}");
    assert!(
        row.contains("alice") && row.ends_with("two approvals"),
        "{row}"
    );
    fx.proxy.stop().await;
}

// ---- 7. break-glass

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_lets_held_and_ticketed_statements_run_for_review_but_not_blocks() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&[
        "tk_bg",
        "hd_bg",
        "bk_bg",
        "tk_bg_opt",
        "tk_bg_no",
        "hd_bg_no",
    ])
    .await;
    let (tk, hd, bk) = (tables.name(0), tables.name(1), tables.name(2));

    // root is named in [break_glass]: a ticketed and a held statement run at once.
    let root = connect(&fx.dsn("root")).await;
    root.batch_execute("SET pgwarden.break_glass = 'incident 42: disk full'")
        .await
        .unwrap();
    within(
        BOUND,
        "the break-glass batch",
        root.batch_execute(&format!("DROP TABLE {tk}; DROP TABLE {hd}")),
    )
    .await
    .unwrap();
    assert!(!exists(tk).await);
    assert!(!exists(hd).await);
    // No hold was opened for it.
    let holds = a.get("/api/holds").await;
    assert_eq!(holds, json!([]), "{holds}");
    // A block stays a block.
    let e = fails(&root, &format!("DROP TABLE {bk}")).await;
    refused_by(&e, "test.bk-drop", "Refused by rule test.bk-drop (block)");
    assert!(exists(bk).await);

    // The use is listed for review.
    let reviews = a.get("/api/reviews").await;
    let list = reviews.as_array().unwrap();
    assert_eq!(list.len(), 1, "{reviews}");
    let r = &list[0];
    assert_eq!(r["user"], "root");
    assert_eq!(r["database"], PG_DB);
    assert_eq!(r["reason"], "incident 42: disk full");
    assert_eq!(r["reviewed_by"], Value::Null);
    let sql = r["sql"].as_str().unwrap();
    assert!(sql.contains(tk) && sql.contains(hd), "{r}");
    let rules: Vec<&str> = r["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(rules.contains(&"test.hd-drop"), "{r}");
    let id = r["id"].as_u64().unwrap().to_string();

    // The same through startup options.
    let opt = connect(&format!(
        "{} options='-c pgwarden.break_glass=oncall'",
        fx.dsn("root")
    ))
    .await;
    opt.batch_execute(&format!("DROP TABLE {}", tables.name(3)))
        .await
        .unwrap();
    assert!(!exists(tables.name(3)).await);
    let reviews = a.get("/api/reviews").await;
    let list = reviews.as_array().unwrap();
    assert_eq!(list.len(), 2, "{reviews}");
    let r2 = list.iter().find(|r| r["reason"] == "oncall").unwrap();
    assert_eq!(r2["rules"], json!(["test.tk-drop"]));
    let id2 = r2["id"].as_u64().unwrap().to_string();

    // `pgwarden reviews` lists both; marking one reviewed takes it off the pending list.
    let (code, out, err) = a.cli("vera", &["reviews"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ID "), "{out}");
    for i in [&id, &id2] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{i} ")) && l.contains("root")),
            "{out}"
        );
    }
    assert!(out.contains("incident 42: disk full"), "{out}");
    let (code, _, err) = a.cli("vera", &["reviews", "mark", &id]).await;
    assert_eq!(code, 1, "viewers do not review: {err}");
    let (code, out, err) = a
        .cli("bob", &["reviews", "mark", &id, "--comment", "seen"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("review {id}: reviewed by bob\n"));
    let (code, _, err) = a.cli("carol", &["reviews", "mark", &id]).await;
    assert_eq!(code, 1, "once: {err}");
    assert!(err.contains("(HTTP 409)"), "{err}");
    let pending = a.get("/api/reviews").await;
    let ids: Vec<u64> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [id2.parse::<u64>().unwrap()], "{pending}");
    let (code, out, _) = a.cli("vera", &["reviews", "list"]).await;
    assert_eq!(code, 0);
    assert!(
        !out.lines().any(|l| l.starts_with(&format!("{id} "))),
        "{out}"
    );
    let reviewed = a.get("/api/reviews?status=reviewed").await;
    assert_eq!(reviewed[0]["id"].to_string(), id);
    assert_eq!(reviewed[0]["reviewed_by"], "bob");
    assert_eq!(reviewed[0]["comment"], "seen");
    let (code, out, _) = a.cli("vera", &["reviews", "--all"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("bob")),
        "{out}"
    );
    let (code, out, err) = a.cli("carol", &["reviews", "mark", &id2]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = a.cli("vera", &["reviews"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "no break-glass uses to review\n");

    // postgres is not named in [break_glass]: setting it changes nothing.
    let pg = connect(&fx.dsn(PG_USER)).await;
    pg.batch_execute("SET pgwarden.break_glass = 'let me through'")
        .await
        .unwrap();
    let e = fails(&pg, &format!("DROP TABLE {}", tables.name(4))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(4)).await);
    // Its held statement is held as anyone's; deny it to end the wait.
    let hd_no = tables.name(5).to_owned();
    let drop_sql = format!("DROP TABLE {hd_no}");
    let drop = pg.batch_execute(&drop_sql);
    let deny = async {
        let h = pending_hold(&a.url, a.secret("vera"), &hd_no).await;
        let (s, v) = a
            .post(
                Some("bob"),
                &format!("/api/holds/{}/deny", h["id"]),
                json!({"reason": "no bypass"}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    };
    let (r, ()) = within(BOUND, "the held statement", async {
        tokio::join!(drop, deny)
    })
    .await;
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
    assert!(exists(&hd_no).await);
    let all = a.get("/api/reviews?status=all").await;
    assert_eq!(all.as_array().unwrap().len(), 2, "no new review: {all}");
    fx.proxy.stop().await;
}

// ---- 8. restarts and kill -9 of the real binary

/// A pgwarden process serving `policies` with `tokens`, keeping its store in `dir/state`.
struct Serving {
    p: Process,
}

impl Serving {
    fn start(dir: &Path, policies: &Path, tokens: &Path) -> Serving {
        let cfg = dir.join("pgwarden.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\npolicies = \"{}\"\nshutdown_grace = \"2s\"\n[state]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntokens = \"{}\"\n[upstream]\naddress = \"{PG_HOST}:{PG_PORT}\"\n",
                policies.display(),
                dir.join("state").display(),
                tokens.display(),
            ),
        )
        .unwrap();
        Serving {
            p: Process::start(&cfg, true),
        }
    }

    fn dsn(&self) -> String {
        self.p.dsn()
    }

    fn admin<'a>(&self, tokens: &'a Tokens) -> Admin<'a> {
        Admin {
            url: self.p.admin.clone().expect("the admin API listens"),
            tokens,
        }
    }

    /// SIGTERM, then the exit status.
    async fn stop(mut self) -> i32 {
        self.p.sigterm();
        self.p.exit_code().await
    }

    /// SIGKILL (kill -9), and reaps it.
    async fn kill9(self) {
        self.p.kill9().await
    }
}

/// The ticket as the store keeps it, without the use count (which a use changes).
fn without_uses(t: &Value) -> Value {
    let mut t = t.clone();
    t.as_object_mut().unwrap().remove("uses");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_approvals_and_holds_survive_a_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let policies = policy_dir(RULES);
    let tokens = tokens();
    let tables = Tables::new(&[
        "tk_rs_a",
        "tk_rs_b",
        "hd_rs",
        "tk_rs_c",
        "tk_rs_d",
        "hd_rs_term",
    ])
    .await;
    let state = dir.path().join("state");

    // First run: a ticket with two approvals, used once.
    let p = Serving::start(dir.path(), policies.path(), &tokens.file);
    let a = p.admin(&tokens);
    a.create(
        "alice",
        json!({"id": "CHG-800", "title": "durable", "approvals_required": 2, "max_uses": 10,
               "scope": {"objects": ["tk_rs_*"]}}),
    )
    .await;
    a.approved("CHG-800", "bob").await;
    let before = a.approved("CHG-800", "carol").await;
    assert_eq!(before["status"], "approved");
    let c = connect(&format!("{} options='-c pgwarden.ticket=CHG-800'", p.dsn())).await;
    c.batch_execute(&format!("DROP TABLE {}", tables.name(0)))
        .await
        .unwrap();
    assert_eq!(a.ticket("CHG-800").await["uses"], 1);
    drop(c);
    // A statement waiting on a hold when pgwarden is told to stop.
    let (held, conn) = tokio_postgres::connect(&p.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let hd_term = tables.name(5).to_owned();
    let sql = format!("DROP TABLE {hd_term}");
    let waiting = tokio::spawn(async move { held.batch_execute(&sql).await });
    let term_hold = pending_hold(&a.url, a.secret("vera"), &hd_term).await["id"]
        .as_u64()
        .unwrap();
    assert!(state.join("pgwarden.db").exists());
    assert_eq!(p.stop().await, 0, "a graceful stop");
    let r = within(BOUND, "the waiting client to hear", waiting)
        .await
        .unwrap();
    assert!(r.is_err(), "the held statement did not run: {r:?}");
    let _ = within(BOUND, "the connection to end", conn).await;
    assert!(exists(&hd_term).await);

    // Second run, same store: everything is there and still works.
    let p = Serving::start(dir.path(), policies.path(), &tokens.file);
    let a = p.admin(&tokens);
    let t = a.ticket("CHG-800").await;
    assert_eq!(without_uses(&t), without_uses(&before), "after a restart");
    // The hold whose session went away with the process is closed, for good.
    let h = hold_reaches(&a.url, a.secret("vera"), term_hold, "withdrawn").await;
    assert_eq!(h["closed_by"], "pgwarden", "{h}");
    let (s, v) = a
        .post(
            Some("bob"),
            &format!("/api/holds/{term_hold}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(t["uses"], 1);
    assert_eq!(t["approvals"].as_array().unwrap().len(), 2);
    let c = connect(&format!("{} options='-c pgwarden.ticket=CHG-800'", p.dsn())).await;
    c.batch_execute(&format!("DROP TABLE {}", tables.name(1)))
        .await
        .unwrap();
    assert!(!exists(tables.name(1)).await);
    assert_eq!(a.ticket("CHG-800").await["uses"], 2);
    // A second ticket created and approved just before the kill: acknowledged, so kept.
    a.create("alice", json!({"id": "CHG-801", "title": "last words"}))
        .await;
    let last = a.approved("CHG-801", "bob").await;
    // A statement waiting on a hold when the process dies.
    let (client, conn) = tokio_postgres::connect(&p.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let hd = tables.name(2).to_owned();
    let sql = format!("DROP TABLE {hd}");
    let waiting = tokio::spawn(async move { client.batch_execute(&sql).await });
    let hold = pending_hold(&a.url, a.secret("vera"), &hd).await;
    let hold_id = hold["id"].as_u64().unwrap();
    let before_kill = a.ticket("CHG-800").await;
    p.kill9().await;
    let r = within(BOUND, "the waiting client to notice", waiting)
        .await
        .unwrap();
    assert!(r.is_err(), "the held statement did not run: {r:?}");
    let _ = within(BOUND, "the connection to end", conn).await;
    assert!(exists(&hd).await);

    // Third run after kill -9: tickets and approvals kept, the orphaned hold withdrawn.
    let p = Serving::start(dir.path(), policies.path(), &tokens.file);
    let a = p.admin(&tokens);
    assert_eq!(a.ticket("CHG-800").await, before_kill, "after kill -9");
    assert_eq!(a.ticket("CHG-801").await, last, "after kill -9");
    let h = hold_reaches(&a.url, a.secret("vera"), hold_id, "withdrawn").await;
    assert_eq!(
        h["reason"], "pgwarden restarted; the session that waited is gone",
        "{h}"
    );
    assert_eq!(h["closed_by"], "pgwarden");
    let (s, v) = a
        .post(
            Some("bob"),
            &format!("/api/holds/{hold_id}/approve"),
            json!({"comment": "too late"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(exists(&hd).await);
    let pending = a.get("/api/holds?status=pending").await;
    assert_eq!(pending, json!([]));
    // Both tickets still let their statements run.
    let c = connect(&p.dsn()).await;
    attach(&c, "CHG-800").await;
    c.batch_execute(&format!("DROP TABLE {}", tables.name(3)))
        .await
        .unwrap();
    attach(&c, "CHG-801").await;
    c.batch_execute(&format!("DROP TABLE {}", tables.name(4)))
        .await
        .unwrap();
    assert!(!exists(tables.name(3)).await);
    assert!(!exists(tables.name(4)).await);
    assert_eq!(a.ticket("CHG-800").await["uses"], 3);
    assert_eq!(a.ticket("CHG-801").await["uses"], 1);
    assert_eq!(p.stop().await, 0);
}

// ---- what a ticket lets through, counted and re-checked

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_level_execute_is_checked_against_the_ticket_again() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_exe"]).await;
    let t = tables.name(0);
    a.create("alice", json!({"id": "CHG-900", "title": "prepared"}))
        .await;
    a.approved("CHG-900", "bob").await;
    let c = connect(&fx.dsn(PG_USER)).await;
    let e = fails(&c, &format!("PREPARE del AS DELETE FROM {t} WHERE id = $1")).await;
    refused_by(&e, "test.tk-delete", NO_TICKET);
    attach(&c, "CHG-900").await;
    c.batch_execute(&format!("PREPARE del AS DELETE FROM {t} WHERE id = $1"))
        .await
        .unwrap();
    c.batch_execute("EXECUTE del(1)").await.unwrap();
    let uses = a.ticket("CHG-900").await["uses"].as_u64().unwrap();
    let (s, _) = a
        .post(
            Some("root"),
            "/api/tickets/CHG-900/revoke",
            json!({"reason": "stop"}),
        )
        .await;
    assert_eq!(s, 200);
    let e = fails(&c, "EXECUTE del(2)").await;
    not_covered(&e, "test.tk-delete", "CHG-900", "it was revoked");
    let n: i64 = direct()
        .await
        .query_one(&format!("SELECT count(*) FROM {t}") as &str, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "EXECUTE del(1) ran, EXECUTE del(2) did not");
    assert_eq!(a.ticket("CHG-900").await["uses"].as_u64().unwrap(), uses);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_is_not_run_under_a_revoked_or_used_up_ticket() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_prep_a", "tk_prep_b"]).await;
    let (ta, tb) = (tables.name(0), tables.name(1));
    let count = |t: String| async move {
        let n: i64 = direct()
            .await
            .query_one(&format!("SELECT count(*) FROM {t}") as &str, &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let c = connect(&fx.dsn(PG_USER)).await;

    // Revoked after the statement was prepared (Parse) under it.
    a.create("alice", json!({"id": "CHG-910", "title": "t"}))
        .await;
    a.approved("CHG-910", "bob").await;
    attach(&c, "CHG-910").await;
    let del = c
        .prepare(&format!("DELETE FROM {ta} WHERE id = $1"))
        .await
        .unwrap();
    // The ticket's check at Parse covers one run.
    c.execute(&del, &[&1i32]).await.unwrap();
    let (s, _) = a
        .post(
            Some("root"),
            "/api/tickets/CHG-910/revoke",
            json!({"reason": "change window closed"}),
        )
        .await;
    assert_eq!(s, 200);
    let e = c.execute(&del, &[&2i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    assert!(
        format!("{e:?}").contains("let through for one run"),
        "{e:?}"
    );
    // Prepared again, it is decided again: the ticket is revoked now.
    let e = c
        .prepare(&format!("DELETE FROM {ta} WHERE id = $1"))
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("it was revoked"), "{e:?}");
    assert_eq!(
        count(ta.to_owned()).await,
        1,
        "nothing deleted after the revocation"
    );

    // One use allowed: the second execution is a second statement.
    a.create(
        "alice",
        json!({"id": "CHG-911", "title": "t", "max_uses": 1}),
    )
    .await;
    a.approved("CHG-911", "bob").await;
    attach(&c, "CHG-911").await;
    let del = c
        .prepare(&format!("DELETE FROM {tb} WHERE id = $1"))
        .await
        .unwrap();
    c.execute(&del, &[&1i32]).await.unwrap();
    let e = c.execute(&del, &[&2i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    assert_eq!(count(tb.to_owned()).await, 1);
    assert_eq!(a.ticket("CHG-911").await["uses"], 1);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_uses_counts_every_statement_of_a_query_string() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_mu_a", "tk_mu_b", "tk_mu_c", "tk_mu_d"]).await;
    let c = connect(&fx.dsn(PG_USER)).await;
    // Two uses: a string of two statements needing the ticket takes both.
    a.create(
        "alice",
        json!({"id": "CHG-920", "title": "t", "max_uses": 2}),
    )
    .await;
    a.approved("CHG-920", "bob").await;
    attach(&c, "CHG-920").await;
    c.batch_execute(&format!(
        "DROP TABLE {}; DROP TABLE {}",
        tables.name(0),
        tables.name(1)
    ))
    .await
    .unwrap();
    assert_eq!(a.ticket("CHG-920").await["uses"], 2);
    // One use: two statements are more than it allows.
    a.create(
        "alice",
        json!({"id": "CHG-921", "title": "t", "max_uses": 1}),
    )
    .await;
    a.approved("CHG-921", "bob").await;
    attach(&c, "CHG-921").await;
    let e = fails(
        &c,
        &format!(
            "DROP TABLE {}; DROP TABLE {}",
            tables.name(2),
            tables.name(3)
        ),
    )
    .await;
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
    assert!(exists(tables.name(2)).await && exists(tables.name(3)).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_in_one_statement_does_not_cover_the_next_in_the_same_string() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_cm_next"]).await;
    a.create("alice", json!({"id": "CHG-930", "title": "t"}))
        .await;
    a.approved("CHG-930", "bob").await;
    let c = connect(&fx.dsn(PG_USER)).await;
    let e = fails(
        &c,
        &format!(
            "/* pgwarden:ticket=CHG-930 */ SELECT 1; DROP TABLE {}",
            tables.name(0)
        ),
    )
    .await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(0)).await);
    assert_eq!(a.ticket("CHG-930").await["uses"], 0);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_review_names_every_rule_it_bypassed() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_bg_all", "hd_bg_all"]).await;
    let root = connect(&fx.dsn("root")).await;
    root.batch_execute("SET pgwarden.break_glass = 'incident'")
        .await
        .unwrap();
    root.batch_execute(&format!(
        "DROP TABLE {}; DROP TABLE {}",
        tables.name(0),
        tables.name(1)
    ))
    .await
    .unwrap();
    let reviews = a.get("/api/reviews").await;
    let mut rules: Vec<String> = reviews[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    rules.sort();
    assert_eq!(rules, ["test.hd-drop", "test.tk-drop"], "{reviews}");
    fx.proxy.stop().await;
}

// ---- the ticket and break-glass follow the server's settings

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one(&format!("SHOW {name}") as &str, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_reset_all_and_discard_all_take_the_ticket_and_break_glass_away() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_rb_a", "tk_rb_b", "tk_rb_c", "tk_rb_d", "tk_rb_e"]).await;
    a.create("alice", json!({"id": "CHG-940", "title": "t"}))
        .await;
    a.approved("CHG-940", "bob").await;
    let c = connect(&fx.dsn(PG_USER)).await;

    // A SET rolled back never happened.
    c.batch_execute("BEGIN").await.unwrap();
    attach(&c, "CHG-940").await;
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(show(&c, "pgwarden.ticket").await, "");
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(0))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    // RESET ALL and DISCARD ALL reset it.
    for reset in ["RESET ALL", "DISCARD ALL"] {
        attach(&c, "CHG-940").await;
        c.batch_execute(reset).await.unwrap();
        assert_eq!(show(&c, "pgwarden.ticket").await, "", "{reset}");
        let e = fails(&c, &format!("DROP TABLE {}", tables.name(0))).await;
        refused_by(&e, "test.tk-drop", NO_TICKET);
    }
    assert!(exists(tables.name(0)).await);
    assert_eq!(a.ticket("CHG-940").await["uses"], 0);

    // Break-glass: rolled back, RESET, RESET ALL.
    let root = connect(&fx.dsn("root")).await;
    root.batch_execute("BEGIN; SET pgwarden.break_glass = 'oops'; ROLLBACK")
        .await
        .unwrap();
    let e = fails(&root, &format!("DROP TABLE {}", tables.name(1))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    for reset in ["RESET pgwarden.break_glass", "RESET ALL"] {
        root.batch_execute("SET pgwarden.break_glass = 'briefly'")
            .await
            .unwrap();
        root.batch_execute(reset).await.unwrap();
        assert_eq!(show(&root, "pgwarden.break_glass").await, "", "{reset}");
        let e = fails(&root, &format!("DROP TABLE {}", tables.name(1))).await;
        refused_by(&e, "test.tk-drop", NO_TICKET);
    }
    // An empty reason is none.
    root.batch_execute("SET pgwarden.break_glass = '  '")
        .await
        .unwrap();
    let e = fails(&root, &format!("DROP TABLE {}", tables.name(1))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(1)).await);
    assert_eq!(a.get("/api/reviews?status=all").await, json!([]));
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_ticket_ends_with_its_transaction() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_loc"]).await;
    a.create("alice", json!({"id": "CHG-950", "title": "t"}))
        .await;
    a.approved("CHG-950", "bob").await;
    let c = connect(&fx.dsn(PG_USER)).await;
    c.batch_execute("BEGIN; SET LOCAL pgwarden.ticket = 'CHG-950'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&c, "pgwarden.ticket").await, "", "the server reset it");
    let e = fails(&c, &format!("DROP TABLE {}", tables.name(0))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(0)).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_break_glass_ends_with_its_transaction() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_bgloc"]).await;
    let root = connect(&fx.dsn("root")).await;
    root.batch_execute("BEGIN; SET LOCAL pgwarden.break_glass = 'one transaction'; COMMIT")
        .await
        .unwrap();
    assert_eq!(show(&root, "pgwarden.break_glass").await, "");
    let e = fails(&root, &format!("DROP TABLE {}", tables.name(0))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(0)).await);
    assert_eq!(a.get("/api/reviews?status=all").await, json!([]));
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_ends_break_glass() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_bgdisc"]).await;
    let root = connect(&fx.dsn("root")).await;
    root.batch_execute("SET pgwarden.break_glass = 'previous client'")
        .await
        .unwrap();
    root.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(show(&root, "pgwarden.break_glass").await, "");
    let e = fails(&root, &format!("DROP TABLE {}", tables.name(0))).await;
    refused_by(&e, "test.tk-drop", NO_TICKET);
    assert!(exists(tables.name(0)).await);
    assert_eq!(a.get("/api/reviews?status=all").await, json!([]));
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_use_of_a_ticket_goes_to_one_session_only() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_race_a", "tk_race_b"]).await;
    a.create(
        "alice",
        json!({"id": "CHG-960", "title": "t", "max_uses": 1}),
    )
    .await;
    a.approved("CHG-960", "bob").await;
    let dsn = format!("{} options='-c pgwarden.ticket=CHG-960'", fx.dsn(PG_USER));
    let (c1, c2) = (connect(&dsn).await, connect(&dsn).await);
    let (s1, s2) = (
        format!("DROP TABLE {}", tables.name(0)),
        format!("DROP TABLE {}", tables.name(1)),
    );
    let (r1, r2) = tokio::join!(c1.batch_execute(&s1), c2.batch_execute(&s2));
    let (ok, err) = match (r1, r2) {
        (Ok(()), Err(e)) => (tables.name(0), e),
        (Err(e), Ok(())) => (tables.name(1), e),
        other => panic!("exactly one may run: {other:?}"),
    };
    not_covered(
        &err,
        "test.tk-drop",
        "CHG-960",
        "it is used up (1 of 1 uses)",
    );
    assert!(!exists(ok).await);
    assert_eq!(
        exists(tables.name(0)).await as u8 + exists(tables.name(1)).await as u8,
        1
    );
    assert_eq!(a.ticket("CHG-960").await["uses"], 1);
    fx.proxy.stop().await;
}

// ---- settings pipelined behind a failed batch

/// A raw session through the proxy as `user`, logged in.
async fn raw_session(fx: &Fixture, user: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(fx.proxy.addr).await.unwrap();
    crate::support::raw::login(&mut s, user, PG_DB).await;
    s
}

/// Sends `queries` in one write and reads their answers up to the last ReadyForQuery:
/// the SQLSTATE of each query's error, or `None` where it succeeded.
async fn pipelined(s: &mut tokio::net::TcpStream, queries: &[&str]) -> Vec<Option<String>> {
    use crate::support::raw::{query, read_msg};
    use tokio::io::AsyncWriteExt;
    let mut bytes = Vec::new();
    for q in queries {
        bytes.extend(query(q));
    }
    s.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    let mut error = None;
    while out.len() < queries.len() {
        let m = within(BOUND, "an answer", read_msg(s))
            .await
            .expect("the session goes on");
        match m.tag {
            b'E' => error = m.sqlstate(),
            b'Z' => out.push(error.take()),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_pipelined_behind_a_failed_batch_is_not_undone() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["tk_pipe"]).await;
    a.create("alice", json!({"id": "CHG-970", "title": "t"}))
        .await;
    a.approved("CHG-970", "bob").await;
    let mut s = raw_session(&fx, PG_USER).await;
    let drop = format!("DROP TABLE {}", tables.name(0));
    // The DROP is refused (no ticket yet); the SET behind it succeeds on the server.
    let r = pipelined(&mut s, &[&drop, "SET pgwarden.ticket = 'CHG-970'"]).await;
    assert_eq!(r, [Some("42501".to_owned()), None]);
    let r = pipelined(&mut s, &["SHOW pgwarden.ticket", &drop]).await;
    assert_eq!(r, [None, None], "the ticket is attached: the DROP runs");
    assert!(!exists(tables.name(0)).await);
    fx.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_reset_pipelined_behind_a_failed_batch_ends_it() {
    let fx = fixture().await;
    let a = fx.admin();
    let tables = Tables::new(&["bk_pipe", "tk_pipe_bg"]).await;
    let mut s = raw_session(&fx, "root").await;
    let r = pipelined(&mut s, &["SET pgwarden.break_glass = 'incident'"]).await;
    assert_eq!(r, [None]);
    // The block is refused even under break-glass; the RESET behind it succeeds.
    let block = format!("DROP TABLE {}", tables.name(0));
    let r = pipelined(&mut s, &[&block, "RESET pgwarden.break_glass"]).await;
    assert_eq!(r, [Some("42501".to_owned()), None]);
    // Break-glass is off: the ticketed DROP is refused and nothing is listed for review.
    let r = pipelined(&mut s, &[&format!("DROP TABLE {}", tables.name(1))]).await;
    assert_eq!(r, [Some("42501".to_owned())]);
    assert!(exists(tables.name(1)).await);
    assert_eq!(a.get("/api/reviews?status=all").await, json!([]));
    fx.proxy.stop().await;
}
