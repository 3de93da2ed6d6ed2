//! Admin-side helpers: tokens made with the real `pgwarden tokens add`, the real CLI, and a
//! small JSON client for the admin API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// The pgwarden binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgwarden"))
}

/// A tokens file with these holders: `(name, role, db_user, groups)`; secrets by name.
pub struct Tokens {
    pub file: PathBuf,
    secrets: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Tokens {
    pub fn new(holders: &[(&str, &str, Option<&str>, &[&str])]) -> Tokens {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let mut secrets = Vec::new();
        for (name, role, db_user, groups) in holders {
            let mut c = bin();
            c.args(["tokens", "add", name, "--role", role, "--file"])
                .arg(&file);
            if let Some(u) = db_user {
                c.args(["--db-user", u]);
            }
            for g in *groups {
                c.args(["--group", g]);
            }
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "tokens add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.len(), 1, "the secret alone, on one line: {stdout:?}");
            secrets.push((name.to_string(), lines[0].to_owned()));
        }
        Tokens {
            file,
            secrets,
            _dir: dir,
        }
    }

    pub fn secret(&self, name: &str) -> &str {
        &self
            .secrets
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no token {name}"))
            .1
    }

    pub fn all_secrets(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(|(_, s)| s.as_str())
    }
}

/// Calls the admin API: (HTTP status, JSON body).
pub async fn api(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut r = c.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// Runs the CLI against `admin` with `token`: (status, stdout, stderr).
pub fn cli(admin: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = bin()
        .args(args)
        .env("PGWARDEN_ADMIN_URL", admin)
        .env("PGWARDEN_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pending hold whose SQL mentions `needle`, once there is one.
pub async fn pending_hold(admin: &str, token: &str, needle: &str) -> Value {
    super::eventually(Duration::from_secs(30), "a pending hold", || async {
        let (s, v) = api(
            "GET",
            &format!("{admin}/api/holds?status=pending"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        v.as_array()?
            .iter()
            .find(|h| h["sql"].as_str().is_some_and(|s| s.contains(needle)))
            .cloned()
    })
    .await
}

/// The hold `id` once its status is `status`.
pub async fn hold_reaches(admin: &str, token: &str, id: u64, status: &str) -> Value {
    super::eventually(Duration::from_secs(30), status, || async {
        let (_, v) = api("GET", &format!("{admin}/api/holds/{id}"), Some(token), None).await;
        (v["status"] == status).then_some(v)
    })
    .await
}

/// A policy directory with `rules` (TOML) as its one file.
pub fn policy_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("workflow.toml"), rules).unwrap();
    dir
}

/// Reads a file to a string.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}
