use std::collections::HashSet;

use super::client::rows_written;
use super::*;
use crate::sql::{inspect, ReadAs};

const ALL: Needs = Needs {
    sizes: true,
    proofs: true,
    roles: true,
    extensions: true,
    estimates: true,
};

fn ins(sql: &str) -> Inspection {
    inspect(sql, ReadAs::default())
}

fn rel(name: &str) -> Question {
    Question::Lookup(Lookup::Relation { name: name.into() })
}

fn size(rows: f64) -> Answer {
    Answer::Relation(RelationSize {
        rows,
        bytes: 0,
        partitioned: false,
    })
}

fn attrs(i: &Inspection, stmt: usize) -> Vec<String> {
    i.statements[stmt].ops[0].attributes.clone()
}

#[test]
fn questions_follow_what_the_policy_reads() {
    let i = ins("CREATE INDEX ON s.orders (a)");
    assert_eq!(questions(&i, ALL, &HashSet::new()), vec![rel("s.orders")]);
    assert!(questions(&i, Needs::default(), &HashSet::new()).is_empty());
    let only_roles = Needs {
        roles: true,
        ..Needs::default()
    };
    assert!(questions(&i, only_roles, &HashSet::new()).is_empty());
    // Reads and plain inserts raise none: the hot path never waits for the catalog.
    assert!(questions(&ins("SELECT * FROM orders"), ALL, &HashSet::new()).is_empty());
    assert!(questions(&ins("INSERT INTO t VALUES (1)"), ALL, &HashSet::new()).is_empty());
    assert_eq!(
        questions(&ins("INSERT INTO t SELECT * FROM u"), ALL, &HashSet::new()),
        vec![Question::Estimate(0)]
    );
    assert_eq!(
        questions(
            &ins("WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d"),
            ALL,
            &HashSet::new()
        ),
        vec![Question::Estimate(0)]
    );
    // Statements that cannot be EXPLAINed as written are not estimated.
    assert_eq!(
        questions(
            &ins("EXPLAIN ANALYZE UPDATE t SET a = 1"),
            ALL,
            &HashSet::new()
        ),
        vec![Question::Estimate(0)]
    );
    // PREPARE is explained with its generic plan.
    assert_eq!(
        questions(
            &ins("PREPARE p AS DELETE FROM t WHERE a > $1"),
            ALL,
            &HashSet::new()
        ),
        vec![Question::Estimate(0)]
    );
    for sql in [
        "EXPLAIN UPDATE t SET a = 1",
        "COPY (DELETE FROM t RETURNING *) TO STDOUT",
        "DO $$ BEGIN DELETE FROM t; END $$",
    ] {
        assert!(
            questions(&ins(sql), ALL, &HashSet::new()).is_empty(),
            "{sql}"
        );
    }
}

#[test]
fn foreign_keys_ask_about_both_tables_and_indexes_about_their_table() {
    let q = questions(
        &ins("ALTER TABLE a ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES public.b (id)"),
        ALL,
        &HashSet::new(),
    );
    assert_eq!(q, vec![rel("a"), rel("public.b")]);
    let q = questions(&ins("DROP INDEX i"), ALL, &HashSet::new());
    assert_eq!(
        q,
        vec![Question::Lookup(Lookup::Index { name: "i".into() })]
    );
    let q = questions(&ins("REINDEX INDEX i"), ALL, &HashSet::new());
    assert_eq!(
        q,
        vec![Question::Lookup(Lookup::Index { name: "i".into() })]
    );
}

#[test]
fn created_tables_are_not_asked_about() {
    let created: HashSet<String> = ["t".to_string()].into();
    assert!(questions(&ins("CREATE INDEX ON t (a)"), ALL, &created).is_empty());
    // Created by an earlier statement of the same text.
    let i = ins("CREATE TABLE n (a int); CREATE INDEX ni ON n (a); DROP INDEX ni");
    assert!(questions(&i, ALL, &HashSet::new()).is_empty());
    // IF NOT EXISTS may have created nothing.
    let i = ins("CREATE TABLE IF NOT EXISTS n (a int); CREATE INDEX ON n (a)");
    assert_eq!(questions(&i, ALL, &HashSet::new()), vec![rel("n")]);
}

