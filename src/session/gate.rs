//! The policy gate of a session: inspects the SQL of every Query and Parse (cached), decides
//! with the current policy and the session's context, and says forward or refuse. It also
//! keeps the session facts that decisions need: the attached ticket (`SET pgwarden.ticket`),
//! SQL-level prepared statements (whose facts apply again at EXECUTE).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::state::{BatchAnswer, ParseAnswer};
use super::verdict::{Gate, Resumed, Verdict, View, Waiting};
use super::waits;
use super::Shared;
use crate::approval::events::Event;
use crate::approval::model::{HeldRule, NewHold, NewReview};
use crate::audit::record::{
    bounded_text, ApprovalInfo, CommandDone, DecisionInfo, ErrorInfo, OutcomeRecord,
    OutcomeSession, SessionInfo, StatementInfo, StatementRecord,
};
use crate::catalog::client::{default_search_path, Source};
use crate::catalog::{self, Answer, Answers, Question};
use crate::config::AuditOnFailure;
use crate::policy::{Action, Decision, SessionContext};
use crate::sql::{Inspection, ReadAs, Unparsed};
use crate::wire::messages::{PgError, Severity};
use crate::wire::read::TxStatus;
use crate::wire::sqlstate::SqlState;
use crate::workflow::cases::encoding_readable;
use crate::workflow::{self, HoldEnd, Route};

use super::ledger::Ledger;
pub use super::prepared::STATEMENT_BUDGET;
use super::prepared::{
    budget_refusal, inert, named_size, statement_name, unknown_statement, Named, PendingParse,
    Stamp, DECISION_LIFETIME,
};

/// The longest statement text (as approvers see it) that is held for review.
pub const MAX_HELD_SQL: usize = 64 * 1024;
pub use super::ledger::{BREAK_GLASS_SETTING, TICKET_SETTING};

pub struct PolicyGate {
    version_checked: bool,
    shared: Arc<Shared>,
    base: SessionContext,
    session_id: u64,
    /// The answer of the last wait other than the catalog's (a hold's end, a ticket's
    /// check), for the next decision of the same text.
    resumed: Option<Resumed>,
    /// Catalog answers fetched for the statement text being decided, by reading (see
    /// [`Self::with_catalog`]); handed back through [`Gate::resume`].
    supplied: HashMap<String, Answers>,
    /// What forwarded statements changed in the session (settings, creations, prepared).
    ledger: Ledger,
    /// The decision being made was let through by a ticket, an approval or break-glass.
    once_only: bool,
    /// A statement whose audit record is being written: it is forwarded once it is synced.
    awaiting: Option<Awaiting>,
    /// Forwarded recorded statements whose batch has not been answered yet.
    outcomes: Vec<PendingOutcome>,
    /// Prepared statements (extended protocol) the server confirmed, by name: their text and
    /// what their decision rested on, to decide them again at a Bind when that changed.
    named: HashMap<Vec<u8>, Named>,
    /// Bytes `named` and `pending_parses` hold (names, texts, records), bounded by
    /// [`STATEMENT_BUDGET`].
    named_bytes: usize,
    /// Fingerprints of recently recorded inspections: texts that share a cached inspection
    /// differ only in literals, which fingerprints leave out (the Arc held keeps the
    /// inspection, and so its address, alive).
    fingerprints: std::cell::RefCell<std::collections::VecDeque<(Arc<Inspection>, Option<String>)>>,
    /// The record the Parse being decided leaves for its Binds (see [`PendingParse`]).
    parse_record: Option<StatementRecord>,
    /// What the Parse being decided would change in the session when run.
    parse_effects: Option<Arc<Inspection>>,
    /// Forwarded Parses whose effect on the name (its record, its one run) waits for the
    /// server's ParseComplete: a Parse the server rejects or skips (the name is taken, an
    /// earlier message of the batch failed) leaves the statement it had in place, and so its
    /// record and its one-run limit.
    pending_parses: std::collections::VecDeque<PendingParse>,
    /// The statement of the last Bind decided resolves what it names when its portal runs.
    bind_late: bool,
}

/// How many inspections' fingerprints a session remembers.
const FINGERPRINT_MEMO: usize = 32;

/// Inspections of texts longer than this are not kept in the fingerprint memo (32 of them
/// would otherwise keep up to 32 inspections of 4 MB texts alive).
const FINGERPRINT_MEMO_TEXT: usize = 64 * 1024;

/// A message waiting for its audit record to be synced.
struct Awaiting {
    key: String,
    since: Instant,
    /// What forwarding it changes in the session (none for a Bind).
    ins: Option<Arc<Inspection>>,
    once_only: bool,
    /// A refusal waits for its record too (so a flood of refusals throttles only the session
    /// sending it), then is sent whatever the write's outcome.
    refusal: Option<PgError>,
}

struct PendingOutcome {
    batch_end: u64,
    seq: u64,
    forwarded: Instant,
}

impl PolicyGate {
    pub fn new(shared: Arc<Shared>, base: SessionContext, session_id: u64) -> Self {
        let ledger = Ledger::new(
            base.ticket.clone(),
            base.lock_timeout_set,
            base.created.clone(),
        );
        PolicyGate {
            version_checked: false,
            shared,
            base,
            session_id,
            supplied: Default::default(),
            resumed: None,
            ledger,
            once_only: false,
            awaiting: None,
            outcomes: Vec::new(),
            named: HashMap::new(),
            named_bytes: 0,
            fingerprints: Default::default(),
            parse_record: None,
            parse_effects: None,
            pending_parses: Default::default(),
            bind_late: false,
        }
    }

    /// The inspection with live-catalog facts folded in, when a catalog is configured and
    /// the policy reads facts this text raises questions about. `Err`: the answers are not
    /// at hand; the work that fetches them (into `supplied`) must complete first.
    fn with_catalog(
        &self,
        ins: Arc<Inspection>,
        text: &str,
        read_as: ReadAs,
    ) -> Result<Arc<Inspection>, Waiting> {
        let Some(cat) = self.shared.catalog.clone() else {
            return Ok(ins);
        };
        let needs = self.shared.policy.load().needs_for(&ins);
        let qs = catalog::questions(&ins, needs, self.ledger.created());
        if qs.is_empty() {
            return Ok(ins);
        }
        let search_path = self
            .ledger
            .search_path()
            .map(str::to_owned)
            .unwrap_or_else(|| default_search_path(&self.base.user));
        let source = Source::new(text, read_as, ins.statements.len(), &search_path);
        // Answers are for one reading of one text (both readings may be asked at once).
        let key = format!("{}\0{text}", read_as.standard_conforming_strings);
        let fetched = self.supplied.get(&key).cloned();
        let mut answers = fetched.clone().unwrap_or_default();
        let missing: Vec<Question> = qs
            .into_iter()
            .filter(|q| !answers.contains_key(q))
            .collect();
        if !missing.is_empty() {
            let db = &self.base.database;
            if fetched.is_some() {
                // Fetched once for this text already: what is still missing (the session
                // changed meanwhile) counts as failed rather than waiting again.
                answers.extend(missing.into_iter().map(|q| {
                    (
                        q,
                        Answer::Failed("not answered while the statement waited".into()),
                    )
                }));
            } else if let Some(a) = cat.cached(db, &missing, &source) {
                answers.extend(a);
            } else {
                let db = db.clone();
                return Err(Waiting::once(async move {
                    let answers = cat.fetch(&db, &missing, &source).await;
                    Resumed::Answers { key, answers }
                }));
            }
        }
        Ok(Arc::new(catalog::enrich(
            &ins,
            &answers,
            self.ledger.created(),
            &cat.settings.thresholds,
        )))
    }

