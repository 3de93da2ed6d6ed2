//! Inspector tests: one statement kind or trick per test.

use super::*;

fn ins(sql: &str) -> Inspection {
    inspect(sql, ReadAs::default())
}

fn ops(sql: &str) -> Vec<Facts> {
    let i = ins(sql);
    assert!(i.unparsed.is_none(), "{sql}: {:?}", i.unparsed);
    i.statements.into_iter().flat_map(|s| s.ops).collect()
}

fn tags(sql: &str) -> Vec<String> {
    ops(sql).into_iter().map(|o| o.tag).collect()
}

#[test]
fn splits_statements_and_tags_them() {
    assert_eq!(
        tags("SELECT 1; DROP TABLE a; drop schema s cascade; DROP DATABASE d WITH (FORCE)"),
        vec!["SELECT", "DROP TABLE", "DROP SCHEMA", "DROP DATABASE"]
    );
}

#[test]
fn names_fold_like_postgres() {
    let o = ops(r#"DROP TABLE "Foo".Bar, public."X y", U&"d\0061t\+000061""#);
    assert_eq!(o[0].objects, vec!["Foo.bar", "public.X y", "data"]);
}

#[test]
fn where_states() {
    let w = |sql: &str| ops(sql)[0].where_clause;
    assert_eq!(w("DELETE FROM t"), WhereState::Absent);
    assert_eq!(w("DELETE FROM t WHERE id = 5"), WhereState::Present);
    for t in [
        "DELETE FROM t WHERE true",
        "DELETE FROM t WHERE 1=1",
        "DELETE FROM t WHERE 'a' = 'a'",
        "DELETE FROM t WHERE x = x",
        "DELETE FROM t WHERE id = 5 OR true",
        "DELETE FROM t WHERE NOT false",
        "DELETE FROM t WHERE 't'::boolean",
        "UPDATE t SET a = 1 WHERE 1 = 1 AND 2 = 2",
    ] {
        assert_eq!(w(t), WhereState::TriviallyTrue, "{t}");
    }
    assert_eq!(w("UPDATE t SET a = 1 FROM u"), WhereState::Absent);
    // No column decides it: every row or none (random() too: fail closed).
    assert_eq!(
        w("DELETE FROM t WHERE random() = random()"),
        WhereState::TriviallyTrue
    );
}

#[test]
fn conditions_no_target_column_decides_are_every_row() {
    let w = |sql: &str| ops(sql)[0].where_clause;
    for t in [
        "DELETE FROM t WHERE 't'",
        "DELETE FROM t WHERE 'yes'::boolean",
        "DELETE FROM t WHERE 1::bool",
        "DELETE FROM t WHERE x IS NOT NULL OR x IS NULL",
        "DELETE FROM t WHERE x IS TRUE OR x IS NOT TRUE",
        "DELETE FROM t WHERE 1 IN (1)",
        "DELETE FROM t WHERE coalesce(true, false)",
        "DELETE FROM t WHERE TRUE AND TRUE",
        "DELETE FROM t WHERE (SELECT true)",
        "DELETE FROM t WHERE $1",
        "DELETE FROM t WHERE $1 = $1",
        "DELETE FROM t WHERE 1 = $1",
        "DELETE FROM t WHERE now() > '2024-01-01'",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.flag)",
        "UPDATE t SET a = u.b FROM u WHERE u.id = 5",
        "UPDATE t AS x SET a = 1 WHERE t.id = 5 OR y.id = 1",
        "DELETE FROM s.t WHERE other.id = 1",
        // A part no column decides can make the whole condition hold for every row.
        "DELETE FROM t WHERE id = 1 OR $1",
        "DELETE FROM t WHERE id = 1 OR now() > '2024-01-01'",
        "DELETE FROM t WHERE NOT (id = 1 AND $1)",
        "DELETE FROM t WHERE (id = 1 OR $1) AND (id = 2 OR $2)",
    ] {
        assert_eq!(w(t), WhereState::TriviallyTrue, "{t}");
    }
    for p in [
        "DELETE FROM t WHERE id = $1",
        "DELETE FROM t WHERE id = 42",
        "DELETE FROM t WHERE created_at < now() - interval '1 day'",
        "DELETE FROM t WHERE t.id = 1",
        "DELETE FROM s.t WHERE s.t.id = 1",
        "UPDATE t AS x SET a = 1 WHERE x.id = 5",
        "UPDATE t SET a = u.b FROM u WHERE t.id = u.id",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.tid = t.id)",
        "DELETE FROM t WHERE id IN (SELECT tid FROM u)",
        "DELETE FROM t WHERE CURRENT OF c",
        "DELETE FROM t WHERE id = 1 AND $1",
        "DELETE FROM t WHERE NOT (id = 1 OR $1)",
        "DELETE FROM t WHERE id = 1 OR false",
        // Selects no row at all.
        "DELETE FROM t WHERE false",
        "DELETE FROM t WHERE 1 = 2",
    ] {
        assert_eq!(w(p), WhereState::Present, "{p}");
    }
}

