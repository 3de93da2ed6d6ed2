//! The session ledger: what statements let through have changed in the session, as far as
//! decisions care. Settings (SET ROLE, lock_timeout, search_path, the ticket, break-glass)
//! count when forwarded and are undone when their batch fails or their transaction rolls back;
//! tables (and their indexes) count as created in this session once their batch succeeded and
//! their transaction committed; SQL-level PREPAREd statements are kept for EXECUTE. Pure: fed
//! the inspections of forwarded statements and the server's ReadyForQuery messages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::sql::Inspection;
use crate::wire::read::TxStatus;

pub use crate::workflow::{BREAK_GLASS_SETTING, TICKET_SETTING};

/// Session settings decisions read, tracked as SET statements are forwarded.
#[derive(Debug, Clone, Default)]
struct Settings {
    role: Option<String>,
    lock_timeout_set: bool,
    search_path: Option<String>,
    ticket: Option<String>,
    break_glass: Option<String>,
}

/// What forwarded statements changed in one session.
#[derive(Debug)]
pub struct Ledger {
    /// Creations forwarded whose batch has not ended: (ReadyForQuery number ending it, names).
    pending_created: VecDeque<(u64, Vec<String>)>,
    /// Created inside the open transaction: kept if it commits, dropped if it rolls back.
    txn_created: Vec<String>,
    /// Created and committed in this session.
    created: HashSet<String>,
    /// A ROLLBACK was forwarded in the open transaction.
    rolling_back: bool,
    last_tx: TxStatus,
    /// ReadyForQuery messages seen since the session started (the session state's count).
    readies: u64,
    ticket: Option<String>,
    /// The break-glass reason set in this session (used only if the policy lets the user).
    break_glass: Option<String>,
    prepared: HashMap<String, Arc<Inspection>>,
    /// `SET LOCAL lock_timeout` in the open transaction: set (non-zero) or not.
    local_lock_timeout: Option<bool>,
    /// `SET LOCAL pgwarden.ticket` / `pgwarden.break_glass` in the open transaction.
    local_ticket: Option<Option<String>>,
    local_break_glass: Option<Option<String>>,
    /// Forwarded statements that change settings, with the ReadyForQuery ending their
    /// batch: kept until that batch's transaction ends, so that settings are confirmed or
    /// undone batch by batch even when later batches are already queued behind it.
    journal: VecDeque<(u64, Arc<Inspection>)>,
    /// The ReadyForQuery ending the last forwarded batch that may change client_encoding.
    encoding_risk_until: u64,
    /// The role from SET ROLE (None: no role set, statements run as the session user).
    role: Option<String>,
    /// `SET LOCAL ROLE` in the open transaction.
    local_role: Option<Option<String>>,
    /// `SET LOCAL search_path` in the open transaction.
    local_search_path: bool,
    /// The search_path set for the session / the open transaction (estimates plan under it).
    search_path_value: Option<String>,
    local_search_path_value: Option<String>,
    /// Indexes created in this session, with their tables.
    index_tables: HashMap<String, String>,
    /// The session settings as of the last commit (restored when a batch fails or its
    /// transaction rolls back: the server undoes a SET then, LOCAL or not).
    confirmed: Settings,
    /// The session's lock_timeout is set (SET lock_timeout, startup options).
    lock_timeout_set: bool,
    /// Committed creations and those of the open transaction: what decisions see.
    published: Arc<HashSet<String>>,
    /// Bumped whenever something decisions read may have changed (a setting, a creation,
    /// DDL, a prepared statement): a decision stamped with an older generation is made again
    /// before it is acted on later (a Bind of a statement decided at Parse).
    generation: u64,
    /// Bytes of SQL-level PREPAREd statement text remembered (bounded by the gate).
    prepared_bytes: usize,
    /// Bytes of statement text the journal holds (bounded by the gate).
    journal_bytes: usize,
    /// The other spelling of a created table's name, both ways: `t` and `s.t` for a table
    /// created while the search_path was the one schema `s` (forgotten together).
    aliases: HashMap<String, String>,
    /// Created tables another object's DROP takes with it (a partition, an inheritance
    /// child, a typed table): forgotten at any DROP TABLE, since the facts do not say whose
    /// child each one is.
    dependents: HashSet<String>,
}

