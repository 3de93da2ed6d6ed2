//! Live-catalog facts: what a statement's text cannot say but the database can — how big a
//! table is, whether a validated check already proves a column NOT NULL, whether a type
//! change is binary-coercible, whether a role is privileged, whether an extension is trusted,
//! how many rows a write will touch. [`questions`] lists what to ask for one inspection,
//! [`enrich`] turns the answers into operation attributes (`size:large`, `size:small`,
//! `catalog:not_null_proven`, `catalog:binary_coercible`, `role:privileged`,
//! `extension:untrusted`, `estimate:large`, `catalog:failed`…) that rules match like any
//! other. Both are pure, so `pgwarden check`, `pgwarden policy test` and the wire decide
//! alike; [`client`] asks a real server.

pub mod client;
mod types;

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

pub use crate::config::catalog::{CatalogConfig, Thresholds};
pub use client::Catalog;
pub use types::binary_coercible;

use crate::sql::{Facts, Inspection, Lookup, Nesting};

/// Which kinds of catalog facts the loaded policy's rules use: nothing is asked that no rule
/// would look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub sizes: bool,
    pub proofs: bool,
    pub roles: bool,
    pub extensions: bool,
    pub estimates: bool,
}

impl Needs {
    pub fn any(self) -> bool {
        self.sizes || self.proofs || self.roles || self.extensions || self.estimates
    }

    /// What a rule needs, from the attribute patterns (and CEL expression) it matches on and
    /// whether it is gated on size.
    pub fn from_patterns<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
        size_gated: bool,
    ) -> Needs {
        let mut n = Needs {
            sizes: size_gated,
            ..Needs::default()
        };
        for p in patterns {
            let p = p.to_ascii_lowercase();
            n.sizes |= p.contains("size:");
            n.proofs |= p.contains("catalog:");
            n.roles |= p.contains("role:");
            n.extensions |= p.contains("extension:");
            n.estimates |= p.contains("estimate:");
        }
        n
    }

    pub fn union(self, o: Needs) -> Needs {
        Needs {
            sizes: self.sizes || o.sizes,
            proofs: self.proofs || o.proofs,
            roles: self.roles || o.roles,
            extensions: self.extensions || o.extensions,
            estimates: self.estimates || o.estimates,
        }
    }
}

/// One question for the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Question {
    Lookup(Lookup),
    /// The planner's row estimate for the statement with this index in the inspected text.
    Estimate(usize),
}

/// Size facts of a table (summed over its partitions).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationSize {
    /// Estimated rows.
    pub rows: f64,
    /// Heap, TOAST and index bytes.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub partitioned: bool,
}

/// What the catalog said.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Relation(RelationSize),
    /// No such object (the statement will likely fail; a size is unknown, so it counts large).
    NotFound,
    /// The lookup failed or timed out: unknown, so treated the strict way, and reported.
    Failed(String),
    /// A NOT NULL proof exists (or the question's yes/no answer).
    Yes(bool),
    /// A column's current type, as `format_type` prints it.
    ColumnType(String),
    /// A role: whether it is privileged (superuser-like attributes or memberships).
    Role {
        privileged: bool,
    },
    /// An extension: whether a non-superuser may install it.
    Extension {
        trusted: bool,
    },
    /// The planner's estimate of rows written.
    Estimate(f64),
}

pub type Answers = HashMap<Question, Answer>;

/// Statement tags whose target relations' size gates locking rules.
const SIZED_TAGS: &[&str] = &[
    "CREATE INDEX",
    "DROP INDEX",
    "ALTER TABLE",
    "ALTER MATERIALIZED VIEW",
    "VACUUM",
    "CLUSTER",
    "REINDEX",
    "REFRESH MATERIALIZED VIEW",
    "LOCK TABLE",
];

/// Tags of writes whose planner estimate `dml.large-write` reads.
fn writes(op: &Facts) -> bool {
    matches!(op.tag.as_str(), "UPDATE" | "DELETE" | "MERGE")
        || (op.tag == "INSERT" && op.attributes.iter().any(|a| a == "insert_select"))
}

fn is_index_target(op: &Facts) -> bool {
    op.tag == "DROP INDEX"
        || (op.tag == "REINDEX" && op.attributes.iter().any(|a| a == "reindex:index"))
}

/// The size questions of one operation: its targets not created in this session, and any
/// further relations it names (a foreign key's referenced table).
fn size_lookups(op: &Facts, created: &HashSet<String>) -> Vec<Lookup> {
    let mut out = Vec::new();
    // REINDEX SCHEMA / DATABASE / SYSTEM name no table: they cannot be sized (large).
    let unsized_reindex = op.attributes.iter().any(|a| {
        matches!(
            a.as_str(),
            "reindex:schema" | "reindex:database" | "reindex:system"
        )
    });
    if !SIZED_TAGS.contains(&op.tag.as_str()) || unsized_reindex {
        return out;
    }
    for o in &op.objects {
        if created.contains(o) {
            continue;
        }
        out.push(if is_index_target(op) {
            Lookup::Index { name: o.clone() }
        } else {
            Lookup::Relation { name: o.clone() }
        });
    }
    for l in &op.lookups {
        if let Lookup::Relation { name } = l {
            if !created.contains(name) {
                out.push(l.clone());
            }
        }
    }
    out
}