    /// The effective role: PostgreSQL 18 reports `role`; before that, what SET ROLE said is
    /// tracked here.
    fn effective_role(&self, view: &View<'_>) -> Option<String> {
        match view.params.role.as_deref() {
            Some(_) => view.params.effective_role().map(str::to_owned),
            None => self
                .ledger
                .role()
                .or_else(|| view.params.session_authorization.clone()),
        }
    }

    /// Decides on an inspection in this session. Sent before the server answered what was
    /// sent ahead of it (a BEGIN, a COMMIT pipelined before it), a statement may run inside
    /// a transaction block or outside one whatever the last ReadyForQuery said: it is
    /// decided both ways, and the stricter decision stands.
    pub fn decide(&self, ins: &Inspection, view: &View<'_>) -> Decision {
        let in_transaction = view.tx != TxStatus::Idle;
        let mut d = self.decide_in(ins, view, in_transaction);
        if !view.settled && !d.action.refuses() {
            let again = self.decide_in(ins, view, !in_transaction);
            if again.action > d.action || again.strictest > d.strictest {
                d.action = d.action.max(again.action);
                d.strictest = d.strictest.max(again.strictest);
                d.matches.extend(again.matches);
            }
        }
        d
    }

    fn decide_in(&self, ins: &Inspection, view: &View<'_>, in_transaction: bool) -> Decision {
        let policy = self.shared.policy.load();
        let executes = ins
            .statements
            .iter()
            .flat_map(|s| &s.ops)
            .any(|o| o.tag == "EXECUTE");
        if !executes && policy.matches_nothing(ins) {
            // No rule can match whoever sends it: the hot path skips the session context.
            return Decision::allow(&policy.version);
        }
        let mut ctx = self.base.clone();
        ctx.role = self.effective_role(view);
        ctx.lock_timeout_set = self.ledger.lock_timeout_set();
        ctx.created = self.ledger.created().clone();
        ctx.in_transaction = in_transaction;
        ctx.unreadable_encoding = view
            .params
            .client_encoding
            .as_deref()
            .is_some_and(|e| !encoding_readable(e));
        ctx.ticket = ins
            .statements
            .iter()
            .flat_map(|s| s.tickets.first())
            .next()
            .cloned()
            .or_else(|| self.ledger.ticket().map(str::to_owned));
        ctx.now = jiff::Timestamp::now();
        let mode = self.shared.config.mode;
        let mut d = policy.decide(ins, &ctx, mode);
        // A table attached as a partition (or made a child) earlier in the same text: the
        // statements after it are decided with nothing taken as created before them (the
        // parent now owns older data; the inspector does not name the child or the parent).
        if let Some(i) = ins.statements.iter().position(|s| {
            s.ops.iter().any(|o| {
                o.subcommands
                    .iter()
                    .any(|c| c == "ATTACH PARTITION" || c == "ADD INHERIT")
            })
        }) {
            if i + 1 < ins.statements.len() {
                let rest = Inspection {
                    statements: ins.statements[i + 1..].to_vec(),
                    unparsed: None,
                    literal_sensitive: ins.literal_sensitive,
                    notes: Vec::new(),
                    memo: Default::default(),
                };
                let mut after = ctx.clone();
                after.created = Default::default();
                let again = policy.decide(&rest, &after, mode);
                d.action = d.action.max(again.action);
                d.strictest = d.strictest.max(again.strictest);
                d.matches.extend(again.matches);
            }
        }
        // EXECUTE runs what PREPARE defined: its facts are decided again, now.
        for op in ins.statements.iter().flat_map(|s| &s.ops) {
            if op.tag != "EXECUTE" {
                continue;
            }
            if let Some(p) = op
                .prepared_name
                .as_ref()
                .and_then(|n| self.ledger.prepared(n))
            {
                let again = policy.decide(p, &ctx, mode);
                d.action = d.action.max(again.action);
                d.strictest = d.strictest.max(again.strictest);
                d.matches.extend(again.matches);
            }
        }
        d
    }

    /// Decides on the `-c name=value` settings of the startup packet as SET statements
    /// (a `-c role=admin` is an identity switch like SET ROLE). Refusal is a FATAL.
    pub fn check_startup_settings(&mut self, settings: &[(String, String)]) -> Result<(), PgError> {
        let params = super::state::ServerParams::default();
        let view = View {
            params: &params,
            tx: TxStatus::Idle,
            settled: true,
            batch_end: 0,
            parse_name: None,
        };
        for (name, value) in settings {
            let named = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            let sql = format!("SET {name} = '{}'", value.replace('\'', "''"));
            let ins = if named {
                self.shared.cache.inspect(&sql, ReadAs::default())
            } else {
                Arc::new(Inspection {
                    statements: Vec::new(),
                    unparsed: Some(Unparsed {
                        reason: format!("startup option {name:?} is not a setting name"),
                    }),
                    literal_sensitive: true,
                    notes: Vec::new(),
                    memo: Default::default(),
                })
            };
            // No catalog lookups here: the client has not authenticated yet (lookups would
            // let anyone make pgwarden connect to any database name, and learn from the
            // answer). Role names are judged by the rules that name them.
            let d = self.decide(&ins, &view);
            report(&d, &ins);
            if d.action.refuses() {
                let mut e = workflow::refusal(&d, &ins, None);
                e.severity = Severity::Fatal;
                return Err(e);
            }
            self.ledger.remember(&ins, 0);
        }
        Ok(())
    }
}

