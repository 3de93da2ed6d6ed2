//! The catalog connection: pgwarden's own PostgreSQL sessions (one per database, opened on
//! first use, from the `[catalog]` DSN and credentials, never a client's) that answer
//! [`Question`]s from the system catalogs, and the planner's estimate from `EXPLAIN` (never
//! run: the sessions are read-only, and EXPLAIN without ANALYZE only plans). Answers are
//! cached with a TTL; a lookup that fails or outlives the timeout is answered
//! [`Answer::Failed`] (never cached), which the policy treats the strict way.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::{timeout, Instant};
use tokio_postgres::{Client, NoTls};

use super::{Answer, Answers, Question, RelationSize};
pub use crate::config::catalog::CatalogConfig;
use crate::sql::keyprobe::{self, KeyProbe};
use crate::sql::Lookup;

/// Predefined roles whose members can read or write server files, run programs or signal
/// other backends, or read and write every table.
const POWERFUL_ROLES: &[&str] = &[
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_create_subscription",
    "pg_maintain",
];

/// After the catalog could not be reached or did not answer in time, lookups fail at once
/// for this long (counted the strict way) instead of each waiting out the timeout.
const BACKOFF: Duration = Duration::from_secs(5);

/// Bound on cached answers (estimates are keyed by statement text).
const MAX_CACHED: usize = 50_000;

/// The SQL text questions are about (estimates explain its statements), and how the
/// client's session reads it.
#[derive(Debug, Clone)]
pub struct Source {
    pub text: String,
    pub read_as: crate::sql::ReadAs,
    /// How many statements the inspection found in it.
    pub statements: usize,
    /// The client session's search_path, which decides the tables unqualified names mean.
    pub search_path: String,
    /// Digest of all of the above: estimates are cached under it.
    digest: [u8; 32],
}

impl Source {
    pub fn new(
        text: &str,
        read_as: crate::sql::ReadAs,
        statements: usize,
        search_path: &str,
    ) -> Source {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update([u8::from(read_as.standard_conforming_strings)]);
        h.update(search_path.len().to_le_bytes());
        h.update(search_path.as_bytes());
        h.update(text.as_bytes());
        Source {
            text: text.to_owned(),
            read_as,
            statements,
            search_path: search_path.to_owned(),
            digest: h.finalize().into(),
        }
    }
}

/// The search_path a session of `user` starts with (the server default), for estimates.
pub fn default_search_path(user: &str) -> String {
    format!("\"{}\", public", user.replace('"', "\"\""))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Lookup(Lookup),
    /// Source digest and statement index.
    Estimate([u8; 32], usize),
}

/// One catalog session used by one estimate at a time (client SQL is planned on it, so it
/// is kept apart from the lookup sessions).
type Exclusive = Arc<tokio::sync::Mutex<Option<Client>>>;

pub struct Catalog {
    pub settings: CatalogConfig,
    base: tokio_postgres::Config,
    /// Lookup sessions per database: shared, pipelined, never given client SQL.
    conns: tokio::sync::Mutex<HashMap<String, Vec<Arc<Client>>>>,
    /// Estimate sessions per database.
    estimators: std::sync::Mutex<HashMap<String, Vec<Exclusive>>>,
    turn: AtomicU64,
    cache: DashMap<(String, Key), (Instant, Answer)>,
    serial: AtomicU64,
    /// Per database: until when, and why, the catalog counts as down.
    down: DashMap<String, (Instant, String)>,
    /// Key probes of recent texts, by literal-free key (see [`crate::sql::keyprobe`]).
    probes: DashMap<Box<str>, Arc<Vec<Option<KeyProbe>>>>,
    /// Unique keys of the tables key probes named, per database, with when they were read.
    keys: DashMap<(String, String), KeysEntry>,
}

/// Unique keys of a table name, and when they were read.
type KeysEntry = (Instant, Arc<Vec<Keyed>>);

/// Texts longer than this are not probed for key-addressed writes (OLTP writes are short;
/// the memo stays small).
const MAX_PROBED_TEXT: usize = 4096;
/// Entries of the probe memo and of the unique-key cache before they are emptied.
const MAX_PROBES: usize = 4096;

