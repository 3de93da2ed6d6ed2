//! Session facts decisions depend on, tracked on the wire: lock_timeout (session-wide and
//! SET LOCAL), the effective role after SET ROLE / SET LOCAL ROLE / RESET ROLE, and tables
//! created in the session, each observed through a rule that refuses on it.

use crate::support::{direct, sqlstate, unique, via, with_rules, RulesProxy};

fn refused(r: Result<(), tokio_postgres::Error>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e:?}");
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_session_and_local() {
    let RulesProxy { proxy: p, dir: _d } = with_rules(
        r#"
[[rule]]
id = "t.needs-lock-timeout"
description = "LOCK TABLE without a lock_timeout"
action = "block"
message = "set a lock_timeout"
[rule.match]
tags = ["LOCK TABLE"]
[rule.session]
lock_timeout_set = false
"#,
    )
    .await;
    let t = unique("sf");
    direct()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (a int)"))
        .await
        .unwrap();
    let c = via(&p).await;
    let lock = format!("LOCK TABLE {t} IN SHARE MODE");
    c.batch_execute("BEGIN").await.unwrap();
    assert!(refused(c.batch_execute(&lock).await));
    c.batch_execute("ROLLBACK").await.unwrap();
    // SET LOCAL covers its own transaction only.
    c.batch_execute("BEGIN; SET LOCAL lock_timeout = '2s'")
        .await
        .unwrap();
    assert!(!refused(c.batch_execute(&lock).await));
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert!(refused(c.batch_execute(&lock).await));
    c.batch_execute("ROLLBACK").await.unwrap();
    // A session-wide setting covers every later transaction; 0 turns it off again.
    c.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert!(!refused(c.batch_execute(&lock).await));
    c.batch_execute("COMMIT; SET lock_timeout = 0; BEGIN")
        .await
        .unwrap();
    assert!(refused(c.batch_execute(&lock).await));
    c.batch_execute("ROLLBACK").await.unwrap();
    // That ROLLBACK also undid `SET lock_timeout = 0`, sent in the same string after COMMIT
    // (it joined the transaction BEGIN opened): the server is back at 2s, and so is pgwarden.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(!refused(c.batch_execute(&lock).await));
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("SET lock_timeout = 0").await.unwrap();
    // Set in a transaction that rolls back: undone.
    c.batch_execute("BEGIN; SET lock_timeout = '2s'; ROLLBACK; BEGIN")
        .await
        .unwrap();
    assert!(refused(c.batch_execute(&lock).await));
    c.batch_execute("ROLLBACK").await.unwrap();
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_role_follows_set_role() {
    let role = unique("pgw_ro");
    let RulesProxy { proxy: p, dir: _d } = with_rules(&format!(
        r#"
[[rule]]
id = "t.read-only-role"
description = "the read-only role may not write"
action = "block"
message = "read-only role"
[rule.match]
classes = ["write"]
[rule.session]
roles = ["{role}"]
"#
    ))
    .await;
    let t = unique("sfr");
    direct()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; CREATE TABLE {t} (a int); GRANT ALL ON {t} TO {role}"
        ))
        .await
        .unwrap();
    let c = via(&p).await;
    let insert = format!("INSERT INTO {t} VALUES (1)");
    assert!(!refused(c.batch_execute(&insert).await));
    c.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    assert!(refused(c.batch_execute(&insert).await));
    c.batch_execute("RESET ROLE").await.unwrap();
    assert!(!refused(c.batch_execute(&insert).await));
    // A SET ROLE the server rolls back changes nothing.
    c.batch_execute(&format!("BEGIN; SET ROLE {role}; ROLLBACK"))
        .await
        .unwrap();
    assert!(!refused(c.batch_execute(&insert).await));
    c.batch_execute(&format!("BEGIN; SET ROLE {role}"))
        .await
        .unwrap();
    let _ = c.batch_execute("SELECT 1/0").await;
    c.batch_execute("COMMIT").await.unwrap();
    assert!(!refused(c.batch_execute(&insert).await));
    // SET LOCAL ROLE lasts until the transaction ends.
    c.batch_execute(&format!("BEGIN; SET LOCAL ROLE {role}"))
        .await
        .unwrap();
    assert!(refused(c.batch_execute(&insert).await));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert!(!refused(c.batch_execute(&insert).await));
    direct()
        .await
        .batch_execute(&format!("DROP TABLE {t}; DROP ROLE {role}"))
        .await
        .unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_in_session_follows_search_path_and_renames() {
    let RulesProxy { proxy: p, dir: _d } = with_rules(
        r#"
[[rule]]
id = "t.index-existing"
description = "CREATE INDEX on a table this session did not create"
action = "block"
message = "existing table"
[rule.match]
tags = ["CREATE INDEX"]
created_in_session = false
"#,
    )
    .await;
    let (schema, t) = (unique("sfs"), unique("sft"));
    direct()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE public.{t} (a int)"
        ))
        .await
        .unwrap();
    let c = via(&p).await;
    // Created here, and still the table the name means: exempt.
    c.batch_execute(&format!("SET search_path = {schema}"))
        .await
        .unwrap();
    c.batch_execute(&format!("CREATE TABLE {t} (a int)"))
        .await
        .unwrap();
    assert!(!refused(
        c.batch_execute(&format!("CREATE INDEX ON {t} (a)")).await
    ));
    // Now the same name means public's older table.
    c.batch_execute("SET search_path = public").await.unwrap();
    assert!(refused(
        c.batch_execute(&format!("CREATE INDEX ON {t} (a)")).await
    ));
    // SET LOCAL search_path ends with the transaction: the name then means public's table.
    let t2 = unique("sft2");
    direct()
        .await
        .batch_execute(&format!("CREATE TABLE public.{t2} (a int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("BEGIN; SET LOCAL search_path = {schema}"))
        .await
        .unwrap();
    c.batch_execute(&format!("CREATE TABLE {t2} (a int)"))
        .await
        .unwrap();
    assert!(!refused(
        c.batch_execute(&format!("CREATE INDEX ON {t2} (a)")).await
    ));
    c.batch_execute("COMMIT").await.unwrap();
    assert!(refused(
        c.batch_execute(&format!("CREATE INDEX ON {t2} (a)")).await
    ));
    // A new table renamed away; an old one renamed into its name.
    let (n, old) = (unique("sfn"), unique("sfo"));
    direct()
        .await
        .batch_execute(&format!("CREATE TABLE {old} (a int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("CREATE TABLE {n} (a int)"))
        .await
        .unwrap();
    c.batch_execute(&format!("ALTER TABLE {n} RENAME TO {n}_away"))
        .await
        .unwrap();
    c.batch_execute(&format!("ALTER TABLE {old} RENAME TO {n}"))
        .await
        .unwrap();
    assert!(refused(
        c.batch_execute(&format!("CREATE INDEX ON {n} (a)")).await
    ));
    direct()
        .await
        .batch_execute(&format!(
            "DROP SCHEMA {schema} CASCADE; DROP TABLE public.{t}, public.{t2}, {n}, {n}_away"
        ))
        .await
        .unwrap();
    p.stop().await;
}
