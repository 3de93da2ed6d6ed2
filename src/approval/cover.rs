//! Does a ticket cover a statement? A pure check of the ticket's state, validity window, use
//! count and scope against what the statement presents; the answer says precisely what did
//! not match, because the session puts it in its refusal.
//!
//! Scope matching, list by list (an empty list allows anything; entries are alternatives):
//! - `environments`, `databases`, `users`: the one presented value must match a glob;
//! - `rules`, `tags`: every presented value must match a glob;
//! - `objects`: every object must match a glob. Objects are compared case-sensitively, as
//!   the policy's `objects` are: the inspector has already folded them as PostgreSQL folds
//!   identifiers, so `"Orders"` and `orders` are different tables. An object the statement
//!   names unqualified (`orders`) is covered by a glob that matches it as written or that
//!   matches `public.orders`: it is read as PostgreSQL's default `search_path` reads it. It
//!   is deliberately *not* matched against the glob's unqualified part (`app.*` would then
//!   cover every unqualified name in any schema); a change under another `search_path`
//!   names its objects schema-qualified, or the ticket lists the unqualified name;
//! - `statements`: every presented fingerprint must be in the list exactly.
//!
//! All globs but `objects` are case-insensitive; globs are compiled as the policy compiles
//! them ([`Globs`]).

use std::fmt;

use jiff::Timestamp;

use super::model::{Ticket, TicketStatus};
use crate::policy::matcher::Globs;

/// What a statement presents to a ticket.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub environment: &'a str,
    pub database: &'a str,
    pub user: &'a str,
    /// The require_ticket rules that matched.
    pub rules: &'a [String],
    /// Statement tags.
    pub tags: &'a [String],
    /// Objects the statement touches (schema-qualified as written).
    pub objects: &'a [String],
    /// Normalized fingerprint of each statement.
    pub fingerprints: &'a [String],
    pub now: Timestamp,
}

/// What a statement presents, owned (a wait carries it to the store).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    pub environment: String,
    pub database: String,
    pub user: String,
    pub rules: Vec<String>,
    pub tags: Vec<String>,
    pub objects: Vec<String>,
    pub fingerprints: Vec<String>,
}

impl Shown {
    /// An owned copy of what `p` presents (its `now` aside).
    pub fn of(p: &Presented<'_>) -> Shown {
        Shown {
            environment: p.environment.into(),
            database: p.database.into(),
            user: p.user.into(),
            rules: p.rules.to_vec(),
            tags: p.tags.to_vec(),
            objects: p.objects.to_vec(),
            fingerprints: p.fingerprints.to_vec(),
        }
    }

    /// Borrowed, as seen at `now`.
    pub fn presented(&self, now: Timestamp) -> Presented<'_> {
        Presented {
            environment: &self.environment,
            database: &self.database,
            user: &self.user,
            rules: &self.rules,
            tags: &self.tags,
            objects: &self.objects,
            fingerprints: &self.fingerprints,
            now,
        }
    }
}

/// Why a ticket does not cover a statement. Its `Display` is a clause meant to follow the
/// ticket's name: "ticket CHG-12 does not cover this: it is used up (3 of 3 uses)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncovered {
    /// No such ticket.
    Unknown,
    /// Pending, rejected, revoked or expired.
    Status(TicketStatus),
    /// `valid_from` is in the future.
    NotYetValid(Timestamp),
    /// `valid_until` has passed (the status may still read approved).
    Expired(Timestamp),
    UsedUp {
        uses: u32,
        max: u32,
    },
    /// `part`: "environment", "database", "user", "rule", "tag", "object" or "statement".
    OutOfScope {
        part: &'static str,
        value: String,
    },
}