/// A relation a key probe's name matches, as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed {
    /// `pg_class.relkind`.
    pub kind: char,
    /// Inheritance children or partitions (`relhassubclass`).
    pub children: bool,
    /// Rewrite rules (`relhasrules`): an UPDATE may become anything.
    pub rules: bool,
    /// Key columns of each unique, valid, immediate, non-partial index over plain columns
    /// of built-in types with default operator classes: equality there is pg_catalog's.
    pub keys: Vec<Vec<String>>,
}

/// Whether a write addressed by `probe` touches at most one row of every relation its name
/// may mean: a plain table (reached without inheritance children) or a partitioned table
/// whose unique index covers the probed columns, and no rewrite rules.
pub fn proves_one_row(probe: &KeyProbe, rels: &[Keyed]) -> bool {
    !rels.is_empty()
        && rels.iter().all(|r| {
            let plain = match r.kind {
                'r' => !(r.children && probe.inherited),
                'p' => true,
                _ => false,
            };
            plain
                && !r.rules
                && r.keys
                    .iter()
                    .any(|k| !k.is_empty() && k.iter().all(|c| probe.columns.contains(c)))
        })
}

/// Databases the catalog keeps sessions for; lookups in more fail (counted the strict way).
const MAX_DATABASES: usize = 256;
/// Statements of one text whose writes are estimated; the rest count as large.
const MAX_ESTIMATES: usize = 16;

impl Catalog {
    /// Checks the DSN; connections are opened on first use.
    pub fn new(settings: CatalogConfig) -> Result<Catalog, String> {
        let base = tokio_postgres::Config::from_str(&settings.dsn)
            .map_err(|e| format!("invalid catalog dsn: {e}"))?;
        Ok(Catalog {
            settings,
            base,
            conns: Default::default(),
            estimators: Default::default(),
            turn: AtomicU64::new(0),
            cache: DashMap::new(),
            probes: DashMap::new(),
            keys: DashMap::new(),
            serial: AtomicU64::new(0),
            down: Default::default(),
        })
    }

    fn key(q: &Question, source: &Source) -> Key {
        match q {
            Question::Lookup(l) => Key::Lookup(l.clone()),
            Question::Estimate(i) => Key::Estimate(source.digest, *i),
        }
    }

    fn cached_one(&self, db: &str, q: &Question, source: &Source) -> Option<Answer> {
        let k = (db.to_owned(), Self::key(q, source));
        if let Some(e) = self.cache.get(&k) {
            if e.0.elapsed() < self.settings.ttl {
                return Some(e.1.clone());
            }
        }
        match q {
            Question::Estimate(i) => {
                let probe = self.probe(source, *i)?;
                let keys = self.cached_keys(db, &probe.table)?;
                proves_one_row(&probe, &keys).then_some(Answer::Estimate(1.0))
            }
            Question::Lookup(_) => None,
        }
    }

