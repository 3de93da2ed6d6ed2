//! The PostgreSQL store, for several pgwarden instances that must act as one: tickets,
//! holds and reviews in a control schema (`pgwarden` by default) that pgwarden creates and
//! migrates itself ([`MIGRATIONS`], applied under an advisory lock so instances starting
//! together do not race). Every change is one transaction that locks the row it changes
//! (`SELECT … FOR UPDATE`), so two approvers racing on two instances have exactly one
//! winner, and that sends `NOTIFY <schema>` with what changed, delivered on commit, so the
//! instance whose session waits on a hold wakes ([`super::super::remote`] listens).
//!
//! Each hold names the instance that opened it: on start an instance withdraws only its own
//! holds left pending, never the holds other instances' sessions are waiting on.
//!
//! Calls are synchronous (the `postgres` client) and run off the async threads, like the
//! SQLite store's. One connection, reopened when it breaks; a transaction whose `BEGIN`
//! failed on a broken connection is retried once on a new one, since nothing of it ran.
//! Times are the same fixed-width RFC 3339 text as in SQLite (nanoseconds kept, text order
//! is time order); lists are `jsonb`.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use postgres::types::{Json, ToSql};
use postgres::{Client, NoTls, Row, Transaction};
use serde::Serialize;

use super::{ts_text, Change, Store, StoreError};
use crate::approval::cover::Uncovered;
use crate::approval::model::{Hold, HoldStatus, Refused, Review, Ticket, TicketStatus};
use crate::approval::{ApprovalError, Result, UseError};

/// Versioned migrations of the control schema, oldest first: `(version, what, SQL)`. The SQL
/// names the schema `{schema}`. Append only; an applied migration is never edited.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "tickets, holds and break-glass reviews",
    "
CREATE TABLE {schema}.tickets (
    id text PRIMARY KEY,
    title text NOT NULL,
    requester jsonb NOT NULL,
    status text NOT NULL,
    approvals jsonb NOT NULL,
    approvals_required bigint NOT NULL,
    approver_groups jsonb NOT NULL,
    valid_from text,
    valid_until text,
    max_uses bigint,
    uses bigint NOT NULL,
    scope jsonb NOT NULL,
    created_at text NOT NULL,
    closed_by text,
    reason text
);
CREATE INDEX tickets_open ON {schema}.tickets (status, valid_until);
CREATE SEQUENCE {schema}.ticket_numbers;
CREATE TABLE {schema}.holds (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance text NOT NULL,
    status text NOT NULL,
    sql text NOT NULL,
    db_user text NOT NULL,
    db_name text NOT NULL,
    client_addr text,
    application_name text NOT NULL,
    rules jsonb NOT NULL,
    approvals_required bigint NOT NULL,
    approver_groups jsonb NOT NULL,
    approvals jsonb NOT NULL,
    opened_at text NOT NULL,
    expires_at text NOT NULL,
    closed_at text,
    closed_by text,
    reason text
);
CREATE INDEX holds_pending ON {schema}.holds (status, expires_at);
CREATE TABLE {schema}.reviews (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    db_user text NOT NULL,
    db_name text NOT NULL,
    client_addr text,
    reason text NOT NULL,
    sql text NOT NULL,
    rules jsonb NOT NULL,
    at text NOT NULL,
    reviewed_by text,
    reviewed_at text,
    comment text
);
",
)];

/// How long connecting may take, and the longest a statement may wait on a lock or run.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT: &str = "15s";

const TICKET_COLUMNS: &str = "id, title, requester, status, approvals, approvals_required, \
    approver_groups, valid_from, valid_until, max_uses, uses, scope, created_at, closed_by, reason";
const HOLD_COLUMNS: &str = "id, status, sql, db_user, db_name, client_addr, application_name, \
    rules, approvals_required, approver_groups, approvals, opened_at, expires_at, closed_at, \
    closed_by, reason";
