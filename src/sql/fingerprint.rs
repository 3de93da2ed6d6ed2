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
//!
//! The tree fingerprint also leaves out names that are not relations (a GRANT's grantee, an
//! OWNER TO role, a role's name in ALTER ROLE, column names in RENAME, cursor and savepoint
//! names) and, for `DO` blocks and `CREATE FUNCTION`/`PROCEDURE`, the code itself (a string
//! constant) and their options. So every fingerprint is followed by `-` and 16 hex digits of a
//! SHA-256 of the statement as PostgreSQL's deparser writes it with its literal values
//! replaced by parameters (`pg_query::normalize`, then parsed and deparsed: names count,
//! values, comments and layout do not); for `DO` and `CREATE FUNCTION`/`PROCEDURE`, of the
//! statement deparsed as it is (body and options included). When the normalized text does not
//! parse again (a utility statement that takes no parameters), the statement deparsed as it is
//! counts, values included: the ticket then covers exactly that statement.

use pg_query::protobuf::node::Node as N;
use pg_query::{DeparseOptions, FingerprintOptions, ParserOptions};
use sha2::{Digest, Sha256};

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
    // Parse trees are decoded and deparsed recursively: deep ones need room (`super::deep`).
    super::deep::with_stack_for(statement, read_as, fingerprint_here)
        .unwrap_or_else(|| Err(FingerprintError::Parse("no room to parse this text".into())))
}

fn fingerprint_here(statement: &str, read_as: ReadAs) -> Result<String, FingerprintError> {
    let tree = pg_query::fingerprint(statement, parser(read_as), options())
        .map(|f| format!("{:016x}", f.value))
        .map_err(|e| FingerprintError::Parse(e.to_string()))?;
    Ok(format!("{tree}-{}", code_digest(statement, read_as)?))
}

/// 16 hex digits of the SHA-256 of each statement of `statement`, deparsed: with its values
/// left out, except for `DO` and `CREATE FUNCTION`/`PROCEDURE` (whose code is a value) and
/// statements whose normalized form does not parse again.
fn code_digest(statement: &str, read_as: ReadAs) -> Result<String, FingerprintError> {
    let parsed = pg_query::parse(statement, parser(read_as))
        .map_err(|e| FingerprintError::Parse(e.to_string()))?;
    let mut hash = Sha256::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_deref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let own = statement_text(statement, raw);
        let code = matches!(node, N::DoStmt(_) | N::CreateFunctionStmt(_));
        let text = match (code, without_values(node)) {
            (false, Some(sql)) => format!("normalized:{sql}"),
            _ => match node.deparse(DeparseOptions::default()) {
                Ok(sql) => format!("deparsed:{sql}"),
                Err(_) => format!("text:{}", own.trim()),
            },
        };
        // Length-prefixed, so that where one statement ends is part of what is hashed.
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    }
    Ok(hex::encode(&hash.finalize()[..8]))
}

/// One statement deparsed with its literal values replaced by parameters (deparsed first, so
/// that strings read either way are written the standard way); `None` when the normalized
/// text does not parse again.
fn without_values(node: &N) -> Option<String> {
    let deparsed = node.deparse(DeparseOptions::default()).ok()?;
    let normalized = pg_query::normalize(&deparsed).ok()?;
    let parsed = pg_query::parse(&normalized, ParserOptions::DEFAULT).ok()?;
    let node = parsed
        .protobuf
        .stmts
        .first()?
        .stmt
        .as_deref()?
        .node
        .as_ref()?;
    node.deparse(DeparseOptions::default()).ok()
}

/// The text of one parsed statement (`stmt_len` 0: to the end).
fn statement_text<'a>(text: &'a str, raw: &pg_query::protobuf::RawStmt) -> &'a str {
    let start = raw.stmt_location.max(0) as usize;
    let end = if raw.stmt_len == 0 {
        text.len()
    } else {
        (start + raw.stmt_len as usize).min(text.len())
    };
    text.get(start..end).unwrap_or("")
}

/// Splits `text` into statements with PostgreSQL's grammar and fingerprints each, in order.
pub fn fingerprints(text: &str, read_as: ReadAs) -> Result<Vec<String>, FingerprintError> {
    super::deep::with_stack_for(text, read_as, fingerprints_here)
        .unwrap_or_else(|| Err(FingerprintError::Parse("no room to parse this text".into())))
}

