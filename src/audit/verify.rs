//! `pgwarden audit verify`, pure: walks the records of one or more audit files (in the order
//! given: rotated files first, the active one last) and names the first broken record and
//! why — edited, deleted, reordered, duplicated, truncated, foreign, or a fork — checking
//! signed checkpoints against the records they name when they are given.

use std::collections::{HashMap, HashSet};
use std::fmt;

use ed25519_dalek::VerifyingKey;
use serde_json::{Map, Value};

use super::chain::{record_hash, GENESIS};
use super::checkpoint::Checkpoint;

/// Why a log is not intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// A record's contents do not match its hash (or the line is not a record at all).
    Edited,
    /// Records are missing between two that are there.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record appears twice.
    Duplicated,
    /// Records a signed checkpoint covers are missing from the end.
    Truncated,
    /// A record of another log (another `log_id`).
    Foreign,
    /// A record that is well formed and hashed but does not continue the chain it sits in
    /// (two histories for the same sequence numbers).
    Fork,
    /// A checkpoint whose signature does not verify with the given key.
    BadCheckpoint,
    /// Checkpoints were given but none is of this log: nothing ties the records to the key
    /// (a whole log rewritten under a new `log_id` looks like this).
    Unanchored,
}

impl Broken {
    pub fn name(self) -> &'static str {
        match self {
            Broken::Edited => "edited",
            Broken::Deleted => "deleted",
            Broken::Reordered => "reordered",
            Broken::Duplicated => "duplicated",
            Broken::Truncated => "truncated",
            Broken::Foreign => "foreign",
            Broken::Fork => "fork",
            Broken::BadCheckpoint => "bad checkpoint",
            Broken::Unanchored => "unanchored",
        }
    }
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file, self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Broken,
    pub place: Place,
    pub seq: Option<u64>,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.place)?;
        if let Some(s) = self.seq {
            write!(f, " (seq {s})")?;
        }
        write!(f, ": {}: {}", self.kind.name(), self.detail)
    }
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub log_id: Option<String>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Checkpoints of this log whose signature verified and whose record matched.
    pub checkpoints_verified: usize,
    pub last_checkpoint: Option<u64>,
    /// The first problem: the log is intact only without one.
    pub problem: Option<Problem>,
    /// Things worth saying that do not break the log (a torn last line, an earlier start).
    pub notes: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

struct Rec {
    place: Place,
    seq: u64,
    prev_hash: String,
    hash: String,
}

