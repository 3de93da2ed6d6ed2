//! The records of change management: tickets, holds, approvals and break-glass uses, as the
//! store keeps them and the admin API shows them (JSON field names are a contract). Plain
//! data plus the pure rules every store applies the same way (who may approve, when a
//! record's life has ended).

use serde::{Deserialize, Serialize};

/// What an admin token may do; each role can do everything the one before can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Approver,
    Admin,
}

/// Who acts through the admin API: a token holder. `db_user` links the token to the
/// database user its holder connects as, which (with a token named like a database user)
/// is how self-approval is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The token's name.
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub db_user: Option<String>,
}

/// Who asked for a ticket or whose statement is held.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requester {
    /// The token that created the ticket (none for a hold: a session asked).
    #[serde(default)]
    pub token: Option<String>,
    /// The database user.
    #[serde(default)]
    pub db_user: Option<String>,
}

impl Requester {
    /// True when `actor` is this requester (`same_person`). For a hold (no token) that
    /// is a token with the session's database user, or one named after it.
    pub fn is(&self, actor: &Actor) -> bool {
        same_person(
            (self.token.as_deref(), self.db_user.as_deref()),
            (Some(actor.name.as_str()), actor.db_user.as_deref()),
        )
    }
}

/// Whether two parties, each known by a token name and a database user (either may be
/// missing), are one person: some name of one is a name of the other. A token named like a
/// database user is that user's, so token `root` is database user `root` and the reverse.
fn same_person(a: (Option<&str>, Option<&str>), b: (Option<&str>, Option<&str>)) -> bool {
    let (a, b) = ([a.0, a.1], [b.0, b.1]);
    a.iter()
        .flatten()
        .any(|x| b.iter().flatten().any(|y| x == y))
}

/// One approval given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's token name.
    pub by: String,
    #[serde(default)]
    pub db_user: Option<String>,
    pub at: jiff::Timestamp,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Pending,
    Approved,
    Rejected,
    Revoked,
    Expired,
}

impl TicketStatus {
    pub fn name(self) -> &'static str {
        match self {
            TicketStatus::Pending => "pending",
            TicketStatus::Approved => "approved",
            TicketStatus::Rejected => "rejected",
            TicketStatus::Revoked => "revoked",
            TicketStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<TicketStatus> {
        Some(match s {
            "pending" => TicketStatus::Pending,
            "approved" => TicketStatus::Approved,
            "rejected" => TicketStatus::Rejected,
            "revoked" => TicketStatus::Revoked,
            "expired" => TicketStatus::Expired,
            _ => return None,
        })
    }
}

/// What a ticket covers. Every list given must hold (an empty list: anything); entries of
/// a list are alternatives. `objects` are globs (`public.orders*`); `statements` are the
/// normalized fingerprints of the exact statements allowed (a migration file's).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub objects: Vec<String>,
    #[serde(default)]
    pub statements: Vec<String>,
}

/// A change ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub title: String,
    pub requester: Requester,
    pub status: TicketStatus,
    pub approvals: Vec<Approval>,
    pub approvals_required: u32,
    /// Groups an approver must belong to (any of them); empty: any approver.
    #[serde(default)]
    pub approver_groups: Vec<String>,
    #[serde(default)]
    pub valid_from: Option<jiff::Timestamp>,
    #[serde(default)]
    pub valid_until: Option<jiff::Timestamp>,
    /// How many statements it may let through; none: no limit.
    #[serde(default)]
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub scope: Scope,
    pub created_at: jiff::Timestamp,
    /// Why it was rejected or revoked, and by whom.
    #[serde(default)]
    pub closed_by: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A request to create a ticket (the body of `POST /api/tickets`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    /// Given (`CHG-1234`) or generated.
    #[serde(default)]
    pub id: Option<String>,
    pub title: String,
    #[serde(default)]
    pub approvals_required: Option<u32>,
    #[serde(default)]
    pub approver_groups: Vec<String>,
    #[serde(default)]
    pub valid_from: Option<jiff::Timestamp>,
    #[serde(default)]
    pub valid_until: Option<jiff::Timestamp>,
    #[serde(default)]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Withdrawn,
}

impl HoldStatus {
    pub fn name(self) -> &'static str {
        match self {
            HoldStatus::Pending => "pending",
            HoldStatus::Approved => "approved",
            HoldStatus::Denied => "denied",
            HoldStatus::Expired => "expired",
            HoldStatus::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<HoldStatus> {
        Some(match s {
            "pending" => HoldStatus::Pending,
            "approved" => HoldStatus::Approved,
            "denied" => HoldStatus::Denied,
            "expired" => HoldStatus::Expired,
            "withdrawn" => HoldStatus::Withdrawn,
            _ => return None,
        })
    }
}

/// A rule that held a statement, as the approver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRule {
    pub id: String,
    pub message: String,
    #[serde(default)]
    pub hint: Option<String>,
}