const REVIEW_COLUMNS: &str =
    "id, db_user, db_name, client_addr, reason, sql, rules, at, reviewed_by, reviewed_at, comment";

/// Where the control schema is and who this instance is.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// libpq-style connection string or URL.
    pub dsn: String,
    /// The control schema (a plain lower-case identifier).
    pub schema: String,
    /// This instance's name, stored with the holds it opens.
    pub instance: String,
}

impl PgTarget {
    /// The NOTIFY channel: the schema's name, so two control schemas never cross-talk.
    pub fn channel(&self) -> &str {
        &self.schema
    }
}

/// Whether `s` may name the control schema: `[a-z_][a-z0-9_]*`, at most 63 bytes (it is
/// spliced into SQL, so nothing that needs quoting).
pub fn valid_schema(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && s.len() <= 63
}

/// The PostgreSQL store.
pub struct PgStore {
    target: PgTarget,
    config: postgres::Config,
    conn: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.target.schema)
            .field("instance", &self.target.instance)
            .finish()
    }
}

impl Drop for PgStore {
    /// Closing the client blocks on its own runtime, which a thread that drives async
    /// tasks may not do: it closes on a thread of its own.
    fn drop(&mut self) {
        let slot = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = slot.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

/// A database error as the store reports it.
fn pg_err(context: &str, e: &postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    StoreError::Postgres(format!("{context}: {detail}"))
}

impl From<postgres::Error> for ApprovalError {
    fn from(e: postgres::Error) -> Self {
        pg_err("control database", &e).into()
    }
}

impl From<postgres::Error> for UseError {
    fn from(e: postgres::Error) -> Self {
        UseError::Store(pg_err("control database", &e).to_string())
    }
}

/// Errors that say the connection itself is gone (not a refusal of the statement).
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || match e.as_db_error() {
            None => true,
            // admin_shutdown, crash_shutdown, cannot_connect_now
            Some(db) => matches!(db.code().code(), "57P01" | "57P02" | "57P03"),
        }
}

impl PgStore {
    /// Connects, creates the schema and applies the migrations this build knows; refuses a
    /// schema migrated by a newer pgwarden. Blocking: call it off the async threads.
    pub fn open(target: PgTarget) -> std::result::Result<PgStore, StoreError> {
        if !valid_schema(&target.schema) {
            return Err(StoreError::Postgres(format!(
                "state.schema {:?} is not a plain lower-case identifier",
                target.schema
            )));
        }
        let mut config: postgres::Config = target
            .dsn
            .parse()
            .map_err(|e| StoreError::Postgres(format!("state.dsn: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("pgwarden state");
        }
        let store = PgStore {
            target,
            config,
            conn: Mutex::new(None),
        };
        let mut conn = store.conn();
        let client = store.client(&mut conn)?;
        migrate(client, &store.target.schema)?;
        drop(conn);
        Ok(store)
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// The libpq settings (for the listener's own connection).
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    fn conn(&self) -> MutexGuard<'_, Option<Client>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection, (re)connecting when there is none or it has closed.
    fn client<'a>(
        &self,
        slot: &'a mut Option<Client>,
    ) -> std::result::Result<&'a mut Client, StoreError> {
        if slot.as_ref().is_some_and(|c| c.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            let mut c = self
                .config
                .connect(NoTls)
                .map_err(|e| pg_err("cannot connect to the control database", &e))?;
            c.batch_execute(&format!(
                "SET statement_timeout = '{STATEMENT_TIMEOUT}'; SET lock_timeout = '{STATEMENT_TIMEOUT}'"
            ))
            .map_err(|e| pg_err("control database", &e))?;
            *slot = Some(c);
        }
        Ok(slot.as_mut().expect("connected above"))
    }

    /// Runs `f` in one transaction: committed on `Ok`, rolled back on `Err`. A broken
    /// connection is dropped so the next call reconnects.
    fn tx<T, E>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>, &str) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<postgres::Error> + From<StoreError>,
    {
        let mut slot = self.conn();
        let mut f = Some(f);
        for attempt in 0..2 {
            let ran = {
                let client = self.client(&mut slot)?;
                match client.transaction() {
                    Ok(mut tx) => {
                        let f = f.take().expect("called once");
                        Ok(f(&mut tx, &self.target.schema).and_then(|v| {
                            tx.commit()?;
                            Ok(v)
                        }))
                    }
                    Err(e) => Err(e),
                }
            };
            match ran {
                Ok(out) => {
                    if slot.as_ref().is_some_and(|c| c.is_closed()) {
                        *slot = None;
                    }
                    return out;
                }
                // Nothing ran: try once more on a new connection.
                Err(e) if attempt == 0 && connection_lost(&e) => *slot = None,
                Err(e) => {
                    if connection_lost(&e) {
                        *slot = None;
                    }
                    return Err(e.into());
                }
            }
        }
        Err(StoreError::Postgres("control database: the connection keeps closing".into()).into())
    }

