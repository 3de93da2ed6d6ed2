//! Policy hot reload: a valid, tested set replaces the running one (by explicit reload, by
//! the file watch, by SIGHUP to the binary); an invalid set never does.

use std::time::Duration;

use crate::support::{eventually, sqlstate, via, Proxy, PG_DB, PG_USER};

const BOUND: Duration = Duration::from_secs(30);

const BLOCK_42: &str = r#"[[rule]]
id = "test.no-answer"
description = "test rule"
action = "block"
message = "no answers here"
[rule.match]
tags = ["SELECT"]
[rule.session]
applications = ["reload-test"]
"#;

async fn answers(proxy: &Proxy) -> bool {
    let c = crate::support::connect(&format!(
        "{} application_name=reload-test",
        proxy.dsn(PG_USER, PG_DB)
    ))
    .await;
    match c.simple_query("SELECT 42").await {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(sqlstate(&e).as_deref(), Some("42501"));
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_sets_replace_and_invalid_sets_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let proxy = Proxy::start_with(|c| c.policies = d.clone()).await;
    assert!(answers(&proxy).await);
    let v0 = proxy.shared.policy.load().version.clone();

    std::fs::write(dir.path().join("block.toml"), BLOCK_42).unwrap();
    let v1 = pgwarden::reload::reload(proxy.shared.reload_target()).unwrap();
    assert_ne!(v0, v1);
    assert!(!answers(&proxy).await);

    // A broken file: refused, the running set stays.
    std::fs::write(
        dir.path().join("broken.toml"),
        "[[rule]]\nid = \"x\"\nbogus = 1\n",
    )
    .unwrap();
    assert!(pgwarden::reload::reload(proxy.shared.reload_target()).is_err());
    assert_eq!(proxy.shared.policy.load().version, v1);
    assert!(!answers(&proxy).await);

    // A set whose own tests fail is refused too.
    std::fs::remove_file(dir.path().join("broken.toml")).unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/t.toml"),
        "[[case]]\nname = \"expects allow\"\nsql = \"SELECT 42\"\napplication = \"reload-test\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    assert!(pgwarden::reload::reload(proxy.shared.reload_target()).is_err());
    assert_eq!(proxy.shared.policy.load().version, v1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_picks_up_a_new_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let proxy = Proxy::start_with(|c| c.policies = d.clone()).await;
    assert!(answers(&proxy).await);
    std::fs::write(dir.path().join("block.toml"), BLOCK_42).unwrap();
    eventually(BOUND, "the watcher to load the new rule", || async {
        (!answers(&proxy).await).then_some(())
    })
    .await;
    // Unrelated sessions are unaffected.
    let c = via(&proxy).await;
    c.simple_query("SELECT 42").await.unwrap();
    proxy.stop().await;
}