#[test]
fn sizes_become_attributes() {
    let i = ins("CREATE INDEX ON t (a)");
    let th = Thresholds::default();
    let none = HashSet::new();
    let small = enrich(&i, &[(rel("t"), size(10.0))].into(), &none, &th);
    assert!(attrs(&small, 0).contains(&"size:small".to_string()));
    let large = enrich(&i, &[(rel("t"), size(1e6))].into(), &none, &th);
    assert!(attrs(&large, 0).contains(&"size:large".to_string()));
    let bytes = Answer::Relation(RelationSize {
        rows: 1.0,
        bytes: 2 << 30,
        partitioned: true,
    });
    let big = enrich(&i, &[(rel("t"), bytes)].into(), &none, &th);
    assert!(attrs(&big, 0).contains(&"size:large".to_string()));
    assert!(attrs(&big, 0).contains(&"partitioned".to_string()));
    // No answers (no catalog): no size attribute, so size-gated rules act as on a large table.
    let bare = enrich(&i, &Answers::new(), &none, &th);
    assert!(!attrs(&bare, 0).iter().any(|a| a.starts_with("size:")));
}

#[test]
fn failures_and_missing_tables_count_as_large_and_are_reported() {
    let i = ins("ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES u (id)");
    let th = Thresholds::default();
    let answers: Answers = [
        (rel("t"), size(5.0)),
        (rel("u"), Answer::Failed("timed out".into())),
    ]
    .into();
    let e = enrich(&i, &answers, &HashSet::new(), &th);
    assert!(attrs(&e, 0).contains(&"size:large".to_string()));
    assert!(attrs(&e, 0).contains(&"catalog:failed".to_string()));
    assert!(e
        .notes
        .iter()
        .any(|n| n.contains("table u") && n.contains("timed out")));
    let e = enrich(
        &ins("CREATE INDEX ON gone (a)"),
        &[(rel("gone"), Answer::NotFound)].into(),
        &HashSet::new(),
        &th,
    );
    assert!(attrs(&e, 0).contains(&"size:large".to_string()));
    assert!(attrs(&e, 0).contains(&"catalog:not_found".to_string()));
    assert!(!attrs(&e, 0).contains(&"catalog:failed".to_string()));
    assert!(e.notes[0].contains("not found"));
}

#[test]
fn proofs_roles_extensions_and_estimates() {
    let th = Thresholds::default();
    let none = HashSet::new();
    let i = ins("ALTER TABLE t ALTER COLUMN a SET NOT NULL");
    let q = Question::Lookup(Lookup::NotNullProof {
        table: "t".into(),
        column: "a".into(),
    });
    let e = enrich(&i, &[(q, Answer::Yes(true))].into(), &none, &th);
    assert!(attrs(&e, 0).contains(&"catalog:not_null_proven".to_string()));

    let i = ins("ALTER TABLE t ALTER COLUMN b TYPE varchar(20)");
    let q = Question::Lookup(Lookup::TypeChange {
        table: "t".into(),
        column: "b".into(),
        new_type: "varchar(20)".into(),
    });
    assert!(questions(&i, ALL, &none).contains(&q));
    let e = enrich(
        &i,
        &[(
            q.clone(),
            Answer::ColumnType("character varying(10)".into()),
        )]
        .into(),
        &none,
        &th,
    );
    assert!(attrs(&e, 0).contains(&"catalog:binary_coercible".to_string()));
    let e = enrich(
        &i,
        &[(q, Answer::ColumnType("integer".into()))].into(),
        &none,
        &th,
    );
    assert!(!attrs(&e, 0).contains(&"catalog:binary_coercible".to_string()));
    // USING recomputes every value: never asked, never exempt.
    let using = ins("ALTER TABLE t ALTER COLUMN b TYPE text USING b || ''");
    assert!(!questions(&using, ALL, &none)
        .iter()
        .any(|q| matches!(q, Question::Lookup(Lookup::TypeChange { .. }))));

    let i = ins("SET ROLE admin");
    let q = Question::Lookup(Lookup::Role {
        name: "admin".into(),
    });
    assert_eq!(questions(&i, ALL, &none), vec![q.clone()]);
    let e = enrich(
        &i,
        &[(q.clone(), Answer::Role { privileged: true })].into(),
        &none,
        &th,
    );
    assert!(attrs(&e, 0).contains(&"role:privileged".to_string()));
    let e = enrich(&i, &[(q, Answer::Failed("down".into()))].into(), &none, &th);
    assert!(attrs(&e, 0).contains(&"role:privileged".to_string()));
    assert!(questions(&ins("RESET ROLE"), ALL, &none).is_empty());

    let i = ins("CREATE EXTENSION plperlu");
    let q = Question::Lookup(Lookup::Extension {
        name: "plperlu".into(),
    });
    let e = enrich(
        &i,
        &[(q, Answer::Extension { trusted: false })].into(),
        &none,
        &th,
    );
    assert!(attrs(&e, 0).contains(&"extension:untrusted".to_string()));

    let i = ins("UPDATE t SET a = 1 WHERE b > 3; DELETE FROM t WHERE id = 1");
    let e = enrich(
        &i,
        &[
            (Question::Estimate(0), Answer::Estimate(50_000.0)),
            (Question::Estimate(1), Answer::Estimate(1.0)),
        ]
        .into(),
        &none,
        &th,
    );
    assert!(attrs(&e, 0).contains(&"estimate:large".to_string()));
    assert!(attrs(&e, 1).contains(&"estimate:small".to_string()));
}