impl Ledger {
    /// A session that starts with these settings (from its startup packet) and creations.
    pub fn new(
        ticket: Option<String>,
        lock_timeout_set: bool,
        created: Arc<HashSet<String>>,
    ) -> Ledger {
        let mut l = Ledger {
            pending_created: VecDeque::new(),
            txn_created: Vec::new(),
            created: (*created).clone(),
            rolling_back: false,
            last_tx: TxStatus::Idle,
            readies: 0,
            ticket,
            break_glass: None,
            prepared: HashMap::new(),
            local_lock_timeout: None,
            local_ticket: None,
            local_break_glass: None,
            journal: VecDeque::new(),
            encoding_risk_until: 0,
            role: None,
            local_role: None,
            local_search_path: false,
            search_path_value: None,
            local_search_path_value: None,
            index_tables: HashMap::new(),
            confirmed: Settings::default(),
            lock_timeout_set,
            published: created,
            generation: 0,
            prepared_bytes: 0,
            journal_bytes: 0,
            aliases: HashMap::new(),
            dependents: HashSet::new(),
        };
        l.confirmed = l.settings();
        l
    }

    /// The attached ticket (`SET pgwarden.ticket`, startup options).
    pub fn ticket(&self) -> Option<&str> {
        match &self.local_ticket {
            Some(t) => t.as_deref(),
            None => self.ticket.as_deref(),
        }
    }

    /// The break-glass reason the session set.
    pub fn break_glass(&self) -> Option<&str> {
        match &self.local_break_glass {
            Some(b) => b.as_deref(),
            None => self.break_glass.as_deref(),
        }
    }

    /// The role SET ROLE chose (SET LOCAL ROLE first); none: the session user.
    pub fn role(&self) -> Option<String> {
        self.local_role.clone().unwrap_or_else(|| self.role.clone())
    }

    /// Whether lock_timeout is non-zero now (SET LOCAL first).
    pub fn lock_timeout_set(&self) -> bool {
        self.local_lock_timeout.unwrap_or(self.lock_timeout_set)
    }

    /// The search_path the session set (SET LOCAL first); none: the server's default.
    pub fn search_path(&self) -> Option<&str> {
        self.local_search_path_value
            .as_deref()
            .or(self.search_path_value.as_deref())
    }

    /// Tables (and indexes) created in this session, as decisions see them.
    pub fn created(&self) -> &Arc<HashSet<String>> {
        &self.published
    }

    /// Changes whenever anything a decision reads from the ledger may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes kept until their batches end: statement text of settings to confirm or undo,
    /// and (estimated) creations to count.
    pub fn journal_bytes(&self) -> usize {
        self.journal_bytes + self.pending_created.len() * 256
    }

    /// Bytes of SQL-level PREPAREd statement text remembered.
    pub fn prepared_bytes(&self) -> usize {
        self.prepared_bytes
    }

    /// The statement a SQL-level PREPARE defined under `name`.
    pub fn prepared(&self, name: &str) -> Option<&Arc<Inspection>> {
        self.prepared.get(name)
    }

    fn settings(&self) -> Settings {
        Settings {
            role: self.role.clone(),
            lock_timeout_set: self.lock_timeout_set,
            search_path: self.search_path_value.clone(),
            ticket: self.ticket.clone(),
            break_glass: self.break_glass.clone(),
        }
    }

    fn has_local_settings(&self) -> bool {
        self.local_lock_timeout.is_some()
            || self.local_role.is_some()
            || self.local_search_path_value.is_some()
            || self.local_ticket.is_some()
            || self.local_break_glass.is_some()
    }