    /// The key probe of statement `i` of `source`, when `=` means pg_catalog's there.
    fn probe(&self, source: &Source, i: usize) -> Option<KeyProbe> {
        if source.text.len() > MAX_PROBED_TEXT || !keyprobe::builtin_equality(&source.search_path) {
            return None;
        }
        // Texts that differ only in literals probe alike (a literal is a constant wherever
        // it stands), so the memo is keyed without them.
        let nkey = source
            .read_as
            .standard_conforming_strings
            .then(|| crate::sql::normalize::key(&source.text))
            .flatten();
        let all = match nkey.as_deref().and_then(|k| self.probes.get(k)) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(keyprobe::probes(&source.text, source.read_as));
                if p.len() != source.statements {
                    return None;
                }
                if let Some(k) = nkey {
                    if self.probes.len() >= MAX_PROBES {
                        self.probes.clear();
                    }
                    self.probes.insert(k.into_boxed_str(), p.clone());
                }
                p
            }
        };
        all.get(i).cloned().flatten()
    }

    fn cached_keys(&self, db: &str, table: &str) -> Option<Arc<Vec<Keyed>>> {
        let e = self.keys.get(&(db.to_owned(), table.to_owned()))?;
        (e.0.elapsed() < self.settings.ttl).then(|| e.1.clone())
    }

    /// A write to one row by key needs no planner: proven from the table's unique keys
    /// (read once per ttl). `None`: not proven, ask the planner.
    async fn prove_by_key(&self, db: &str, i: usize, source: &Source) -> Option<Answer> {
        let probe = self.probe(source, i)?;
        let keys = match self.cached_keys(db, &probe.table) {
            Some(k) => k,
            None => {
                let c = self.client(db).await.ok()?;
                let k = Arc::new(unique_keys(&c, &probe.table).await.ok()?);
                if self.keys.len() >= MAX_PROBES {
                    self.keys.clear();
                }
                self.keys.insert(
                    (db.to_owned(), probe.table.clone()),
                    (Instant::now(), k.clone()),
                );
                k
            }
        };
        proves_one_row(&probe, &keys).then_some(Answer::Estimate(1.0))
    }

    /// All answers from the cache, or `None` when some must be fetched.
    pub fn cached(&self, db: &str, qs: &[Question], source: &Source) -> Option<Answers> {
        qs.iter()
            .map(|q| self.cached_one(db, q, source).map(|a| (q.clone(), a)))
            .collect()
    }

    /// Answers every question about `source`, from the cache or the database `db`, within
    /// the timeout. Every question gets an answer (`Failed` when none could be had).
    pub async fn fetch(&self, db: &str, qs: &[Question], source: &Source) -> Answers {
        let mut out = Answers::new();
        let mut todo = Vec::new();
        for q in qs {
            match self.cached_one(db, q, source) {
                Some(a) => {
                    out.insert(q.clone(), a);
                }
                None => todo.push(q.clone()),
            }
        }
        if todo.is_empty() {
            return out;
        }
        let texts = if todo.iter().any(|q| matches!(q, Question::Estimate(_))) {
            crate::sql::explainable_texts(&source.text, source.read_as, source.statements)
        } else {
            Vec::new()
        };
        let texts = &texts;
        let down = self
            .down
            .get(db)
            .map(|d| d.clone())
            .filter(|(until, _)| Instant::now() < *until);
        let answers = if let Some((_, e)) = down {
            // Unreachable moments ago: answer at once rather than make every statement wait.
            vec![
                (
                    Answer::Failed(format!("{e} (not retried for {}s)", BACKOFF.as_secs())),
                    false
                );
                todo.len()
            ]
        } else {
            let work = async {
                let estimates = todo
                    .iter()
                    .filter(|q| matches!(q, Question::Estimate(_)))
                    .count();
                let lookups = if estimates < todo.len() {
                    Some(self.client(db).await?)
                } else {
                    None
                };
                let mut n = 0;
                let asks = todo.iter().map(|q| {
                    let lookups = lookups.clone();
                    let over = matches!(q, Question::Estimate(_)) && {
                        n += 1;
                        n > MAX_ESTIMATES
                    };
                    async move {
                        match (q, lookups) {
                            (Question::Estimate(_), _) if over => (
                                Answer::Failed(format!(
                                "only the first {MAX_ESTIMATES} statements of a text are estimated"
                            )),
                                false,
                            ),
                            (Question::Estimate(i), _) => {
                                match self.prove_by_key(db, *i, source).await {
                                    Some(a) => (a, true),
                                    None => (self.estimate_one(db, *i, texts, source).await, false),
                                }
                            }
                            (Question::Lookup(l), Some(c)) => (self.ask(&c, l).await, false),
                            (Question::Lookup(_), None) => {
                                (Answer::Failed("no session".into()), false)
                            }
                        }
                    }
                });
                Ok::<_, String>(futures_util::future::join_all(asks).await)
            };
            match timeout(self.settings.timeout, work).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    // Cannot connect: fail at once for a while instead of each statement
                    // waiting for its own connection attempt.
                    self.down
                        .insert(db.to_owned(), (Instant::now() + BACKOFF, e.clone()));
                    vec![(Answer::Failed(e), false); todo.len()]
                }
                Err(_) => vec![
                    (
                        Answer::Failed(format!(
                            "no answer within {}",
                            humantime::format_duration(self.settings.timeout)
                        )),
                        false
                    );
                    todo.len()
                ],
            }
        };
        for (q, (a, proven)) in todo.into_iter().zip(answers) {
            if let Answer::Failed(e) = &a {
                tracing::warn!(database = db, question = ?q, error = %e, "catalog lookup failed: counted the strict way");
            } else if proven {
                // Proven from unique keys: not kept per text, the keys are.
            } else {
                self.remember((db.to_owned(), Self::key(&q, source)), a.clone());
            }
            out.insert(q, a);
        }
        out
    }

    fn remember(&self, k: (String, Key), a: Answer) {
        if self.cache.len() >= MAX_CACHED {
            let ttl = self.settings.ttl;
            self.cache.retain(|_, v| v.0.elapsed() < ttl);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        self.cache.insert(k, (Instant::now(), a));
    }

    /// A new catalog session to `db`: read-only, bounded statement and lock waits.
    async fn connect(&self, db: &str) -> Result<Client, String> {
        let ms = self.settings.timeout.as_millis().clamp(1, i32::MAX as u128);
        let mut cfg = self.base.clone();
        cfg.dbname(db)
            .application_name("pgwarden-catalog")
            .connect_timeout(self.settings.timeout)
            .options(format!(
                "-c default_transaction_read_only=on -c statement_timeout={ms} -c lock_timeout={} -c plan_cache_mode=force_generic_plan",
                (ms / 4).max(1)
            ));
        let (client, conn) = cfg
            .connect(NoTls)
            .await
            .map_err(|e| format!("cannot connect to the catalog database {db:?}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::info!(error = %e, "catalog connection closed");
            }
        });
        Ok(client)
    }

    /// One of the lookup sessions to `db` (taken in turn), (re)connecting it when it is not
    /// open. Each session pipelines the questions sent to it.
    async fn client(&self, db: &str) -> Result<Arc<Client>, String> {
        let slot =
            self.turn.fetch_add(1, Ordering::Relaxed) as usize % self.settings.connections.max(1);
        let mut conns = self.conns.lock().await;
        if !conns.contains_key(db) && conns.len() >= MAX_DATABASES {
            return Err(format!(
                "catalog sessions are open to {MAX_DATABASES} databases already"
            ));
        }
        let pool = conns.entry(db.to_owned()).or_default();
        if let Some(c) = pool.get(slot).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = Arc::new(self.connect(db).await?);
        match pool.get_mut(slot) {
            Some(c) => *c = client.clone(),
            None => pool.push(client.clone()),
        }
        Ok(client)
    }

    /// The planner's estimate for statement `i`, on an estimate session of its own, in a
    /// read-only transaction that is rolled back (whatever the planner runs cannot change
    /// the session), under the client's search_path.
    async fn estimate_one(&self, db: &str, i: usize, texts: &[String], source: &Source) -> Answer {
        let Some(text) = texts.get(i).filter(|t| !t.is_empty()) else {
            return Answer::Failed("the statement's text could not be isolated".into());
        };
        let slot = {
            let mut est = self.estimators.lock().unwrap_or_else(|e| e.into_inner());
            if !est.contains_key(db) && est.len() >= MAX_DATABASES {
                return Answer::Failed("too many databases".into());
            }
            let pool = est.entry(db.to_owned()).or_default();
            let n = self.settings.connections.max(1);
            while pool.len() < n {
                pool.push(Default::default());
            }
            pool[self.turn.fetch_add(1, Ordering::Relaxed) as usize % n].clone()
        };
        let mut guard = slot.lock().await;
        // Taken out while in use: if this future is dropped half-way (timeout), the
        // session is dropped with it rather than reused in an unknown state.
        let client = match guard.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match self.connect(db).await {
                Ok(c) => c,
                Err(e) => return Answer::Failed(e),
            },
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let r = estimate(&client, text, &source.search_path, serial).await;
        *guard = Some(client);
        match r {
            Ok(a) => a,
            Err(e) => {
                // The server's message may quote data (a function raising an error): it is
                // logged, not shown to the client.
                tracing::info!(error = %error_text(&e), "planner estimate failed");
                Answer::Failed(format!(
                    "planner estimate failed (SQLSTATE {})",
                    e.code().map_or("none", |c| c.code())
                ))
            }
        }
    }

    async fn ask(&self, c: &Client, l: &Lookup) -> Answer {
        let r = match l {
            Lookup::Relation { name } => relation(c, name, false).await,
            Lookup::Index { name } => relation(c, name, true).await,
            Lookup::NotNullProof { table, column } => not_null_proof(c, table, column).await,
            Lookup::TypeChange { table, column, .. } => column_type(c, table, column).await,
            Lookup::Role { name } => role(c, name, &self.settings.admin_roles).await,
            Lookup::Extension { name } => extension(c, name).await,
        };
        r.unwrap_or_else(|e| Answer::Failed(error_text(&e)))
    }
}

