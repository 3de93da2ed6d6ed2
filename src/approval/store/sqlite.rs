//! The SQLite store: a file `<state dir>/pgwarden.db` in WAL mode with `synchronous=FULL`,
//! so a write that returned survives a kill -9 or a power cut. Every change runs inside one
//! `BEGIN IMMEDIATE` transaction, so two racing approvals of a one-approval hold have
//! exactly one winner and use counting is atomic, across processes too. Records are columns,
//! with their lists (approvals, scope, rules) as JSON; times are fixed-width RFC 3339 text.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{
    params, Connection, OptionalExtension, Row, ToSql, Transaction, TransactionBehavior,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ts_text, Change, Store, StoreError};
use crate::approval::cover::Uncovered;
use crate::approval::model::{Hold, HoldStatus, Refused, Review, Ticket, TicketStatus};
use crate::approval::{Result, UseError};

/// The file name inside the state directory.
pub const FILE: &str = "pgwarden.db";

/// The schema this build writes; a newer file is refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE tickets (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    requester TEXT NOT NULL,
    status TEXT NOT NULL,
    approvals TEXT NOT NULL,
    approvals_required INTEGER NOT NULL,
    approver_groups TEXT NOT NULL,
    valid_from TEXT,
    valid_until TEXT,
    max_uses INTEGER,
    uses INTEGER NOT NULL,
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL,
    closed_by TEXT,
    reason TEXT
);
CREATE INDEX tickets_open ON tickets (status, valid_until);
-- Numbers for generated ticket ids; AUTOINCREMENT so a number is never handed out twice.
CREATE TABLE ticket_numbers (n INTEGER PRIMARY KEY AUTOINCREMENT);
CREATE TABLE holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,
    sql TEXT NOT NULL,
    db_user TEXT NOT NULL,
    db_name TEXT NOT NULL,
    client_addr TEXT,
    application_name TEXT NOT NULL,
    rules TEXT NOT NULL,
    approvals_required INTEGER NOT NULL,
    approver_groups TEXT NOT NULL,
    approvals TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    closed_at TEXT,
    closed_by TEXT,
    reason TEXT
);
CREATE INDEX holds_status ON holds (status);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    db_user TEXT NOT NULL,
    db_name TEXT NOT NULL,
    client_addr TEXT,
    reason TEXT NOT NULL,
    sql TEXT NOT NULL,
    rules TEXT NOT NULL,
    at TEXT NOT NULL,
    reviewed_by TEXT,
    reviewed_at TEXT,
    comment TEXT
);
";

const TICKET_COLUMNS: &str = "id, title, requester, status, approvals, approvals_required, \
    approver_groups, valid_from, valid_until, max_uses, uses, scope, created_at, closed_by, reason";
const HOLD_COLUMNS: &str = "id, status, sql, db_user, db_name, client_addr, application_name, \
    rules, approvals_required, approver_groups, approvals, opened_at, expires_at, closed_at, \
    closed_by, reason";
const REVIEW_COLUMNS: &str =
    "id, db_user, db_name, client_addr, reason, sql, rules, at, reviewed_by, reviewed_at, comment";

/// The SQLite store: one connection, used by one thread at a time.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens `<dir>/pgwarden.db`, creating the directory (mode 0700: held statements are
    /// in it) and the schema when missing.
    pub fn open(dir: &Path) -> std::result::Result<SqliteStore, StoreError> {
        create_dir(dir)?;
        let path = dir.join(FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state store: WAL not available");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves no half-done transaction behind
        // (an open transaction rolls back when dropped), so the connection stays usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction: committed on `Ok`, rolled back on `Err`.
    fn immediate<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn create_dir(dir: &Path) -> std::result::Result<(), StoreError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|source| StoreError::Dir {
        path: dir.to_path_buf(),
        source,
    })
}

