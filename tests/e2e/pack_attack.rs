//! Attack review of the shipped pack, through the real proxy in production: changes that
//! the pack let through in another spelling before (SQL text run by query_to_xml / ts_stat,
//! PL/pgSQL assignments, every-row conditions through the target's qualifier, an ON SELECT
//! rule turning a table into a writable view of pg_settings, an aggregate whose state
//! function is set_config, ALTER GROUP of a privileged role). Each refusal is checked on the
//! server: nothing of it happened. The ordinary traffic next to them still runs.

use tokio_postgres::Client;

use crate::support::{
    direct, keyed_table, scalar_i64, shipped_policies, sqlstate, unique, via, Proxy,
};

async fn pack() -> Proxy {
    Proxy::start_with(|c| c.policies = shipped_policies()).await
}

/// A table `{t} (id int primary key, v int)` with `rows` rows, made directly.
async fn table(rows: i32) -> String {
    keyed_table("att", rows).await
}

async fn setting(c: &Client, name: &str) -> String {
    let rows = c.simple_query(&format!("SHOW {name}")).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// `sql` through the proxy is refused by `rule` (42501, the rule in the message or DETAIL).
async fn refused(c: &Client, sql: &str, rule: &str) {
    let e = c
        .simple_query(sql)
        .await
        .expect_err(&format!("refused: {sql}"));
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{sql}: {e}");
    let db = e.as_db_error().expect("a PostgreSQL error");
    assert!(
        db.message().contains(rule) || db.detail().is_some_and(|d| d.contains(rule)),
        "{sql}: {} / {:?}",
        db.message(),
        db.detail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_text_run_by_functions_is_inspected() {
    let proxy = pack().await;
    let c = via(&proxy).await;
    let t = table(3).await;
    let before = setting(&c, "session_replication_role").await;
    refused(
        &c,
        "SELECT query_to_xml('SELECT set_config(''session_replication_role'', ''replica'', false)', true, false, '')",
        "dml.integrity-bypass",
    )
    .await;
    assert_eq!(setting(&c, "session_replication_role").await, before);
    refused(
        &c,
        "SELECT query_to_xml('SELECT set_config(''role'', ''postgres'', false)', true, false, '')",
        "sec.identity-switch-privileged",
    )
    .await;
    refused(
        &c,
        "SELECT query_to_xml('SELECT pg_read_file(''/etc/hostname'')', true, false, '')",
        "sec.server-file-access-function",
    )
    .await;
    refused(
        &c,
        "SELECT * FROM ts_stat('SELECT to_tsvector(pg_read_file(''/etc/hostname''))')",
        "sec.server-file-access-function",
    )
    .await;
    refused(
        &c,
        "SELECT query_to_xml('SELECT ' || 'pg_read_file(''/etc/hostname'')', true, false, '')",
        "sec.anonymous-code-block-sql-string",
    )
    .await;
    // A constant query that only reads runs, with the same bytes back as without pgwarden.
    let sql =
        format!("SELECT query_to_xml('SELECT id, v FROM {t} ORDER BY id', true, false, '')::text");
    let through: String = c.query_one(&sql, &[]).await.unwrap().get(0);
    let plain: String = direct().await.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(through, plain);
    assert!(through.contains("<v>3</v>"));
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plpgsql_assignments_and_support_functions_are_inspected() {
    let proxy = pack().await;
    let c = via(&proxy).await;
    let f = unique("att_fn");
    refused(
        &c,
        &format!(
            "CREATE FUNCTION {f}() RETURNS int LANGUAGE plpgsql AS $$ DECLARE x int; BEGIN \
             x := (SELECT count(*) FROM pg_ls_dir('.')); RETURN x; END $$"
        ),
        "sec.server-file-access-function",
    )
    .await;
    refused(
        &c,
        &format!(
            "CREATE FUNCTION {f}() RETURNS void LANGUAGE plpgsql AS $$ DECLARE x text; BEGIN \
             x := set_config('session_replication_role', 'replica', false); END $$"
        ),
        "dml.integrity-bypass",
    )
    .await;
    refused(
        &c,
        &format!(
            "CREATE AGGREGATE {f}(text, boolean) (SFUNC = set_config, STYPE = text, \
             INITCOND = 'session_replication_role')"
        ),
        "sec.identity-switch-privileged",
    )
    .await;
    let n = scalar_i64(&format!(
        "SELECT count(*) FROM pg_proc WHERE proname = '{f}'"
    ))
    .await;
    assert_eq!(n, 0, "no refused routine or aggregate was created");

    // A typical trigger function assigning NEW fields is created and works.
    let t = unique("att_t");
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v int, updated_at timestamptz); \
         CREATE FUNCTION {f}_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           NEW.updated_at := now(); NEW.v := coalesce(NEW.v, 0) + 1; RETURN NEW; END $$; \
         CREATE TRIGGER {f}_trg BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}_touch(); \
         INSERT INTO {t} (id, v) VALUES (1, 1)"
    ))
    .await
    .unwrap();
    assert_eq!(
        scalar_i64(&format!("SELECT v::int8 FROM {t} WHERE id = 1")).await,
        2
    );
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}; DROP FUNCTION {f}_touch()"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_conditions_and_settings_views_are_refused() {
    let proxy = pack().await;
    let c = via(&proxy).await;
    let t = table(5).await;
    refused(
        &c,
        &format!("DELETE FROM {t} WHERE id = {t}.id"),
        "dml.delete-without-where",
    )
    .await;
    refused(
        &c,
        &format!("DELETE FROM {t} WHERE id + 0 = id + 0"),
        "dml.delete-without-where",
    )
    .await;
    refused(
        &c,
        &format!("UPDATE {t} SET v = 0 WHERE v::text = v::text"),
        "dml.update-without-where",
    )
    .await;
    refused(
        &c,
        &format!("DELETE FROM {t} WHERE id = ANY (ARRAY[id])"),
        "dml.delete-without-where",
    )
    .await;
    assert_eq!(
        scalar_i64(&format!("SELECT sum(v)::int8 FROM {t}")).await,
        15
    );
    // Keyed writes run.
    c.batch_execute(&format!(
        "DELETE FROM {t} WHERE id = 5; UPDATE {t} SET v = 0 WHERE {t}.id = 1"
    ))
    .await
    .unwrap();
    assert_eq!(
        scalar_i64(&format!("SELECT sum(v)::int8 FROM {t}")).await,
        9
    );

    // PostgreSQL 15 and older turn an empty table into a view with an ON SELECT rule; over
    // pg_settings it is writable and its UPDATE runs set_config.
    let s = unique("att_settings");
    c.batch_execute(&format!("CREATE TABLE {s} (LIKE pg_settings)"))
        .await
        .unwrap();
    refused(
        &c,
        &format!(
            "CREATE RULE \"_RETURN\" AS ON SELECT TO {s} DO INSTEAD SELECT * FROM pg_settings"
        ),
        "sec.catalog-write-view",
    )
    .await;
    let kind: i8 = direct()
        .await
        .query_one(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = $1::text::regclass",
            &[&s],
        )
        .await
        .unwrap()
        .get::<_, i8>(0);
    assert_eq!(kind as u8, b'r', "the table is still a table");
    refused(
        &c,
        "ALTER GROUP pg_execute_server_program ADD USER postgres",
        "sec.grant-privileged-role-group",
    )
    .await;
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}; DROP TABLE {s}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_table_attached_to_a_new_one_is_not_dropped_without_a_ticket() {
    let proxy = pack().await;
    let c = via(&proxy).await;
    let victim = table(2).await;
    let p = unique("att_parent");
    // The new partitioned table is exempt from destructive.drop-table; attaching the older
    // table to it, then dropping it, dropped the older table too.
    c.batch_execute(&format!(
        "CREATE TABLE {p} (id int, v int) PARTITION BY RANGE (id)"
    ))
    .await
    .unwrap();
    refused(
        &c,
        &format!(
            "ALTER TABLE {p} ATTACH PARTITION {victim} FOR VALUES FROM (MINVALUE) TO (MAXVALUE)"
        ),
        "destructive.drop-table-attach",
    )
    .await;
    c.batch_execute(&format!("DROP TABLE {p}")).await.unwrap();
    assert_eq!(
        scalar_i64(&format!("SELECT count(*) FROM {victim}")).await,
        2
    );
    // New partitions of a new partitioned table are created as usual.
    c.batch_execute(&format!(
        "CREATE TABLE {p} (id int PRIMARY KEY) PARTITION BY RANGE (id); \
         CREATE TABLE {p}_1 PARTITION OF {p} FOR VALUES FROM (1) TO (10); \
         INSERT INTO {p} VALUES (1); DROP TABLE {p}"
    ))
    .await
    .unwrap();
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {victim}"))
        .await
        .unwrap();
}