#[test]
fn rows_written_reads_modify_table_input() {
    let plan: serde_json::Value = serde_json::from_str(
        r#"[{"Plan": {"Node Type": "ModifyTable", "Plan Rows": 0,
              "Plans": [{"Node Type": "Seq Scan", "Plan Rows": 1234}]}}]"#,
    )
    .unwrap();
    assert_eq!(rows_written(&plan), Some(1234.0));
    let plan: serde_json::Value =
        serde_json::from_str(r#"[{"Plan": {"Node Type": "Result", "Plan Rows": 7}}]"#).unwrap();
    assert_eq!(rows_written(&plan), Some(7.0));
    assert_eq!(rows_written(&serde_json::json!([])), None);
}

#[test]
fn needs_come_from_rule_patterns() {
    let n = Needs::from_patterns(["estimate:large", "role:*"], false);
    assert!(n.estimates && n.roles && !n.sizes && !n.proofs && !n.extensions);
    assert!(Needs::from_patterns([], true).sizes);
    assert!(!Needs::from_patterns(["validate:*"], false).any());
}

#[test]
fn explainable_texts_are_deparsed_and_unwrap_explain_analyze() {
    use crate::sql::explainable_texts;
    let t = explainable_texts(
        "UPDATE t SET a = 'it''s' WHERE id = $1; EXPLAIN (ANALYZE, BUFFERS) DELETE FROM u",
        ReadAs::default(),
        2,
    );
    assert_eq!(t.len(), 2);
    assert!(
        t[0].starts_with("UPDATE t SET a = 'it''s' WHERE id = $1"),
        "{t:?}"
    );
    assert_eq!(t[1], "DELETE FROM u");
    // Read with standard_conforming_strings off, a backslash escapes the quote: the deparsed
    // text says the same thing to a server reading it with the setting on.
    let off = ReadAs {
        standard_conforming_strings: false,
    };
    let t = explainable_texts(r"UPDATE t SET a = 'x\\' WHERE true", off, 1);
    assert_eq!(
        crate::sql::inspect(&t[0], ReadAs::default())
            .statements
            .len(),
        1,
        "{t:?}"
    );
    assert!(explainable_texts("SELECT 1; SELECT 2", ReadAs::default(), 1).is_empty());
}

#[test]
fn exemptions_hold_only_when_every_column_qualifies() {
    let th = Thresholds::default();
    let none = HashSet::new();
    let i = ins("ALTER TABLE t ALTER COLUMN a SET NOT NULL, ALTER COLUMN b SET NOT NULL");
    let proof = |c: &str| {
        Question::Lookup(Lookup::NotNullProof {
            table: "t".into(),
            column: c.into(),
        })
    };
    let one = enrich(
        &i,
        &[
            (proof("a"), Answer::Yes(true)),
            (proof("b"), Answer::Yes(false)),
        ]
        .into(),
        &none,
        &th,
    );
    assert!(!attrs(&one, 0).contains(&"catalog:not_null_proven".to_string()));
    let both = enrich(
        &i,
        &[
            (proof("a"), Answer::Yes(true)),
            (proof("b"), Answer::Yes(true)),
        ]
        .into(),
        &none,
        &th,
    );
    assert!(attrs(&both, 0).contains(&"catalog:not_null_proven".to_string()));

    // One widening change and one with USING (a rewrite): not exempt.
    let i = ins("ALTER TABLE t ALTER COLUMN b TYPE text, ALTER COLUMN c TYPE int8 USING c::int8");
    let q = Question::Lookup(Lookup::TypeChange {
        table: "t".into(),
        column: "b".into(),
        new_type: "text".into(),
    });
    let e = enrich(
        &i,
        &[(q, Answer::ColumnType("character varying(5)".into()))].into(),
        &none,
        &th,
    );
    assert!(!attrs(&e, 0).contains(&"catalog:binary_coercible".to_string()));
}

