//! The statement fingerprint a ticket's `scope.statements` pins: computed by
//! `pgwarden tickets create --statements FILE` on a migration file and by the proxy on each
//! statement it sees, so both must call this one function.
//!
//! It is libpg_query's fingerprint (a 64-bit hash of the parse tree with literal values,
//! parameter numbers, comments and whitespace left out), as 16 lowercase hex digits, with two
//! options that differ from pg_query's default because a ticket must not cover more than it
//! names: relation names are hashed in full (the default ignores runs of two or more digits,
//! so `orders_2024` and `orders_2025` would match) and schema names count
//! (`RANGEVAR_PG17_COMPAT`: `a.t` is not `b.t`; aliases are ignored). Literal values are
//! left out on purpose: a ticket for `UPDATE t SET x = $1 WHERE id = $2` covers the statement
//! with any values, which is what a migration that is re-run or parameterised needs.

use pg_query::{FingerprintOptions, ParserOptions};

use super::ReadAs;

/// Why a text has no fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("not valid SQL: {0}")]
    Parse(String),
    #[error("the text holds no statement")]
    Empty,
}

fn options() -> FingerprintOptions {
    FingerprintOptions::RANGEVAR_PG17_COMPAT | FingerprintOptions::FULL_RELNAME
}

fn parser(read_as: ReadAs) -> ParserOptions {
    let mut opts = ParserOptions::DEFAULT;
    if !read_as.standard_conforming_strings {
        opts |= ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    opts
}

/// The fingerprint of one statement (text holding several gives one fingerprint of them all,
/// so callers split first: see [`fingerprints`]).
pub fn fingerprint(statement: &str, read_as: ReadAs) -> Result<String, FingerprintError> {
    pg_query::fingerprint(statement, parser(read_as), options())
        .map(|f| format!("{:016x}", f.value))
        .map_err(|e| FingerprintError::Parse(e.to_string()))
}

/// Splits `text` into statements with PostgreSQL's grammar and fingerprints each, in order.
pub fn fingerprints(text: &str, read_as: ReadAs) -> Result<Vec<String>, FingerprintError> {
    if read_as.standard_conforming_strings {
        let parts = pg_query::split_with_parser(text)
            .map_err(|e| FingerprintError::Parse(e.to_string()))?;
        let out = parts
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| fingerprint(p, read_as))
            .collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            return Err(FingerprintError::Empty);
        }
        return Ok(out);
    }
    // split_with_parser knows only the standard reading of strings; cut by the parse
    // tree's statement locations instead, which follow the options given.
    let parsed = pg_query::parse(text, parser(read_as))
        .map_err(|e| FingerprintError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let start = raw.stmt_location.max(0) as usize;
        let end = if raw.stmt_len == 0 {
            text.len()
        } else {
            (start + raw.stmt_len as usize).min(text.len())
        };
        let part = text.get(start..end).unwrap_or("");
        out.push(fingerprint(part, read_as)?);
    }
    if out.is_empty() {
        return Err(FingerprintError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> String {
        fingerprint(s, ReadAs::default()).unwrap()
    }

    #[test]
    fn literals_and_layout_do_not_count() {
        assert_eq!(
            fp("UPDATE t SET x = 1 WHERE id = 7"),
            fp("update t\n  set x = 2 -- why\n where id = 8;")
        );
        assert_eq!(fp("SELECT 1").len(), 16);
    }

    #[test]
    fn names_count_in_full_with_their_schema() {
        assert_ne!(fp("DROP TABLE orders_2024"), fp("DROP TABLE orders_2025"));
        assert_ne!(fp("DELETE FROM a.t"), fp("DELETE FROM b.t"));
        assert_ne!(fp("DELETE FROM orders_01"), fp("DELETE FROM orders_02"));
        assert_ne!(fp("DELETE FROM t"), fp("TRUNCATE t"));
    }

    #[test]
    fn a_migration_file_gives_one_per_statement() {
        let text = "-- migrate\nCREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n\nALTER TABLE a ADD b text;\n";
        let all = fingerprints(text, ReadAs::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], fp("INSERT INTO a VALUES (42)"));
        let legacy = ReadAs {
            standard_conforming_strings: false,
        };
        assert_eq!(fingerprints(text, legacy).unwrap(), all);
        assert_eq!(
            fingerprints("-- nothing\n", ReadAs::default()),
            Err(FingerprintError::Empty)
        );
        assert!(matches!(
            fingerprints("CREATE TABLE (", ReadAs::default()),
            Err(FingerprintError::Parse(_))
        ));
    }
}
