//! `pgwarden audit verify FILE... [--checkpoints FILE]... [--public-key KEY]...`: reads the
//! files and prints what [`crate::audit::verify`] found. Files of several logs (instances
//! sharing a state, each with its own `log_id`) are verified together: they are grouped by
//! the `log_id` of their first record, in the order given, and each log gets its own line.
//! Each checkpoints file goes with the log its checkpoints name, checked with the given key
//! its checkpoints say signed them. Exit 0 only when every log is intact; 1 when a record is
//! broken (the first one of each broken log, and why); 2 when a file cannot be read, a key is
//! malformed or a checkpoints file belongs to none of the logs.

use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;

use super::{EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::audit::checkpoint::{parse_public_key, Checkpoint};
use crate::audit::verify::verify as check;

/// One log's files (indexes into the files given), in order.
#[derive(Debug, PartialEq, Eq)]
struct Group {
    log_id: Option<String>,
    files: Vec<usize>,
}

/// The `log_id` of the first record of a file, if its first line is one.
fn first_log_id(bytes: &[u8]) -> Option<String> {
    let line = bytes
        .split(|&b| b == b'\n')
        .find(|l| !l.trim_ascii().is_empty())?;
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("log_id")?.as_str().map(str::to_owned)
}

/// Groups files by the log of their first record. A file whose first record names no log
/// (empty, or not a record) stays with the file before it, where verification judges it.
fn group(files: &[(String, Vec<u8>)]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut last: Option<usize> = None;
    for (i, (_, bytes)) in files.iter().enumerate() {
        let g = match first_log_id(bytes) {
            Some(id) => match groups.iter().position(|g| g.log_id.as_deref() == Some(&id)) {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        log_id: Some(id),
                        files: Vec::new(),
                    });
                    groups.len() - 1
                }
            },
            None => match last {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        log_id: None,
                        files: Vec::new(),
                    });
                    groups.len() - 1
                }
            },
        };
        groups[g].files.push(i);
        last = Some(g);
    }
    groups
}

/// The first checkpoint of a checkpoints file: whose log it is and which key signed it.
fn first_checkpoint(bytes: &[u8]) -> Option<Checkpoint> {
    String::from_utf8_lossy(bytes)
        .lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
}

fn read(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, String> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map(|b| (p.display().to_string(), b))
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
        })
        .collect()
}

pub fn verify(files: &[PathBuf], checkpoints: &[PathBuf], public_keys: &[String]) -> i32 {
    let (read_files, cps) = match (read(files), read(checkpoints)) {
        (Ok(f), Ok(c)) => (f, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("pgwarden: {e}");
            return EXIT_ERROR;
        }
    };
    let keys: Vec<VerifyingKey> = match public_keys.iter().map(|k| parse_public_key(k)).collect() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return EXIT_ERROR;
        }
    };
    if !cps.is_empty() && keys.is_empty() {
        eprintln!(
            "pgwarden: --checkpoints needs --public-key: an unsigned checkpoint proves nothing"
        );
        return EXIT_ERROR;
    }
    let groups = group(&read_files);
    // Each checkpoints file to its log: one log alone takes any file (the verifier says
    // whether it holds that log's checkpoints); with several, by the log its checkpoints name.
    let mut cp_of: Vec<Option<usize>> = vec![None; groups.len()];
    for (c, (name, bytes)) in cps.iter().enumerate() {
        let log = first_checkpoint(bytes).map(|cp| cp.log_id);
        let g = if groups.len() == 1 {
            Some(0)
        } else {
            groups
                .iter()
                .position(|g| g.log_id.is_some() && g.log_id == log)
        };
        let Some(g) = g else {
            eprintln!(
                "pgwarden: {name} holds checkpoints of log {}, which none of the files given is",
                log.as_deref().unwrap_or("-")
            );
            return EXIT_ERROR;
        };
        if let Some(other) = cp_of[g] {
            eprintln!(
                "pgwarden: {name} and {} both hold checkpoints of log {}: give one file per log",
                cps[other].0,
                groups[g].log_id.as_deref().unwrap_or("-")
            );
            return EXIT_ERROR;
        }
        cp_of[g] = Some(c);
    }
    let mut status = EXIT_OK;
    for (g, group) in groups.iter().enumerate() {
        let these: Vec<(String, Vec<u8>)> =
            group.files.iter().map(|&i| read_files[i].clone()).collect();
        let cp = cp_of[g].map(|c| &cps[c]);
        // The key its checkpoints name among those given; with one key, that key (a wrong
        // one is then reported as a signature that does not verify).
        let key = cp.and_then(|(_, bytes)| {
            let named = first_checkpoint(bytes).map(|c| c.key.to_ascii_lowercase());
            keys.iter()
                .find(|k| named.as_deref() == Some(hex::encode(k.as_bytes()).as_str()))
                .or(keys.first())
        });
        let r = check(&these, cp.map(|(n, b)| (n.as_str(), b.as_slice())), key);
        for n in &r.notes {
            println!("note: {n}");
        }
        match &r.problem {
            None => {
                let range = match (r.first_seq, r.last_seq) {
                    (Some(a), Some(b)) => format!("seq {a} to {b}"),
                    _ => "no records".into(),
                };
                let cps = match (cp.is_some(), r.last_checkpoint) {
                    (false, _) if !cps.is_empty() => {
                        "no checkpoints of this log given: records cut from the end would not be noticed".into()
                    }
                    (false, _) => {
                        "no checkpoints given: records cut from the end would not be noticed".into()
                    }
                    (true, Some(last)) => format!(
                        "{} checkpoint(s) verified, the last at seq {last}",
                        r.checkpoints_verified
                    ),
                    (true, None) => "no checkpoint of this log covers these records".into(),
                };
                println!(
                    "intact: {} records ({range}) of log {}; {cps}",
                    r.records,
                    r.log_id.as_deref().unwrap_or("-")
                );
            }
            Some(p) => {
                println!("broken: {p}");
                status = EXIT_REFUSED;
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> (String, Vec<u8>) {
        (name.into(), text.as_bytes().to_vec())
    }

    #[test]
    fn files_group_by_the_log_of_their_first_record_in_the_order_given() {
        let files = [
            file("a.1", "{\"log_id\":\"A\",\"seq\":1}\n"),
            file("b.1", "{\"log_id\":\"B\",\"seq\":1}\n"),
            file("a.2", "\n{\"log_id\":\"A\",\"seq\":2}\n"),
            file("b.active", ""),
            file("b.2", "{\"log_id\":\"B\",\"seq\":2}\n"),
        ];
        assert_eq!(
            group(&files),
            vec![
                Group {
                    log_id: Some("A".into()),
                    files: vec![0, 2, 3]
                },
                Group {
                    log_id: Some("B".into()),
                    files: vec![1, 4]
                },
            ]
        );
    }

    #[test]
    fn a_first_file_that_names_no_log_is_a_group_of_its_own() {
        let files = [
            file("junk", "not json\n"),
            file("a", "{\"log_id\":\"A\"}\n"),
        ];
        let g = group(&files);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].log_id, None);
        assert_eq!(g[0].files, vec![0]);
    }
}