fn migrate(conn: &mut Connection, path: &Path) -> std::result::Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<i64> =
        tx.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))?;
    match found {
        None => {
            tx.execute_batch(SCHEMA_V1)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) if v == SCHEMA_VERSION => {}
        Some(found) => {
            return Err(StoreError::Version {
                path: path.to_path_buf(),
                found,
                known: SCHEMA_VERSION,
            })
        }
    }
    tx.commit()?;
    Ok(())
}

/// A timestamp as [`ts_text`]: readable with the sqlite3 shell, and text order is time order.
struct Ts(Timestamp);

impl ToSql for Ts {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(ts_text(self.0)))
    }
}

impl FromSql for Ts {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map(Ts)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

fn ts(t: Option<Timestamp>) -> Option<Ts> {
    t.map(Ts)
}

/// A value kept as a JSON column.
struct Json<T>(T);

impl<T: Serialize> ToSql for Json<&T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        serde_json::to_string(self.0)
            .map(ToSqlOutput::from)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }
}

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(v.as_str()?)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A status column.
fn status<T>(r: &Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown status {s:?}").into(),
        )
    })
}

fn ticket_row(r: &Row<'_>) -> rusqlite::Result<Ticket> {
    Ok(Ticket {
        id: r.get(0)?,
        title: r.get(1)?,
        requester: r.get::<_, Json<_>>(2)?.0,
        status: status(r, 3, TicketStatus::parse)?,
        approvals: r.get::<_, Json<_>>(4)?.0,
        approvals_required: r.get(5)?,
        approver_groups: r.get::<_, Json<_>>(6)?.0,
        valid_from: r.get::<_, Option<Ts>>(7)?.map(|t| t.0),
        valid_until: r.get::<_, Option<Ts>>(8)?.map(|t| t.0),
        max_uses: r.get(9)?,
        uses: r.get(10)?,
        scope: r.get::<_, Json<_>>(11)?.0,
        created_at: r.get::<_, Ts>(12)?.0,
        closed_by: r.get(13)?,
        reason: r.get(14)?,
    })
}

fn save_ticket(tx: &Transaction<'_>, t: &Ticket) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT OR REPLACE INTO tickets ({TICKET_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![
            t.id,
            t.title,
            Json(&t.requester),
            t.status.name(),
            Json(&t.approvals),
            t.approvals_required,
            Json(&t.approver_groups),
            ts(t.valid_from),
            ts(t.valid_until),
            t.max_uses,
            t.uses,
            Json(&t.scope),
            Ts(t.created_at),
            t.closed_by,
            t.reason,
        ],
    )?;
    Ok(())
}

fn load_ticket(c: &Connection, id: &str) -> rusqlite::Result<Option<Ticket>> {
    c.query_row(
        &format!("SELECT {TICKET_COLUMNS} FROM tickets WHERE id = ?1"),
        [id],
        ticket_row,
    )
    .optional()
}

fn hold_row(r: &Row<'_>) -> rusqlite::Result<Hold> {
    Ok(Hold {
        id: r.get(0)?,
        status: status(r, 1, HoldStatus::parse)?,
        sql: r.get(2)?,
        user: r.get(3)?,
        database: r.get(4)?,
        client_addr: r.get(5)?,
        application_name: r.get(6)?,
        rules: r.get::<_, Json<_>>(7)?.0,
        approvals_required: r.get(8)?,
        approver_groups: r.get::<_, Json<_>>(9)?.0,
        approvals: r.get::<_, Json<_>>(10)?.0,
        opened_at: r.get::<_, Ts>(11)?.0,
        expires_at: r.get::<_, Ts>(12)?.0,
        closed_at: r.get::<_, Option<Ts>>(13)?.map(|t| t.0),
        closed_by: r.get(14)?,
        reason: r.get(15)?,
    })
}