#[test]
fn merge_and_upsert_are_the_writes_they_run() {
    let implied = |sql: &str| -> Vec<(String, WhereState)> {
        ops(sql)
            .into_iter()
            .skip(1)
            .filter(|o| o.class == Class::Write)
            .map(|o| (o.tag, o.where_clause))
            .collect()
    };
    let every = WhereState::TriviallyTrue;
    assert_eq!(
        implied("MERGE INTO t USING s ON true WHEN MATCHED THEN UPDATE SET a = 1"),
        vec![("UPDATE".into(), every)]
    );
    assert_eq!(
        implied("MERGE INTO t USING s ON s.id = 1 WHEN MATCHED THEN DELETE"),
        vec![("DELETE".into(), every)]
    );
    assert_eq!(
        implied(
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a \
             WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)"
        ),
        vec![("UPDATE".into(), WhereState::Present)]
    );
    assert_eq!(
        implied("MERGE INTO t x USING s ON 1 = 1 WHEN MATCHED AND x.a > 0 THEN DELETE"),
        vec![("DELETE".into(), WhereState::Present)]
    );
    assert_eq!(
        implied("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE"),
        vec![("DELETE".into(), WhereState::Absent)]
    );
    assert_eq!(
        implied("INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET a = 0"),
        vec![("UPDATE".into(), WhereState::Absent)]
    );
    assert_eq!(
        implied(
            "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = excluded.a \
             WHERE excluded.a > 0"
        ),
        vec![("UPDATE".into(), every)]
    );
    assert_eq!(
        implied(
            "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = excluded.a \
             WHERE t.a IS DISTINCT FROM excluded.a"
        ),
        vec![("UPDATE".into(), WhereState::Present)]
    );
    assert_eq!(
        implied("INSERT INTO t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET a = excluded.a"),
        vec![("UPDATE".into(), WhereState::Present)]
    );
    assert!(implied("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING").is_empty());
    // Literals that decide the condition keep the inspection out of the shared cache.
    assert!(ins("MERGE INTO t USING s ON 'f'::bool WHEN MATCHED THEN DELETE").literal_sensitive);
}

#[test]
fn routine_set_clauses_are_sets_at_call_time() {
    let o = ops(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = pg_catalog \
         SET role = admin AS 'SELECT 1'",
    );
    let sets: Vec<&Facts> = o.iter().filter(|f| f.call_set.is_some()).collect();
    assert_eq!(sets.len(), 2);
    assert!(sets
        .iter()
        .all(|f| f.set.is_none() && f.tag == "SET" && f.nesting == Nesting::FunctionBody));
    assert_eq!(sets[1].call_set.as_ref().unwrap().name, "role");
    assert_eq!(sets[1].roles, vec!["admin"]);
    let o = ops("ALTER FUNCTION f() SET session_preload_libraries = 'x'");
    assert_eq!(
        o[1].call_set.as_ref().unwrap().name,
        "session_preload_libraries"
    );
}

#[test]
fn nested_writes_are_found() {
    let o = ops("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    assert!(o.iter().any(|f| f.tag == "DELETE"
        && f.nesting == Nesting::Cte
        && f.where_clause == WhereState::Absent));
    let o = ops("EXPLAIN ANALYZE DELETE FROM t");
    assert!(o
        .iter()
        .any(|f| f.tag == "DELETE" && f.nesting == Nesting::ExplainAnalyze));
    // Plain EXPLAIN runs nothing.
    assert!(!ops("EXPLAIN DELETE FROM t")
        .iter()
        .any(|f| f.tag == "DELETE"));
    let o = ops("COPY (DELETE FROM t RETURNING *) TO STDOUT");
    assert!(o
        .iter()
        .any(|f| f.tag == "DELETE" && f.nesting == Nesting::CopyQuery));
    let o = ops("PREPARE p AS DELETE FROM t");
    assert!(o
        .iter()
        .any(|f| f.tag == "DELETE" && f.nesting == Nesting::Prepare));
    assert_eq!(o[0].prepared_name.as_deref(), Some("p"));
}

#[test]
fn do_blocks_are_read_as_plpgsql() {
    let o = ops("DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$");
    assert_eq!(o[0].tag, "DO");
    assert!(o[0].dynamic_sql);
    let o = ops("DO $$ BEGIN DELETE FROM t; END $$");
    assert!(!o[0].dynamic_sql);
    assert!(o
        .iter()
        .any(|f| f.tag == "DELETE" && f.nesting == Nesting::DoBlock));
    let o = ops(
        "DO $$ DECLARE q text := format('DROP TABLE %I', 't'); BEGIN RAISE NOTICE '%', q; END $$",
    );
    assert!(o[0].dynamic_sql);
}

#[test]
fn copy_targets() {
    let c = |sql: &str| ops(sql)[0].copy.clone().unwrap();
    assert_eq!(c("COPY t FROM STDIN").target, CopyTarget::Client);
    assert_eq!(c("COPY t TO '/etc/passwd'").target, CopyTarget::ServerFile);
    let p = c("COPY t FROM PROGRAM 'id'");
    assert_eq!((p.from, p.target), (true, CopyTarget::Program));
}

#[test]
fn copy_from_stdin_then_drop_is_two_statements() {
    // DESIGN: a parser that treats what follows COPY ... FROM STDIN; as data misses the DROP.
    assert_eq!(
        tags("COPY t FROM STDIN;\nDROP TABLE t"),
        vec!["COPY", "DROP TABLE"]
    );
}

#[test]
fn set_and_roles() {
    let o = ops("SET ROLE admin");
    assert_eq!(o[0].set.as_ref().unwrap().name, "role");
    assert_eq!(o[0].roles, vec!["admin"]);
    let o = ops("SET SESSION AUTHORIZATION bob");
    assert_eq!(o[0].set.as_ref().unwrap().name, "session_authorization");
    let o = ops("set local standard_conforming_strings to off");
    let s = o[0].set.clone().unwrap();
    assert_eq!(
        (s.name.as_str(), s.value.as_deref(), s.local),
        ("standard_conforming_strings", Some("off"), true)
    );
    let o = ops("SELECT set_config('role', 'admin', false)");
    assert!(o
        .iter()
        .any(|f| f.set.as_ref().is_some_and(|s| s.name == "role") && f.roles == vec!["admin"]));
    let o = ops("SET pgwarden.ticket = 'CHG-1'");
    assert_eq!(o[0].set.as_ref().unwrap().value.as_deref(), Some("CHG-1"));
    assert_eq!(ops("RESET ALL")[0].set.as_ref().unwrap().name, "all");
}