/// The server's own message (and SQLSTATE) when it sent one.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// `schema.name` or `name` (an unqualified name matches it in every non-temporary schema:
/// the largest reading counts, not the client's search_path).
fn split(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once('.') {
        Some((s, n)) => (Some(s.rsplit('.').next().unwrap_or(s)), n),
        None => (None, name),
    }
}

/// Matches `c.relname` / `n.nspname` against `$1` (schema or NULL) and `$2` (name).
const NAME_MATCH: &str = "c.relname = $2 AND CASE WHEN $1::text IS NULL THEN n.nspname !~ '^pg_(temp|toast)' ELSE n.nspname = $1 END";

async fn relation(c: &Client, name: &str, index: bool) -> Result<Answer, tokio_postgres::Error> {
    let (schema, rel) = split(name);
    let sql = format!(
        "WITH RECURSIVE target AS (
            SELECT CASE WHEN $3 THEN x.indrelid ELSE c.oid END AS oid
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = c.oid
            WHERE {NAME_MATCH}
              AND CASE WHEN $3 THEN c.relkind IN ('i', 'I') ELSE c.relkind IN ('r', 'p', 'm', 'f', 't') END
        ), tree AS (
            SELECT oid FROM target
            UNION
            SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid
        ), sized AS (
            SELECT c.relkind,
                   CASE WHEN c.relkind = 'p' THEN 0
                        -- the last ANALYZE's count, or the statistics collector's live
                        -- count if that is higher (rows loaded since)
                        WHEN c.reltuples >= 0 THEN greatest(c.reltuples::float8,
                             pg_catalog.pg_stat_get_live_tuples(c.oid)::float8)
                        -- never vacuumed nor analyzed: an upper bound from the file size
                        -- (a heap tuple takes at least 28 bytes)
                        ELSE pg_catalog.pg_relation_size(c.oid) / 28.0 END AS rows,
                   CASE WHEN c.relkind = 'p' THEN 0
                        WHEN c.reltuples >= 0 THEN c.relpages::int8 * current_setting('block_size')::int8
                        ELSE pg_catalog.pg_relation_size(c.oid) END
                   + coalesce((SELECT t.relpages::int8 FROM pg_catalog.pg_class t WHERE t.oid = c.reltoastrelid), 0)
                     * current_setting('block_size')::int8
                   + coalesce((SELECT sum(ic.relpages)::int8 FROM pg_catalog.pg_index x
                               JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid
                               WHERE x.indrelid = c.oid), 0) * current_setting('block_size')::int8 AS bytes
            FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid
        )
        SELECT count(*)::int8, coalesce(sum(rows), 0)::float8, coalesce(sum(bytes), 0)::int8,
               coalesce(bool_or(relkind = 'p'), false)
        FROM sized"
    );
    let row = c.query_one(&sql, &[&schema, &rel, &index]).await?;
    let found: i64 = row.get(0);
    if found == 0 {
        return Ok(Answer::NotFound);
    }
    Ok(Answer::Relation(RelationSize {
        rows: row.get(1),
        bytes: row.get::<_, i64>(2).max(0) as u64,
        partitioned: row.get(3),
    }))
}

