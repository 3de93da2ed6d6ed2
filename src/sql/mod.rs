//! Statement inspection, pure: SQL text → [`Inspection`] (statements, each with the facts
//! of itself and everything nested in it). PostgreSQL's own grammar (pg_query) decides what
//! a statement is; text it rejects, text too large, or a parser failure gives an
//! `unparsed` inspection, which policy refuses (fail closed).
//!
//! - [`facts`]: the typed facts.
//! - `walk`: parse tree → facts.
//! - `predicate`: trivially-true WHERE clauses.
//! - [`plpgsql`]: DO blocks and function bodies.
//! - [`cache`]: inspections cached by exact text, and by literal-free key when no fact
//!   depends on a literal ([`normalize`]).
//! - [`fingerprint`]: the per-statement fingerprint tickets pin (`scope.statements`).

pub mod cache;
mod deep;
mod details;
pub mod facts;
pub mod fingerprint;
mod nodes;
pub mod normalize;
pub mod plpgsql;
mod predicate;
mod walk;

use std::panic::AssertUnwindSafe;

pub use fingerprint::{fingerprint, fingerprints, FingerprintError};

pub use facts::{
    Class, CopyFacts, CopyTarget, Facts, Flag, Inspection, Lookup, Nesting, SetFacts, Statement,
    Unparsed, WhereState,
};

/// The PostgreSQL major version whose grammar pg_query carries.
pub const GRAMMAR_MAJOR: u32 = 18;

/// Texts longer than this are never inspected (and so refused): the ceiling of the
/// configurable statement limit (`[limits] max_statement_bytes`, 64 MiB by default), which
/// the session applies to frames before any text gets here.
pub const MAX_TEXT_BYTES: usize = 256 << 20;

/// How deep DO blocks may nest inside DO blocks before inspection gives up.
const MAX_BODY_DEPTH: usize = 4;

/// How the server will read the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadAs {
    /// `standard_conforming_strings`: when off, backslashes escape in ordinary '' strings.
    pub standard_conforming_strings: bool,
}

impl Default for ReadAs {
    fn default() -> Self {
        ReadAs {
            standard_conforming_strings: true,
        }
    }
}

/// Inspects `text` as the server will read it. Never panics.
pub fn inspect(text: &str, read_as: ReadAs) -> Inspection {
    if text.len() > MAX_TEXT_BYTES {
        return unparsed(format!(
            "statement text of {} bytes is over pgwarden's inspection limit of {} bytes",
            text.len(),
            MAX_TEXT_BYTES
        ));
    }
    // Deep trees recurse deeply all the way through: see `deep`.
    deep::with_stack_for(text, read_as, |text, read_as| {
        std::panic::catch_unwind(AssertUnwindSafe(|| inspect_at(text, read_as, 0)))
            .unwrap_or_else(|_| unparsed("the inspector failed on this text".into()))
    })
    .unwrap_or_else(|| unparsed("no room to inspect this text (out of memory)".into()))
}

fn unparsed(reason: String) -> Inspection {
    Inspection {
        statements: Vec::new(),
        unparsed: Some(Unparsed { reason }),
        literal_sensitive: true,
        notes: Vec::new(),
        memo: Default::default(),
    }
}