#[test]
fn functions_at_any_depth() {
    let i = ins("SELECT (SELECT pg_catalog.pg_read_file('x') WHERE EXISTS (SELECT set_config('role','a',false)))");
    let f = &i.statements[0].functions;
    assert!(f.contains(&"pg_catalog.pg_read_file".to_owned()), "{f:?}");
    assert!(f.contains(&"set_config".to_owned()));
}

#[test]
fn alter_table_subcommands_and_cascade() {
    let o = ops("ALTER TABLE ONLY t DROP COLUMN a, DROP CONSTRAINT c CASCADE, DISABLE TRIGGER ALL");
    assert_eq!(o[0].tag, "ALTER TABLE");
    assert_eq!(
        o[0].subcommands,
        vec!["DROP COLUMN", "DROP CONSTRAINT", "DISABLE TRIGGER ALL"]
    );
    assert!(o[0].has(Flag::Cascade) && o[0].has(Flag::Only));
}

#[test]
fn grants_name_public() {
    let o = ops("GRANT SELECT ON t TO PUBLIC");
    assert_eq!(o[0].roles, vec!["public"]);
    let o = ops("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO public");
    assert_eq!(o[0].roles, vec!["public"]);
}

#[test]
fn grammar_errors_fail_closed() {
    let i = ins("DELET FROM t");
    let reason = i.unparsed.expect("unparsed").reason;
    assert_eq!(
        reason,
        "PostgreSQL's grammar rejects this text: syntax error at or near \"DELET\"."
    );
    let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(ins(&deep).unparsed.is_some());
    let big = format!("SELECT '{}'", "x".repeat(MAX_TEXT_BYTES));
    assert!(ins(&big).unparsed.is_some());
}

#[test]
fn backslashes_read_as_the_server_reads_them() {
    // With standard_conforming_strings off, \' does not end the string: what looks like a
    // harmless literal to a conforming reader hides a DROP (or the reverse).
    let sql = r"SELECT 'a\'; DROP TABLE t; --'";
    let on = inspect(
        sql,
        ReadAs {
            standard_conforming_strings: true,
        },
    );
    assert_eq!(
        on.statements.len(),
        2,
        "conforming: the DROP is a statement"
    );
    let off = inspect(
        sql,
        ReadAs {
            standard_conforming_strings: false,
        },
    );
    assert_eq!(
        off.statements.len(),
        1,
        "non-conforming: all one string literal"
    );
}

#[test]
fn ticket_comments() {
    let i = ins("/* pgwarden:ticket=CHG-42 */ DROP TABLE t; SELECT 1 -- pgwarden:ticket=OPS-7\n");
    assert_eq!(i.statements[0].tickets, vec!["CHG-42"]);
    assert_eq!(i.statements[1].tickets, vec!["OPS-7"]);
    // Not in a comment: a string literal is not an annotation.
    let i = ins("SELECT 'pgwarden:ticket=FAKE'");
    assert!(i.statements[0].tickets.is_empty());
}

#[test]
fn cache_returns_the_same_inspection() {
    let c = cache::InspectCache::new(2);
    let a = c.inspect("SELECT 1", ReadAs::default());
    let b = c.inspect("SELECT 1", ReadAs::default());
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    c.inspect("SELECT 2", ReadAs::default());
    c.inspect("SELECT 3", ReadAs::default());
    assert!(c.len() <= 2);
}

const MORE_TRIVIALLY_TRUE: &[&str] = &[
    "DELETE FROM t WHERE 2 > 1",
    "DELETE FROM t WHERE -1 <= 0",
    "DELETE FROM t WHERE NULL IS NULL",
    "DELETE FROM t WHERE x IN (y, x)",
    "DELETE FROM t WHERE x IS NOT DISTINCT FROM x",
    "DELETE FROM t WHERE 1 IS NOT DISTINCT FROM 1",
    "DELETE FROM t WHERE true IS TRUE",
    "DELETE FROM t WHERE (1 = 0) IS NOT TRUE",
    "DELETE FROM t WHERE (x = x) IS NOT FALSE",
    "UPDATE t SET a = 1 WHERE id = 3 OR 1 < 2",
];

#[test]
fn more_trivially_true_forms() {
    let w = |sql: &str| ops(sql)[0].where_clause;
    for t in MORE_TRIVIALLY_TRUE {
        assert_eq!(w(t), WhereState::TriviallyTrue, "{t}");
    }
    // Undecided by their literals, but no column decides them either: every row or none,
    // whatever the literals (so the cache may share them).
    for t in [
        "DELETE FROM t WHERE '10' > '9'",
        "DELETE FROM t WHERE 1 IN (1, 2)",
        "DELETE FROM t WHERE 1 BETWEEN 0 AND 2",
        "DELETE FROM t WHERE 't'::bool IS TRUE",
        "DELETE FROM t WHERE x IN (1, 2) OR 1 IN (1, 2)",
    ] {
        assert_eq!(w(t), WhereState::TriviallyTrue, "{t}");
    }
    for p in [
        "DELETE FROM t WHERE 1 > 2",
        "DELETE FROM t WHERE x > 1",
        "DELETE FROM t WHERE x IN (1, 2)",
        "DELETE FROM t WHERE x NOT IN (y, x)",
        "DELETE FROM t WHERE x IS DISTINCT FROM x",
        "DELETE FROM t WHERE x IS NOT DISTINCT FROM y",
        "DELETE FROM t WHERE x IS TRUE",
        "DELETE FROM t WHERE NULL IS NOT NULL",
    ] {
        assert_eq!(w(p), WhereState::Present, "{p}");
    }
}

