//! Which column type changes PostgreSQL makes without rewriting the table (binary-coercible
//! changes whose new type modifier only widens): the exemption of `lock.column-type-change`.

/// A type reduced to its canonical base name, its modifiers and whether it is an array.
#[derive(Debug, PartialEq, Eq)]
struct Ty {
    base: String,
    mods: Vec<i64>,
    array: bool,
}

/// Reads a type as `format_type` prints it (`character varying(10)`, `timestamp(3) without
/// time zone`, `numeric(10,2)[]`) or as pgwarden's inspector names it (`varchar(10)`).
fn read(t: &str) -> Option<Ty> {
    let mut t = t.trim().to_ascii_lowercase();
    let array = t.ends_with("[]");
    if array {
        t.truncate(t.len() - 2);
    }
    let mut mods = Vec::new();
    if let (Some(open), Some(close)) = (t.find('('), t.find(')')) {
        if close < open {
            return None;
        }
        for m in t[open + 1..close].split(',') {
            mods.push(m.trim().parse().ok()?);
        }
        t = format!("{}{}", &t[..open], &t[close + 1..]);
    }
    let name = t.split_whitespace().collect::<Vec<_>>().join(" ");
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let base = match name {
        "character varying" | "varchar" => "varchar",
        "character" | "char" | "bpchar" => "bpchar",
        "bit varying" | "varbit" => "varbit",
        "numeric" | "decimal" => "numeric",
        "timestamp without time zone" | "timestamp" => "timestamp",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "time without time zone" | "time" => "time",
        "time with time zone" | "timetz" => "timetz",
        "integer" | "int" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "boolean" | "bool" => "bool",
        "double precision" | "float8" => "float8",
        "real" | "float4" => "float4",
        other => other,
    }
    .to_owned();
    Some(Ty { base, mods, array })
}

/// True when changing a column from `current` to `new` needs no rewrite and no index rebuild:
/// the same type, `varchar(n)` to `varchar(m >= n)` / unbounded `varchar` / `text`, `text` to
/// unbounded `varchar`, `varbit(n)` widened, `numeric(p,s)` to `numeric(q >= p, s)` or
/// unconstrained `numeric`, a wider time precision, `cidr` to `inet`.
pub fn binary_coercible(current: &str, new: &str) -> bool {
    let (Some(c), Some(n)) = (read(current), read(new)) else {
        return false;
    };
    if c.array != n.array {
        return false;
    }
    if c == n {
        return true;
    }
    // Widening an array's element type modifier still rewrites (the array is coerced
    // element by element).
    if c.array {
        return false;
    }
    let widens = |old: &[i64], new: &[i64]| match (old, new) {
        (_, []) => true,
        ([a], [b]) => b >= a,
        _ => false,
    };
    match (c.base.as_str(), n.base.as_str()) {
        ("varchar", "varchar") | ("varbit", "varbit") => widens(&c.mods, &n.mods),
        ("varchar", "text") => n.mods.is_empty(),
        ("text", "varchar") => n.mods.is_empty(),
        ("numeric", "numeric") => match (c.mods.as_slice(), n.mods.as_slice()) {
            (_, []) => true,
            ([p], [q]) => q >= p,
            ([p, s], [q, t]) => q >= p && s == t,
            ([p], [q, 0]) => q >= p,
            _ => false,
        },
        ("timestamp", "timestamp")
        | ("timestamptz", "timestamptz")
        | ("time", "time")
        | ("timetz", "timetz") => widens(&c.mods, &n.mods),
        ("cidr", "inet") => c.mods.is_empty() && n.mods.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::binary_coercible as bc;

    #[test]
    fn widening_varchar_is_free() {
        assert!(bc("character varying(10)", "varchar(20)"));
        assert!(bc("character varying(10)", "varchar(10)"));
        assert!(bc("character varying(10)", "text"));
        assert!(bc("character varying(10)", "varchar"));
        assert!(bc("text", "varchar"));
        assert!(bc("character varying(10)[]", "varchar(10)[]"));
        assert!(!bc("character varying(10)[]", "varchar(12)[]"));
    }

    #[test]
    fn narrowing_or_changing_rewrites() {
        assert!(!bc("character varying(20)", "varchar(10)"));
        assert!(!bc("character varying", "varchar(10)"));
        assert!(!bc("text", "varchar(10)"));
        assert!(!bc("integer", "int8"));
        assert!(!bc("character(5)", "varchar(10)"));
        assert!(!bc("character varying(10)", "text[]"));
        assert!(!bc("timestamp without time zone", "timestamptz"));
    }

    #[test]
    fn numeric_and_time_precision() {
        assert!(bc("numeric(10,2)", "numeric(12,2)"));
        assert!(bc("numeric(10,2)", "numeric"));
        assert!(bc("numeric(10,2)", "decimal(10,2)"));
        assert!(!bc("numeric(10,2)", "numeric(12,3)"));
        assert!(!bc("numeric(10,2)", "numeric(9,2)"));
        assert!(bc("timestamp(3) without time zone", "timestamp(6)"));
        assert!(!bc("timestamp(6) with time zone", "timestamptz(3)"));
        assert!(bc("cidr", "inet"));
        assert!(bc("integer", "int4"));
    }
}