#[test]
fn memberships_ask_about_the_group() {
    let none = HashSet::new();
    let role = |n: &str| Question::Lookup(Lookup::Role { name: n.into() });
    assert_eq!(
        questions(&ins("CREATE ROLE x IN ROLE ops"), ALL, &none),
        vec![role("ops")]
    );
    assert_eq!(
        questions(&ins("ALTER GROUP admins ADD USER bob"), ALL, &none),
        vec![role("admins")]
    );
    assert_eq!(
        questions(&ins("GRANT admins TO bob"), ALL, &none),
        vec![role("admins")]
    );
    // Taking members away, or making a new group of them, gives nobody a group's powers.
    assert!(questions(&ins("ALTER GROUP admins DROP USER bob"), ALL, &none).is_empty());
    assert!(questions(&ins("CREATE ROLE g ROLE bob"), ALL, &none).is_empty());
}

#[test]
fn a_changed_search_path_or_a_rename_forgets_earlier_creations() {
    let i = ins("SET search_path = scratch; CREATE TABLE orders (id int); SET search_path = public; CREATE INDEX ON orders (a)");
    assert!(i.created_before(3).is_empty());
    let i = ins(
        "CREATE TABLE s.orders (id int); SET search_path = public; CREATE INDEX ON s.orders (a)",
    );
    assert_eq!(i.created_before(2), vec!["s.orders".to_string()]);
    let i = ins("CREATE TABLE n (id int); ALTER TABLE n RENAME TO m; ALTER TABLE big RENAME TO n; CREATE INDEX ON n (a)");
    assert!(i.created_before(3).is_empty());
    // Names the session created earlier are forgotten by the same text, too.
    let session: HashSet<String> = ["orders".to_string(), "s.kept".to_string()].into();
    let i = ins("SET search_path = public; DROP TABLE orders");
    assert_eq!(
        i.created_at(1, &session),
        Some(["s.kept".to_string()].into())
    );
    let i = ins("RESET ALL; DROP TABLE orders");
    assert!(!i.created_at(1, &session).unwrap().contains("orders"));
    assert_eq!(
        ins("SELECT 1; DROP TABLE orders").created_at(1, &session),
        None
    );
    let q = questions(
        &ins("SET search_path = public; CREATE INDEX ON orders (a)"),
        ALL,
        &session,
    );
    assert_eq!(q, vec![rel("orders")]);
}

#[test]
fn small_action_needs_every_matched_operation_small() {
    use crate::policy::{Action, Mode, SessionContext};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        r#"
[[rule]]
id = "t.set-not-null"
description = "d"
action = "hold"
small_action = "alert"
message = "m"
[rule.match]
subcommands = ["SET NOT NULL"]
"#,
    )
    .unwrap();
    let policy = crate::policy::load_dir(dir.path(), "production").unwrap();
    let th = Thresholds::default();
    let session = SessionContext::default();
    let decide = |sql: &str, answers: Answers| {
        let e = enrich(&ins(sql), &answers, &HashSet::new(), &th);
        policy.decide(&e, &session, Mode::Enforce).action
    };
    let small: Answers = [(rel("t"), size(5.0))].into();
    assert_eq!(
        decide("ALTER TABLE t ALTER a SET NOT NULL", small.clone()),
        Action::Alert
    );
    assert_eq!(
        decide("ALTER TABLE t ALTER a SET NOT NULL", Answers::new()),
        Action::Hold
    );
    // ALTER DOMAIN cannot be sized: the DO block is held though its table is small.
    assert_eq!(
        decide(
            "DO $$ BEGIN ALTER DOMAIN d SET NOT NULL; ALTER TABLE t ALTER a SET NOT NULL; END $$",
            small
        ),
        Action::Hold
    );
}

