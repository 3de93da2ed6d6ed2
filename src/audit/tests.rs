//! The audit log end to end in one process: records written through the real writer thread
//! to real files, then verified, tampered with in every way `verify` names, rotated, reopened
//! after a crash, and written to a device that refuses writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::checkpoint::parse_public_key;
use super::verify::{verify, Broken, Report};
use super::*;
use crate::approval::events::{Event, EventSink};

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        file: Some(dir.join("audit.jsonl")),
        checkpoints: None,
        signing_key: Some(dir.join("key")),
        checkpoint_idle: Duration::from_secs(3600),
        checkpoint_interval: Duration::from_secs(3600),
        ..crate::config::Config::default().audit
    }
}

fn payload(n: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("test".into()));
    m.insert("n".into(), Value::from(n));
    m
}

async fn write(log: &AuditLog, n: u64) {
    for i in 0..n {
        log.append(payload(i)).await.unwrap().unwrap();
    }
}

fn read(path: &Path) -> (String, Vec<u8>) {
    (path.display().to_string(), std::fs::read(path).unwrap())
}

fn check(dir: &Path, files: &[PathBuf]) -> Report {
    let files: Vec<_> = files.iter().map(|f| read(f)).collect();
    let cp = read(&dir.join("audit.jsonl.checkpoints"));
    let key = parse_public_key(dir.join("key.pub").to_str().unwrap()).unwrap();
    verify(&files, Some((&cp.0, &cp.1)), Some(&key))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

async fn fresh_log(records: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&config(dir.path()), dir.path(), &EventSink::new()).unwrap();
    write(&log, records).await;
    log.flush().await;
    let file = dir.path().join("audit.jsonl");
    (dir, file)
}

#[tokio::test]
async fn a_fresh_log_verifies_with_its_checkpoint() {
    let (dir, file) = fresh_log(5).await;
    let r = check(dir.path(), std::slice::from_ref(&file));
    assert!(r.intact(), "{r:?}");
    assert_eq!((r.records, r.first_seq, r.last_seq), (5, Some(1), Some(5)));
    assert_eq!(r.checkpoints_verified, 1);
    assert_eq!(r.last_checkpoint, Some(5));
}

/// Tampers with a fresh log of 6 records and expects `kind` at seq `at`.
async fn tampered(f: impl FnOnce(&mut Vec<String>), kind: Broken, at: Option<u64>) {
    let (dir, file) = fresh_log(6).await;
    let mut l = lines(&file);
    f(&mut l);
    put(&file, &l);
    let r = check(dir.path(), &[file]);
    let p = r
        .problem
        .clone()
        .unwrap_or_else(|| panic!("not noticed: {r:?}"));
    assert_eq!(p.kind, kind, "{p}");
    assert_eq!(p.seq, at, "{p}");
}

#[tokio::test]
async fn an_edited_record_is_named() {
    tampered(
        |l| l[2] = l[2].replace("\"n\":2", "\"n\":9"),
        Broken::Edited,
        Some(3),
    )
    .await;
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    tampered(
        |l| {
            l.remove(3);
        },
        Broken::Deleted,
        Some(5),
    )
    .await;
}

#[tokio::test]
async fn reordered_records_are_named() {
    tampered(|l| l.swap(2, 3), Broken::Reordered, Some(4)).await;
}

#[tokio::test]
async fn a_duplicated_record_is_named() {
    tampered(
        |l| {
            let d = l[1].clone();
            l.insert(2, d);
        },
        Broken::Duplicated,
        Some(2),
    )
    .await;
}

#[tokio::test]
async fn a_cut_tail_is_named_with_checkpoints() {
    tampered(|l| l.truncate(4), Broken::Truncated, Some(4)).await;
}

#[tokio::test]
async fn a_foreign_record_is_named() {
    let (_other_dir, other) = fresh_log(3).await;
    let foreign = lines(&other)[1].clone();
    tampered(move |l| l[3] = foreign, Broken::Foreign, Some(2)).await;
}

#[tokio::test]
async fn a_rehashed_edit_is_a_fork() {
    // Whoever edits a record and recomputes its hash still breaks the next link.
    tampered(
        |l| {
            let mut v: Map<String, Value> = serde_json::from_str(&l[2]).unwrap();
            v.insert("n".into(), Value::from(99));
            v.remove("hash");
            let (line, _) = chain::seal(v);
            l[2] = line;
        },
        Broken::Fork,
        Some(4),
    )
    .await;
}