impl PolicyGate {
    /// Warns once when the server's grammar is newer than the one pgwarden parses with:
    /// statements new syntax allows would be refused as unparsed (fail closed), not missed.
    fn check_server_version(&mut self, view: &View<'_>) {
        if self.version_checked {
            return;
        }
        if let Some(v) = view.params.server_version.as_deref() {
            self.version_checked = true;
            let major: u32 = v
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0);
            if major > crate::sql::GRAMMAR_MAJOR {
                tracing::warn!(server_version = v, grammar = crate::sql::GRAMMAR_MAJOR, "server is newer than pgwarden's SQL grammar: statements using new syntax will be refused as unparsed");
            }
        }
    }

    /// Decides `ins` (the text `key` names) and routes the decision through the workflow:
    /// forward, refuse, or wait for a ticket check, a hold or a break-glass record, after
    /// which the same text is decided again with the wait's answer.
    fn enforce(&mut self, ins: Arc<Inspection>, view: &View<'_>, text: &[u8]) -> Verdict {
        let prepares: usize = ins
            .statements
            .iter()
            .flat_map(|s| &s.ops)
            .filter(|op| op.tag == "PREPARE")
            .filter_map(|op| op.prepared_name.as_deref())
            .map(|n| super::ledger::prepared_size(n, &ins))
            .sum();
        if prepares > 0
            && self.named_bytes + self.ledger.prepared_bytes() + prepares > STATEMENT_BUDGET
        {
            let used = self.named_bytes + self.ledger.prepared_bytes();
            return Verdict::Refuse(budget_refusal(used, prepares));
        }
        if self.ledger.journal_bytes() > STATEMENT_BUDGET && !inert(&ins) {
            // Settings changes forwarded and not yet answered (an extended batch without
            // Sync) are kept until their batch ends: bounded too.
            return Verdict::Refuse(budget_refusal(self.ledger.journal_bytes(), text.len()));
        }
        let d = self.decide(&ins, view);
        report(&d, &ins);
        if self.resumed.is_none() {
            // Counted once per decision, not again when a wait's answer comes back.
            let class = classes(&ins).next().unwrap_or(crate::sql::Class::Unknown);
            metrics::counter!(crate::telemetry::STATEMENTS_TOTAL, "class" => class.name(), "action" => d.action.name())
                .increment(1);
        }
        if !d.action.refuses() && self.resumed.is_none() {
            // The hot path: nothing to route.
            if !d.matches.is_empty() {
                self.emit_decision(&d, &ins, None, false, false);
            }
            return self.forward(&d, ins, view, text, None, false, None);
        }
        let key = text_key(text);
        let key = key.as_str();
        let resumed = self.resumed.take().filter(|r| r.key() == key);
        if !d.action.refuses() && resumed.is_none() {
            if !d.matches.is_empty() {
                self.emit_decision(&d, &ins, None, false, false);
            }
            return self.forward(&d, ins, view, text, None, false, None);
        }
        let approval = match &resumed {
            Some(Resumed::Hold {
                end: HoldEnd::Ended(h),
                ..
            }) => Some(ApprovalInfo {
                hold: h.id,
                approvers: h.approvals.iter().map(|a| a.by.clone()).collect(),
            }),
            _ => None,
        };
        let policy = self.shared.policy.load();
        let ticket = workflow::attached_ticket(&d, &ins, self.ledger.ticket());
        let standing = workflow::Standing {
            store: self.shared.approvals.is_some(),
            approvers: self.shared.config.admin.listen.is_some(),
            ticket,
            break_glass: self
                .ledger
                .break_glass()
                .filter(|_| policy.break_glass_allows(&self.base.user)),
            on_missing_ticket: self.shared.config.holds.on_missing_ticket,
        };
        let route = workflow::route(&d, &ins, standing, resumed.as_ref());
        let ticket = ticket.map(str::to_owned);
        let approvals = self.shared.approvals.clone();
        match (route, approvals) {
            (
                Route::Forward {
                    ticket,
                    break_glass,
                    hold,
                },
                _,
            ) => {
                // Let through by a ticket, an approval or break-glass: once.
                self.once_only = ticket.is_some() || break_glass || hold.is_some();
                self.emit_decision(&d, &ins, ticket.clone(), break_glass, false);
                let approval = approval.filter(|a| Some(a.hold) == hold);
                self.forward(&d, ins, view, text, ticket, break_glass, approval)
            }
            (Route::Refuse(e), _) => {
                self.emit_decision(&d, &ins, ticket.clone(), false, true);
                self.refuse(&d, &ins, view, text, ticket, e)
            }
            (Route::CheckTicket { id }, Some(a)) => {
                let showing = workflow::showing(
                    &d,
                    &ins,
                    &policy.environment,
                    &self.base.database,
                    &self.base.user,
                    self.ledger.search_path(),
                );
                Verdict::Wait(waits::ticket(
                    a,
                    id,
                    self.session_id,
                    showing,
                    key.to_owned(),
                ))
            }
            (Route::Hold { note }, Some(a)) => {
                let new = self.new_hold(&d, &ins);
                if new.sql.len() > MAX_HELD_SQL {
                    // What nobody can read in full is not put before approvers.
                    self.emit_decision(&d, &ins, ticket.clone(), false, true);
                    let e = workflow::refusal(
                        &d,
                        &ins,
                        Some(&format!(
                            "The statement is too large to be reviewed ({} bytes, at most {MAX_HELD_SQL}): it is not held. Send it in smaller statements.",
                            new.sql.len()
                        )),
                    );
                    return self.refuse(&d, &ins, view, text, ticket, e);
                }
                let reminder = self.shared.config.holds.reminder;
                Verdict::Wait(waits::hold(a, new, note, reminder, key.to_owned()))
            }
            (Route::BreakGlass { reason }, Some(a)) => {
                let review = NewReview {
                    user: self.base.user.clone(),
                    database: self.base.database.clone(),
                    client_addr: self.base.client_addr.map(|a| a.to_string()),
                    reason,
                    sql: self.shown_sql(&ins),
                    rules: bypassed_rules(&d),
                };
                Verdict::Wait(waits::break_glass(a, review, key.to_owned()))
            }
            // Routes that need the store are only taken with one.
            (_, None) => {
                let e = workflow::refusal(&d, &ins, None);
                self.refuse(&d, &ins, view, text, ticket, e)
            }
        }
    }

    /// Forwards a statement policy let through: at once, or, when the audit log records it,
    /// once its record is synced (a Parse is recorded at each Bind of it instead).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        d: &Decision,
        ins: Arc<Inspection>,
        view: &View<'_>,
        text: &[u8],
        ticket: Option<String>,
        break_glass: bool,
        approval: Option<ApprovalInfo>,
    ) -> Verdict {
        let Some(audit) = self.shared.audit.clone() else {
            if view.parse_name.is_some() {
                // A Parse runs nothing: what it changes counts at each Bind that runs it.
                self.parse_effects = Some(ins);
            } else {
                self.remember(&ins, view.batch_end);
            }
            return Verdict::Forward;
        };
        let must = !d.matches.is_empty()
            || ticket.is_some()
            || break_glass
            || approval.is_some()
            || audit.records_class(classes(&ins))
            // A read that calls a function that could change something counts as a call.
            || (classes(&ins).all(|c| c == crate::sql::Class::Read)
                && !crate::audit::record::plain_read(&ins)
                && audit.records_class([crate::sql::Class::Function]));
        if view.parse_name.is_some() {
            // Recorded at each Bind, once the server confirmed the Parse (see `check`).
            self.parse_record = must.then(|| {
                self.statement_record(d, &ins, view, text, ticket, break_glass, approval, None)
            });
            self.parse_effects = Some(ins);
            return Verdict::Forward;
        }
        if !must {
            self.remember(&ins, view.batch_end);
            return Verdict::Forward;
        }
        let rec = self.statement_record(d, &ins, view, text, ticket, break_glass, approval, None);
        self.await_record(&audit, rec, text_key(text), Some(ins))
    }

    /// Appends `rec` and waits for it to be synced before the message is forwarded.
    fn await_record(
        &mut self,
        audit: &crate::audit::AuditLog,
        rec: StatementRecord,
        key: String,
        ins: Option<Arc<Inspection>>,
    ) -> Verdict {
        let rx = audit.append(rec.payload());
        self.awaiting = Some(Awaiting {
            key: key.clone(),
            since: Instant::now(),
            ins,
            once_only: self.once_only,
            refusal: None,
        });
        Verdict::Wait(Waiting::once(async move {
            let outcome = match tokio::time::timeout(crate::audit::ACK_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the audit writer stopped".into()),
                Err(_) => Err("the audit log did not answer in time".into()),
            };
            Resumed::Audited { key, outcome }
        }))
    }

    /// The answer for a message whose audit record was being written, if this is it.
    fn audited(&mut self, key: impl FnOnce() -> String, view: &View<'_>) -> Option<Verdict> {
        self.awaiting.as_ref()?;
        let key = key();
        if !matches!(&self.resumed, Some(Resumed::Audited { key: k, .. }) if *k == key)
            || self.awaiting.as_ref().is_none_or(|a| a.key != key)
        {
            return None;
        }
        let Some(Resumed::Audited { outcome, .. }) = self.resumed.take() else {
            unreachable!("matched above")
        };
        let a = self.awaiting.take().expect("checked above");
        metrics::histogram!(crate::telemetry::ADDED_LATENCY_SECONDS)
            .record(a.since.elapsed().as_secs_f64());
        if let Some(e) = a.refusal {
            if let Err(error) = outcome {
                tracing::error!(error = %error, "audit log failing: a refusal was not recorded");
            }
            return Some(Verdict::Refuse(e));
        }
        self.once_only = a.once_only;
        let go = |gate: &mut Self| {
            if let Some(ins) = &a.ins {
                gate.remember(ins, view.batch_end);
            }
        };
        match outcome {
            Ok(seq) => {
                go(self);
                self.outcomes.push(PendingOutcome {
                    batch_end: view.batch_end,
                    seq,
                    forwarded: Instant::now(),
                });
                Some(Verdict::Forward)
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::AUDIT_REFUSALS_TOTAL).increment(1);
                let refuse = self
                    .shared
                    .audit
                    .as_ref()
                    .is_none_or(|l| l.on_failure == AuditOnFailure::Refuse);
                if !refuse {
                    tracing::error!(error = %error, "audit log failing: statement runs unrecorded (on_failure = \"continue\")");
                    go(self);
                    return Some(Verdict::Forward);
                }
                tracing::error!(error = %error, "audit log failing: statement refused");
                Some(Verdict::Refuse(
                    PgError::error(
                        SqlState::IO_ERROR,
                        "pgwarden: the audit log cannot be written, so this statement is not run",
                    )
                    .with_detail(format!("Writing its audit record failed: {error}."))
                    .with_hint("pgwarden runs nothing it must record while its audit log fails; statements that are not recorded (plain reads) still run. Tell the operators: /readyz is unready."),
                ))
            }
        }
    }

    /// The fingerprint of `text`, whose inspection is `ins`.
    fn fingerprint(&self, ins: &Arc<Inspection>, text: &str, read_as: ReadAs) -> Option<String> {
        let mut memo = self.fingerprints.borrow_mut();
        if let Some((_, f)) = memo.iter().find(|(i, _)| Arc::ptr_eq(i, ins)) {
            return f.clone();
        }
        let f = crate::sql::fingerprint::fingerprints(text, read_as)
            .ok()
            .map(|f| f.join(","));
        if text.len() > FINGERPRINT_MEMO_TEXT {
            // Kept alive by the memo, a large inspection would cost more than recomputing.
            return f;
        }
        if memo.len() >= FINGERPRINT_MEMO {
            memo.pop_front();
        }
        memo.push_back((ins.clone(), f.clone()));
        f
    }

    #[allow(clippy::too_many_arguments)]
    fn statement_record(
        &self,
        d: &Decision,
        ins: &Arc<Inspection>,
        view: &View<'_>,
        text: &[u8],
        ticket: Option<String>,
        break_glass: bool,
        approval: Option<ApprovalInfo>,
        refusal: Option<&PgError>,
    ) -> StatementRecord {
        let redact = self.shared.audit.as_ref().is_none_or(|a| a.redact_literals);
        let read_as = ReadAs {
            standard_conforming_strings: view.params.standard_conforming_strings.unwrap_or(true),
        };
        let (shown, fingerprint) = match std::str::from_utf8(text) {
            _ if ins.statements.len() == 1 && ins.statements[0].text.is_empty() => {
                // A fast-path FunctionCall: no text, its function is the object.
                (String::new(), None)
            }
            Ok(t) => {
                let shown = if redact {
                    pg_query::normalize(t).unwrap_or_else(|_| {
                        "(statement text not recorded: it could not be parsed to redact its literals)".into()
                    })
                } else {
                    t.to_owned()
                };
                let fp = self.fingerprint(ins, t, read_as);
                (shown, fp)
            }
            Err(_) => (
                "(statement text not recorded: it is not valid UTF-8)".into(),
                None,
            ),
        };
        let (shown, mut digest, truncated) = bounded_text(shown, text);
        if shown.starts_with("(statement text not recorded") {
            use sha2::{Digest, Sha256};
            digest = Some(hex::encode(Sha256::digest(text)));
        }
        let mut class_names: Vec<String> = Vec::new();
        for c in classes(ins) {
            if !class_names.iter().any(|n| n == c.name()) {
                class_names.push(c.name().to_owned());
            }
        }
        let mut objects: Vec<String> = Vec::new();
        for o in ins
            .statements
            .iter()
            .flat_map(|s| &s.ops)
            .flat_map(|o| &o.objects)
        {
            if !objects.contains(o) {
                objects.push(o.clone());
            }
        }
        let role = self.effective_role(view).filter(|r| *r != self.base.user);
        StatementRecord {
            session: SessionInfo {
                id: self.session_id,
                user: self.base.user.clone(),
                role,
                database: self.base.database.clone(),
                application_name: Some(self.base.application.clone()).filter(|a| !a.is_empty()),
                client_addr: self.base.client_addr.map(|a| a.to_string()),
                tls: self.base.tls,
            },
            statement: StatementInfo {
                text: shown,
                text_sha256: digest,
                text_truncated: truncated,
                fingerprint,
                tags: statement_tags(ins),
                classes: class_names,
                objects,
            },
            decision: DecisionInfo {
                action: d.action,
                rules: d.matches.iter().map(|m| m.rule.clone()).collect(),
                mode: self.shared.config.mode,
                policy_version: d.policy_version.clone(),
                ticket,
                break_glass,
                refused: refusal.is_some(),
            },
            approval,
            refusal: refusal.map(|e| ErrorInfo {
                sqlstate: e.code.code().to_owned(),
                message: e.message.clone(),
            }),
        }
    }

    /// Refuses with `e`, recorded first (refusals are always recorded; the session waits for
    /// the write like a forwarded statement, so only its own messages queue behind it).
    fn refuse(
        &mut self,
        d: &Decision,
        ins: &Arc<Inspection>,
        view: &View<'_>,
        text: &[u8],
        ticket: Option<String>,
        e: PgError,
    ) -> Verdict {
        for m in d
            .matches
            .iter()
            .filter(|m| !m.monitor && m.action == d.action)
        {
            metrics::counter!(crate::telemetry::REFUSALS_TOTAL, "rule" => m.rule.clone())
                .increment(1);
        }
        let Some(audit) = self.shared.audit.clone() else {
            return Verdict::Refuse(e);
        };
        let rec = self.statement_record(d, ins, view, text, ticket, false, None, Some(&e));
        let v = self.await_record(&audit, rec, text_key(text), None);
        if let Some(a) = self.awaiting.as_mut() {
            a.refusal = Some(e);
        }
        v
    }

    fn emit_decision(
        &self,
        d: &Decision,
        ins: &Inspection,
        ticket: Option<String>,
        break_glass: bool,
        refused: bool,
    ) {
        self.shared.events.emit(Event::Decision {
            session: self.session_id,
            user: self.base.user.clone(),
            database: self.base.database.clone(),
            action: d.action,
            rules: d.matches.iter().map(|m| m.rule.clone()).collect(),
            tags: statement_tags(ins),
            policy_version: d.policy_version.clone(),
            ticket,
            break_glass,
            refused,
        });
    }

    /// The statement as approvers see it: literals redacted unless configured otherwise.
    fn shown_sql(&self, ins: &Inspection) -> String {
        let text: Vec<&str> = ins.statements.iter().map(|s| s.text.as_str()).collect();
        let text = text.join(";\n");
        if self.shared.config.holds.show_literals {
            text
        } else {
            pg_query::normalize(&text)
                .unwrap_or_else(|_| "(statement text not shown: it could not be redacted)".into())
        }
    }

    fn new_hold(&self, d: &Decision, ins: &Inspection) -> NewHold {
        let wf = d.workflow();
        NewHold {
            sql: self.shown_sql(ins),
            user: self.base.user.clone(),
            database: self.base.database.clone(),
            client_addr: self.base.client_addr.map(|a| a.to_string()),
            application_name: self.base.application.clone(),
            rules: d
                .matches
                .iter()
                .filter(|m| !m.monitor && m.action == d.action)
                .map(|m| HeldRule {
                    id: m.rule.clone(),
                    message: m.message.clone(),
                    hint: m.hint.clone(),
                })
                .collect(),
            approvals_required: wf.approvals.unwrap_or(1).max(1),
            approver_groups: wf.approver_groups,
            timeout: wf.hold_timeout.unwrap_or(self.shared.config.holds.timeout),
        }
    }
}

