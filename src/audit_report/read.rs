//! Reading audit logs offline (JSON Lines, one record a line) into typed records for
//! `pgwarden audit report` and `pgwarden policy replay`.
//!
//! Tolerant by design, since logs outlive the code that wrote them: unknown fields are
//! ignored, unknown record types are kept as [`Body::Other`] (counted, not interpreted), and
//! a line that is not a JSON object with `seq`, `ts` and `type` (a torn last line after a
//! crash, say) or a known type whose fields do not fit is skipped with a [`Skipped`] note for
//! stderr. Hashes are not checked here: that is `pgwarden audit verify`.

use std::io::BufRead;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One record of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub log_id: String,
    pub seq: u64,
    pub ts: Timestamp,
    /// The record's `type` as written.
    pub kind: String,
    pub body: Body,
}

/// What a record says, by type.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Statement(Box<StatementRecord>),
    Outcome(OutcomeRecord),
    /// `hold_opened`, `hold_approved`, `hold_denied`, `hold_expired`, `hold_withdrawn`.
    Hold(HoldInfo),
    /// `ticket_*` records whose ticket has the store's full shape (replay checks its cover).
    Ticket(Box<crate::approval::model::Ticket>),
    BreakGlass(ReviewInfo),
    /// Any other type (lifecycle records the report does not interpret, or types newer
    /// than this code).
    Other,
}

/// The session a statement ran in.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionInfo {
    pub id: u64,
    pub user: String,
    pub role: Option<String>,
    pub database: String,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub tls: bool,
}

/// The statement as recorded (literals redacted unless configured otherwise).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatementInfo {
    pub text: String,
    pub fingerprint: String,
    pub tags: Vec<String>,
    pub classes: Vec<String>,
    pub objects: Vec<String>,
}

/// The recorded decision.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisionInfo {
    pub action: String,
    pub rules: Vec<String>,
    pub mode: String,
    pub policy_version: String,
    pub ticket: Option<String>,
    pub break_glass: bool,
    pub refused: bool,
}

/// The hold whose approval let a statement run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApprovalInfo {
    pub hold: u64,
    pub approvers: Vec<String>,
}

/// A PostgreSQL error: a refusal, or the server's error in an outcome.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorInfo {
    pub sqlstate: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct StatementRecord {
    pub session: SessionInfo,
    pub statement: StatementInfo,
    pub decision: DecisionInfo,
    pub approval: Option<ApprovalInfo>,
    pub refusal: Option<ErrorInfo>,
}

impl StatementRecord {
    /// A change: not refused, and of some class other than `read` (a statement with no
    /// class recorded counts as a change: unknown is never assumed harmless).
    pub fn is_change(&self) -> bool {
        !self.decision.refused
            && (self.statement.classes.is_empty()
                || self.statement.classes.iter().any(|c| c != "read"))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct OutcomeSession {
    pub id: u64,
}

/// One command the server completed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandInfo {
    pub tag: String,
    pub rows: Option<u64>,
}

/// How a batch of statements ended at the server.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct OutcomeRecord {
    pub session: OutcomeSession,
    /// The `seq` of the statement records this outcome belongs to.
    pub decisions: Vec<u64>,
    pub commands: Vec<CommandInfo>,
    pub error: Option<ErrorInfo>,
    pub duration_us: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HeldRuleInfo {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApproverInfo {
    /// The approver's token name.
    pub by: String,
}

/// A hold as its lifecycle records carry it (the fields of `approval::model::Hold` the
/// report reads).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct HoldInfo {
    pub id: u64,
    pub status: String,
    pub sql: String,
    pub user: String,
    pub database: String,
    pub rules: Vec<HeldRuleInfo>,
    pub approvals_required: u32,
    pub approvals: Vec<ApproverInfo>,
    pub opened_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub closed_by: Option<String>,
    pub reason: Option<String>,
}

/// A break-glass use (the fields of `approval::model::Review` the report reads).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct ReviewInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub reason: String,
    pub sql: String,
    pub rules: Vec<String>,
    pub at: Option<Timestamp>,
    pub reviewed_by: Option<String>,
}

