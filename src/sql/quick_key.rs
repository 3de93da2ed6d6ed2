//! The literal-free key of common statement texts without calling PostgreSQL's scanner: a
//! small lexer for the plain subset of SQL that applications send (ASCII identifiers,
//! keywords, operators, `$n` parameters, `'…'` strings, decimal numbers). For any text it
//! accepts it gives exactly the key [`super::normalize::key`] gives through pg_query's
//! scanner; for anything outside that subset (comments, dollar quotes, escape or prefixed
//! strings, backslashes, non-ASCII text, numbers glued to letters…) it answers `None` and the
//! scanner decides. It exists because a `pgbench -M simple` statement spends more time in the
//! C scanner's round trip (protobuf both ways) than in the rest of its inspection.

/// The key of `text`, or `None` when the text is outside the subset this lexer knows.
pub fn key(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut last = 0usize;
    let mut i = 0usize;
    // The end of the last literal, and whether only blanks came since: PostgreSQL joins two
    // string literals separated by a newline into one, so adjacent literals are left to the
    // scanner.
    let mut after_literal = false;
    while i < b.len() {
        let c = b[i];
        if !c.is_ascii() || c == b'\\' {
            return None;
        }
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                {
                    i += 1;
                }
                // `E'…'`, `X'…'`, `B'…'`, `N'…'`, `U&'…'`: prefixed strings are the scanner's.
                if matches!(b.get(i), Some(b'\'') | Some(b'"')) {
                    return None;
                }
            }
            b'"' => {
                // `""` is an error (zero-length identifier): the scanner's to report.
                if b.get(i + 1) == Some(&b'"') {
                    return None;
                }
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'$' => {
                // `$1` is a parameter; anything else with `$` (dollar quotes) is not ours.
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start + 1 || b.get(i).is_some_and(|&n| ident_char(n) || n == b'.') {
                    return None;
                }
            }
            b'\'' => {
                if after_literal {
                    return None;
                }
                let start = i;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                // A string glued to what follows (`'a'b`, `'a''`) is the scanner's.
                if b.get(i).is_some_and(|&n| ident_char(n) || n == b'\'') {
                    return None;
                }
                out.push_str(&text[last..start]);
                out.push('\0');
                last = i;
                after_literal = true;
                continue;
            }
            b'0'..=b'9' => {
                if after_literal {
                    return None;
                }
                let start = i;
                i = number_end(b, i)?;
                out.push_str(&text[last..start]);
                out.push('\0');
                last = i;
                after_literal = true;
                continue;
            }
            b'.' => {
                // `.5` is a number, `a.b` a qualified name, `..` is not ours.
                if b.get(i + 1)
                    .is_some_and(|n| n.is_ascii_digit() || *n == b'.')
                {
                    return None;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
            | b'^' | b'&' | b'|' | b'`' | b'?' => {
                i += 1;
                // Operators may not contain `--` or `/*`; a `&'` could start a `U&'…'`.
                if matches!(b.get(i), Some(b'\'')) && c == b'&' {
                    return None;
                }
            }
            b'(' | b')' | b',' | b';' | b':' | b'[' | b']' => i += 1,
            _ => return None,
        }
        after_literal = false;
    }
    out.push_str(&text[last..]);
    Some(out)
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$'
}

/// The end of the decimal number starting at `i` (PostgreSQL's `decinteger`, `numeric` and
/// `real` rules), or `None` when it is one the scanner should judge (`1e`, `1_000`, `0x1f`,
/// `1abc`, `1..2`).
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    i = digits(b, i);
    if b.get(i) == Some(&b'.') {
        if b.get(i + 1) == Some(&b'.') {
            return None;
        }
        i = digits(b, i + 1);
    }
    if matches!(b.get(i), Some(b'e') | Some(b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+') | Some(b'-')) {
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        i = digits(b, j);
    }
    if b.get(i)
        .is_some_and(|&n| ident_char(n) || n == b'.' || n == b'\'')
    {
        return None;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key the scanner gives, for comparison.
    fn scanned(text: &str) -> Option<String> {
        super::super::normalize::scanned_key(text)
    }

    #[test]
    fn pgbench_and_orm_statements_are_keyed_without_the_scanner() {
        for t in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48321;",
            "UPDATE pgbench_accounts SET abalance = abalance + -4123 WHERE aid = 77;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 8841, 17, CURRENT_TIMESTAMP);",
            "SELECT \"User\".id, \"User\".\"na\"\"me\" FROM \"User\" WHERE \"User\".id = $1 LIMIT 1",
            "SELECT * FROM t WHERE a = 'it''s' AND b >= 1.5e-3 AND c <> 0.5e0",
            "select x::numeric(10,2), y || 'z' from t where d > now() - interval '1 day'",
            "SELECT a FROM t WHERE b IN (1, 2, 3) ORDER BY 1 DESC",
            "SELECT 1",
            "SELECT 'größe', \"straße\" FROM t",
            "",
        ] {
            let k = key(t);
            assert!(k.is_some(), "{t}");
            if k.is_some() {
                assert_eq!(k, scanned(t), "{t}");
            }
        }
    }

    #[test]
    fn anything_unusual_goes_to_the_scanner() {
        for t in [
            "SELECT E'a\\nb'",
            "SELECT 'a' -- c",
            "SELECT /* c */ 1",
            "SELECT $$x$$",
            "SELECT $a$x$a$",
            "SELECT X'ff', B'01'",
            "SELECT U&'d\\0061t'",
            "SELECT 'a'\n'b'",
            "SELECT 1e",
            "SELECT 1_000",
            "SELECT 0x1f",
            "SELECT 1abc",
            "SELECT 1..2",
            "SELECT 'a'b",
            "SELECT \"unterminated",
            "SELECT 'unterminated",
            "SELECT $1abc",
            "SELECT .5",
            "SELECT \"\"",
            "SELECT größe FROM t",
        ] {
            assert_eq!(key(t), None, "{t}");
        }
    }

    /// Every text of the shipped pack's test cases: where the quick lexer answers, it gives
    /// the scanner's key.
    #[test]
    fn agrees_with_the_scanner_on_the_pack_cases() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let doc: serde_json::Value = toml_edit::de::from_str(&text).unwrap();
            let mut sqls = Vec::new();
            collect_sql(&doc, &mut sqls);
            for sql in sqls {
                if let Some(k) = key(&sql) {
                    assert_eq!(Some(k), scanned(&sql), "{sql}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "only {checked} texts checked");
    }

    fn collect_sql(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(t) => {
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("sql", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_sql(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_sql(v, out)),
            _ => {}
        }
    }

    /// Random texts built from the tokens the lexer knows and some it does not: wherever it
    /// answers, it agrees with the scanner.
    #[test]
    fn agrees_with_the_scanner_on_random_texts() {
        const PIECES: &[&str] = &[
            "SELECT",
            " ",
            "a",
            "t.b",
            "\"Q\"",
            "\"a\"\"b\"",
            "'x'",
            "'it''s'",
            "''",
            "1",
            "42",
            "1.5",
            "2.",
            "3e5",
            "4E-2",
            ".7",
            "$1",
            "$23",
            "+",
            "-",
            "*",
            "/",
            "<",
            ">=",
            "<>",
            "=",
            "~",
            "!",
            "@",
            "#",
            "%",
            "^",
            "&",
            "|",
            "?",
            "(",
            ")",
            ",",
            ";",
            ":",
            "::",
            "[",
            "]",
            "\n",
            "\t",
            "'ü'",
            "e",
            "x",
            "_",
            "$",
            ".",
            "'",
            "\"",
            "--",
            "/*",
            "*/",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut answered = 0;
        for _ in 0..100_000 {
            let n = (next() % 12) as usize + 1;
            let text: String = (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            if let Some(k) = key(&text) {
                answered += 1;
                assert_eq!(Some(k), scanned(&text), "{text:?}");
            }
        }
        assert!(answered > 1000, "only {answered} texts answered");
    }
}