async fn not_null_proof(
    c: &Client,
    table: &str,
    column: &str,
) -> Result<Answer, tokio_postgres::Error> {
    let (schema, rel) = split(table);
    let sql = format!(
        "SELECT count(*)::int8, coalesce(bool_and((a.attnotnull AND (current_setting('server_version_num')::int < 180000
                    -- PostgreSQL 18: attnotnull is also set by a NOT VALID NOT NULL constraint
                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint v
                               WHERE v.conrelid = c.oid AND v.contype = 'n' AND v.convalidated
                                 AND v.conkey = ARRAY[a.attnum])))
                OR EXISTS (
                SELECT 1 FROM pg_catalog.pg_constraint k
                WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.convalidated
                  AND pg_catalog.pg_get_constraintdef(k.oid)
                      = 'CHECK ((' || pg_catalog.quote_ident($3) || ' IS NOT NULL))')), false)
         FROM pg_catalog.pg_class c
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $3 AND NOT a.attisdropped
         WHERE {NAME_MATCH} AND c.relkind IN ('r', 'p')"
    );
    let row = c.query_one(&sql, &[&schema, &rel, &column]).await?;
    if row.get::<_, i64>(0) == 0 {
        return Ok(Answer::NotFound);
    }
    Ok(Answer::Yes(row.get(1)))
}