/// The catalog questions an inspection raises under `needs`, in a stable order.
pub fn questions(ins: &Inspection, needs: Needs, created: &HashSet<String>) -> Vec<Question> {
    let mut out = Vec::new();
    if !needs.any() || ins.unparsed.is_some() {
        return out;
    }
    let mut walk = crate::sql::facts::CreatedWalk::new(ins, created);
    for (i, s) in ins.statements.iter().enumerate() {
        let created = walk.set_at(i);
        let mut estimate = false;
        for op in &s.ops {
            if needs.sizes {
                out.extend(size_lookups(op, created).into_iter().map(Question::Lookup));
            }
            if needs.proofs {
                for l in &op.lookups {
                    if matches!(l, Lookup::NotNullProof { table, .. } | Lookup::TypeChange { table, .. } if !created.contains(table))
                    {
                        out.push(Question::Lookup(l.clone()));
                    }
                }
            }
            if needs.roles {
                for r in role_targets(op) {
                    out.push(Question::Lookup(Lookup::Role { name: r }));
                }
            }
            if needs.extensions && matches!(op.tag.as_str(), "CREATE EXTENSION" | "ALTER EXTENSION")
            {
                for e in &op.objects {
                    out.push(Question::Lookup(Lookup::Extension { name: e.clone() }));
                }
            }
            estimate |= needs.estimates
                && writes(op)
                && matches!(
                    op.nesting,
                    Nesting::TopLevel | Nesting::Cte | Nesting::ExplainAnalyze | Nesting::Prepare
                )
                && op.objects.iter().any(|o| !created.contains(o));
        }
        // Only a query (or the query EXPLAIN ANALYZE runs, or PREPARE defines: explained
        // with its generic plan) can be explained on another connection: not COPY (...),
        // CREATE TABLE AS, DO.
        estimate &= s.ops.first().is_some_and(|o| {
            matches!(
                o.tag.as_str(),
                "UPDATE" | "DELETE" | "MERGE" | "INSERT" | "SELECT" | "EXPLAIN" | "PREPARE"
            )
        });
        if estimate {
            out.push(Question::Estimate(i));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Roles an operation switches to or grants.
fn role_targets(op: &Facts) -> Vec<String> {
    if let Some(set) = &op.set {
        if matches!(set.name.as_str(), "role" | "session_authorization") {
            return set
                .value
                .iter()
                .filter(|v| !v.eq_ignore_ascii_case("none") && !v.eq_ignore_ascii_case("default"))
                .cloned()
                .collect();
        }
        return Vec::new();
    }
    if op.tag == "GRANT ROLE" {
        return op.objects.clone();
    }
    // CREATE ROLE ... IN ROLE g: the new role gains g's privileges.
    let mut out: Vec<String> = op
        .attributes
        .iter()
        .filter_map(|a| a.strip_prefix("member_of:"))
        .map(str::to_owned)
        .collect();
    // ALTER GROUP g ADD USER u: u gains g's privileges.
    if op.attributes.iter().any(|a| a == "adds_members") {
        out.extend(op.roles.iter().cloned());
    }
    out
}

fn attr(op: &mut Facts, word: &str) {
    if !op.attributes.iter().any(|a| a == word) {
        op.attributes.push(word.to_owned());
    }
}

/// How big a relation answer is, for size gating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Small,
    Large,
}

fn classify(a: Option<&Answer>, th: &Thresholds) -> (Size, Option<String>) {
    match a {
        Some(Answer::Relation(r)) => {
            if r.rows >= th.large_rows || r.bytes >= th.large_bytes {
                (Size::Large, None)
            } else {
                (Size::Small, None)
            }
        }
        Some(Answer::NotFound) => (Size::Large, Some("not found in the catalog".into())),
        Some(Answer::Failed(e)) => (Size::Large, Some(format!("catalog lookup failed: {e}"))),
        // Not asked (no catalog connection): every table counts as large.
        _ => (Size::Large, None),
    }
}

/// The inspection with the answers folded in as operation attributes, and notes for the
/// refusal's DETAIL on lookups that failed. Operations the catalog was not asked about are
/// left as they are (without a catalog, nothing is `size:small`: every table counts large).
pub fn enrich(
    ins: &Inspection,
    answers: &Answers,
    created: &HashSet<String>,
    th: &Thresholds,
) -> Inspection {
    let mut out = ins.clone();
    let mut walk = crate::sql::facts::CreatedWalk::new(ins, created);
    for (i, s) in out.statements.iter_mut().enumerate() {
        let created = walk.set_at(i);
        let estimate = answers.get(&Question::Estimate(i));
        for op in &mut s.ops {
            let mut sizes = Vec::new();
            // Without an answer for every target (no catalog), no size is claimed.
            let mut asked = true;
            for l in size_lookups(op, created) {
                let a = answers.get(&Question::Lookup(l.clone()));
                asked &= a.is_some();
                if let Some(Answer::Relation(r)) = a {
                    if r.partitioned {
                        attr(op, "partitioned");
                    }
                }
                let (size, note) = classify(a, th);
                if let Some(n) = note {
                    out.notes
                        .push(format!("{}: {n}; counted as large.", lookup_name(&l)));
                    let missing = matches!(a, Some(Answer::NotFound));
                    attr(
                        op,
                        if missing {
                            "catalog:not_found"
                        } else {
                            "catalog:failed"
                        },
                    );
                }
                sizes.push(size);
            }
            if !sizes.is_empty() && asked {
                attr(
                    op,
                    if sizes.contains(&Size::Large) {
                        "size:large"
                    } else {
                        "size:small"
                    },
                );
            }
            // An exemption holds for the operation only when it holds for every column it
            // changes that way.
            let (mut proofs, mut proven, mut changes, mut coercible) = (0, 0, 0, 0);
            for l in op.lookups.clone() {
                let a = answers.get(&Question::Lookup(l.clone()));
                match &l {
                    Lookup::NotNullProof { .. } => {
                        proofs += 1;
                        proven += usize::from(a == Some(&Answer::Yes(true)));
                    }
                    Lookup::TypeChange { new_type, .. } => {
                        changes += 1;
                        coercible += usize::from(
                            matches!(a, Some(Answer::ColumnType(cur)) if binary_coercible(cur, new_type)),
                        );
                    }
                    _ => {}
                }
                if let Some(Answer::Failed(e)) = a {
                    out.notes
                        .push(format!("{}: catalog lookup failed: {e}.", lookup_name(&l)));
                    attr(op, "catalog:failed");
                }
            }
            if proofs > 0 && proven == proofs {
                attr(op, "catalog:not_null_proven");
            }
            let rewrites = op.attributes.iter().any(|a| a == "type_change:rewrites");
            if changes > 0 && coercible == changes && !rewrites {
                attr(op, "catalog:binary_coercible");
            }
            for r in role_targets(op) {
                match answers.get(&Question::Lookup(Lookup::Role { name: r.clone() })) {
                    Some(Answer::Role { privileged: true }) => attr(op, "role:privileged"),
                    Some(Answer::Failed(e)) => {
                        out.notes.push(format!(
                            "role {r}: catalog lookup failed: {e}; counted as privileged."
                        ));
                        attr(op, "role:privileged");
                        attr(op, "catalog:failed");
                    }
                    _ => {}
                }
            }
            if matches!(op.tag.as_str(), "CREATE EXTENSION" | "ALTER EXTENSION") {
                for e in op.objects.clone() {
                    match answers.get(&Question::Lookup(Lookup::Extension { name: e.clone() })) {
                        Some(Answer::Extension { trusted: false }) => {
                            attr(op, "extension:untrusted")
                        }
                        Some(Answer::Failed(err)) => {
                            out.notes.push(format!("extension {e}: catalog lookup failed: {err}; counted as untrusted."));
                            attr(op, "extension:untrusted");
                            attr(op, "catalog:failed");
                        }
                        _ => {}
                    }
                }
            }
            if writes(op) {
                match estimate {
                    Some(Answer::Estimate(rows)) if *rows >= th.large_write_rows => {
                        attr(op, "estimate:large")
                    }
                    Some(Answer::Estimate(_)) => attr(op, "estimate:small"),
                    Some(Answer::Failed(e)) => {
                        attr(op, "estimate:large");
                        attr(op, "catalog:failed");
                        let n = format!(
                            "statement {}: planner estimate failed: {e}; counted as large.",
                            i + 1
                        );
                        if !out.notes.contains(&n) {
                            out.notes.push(n);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out.notes.dedup();
    out.memo = Default::default();
    out
}

fn lookup_name(l: &Lookup) -> String {
    match l {
        Lookup::Relation { name } => format!("table {name}"),
        Lookup::Index { name } => format!("index {name}"),
        Lookup::NotNullProof { table, column } => format!("column {table}.{column}"),
        Lookup::TypeChange { table, column, .. } => format!("column {table}.{column}"),
        Lookup::Role { name } => format!("role {name}"),
        Lookup::Extension { name } => format!("extension {name}"),
    }
}

#[cfg(test)]
mod tests;