    /// Tells the other instances (and this one's listener) what changed; sent on commit.
    fn notify(
        &self,
        tx: &mut Transaction<'_>,
        change: Changed<'_>,
    ) -> std::result::Result<(), postgres::Error> {
        let payload = serde_json::to_string(&Notice {
            change,
            from: &self.target.instance,
        })
        .expect("a notice serializes");
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.target.channel(), &payload],
        )?;
        Ok(())
    }
}

/// What a NOTIFY says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Changed<'a> {
    Hold(u64),
    Ticket(&'a str),
    Review(u64),
}

/// A NOTIFY payload: `{"change": {"hold": 42}, "from": "instance"}`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Notice<'a> {
    #[serde(borrow)]
    pub change: Changed<'a>,
    pub from: &'a str,
}

fn migrate(client: &mut Client, schema: &str) -> std::result::Result<(), StoreError> {
    let e = |e: postgres::Error| pg_err("migrating the control schema", &e);
    let mut tx = client.transaction().map_err(e)?;
    // One migrator at a time across instances; the lock ends with the transaction.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgwarden migrate ' || $1::text))",
        &[&schema],
    )
    .map_err(e)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )"
    ))
    .map_err(e)?;
    let found: Option<i32> = tx
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_migrations"),
            &[],
        )
        .map_err(e)?
        .get(0);
    let found = found.unwrap_or(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if found > known {
        return Err(StoreError::Version {
            path: format!("control schema {schema}").into(),
            found: found.into(),
            known: known.into(),
        });
    }
    for (version, what, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(&sql.replace("{schema}", schema))
            .map_err(e)?;
        tx.execute(
            &format!(
                "INSERT INTO {schema}.schema_migrations (version, description) VALUES ($1, $2)"
            ),
            &[version, what],
        )
        .map_err(e)?;
        tracing::info!(schema, version, what, "control schema migrated");
    }
    tx.commit().map_err(e)
}

fn tstext(t: Option<Timestamp>) -> Option<String> {
    t.map(ts_text)
}

fn parse_ts(s: &str) -> std::result::Result<Timestamp, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Postgres(format!("control database: bad time {s:?}: {e}")))
}

fn opt_ts(s: Option<String>) -> std::result::Result<Option<Timestamp>, StoreError> {
    s.as_deref().map(parse_ts).transpose()
}

fn status<T>(s: &str, parse: fn(&str) -> Option<T>) -> std::result::Result<T, StoreError> {
    parse(s).ok_or_else(|| StoreError::Postgres(format!("control database: unknown status {s:?}")))
}

fn u32_of(v: i64) -> std::result::Result<u32, StoreError> {
    u32::try_from(v)
        .map_err(|_| StoreError::Postgres(format!("control database: {v} out of range")))
}