async fn column_type(
    c: &Client,
    table: &str,
    column: &str,
) -> Result<Answer, tokio_postgres::Error> {
    let (schema, rel) = split(table);
    let sql = format!(
        "SELECT DISTINCT pg_catalog.format_type(a.atttypid, a.atttypmod)
         FROM pg_catalog.pg_class c
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $3
              AND NOT a.attisdropped AND a.attnum > 0
         WHERE {NAME_MATCH} AND c.relkind IN ('r', 'p', 'm', 'f')"
    );
    let rows = c.query(&sql, &[&schema, &rel, &column]).await?;
    Ok(match rows.as_slice() {
        [] => Answer::NotFound,
        [one] => Answer::ColumnType(one.get(0)),
        _ => Answer::Failed(format!(
            "{table}.{column} names columns of different types in several schemas"
        )),
    })
}

async fn role(
    c: &Client,
    name: &str,
    admin_roles: &[String],
) -> Result<Answer, tokio_postgres::Error> {
    let mut named: Vec<String> = POWERFUL_ROLES.iter().map(|s| s.to_string()).collect();
    named.extend(admin_roles.iter().cloned());
    let row = c
        .query_opt(
            "SELECT r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls
                 OR r.rolname = ANY($2)
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles p
                            WHERE (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
                                   OR p.rolname = ANY($2))
                              AND p.oid <> r.oid AND pg_catalog.pg_has_role(r.oid, p.oid, 'MEMBER'))
             FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            &[&name, &named],
        )
        .await?;
    Ok(match row {
        None => Answer::NotFound,
        Some(r) => Answer::Role {
            privileged: r.get(0),
        },
    })
}

async fn extension(c: &Client, name: &str) -> Result<Answer, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT bool_or(trusted OR NOT superuser)
             FROM pg_catalog.pg_available_extension_versions WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(match row.get::<_, Option<bool>>(0) {
        None => Answer::NotFound,
        Some(trusted) => Answer::Extension { trusted },
    })
}

/// The relations `name` may mean (as [`NAME_MATCH`] matches) with their unique keys.
async fn unique_keys(c: &Client, name: &str) -> Result<Vec<Keyed>, tokio_postgres::Error> {
    let (schema, rel) = split(name);
    let sql = format!(
        "SELECT c.relkind::text, c.relhassubclass, c.relhasrules,
                coalesce((SELECT json_agg(k.cols) FROM (
                    SELECT (SELECT json_agg(a.attname::text)
                            FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
                            JOIN pg_catalog.pg_attribute a
                              ON a.attrelid = x.indrelid AND a.attnum = u.attnum
                            WHERE u.ord <= x.indnkeyatts) AS cols
                    FROM pg_catalog.pg_index x
                    WHERE x.indrelid = c.oid AND x.indisunique AND x.indisvalid
                      AND x.indimmediate AND x.indpred IS NULL AND x.indexprs IS NULL
                      AND NOT EXISTS (
                          SELECT 1 FROM unnest(x.indclass::oid[]) AS oc(oid)
                          JOIN pg_catalog.pg_opclass o ON o.oid = oc.oid
                          WHERE NOT o.opcdefault
                             OR o.opcnamespace <> 'pg_catalog'::regnamespace)
                      AND NOT EXISTS (
                          SELECT 1 FROM unnest(x.indkey::int2[]) AS u(attnum)
                          JOIN pg_catalog.pg_attribute a
                            ON a.attrelid = x.indrelid AND a.attnum = u.attnum
                          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                          WHERE t.typnamespace <> 'pg_catalog'::regnamespace)
                ) k), '[]')::text
         FROM pg_catalog.pg_class c
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE {NAME_MATCH} AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    );
    let rows = c.query(&sql, &[&schema, &rel]).await?;
    Ok(rows
        .iter()
        .map(|r| Keyed {
            kind: r.get::<_, String>(0).chars().next().unwrap_or('?'),
            children: r.get(1),
            rules: r.get(2),
            keys: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
        })
        .collect())
}