#[test]
fn cache_never_shares_a_literal_decided_where() {
    // The inspection cache shares one inspection among texts that differ only in literals
    // unless the inspection is marked literal-sensitive. Every trivially-true form must be
    // either literal-free or marked, or `WHERE 1 < 2` would lend its facts to `WHERE 2 < 1`
    // (or the reverse: a harmless text cached first would let the every-row one through).
    for sql in MORE_TRIVIALLY_TRUE.iter().chain(&[
        "DELETE FROM t WHERE true",
        "DELETE FROM t WHERE 1=1",
        "DELETE FROM t WHERE 'a' = 'a'",
        "DELETE FROM t WHERE id = 5 OR true",
        "DELETE FROM t WHERE NOT false",
        "DELETE FROM t WHERE 't'::boolean",
        "DELETE FROM t WHERE 5 IS NOT NULL",
    ]) {
        let i = ins(sql);
        let literal_free = normalize::key(sql).as_deref() == Some(*sql);
        assert!(literal_free || i.literal_sensitive, "{sql}");
    }
}

#[test]
fn do_blocks_in_other_languages_count_as_dynamic() {
    // pgwarden reads PL/pgSQL only: a body in any other language may run any SQL.
    let o = ops("DO LANGUAGE plpython3u $$ plpy.execute('DROP TABLE t') $$");
    assert_eq!(o[0].tag, "DO");
    assert!(o[0].dynamic_sql);
    assert!(ops("DO $$ BEGIN PERFORM 1; END $$ LANGUAGE plperl")[0].dynamic_sql);
    assert!(!ops("DO LANGUAGE plpgsql $$ BEGIN PERFORM 1; END $$")[0].dynamic_sql);
}

#[test]
fn cascade_on_revoke_role_and_alter_domain() {
    let o = ops("REVOKE admin FROM bob CASCADE");
    assert_eq!(o[0].tag, "REVOKE ROLE");
    assert!(o[0].has(Flag::Cascade));
    assert!(!ops("REVOKE admin FROM bob")[0].has(Flag::Cascade));
    let o = ops("ALTER DOMAIN s.d DROP CONSTRAINT c CASCADE");
    assert_eq!(
        (o[0].tag.as_str(), o[0].objects.clone()),
        ("ALTER DOMAIN", vec!["s.d".to_owned()])
    );
    assert!(o[0].has(Flag::Cascade));
    assert!(!ops("ALTER DOMAIN d DROP CONSTRAINT c")[0].has(Flag::Cascade));
}

#[test]
fn default_privileges_and_policies_say_which_way() {
    let o = ops("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC");
    assert_eq!(o[0].subcommands, vec!["GRANT"]);
    let o = ops("ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM PUBLIC");
    assert_eq!(o[0].subcommands, vec!["REVOKE"]);
    assert_eq!(o[0].roles, vec!["public"]);
    let o = ops("CREATE POLICY p ON t USING (true)");
    assert_eq!(o[0].subcommands, vec!["PERMISSIVE"]);
    assert_eq!(o[0].roles, vec!["public"]);
    let o = ops("CREATE POLICY p ON t AS RESTRICTIVE TO bob USING (true)");
    assert_eq!(o[0].subcommands, vec!["RESTRICTIVE"]);
}

#[test]
fn client_encoding_names_are_canonical() {
    let v = |sql: &str| ops(sql).into_iter().find_map(|o| o.set).unwrap().value;
    for sql in [
        "SET client_encoding = 'SJIS'",
        "SET client_encoding TO 'Shift-JIS'",
        "set names 'ms_kanji'",
        "SET CLIENT_ENCODING = 'win932'",
        "SELECT set_config('client_encoding', 's-j-i-s', false)",
    ] {
        assert_eq!(v(sql).as_deref(), Some("SJIS"), "{sql}");
    }
    assert_eq!(v("SET NAMES 'utf-8'").as_deref(), Some("UTF8"));
    assert_eq!(
        v("SET client_encoding = 'Unicode'").as_deref(),
        Some("UTF8")
    );
    assert_eq!(
        v("SET client_encoding = 'iso-8859-1'").as_deref(),
        Some("LATIN1")
    );
    // A name PostgreSQL rejects is reported as written (the server refuses it anyway).
    assert_eq!(
        v("SET client_encoding = 'klingon'").as_deref(),
        Some("klingon")
    );
    assert_eq!(v("SET client_encoding TO DEFAULT"), None);
    // Other settings are not touched.
    assert_eq!(v("SET application_name = 'sjis'").as_deref(), Some("sjis"));
}

#[test]
fn set_config_with_a_computed_value_is_unknown() {
    let s = |sql: &str| ops(sql).into_iter().find_map(|o| o.set).unwrap();
    let x = s("SELECT set_config('standard_conforming_strings', current_setting('my.v'), false)");
    assert_eq!(
        (x.name.as_str(), x.value.as_deref()),
        ("standard_conforming_strings", Some("*"))
    );
    let o = ops("SELECT set_config('role', lower('POSTGRES'), false)");
    assert!(o.iter().any(|f| f.roles == vec!["*"]));
}