#[test]
fn creations_that_may_not_last_are_not_counted() {
    let none = HashSet::new();
    let after = |sql: &str, i: usize| ins(sql).created_at(i, &none).unwrap_or_default();
    // Nested in CREATE SCHEMA (and unqualified there), or in a DO body: not recorded.
    assert!(!after(
        "CREATE SCHEMA x CREATE TABLE orders (id int); DROP TABLE orders",
        1
    )
    .contains("orders"));
    assert!(!after(
        "DO $$BEGIN CREATE TABLE orders (id int); END$$; DROP TABLE orders",
        1
    )
    .contains("orders"));
    assert!(!after(
        "CREATE TEMP TABLE orders (id int) ON COMMIT DROP; DROP TABLE orders",
        1
    )
    .contains("orders"));
    assert!(!after(
        "BEGIN; SAVEPOINT s; CREATE TABLE orders (id int); ROLLBACK TO s; DROP TABLE orders",
        4
    )
    .contains("orders"));
    // An index goes with its table.
    let s = after(
        "CREATE TABLE tt (id int); CREATE INDEX big_idx ON tt (id); DROP TABLE tt; DROP INDEX big_idx",
        3,
    );
    assert!(!s.contains("big_idx"), "{s:?}");
    assert!(after(
        "CREATE TABLE tt (id int); CREATE INDEX tt_idx ON tt (id); DROP INDEX tt_idx",
        2
    )
    .contains("tt_idx"));
}

#[test]
fn schema_wide_reindex_is_not_sized_by_a_table_name() {
    assert!(questions(&ins("REINDEX SCHEMA sales"), ALL, &HashSet::new()).is_empty());
    assert!(questions(&ins("REINDEX DATABASE app"), ALL, &HashSet::new()).is_empty());
    assert_eq!(
        questions(&ins("REINDEX TABLE sales"), ALL, &HashSet::new()),
        vec![rel("sales")]
    );
}

#[test]
fn one_row_is_proven_only_by_a_covering_unique_key_of_every_relation_the_name_means() {
    use super::client::{proves_one_row, Keyed};
    use crate::sql::keyprobe::KeyProbe;
    let probe = |cols: &[&str], inherited: bool| KeyProbe {
        table: "t".into(),
        inherited,
        columns: cols.iter().map(|c| c.to_string()).collect(),
    };
    let table = |kind: char, children: bool, rules: bool, keys: &[&[&str]]| Keyed {
        kind,
        children,
        rules,
        keys: keys
            .iter()
            .map(|k| k.iter().map(|c| c.to_string()).collect())
            .collect(),
    };
    let pk = table('r', false, false, &[&["id"]]);
    assert!(proves_one_row(
        &probe(&["id"], true),
        std::slice::from_ref(&pk)
    ));
    assert!(proves_one_row(
        &probe(&["a", "id"], true),
        std::slice::from_ref(&pk)
    ));
    assert!(!proves_one_row(
        &probe(&["a"], true),
        std::slice::from_ref(&pk)
    ));
    // A composite key needs every column.
    let composite = table('r', false, false, &[&["k1", "k2"]]);
    assert!(!proves_one_row(
        &probe(&["k1"], true),
        std::slice::from_ref(&composite)
    ));
    assert!(proves_one_row(&probe(&["k1", "k2"], true), &[composite]));
    // Inheritance children are reached unless ONLY; partitions share the parent's key.
    let parent = table('r', true, false, &[&["id"]]);
    assert!(!proves_one_row(
        &probe(&["id"], true),
        std::slice::from_ref(&parent)
    ));
    assert!(proves_one_row(&probe(&["id"], false), &[parent]));
    assert!(proves_one_row(
        &probe(&["id"], true),
        &[table('p', true, false, &[&["id"]])]
    ));
    // Rules, views, unknown names, and a name two schemas both have with one unkeyed.
    assert!(!proves_one_row(
        &probe(&["id"], true),
        &[table('r', false, true, &[&["id"]])]
    ));
    assert!(!proves_one_row(
        &probe(&["id"], true),
        &[table('v', false, false, &[&["id"]])]
    ));
    assert!(!proves_one_row(&probe(&["id"], true), &[]));
    assert!(!proves_one_row(
        &probe(&["id"], true),
        &[pk, table('r', false, false, &[])]
    ));
}