#[tokio::test]
async fn a_forged_checkpoint_is_refused() {
    let (dir, file) = fresh_log(3).await;
    let cp = dir.path().join("audit.jsonl.checkpoints");
    let mut l = lines(&cp);
    l[0] = l[0].replace("\"seq\":3", "\"seq\":2");
    put(&cp, &l);
    let r = check(dir.path(), &[file]);
    assert_eq!(r.problem.unwrap().kind, Broken::BadCheckpoint);
}

#[tokio::test]
async fn the_chain_goes_on_across_rotation_and_restarts_and_a_torn_line_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_file_size = 4096;
    {
        let log = AuditLog::start(&cfg, dir.path(), &EventSink::new()).unwrap();
        write(&log, 60).await;
        log.flush().await;
    }
    // A crash in the middle of a write leaves half a line.
    let file = dir.path().join("audit.jsonl");
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(b"{\"log_id\":\"half")
        .unwrap();
    {
        let log = AuditLog::start(&cfg, dir.path(), &EventSink::new()).unwrap();
        write(&log, 5).await;
        log.flush().await;
    }
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| rotated_name(&file, n))
        .take_while(|p| p.exists())
        .collect();
    assert!(files.len() >= 2, "rotated {files:?}");
    files.push(file.clone());
    let r = check(dir.path(), &files);
    assert!(r.intact(), "{:?}", r.problem);
    // 65 records and the note that the torn line was cut.
    assert_eq!(r.last_seq, Some(66));
    let all: Vec<String> = files.iter().flat_map(|f| lines(f)).collect();
    assert!(all.iter().any(|l| l.contains("\"type\":\"log_recovered\"")));
}

#[tokio::test]
async fn events_are_recorded_through_the_tap() {
    let dir = tempfile::tempdir().unwrap();
    let events = EventSink::new();
    let log = AuditLog::start(&config(dir.path()), dir.path(), &events).unwrap();
    events.emit(Event::PolicyLoaded {
        version: "v1".into(),
    });
    events.emit(Event::AuditCheckpoint {
        log_id: "x".into(),
        seq: 1,
        hash: "h".into(),
        signature: "s".into(),
    });
    log.flush().await;
    let l = lines(&dir.path().join("audit.jsonl"));
    assert_eq!(l.len(), 1, "checkpoint events are not records: {l:?}");
    assert!(l[0].contains("\"type\":\"policy_loaded\""));
}

#[tokio::test]
async fn a_device_that_refuses_writes_fails_every_record_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.file = Some(PathBuf::from("/dev/full"));
    cfg.checkpoints = Some(dir.path().join("cp"));
    let events = EventSink::new();
    let mut rx = events.subscribe();
    let log = AuditLog::start(&cfg, dir.path(), &events).unwrap();
    let err = log.append(payload(1)).await.unwrap().unwrap_err();
    assert!(err.contains("No space"), "{err}");
    assert!(log.failing().is_some());
    let e = rx.recv().await.unwrap();
    assert!(matches!(e.event, Event::AuditSinkFailing { .. }), "{e:?}");
    // Still failing, and said once.
    assert!(log.append(payload(2)).await.unwrap().is_err());
}

#[tokio::test]
async fn a_log_rewritten_under_a_new_id_is_unanchored() {
    tampered(
        |l| {
            let mut prev = chain::GENESIS.to_owned();
            for line in l.iter_mut() {
                let mut v: Map<String, Value> = serde_json::from_str(line).unwrap();
                v.insert("log_id".into(), Value::String("ffff".into()));
                v.insert("prev_hash".into(), Value::String(prev.clone()));
                v.remove("hash");
                let (new, hash) = chain::seal(v);
                *line = new;
                prev = hash;
            }
        },
        Broken::Unanchored,
        Some(1),
    )
    .await;
}

#[tokio::test]
async fn records_cut_from_the_front_are_named_when_a_checkpoint_predates_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::start(&config(dir.path()), dir.path(), &EventSink::new()).unwrap();
    write(&log, 3).await;
    log.flush().await;
    write(&log, 3).await;
    log.flush().await;
    let file = dir.path().join("audit.jsonl");
    let mut l = lines(&file);
    l.drain(..4);
    put(&file, &l);
    let r = check(dir.path(), &[file]);
    let p = r.problem.unwrap();
    assert_eq!((p.kind, p.seq), (Broken::Deleted, Some(5)), "{p}");
}