impl PolicyGate {
    /// What a decision made now rests on.
    fn stamp(&self, view: &View<'_>) -> Stamp {
        Stamp {
            generation: self.ledger.generation(),
            tx: view.tx,
            params: view.params.clone(),
            settled: view.settled,
            policy: self.shared.policy.load().version.clone(),
            at: Instant::now(),
        }
    }

    /// Whether a decision stamped `s` still stands for a Bind seen with `view`.
    fn still_stands(&self, s: &Stamp, view: &View<'_>) -> bool {
        s.generation == self.ledger.generation()
            && s.tx == view.tx
            && s.params == *view.params
            && s.policy == self.shared.policy.load().version
            && s.at.elapsed() < DECISION_LIFETIME
    }

    /// The refusal for a Parse of `name` whose text would take the session past its budget.
    fn over_budget(&self, name: &[u8], text: &[u8]) -> Option<PgError> {
        let replaced = self.named.get(name).map_or(0, |n| n.bytes);
        let wanted = named_size(name, text, None);
        let used = self.named_bytes + self.ledger.prepared_bytes() - replaced;
        if used + wanted <= STATEMENT_BUDGET {
            return None;
        }
        Some(budget_refusal(used, wanted))
    }

    fn remove_named(&mut self, name: &[u8]) {
        if let Some(n) = self.named.remove(name) {
            self.named_bytes -= n.bytes;
        }
    }