/// Reads `(name, contents)` files as one log; `checkpoints` (name, contents) are checked with
/// `key` when given.
pub fn verify(
    files: &[(String, Vec<u8>)],
    checkpoints: Option<(&str, &[u8])>,
    key: Option<&VerifyingKey>,
) -> Report {
    let mut report = Report::default();
    let mut recs: Vec<Rec> = Vec::new();
    // 1. Read every line; the first one that is not a sound record of this log is the answer.
    for (name, bytes) in files {
        let mut rest: &[u8] = bytes;
        let mut line_no = 0;
        while !rest.is_empty() {
            line_no += 1;
            let (line, torn) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let l = &rest[..i];
                    rest = &rest[i + 1..];
                    (l, false)
                }
                None => {
                    let l = rest;
                    rest = &[];
                    (l, true)
                }
            };
            let place = Place {
                file: name.clone(),
                line: line_no,
            };
            if torn {
                // A write cut short by a crash: it was never acknowledged, so nothing it held
                // ran; checkpoints tell whether more is missing.
                report.notes.push(format!(
                    "{place}: incomplete last line ({} bytes, a write cut short) ignored",
                    line.len()
                ));
                continue;
            }
            let parsed = match parse(line) {
                Ok(p) => p,
                Err(why) => {
                    report.problem = Some(Problem {
                        kind: Broken::Edited,
                        place,
                        seq: None,
                        detail: why,
                    });
                    return report;
                }
            };
            let (obj, log_id, seq, prev_hash, hash) = parsed;
            match &report.log_id {
                None => report.log_id = Some(log_id),
                Some(id) if *id != log_id => {
                    report.problem = Some(Problem {
                        kind: Broken::Foreign,
                        place,
                        seq: Some(seq),
                        detail: format!("the record belongs to log {log_id}, not {id}"),
                    });
                    return report;
                }
                Some(_) => {}
            }
            if record_hash(&obj) != hash {
                report.problem = Some(Problem {
                    kind: Broken::Edited,
                    place,
                    seq: Some(seq),
                    detail: "the record's contents do not match its hash".into(),
                });
                return report;
            }
            recs.push(Rec {
                place,
                seq,
                prev_hash,
                hash,
            });
        }
    }
    // 2. Walk the chain.
    let all_seqs: HashSet<u64> = recs.iter().map(|r| r.seq).collect();
    let mut by_hash: HashMap<&str, &Place> = HashMap::new();
    let mut by_seq: HashMap<u64, &str> = HashMap::new();
    let mut prev: Option<&Rec> = None;
    for r in &recs {
        let problem = |kind, detail: String| Problem {
            kind,
            place: r.place.clone(),
            seq: Some(r.seq),
            detail,
        };
        if let Some(first) = by_hash.get(r.hash.as_str()) {
            report.problem = Some(problem(
                Broken::Duplicated,
                format!("the same record is at {first}"),
            ));
            return report;
        }
        match prev {
            None => {
                if r.seq == 1 && r.prev_hash != GENESIS {
                    report.problem = Some(problem(
                        Broken::Fork,
                        "the first record does not start from the genesis hash".into(),
                    ));
                    return report;
                }
                if r.seq != 1 {
                    report.notes.push(format!(
                        "the records given start at seq {} (earlier files not given)",
                        r.seq
                    ));
                }
            }
            Some(p) => {
                let expected = p.seq + 1;
                if r.seq == expected {
                    if r.prev_hash != p.hash {
                        report.problem = Some(problem(
                            Broken::Fork,
                            format!(
                                "it does not follow seq {} at {}: its prev_hash names another record",
                                p.seq, p.place
                            ),
                        ));
                        return report;
                    }
                } else if r.seq < expected {
                    let kind = if by_seq.contains_key(&r.seq) {
                        Broken::Fork
                    } else {
                        Broken::Reordered
                    };
                    let detail = match kind {
                        Broken::Fork => format!(
                            "another record with seq {} came before it (two histories)",
                            r.seq
                        ),
                        _ => format!("it comes after seq {}", p.seq),
                    };
                    report.problem = Some(problem(kind, detail));
                    return report;
                } else if all_seqs.contains(&expected) {
                    report.problem = Some(problem(
                        Broken::Reordered,
                        format!("seq {expected} should come before it and comes later"),
                    ));
                    return report;
                } else {
                    let missing = if r.seq - expected == 1 {
                        format!("seq {expected} is missing")
                    } else {
                        format!("seq {expected} to {} are missing", r.seq - 1)
                    };
                    report.problem = Some(problem(
                        Broken::Deleted,
                        format!("{missing} before it (after {})", p.place),
                    ));
                    return report;
                }
            }
        }
        by_hash.insert(&r.hash, &r.place);
        by_seq.insert(r.seq, &r.hash);
        report.records += 1;
        report.first_seq.get_or_insert(r.seq);
        report.last_seq = Some(r.seq);
        prev = Some(r);
    }
    // 3. Checkpoints: each must verify and match the record it names, and none may name a
    // record past the end.
    let Some((cp_name, cp_bytes)) = checkpoints else {
        return report;
    };
    let text = String::from_utf8_lossy(cp_bytes);
    let mut same_log = 0usize;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = Place {
            file: cp_name.to_owned(),
            line: i + 1,
        };
        let bad = |detail: String| Problem {
            kind: Broken::BadCheckpoint,
            place: place.clone(),
            seq: None,
            detail,
        };
        let cp: Checkpoint = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(e) => {
                if i + 1 == text.lines().count() && !text.ends_with('\n') {
                    report
                        .notes
                        .push(format!("{place}: incomplete last checkpoint line ignored"));
                    continue;
                }
                report.problem = Some(bad(format!("not a checkpoint: {e}")));
                return report;
            }
        };
        if let Some(k) = key {
            if !cp.verify(k) {
                report.problem = Some(bad(
                    "its signature does not verify with the public key given".into(),
                ));
                return report;
            }
        }
        if report.log_id.as_deref().is_some_and(|id| id != cp.log_id) {
            continue;
        }
        same_log += 1;
        let first = report.first_seq.unwrap_or(1);
        if cp.seq < first {
            // Records the instance signed are missing from the front (files given must start
            // at the log's first record, or at one no checkpoint predates).
            let r = recs.first().expect("first_seq is set");
            report.problem = Some(Problem {
                kind: Broken::Deleted,
                place: r.place.clone(),
                seq: Some(r.seq),
                detail: format!(
                    "records before seq {first} are missing: the checkpoint signed at {} ({cp_name} line {}) names seq {}",
                    cp.ts,
                    i + 1,
                    cp.seq
                ),
            });
            return report;
        }
        let last = report.last_seq.unwrap_or(0);
        if cp.seq > last {
            let place = recs.last().map(|r| r.place.clone()).unwrap_or(Place {
                file: files.last().map(|f| f.0.clone()).unwrap_or_default(),
                line: 0,
            });
            report.problem = Some(Problem {
                kind: Broken::Truncated,
                place,
                seq: report.last_seq,
                detail: format!(
                    "the log ends at seq {last} but the checkpoint signed at {} ({cp_name} line {}) covers seq {}: records after seq {last} are missing",
                    cp.ts,
                    i + 1,
                    cp.seq
                ),
            });
            return report;
        }
        match by_seq.get(&cp.seq) {
            Some(h) if *h == cp.hash => {
                report.checkpoints_verified += 1;
                report.last_checkpoint = Some(report.last_checkpoint.unwrap_or(0).max(cp.seq));
            }
            Some(_) => {
                let r = recs.iter().find(|r| r.seq == cp.seq).expect("seq seen");
                report.problem = Some(Problem {
                    kind: Broken::Fork,
                    place: r.place.clone(),
                    seq: Some(cp.seq),
                    detail: format!(
                        "the record differs from the one the checkpoint signed at {} names",
                        cp.ts
                    ),
                });
                return report;
            }
            // Within the range every seq is present (the walk checked): unreachable.
            None => {}
        }
    }
    if same_log == 0 && report.records > 0 {
        let r = recs.first().expect("records > 0");
        report.problem = Some(Problem {
            kind: Broken::Unanchored,
            place: r.place.clone(),
            seq: Some(r.seq),
            detail: format!(
                "{cp_name} holds no checkpoint of log {}: nothing ties these records to the signing key",
                report.log_id.as_deref().unwrap_or("-")
            ),
        });
        return report;
    }
    if key.is_none() {
        report
            .notes
            .push("no --public-key given: checkpoint signatures were not checked".into());
    }
    report
}

type Parsed = (Map<String, Value>, String, u64, String, String);

fn parse(line: &[u8]) -> Result<Parsed, String> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| format!("the line is not JSON ({e})"))?;
    let Value::Object(obj) = v else {
        return Err("the line is not a JSON object".into());
    };
    let s = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the record has no {k}"))
    };
    let log_id = s("log_id")?;
    let prev_hash = s("prev_hash")?;
    let hash = s("hash")?;
    let seq = obj
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("the record has no seq")?;
    Ok((obj, log_id, seq, prev_hash, hash))
}
