//! Bypass families of the shipped pack, through the real proxy in production: the same
//! effect in other syntax (MERGE, ON CONFLICT DO UPDATE, conditions no column decides,
//! ALTER INDEX renaming a table, catalog writes, routine SET clauses, LEAKPROOF, server-file
//! functions named by definitions), code that runs later (routine bodies decided at CREATE),
//! and refusals that name the rule and file without internals. Each refusal is checked on
//! the server too: PostgreSQL did not run it. The traffic that must stay allowed runs.

use tokio_postgres::Client;

use crate::support::{
    direct, keyed_table, scalar_i64, shipped_policies, sqlstate, unique, via, Proxy,
};

async fn pack() -> Proxy {
    Proxy::start_with(|c| c.policies = shipped_policies()).await
}

/// A table `{t} (id int primary key, v int)` with `rows` rows, made directly.
async fn table(rows: i32) -> String {
    keyed_table("byp", rows).await
}

async fn exists(sql_regclass: &str) -> bool {
    direct()
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&sql_regclass])
        .await
        .unwrap()
        .get(0)
}

async fn function_exists(name: &str) -> bool {
    direct()
        .await
        .query_one(
            "SELECT count(*) > 0 FROM pg_proc WHERE proname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn cleanup(sql: &str) {
    direct().await.batch_execute(sql).await.unwrap();
}

/// `sql` through the proxy is refused by `rule` (42501, the rule in the message).
async fn refused(c: &Client, sql: &str, rule: &str) -> tokio_postgres::error::DbError {
    let e = c
        .simple_query(sql)
        .await
        .expect_err(&format!("refused: {sql}"));
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{sql}: {e}");
    let db = e.as_db_error().expect("a PostgreSQL error").clone();
    assert!(
        db.message().starts_with(&format!("pgwarden: {rule}: "))
            || db.detail().is_some_and(|d| d.contains(rule)),
        "{sql}: {} / {:?}",
        db.message(),
        db.detail()
    );
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_bodies_are_decided_at_create_as_what_they_run() {
    let proxy = pack().await;
    let t = table(3).await;
    let c = via(&proxy).await;
    let f = unique("byp_fn");
    // A SQL body that drops the table, a PL/pgSQL one that empties it, a BEGIN ATOMIC one.
    refused(
        &c,
        &format!("CREATE FUNCTION {f}() RETURNS void LANGUAGE sql AS $$ DROP TABLE {t} $$"),
        "destructive.drop-table",
    )
    .await;
    refused(
        &c,
        &format!(
            "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM {t}; RETURN NEW; END $$"
        ),
        "dml.delete-without-where",
    )
    .await;
    refused(
        &c,
        &format!("CREATE PROCEDURE {f}() LANGUAGE sql BEGIN ATOMIC UPDATE {t} SET v = 0; END"),
        "dml.update-without-where",
    )
    .await;
    refused(
        &c,
        &format!(
            "CREATE FUNCTION {f}() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/passwd') $$"
        ),
        "sec.server-file-access-function",
    )
    .await;
    refused(
        &c,
        &format!(
            "CREATE FUNCTION {f}(n text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP TABLE ' || n; END $$"
        ),
        "sec.anonymous-code-block-function",
    )
    .await;
    // A PL/pgSQL loop's query is a statement too (in DO blocks as in bodies).
    refused(
        &c,
        &format!("DO $$ DECLARE r record; BEGIN FOR r IN DELETE FROM {t} RETURNING * LOOP END LOOP; END $$"),
        "dml.delete-without-where",
    )
    .await;
    assert!(!function_exists(&f).await, "no refused routine was created");
    assert!(exists(&t).await);
    assert_eq!(scalar_i64(&format!("SELECT sum(v) FROM {t}")).await, 6);

    // What stays allowed: a trigger function writing an audit row, a keyed PL/pgSQL update,
    // a harmless SQL body; the trigger fires as usual.
    let audit = table(0).await;
    c.batch_execute(&format!(
        "CREATE FUNCTION {f}_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO {audit} VALUES (NEW.id, NEW.v); RETURN NEW; END $$; \
         CREATE TRIGGER {f}_trg AFTER INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {f}_audit(); \
         CREATE FUNCTION {f}_pay(p_id int, p_v int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN \
           UPDATE {t} SET v = p_v WHERE id = p_id; END $$; \
         CREATE FUNCTION {f}_label(a text, b int) RETURNS text LANGUAGE sql IMMUTABLE \
           AS $$ SELECT format('%s-%s', a, b) $$; \
         INSERT INTO {t} VALUES (10, 10); SELECT {f}_pay(10, 11)"
    ))
    .await
    .unwrap();
    assert_eq!(
        scalar_i64(&format!("SELECT count(*) FROM {audit}")).await,
        1
    );
    assert_eq!(
        scalar_i64(&format!("SELECT v::bigint FROM {t} WHERE id = 10")).await,
        11
    );
    cleanup(&format!(
        "DROP TABLE {t}; DROP TABLE {audit}; DROP FUNCTION {f}_audit(); \
         DROP FUNCTION {f}_pay(int, int); DROP FUNCTION {f}_label(text, int)"
    ))
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_upsert_and_columnless_conditions_count_as_every_row() {
    let proxy = pack().await;
    let t = table(5).await;
    let c = via(&proxy).await;
    refused(
        &c,
        &format!("MERGE INTO {t} x USING (SELECT 1 AS k) s ON true WHEN MATCHED THEN DELETE"),
        "dml.delete-without-where",
    )
    .await;
    refused(
        &c,
        &format!("MERGE INTO {t} x USING (SELECT 1 AS k) s ON s.k = 1 WHEN MATCHED THEN UPDATE SET v = 0"),
        "dml.update-without-where",
    )
    .await;
    refused(
        &c,
        &format!("INSERT INTO {t} SELECT * FROM {t} ON CONFLICT (id) DO UPDATE SET v = 0"),
        "dml.update-without-where",
    )
    .await;
    for w in [
        "'t'",
        "1::bool",
        "(SELECT true)",
        "coalesce(true, false)",
        "v IS NULL OR v IS NOT NULL",
        "now() > '2000-01-01'",
    ] {
        refused(
            &c,
            &format!("DELETE FROM {t} WHERE {w}"),
            "dml.delete-without-where",
        )
        .await;
    }
    // A parameter: unknown when pgwarden decides (refused at Parse, extended protocol).
    let e = c
        .execute(&format!("DELETE FROM {t} WHERE $1"), &[&true])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    let e = c
        .execute(&format!("UPDATE {t} SET v = 0 WHERE $1 = $1"), &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    assert_eq!(scalar_i64(&format!("SELECT count(*) FROM {t}")).await, 5);
    assert_eq!(scalar_i64(&format!("SELECT sum(v) FROM {t}")).await, 15);

    // Application traffic runs: keyed MERGE, the ORM upsert, a keyed parameterised write.
    c.simple_query(&format!(
        "MERGE INTO {t} x USING (SELECT 1 AS k, 100 AS nv) s ON x.id = s.k \
         WHEN MATCHED THEN UPDATE SET v = s.nv WHEN NOT MATCHED THEN INSERT VALUES (s.k, s.nv)"
    ))
    .await
    .unwrap();
    c.execute(
        &format!(
            "INSERT INTO {t} (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v"
        ),
        &[&2i32, &200i32],
    )
    .await
    .unwrap();
    c.execute(&format!("DELETE FROM {t} WHERE id = $1"), &[&5i32])
        .await
        .unwrap();
    assert_eq!(scalar_i64(&format!("SELECT count(*) FROM {t}")).await, 4);
    assert_eq!(scalar_i64(&format!("SELECT sum(v) FROM {t}")).await, 307);
    cleanup(&format!("DROP TABLE {t}")).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_syntax_for_renames_triggers_settings_and_server_files_is_refused() {
    let proxy = pack().await;
    let t = table(1).await;
    let c = via(&proxy).await;
    let f = unique("byp_fn");
    let d = direct().await;
    d.batch_execute(&format!(
        "CREATE FUNCTION {f}_trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; \
         CREATE TRIGGER {f}_t BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {f}_trg()"
    ))
    .await
    .unwrap();

    // ALTER INDEX renames a table in PostgreSQL.
    refused(
        &c,
        &format!("ALTER INDEX {t} RENAME TO {t}_old"),
        "compat.rename-table",
    )
    .await;
    assert!(exists(&t).await);
    refused(
        &c,
        &format!("ALTER TABLE {t} ENABLE REPLICA TRIGGER {f}_t"),
        "dml.integrity-bypass-ddl",
    )
    .await;
    let enabled: String = d
        .query_one(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = $1",
            &[&format!("{f}_t")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(enabled, "O", "the trigger still fires in ordinary sessions");

    // UPDATE pg_settings runs set_config: refused, the setting unchanged in this session.
    refused(
        &c,
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'enable_seqscan'",
        "sec.catalog-write",
    )
    .await;
    let rows = c.simple_query("SHOW enable_seqscan").await.unwrap();
    let v = unique("byp_settings");
    refused(
        &c,
        &format!("CREATE TEMP VIEW {v} AS SELECT * FROM pg_settings"),
        "sec.catalog-write-view",
    )
    .await;
    let shown = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("on"));

    // A routine's SET clause is decided like the SET; LEAKPROOF; library preloading.
    refused(
        &c,
        &format!(
            "CREATE FUNCTION {f}() RETURNS int LANGUAGE sql SET role = postgres AS 'SELECT 1'"
        ),
        "sec.identity-switch-privileged",
    )
    .await;
    refused(
        &c,
        &format!("CREATE FUNCTION {f}() RETURNS int LANGUAGE sql SET log_statement = 'none' AS 'SELECT 1'"),
        "sec.audit-tampering",
    )
    .await;
    refused(
        &c,
        &format!("CREATE FUNCTION {f}(a int) RETURNS bool LANGUAGE sql IMMUTABLE LEAKPROOF AS 'SELECT a > 0'"),
        "sec.leakproof",
    )
    .await;
    refused(
        &c,
        "ALTER ROLE CURRENT_USER SET session_preload_libraries = 'auto_explain'",
        "sec.native-code-setting",
    )
    .await;
    let preload = scalar_i64(
        "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c \
         WHERE c LIKE 'session_preload_libraries%'",
    )
    .await;
    assert_eq!(preload, 0);

    // Server-file functions named by definitions, and granted.
    refused(
        &c,
        &format!("CREATE OPERATOR {f}.!!! (FUNCTION = pg_read_file, RIGHTARG = text)"),
        "sec.server-file-access-function",
    )
    .await;
    refused(
        &c,
        "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO PUBLIC",
        "sec.server-file-access-function",
    )
    .await;
    assert!(!function_exists(&f).await);
    cleanup(&format!("DROP TABLE {t}; DROP FUNCTION {f}_trg()")).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_a_relative_policy_file_and_no_internals() {
    let proxy = pack().await;
    let c = via(&proxy).await;
    let db = refused(&c, "DELET FROM t", "hygiene.unparsed-statement").await;
    let detail = db.detail().expect("a DETAIL");
    assert!(
        detail.contains("in policy file hygiene.toml,"),
        "the policy file relative to the policy directory: {detail}"
    );
    assert!(
        detail
            .contains("PostgreSQL's grammar rejects this text: syntax error at or near \"DELET\""),
        "{detail}"
    );
    let home = shipped_policies();
    assert!(!detail.contains(&*home.to_string_lossy()), "{detail}");
    for debris in ["Invalid statement", "Error decoding", "parse tree", "::"] {
        assert!(!detail.contains(debris), "{debris:?} in {detail}");
    }
    // Also for a refusal by any other rule.
    let db = refused(&c, "DROP DATABASE nothere", "destructive.drop-database").await;
    assert!(
        db.detail()
            .is_some_and(|d| d.contains("in policy file destructive.toml,")),
        "{:?}",
        db.detail()
    );
    proxy.stop().await;
}
