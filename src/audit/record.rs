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

/// `text` as recorded: cut to [`MAX_RECORDED_TEXT`] on a character boundary, with the SHA-256
/// of the whole when cut.
pub fn bounded_text(text: String) -> (String, Option<String>, bool) {
    if text.len() <= MAX_RECORDED_TEXT {
        return (text, None, false);
    }
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    let mut end = MAX_RECORDED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), Some(digest), true)
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
    fn long_texts_are_cut_on_a_character_boundary_with_their_digest() {
        let text = "é".repeat(MAX_RECORDED_TEXT);
        let (cut, digest, truncated) = bounded_text(text);
        assert!(truncated && digest.is_some());
        assert!(cut.len() <= MAX_RECORDED_TEXT);
        assert_eq!(bounded_text("x".into()), ("x".into(), None, false));
    }
}