    /// Session facts of a statement forwarded (see [`Ledger::remember`]); SQL that drops
    /// prepared statements (DEALLOCATE, DISCARD ALL) or defines one (PREPARE takes a name
    /// only a statement that does not exist had) drops what pgwarden knew of them.
    fn remember(&mut self, ins: &Arc<Inspection>, batch_end: u64) {
        self.ledger.remember(ins, batch_end);
        for s in &ins.statements {
            for op in &s.ops {
                match (op.tag.as_str(), &op.prepared_name) {
                    ("PREPARE" | "DEALLOCATE", Some(n)) => self.remove_named(n.as_bytes()),
                    ("DEALLOCATE", None) => self.forget_named(),
                    ("DISCARD", _)
                        if s.text.split_whitespace().nth(1).is_some_and(|w| {
                            w.trim_end_matches(';').eq_ignore_ascii_case("all")
                        }) =>
                    {
                        self.forget_named()
                    }
                    _ => {}
                }
            }
        }
    }

    fn forget_named(&mut self) {
        for (name, n) in self.named.drain() {
            let _ = name;
            self.named_bytes -= n.bytes;
        }
    }

    /// A Bind that would add to what waits for its batch's end, past the budget.
    fn backlog_full(&self, effects: Option<&Arc<Inspection>>) -> Option<PgError> {
        let backlog = self.ledger.journal_bytes();
        (effects.is_some() && backlog > STATEMENT_BUDGET).then(|| budget_refusal(backlog, 0))
    }