fn fingerprints_here(text: &str, read_as: ReadAs) -> Result<Vec<String>, FingerprintError> {
    if read_as.standard_conforming_strings {
        let parts = pg_query::split_with_parser(text)
            .map_err(|e| FingerprintError::Parse(e.to_string()))?;
        let out = parts
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| fingerprint_here(p, read_as))
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
        out.push(fingerprint_here(statement_text(text, raw), read_as)?);
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
        assert_eq!(fp("SELECT 1").len(), 33);
    }

    #[test]
    fn names_the_tree_leaves_out_count() {
        assert_ne!(
            fp("GRANT SELECT ON t TO app"),
            fp("GRANT SELECT ON t TO attacker")
        );
        assert_ne!(
            fp("ALTER TABLE t OWNER TO app"),
            fp("ALTER TABLE t OWNER TO attacker")
        );
        assert_ne!(
            fp("ALTER ROLE app SUPERUSER"),
            fp("ALTER ROLE attacker SUPERUSER")
        );
        assert_ne!(fp("CREATE ROLE app"), fp("CREATE ROLE other"));
        assert_ne!(
            fp("ALTER TABLE t RENAME COLUMN a TO b"),
            fp("ALTER TABLE t RENAME COLUMN x TO y")
        );
        assert_eq!(
            fp("GRANT SELECT ON t TO app"),
            fp("grant select on t to app -- again")
        );
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

    #[test]
    fn a_do_body_counts_exactly() {
        let hi = "DO $$BEGIN RAISE NOTICE 'hi'; END$$";
        assert_eq!(
            fp(hi),
            fp("do  $$BEGIN RAISE NOTICE 'hi'; END$$ -- again\n;")
        );
        assert_eq!(
            fp(hi),
            fp("/* again */ DO $$BEGIN RAISE NOTICE 'hi'; END$$")
        );
        // The body's value counts, not its quoting.
        assert_eq!(fp(hi), fp("DO 'BEGIN RAISE NOTICE ''hi''; END'"));
        assert_ne!(fp(hi), fp("DO $$BEGIN DROP TABLE victim; END$$"));
        assert_ne!(fp(hi), fp("DO $$BEGIN RAISE NOTICE 'ho'; END$$"));
        assert_ne!(fp(hi), fp("DO $$BEGIN RAISE NOTICE 'hi';  END$$"));
        assert_ne!(
            fp(hi),
            fp("DO LANGUAGE plperl $$BEGIN RAISE NOTICE 'hi'; END$$")
        );
        // A tree fingerprint, `-`, and the body's digest.
        let (tree, code) = fp(hi)
            .split_once('-')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        assert_eq!((tree.len(), code.len()), (16, 16));
    }

    #[test]
    fn a_function_body_and_options_count_exactly() {
        let f =
            "CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS $$BEGIN RETURN a + 1; END$$";
        assert_eq!(
            fp(f),
            fp("create function f(a int)\n returns int -- plus one\n language plpgsql\n as $$BEGIN RETURN a + 1; END$$;")
        );
        assert_ne!(
            fp(f),
            fp("CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql AS $$BEGIN DROP TABLE victim; RETURN a; END$$")
        );
        assert_ne!(
            fp(f),
            fp("CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$BEGIN RETURN a + 1; END$$")
        );
        assert_ne!(
            fp(f),
            fp("CREATE FUNCTION f(a int) RETURNS int LANGUAGE plpgsql SET search_path = evil AS $$BEGIN RETURN a + 1; END$$")
        );
        let p = "CREATE PROCEDURE p() LANGUAGE sql AS $$DELETE FROM t WHERE id = 1$$";
        assert_eq!(
            fp(p),
            fp("create procedure p() language sql as 'DELETE FROM t WHERE id = 1'")
        );
        assert_ne!(
            fp(p),
            fp("CREATE PROCEDURE p() LANGUAGE sql AS $$DELETE FROM t$$")
        );
        // A SQL-standard body counts with its literal values.
        let s = "CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN 1";
        assert_eq!(
            fp(s),
            fp("create function g() returns int language sql\n  return 1;")
        );
        assert_ne!(
            fp(s),
            fp("CREATE FUNCTION g() RETURNS int LANGUAGE sql RETURN 2")
        );
        let s = "CREATE PROCEDURE q() BEGIN ATOMIC DELETE FROM t WHERE id = 1; END";
        assert_ne!(
            fp(s),
            fp("CREATE PROCEDURE q() BEGIN ATOMIC DELETE FROM t WHERE id > 1; END")
        );
        assert_ne!(
            fp(s),
            fp("CREATE PROCEDURE q() BEGIN ATOMIC DELETE FROM t WHERE id = 2; END")
        );
    }

    #[test]
    fn every_fingerprint_starts_with_the_tree_fingerprint() {
        // libpg_query's value, then the names' digest: literal values still left out.
        let u = "UPDATE t SET x = 1 WHERE id = 7";
        let tree = pg_query::fingerprint(u, ParserOptions::DEFAULT, options()).unwrap();
        assert!(fp(u).starts_with(&format!("{:016x}-", tree.value)));
        assert_eq!(fp(u), fp("UPDATE t SET x = 'other' WHERE id = 8"));
        assert_ne!(
            fp("ALTER FUNCTION f(int) OWNER TO admin"),
            fp("ALTER FUNCTION f(int) OWNER TO mallory")
        );
        assert_eq!(fp("CALL p(1)"), fp("CALL p(2)"));
    }

    #[test]
    fn a_migration_file_pins_its_bodies() {
        let text = "CREATE TABLE a (id int);\nDO $$BEGIN RAISE NOTICE 'hi'; END$$;\n\
                    CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n";
        let all = fingerprints(text, ReadAs::default()).unwrap();
        assert_eq!(all[1], fp("DO $$BEGIN RAISE NOTICE 'hi'; END$$"));
        assert_eq!(
            all[2],
            fp("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        );
        // The proxy fingerprints each statement's text as inspection cut it.
        let seen: Vec<String> = crate::sql::inspect(text, ReadAs::default())
            .statements
            .iter()
            .map(|st| fp(&st.text))
            .collect();
        assert_eq!(seen, all);
        let legacy = ReadAs {
            standard_conforming_strings: false,
        };
        assert_eq!(fingerprints(text, legacy).unwrap(), all);
        // With standard_conforming_strings off a backslash escapes: another body.
        let esc = "DO 'BEGIN RAISE NOTICE ''a\\\\b''; END'";
        assert_ne!(fingerprint(esc, legacy).unwrap(), fp(esc));
    }
}
