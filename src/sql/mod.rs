//! Statement inspection, pure: SQL text → [`Inspection`] (statements, each with the facts
//! of itself and everything nested in it). PostgreSQL's own grammar (pg_query) decides what
//! a statement is; text it rejects, text too large, or a parser failure gives an
//! `unparsed` inspection, which policy refuses (fail closed).
//!
//! - [`facts`]: the typed facts.
//! - `walk`: parse tree → facts.
//! - `predicate`: trivially-true WHERE clauses, and conditions no target column decides.
//! - `implied`: operations a statement implies (MERGE actions, ON CONFLICT DO UPDATE,
//!   functions' SET clauses).
//! - [`plpgsql`]: DO blocks and function bodies.
//! - [`cache`]: inspections cached by exact text, and by literal-free key when no fact
//!   depends on a literal ([`normalize`]).
//! - [`fingerprint`]: the per-statement fingerprint tickets pin (`scope.statements`).

pub mod cache;
mod deep;
mod details;
pub mod facts;
pub mod fingerprint;
mod implied;
pub mod keyprobe;
mod nodes;
pub mod normalize;
pub mod plpgsql;
mod predicate;
mod quick_key;
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
            "The statement text of {} bytes is over pgwarden's inspection limit of {} bytes.",
            text.len(),
            MAX_TEXT_BYTES
        ));
    }
    // Deep trees recurse deeply all the way through: see `deep`.
    deep::with_stack_for(text, read_as, |text, read_as| {
        std::panic::catch_unwind(AssertUnwindSafe(|| inspect_at(text, read_as, 0)))
            .unwrap_or_else(|_| unparsed(UNREADABLE.into()))
    })
    .unwrap_or_else(|| unparsed("no room to inspect this text (out of memory)".into()))
}

/// The reason given for text pgwarden's inspector could not follow, whatever the internal
/// cause: a refusal's DETAIL never shows decoder paths or library error debris.
const UNREADABLE: &str = "pgwarden's inspector could not read PostgreSQL's parse of this text.";

/// Why `text` was not inspected, for the refusal's DETAIL: PostgreSQL's own grammar message
/// when the grammar rejects it, a plain sentence otherwise.
fn parse_error_reason(e: &pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => {
            format!(
                "PostgreSQL's grammar rejects this text: {}.",
                m.trim_end_matches('.')
            )
        }
        pg_query::Error::Conversion(_) => {
            "The text contains a NUL byte, which PostgreSQL does not accept in a statement.".into()
        }
        _ => UNREADABLE.into(),
    }
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

/// Tokens one statement may have (counted between top-level semicolons) in a text of more
/// than [`TOKEN_COUNT_FROM_BYTES`]: inspection holds a statement's whole parse tree, about
/// 2 KB per token, so a single 4 MiB `INSERT ... VALUES` of 600,000 tokens took over 1 GB.
/// 200,000 tokens is an INSERT ... VALUES of some 25,000 rows of three values; larger loads belong in
/// COPY ... FROM STDIN or in several statements.
pub const MAX_STATEMENT_TOKENS: usize = 200_000;

/// Texts up to this size are not counted (they cannot reach [`MAX_STATEMENT_TOKENS`]).
const TOKEN_COUNT_FROM_BYTES: usize = 256 << 10;

/// The refusal for a statement of over [`MAX_STATEMENT_TOKENS`] tokens in `text`, if any.
fn over_token_budget(text: &str) -> Option<Inspection> {
    if text.len() <= TOKEN_COUNT_FROM_BYTES {
        return None;
    }
    // Text the scanner rejects will not parse either: the parser reports it.
    let scan = pg_query::scan(text).ok()?;
    let mut run = 0usize;
    for t in &scan.tokens {
        if pg_query::protobuf::Token::try_from(t.token) == Ok(pg_query::protobuf::Token::Ascii59) {
            run = 0;
            continue;
        }
        run += 1;
        if run > MAX_STATEMENT_TOKENS {
            return Some(unparsed(format!(
                "A statement of more than {MAX_STATEMENT_TOKENS} tokens is over pgwarden's \
                 inspection limit: split it into several statements, or load rows with \
                 COPY ... FROM STDIN."
            )));
        }
    }
    None
}