    fn drop_pending(&mut self, gone: Vec<PendingParse>) {
        for p in gone {
            self.named_bytes -= p.bytes;
        }
    }

    /// Decides the text of prepared statement `name` again, for a Bind of it: what its
    /// decision at Parse rested on has changed. The text is read as the server read it at
    /// Parse (its standard_conforming_strings and client_encoding then).
    fn decide_again(
        &mut self,
        name: &[u8],
        text: Arc<[u8]>,
        parsed: &Stamp,
        view: &View<'_>,
    ) -> Verdict {
        let mut params = view.params.clone();
        params.standard_conforming_strings = parsed.params.standard_conforming_strings;
        params.client_encoding = parsed.params.client_encoding.clone();
        let again = View {
            params: &params,
            tx: view.tx,
            settled: view.settled && parsed.settled,
            batch_end: view.batch_end,
            parse_name: None,
        };
        let v = self.check(&text, &again);
        if matches!(v, Verdict::Forward) && !self.once_only {
            // Allowed as things are now: the next Bind compares with now. (Let through by
            // a ticket, an approval or break-glass, it is decided again at the next Bind.)
            let stamp = self.stamp(view);
            if let Some(p) = self
                .pending_parses
                .iter_mut()
                .rev()
                .find(|p| p.name == name && Arc::ptr_eq(&p.text, &text))
            {
                p.stamp = stamp;
                p.once_only = false;
            } else if let Some(n) = self.named.get_mut(name) {
                n.stamp = stamp;
                n.once = None;
            }
        }
        v
    }

    /// The refusal policy gives `text` (a prepared statement parsed under `parsed`) now, if
    /// any, without routing it (no ticket check, no hold).
    fn refusal_now(&self, text: &[u8], parsed: &Stamp, view: &View<'_>) -> Option<PgError> {
        let Ok(t) = std::str::from_utf8(text) else {
            return Some(workflow::refusal(
                &self.decide(&unreadable("statement text is not valid UTF-8"), view),
                &unreadable("statement text is not valid UTF-8"),
                None,
            ));
        };
        let read_as = ReadAs {
            standard_conforming_strings: parsed.params.standard_conforming_strings.unwrap_or(true),
        };
        let ins = self.shared.cache.inspect(t, read_as);
        let d = self.decide(&ins, view);
        d.action
            .refuses()
            .then(|| workflow::refusal(&d, &ins, None))
    }
}