#[test]
fn function_bodies_are_compiled_with_their_own_signature() {
    // A body that returns a value or assigns to a parameter does not compile as the
    // parameterless `RETURNS void` wrapper DO blocks use; it must not count as dynamic.
    let dynamic = |sql: &str| ops(sql)[0].dynamic_sql;
    assert!(!dynamic(
        "CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN a := a + 1; RETURN a + b; END $$"
    ));
    assert!(!dynamic(
        "CREATE FUNCTION f(x int) RETURNS TABLE (id int, name text) LANGUAGE plpgsql AS $$ BEGIN id := x; name := 'a'; RETURN NEXT; RETURN QUERY SELECT 1, 'b'; END $$"
    ));
    assert!(!dynamic(
        r#"CREATE FUNCTION g(OUT a int, INOUT "B" text) LANGUAGE plpgsql AS $$ BEGIN a := 1; "B" := "B" || 'x'; END $$"#
    ));
    assert!(dynamic(
        "CREATE FUNCTION f(x int) RETURNS TABLE (id int) LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY EXECUTE 'SELECT 1'; END $$"
    ));
    assert!(dynamic(
        "CREATE PROCEDURE p(INOUT n int) LANGUAGE plpgsql AS $$ BEGIN n := n + 1; EXECUTE 'SELECT 1'; END $$"
    ));
    assert!(dynamic(
        "CREATE FUNCTION h() RETURNS int LANGUAGE plpgsql AS $$ DECLARE c refcursor; BEGIN OPEN c FOR EXECUTE 'SELECT 1'; RETURN 1; END $$"
    ));
    // A body that does not compile at all still fails closed.
    assert!(dynamic(
        "CREATE FUNCTION k() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1 $$"
    ));
    // Not PL/pgSQL: not read, not flagged (other rules judge the language).
    assert!(!dynamic(
        "CREATE FUNCTION s() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    ));
}

fn attrs(sql: &str) -> Vec<String> {
    ops(sql).into_iter().flat_map(|o| o.attributes).collect()
}

fn has(sql: &str, word: &str) -> bool {
    attrs(sql).iter().any(|a| a == word)
}

#[test]
fn constraint_attributes_say_what_is_validated_or_indexed() {
    let sql = "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID, \
               ADD CONSTRAINT f FOREIGN KEY (b) REFERENCES u ON DELETE CASCADE";
    for w in [
        "constraint:check",
        "not_valid",
        "constraint:foreign_key",
        "validate:foreign_key",
        "on_delete_cascade",
    ] {
        assert!(has(sql, w), "{w}");
    }
    assert!(!has(sql, "validate:check"));
    assert!(has("ALTER TABLE t ADD UNIQUE (a)", "builds_index:unique"));
    let using = "ALTER TABLE t ADD CONSTRAINT p PRIMARY KEY USING INDEX i";
    assert!(has(using, "using_index") && has(using, "has_primary_key"));
    assert!(!has(using, "builds_index:primary_key"));
    assert!(has(
        "ALTER TABLE t ADD EXCLUDE USING gist (r WITH &&)",
        "builds_index:exclusion"
    ));
    assert!(has(
        "ALTER DOMAIN d ADD CHECK (VALUE > 0)",
        "validate:check"
    ));
    assert!(!has(
        "ALTER TABLE t ADD FOREIGN KEY (b) REFERENCES u NOT VALID",
        "validate:foreign_key"
    ));
}

#[test]
fn add_column_attributes() {
    let a = attrs(
        "ALTER TABLE t ADD COLUMN a uuid DEFAULT gen_random_uuid(), \
         ADD COLUMN b timestamptz NOT NULL DEFAULT now(), ADD COLUMN c int NOT NULL, \
         ADD COLUMN d bigserial, ADD COLUMN e int GENERATED ALWAYS AS (1) STORED, \
         ADD COLUMN f int GENERATED ALWAYS AS IDENTITY, ADD COLUMN g int GENERATED ALWAYS AS (2)",
    );
    for w in [
        "column_default",
        "default_volatile",
        "column_not_null",
        "column_required",
        "column_type:int4",
        "column_type:bigserial",
        "serial",
        "generated_stored",
        "generated_virtual",
        "identity",
    ] {
        assert!(a.iter().any(|x| x == w), "{w}: {a:?}");
    }
    assert!(!has(
        "ALTER TABLE t ADD COLUMN b timestamptz DEFAULT now()",
        "default_volatile"
    ));
    assert!(!has(
        "ALTER TABLE t ADD COLUMN b int NOT NULL DEFAULT 0",
        "column_required"
    ));
    assert!(has(
        "ALTER TABLE t ADD COLUMN b bigint DEFAULT nextval('s')",
        "default_volatile"
    ));
    assert!(has(
        "ALTER TABLE t ALTER COLUMN a TYPE varchar(20)",
        "column_type:varchar(20)"
    ));
    assert!(has(
        "ALTER TABLE t ALTER COLUMN a DROP DEFAULT",
        "drop_default"
    ));
    assert!(has("ALTER DOMAIN d DROP DEFAULT", "drop_default"));
}

#[test]
fn create_table_attributes() {
    let a = attrs(
        "CREATE TABLE x (id int PRIMARY KEY, n varchar(255), c char, ts timestamp, j json, \
         m money, user_id integer REFERENCES u)",
    );
    for w in [
        "has_primary_key",
        "id_column_type:int4",
        "column_type:varchar(255)",
        "column_type:bpchar(1)",
        "column_type:timestamp",
        "column_type:json",
        "column_type:money",
        "constraint:foreign_key",
    ] {
        assert!(a.iter().any(|x| x == w), "{w}: {a:?}");
    }
    assert!(!a.iter().any(|x| x.starts_with("validate:")));
    assert!(has(
        "CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)",
        "partition_of"
    ));
    assert!(has(
        "CREATE TABLE y (a text, PRIMARY KEY (a))",
        "has_primary_key"
    ));
    assert!(has("CREATE TABLE y (LIKE z)", "like"));
    assert!(has("CREATE TABLE y OF some_type", "of_type"));
    assert!(has("CREATE TABLE c () INHERITS (p)", "inherits"));
    let long = format!("CREATE TABLE {} (a int)", "x".repeat(70));
    assert!(has(&long, "identifier_too_long"));
    assert!(!has("CREATE TABLE short (a int)", "identifier_too_long"));
}

#[test]
fn lock_and_maintenance_facts() {
    assert!(has("LOCK TABLE t", "lock_mode:access exclusive"));
    let o = ops("LOCK t, u IN SHARE MODE NOWAIT");
    assert_eq!(o[0].objects, vec!["t", "u"]);
    assert!(o[0].attributes.contains(&"lock_mode:share".to_owned()));
    assert!(o[0].attributes.contains(&"nowait".to_owned()));
    assert_eq!(ops("VACUUM FULL t, u")[0].objects, vec!["t", "u"]);
    let o = ops("CLUSTER t USING i");
    assert_eq!(
        (o[0].tag.as_str(), o[0].objects.clone()),
        ("CLUSTER", vec!["t".to_owned()])
    );
    let o = ops("REINDEX INDEX CONCURRENTLY i");
    assert!(o[0].has(Flag::Concurrently) && o[0].attributes.contains(&"reindex:index".into()));
    assert!(ops("ALTER TABLE t DETACH PARTITION p CONCURRENTLY")[0].has(Flag::Concurrently));
}

#[test]
fn role_and_grant_attributes() {
    let o = ops("CREATE ROLE r SUPERUSER NOCREATEROLE LOGIN PASSWORD 'secret' IN ROLE pg_monitor");
    assert_eq!(o[0].roles, vec!["r"]);
    for w in [
        "role_attribute:superuser",
        "role_attribute:nocreaterole",
        "role_attribute:login",
        "role_attribute:password",
        "member_of:pg_monitor",
    ] {
        assert!(o[0].attributes.contains(&w.to_owned()), "{w}");
    }
    // The password itself is in no fact.
    assert!(!format!("{:?}", o[0]).contains("secret"));
    assert!(has(
        "ALTER ROLE r REPLICATION BYPASSRLS",
        "role_attribute:bypassrls"
    ));
    let a = attrs("GRANT ALL ON ALL TABLES IN SCHEMA s TO bob WITH GRANT OPTION");
    for w in [
        "all_privileges",
        "all_in_schema",
        "all_tables_in_schema",
        "with_grant_option",
        "object_type:table",
    ] {
        assert!(a.iter().any(|x| x == w), "{w}");
    }
    let a = attrs("GRANT CREATE ON SCHEMA s TO bob");
    assert!(a.contains(&"privilege:create".into()) && a.contains(&"object_type:schema".into()));
    assert!(has("GRANT admin TO bob WITH ADMIN OPTION", "admin_option"));
    assert!(!has(
        "REVOKE GRANT OPTION FOR SELECT ON t FROM bob",
        "with_grant_option"
    ));
}

#[test]
fn function_extension_and_cast_facts() {
    assert!(has(
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib', 'f'",
        "language:c"
    ));
    assert!(has(
        "CREATE FUNCTION f() RETURNS int RETURN 1",
        "language:sql"
    ));
    let a = attrs(
        "CREATE FUNCTION f() RETURNS int SECURITY DEFINER SET search_path = pg_catalog \
         LANGUAGE sql AS 'select 1'",
    );
    for w in ["security_definer", "set_search_path", "set:search_path"] {
        assert!(a.iter().any(|x| x == w), "{w}");
    }
    let o = ops("ALTER FUNCTION f(int) SECURITY DEFINER");
    assert_eq!(o[0].tag, "ALTER FUNCTION");
    assert!(o[0].attributes.contains(&"security_definer".into()));
    assert!(!has(
        "ALTER FUNCTION f() RESET search_path",
        "set_search_path"
    ));
    assert!(has(
        "CREATE CAST (a AS b) WITHOUT FUNCTION",
        "without_function"
    ));
    assert!(has("CREATE CAST (a AS b) WITH INOUT", "with_inout"));
    assert_eq!(ops("CREATE LANGUAGE plperlu")[0].objects, vec!["plperlu"]);
    let o = ops("CREATE LANGUAGE pls HANDLER h");
    assert_eq!(
        (o[0].tag.as_str(), o[0].objects.clone()),
        ("CREATE LANGUAGE", vec!["pls".to_owned()])
    );
}

#[test]
fn statement_tags_and_objects_of_newly_named_kinds() {
    let t = |sql: &str| {
        let o = ops(sql);
        (
            o[0].tag.clone(),
            o[0].subcommands.clone(),
            o[0].objects.clone(),
        )
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        t("CREATE TRIGGER tr AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()").0,
        "CREATE TRIGGER"
    );
    assert_eq!(
        t("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()").0,
        "CREATE EVENT TRIGGER"
    );
    assert_eq!(
        t("CREATE SERVER s FOREIGN DATA WRAPPER w").0,
        "CREATE SERVER"
    );
    assert_eq!(t("ALTER SEQUENCE s RESTART").0, "ALTER SEQUENCE");
    assert_eq!(t("CREATE DATABASE d").0, "CREATE DATABASE");
    assert_eq!(
        t("CREATE TABLESPACE ts LOCATION '/x'").0,
        "CREATE TABLESPACE"
    );
    assert_eq!(
        t("ALTER TYPE e ADD VALUE 'x'"),
        ("ALTER TYPE".into(), s(&["ADD VALUE"]), s(&["e"]))
    );
    assert_eq!(
        t("ALTER TABLE t SET SCHEMA s"),
        ("ALTER TABLE".into(), s(&["SET SCHEMA"]), s(&["t"]))
    );
    assert_eq!(
        t("ALTER FUNCTION f() OWNER TO bob"),
        ("ALTER FUNCTION".into(), s(&["OWNER TO"]), s(&["f"]))
    );
    assert_eq!(t("ALTER EXTENSION e ADD TABLE t").0, "ALTER EXTENSION");
    assert_eq!(t("ALTER DOMAIN d DROP NOT NULL").1, s(&["DROP NOT NULL"]));
    let r = t("CREATE OR REPLACE RULE r AS ON INSERT TO t DO NOTHING");
    assert_eq!((r.0.as_str(), r.2), ("CREATE RULE", s(&["t"])));
    assert!(ops(
        "CREATE OR REPLACE TRIGGER tr AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()"
    )[0]
    .has(Flag::OrReplace));
    // The table definition inside CREATE FOREIGN TABLE is not a CREATE TABLE of its own.
    assert_eq!(
        tags("CREATE FOREIGN TABLE ft (a int) SERVER s"),
        vec!["CREATE FOREIGN TABLE"]
    );
    assert_eq!(ops("REASSIGN OWNED BY a TO b")[0].roles, vec!["a", "b"]);
    assert_eq!(ops("ALTER SCHEMA s RENAME TO t")[0].objects, vec!["s"]);
}

#[test]
fn routine_bodies_are_inspected_as_what_they_run() {
    let body_ops = |sql: &str| -> Vec<(String, Nesting)> {
        ops(sql)
            .into_iter()
            .skip(1)
            .map(|o| (o.tag, o.nesting))
            .collect()
    };
    let fb = Nesting::FunctionBody;
    assert_eq!(
        body_ops("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ DROP TABLE users $$"),
        vec![("DROP TABLE".into(), fb)]
    );
    assert_eq!(
        body_ops(
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC DELETE FROM users; UPDATE t SET a = 1 WHERE id = 1; END"
        ),
        vec![("DELETE".into(), fb), ("UPDATE".into(), fb)]
    );
    assert!(body_ops("CREATE FUNCTION f() RETURNS int RETURN (SELECT count(*) FROM t)").is_empty());
    assert_eq!(
        body_ops(
            "CREATE OR REPLACE FUNCTION f(n int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN TRUNCATE big; RETURN n; END $$"
        ),
        vec![("TRUNCATE TABLE".into(), fb)]
    );
    // Trigger functions compile with NEW / OLD.
    let o = ops("CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit_log VALUES (NEW.id, now()); NEW.touched := now(); RETURN NEW; END $$");
    assert!(!o[0].attributes.iter().any(|a| a == "body_unreadable"));
    assert!(!o[0].dynamic_sql);
    assert_eq!(o[1].tag, "INSERT");
    // A SET in a body is a SET at call time, not a session change now.
    let o = ops("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ SET role admin $$");
    assert!(o[1].set.is_none() && o[1].call_set.is_some());
    // Functions called in a body count.
    let s = &ins(
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/passwd') $$",
    )
    .statements[0];
    assert!(s.functions.iter().any(|f| f == "pg_read_file"));
    // A body PostgreSQL's grammar rejects is refused.
    assert!(
        ins("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ DELET FROM t $$")
            .unparsed
            .is_some()
    );
}

#[test]
fn functions_named_by_definitions_count_as_called() {
    let f = |sql: &str| ins(sql).statements[0].functions.clone();
    assert!(
        f("CREATE OPERATOR !!! (FUNCTION = pg_read_file, RIGHTARG = text)")
            .contains(&"pg_read_file".to_string())
    );
    assert!(
        f("CREATE AGGREGATE a(text) (SFUNC = pg_catalog.pg_ls_dir, STYPE = text)")
            .contains(&"pg_catalog.pg_ls_dir".to_string())
    );
    assert!(f("CREATE CAST (text AS int) WITH FUNCTION lo_import(text)")
        .contains(&"lo_import".to_string()));
    assert!(f("GRANT EXECUTE ON FUNCTION pg_read_file(text) TO app")
        .contains(&"pg_read_file".to_string()));
    assert!(f("CREATE FUNCTION f(p text DEFAULT pg_read_file('/x')) RETURNS text LANGUAGE sql AS 'SELECT p'")
        .contains(&"pg_read_file".to_string()));
    assert!(f("REVOKE EXECUTE ON FUNCTION pg_read_file(text) FROM app").is_empty());
}

#[test]
fn everyday_plpgsql_bodies_are_read_without_refusal() {
    let sql = r#"CREATE OR REPLACE FUNCTION place_order(p_customer bigint, p_items jsonb)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
  v_id bigint;
  v_n int;
  r record;
BEGIN
  SELECT count(*) INTO v_n FROM orders WHERE customer_id = p_customer;
  INSERT INTO orders (customer_id, n) VALUES (p_customer, v_n + 1) RETURNING id INTO v_id;
  FOR r IN SELECT * FROM jsonb_array_elements(p_items) LOOP
    INSERT INTO order_items (order_id, item) VALUES (v_id, r.value);
  END LOOP;
  PERFORM pg_notify('orders', v_id::text);
  GET DIAGNOSTICS v_n = ROW_COUNT;
  UPDATE customers SET last_order = now() WHERE id = p_customer;
  IF NOT FOUND THEN RAISE EXCEPTION 'no customer %', p_customer; END IF;
  RETURN v_id;
EXCEPTION WHEN unique_violation THEN
  RETURN NULL;
END
$fn$"#;
    let i = ins(sql);
    assert!(i.unparsed.is_none(), "{:?}", i.unparsed);
    let o = &i.statements[0].ops;
    assert!(!o[0].dynamic_sql);
    assert!(!o[0].attributes.iter().any(|a| a == "body_unreadable"));
    assert!(o
        .iter()
        .filter(|f| f.class == Class::Write)
        .all(
            |f| f.where_clause != WhereState::Absent && f.where_clause != WhereState::TriviallyTrue
        ));
    let sql = "CREATE FUNCTION rows_of(p int) RETURNS SETOF orders LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY SELECT * FROM orders WHERE id > p; END $$";
    assert!(ins(sql).unparsed.is_none());
}

#[test]
fn unparsed_bodies_say_where() {
    let r = ins("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ DELET FROM t $$")
        .unparsed
        .unwrap()
        .reason;
    assert_eq!(
        r,
        "In a routine's body: PostgreSQL's grammar rejects this text: syntax error at or near \"DELET\"."
    );
    let f = |sql: &str| ins(sql).statements[0].functions.clone();
    assert!(
        f("ALTER OPERATOR === (int, int) SET (RESTRICT = pg_ls_dir)")
            .contains(&"pg_ls_dir".to_string())
    );
    assert!(f("CREATE TYPE t (INPUT = pg_read_file, OUTPUT = textout)")
        .contains(&"pg_read_file".to_string()));
}

#[test]
fn queries_of_plpgsql_loops_and_returns_are_statements() {
    let writes = |sql: &str| -> Vec<(String, WhereState)> {
        ops(sql)
            .into_iter()
            .filter(|o| o.class == Class::Write)
            .map(|o| (o.tag, o.where_clause))
            .collect()
    };
    assert_eq!(
        writes("DO $$ DECLARE r record; BEGIN FOR r IN DELETE FROM t RETURNING * LOOP END LOOP; END $$"),
        vec![("DELETE".into(), WhereState::Absent)]
    );
    assert_eq!(
        writes("CREATE FUNCTION f() RETURNS SETOF t LANGUAGE plpgsql AS $$ BEGIN RETURN QUERY WITH d AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM d; END $$"),
        vec![("UPDATE".into(), WhereState::Absent)]
    );
    let o = ops("DO $$ BEGIN PERFORM set_config('role', 'admin', false); END $$");
    assert!(o
        .iter()
        .any(|f| f.set.as_ref().is_some_and(|s| s.name == "role")));
}

#[test]
fn routine_bodies_change_nothing_of_the_session_now() {
    let o = ops("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t VALUES (1); COMMIT; ROLLBACK; LOCK TABLE t; END $$");
    let tags: Vec<&str> = o.iter().map(|f| f.tag.as_str()).collect();
    assert_eq!(tags, vec!["CREATE PROCEDURE", "INSERT", "LOCK TABLE"]);
    let o = ops("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ PREPARE q AS SELECT 1 $$");
    assert!(o.iter().all(|f| f.prepared_name.is_none()));
    // A DO block runs now: its prepared statements are the session's.
    let o = ops("DO $$ BEGIN PREPARE q AS SELECT 1; END $$");
    assert!(o.iter().any(|f| f.prepared_name.as_deref() == Some("q")));
}

#[test]
fn a_statement_over_the_token_budget_is_refused_and_many_small_ones_are_not() {
    // 40,000 rows of three values: some 320,000 tokens in one statement.
    let rows: Vec<String> = (0..40_000).map(|i| format!("({i},{i},'x')")).collect();
    let big = format!("INSERT INTO t (a, b, c) VALUES {}", rows.join(","));
    let i = ins(&big);
    assert!(i
        .unparsed
        .as_ref()
        .is_some_and(|u| u.reason.contains("inspection limit")));
    // The same rows as 40,000 statements are inspected, each on its own, in linear time.
    let many: String = (0..40_000)
        .map(|i| format!("INSERT INTO t (a, b, c) VALUES ({i},{i},'x');\n"))
        .collect();
    let i = ins(&many);
    assert!(i.unparsed.is_none());
    assert_eq!(i.statements.len(), 40_000);
    let none = Default::default();
    let mut walk = crate::sql::facts::CreatedWalk::new(&i, &none);
    for s in 0..i.statements.len() {
        assert!(walk.at(s).is_none());
    }
    // A function body too: one huge statement inside it is over the budget.
    let body = format!("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $b$ {big} $b$");
    assert!(ins(&body).unparsed.is_some());
}

#[test]
fn created_at_resumes_and_restarts_correctly() {
    let i = ins("CREATE TABLE a (x int); SELECT 1; DROP TABLE a; CREATE TABLE b (x int); SELECT 2");
    let none = std::collections::HashSet::new();
    let at = |n: usize| i.created_at(n, &none).unwrap_or_default();
    assert!(at(1).contains("a"));
    assert!(!at(3).contains("a"));
    assert!(at(4).contains("b"));
    // Asked again for an earlier statement, and for another session's set.
    assert!(at(2).contains("a"));
    let mut other = std::collections::HashSet::new();
    other.insert("c".to_owned());
    assert!(i.created_at(4, &other).unwrap().contains("c"));
    assert!(!at(4).contains("c"));
}

#[test]
fn plpgsql_assignments_and_sql_text_are_inspected() {
    let f = |sql: &str| {
        ins(sql)
            .statements
            .into_iter()
            .flat_map(|s| s.functions)
            .collect::<Vec<_>>()
    };
    assert!(
        f("DO $$ DECLARE x int; BEGIN x := (SELECT count(*) FROM pg_ls_dir('.')); END $$")
            .iter()
            .any(|n| n == "pg_ls_dir")
    );
    assert!(
        f("SELECT query_to_xml('SELECT pg_read_file(''x'')', true, false, '')")
            .iter()
            .any(|n| n == "pg_read_file")
    );
    let o = ops("SELECT query_to_xml($1, true, false, '')");
    assert!(o.iter().any(|f| f.tag == "SQL STRING" && f.dynamic_sql));
    let o =
        ops("SELECT query_to_xml('SELECT set_config(''role'', ''x'', false)', true, false, '')");
    assert!(o.iter().any(
        |f| f.set.as_ref().is_some_and(|s| s.name == "role") && f.nesting == Nesting::TopLevel
    ));
}