fn ticket_row(r: &Row) -> std::result::Result<Ticket, StoreError> {
    Ok(Ticket {
        id: r.try_get(0)?,
        title: r.try_get(1)?,
        requester: r.try_get::<_, Json<_>>(2)?.0,
        status: status(r.try_get(3)?, TicketStatus::parse)?,
        approvals: r.try_get::<_, Json<_>>(4)?.0,
        approvals_required: u32_of(r.try_get(5)?)?,
        approver_groups: r.try_get::<_, Json<_>>(6)?.0,
        valid_from: opt_ts(r.try_get(7)?)?,
        valid_until: opt_ts(r.try_get(8)?)?,
        max_uses: r.try_get::<_, Option<i64>>(9)?.map(u32_of).transpose()?,
        uses: u32_of(r.try_get(10)?)?,
        scope: r.try_get::<_, Json<_>>(11)?.0,
        created_at: parse_ts(r.try_get(12)?)?,
        closed_by: r.try_get(13)?,
        reason: r.try_get(14)?,
    })
}

fn hold_row(r: &Row) -> std::result::Result<Hold, StoreError> {
    Ok(Hold {
        id: r.try_get::<_, i64>(0)? as u64,
        status: status(r.try_get(1)?, HoldStatus::parse)?,
        sql: r.try_get(2)?,
        user: r.try_get(3)?,
        database: r.try_get(4)?,
        client_addr: r.try_get(5)?,
        application_name: r.try_get(6)?,
        rules: r.try_get::<_, Json<_>>(7)?.0,
        approvals_required: u32_of(r.try_get(8)?)?,
        approver_groups: r.try_get::<_, Json<_>>(9)?.0,
        approvals: r.try_get::<_, Json<_>>(10)?.0,
        opened_at: parse_ts(r.try_get(11)?)?,
        expires_at: parse_ts(r.try_get(12)?)?,
        closed_at: opt_ts(r.try_get(13)?)?,
        closed_by: r.try_get(14)?,
        reason: r.try_get(15)?,
    })
}

fn review_row(r: &Row) -> std::result::Result<Review, StoreError> {
    Ok(Review {
        id: r.try_get::<_, i64>(0)? as u64,
        user: r.try_get(1)?,
        database: r.try_get(2)?,
        client_addr: r.try_get(3)?,
        reason: r.try_get(4)?,
        sql: r.try_get(5)?,
        rules: r.try_get::<_, Json<_>>(6)?.0,
        at: parse_ts(r.try_get(7)?)?,
        reviewed_by: r.try_get(8)?,
        reviewed_at: opt_ts(r.try_get(9)?)?,
        comment: r.try_get(10)?,
    })
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        pg_err("control database", &e)
    }
}

fn rows<T>(
    rows: Vec<Row>,
    each: fn(&Row) -> std::result::Result<T, StoreError>,
) -> std::result::Result<Vec<T>, StoreError> {
    rows.iter().map(each).collect()
}

fn ticket_params(t: &Ticket) -> [Box<dyn ToSql + Sync + '_>; 15] {
    [
        Box::new(&t.id),
        Box::new(&t.title),
        Box::new(Json(&t.requester)),
        Box::new(t.status.name()),
        Box::new(Json(&t.approvals)),
        Box::new(i64::from(t.approvals_required)),
        Box::new(Json(&t.approver_groups)),
        Box::new(tstext(t.valid_from)),
        Box::new(tstext(t.valid_until)),
        Box::new(t.max_uses.map(i64::from)),
        Box::new(i64::from(t.uses)),
        Box::new(Json(&t.scope)),
        Box::new(ts_text(t.created_at)),
        Box::new(&t.closed_by),
        Box::new(&t.reason),
    ]
}

fn refs<'a>(b: &'a [Box<dyn ToSql + Sync + 'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    b.iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn hold_params(h: &Hold) -> [Box<dyn ToSql + Sync + '_>; 15] {
    [
        Box::new(h.status.name()),
        Box::new(&h.sql),
        Box::new(&h.user),
        Box::new(&h.database),
        Box::new(&h.client_addr),
        Box::new(&h.application_name),
        Box::new(Json(&h.rules)),
        Box::new(i64::from(h.approvals_required)),
        Box::new(Json(&h.approver_groups)),
        Box::new(Json(&h.approvals)),
        Box::new(ts_text(h.opened_at)),
        Box::new(ts_text(h.expires_at)),
        Box::new(tstext(h.closed_at)),
        Box::new(&h.closed_by),
        Box::new(&h.reason),
    ]
}

