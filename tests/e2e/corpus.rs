//! A real migration history: every install and upgrade script of PostgreSQL's own extensions
//! (read at test time from `pg_config --sharedir`) is inspected and decided without a crash,
//! and every decision names rules of the shipped pack with their files, as `pgwarden explain`
//! shows them.

use pgwarden::policy::{load_dir, Mode, SessionContext};
use pgwarden::sql::{inspect, ReadAs};

use crate::support::shipped_policies;

#[test]
fn extension_scripts_are_inspected_and_explained() {
    let out = std::process::Command::new("pg_config")
        .arg("--sharedir")
        .output()
        .unwrap();
    let dir =
        std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("extension");
    let policy = load_dir(&shipped_policies(), "production").unwrap();
    let ids: std::collections::HashSet<&str> = policy.rules.iter().map(|r| r.id.as_str()).collect();
    let (mut files, mut statements, mut refused) = (0, 0, 0);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sql") {
            continue;
        }
        // psql meta-commands (\echo, \quit) are for psql, not the server.
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('\\'))
            .map(|l| {
                l.replace("@extschema@", "public")
                    .replace("@extowner@", "postgres")
                    .replace("MODULE_PATHNAME", "$libdir/x")
                    + "\n"
            })
            .collect();
        let ins = inspect(&text, ReadAs::default());
        assert!(
            ins.unparsed.is_none(),
            "{}: {:?}",
            path.display(),
            ins.unparsed
        );
        let d = policy.decide(&ins, &SessionContext::default(), Mode::Enforce);
        for m in &d.matches {
            assert!(
                ids.contains(m.rule.as_str()) && m.file.ends_with(".toml"),
                "{m:?}"
            );
        }
        files += 1;
        statements += ins.statements.len();
        refused += d.action.refuses() as usize;
    }
    assert!(
        files > 50,
        "only {files} extension scripts found in {}",
        dir.display()
    );
    assert!(statements > 1000, "{statements} statements");
    eprintln!("{files} scripts, {statements} statements, {refused} scripts refused in production");
}
