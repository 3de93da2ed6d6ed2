//! What an audit record says, typed: the statement record written (and synced) before a
//! statement is forwarded or when it is refused, the outcome record written when its batch
//! has been answered, and lifecycle events as they are emitted. The writer adds `log_id`,
//! `seq`, `ts`, `prev_hash` and `hash`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::approval::events::Event;
use crate::policy::{Action, Mode};

/// The longest statement text kept in a record; a longer one is cut (its SHA-256 is kept).
pub const MAX_RECORDED_TEXT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub id: u64,
    pub user: String,
    /// The effective role (SET ROLE), when it differs from the user.
    pub role: Option<String>,
    pub database: String,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementInfo {
    /// Literals replaced by `$n` unless `[audit] redact_literals = false`.
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
    pub fingerprint: Option<String>,
    pub tags: Vec<String>,
    pub classes: Vec<String>,
    pub objects: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionInfo {
    pub action: Action,
    pub rules: Vec<String>,
    pub mode: Mode,
    pub policy_version: String,
    pub ticket: Option<String>,
    pub break_glass: bool,
    pub refused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalInfo {
    pub hold: u64,
    pub approvers: Vec<String>,
}

/// A PostgreSQL error: the refusal pgwarden sent, or the server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    pub sqlstate: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementRecord {
    pub session: SessionInfo,
    pub statement: StatementInfo,
    pub decision: DecisionInfo,
    pub approval: Option<ApprovalInfo>,
    pub refusal: Option<ErrorInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeSession {
    pub id: u64,
}

/// One command's completion: `INSERT 0 5` is tag `INSERT`, rows 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandDone {
    pub tag: String,
    pub rows: Option<u64>,
}

impl CommandDone {
    /// Reads a CommandComplete tag as the server wrote it.
    pub fn parse(text: &str) -> CommandDone {
        let words: Vec<&str> = text.split_whitespace().collect();
        let counted = matches!(
            words.first().copied(),
            Some("INSERT" | "UPDATE" | "DELETE" | "SELECT" | "MERGE" | "MOVE" | "FETCH" | "COPY")
        );
        match (counted, words.last().and_then(|w| w.parse::<u64>().ok())) {
            (true, Some(rows)) => CommandDone {
                tag: words[0].to_owned(),
                rows: Some(rows),
            },
            _ => CommandDone {
                tag: text.to_owned(),
                rows: None,
            },
        }
    }
}

/// What the server answered to the batch the recorded statements were in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeRecord {
    pub session: OutcomeSession,
    /// The statement records (by seq) this outcome answers.
    pub decisions: Vec<u64>,
    pub commands: Vec<CommandDone>,
    pub error: Option<ErrorInfo>,
    pub duration_us: u64,
}

fn typed(kind: &str, v: impl Serialize) -> Map<String, Value> {
    let mut m = match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert("type".into(), Value::String(kind.into()));
    m
}

impl StatementRecord {
    pub fn payload(&self) -> Map<String, Value> {
        typed("statement", self)
    }
}

impl OutcomeRecord {
    pub fn payload(&self) -> Map<String, Value> {
        typed("outcome", self)
    }
}

/// The record of a lifecycle event; `None` for events the log has in another form (decisions
/// are statement records; checkpoints have their own file).
pub fn event_payload(e: &Event) -> Option<Map<String, Value>> {
    if matches!(e, Event::Decision { .. } | Event::AuditCheckpoint { .. }) {
        return None;
    }
    match serde_json::to_value(e) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// `text` as recorded: cut so that it takes at most [`MAX_RECORDED_TEXT`] bytes once written
/// as JSON (control characters take six), on a character boundary; when cut, the SHA-256 of
/// `sent` (the text as the client sent it) goes with it.
pub fn bounded_text(text: String, sent: &[u8]) -> (String, Option<String>, bool) {
    let mut written = 0usize;
    let mut end = None;
    for (i, c) in text.char_indices() {
        written += match c {
            '"' | '\\' | '\n' | '\r' | '\t' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if written > MAX_RECORDED_TEXT {
            end = Some(i);
            break;
        }
    }
    let Some(end) = end else {
        return (text, None, false);
    };
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(sent));
    (text[..end].to_owned(), Some(digest), true)
}

/// Built-in functions that only compute (no writes, no side effects): a read calling only these
/// (or none) is a plain read. Any other function (a user function, `nextval`, `set_config`,
/// `pg_advisory_lock`, `lo_*`, `dblink`...) could change something, so a read that calls one
/// is recorded like a write.
const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "current_database",
    "current_date",
    "current_schema",
    "current_setting",
    "current_user",
    "date_part",
    "date_trunc",
    "decode",
    "encode",
    "every",
    "exp",
    "extract",
    "floor",
    "format",
    "generate_series",
    "greatest",
    "json_agg",
    "json_build_object",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_build_object",
    "jsonb_object_agg",
    "left",
    "least",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "octet_length",
    "pg_backend_pid",
    "pg_typeof",
    "position",
    "power",
    "random",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "rank",
    "dense_rank",
    "rpad",
    "rtrim",
    "session_user",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "version",
];

/// Whether `ins` is a plain read: every operation reads and every function it calls is a
/// known pure built-in.
pub fn plain_read(ins: &crate::sql::Inspection) -> bool {
    ins.unparsed.is_none()
        && !ins.statements.is_empty()
        && ins.statements.iter().all(|s| {
            s.ops.iter().all(|o| o.class == crate::sql::Class::Read)
                && s.functions.iter().all(|f| {
                    let name = f.strip_prefix("pg_catalog.").unwrap_or(f);
                    PURE_FUNCTIONS.contains(&name)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_are_read_with_their_row_counts() {
        assert_eq!(
            CommandDone::parse("INSERT 0 5"),
            CommandDone {
                tag: "INSERT".into(),
                rows: Some(5)
            }
        );
        assert_eq!(CommandDone::parse("UPDATE 3").rows, Some(3));
        assert_eq!(
            CommandDone::parse("CREATE TABLE"),
            CommandDone {
                tag: "CREATE TABLE".into(),
                rows: None
            }
        );
    }

    #[test]
    fn reads_that_call_functions_that_may_write_are_not_plain() {
        let plain = |sql: &str| plain_read(&crate::sql::inspect(sql, Default::default()));
        assert!(plain("SELECT 1"));
        assert!(plain(
            "SELECT count(*), max(id) FROM t WHERE lower(name) = 'x'"
        ));
        assert!(!plain("SELECT nextval('s')"));
        assert!(!plain("SELECT my_func()"));
        assert!(!plain("SELECT pg_catalog.set_config('a.b', 'c', false)"));
        assert!(!plain("SELECT * FROM t; SELECT app.audit_me()"));
        assert!(!plain("UPDATE t SET a = 1"));
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary_with_their_digest() {
        let text = "é".repeat(MAX_RECORDED_TEXT);
        let (cut, digest, truncated) = bounded_text(text.clone(), text.as_bytes());
        assert!(truncated && digest.is_some());
        assert!(cut.len() <= MAX_RECORDED_TEXT);
        assert_eq!(bounded_text("x".into(), b"x"), ("x".into(), None, false));
        // Control characters count as JSON writes them.
        let ctl = "\u{1}".repeat(MAX_RECORDED_TEXT);
        let (cut, _, truncated) = bounded_text(ctl.clone(), ctl.as_bytes());
        assert!(truncated);
        assert!(serde_json::to_string(&cut).unwrap().len() <= MAX_RECORDED_TEXT + 2);
    }
}