/// A statement held at pgwarden until it is approved, denied, expires or is withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: u64,
    pub status: HoldStatus,
    /// The statement text (literals redacted unless configured otherwise).
    pub sql: String,
    pub user: String,
    pub database: String,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(default)]
    pub application_name: String,
    pub rules: Vec<HeldRule>,
    pub approvals_required: u32,
    #[serde(default)]
    pub approver_groups: Vec<String>,
    pub approvals: Vec<Approval>,
    pub opened_at: jiff::Timestamp,
    pub expires_at: jiff::Timestamp,
    #[serde(default)]
    pub closed_at: Option<jiff::Timestamp>,
    /// Who ended it (approver, denier), or `pgwarden` for expiry and withdrawal.
    #[serde(default)]
    pub closed_by: Option<String>,
    /// The denial's reason, or why it was withdrawn.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a session asks to hold (the store adds id, status and times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    pub sql: String,
    pub user: String,
    pub database: String,
    pub client_addr: Option<String>,
    pub application_name: String,
    pub rules: Vec<HeldRule>,
    pub approvals_required: u32,
    pub approver_groups: Vec<String>,
    pub timeout: std::time::Duration,
}

/// A statement run under break-glass, listed until an approver marks it reviewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub id: u64,
    pub user: String,
    pub database: String,
    #[serde(default)]
    pub client_addr: Option<String>,
    pub reason: String,
    pub sql: String,
    /// Rules that would have held it or asked for a ticket.
    pub rules: Vec<String>,
    pub at: jiff::Timestamp,
    #[serde(default)]
    pub reviewed_by: Option<String>,
    #[serde(default)]
    pub reviewed_at: Option<jiff::Timestamp>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// What a session records when break-glass lets a statement through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReview {
    pub user: String,
    pub database: String,
    pub client_addr: Option<String>,
    pub reason: String,
    pub sql: String,
    pub rules: Vec<String>,
}

/// Why an approval (or another decision by an actor) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} not found")]
    NotFound(String),
    /// The role may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The record's state does not allow it (HTTP 409): already ended, approving twice,
    /// approving one's own change.
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
}

/// May `actor` approve (or deny) something `requester` asked for, needing one of `groups`,
/// with `given` approvals so far? The same rule for tickets and holds.
pub fn may_approve(
    actor: &Actor,
    requester: &Requester,
    groups: &[String],
    given: &[Approval],
) -> Result<(), Refused> {
    if actor.role < Role::Approver {
        return Err(Refused::Forbidden(format!(
            "token {} has role viewer; approving needs approver or admin",
            actor.name
        )));
    }
    if requester.is(actor) {
        return Err(Refused::Conflict(
            "an approver cannot approve or deny their own change".into(),
        ));
    }
    if !groups.is_empty() && !actor.groups.iter().any(|g| groups.contains(g)) {
        return Err(Refused::Forbidden(format!(
            "approving this needs a member of {}; token {} is not",
            groups.join(" or "),
            actor.name
        )));
    }
    if given.iter().any(|a| {
        same_person(
            (Some(a.by.as_str()), a.db_user.as_deref()),
            (Some(actor.name.as_str()), actor.db_user.as_deref()),
        )
    }) {
        return Err(Refused::Conflict(format!(
            "{} has approved this already; each approval must come from a distinct approver",
            actor.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(name: &str, role: Role, db_user: Option<&str>, groups: &[&str]) -> Actor {
        Actor {
            name: name.into(),
            role,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            db_user: db_user.map(Into::into),
        }
    }

    #[test]
    fn self_approval_by_token_or_db_user_is_refused() {
        let req = Requester {
            token: Some("alice".into()),
            db_user: Some("alice_db".into()),
        };
        let same_token = actor("alice", Role::Approver, None, &[]);
        let same_user = actor("alice2", Role::Admin, Some("alice_db"), &[]);
        let other = actor("bob", Role::Approver, Some("bob_db"), &[]);
        assert!(matches!(
            may_approve(&same_token, &req, &[], &[]),
            Err(Refused::Conflict(_))
        ));
        assert!(matches!(
            may_approve(&same_user, &req, &[], &[]),
            Err(Refused::Conflict(_))
        ));
        assert!(may_approve(&other, &req, &[], &[]).is_ok());
    }

    #[test]
    fn viewers_groups_and_distinct_approvers() {
        let req = Requester::default();
        let viewer = actor("v", Role::Viewer, None, &[]);
        assert!(matches!(
            may_approve(&viewer, &req, &[], &[]),
            Err(Refused::Forbidden(_))
        ));
        let dba = actor("d", Role::Approver, Some("d_db"), &["dba"]);
        let dev = actor("e", Role::Approver, None, &["dev"]);
        let groups = vec!["dba".to_string()];
        assert!(may_approve(&dba, &req, &groups, &[]).is_ok());
        assert!(matches!(
            may_approve(&dev, &req, &groups, &[]),
            Err(Refused::Forbidden(_))
        ));
        let given = vec![Approval {
            by: "d".into(),
            db_user: Some("d_db".into()),
            at: jiff::Timestamp::UNIX_EPOCH,
            comment: None,
        }];
        assert!(matches!(
            may_approve(&dba, &req, &groups, &given),
            Err(Refused::Conflict(_))
        ));
        // A second token of the same database user is the same person.
        let dba2 = actor("d2", Role::Approver, Some("d_db"), &["dba"]);
        assert!(matches!(
            may_approve(&dba2, &req, &groups, &given),
            Err(Refused::Conflict(_))
        ));
    }
}