fn review_params(r: &Review) -> [Box<dyn ToSql + Sync + '_>; 10] {
    [
        Box::new(&r.user),
        Box::new(&r.database),
        Box::new(&r.client_addr),
        Box::new(&r.reason),
        Box::new(&r.sql),
        Box::new(Json(&r.rules)),
        Box::new(ts_text(r.at)),
        Box::new(&r.reviewed_by),
        Box::new(tstext(r.reviewed_at)),
        Box::new(&r.comment),
    ]
}

/// `$1, $2, …, $n`.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `col = $k, …` for the columns after the first (the id).
fn assignments(columns: &str, from: usize) -> String {
    columns
        .split(", ")
        .skip(1)
        .enumerate()
        .map(|(i, c)| format!("{c} = ${}", from + i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn load_ticket(
    tx: &mut Transaction<'_>,
    schema: &str,
    id: &str,
    lock: bool,
) -> std::result::Result<Option<Ticket>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    tx.query_opt(
        &format!("SELECT {TICKET_COLUMNS} FROM {schema}.tickets WHERE id = $1{lock}"),
        &[&id],
    )?
    .as_ref()
    .map(ticket_row)
    .transpose()
}

fn save_ticket(
    tx: &mut Transaction<'_>,
    schema: &str,
    t: &Ticket,
) -> std::result::Result<(), StoreError> {
    let p = ticket_params(t);
    tx.execute(
        &format!(
            "UPDATE {schema}.tickets SET {} WHERE id = $1",
            assignments(TICKET_COLUMNS, 2)
        ),
        &refs(&p),
    )?;
    Ok(())
}

fn id_param(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}

impl Store for PgStore {
    fn create_ticket(
        &self,
        id: Option<&str>,
        make: &mut dyn FnMut(String) -> std::result::Result<Ticket, Refused>,
    ) -> Result<Ticket> {
        self.tx(|tx, schema| {
            let id = match id {
                Some(id) => id.to_string(),
                None => loop {
                    let n: i64 = tx
                        .query_one(&format!("SELECT nextval('{schema}.ticket_numbers')"), &[])?
                        .get(0);
                    let id = format!("CHG-{n}");
                    if load_ticket(tx, schema, &id, false)?.is_none() {
                        break id;
                    }
                },
            };
            let t = make(id.clone())?;
            let p = ticket_params(&t);
            let inserted = tx.execute(
                &format!(
                    "INSERT INTO {schema}.tickets ({TICKET_COLUMNS}) VALUES ({}) \
                     ON CONFLICT (id) DO NOTHING",
                    placeholders(1, p.len())
                ),
                &refs(&p),
            )?;
            drop(p);
            if inserted == 0 {
                return Err(Refused::Conflict(format!("ticket {id} exists already")).into());
            }
            self.notify(tx, Changed::Ticket(&t.id))?;
            Ok(t)
        })
    }

    fn tickets(&self) -> Result<Vec<Ticket>> {
        self.tx(|tx, schema| {
            let r = tx.query(
                &format!("SELECT {TICKET_COLUMNS} FROM {schema}.tickets ORDER BY created_at, id"),
                &[],
            )?;
            Ok(rows(r, ticket_row)?)
        })
    }

    fn ticket(&self, id: &str) -> Result<Option<Ticket>> {
        self.tx(|tx, schema| Ok(load_ticket(tx, schema, id, false)?))
    }

    fn update_ticket(&self, id: &str, change: Change<'_, Ticket>) -> Result<Ticket> {
        self.tx(|tx, schema| {
            let mut t = load_ticket(tx, schema, id, true)?
                .ok_or_else(|| Refused::NotFound(format!("ticket {id}")))?;
            change(&mut t)?;
            save_ticket(tx, schema, &t)?;
            self.notify(tx, Changed::Ticket(&t.id))?;
            Ok(t)
        })
    }

    fn use_ticket(
        &self,
        id: &str,
        check: &mut dyn FnMut(&Ticket) -> std::result::Result<(), Uncovered>,
        uses: u32,
    ) -> std::result::Result<Ticket, UseError> {
        self.tx(|tx, schema| {
            let mut t = load_ticket(tx, schema, id, uses > 0)?
                .ok_or(UseError::Uncovered(Uncovered::Unknown))?;
            check(&t)?;
            if uses > 0 {
                t.uses = t.uses.saturating_add(uses);
                tx.execute(
                    &format!("UPDATE {schema}.tickets SET uses = $2 WHERE id = $1"),
                    &[&t.id, &i64::from(t.uses)],
                )?;
                self.notify(tx, Changed::Ticket(&t.id))?;
            }
            Ok(t)
        })
    }

    fn tickets_due(&self, now: Timestamp) -> Result<Vec<String>> {
        self.tx(|tx, schema| {
            let r = tx.query(
                &format!(
                    "SELECT id FROM {schema}.tickets WHERE status IN ('pending', 'approved') \
                     AND valid_until IS NOT NULL AND valid_until <= $1 ORDER BY valid_until"
                ),
                &[&ts_text(now)],
            )?;
            Ok(r.iter().map(|r| r.get(0)).collect())
        })
    }

    fn next_ticket_deadline(&self) -> Result<Option<Timestamp>> {
        self.tx(|tx, schema| {
            let t: Option<String> = tx
                .query_one(
                    &format!(
                        "SELECT min(valid_until) FROM {schema}.tickets \
                         WHERE status IN ('pending', 'approved')"
                    ),
                    &[],
                )?
                .get(0);
            Ok(opt_ts(t)?)
        })
    }

    fn insert_hold(&self, mut hold: Hold) -> Result<Hold> {
        self.tx(|tx, schema| {
            let p = hold_params(&hold);
            let row = tx.query_one(
                &format!(
                    "INSERT INTO {schema}.holds (instance, {}) VALUES ($1, {}) RETURNING id",
                    HOLD_COLUMNS.trim_start_matches("id, "),
                    placeholders(2, p.len())
                ),
                &[
                    &[&self.target.instance as &(dyn ToSql + Sync)][..],
                    &refs(&p)[..],
                ]
                .concat(),
            )?;
            drop(p);
            hold.id = row.get::<_, i64>(0) as u64;
            self.notify(tx, Changed::Hold(hold.id))?;
            Ok(hold)
        })
    }

    fn holds(&self, status: Option<HoldStatus>) -> Result<Vec<Hold>> {
        self.tx(|tx, schema| {
            let sql = format!("SELECT {HOLD_COLUMNS} FROM {schema}.holds");
            let r = match status {
                None => tx.query(&format!("{sql} ORDER BY id"), &[])?,
                Some(s) => tx.query(
                    &format!("{sql} WHERE status = $1 ORDER BY id"),
                    &[&s.name()],
                )?,
            };
            Ok(rows(r, hold_row)?)
        })
    }

    fn hold(&self, id: u64) -> Result<Option<Hold>> {
        let Some(id) = id_param(id) else {
            return Ok(None);
        };
        self.tx(|tx, schema| {
            Ok(tx
                .query_opt(
                    &format!("SELECT {HOLD_COLUMNS} FROM {schema}.holds WHERE id = $1"),
                    &[&id],
                )?
                .as_ref()
                .map(hold_row)
                .transpose()?)
        })
    }

    fn update_hold(&self, id: u64, change: Change<'_, Hold>) -> Result<Hold> {
        let nf = || Refused::NotFound(format!("hold {id}"));
        let rid = id_param(id).ok_or_else(nf)?;
        self.tx(|tx, schema| {
            let mut h = tx
                .query_opt(
                    &format!("SELECT {HOLD_COLUMNS} FROM {schema}.holds WHERE id = $1 FOR UPDATE"),
                    &[&rid],
                )?
                .as_ref()
                .map(hold_row)
                .transpose()?
                .ok_or_else(nf)?;
            change(&mut h)?;
            h.id = id;
            let p = hold_params(&h);
            tx.execute(
                &format!(
                    "UPDATE {schema}.holds SET {} WHERE id = $1",
                    assignments(HOLD_COLUMNS, 2)
                ),
                &[&[&rid as &(dyn ToSql + Sync)][..], &refs(&p)[..]].concat(),
            )?;
            drop(p);
            self.notify(tx, Changed::Hold(id))?;
            Ok(h)
        })
    }

    fn own_pending_holds(&self) -> Result<Vec<Hold>> {
        self.tx(|tx, schema| {
            let r = tx.query(
                &format!(
                    "SELECT {HOLD_COLUMNS} FROM {schema}.holds \
                     WHERE status = 'pending' AND instance = $1 ORDER BY id"
                ),
                &[&self.target.instance],
            )?;
            Ok(rows(r, hold_row)?)
        })
    }

    fn holds_overdue(&self, at: Timestamp) -> Result<Vec<u64>> {
        self.tx(|tx, schema| {
            let r = tx.query(
                &format!(
                    "SELECT id FROM {schema}.holds \
                     WHERE status = 'pending' AND expires_at <= $1 ORDER BY id"
                ),
                &[&ts_text(at)],
            )?;
            Ok(r.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        })
    }

    fn insert_review(&self, mut review: Review) -> Result<Review> {
        self.tx(|tx, schema| {
            let p = review_params(&review);
            let row = tx.query_one(
                &format!(
                    "INSERT INTO {schema}.reviews ({}) VALUES ({}) RETURNING id",
                    REVIEW_COLUMNS.trim_start_matches("id, "),
                    placeholders(1, p.len())
                ),
                &refs(&p),
            )?;
            drop(p);
            review.id = row.get::<_, i64>(0) as u64;
            self.notify(tx, Changed::Review(review.id))?;
            Ok(review)
        })
    }

    fn reviews(&self, pending_only: bool) -> Result<Vec<Review>> {
        let filter = if pending_only {
            "WHERE reviewed_by IS NULL "
        } else {
            ""
        };
        self.tx(|tx, schema| {
            let r = tx.query(
                &format!("SELECT {REVIEW_COLUMNS} FROM {schema}.reviews {filter}ORDER BY id"),
                &[],
            )?;
            Ok(rows(r, review_row)?)
        })
    }

    fn update_review(&self, id: u64, change: Change<'_, Review>) -> Result<Review> {
        let nf = || Refused::NotFound(format!("break-glass use {id}"));
        let rid = id_param(id).ok_or_else(nf)?;
        self.tx(|tx, schema| {
            let mut r = tx
                .query_opt(
                    &format!(
                        "SELECT {REVIEW_COLUMNS} FROM {schema}.reviews WHERE id = $1 FOR UPDATE"
                    ),
                    &[&rid],
                )?
                .as_ref()
                .map(review_row)
                .transpose()?
                .ok_or_else(nf)?;
            change(&mut r)?;
            r.id = id;
            let p = review_params(&r);
            tx.execute(
                &format!(
                    "UPDATE {schema}.reviews SET {} WHERE id = $1",
                    assignments(REVIEW_COLUMNS, 2)
                ),
                &[&[&rid as &(dyn ToSql + Sync)][..], &refs(&p)[..]].concat(),
            )?;
            drop(p);
            self.notify(tx, Changed::Review(id))?;
            Ok(r)
        })
    }

    fn remote(&self) -> Option<&PgTarget> {
        Some(&self.target)
    }
}