impl fmt::Display for Uncovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uncovered::Unknown => f.write_str("there is no such ticket"),
            Uncovered::Status(TicketStatus::Pending) => {
                f.write_str("it is pending: it does not have all its approvals yet")
            }
            Uncovered::Status(TicketStatus::Approved) => f.write_str("it is approved"),
            Uncovered::Status(TicketStatus::Rejected) => f.write_str("it was rejected"),
            Uncovered::Status(TicketStatus::Revoked) => f.write_str("it was revoked"),
            Uncovered::Status(TicketStatus::Expired) => f.write_str("it has expired"),
            Uncovered::NotYetValid(t) => write!(f, "it is not valid before {t}"),
            Uncovered::Expired(t) => write!(f, "it expired at {t}"),
            Uncovered::UsedUp { uses, max } if uses >= max => {
                write!(f, "it is used up ({uses} of {max} uses)")
            }
            Uncovered::UsedUp { uses, max } => write!(
                f,
                "it has only {} of its {max} uses left, fewer than the statements that need it",
                max - uses
            ),
            Uncovered::OutOfScope { part, value } => {
                write!(f, "its scope does not cover the {part} {value:?}")?;
                if *part == "object" && !value.contains('.') {
                    write!(f, " (an unqualified name is read as public.{value})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Uncovered {}

/// Does `t` cover the statement `p` presents? Checks, in order: the ticket's state, its
/// validity window at `p.now` (a ticket whose `valid_until` has passed is expired even
/// before the expiry task marks it so), its uses, then its scope.
pub fn cover(t: &Ticket, p: &Presented) -> Result<(), Uncovered> {
    match t.status {
        TicketStatus::Rejected | TicketStatus::Revoked => return Err(Uncovered::Status(t.status)),
        TicketStatus::Pending | TicketStatus::Approved | TicketStatus::Expired => {}
    }
    if let Some(until) = t.valid_until {
        if p.now >= until {
            return Err(Uncovered::Expired(until));
        }
    }
    if t.status != TicketStatus::Approved {
        return Err(Uncovered::Status(t.status));
    }
    if let Some(from) = t.valid_from {
        if p.now < from {
            return Err(Uncovered::NotYetValid(from));
        }
    }
    if let Some(max) = t.max_uses {
        // Each statement the ticket would let through is one use.
        let wanted = p.fingerprints.len().max(1) as u32;
        if t.uses.saturating_add(wanted) > max {
            return Err(Uncovered::UsedUp { uses: t.uses, max });
        }
    }
    let s = &t.scope;
    each(
        "environment",
        &s.environments,
        true,
        &[p.environment],
        plain,
    )?;
    each("database", &s.databases, true, &[p.database], plain)?;
    each("user", &s.users, true, &[p.user], plain)?;
    each("rule", &s.rules, true, p.rules, plain)?;
    each("tag", &s.tags, true, p.tags, plain)?;
    each("object", &s.objects, false, p.objects, object)?;
    if !s.statements.is_empty() {
        if let Some(fp) = p.fingerprints.iter().find(|fp| !s.statements.contains(fp)) {
            return Err(out("statement", fp));
        }
    }
    Ok(())
}

/// Every value must match one of `patterns` (none given: anything goes). A pattern that
/// does not compile (the store validates them, so only a hand-edited database has one)
/// matches nothing.
fn each<S: AsRef<str>>(
    part: &'static str,
    patterns: &[String],
    case_insensitive: bool,
    values: &[S],
    matches: fn(&Globs, &str) -> bool,
) -> Result<(), Uncovered> {
    if patterns.is_empty() {
        return Ok(());
    }
    let globs = Globs::new(patterns, case_insensitive).ok();
    for v in values {
        let v = v.as_ref();
        if !globs.as_ref().is_some_and(|g| matches(g, v)) {
            return Err(out(part, v));
        }
    }
    Ok(())
}

fn plain(g: &Globs, v: &str) -> bool {
    g.any(v)
}

fn object(g: &Globs, v: &str) -> bool {
    g.any(v) || (!v.contains('.') && g.any(&format!("public.{v}")))
}

fn out(part: &'static str, value: &str) -> Uncovered {
    Uncovered::OutOfScope {
        part,
        value: value.to_string(),
    }
}

/// The globs of `patterns` that do not compile, as messages (for validating a new ticket).
pub fn bad_globs(part: &str, patterns: &[String]) -> Vec<String> {
    patterns
        .iter()
        .filter_map(|p| {
            Globs::new(std::slice::from_ref(p), true)
                .err()
                .map(|e| format!("scope.{part}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::model::{Requester, Scope};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ticket(scope: Scope) -> Ticket {
        Ticket {
            id: "CHG-1".into(),
            title: "t".into(),
            requester: Requester::default(),
            status: TicketStatus::Approved,
            approvals: vec![],
            approvals_required: 1,
            approver_groups: vec![],
            valid_from: Some(ts("2030-01-01T00:00:00Z")),
            valid_until: Some(ts("2030-01-02T00:00:00Z")),
            max_uses: Some(3),
            uses: 0,
            scope,
            created_at: ts("2029-12-31T00:00:00Z"),
            closed_by: None,
            reason: None,
        }
    }

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|x| x.to_string()).collect()
    }

    struct Owned {
        rules: Vec<String>,
        tags: Vec<String>,
        objects: Vec<String>,
        fingerprints: Vec<String>,
    }

    fn owned() -> Owned {
        Owned {
            rules: v(&["ddl.drop-column"]),
            tags: v(&["ALTER TABLE"]),
            objects: v(&["public.orders", "orders_archive"]),
            fingerprints: v(&["fp1", "fp2"]),
        }
    }

    fn presented(o: &Owned) -> Presented<'_> {
        Presented {
            environment: "prod",
            database: "shop",
            user: "deploy",
            rules: &o.rules,
            tags: &o.tags,
            objects: &o.objects,
            fingerprints: &o.fingerprints,
            now: ts("2030-01-01T12:00:00Z"),
        }
    }

    fn full_scope() -> Scope {
        Scope {
            environments: v(&["PROD"]),
            databases: v(&["shop", "other"]),
            users: v(&["deploy*"]),
            rules: v(&["ddl.*"]),
            tags: v(&["alter *"]),
            objects: v(&["public.orders*"]),
            statements: v(&["fp1", "fp2", "fp3"]),
        }
    }

    fn out(part: &'static str, value: &str) -> Result<(), Uncovered> {
        Err(Uncovered::OutOfScope {
            part,
            value: value.into(),
        })
    }

    #[test]
    fn covers_within_scope_and_with_an_empty_scope() {
        let o = owned();
        assert_eq!(cover(&ticket(full_scope()), &presented(&o)), Ok(()));
        assert_eq!(cover(&ticket(Scope::default()), &presented(&o)), Ok(()));
        let mut t = ticket(Scope::default());
        t.valid_from = None;
        t.valid_until = None;
        t.max_uses = None;
        t.uses = 1000;
        assert_eq!(cover(&t, &presented(&o)), Ok(()));
    }

    #[test]
    fn unknown_says_so() {
        assert_eq!(Uncovered::Unknown.to_string(), "there is no such ticket");
    }

    #[test]
    fn a_ticket_that_is_not_approved_does_not_cover() {
        let o = owned();
        for s in [
            TicketStatus::Pending,
            TicketStatus::Rejected,
            TicketStatus::Revoked,
            TicketStatus::Expired,
        ] {
            let mut t = ticket(Scope::default());
            t.status = s;
            t.valid_until = None;
            assert_eq!(cover(&t, &presented(&o)), Err(Uncovered::Status(s)));
        }
        assert_eq!(
            Uncovered::Status(TicketStatus::Revoked).to_string(),
            "it was revoked"
        );
        assert!(Uncovered::Status(TicketStatus::Pending)
            .to_string()
            .starts_with("it is pending"));
    }

    #[test]
    fn valid_until_passed_is_expired_even_while_the_status_reads_approved() {
        let o = owned();
        let mut p = presented(&o);
        p.now = ts("2030-01-02T00:00:00Z");
        let t = ticket(Scope::default());
        assert_eq!(
            cover(&t, &p),
            Err(Uncovered::Expired(t.valid_until.unwrap()))
        );
        assert_eq!(
            Uncovered::Expired(ts("2030-01-02T00:00:00Z")).to_string(),
            "it expired at 2030-01-02T00:00:00Z"
        );
        // A rejection is the more useful answer than the expiry.
        let mut t = t;
        t.status = TicketStatus::Rejected;
        assert_eq!(
            cover(&t, &p),
            Err(Uncovered::Status(TicketStatus::Rejected))
        );
    }

    #[test]
    fn not_yet_valid() {
        let o = owned();
        let mut p = presented(&o);
        p.now = ts("2029-12-31T23:59:59Z");
        let t = ticket(Scope::default());
        assert_eq!(
            cover(&t, &p),
            Err(Uncovered::NotYetValid(t.valid_from.unwrap()))
        );
        assert_eq!(
            Uncovered::NotYetValid(ts("2030-01-01T00:00:00Z")).to_string(),
            "it is not valid before 2030-01-01T00:00:00Z"
        );
    }

    #[test]
    fn used_up() {
        let o = owned();
        let mut t = ticket(Scope::default());
        // Two statements need the ticket: two uses.
        t.uses = 1;
        assert_eq!(cover(&t, &presented(&o)), Ok(()));
        t.uses = 2;
        let e = cover(&t, &presented(&o)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it has only 1 of its 3 uses left, fewer than the statements that need it"
        );
        t.uses = 3;
        let e = cover(&t, &presented(&o)).unwrap_err();
        assert_eq!(e, Uncovered::UsedUp { uses: 3, max: 3 });
        assert_eq!(e.to_string(), "it is used up (3 of 3 uses)");
    }

    #[test]
    fn each_scope_part_names_the_value_that_did_not_match() {
        let o = owned();
        let p = presented(&o);
        type Case = (fn(&mut Scope), Result<(), Uncovered>);
        let cases: [Case; 7] = [
            (
                |s| s.environments = v(&["staging"]),
                out("environment", "prod"),
            ),
            (|s| s.databases = v(&["sho"]), out("database", "shop")),
            (|s| s.users = v(&["admin"]), out("user", "deploy")),
            (|s| s.rules = v(&["dml.*"]), out("rule", "ddl.drop-column")),
            (|s| s.tags = v(&["DROP *"]), out("tag", "ALTER TABLE")),
            (
                |s| s.objects = v(&["public.orders"]),
                out("object", "orders_archive"),
            ),
            (|s| s.statements = v(&["fp1"]), out("statement", "fp2")),
        ];
        for (change, want) in cases {
            let mut s = full_scope();
            change(&mut s);
            assert_eq!(cover(&ticket(s), &p), want);
        }
    }

    #[test]
    fn every_rule_tag_and_object_must_be_covered_not_just_one() {
        let mut o = owned();
        o.rules.push("dml.delete-all".into());
        o.tags.push("DROP TABLE".into());
        let p = presented(&o);
        let s = Scope {
            rules: v(&["ddl.*"]),
            ..Scope::default()
        };
        assert_eq!(cover(&ticket(s), &p), out("rule", "dml.delete-all"));
        let s = Scope {
            tags: v(&["ALTER TABLE"]),
            ..Scope::default()
        };
        assert_eq!(cover(&ticket(s), &p), out("tag", "DROP TABLE"));
    }

    #[test]
    fn objects_are_case_sensitive_and_unqualified_names_are_read_as_public() {
        let mut o = owned();
        let mut s = Scope {
            objects: v(&["public.orders*"]),
            ..Scope::default()
        };
        // `orders_archive` (unqualified) is covered as public.orders_archive.
        assert_eq!(cover(&ticket(s.clone()), &presented(&o)), Ok(()));
        o.objects = v(&["public.Orders"]);
        assert_eq!(
            cover(&ticket(s.clone()), &presented(&o)),
            out("object", "public.Orders")
        );
        // Not matched against the glob's unqualified part: app.* does not cover `orders`.
        o.objects = v(&["orders"]);
        s.objects = v(&["app.*"]);
        let e = cover(&ticket(s), &presented(&o)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "its scope does not cover the object \"orders\" (an unqualified name is read as public.orders)"
        );
        // A qualified name is not matched against an unqualified glob's schema.
        o.objects = v(&["app.orders"]);
        let s = Scope {
            objects: v(&["orders"]),
            ..Scope::default()
        };
        assert_eq!(
            cover(&ticket(s), &presented(&o)),
            out("object", "app.orders")
        );
    }

    #[test]
    fn invalid_globs_are_reported() {
        assert_eq!(bad_globs("tags", &v(&["ok*", "a[b"])).len(), 1);
        assert!(bad_globs("tags", &v(&["ok*"])).is_empty());
    }
}