/// Writes `h`; with `id` none, as a new row whose id SQLite assigns.
fn save_hold(tx: &Transaction<'_>, id: Option<i64>, h: &Hold) -> rusqlite::Result<i64> {
    tx.execute(
        &format!("INSERT OR REPLACE INTO holds ({HOLD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
        params![
            id,
            h.status.name(),
            h.sql,
            h.user,
            h.database,
            h.client_addr,
            h.application_name,
            Json(&h.rules),
            h.approvals_required,
            Json(&h.approver_groups),
            Json(&h.approvals),
            Ts(h.opened_at),
            Ts(h.expires_at),
            ts(h.closed_at),
            h.closed_by,
            h.reason,
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

fn review_row(r: &Row<'_>) -> rusqlite::Result<Review> {
    Ok(Review {
        id: r.get(0)?,
        user: r.get(1)?,
        database: r.get(2)?,
        client_addr: r.get(3)?,
        reason: r.get(4)?,
        sql: r.get(5)?,
        rules: r.get::<_, Json<_>>(6)?.0,
        at: r.get::<_, Ts>(7)?.0,
        reviewed_by: r.get(8)?,
        reviewed_at: r.get::<_, Option<Ts>>(9)?.map(|t| t.0),
        comment: r.get(10)?,
    })
}

fn save_review(tx: &Transaction<'_>, id: Option<i64>, r: &Review) -> rusqlite::Result<i64> {
    tx.execute(
        &format!("INSERT OR REPLACE INTO reviews ({REVIEW_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            id,
            r.user,
            r.database,
            r.client_addr,
            r.reason,
            r.sql,
            Json(&r.rules),
            Ts(r.at),
            r.reviewed_by,
            ts(r.reviewed_at),
            r.comment,
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

fn all<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map(p, row)?;
    rows.collect()
}

/// A u64 id as SQLite's integer; ids beyond i64 cannot exist.
fn row_id(id: u64, what: &str) -> Result<i64> {
    i64::try_from(id).map_err(|_| Refused::NotFound(format!("{what} {id}")).into())
}

impl Store for SqliteStore {
    fn create_ticket(
        &self,
        id: Option<&str>,
        make: &mut dyn FnMut(String) -> std::result::Result<Ticket, Refused>,
    ) -> Result<Ticket> {
        self.immediate(|tx| {
            let id = match id {
                Some(id) => {
                    if load_ticket(tx, id)?.is_some() {
                        return Err(Refused::Conflict(format!("ticket {id} exists already")).into());
                    }
                    id.to_string()
                }
                None => loop {
                    tx.execute("INSERT INTO ticket_numbers DEFAULT VALUES", [])?;
                    let id = format!("CHG-{}", tx.last_insert_rowid());
                    tx.execute("DELETE FROM ticket_numbers", [])?;
                    if load_ticket(tx, &id)?.is_none() {
                        break id;
                    }
                },
            };
            let t = make(id)?;
            save_ticket(tx, &t)?;
            Ok(t)
        })
    }

    fn tickets(&self) -> Result<Vec<Ticket>> {
        let c = self.conn();
        Ok(all(
            &c,
            &format!("SELECT {TICKET_COLUMNS} FROM tickets ORDER BY created_at, id"),
            [],
            ticket_row,
        )?)
    }

    fn ticket(&self, id: &str) -> Result<Option<Ticket>> {
        Ok(load_ticket(&self.conn(), id)?)
    }

    fn update_ticket(&self, id: &str, change: Change<'_, Ticket>) -> Result<Ticket> {
        self.immediate(|tx| {
            let mut t =
                load_ticket(tx, id)?.ok_or_else(|| Refused::NotFound(format!("ticket {id}")))?;
            change(&mut t)?;
            save_ticket(tx, &t)?;
            Ok(t)
        })
    }

    fn use_ticket(
        &self,
        id: &str,
        check: &mut dyn FnMut(&Ticket) -> std::result::Result<(), Uncovered>,
        uses: u32,
    ) -> std::result::Result<Ticket, UseError> {
        self.immediate(|tx| {
            let mut t = load_ticket(tx, id)?.ok_or(UseError::Uncovered(Uncovered::Unknown))?;
            check(&t)?;
            if uses > 0 {
                t.uses = t.uses.saturating_add(uses);
                tx.execute(
                    "UPDATE tickets SET uses = ?2 WHERE id = ?1",
                    params![t.id, t.uses],
                )?;
            }
            Ok(t)
        })
    }

    fn tickets_due(&self, now: Timestamp) -> Result<Vec<String>> {
        let c = self.conn();
        Ok(all(
            &c,
            "SELECT id FROM tickets WHERE status IN ('pending', 'approved') \
             AND valid_until IS NOT NULL AND valid_until <= ?1 ORDER BY valid_until",
            [Ts(now)],
            |r| r.get(0),
        )?)
    }

    fn next_ticket_deadline(&self) -> Result<Option<Timestamp>> {
        let c = self.conn();
        let t: Option<Ts> = c.query_row(
            "SELECT min(valid_until) FROM tickets WHERE status IN ('pending', 'approved')",
            [],
            |r| r.get(0),
        )?;
        Ok(t.map(|t| t.0))
    }

    fn insert_hold(&self, mut hold: Hold) -> Result<Hold> {
        self.immediate(|tx| {
            let id = save_hold(tx, None, &hold)?;
            hold.id = id as u64;
            Ok(hold)
        })
    }

    fn holds(&self, status: Option<HoldStatus>) -> Result<Vec<Hold>> {
        let c = self.conn();
        let sql = format!("SELECT {HOLD_COLUMNS} FROM holds");
        Ok(match status {
            None => all(&c, &format!("{sql} ORDER BY id"), [], hold_row)?,
            Some(s) => all(
                &c,
                &format!("{sql} WHERE status = ?1 ORDER BY id"),
                [s.name()],
                hold_row,
            )?,
        })
    }

    fn hold(&self, id: u64) -> Result<Option<Hold>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let c = self.conn();
        Ok(c.query_row(
            &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = ?1"),
            [id],
            hold_row,
        )
        .optional()?)
    }

    fn update_hold(&self, id: u64, change: Change<'_, Hold>) -> Result<Hold> {
        let rid = row_id(id, "hold")?;
        self.immediate(|tx| {
            let mut h = tx
                .query_row(
                    &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = ?1"),
                    [rid],
                    hold_row,
                )
                .optional()?
                .ok_or_else(|| Refused::NotFound(format!("hold {id}")))?;
            change(&mut h)?;
            h.id = id;
            save_hold(tx, Some(rid), &h)?;
            Ok(h)
        })
    }

    fn holds_overdue(&self, at: Timestamp) -> Result<Vec<u64>> {
        let c = self.conn();
        Ok(all(
            &c,
            "SELECT id FROM holds WHERE status = 'pending' AND expires_at <= ?1 ORDER BY id",
            [Ts(at)],
            |r| r.get::<_, i64>(0).map(|id| id as u64),
        )?)
    }

    fn insert_review(&self, mut review: Review) -> Result<Review> {
        self.immediate(|tx| {
            let id = save_review(tx, None, &review)?;
            review.id = id as u64;
            Ok(review)
        })
    }

    fn reviews(&self, pending_only: bool) -> Result<Vec<Review>> {
        let c = self.conn();
        let filter = if pending_only {
            "WHERE reviewed_by IS NULL "
        } else {
            ""
        };
        Ok(all(
            &c,
            &format!("SELECT {REVIEW_COLUMNS} FROM reviews {filter}ORDER BY id"),
            [],
            review_row,
        )?)
    }

    fn update_review(&self, id: u64, change: Change<'_, Review>) -> Result<Review> {
        let rid = row_id(id, "break-glass use")?;
        self.immediate(|tx| {
            let mut r = tx
                .query_row(
                    &format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = ?1"),
                    [rid],
                    review_row,
                )
                .optional()?
                .ok_or_else(|| Refused::NotFound(format!("break-glass use {id}")))?;
            change(&mut r)?;
            r.id = id;
            save_review(tx, Some(rid), &r)?;
            Ok(r)
        })
    }
}