impl Gate for PolicyGate {
    fn on_ready(&mut self, failed: bool, tx: TxStatus, ready: u64, answer: &BatchAnswer) {
        self.ledger.on_ready(failed, tx, ready);
        // Parses of ended batches the server never confirmed took no effect.
        if self
            .pending_parses
            .front()
            .is_some_and(|p| p.batch_end <= ready)
        {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_parses)
                .into_iter()
                .partition(|p| p.batch_end <= ready);
            self.pending_parses = kept.into();
            self.drop_pending(gone);
        }
        if self.outcomes.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.outcomes)
            .into_iter()
            .partition(|o| o.batch_end <= ready);
        self.outcomes = waiting;
        let (Some(audit), Some(first)) = (&self.shared.audit, done.first()) else {
            return;
        };
        let rec = OutcomeRecord {
            session: OutcomeSession {
                id: self.session_id,
            },
            decisions: done.iter().map(|o| o.seq).collect(),
            commands: answer
                .commands
                .iter()
                .map(|c| CommandDone::parse(c))
                .collect(),
            error: answer.error.as_ref().map(|(code, message)| ErrorInfo {
                sqlstate: code.clone(),
                message: message.clone(),
            }),
            duration_us: first.forwarded.elapsed().as_micros() as u64,
        };
        audit.append_nowait(rec.payload());
    }

    fn wants_answers(&self) -> bool {
        !self.outcomes.is_empty() || self.awaiting.is_some()
    }

    fn wants_parse_answers(&self) -> bool {
        !self.pending_parses.is_empty()
    }

    fn check_function_call(&mut self, oid: u32, view: &View<'_>) -> Verdict {
        if let Some(v) = self.audited(|| text_key(&oid.to_be_bytes()), view) {
            return v;
        }
        // The fast-path protocol names functions by OID and its arguments are binary: only
        // the large-object functions libpq's lo_* API uses (fixed OIDs of built-ins) are
        // identified; any other OID is text pgwarden cannot read, refused as unparsed.
        let Some(name) = large_object_function(oid) else {
            let ins = Inspection {
                statements: Vec::new(),
                unparsed: Some(Unparsed {
                    reason: format!("FunctionCall of OID {oid}: only the large-object functions are allowed over the fast-path protocol; call functions with SELECT"),
                }),
                literal_sensitive: true,
                notes: Vec::new(),
                memo: Default::default(),
            };
            return self.enforce(Arc::new(ins), view, &oid.to_be_bytes());
        };
        let mut op = crate::sql::Facts::new(
            "FUNCTION CALL",
            crate::sql::Class::Function,
            crate::sql::Nesting::TopLevel,
        );
        op.objects.push(format!("pg_catalog.{name}"));
        let ins = Inspection {
            statements: vec![crate::sql::Statement {
                location: 0,
                text: String::new(),
                ops: vec![op],
                functions: vec![format!("pg_catalog.{name}")],
                tickets: Vec::new(),
            }],
            unparsed: None,
            literal_sensitive: false,
            notes: Vec::new(),
            memo: Default::default(),
        };
        self.enforce(Arc::new(ins), view, &oid.to_be_bytes())
    }

    fn check(&mut self, text: &[u8], view: &View<'_>) -> Verdict {
        self.once_only = false;
        if let Some(name) = view.parse_name {
            if let Some(e) = self.over_budget(name, text) {
                return Verdict::Refuse(e);
            }
        }
        let v = match self.audited(|| text_key(text), view) {
            Some(v) => v,
            None => {
                let started = Instant::now();
                let v = self.check_text(text, view);
                if !matches!(v, Verdict::Wait(_)) {
                    metrics::histogram!(crate::telemetry::ADDED_LATENCY_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                }
                v
            }
        };
        if !matches!(v, Verdict::Wait(_)) && self.shared.catalog.is_some() {
            // Decided: answers fetched for it are not reused for a later text.
            self.supplied.clear();
        }
        if let Some(name) = view.parse_name {
            // A prepared statement a ticket, an approval or break-glass let through may run
            // once: each further run asks again (Parse it again). Another Parse of the name
            // replaces it, and its record, once the server confirms it (`on_parse_answer`);
            // a refused Parse leaves the name as it was (the server keeps its statement).
            let record = self.parse_record.take();
            let late = self.parse_effects.as_deref().is_none_or(resolves_late);
            let effects = self.parse_effects.take().filter(|i| !inert(i));
            if matches!(v, Verdict::Forward) {
                // Every forwarded Parse is queued, to stay in step with the server's
                // ParseCompletes (one a Parse before it answers must not apply this one).
                let text: Arc<[u8]> = Arc::from(text);
                let bytes = named_size(name, &text, record.as_ref())
                    + effects.as_ref().map_or(0, |_| text.len());
                self.named_bytes += bytes;
                let stamp = self.stamp(view);
                self.pending_parses.push_back(PendingParse {
                    batch_end: view.batch_end,
                    name: name.to_vec(),
                    bytes,
                    effects,
                    text,
                    stamp,
                    record,
                    once_only: self.once_only,
                    once_used: false,
                    late,
                });
            }
        }
        v
    }

    fn on_parse_answer(&mut self, answer: ParseAnswer) {
        match answer {
            ParseAnswer::Complete => {
                let Some(p) = self.pending_parses.pop_front() else {
                    return;
                };
                // Its bytes move from the queue to the name.
                self.remove_named(&p.name);
                self.named.insert(
                    p.name,
                    Named {
                        bytes: p.bytes,
                        effects: p.effects,
                        text: p.text,
                        stamp: p.stamp,
                        record: p.record,
                        once: p.once_only.then_some(!p.once_used),
                        late: p.late,
                    },
                );
            }
            ParseAnswer::Failed { batch_end } => {
                let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_parses)
                    .into_iter()
                    .partition(|p| p.batch_end == batch_end);
                self.pending_parses = kept.into();
                self.drop_pending(gone);
            }
        }
    }

    fn check_bind(&mut self, statement: &[u8], view: &View<'_>) -> Verdict {
        let key = || format!("bind\0{}", hex::encode(statement));
        if let Some(v) = self.audited(key, view) {
            return v;
        }
        let pending = self
            .pending_parses
            .iter()
            .rposition(|p| p.name == statement);
        // What runs is the newest Parse of the name (or the confirmed one): either may be
        // a utility statement, whose names resolve at Execute.
        self.bind_late = pending.is_some_and(|i| self.pending_parses[i].late)
            || self.named.get(statement).is_some_and(|n| n.late);

        if pending.is_none() && !self.named.contains_key(statement) {
            // A statement SQL PREPARE made, run by a protocol Bind: decided (and recorded)
            // again as the EXECUTE it amounts to.
            if let Some(name) = std::str::from_utf8(statement)
                .ok()
                .filter(|n| !n.is_empty() && self.ledger.prepared(n).is_some())
            {
                let exec = format!("EXECUTE \"{}\"", name.replace('"', "\"\""));
                return self.check(exec.as_bytes(), view);
            }
            // Nothing pgwarden let through defined it: the server has no such statement
            // either (refused, over budget, closed, deallocated), or pgwarden lost track of
            // it; either way it is not run undecided.
            return Verdict::Refuse(unknown_statement(statement));
        }
        // Decided again when what the decision rested on has changed: the newest Parse of
        // the name the server has not confirmed (in the Bind's own batch it decides; from an
        // earlier batch it may still fail, and then the confirmed one runs), else the
        // confirmed one.
        let mut stale: Vec<(Arc<[u8]>, Stamp)> = Vec::new();
        let confirmed_may_run = match pending {
            Some(i) => self.pending_parses[i].batch_end != view.batch_end,
            None => true,
        };
        if let Some(i) = pending {
            let p = &self.pending_parses[i];
            if !self.still_stands(&p.stamp, view) {
                stale.push((p.text.clone(), p.stamp.clone()));
            }
        }
        if confirmed_may_run {
            if let Some(n) = self.named.get(statement) {
                if !self.still_stands(&n.stamp, view)
                    && !stale.iter().any(|(t, _)| Arc::ptr_eq(t, &n.text))
                {
                    stale.push((n.text.clone(), n.stamp.clone()));
                }
            }
        }
        if let Some((text, parsed)) = stale.pop() {
            if let Some((other, other_parsed)) = stale.pop() {
                // Two statements may run (a Parse of the name from an earlier batch is not
                // answered yet): the one that may not is decided without routing.
                if let Some(e) = self.refusal_now(&other, &other_parsed, view) {
                    return Verdict::Refuse(e);
                }
            }
            return self.decide_again(statement, text, &parsed, view);
        }
        let effects = match pending {
            Some(i) => self.pending_parses[i].effects.clone(),
            None => self.named.get(statement).and_then(|n| n.effects.clone()),
        };
        let (once_ok, record) = match pending {
            Some(i) => {
                let p = &mut self.pending_parses[i];
                let mut ok = true;
                if p.once_only {
                    ok = !p.once_used;
                    p.once_used = true;
                }
                let mut record = p.record.clone();
                if confirmed_may_run {
                    if let Some(n) = self.named.get_mut(statement) {
                        if let Some(unused) = n.once.as_mut() {
                            ok &= *unused;
                            *unused = false;
                        }
                        if record.is_none() {
                            record = n.record.clone();
                        }
                    }
                }
                (ok, record)
            }
            None => match self.named.get_mut(statement) {
                Some(n) => {
                    let ok = match n.once.as_mut() {
                        None => true,
                        Some(unused) => std::mem::replace(unused, false),
                    };
                    (ok, n.record.clone())
                }
                None => (true, None),
            },
        };
        if let Some(e) = self.backlog_full(effects.as_ref()) {
            return Verdict::Refuse(e);
        }
        if !once_ok {
            let name = statement_name(statement);
            tracing::warn!(statement = %name, "Bind refused: let through for one run");
            return Verdict::Refuse(
                PgError::error(
                    SqlState::INSUFFICIENT_PRIVILEGE,
                    format!("pgwarden: {name} was let through for one run"),
                )
                .with_detail("It needed a change ticket, an approval or break-glass, which covers one run of it.")
                .with_hint("Prepare it again (Parse) to have it decided again."),
            );
        }
        match (self.shared.audit.clone(), record) {
            (Some(audit), Some(rec)) => self.await_record(&audit, rec, key(), effects),
            _ => {
                if let Some(e) = &effects {
                    self.remember(e, view.batch_end);
                }
                Verdict::Forward
            }
        }
    }

    fn on_close(&mut self, statement: &[u8]) {
        self.remove_named(statement);
    }

    fn bound_stamp(&self) -> Option<u64> {
        self.bind_late.then(|| self.ledger.generation())
    }

    fn facts_stamp(&self) -> u64 {
        self.ledger.generation()
    }

    fn resume(&mut self, answer: Resumed) {
        match answer {
            Resumed::Answers { key, answers } => {
                self.supplied.entry(key).or_default().extend(answers)
            }
            other => self.resumed = Some(other),
        }
    }
}