/// A line that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: String,
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: skipped: {}", self.file, self.line, self.why)
    }
}

/// Everything read from the logs, in file and line order.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub records: Vec<Record>,
    pub skipped: Vec<Skipped>,
}

/// Parses one line (`None` for a blank one).
pub fn parse_line(line: &str) -> Option<Result<Record, String>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    Some(parse_record(line))
}

fn parse_record(line: &str) -> Result<Record, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let kind = map
        .get("type")
        .and_then(|v| v.as_str())
        .ok_or("no string `type`")?
        .to_owned();
    let seq = map
        .get("seq")
        .and_then(|v| v.as_u64())
        .ok_or("no integer `seq`")?;
    let ts: Timestamp = map
        .get("ts")
        .and_then(|v| v.as_str())
        .ok_or("no string `ts`")?
        .parse()
        .map_err(|e| format!("`ts` is not an RFC 3339 time ({e})"))?;
    let log_id = map
        .get("log_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let value = serde_json::Value::Object(map);
    let fit = |e: serde_json::Error| format!("a {kind} record whose fields do not fit ({e})");
    let field = |name: &str| value.get(name).cloned().unwrap_or_default();
    let body = match kind.as_str() {
        "statement" => Body::Statement(Box::new(
            serde_json::from_value(value.clone()).map_err(fit)?,
        )),
        "outcome" => Body::Outcome(serde_json::from_value(value.clone()).map_err(fit)?),
        "hold_opened" | "hold_approved" | "hold_denied" | "hold_expired" | "hold_withdrawn" => {
            Body::Hold(serde_json::from_value(field("hold")).map_err(fit)?)
        }
        // The report does not read tickets; replay uses them when they have the full shape.
        k if k.starts_with("ticket_") => match serde_json::from_value(field("ticket")) {
            Ok(t) => Body::Ticket(Box::new(t)),
            Err(_) => Body::Other,
        },
        "break_glass_used" => {
            Body::BreakGlass(serde_json::from_value(field("review")).map_err(fit)?)
        }
        _ => Body::Other,
    };
    Ok(Record {
        log_id,
        seq,
        ts,
        kind,
        body,
    })
}

/// Reads `reader` (named `file` in notes) into `log`.
pub fn read_into(log: &mut Log, file: &str, reader: impl BufRead) -> std::io::Result<()> {
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line?;
        // A torn write can cut a multi-byte character: that line is skipped, not the file.
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t,
            Err(_) => {
                log.skipped.push(Skipped {
                    file: file.to_owned(),
                    line: i + 1,
                    why: "not UTF-8".into(),
                });
                continue;
            }
        };
        match parse_line(text) {
            None => {}
            Some(Ok(r)) => log.records.push(r),
            Some(Err(why)) => log.skipped.push(Skipped {
                file: file.to_owned(),
                line: i + 1,
                why,
            }),
        }
    }
    Ok(())
}

/// Reads every file, in order.
pub fn read_files(files: &[impl AsRef<Path>]) -> Result<Log, String> {
    let mut log = Log::default();
    for f in files {
        let f = f.as_ref();
        let name = f.display().to_string();
        let file = std::fs::File::open(f).map_err(|e| format!("cannot read {name}: {e}"))?;
        read_into(&mut log, &name, std::io::BufReader::new(file))
            .map_err(|e| format!("cannot read {name}: {e}"))?;
    }
    Ok(log)
}

/// A `--since` / `--until` bound: an RFC 3339 time, or a date (`YYYY-MM-DD`, 00:00 UTC).
pub fn parse_bound(s: &str) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    match s.parse::<jiff::civil::Date>() {
        Ok(d) if s.len() == 10 => d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|e| format!("{s:?}: {e}")),
        _ => Err(format!(
            "{s:?} is neither an RFC 3339 time (2024-05-01T10:00:00Z) nor a date (2024-05-01)"
        )),
    }
}

/// The half-open time range `[since, until)`; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl Range {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}