fn inspect_at(text: &str, read_as: ReadAs, depth: usize) -> Inspection {
    if let Some(refused) = over_token_budget(text) {
        return refused;
    }
    let mut opts = pg_query::ParserOptions::DEFAULT;
    if !read_as.standard_conforming_strings {
        opts |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let parsed = match pg_query::parse(text, opts) {
        Ok(p) => p,
        Err(e) => return unparsed(parse_error_reason(&e)),
    };
    let tickets_everywhere = text.contains("pgwarden:");
    let mut statements = Vec::new();
    let mut prev_end = 0usize;
    let mut literal_sensitive = false;
    // One statement's tree at a time: the walked form of a parse tree is hundreds of times
    // the text, so a text of 10,000 statements must not hold all of theirs at once.
    for raw in &parsed.protobuf.stmts {
        let Ok(raw) = serde_json::to_value(raw) else {
            return unparsed(UNREADABLE.into());
        };
        literal_sensitive |= normalize::literal_sensitive(&raw);
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
                return unparsed("DO blocks are nested too deeply to inspect.".into());
            }
            let nested = Nested {
                statements: &bf.statements,
                expressions: &bf.expressions,
                nesting: Nesting::DoBlock,
            };
            if let Err(refused) = nested.absorb(read_as, depth, &mut functions, &mut ops) {
                return *refused;
            }
            if let Some(op) = ops.get_mut(idx) {
                op.dynamic_sql |= functions
                    .iter()
                    .any(|f| plpgsql::DYNAMIC_SQL_FUNCTIONS.contains(&unqualified(f)));
            }
        }
        // What routines created here will run when called is decided now, at CREATE, as if
        // it ran (nesting `function_body`). Dynamic SQL in a PL/pgSQL body is its EXECUTE
        // forms only (`dynamic_sql`, set by the walker): without EXECUTE a string built with
        // format() cannot run as SQL there.
        for (_, body) in std::mem::take(&mut w.routine_bodies) {
            if depth >= MAX_BODY_DEPTH {
                return unparsed("Routine bodies are nested too deeply to inspect.".into());
            }
            let sql;
            let nested = match &body {
                walk::RoutineBody::Sql(src) => {
                    sql = [src.clone()];
                    Nested {
                        statements: &sql,
                        expressions: &[],
                        nesting: Nesting::FunctionBody,
                    }
                }
                walk::RoutineBody::Plpgsql(bf) => Nested {
                    statements: &bf.statements,
                    expressions: &bf.expressions,
                    nesting: Nesting::FunctionBody,
                },
            };
            if let Err(refused) = nested.absorb(read_as, depth, &mut functions, &mut ops) {
                return *refused;
            }
        }
        // SQL text that a function called here runs (`query_to_xml('...')`): the
        // statements it is, run where the call is.
        for (at, sql) in std::mem::take(&mut w.sql_strings) {
            if depth >= MAX_BODY_DEPTH {
                return unparsed(
                    "SQL text run by a function is nested too deeply to inspect.".into(),
                );
            }
            let sql = [sql];
            let nested = Nested {
                statements: &sql,
                expressions: &[],
                nesting: at,
            };
            if let Err(refused) = nested.absorb(read_as, depth, &mut functions, &mut ops) {
                return *refused;
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
        literal_sensitive,
        notes: Vec::new(),
        memo: Default::default(),
    }
}

/// Statements (and expressions) a DO block or routine body runs, to be inspected in turn.
struct Nested<'a> {
    statements: &'a [String],
    expressions: &'a [(i32, String)],
    nesting: Nesting,
}