impl PolicyGate {
    fn check_text(&mut self, text: &[u8], view: &View<'_>) -> Verdict {
        self.check_server_version(view);
        let Ok(text) = std::str::from_utf8(text) else {
            return self.enforce(
                Arc::new(unreadable("statement text is not valid UTF-8")),
                view,
                text,
            );
        };
        let scs = view.params.standard_conforming_strings.unwrap_or(true);
        if view.settled {
            let ins = self.shared.cache.inspect(
                text,
                ReadAs {
                    standard_conforming_strings: scs,
                },
            );
            return match self.with_catalog(
                ins,
                text,
                ReadAs {
                    standard_conforming_strings: scs,
                },
            ) {
                Ok(ins) => self.enforce(ins, view, text.as_bytes()),
                Err(fetch) => Verdict::Wait(fetch),
            };
        }
        // Something forwarded before may change how the server reads this text by the time
        // it runs (standard_conforming_strings through a function, say): read it both ways
        // and let the stricter decision stand. Non-ASCII text could also be read under a
        // different client_encoding, when something unanswered may change it: refused then.
        if !text.is_ascii() && !self.ledger.encoding_known() {
            return self.enforce(
                Arc::new(unreadable("non-ASCII statement text sent before an earlier statement that may change client_encoding (SET, RESET ALL, DISCARD ALL, a function call) was answered: pgwarden cannot be sure which client_encoding the server will read it with; send it after ReadyForQuery")),
                view,
                text.as_bytes(),
            );
        }
        let on = self.shared.cache.inspect(
            text,
            ReadAs {
                standard_conforming_strings: true,
            },
        );
        let off = self.shared.cache.inspect(
            text,
            ReadAs {
                standard_conforming_strings: false,
            },
        );
        let read = |scs| ReadAs {
            standard_conforming_strings: scs,
        };
        let (on, off) = match (
            self.with_catalog(on, text, read(true)),
            self.with_catalog(off, text, read(false)),
        ) {
            (Ok(on), Ok(off)) => (on, off),
            (Err(fetch), _) | (_, Err(fetch)) => return Verdict::Wait(fetch),
        };
        let (first, second) = if scs { (on, off) } else { (off, on) };
        let d2 = self.decide(&second, view);
        if d2.action.refuses() && !self.decide(&first, view).action.refuses() {
            report(&d2, &second);
            let e = workflow::refusal(&d2, &second, None);
            self.emit_decision(&d2, &second, None, false, true);
            return self.refuse(&d2, &second, view, text.as_bytes(), None, e);
        }
        self.enforce(first, view, text.as_bytes())
    }
}

/// Whether a prepared statement names objects PostgreSQL resolves only when its portal
/// runs: anything but SELECT, INSERT, UPDATE, DELETE and MERGE (planned at Bind), such as
/// TRUNCATE, DDL, EXPLAIN or CALL.
fn resolves_late(ins: &Inspection) -> bool {
    ins.unparsed.is_some()
        || ins.statements.iter().any(|s| {
            s.ops
                .iter()
                .filter(|o| o.nesting == crate::sql::Nesting::TopLevel)
                .any(|o| {
                    !matches!(
                        o.tag.as_str(),
                        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE"
                    )
                })
        })
}

/// An inspection that could not be made: refused by the unparsed-statement rule.
fn unreadable(reason: &str) -> Inspection {
    Inspection {
        statements: Vec::new(),
        unparsed: Some(Unparsed {
            reason: reason.to_owned(),
        }),
        literal_sensitive: true,
        notes: Vec::new(),
        memo: Default::default(),
    }
}

/// The built-in large-object functions (fixed OIDs in pg_proc) that libpq's lo_* API calls
/// through the fast-path protocol.
pub fn large_object_function(oid: u32) -> Option<&'static str> {
    Some(match oid {
        715 => "lo_create",
        952 => "lo_open",
        953 => "lo_close",
        954 => "loread",
        955 => "lowrite",
        956 => "lo_lseek",
        957 => "lo_creat",
        958 => "lo_tell",
        964 => "lo_unlink",
        1004 => "lo_truncate",
        3170 => "lo_lseek64",
        3171 => "lo_tell64",
        3172 => "lo_truncate64",
        _ => return None,
    })
}

/// Logs what matched: rule ids and statement tags, never SQL text.
fn report(d: &Decision, ins: &Inspection) {
    if d.matches.is_empty() {
        return;
    }
    let rules: Vec<&str> = d.matches.iter().map(|m| m.rule.as_str()).collect();
    let tags: Vec<&str> = ins
        .statements
        .iter()
        .filter_map(|s| s.ops.first().map(|o| o.tag.as_str()))
        .collect();
    if d.action.refuses() {
        tracing::warn!(action = d.action.name(), rules = ?rules, statements = ?tags, policy = %d.policy_version, "statement refused");
    } else {
        tracing::warn!(action = d.action.name(), strictest = d.strictest.name(), rules = ?rules, statements = ?tags, policy = %d.policy_version, "policy matched");
    }
}

/// Names the message a wait's answer is for (SHA-256 of its text).
fn text_key(text: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text))
}

/// The class of every operation, then Unknown for a text that could not be read (or has no
/// operation). Allocates nothing: the hot path counts each statement by its first class.
fn classes(ins: &Inspection) -> impl Iterator<Item = crate::sql::Class> + '_ {
    let ops = ins.statements.iter().flat_map(|s| &s.ops).map(|o| o.class);
    let unread = ins.unparsed.is_some() || ins.statements.iter().all(|s| s.ops.is_empty());
    ops.chain(unread.then_some(crate::sql::Class::Unknown))
}

/// The tag of each statement.
fn statement_tags(ins: &Inspection) -> Vec<String> {
    ins.statements
        .iter()
        .filter_map(|s| s.ops.first().map(|o| o.tag.clone()))
        .collect()
}

/// The rules whose action decided.
/// The rules break-glass let a statement past: every enforced hold and require_ticket match.
fn bypassed_rules(d: &Decision) -> Vec<String> {
    let mut rules: Vec<String> = Vec::new();
    for m in d
        .matches
        .iter()
        .filter(|m| !m.monitor && matches!(m.action, Action::Hold | Action::RequireTicket))
    {
        if !rules.contains(&m.rule) {
            rules.push(m.rule.clone());
        }
    }
    rules
}