/// The planner's estimate of the rows a statement writes: EXPLAIN, never executed. A text
/// with parameters (`$1`, from Parse) is PREPAREd and explained with its generic plan.
async fn estimate(
    c: &Client,
    text: &str,
    search_path: &str,
    serial: u64,
) -> Result<Answer, tokio_postgres::Error> {
    let begin = format!(
        "BEGIN READ ONLY; SELECT pg_catalog.set_config('search_path', '{}', true)",
        search_path.replace('\'', "''")
    );
    let explain = format!("EXPLAIN (FORMAT JSON) {text}");
    let plan: serde_json::Value = if !text.contains('$') {
        // No parameters: the transaction, the EXPLAIN (Parse, Bind, Execute at once) and the
        // rollback go out together, one round trip.
        let (b, plan, end) = tokio::join!(
            c.batch_execute(&begin),
            c.query_typed_one(&explain, &[]),
            c.batch_execute("ROLLBACK")
        );
        b?;
        end?;
        plan?.get(0)
    } else {
        // A round trip first learns how many parameters there are.
        let r = async {
            c.batch_execute(&begin).await?;
            let stmt = c.prepare(&explain).await?;
            if stmt.params().is_empty() {
                return c.query_one(&stmt, &[]).await.map(|r| r.get(0));
            }
            let name = format!("pgwarden_estimate_{serial}");
            c.execute(format!("PREPARE {name} AS {text}").as_str(), &[])
                .await?;
            let nulls = vec!["NULL"; stmt.params().len()].join(", ");
            let result = c
                .query_one(
                    format!("EXPLAIN (FORMAT JSON) EXECUTE {name}({nulls})").as_str(),
                    &[],
                )
                .await;
            // PREPARE outlives the transaction; an aborted one refuses DEALLOCATE.
            let _ = c.batch_execute("ROLLBACK").await;
            let _ = c.execute(format!("DEALLOCATE {name}").as_str(), &[]).await;
            result.map(|r| r.get(0))
        }
        .await;
        let end = c.batch_execute("ROLLBACK").await;
        let plan = r?;
        end?;
        plan
    };
    Ok(match rows_written(&plan) {
        Some(n) => Answer::Estimate(n),
        None => Answer::Failed("the plan has no row estimate".into()),
    })
}

/// Rows fed to the plan's ModifyTable nodes (the largest), else the largest row estimate of
/// any node.
pub fn rows_written(plan: &serde_json::Value) -> Option<f64> {
    fn walk(v: &serde_json::Value, modify: &mut Option<f64>, any: &mut Option<f64>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, modify, any)),
            serde_json::Value::Object(m) => {
                let rows = m.get("Plan Rows").and_then(serde_json::Value::as_f64);
                if let Some(r) = rows {
                    *any = Some(any.map_or(r, |a: f64| a.max(r)));
                }
                if m.get("Node Type").and_then(serde_json::Value::as_str) == Some("ModifyTable") {
                    let fed = m
                        .get("Plans")
                        .and_then(serde_json::Value::as_array)
                        .and_then(|p| p.first())
                        .and_then(|p| p.get("Plan Rows"))
                        .and_then(serde_json::Value::as_f64)
                        .or(rows);
                    if let Some(r) = fed {
                        *modify = Some(modify.map_or(r, |a: f64| a.max(r)));
                    }
                }
                m.values().for_each(|x| walk(x, modify, any));
            }
            _ => {}
        }
    }
    let (mut modify, mut any) = (None, None);
    walk(plan, &mut modify, &mut any);
    modify.or(any)
}