fn inspect_at(text: &str, read_as: ReadAs, depth: usize) -> Inspection {
    let mut opts = pg_query::ParserOptions::DEFAULT;
    if !read_as.standard_conforming_strings {
        opts |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let parsed = match pg_query::parse(text, opts) {
        Ok(p) => p,
        // The decoder's message names its internal path through the tree: not for clients.
        Err(pg_query::Error::Decode(_)) => {
            return unparsed("the parser's tree for this text could not be read".into())
        }
        Err(e) => return unparsed(e.to_string()),
    };
    let tree = match serde_json::to_value(&parsed.protobuf) {
        Ok(t) => t,
        Err(e) => return unparsed(format!("parse tree could not be read: {e}")),
    };
    let tickets_everywhere = text.contains("pgwarden:");
    let mut statements = Vec::new();
    let mut prev_end = 0usize;
    for raw in tree
        .get("stmts")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
    {
        let Some(stmt) = raw.get("stmt") else {
            continue;
        };
        let start = raw
            .get("stmt_location")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        let len = raw.get("stmt_len").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let end = if len == 0 {
            text.len()
        } else {
            (start + len).min(text.len())
        };
        let own = text.get(start..end).unwrap_or("").trim();
        let around = text.get(prev_end..end).unwrap_or("");
        prev_end = end;

        let mut w = walk::Walker::default();
        w.statement(stmt, Nesting::TopLevel);
        let mut functions = std::mem::take(&mut w.functions);
        let mut ops = std::mem::take(&mut w.ops);
        for (idx, body) in std::mem::take(&mut w.do_bodies) {
            let bf = plpgsql::inspect_body(&body);
            if let Some(op) = ops.get_mut(idx) {
                op.dynamic_sql |= bf.dynamic_sql;
            }
            if depth >= MAX_BODY_DEPTH {
                return unparsed("DO blocks nested too deeply to inspect".into());
            }
            for sql in &bf.statements {
                let inner = inspect_at(sql, read_as, depth + 1);
                if inner.unparsed.is_some() {
                    // A statement in a body that PostgreSQL's grammar rejects would fail at
                    // run time; one pgwarden cannot read is refused.
                    return inner;
                }
                for s in inner.statements {
                    functions.extend(s.functions);
                    ops.extend(s.ops.into_iter().map(|mut o| {
                        o.nesting = Nesting::DoBlock;
                        o
                    }));
                }
            }
            for (mode, expr) in &bf.expressions {
                if let Ok(p) = pg_query::parse(expr, *mode) {
                    functions.extend(p.functions.into_iter().map(|(f, _)| f));
                }
            }
            if let Some(op) = ops.get_mut(idx) {
                op.dynamic_sql |= functions
                    .iter()
                    .any(|f| plpgsql::DYNAMIC_SQL_FUNCTIONS.contains(&unqualified(f)));
            }
        }
        functions.sort();
        functions.dedup();
        let tickets = if tickets_everywhere {
            tickets_in(around)
        } else {
            Vec::new()
        };
        let lead = text
            .get(start..end)
            .map_or(0, |t| t.len() - t.trim_start().len());
        statements.push(Statement {
            location: start + lead,
            text: own.to_owned(),
            ops,
            functions,
            tickets,
        });
    }
    Inspection {
        statements,
        unparsed: None,
        literal_sensitive: normalize::literal_sensitive(&tree),
        notes: Vec::new(),
        memo: Default::default(),
    }
}

/// For each statement of `text` (read as the server reads it), SQL the planner can be asked
/// to EXPLAIN on another connection: the statement deparsed by PostgreSQL's own deparser (so
/// string escapes read alike under any `standard_conforming_strings`), or the statement
/// EXPLAIN ANALYZE runs or PREPARE defines. Empty when the text does not parse into `statements` statements;
/// an entry is empty where deparsing failed (its estimate then fails, and counts as large).
pub fn explainable_texts(text: &str, read_as: ReadAs, statements: usize) -> Vec<String> {
    deep::with_stack_for(text, (read_as, statements), |text, (read_as, n)| {
        explainable_texts_here(text, read_as, n)
    })
    .unwrap_or_default()
}

fn explainable_texts_here(text: &str, read_as: ReadAs, statements: usize) -> Vec<String> {
    use pg_query::protobuf::node::Node as N;
    let mut opts = pg_query::ParserOptions::DEFAULT;
    if !read_as.standard_conforming_strings {
        opts |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let Ok(parsed) = pg_query::parse(text, opts) else {
        return Vec::new();
    };
    if parsed.protobuf.stmts.len() != statements {
        return Vec::new();
    }
    parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| {
            let mut node = raw.stmt.as_deref().and_then(|n| n.node.as_ref());
            match node {
                Some(N::ExplainStmt(e)) => node = e.query.as_deref().and_then(|n| n.node.as_ref()),
                Some(N::PrepareStmt(p)) => node = p.query.as_deref().and_then(|n| n.node.as_ref()),
                _ => {}
            }
            node.and_then(|n| n.deparse(pg_query::DeparseOptions::default()).ok())
                .unwrap_or_default()
        })
        .collect()
}

/// `pg_catalog.format` → `format`.
pub fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// Ticket ids from `pgwarden:ticket=ID` inside SQL comments of `text`.
pub fn tickets_in(text: &str) -> Vec<String> {
    let Ok(scan) = pg_query::scan(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for tok in &scan.tokens {
        // SQL_COMMENT and C_COMMENT tokens.
        let kind = pg_query::protobuf::Token::try_from(tok.token);
        if !matches!(
            kind,
            Ok(pg_query::protobuf::Token::SqlComment) | Ok(pg_query::protobuf::Token::CComment)
        ) {
            continue;
        }
        let c = text.get(tok.start as usize..tok.end as usize).unwrap_or("");
        let mut rest = c;
        while let Some(i) = rest.find("pgwarden:ticket=") {
            rest = &rest[i + "pgwarden:ticket=".len()..];
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.:/#".contains(*c))
                .collect();
            if !id.is_empty() {
                out.push(id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