impl Nested<'_> {
    /// A nested operation at this nesting (a routine body inside a DO block stays
    /// `function_body`). A SET in a routine body applies when the routine runs: rules match
    /// it (`call_set`), the session does not apply it now.
    fn place(&self, mut o: Facts) -> Facts {
        if o.nesting != Nesting::FunctionBody {
            o.nesting = self.nesting;
        }
        if o.nesting == Nesting::FunctionBody {
            if let Some(set) = o.set.take() {
                o.call_set = Some(set);
            }
            // Nor does it define a prepared statement for the session now.
            o.prepared_name = None;
        }
        o
    }

    /// Is `o` kept? Transaction control in a routine body (COMMIT, ROLLBACK in a
    /// procedure) ends the caller's transaction when the routine runs, not now: no rule is
    /// about it, and the session must not take it for its own.
    fn keeps(o: &Facts) -> bool {
        !(o.nesting == Nesting::FunctionBody && o.class == Class::Tcl && o.tag != "LOCK TABLE")
    }

    /// Adds what the nested statements do to `functions` and `ops`, at this nesting (a
    /// routine body inside a DO block stays `function_body`: it still runs only when
    /// called). A statement PostgreSQL's grammar rejects would fail at run time; one
    /// pgwarden cannot read is refused: `Err` with the unparsed inspection.
    fn absorb(
        &self,
        read_as: ReadAs,
        depth: usize,
        functions: &mut Vec<String>,
        ops: &mut Vec<Facts>,
    ) -> Result<(), Box<Inspection>> {
        for sql in self.statements {
            let mut inner = inspect_at(sql, read_as, depth + 1);
            if let Some(u) = &mut inner.unparsed {
                let place = match self.nesting {
                    Nesting::FunctionBody => "a routine's body",
                    Nesting::DoBlock => "a DO block",
                    _ => "SQL text a function runs",
                };
                if !u.reason.starts_with("In ") {
                    u.reason = format!("In {place}: {}", u.reason);
                }
                return Err(Box::new(inner));
            }
            for s in inner.statements {
                functions.extend(s.functions);
                ops.extend(s.ops.into_iter().map(|o| self.place(o)).filter(Self::keeps));
            }
        }
        for (mode, expr) in self.expressions {
            // Parse mode 0 is a whole statement: the query of FOR ... IN, RETURN QUERY,
            // OPEN ... FOR, PERFORM, a cursor's. It may write (`FOR r IN DELETE FROM t
            // RETURNING * LOOP`, a data-modifying CTE): inspected as a statement.
            // Other expressions (IF conditions, assignments, RETURN values, defaults) run
            // as a SELECT of the expression: inspected as that SELECT, so set_config and
            // functions that run SQL text count there too.
            let as_statement = match *mode {
                0 => Some(expr.clone()),
                _ => expression_as_select(expr, *mode, read_as),
            };
            if let Some(stmt) = as_statement {
                let inner = inspect_at(&stmt, read_as, depth + 1);
                if inner.unparsed.is_none() {
                    for s in inner.statements {
                        functions.extend(s.functions);
                        ops.extend(
                            s.ops
                                .into_iter()
                                .filter(|o| o.class != Class::Read)
                                .map(|o| self.place(o))
                                .filter(Self::keeps),
                        );
                    }
                    continue;
                }
                // Something nested in it (SQL text a function runs) could not be read.
                if inner
                    .unparsed
                    .as_ref()
                    .is_some_and(|u| u.reason.starts_with("In "))
                {
                    return Err(Box::new(inner));
                }
            }
            if let Ok(p) = pg_query::parse(expr, *mode) {
                functions.extend(p.functions.into_iter().map(|(f, _)| f));
            }
        }
        Ok(())
    }
}

/// A PL/pgSQL expression (parse `mode` 2) or assignment (modes 3 to 5: `x := expr`,
/// `x.f[1] := expr`) as the SELECT PL/pgSQL runs for it. `None` when it does not parse.
fn expression_as_select(expr: &str, mode: i32, read_as: ReadAs) -> Option<String> {
    use pg_query::protobuf::node::Node as N;
    match mode {
        2 => Some(format!("SELECT {expr}")),
        3..=5 => {
            let mut opts = pg_query::ParserOptions::from(mode);
            if !read_as.standard_conforming_strings {
                opts |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
            }
            let parsed = pg_query::parse(expr, opts).ok()?;
            let raw = parsed.protobuf.stmts.first()?;
            match raw.stmt.as_deref()?.node.as_ref()? {
                N::PlassignStmt(a) => N::SelectStmt(Box::new(a.val.as_deref()?.clone()))
                    .deparse(pg_query::DeparseOptions::default())
                    .ok(),
                _ => None,
            }
        }
        _ => None,
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