    fn clear_local_settings(&mut self) {
        self.local_lock_timeout = None;
        self.local_role = None;
        self.local_search_path_value = None;
        self.local_ticket = None;
        self.local_break_glass = None;
    }

    /// DISCARD ALL resets every setting (as RESET ALL does).
    fn discard_settings(&mut self) {
        self.ticket = None;
        self.break_glass = None;
        self.search_path_value = None;
        self.lock_timeout_set = false;
        self.role = None;
        self.clear_local_settings();
    }

    fn restore(&mut self, s: Settings) {
        self.generation += 1;
        self.role = s.role;
        self.lock_timeout_set = s.lock_timeout_set;
        self.search_path_value = s.search_path;
        self.ticket = s.ticket;
        self.break_glass = s.break_glass;
    }

    /// Forgets creations named without a schema (after search_path changes or DISCARD): the
    /// same name may now resolve to a table this session did not create.
    fn forget_unqualified(&mut self) {
        let unqualified: Vec<String> = self
            .created
            .iter()
            .chain(&self.txn_created)
            .chain(self.pending_created.iter().flat_map(|(_, p)| p))
            .filter(|n| !n.contains('.'))
            .cloned()
            .collect();
        // Their qualified spellings still name the tables created.
        for n in &unqualified {
            if let Some(a) = self.aliases.remove(n) {
                self.aliases.remove(&a);
            }
        }
        self.forget_created(&unqualified);
    }

    /// Forgets the creations in `schemas`, and those named without a schema (the search_path
    /// may have resolved them through it).
    fn forget_schemas(&mut self, schemas: &[String]) {
        let inside: Vec<String> = self
            .created
            .iter()
            .chain(&self.txn_created)
            .chain(self.pending_created.iter().flat_map(|(_, p)| p))
            .filter(|n| {
                schemas.iter().any(|s| {
                    n.strip_prefix(s.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                })
            })
            .cloned()
            .collect();
        self.forget_created(&inside);
        self.forget_unqualified();
    }

    fn forget_all_created(&mut self) {
        let all: Vec<String> = self
            .created
            .iter()
            .chain(&self.txn_created)
            .chain(self.pending_created.iter().flat_map(|(_, p)| p))
            .cloned()
            .collect();
        self.forget_created(&all);
    }

    fn forget_created(&mut self, names: &[String]) {
        // Indexes go with their tables; a name with its other spelling.
        let mut names = names.to_vec();
        for n in names.clone() {
            if let Some(a) = self.aliases.remove(&n) {
                self.aliases.remove(&a);
                names.push(a);
            }
        }
        let dropped: Vec<String> = self
            .index_tables
            .iter()
            .filter(|(i, t)| names.contains(t) || names.contains(i))
            .map(|(i, _)| i.clone())
            .collect();
        for i in dropped {
            self.index_tables.remove(&i);
            names.push(i);
        }
        let names = &names[..];
        self.created.retain(|c| !names.contains(c));
        self.txn_created.retain(|c| !names.contains(c));
        for (_, p) in &mut self.pending_created {
            p.retain(|c| !names.contains(c));
        }
        self.publish_created();
    }

    /// What decisions see: committed creations and those of the open transaction.
    fn publish_created(&mut self) {
        self.generation += 1;
        let mut all = self.created.clone();
        all.extend(self.txn_created.iter().cloned());
        self.published = Arc::new(all);
    }

    /// Session facts from a statement that was let through. Creations count only once their
    /// batch ends without an error ([`Gate::on_ready`]).
    pub fn remember(&mut self, ins: &Arc<Inspection>, batch_end: u64) {
        if ins.unparsed.is_some()
            || ins.statements.iter().flat_map(|s| &s.ops).any(|op| {
                // Transaction control is compared on its own (the transaction state), and
                // what a ROLLBACK undoes bumps the generation when it is undone.
                !matches!(
                    op.class,
                    crate::sql::Class::Read | crate::sql::Class::Write | crate::sql::Class::Tcl
                )
            })
        {
            // DDL, settings, calls: what later decisions read may change.
            self.generation += 1;
        }
        if changes_settings(ins) {
            self.journal_bytes += text_size(ins);
            self.journal.push_back((batch_end, ins.clone()));
        }
        if may_change_encoding(ins) {
            self.encoding_risk_until = self.encoding_risk_until.max(batch_end);
        }
        self.apply(ins, batch_end, false);
    }

    /// No statement forwarded and not yet answered can change client_encoding: the last
    /// ParameterStatus still says how the server reads the next text.
    pub fn encoding_known(&self) -> bool {
        self.encoding_risk_until <= self.readies
    }

    /// What `ins` does to the session; `replay`: only its settings again (see
    /// [`Self::on_ready`]), its creations and prepared statements were taken the first time.
    fn apply(&mut self, ins: &Arc<Inspection>, batch_end: u64, replay: bool) {
        let none = std::collections::HashSet::new();
        let mut walk = crate::sql::facts::CreatedWalk::new(ins, &none);
        for (i, s) in ins.statements.iter().enumerate() {
            for (k, op) in s.ops.iter().enumerate() {
                // ALTER DATABASE/ROLE/SYSTEM ... SET set other sessions' defaults, and a
                // routine body's SET happens when it is called: not this session's now.
                let own_setting = !op.tag.starts_with("ALTER ")
                    && op.nesting != crate::sql::Nesting::FunctionBody;
                if let Some(set) = op.set.as_ref().filter(|_| own_setting) {
                    match set.name.as_str() {
                        TICKET_SETTING => {
                            let t = set.value.clone().filter(|v| !v.trim().is_empty());
                            if set.local {
                                self.local_ticket = Some(t);
                            } else {
                                self.ticket = t;
                                self.local_ticket = None;
                            }
                        }
                        BREAK_GLASS_SETTING => {
                            let b = set.value.clone().filter(|v| !v.trim().is_empty());
                            if set.local {
                                self.local_break_glass = Some(b);
                            } else {
                                self.break_glass = b;
                                self.local_break_glass = None;
                            }
                        }
                        // SET LOCAL lasts until the transaction ends.
                        "lock_timeout" if set.local => {
                            self.local_lock_timeout =
                                Some(set.value.as_deref().is_some_and(nonzero_duration))
                        }
                        "lock_timeout" => {
                            self.lock_timeout_set =
                                set.value.as_deref().is_some_and(nonzero_duration)
                        }
                        "role" => {
                            // "$user" in search_path now means another schema.
                            self.forget_unqualified();
                            let role = set
                                .value
                                .clone()
                                .filter(|v| !v.eq_ignore_ascii_case("none"));
                            if set.local {
                                self.local_role = Some(role);
                            } else {
                                self.role = role;
                            }
                        }
                        // Unqualified names may now resolve to other schemas' tables.
                        "search_path" => {
                            self.forget_unqualified();
                            if set.local {
                                self.local_search_path_value = set.value.clone();
                            } else {
                                self.search_path_value = set.value.clone();
                            }
                            // SET LOCAL ends with the transaction: names created under it
                            // mean other tables afterwards.
                            self.local_search_path |= set.local;
                        }
                        // A new session user drops any role set before.
                        "session_authorization" => {
                            self.forget_unqualified();
                            self.role = None;
                            self.local_role = None;
                        }
                        "all" if set.value.is_none() => {
                            if !replay {
                                self.forget_unqualified();
                            }
                            self.discard_settings();
                        }
                        _ => {}
                    }
                }
                if replay {
                    // Settings only: a later ROLLBACK, RESET ALL or DISCARD ALL again.
                    match op.tag.as_str() {
                        t if t.starts_with("ROLLBACK") || t == "ABORT" => {
                            self.restore(self.confirmed.clone());
                        }
                        "DISCARD" if discards_all(&s.text) => self.discard_settings(),
                        _ => {}
                    }
                    continue;
                }
                match op.tag.as_str() {
                    // Not IF NOT EXISTS (it may have created nothing), not ON COMMIT DROP,
                    // not nested in CREATE SCHEMA or a DO body.
                    // A quoted name with a dot in it ("public.t") is spelled like a qualified
                    // one: such creations are not taken as exempt.
                    _ if op.creates_table(k == 0) && quotes_a_dotted_name(&s.text) => {}
                    _ if op.creates_table(k == 0) => {
                        let until = batch_end;
                        let mut names = op.objects.clone();
                        if let Some(schema) = self
                            .search_path()
                            .and_then(single_schema)
                            .map(str::to_owned)
                        {
                            // Under a one-schema search_path, `t` is `schema.t` and back.
                            for n in &op.objects {
                                let other = match n.split_once('.') {
                                    None => format!("{schema}.{n}"),
                                    Some((s, rest)) if s == schema && !rest.contains('.') => {
                                        rest.to_owned()
                                    }
                                    Some(_) => continue,
                                };
                                self.aliases.insert(n.clone(), other.clone());
                                self.aliases.insert(other.clone(), n.clone());
                                names.push(other);
                            }
                        }
                        if op
                            .attributes
                            .iter()
                            .any(|a| matches!(a.as_str(), "partition_of" | "inherits" | "of_type"))
                        {
                            self.dependents.extend(names.iter().cloned());
                        }
                        self.pending_created.push_back((until, names));
                    }
                    // An index on a table created in this session is one too (its DROP
                    // INDEX locks nothing anyone else uses).
                    "CREATE INDEX"
                        if !op.created_index_names(k == 0).is_empty()
                            && !quotes_a_dotted_name(&s.text) =>
                    {
                        let earlier = walk.at(i);
                        let new_table = op.objects.iter().all(|o| {
                            self.published.contains(o)
                                || earlier.is_some_and(|e| e.contains(o))
                                || self.pending_created.iter().any(|(_, p)| p.contains(o))
                        });
                        if new_table {
                            let names = op.created_index_names(true);
                            if let Some(t) = op.objects.first() {
                                for n in &names {
                                    self.index_tables.insert(n.clone(), t.clone());
                                }
                            }
                            let until = batch_end;
                            self.pending_created.push_back((until, names));
                        }
                    }
                    // A pre-existing table attached as a partition: the new parent now owns
                    // old data (dropping or truncating it reaches the partition).
                    _ if op.subcommands.iter().any(|c| c == "ATTACH PARTITION") => {
                        self.forget_created(&op.objects);
                    }
                    // A table made a child of another (ALTER TABLE old INHERIT parent): the
                    // parent is not named in the facts, so no table created here is taken
                    // to own only new data any more.
                    _ if op.subcommands.iter().any(|c| c == "ADD INHERIT") => {
                        self.forget_all_created();
                    }
                    // Renamed or moved: the name may come to mean an older table.
                    _ if op
                        .subcommands
                        .iter()
                        .any(|c| c == "RENAME" || c == "SET SCHEMA") =>
                    {
                        self.forget_created(&op.objects);
                        if op.tag == "ALTER SCHEMA" {
                            self.forget_schemas(&op.objects);
                        }
                    }
                    // Its tables are gone; its name (or the search_path through it) may come
                    // to mean older ones.
                    "DROP SCHEMA" => self.forget_schemas(&op.objects),
                    // Whatever the role owned is gone, created tables perhaps among it.
                    "DROP OWNED" | "REASSIGN OWNED" => self.forget_all_created(),
                    // CASCADE (and DROP EXTENSION, whose member tables go with it) may drop
                    // tables created here that the statement does not name.
                    _ if op.tag.starts_with("DROP ")
                        && (op.flags.contains(&crate::sql::facts::Flag::Cascade)
                            || op.tag == "DROP EXTENSION") =>
                    {
                        self.forget_all_created();
                    }
                    // Once dropped, the name may well resolve to an older table next time; a
                    // dropped table takes its partitions with it.
                    "DROP TABLE" | "DROP MATERIALIZED VIEW" | "DROP INDEX" => {
                        let mut gone = op.objects.clone();
                        if op.tag == "DROP TABLE" {
                            gone.extend(self.dependents.drain());
                        }
                        self.forget_created(&gone);
                    }
                    // A new schema may come ahead of the one a name was created in.
                    "CREATE SCHEMA" => self.forget_unqualified(),
                    // Creations of the open transaction may be undone (ROLLBACK TO a
                    // savepoint, ROLLBACK AND CHAIN too): forget them.
                    t if t.starts_with("ROLLBACK") || t == "ABORT" => {
                        self.rolling_back = true;
                        // Whole-transaction rollback undoes its SETs (to a savepoint: those
                        // since it; taken as all of them, pgwarden does not track savepoints).
                        self.restore(self.confirmed.clone());
                        let undone: Vec<String> = self
                            .txn_created
                            .iter()
                            .chain(self.pending_created.iter().flat_map(|(_, p)| p))
                            .cloned()
                            .collect();
                        self.forget_created(&undone);
                    }
                    // DISCARD ALL resets settings and forgets prepared statements.
                    "DISCARD" if discards_all(&s.text) => {
                        self.discard_settings();
                        self.prepared.clear();
                        self.prepared_bytes = 0;
                        self.forget_unqualified();
                    }
                    // DISCARD TEMP drops temporary tables: their names may now resolve to
                    // older tables.
                    "DISCARD" => self.forget_unqualified(),
                    _ => {}
                }
                match (op.tag.as_str(), &op.prepared_name) {
                    ("PREPARE", Some(name)) => {
                        let bytes = prepared_size(name, ins);
                        if let Some(old) = self.prepared.insert(name.clone(), ins.clone()) {
                            self.prepared_bytes -= prepared_size(name, &old);
                        }
                        self.prepared_bytes += bytes;
                    }
                    // DEALLOCATE ALL forgets everything; after DEALLOCATE name the entry is
                    // stale but harmless: the server refuses to EXECUTE it.
                    ("DEALLOCATE", _)
                        if s.text.split_whitespace().nth(1).is_some_and(|w| {
                            w.trim_end_matches(';').eq_ignore_ascii_case("all")
                        }) =>
                    {
                        self.prepared.clear();
                        self.prepared_bytes = 0;
                    }
                    _ => {}
                }
            }
        }
    }

    /// A batch ended with ReadyForQuery number `ready` (counted from the session's start):
    /// creations of batches it ended count (unless they failed), settings stand or are undone.
    pub fn on_ready(&mut self, failed: bool, tx: TxStatus, ready: u64) {
        self.readies = ready;
        if tx == TxStatus::Idle {
            // Settings changed by the batches this ReadyForQuery ends stand if the batch (or
            // the transaction it ended) committed, and are undone by the server otherwise;
            // SET LOCAL ends with the transaction. Batches already queued behind it keep
            // theirs: their settings are applied again on top.
            let committed = !failed && !self.rolling_back && self.last_tx != TxStatus::Failed;
            let mut done = Vec::new();
            while let Some((n, ins)) = self.journal.pop_front() {
                if n > ready {
                    self.journal.push_front((n, ins));
                    break;
                }
                self.journal_bytes -= text_size(&ins);
                done.push(ins);
            }
            if !committed || !self.journal.is_empty() || self.has_local_settings() {
                self.restore(self.confirmed.clone());
                if committed {
                    for ins in &done {
                        self.apply(ins, 0, true);
                    }
                    self.clear_local_settings();
                    self.confirmed = self.settings();
                }
                self.clear_local_settings();
                let queued: Vec<Arc<Inspection>> =
                    self.journal.iter().map(|(_, i)| i.clone()).collect();
                for ins in &queued {
                    self.apply(ins, 0, true);
                }
            } else {
                self.confirmed = self.settings();
            }
            if std::mem::take(&mut self.local_search_path) {
                self.forget_unqualified();
            }
        }
        if self.pending_created.is_empty() && self.txn_created.is_empty() {
            // The common case: nothing was created; nothing to publish.
            self.last_tx = tx;
            if tx == TxStatus::Idle {
                self.rolling_back = false;
            }
            return;
        }
        while let Some((until, names)) = self.pending_created.pop_front() {
            if until > self.readies {
                self.pending_created.push_front((until, names));
                break;
            }
            if !failed {
                if tx == TxStatus::Idle {
                    self.created.extend(names);
                } else {
                    self.txn_created.extend(names);
                }
            }
        }
        if tx == TxStatus::Idle && self.last_tx != TxStatus::Idle {
            // The transaction ended: committed unless rolled back or failed.
            let txn = std::mem::take(&mut self.txn_created);
            if !self.rolling_back && self.last_tx == TxStatus::InBlock && !failed {
                self.created.extend(txn);
            }
        }
        if tx == TxStatus::Idle {
            self.rolling_back = false;
        }
        self.last_tx = tx;
        self.publish_created();
    }
}

/// The schema a search_path of exactly one plain schema names (lower-case, unquoted, not
/// `$user` or `pg_temp`): unqualified tables are created there.
fn single_schema(search_path: &str) -> Option<&str> {
    let v = search_path.trim().trim_matches('\'');
    let plain = !v.is_empty()
        && !v.starts_with("pg_")
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    plain.then_some(v)
}

/// The statement text an inspection holds.
fn text_size(ins: &Inspection) -> usize {
    ins.statements.iter().map(|s| s.text.len()).sum::<usize>() + 64
}

/// What remembering a SQL-level prepared statement costs: its name and its statements' text.
pub fn prepared_size(name: &str, ins: &Inspection) -> usize {
    name.len() + ins.statements.iter().map(|s| s.text.len()).sum::<usize>()
}

/// A lock_timeout value other than zero (`'0'`, `0`, `'0ms'` are zero; so is garbage, which
/// the server would refuse anyway).
fn nonzero_duration(v: &str) -> bool {
    let digits: String = v
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse::<f64>().is_ok_and(|n| n > 0.0)
}

/// Does `ins` change a setting the ledger tracks (or undo them: ROLLBACK, DISCARD ALL)?
fn changes_settings(ins: &Inspection) -> bool {
    ins.statements.iter().flat_map(|s| &s.ops).any(|op| {
        op.set.is_some()
            || op.tag.starts_with("ROLLBACK")
            || op.tag == "ABORT"
            || op.tag == "DISCARD"
    })
}

/// Could `ins` change client_encoding when it runs: a SET or RESET of it (RESET ALL, DISCARD
/// ALL), or any function call, DO, CALL or EXECUTE (set_config can hide in them), or text
/// that could not be inspected.
fn may_change_encoding(ins: &Inspection) -> bool {
    ins.unparsed.is_some()
        || ins.statements.iter().any(|s| {
            // A read calling only known pure built-ins (length, upper, now…) sets nothing.
            (!s.functions.is_empty() && !crate::audit::record::plain_read(ins))
                || s.ops.iter().any(|op| {
                    matches!(op.tag.as_str(), "DISCARD" | "DO" | "CALL" | "EXECUTE")
                        || op.set.as_ref().is_some_and(|set| {
                            matches!(set.name.as_str(), "client_encoding" | "all")
                        })
                })
        })
}

/// Whether `text` has a quoted identifier with a dot in it (or a Unicode-escaped one, which
/// may spell a dot): its names cannot be told from qualified ones.
fn quotes_a_dotted_name(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    if lower.contains("u&\"") {
        return true;
    }
    text.split('"').skip(1).step_by(2).any(|q| q.contains('.'))
}

/// `DISCARD ALL` (not TEMP, PLANS or SEQUENCES).
fn discards_all(text: &str) -> bool {
    text.split_whitespace()
        .nth(1)
        .is_some_and(|w| w.trim_end_matches(';').eq_ignore_ascii_case("all"))
}

#[cfg(test)]
mod tests;
