//! The state changes of tickets, holds and reviews as pure functions: who may make a change,
//! from which state, and what the record looks like afterwards. A store runs them inside its
//! transaction (load, change, write) so every store applies the same rules; a refusal
//! leaves the record untouched.

use std::time::Duration;

use jiff::Timestamp;

use super::cover::bad_globs;
use super::model::{
    may_approve, Actor, Approval, Hold, HoldStatus, NewHold, NewReview, NewTicket, Refused,
    Requester, Review, Role, Ticket, TicketStatus,
};

/// Who closes holds that nobody decided: expiry, withdrawal, restart.
pub const PGWARDEN: &str = "pgwarden";

fn need(by: &Actor, role: Role, doing: &str) -> Result<(), Refused> {
    if by.role >= role {
        return Ok(());
    }
    let name = match role {
        Role::Viewer => "viewer",
        Role::Approver => "approver or admin",
        Role::Admin => "admin",
    };
    Err(Refused::Forbidden(format!(
        "token {} may not {doing}; that needs {name}",
        by.name
    )))
}

fn need_reason(reason: &str) -> Result<(), Refused> {
    if reason.trim().is_empty() {
        return Err(Refused::Invalid("a reason is required".into()));
    }
    Ok(())
}

/// A ticket id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_ticket_id(id: &str) -> Result<(), Refused> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Refused::Invalid(format!(
            "ticket id {id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
        )))
    }
}

/// May `by` create tickets at all (checked before an id is generated)?
pub fn may_create_ticket(by: &Actor) -> Result<(), Refused> {
    need(by, Role::Approver, "create tickets")
}

/// The ticket `new` asks for, with its id, requested by `by`; every problem at once.
pub fn new_ticket(
    new: NewTicket,
    id: String,
    by: &Actor,
    now: Timestamp,
) -> Result<Ticket, Refused> {
    may_create_ticket(by)?;
    validate_ticket_id(&id)?;
    let mut errors = Vec::new();
    if new.title.trim().is_empty() {
        errors.push("title is required".to_string());
    }
    let approvals_required = new.approvals_required.unwrap_or(1);
    if approvals_required < 1 {
        errors.push("approvals_required must be at least 1".into());
    }
    if new.max_uses == Some(0) {
        errors.push("max_uses must be at least 1 (leave it out for no limit)".into());
    }
    if let Some(until) = new.valid_until {
        if until <= now {
            errors.push(format!("valid_until {until} is in the past"));
        }
        if new.valid_from.is_some_and(|from| from >= until) {
            errors.push("valid_from must be before valid_until".into());
        }
    }
    let s = &new.scope;
    for (part, globs) in [
        ("environments", &s.environments),
        ("databases", &s.databases),
        ("users", &s.users),
        ("rules", &s.rules),
        ("tags", &s.tags),
        ("objects", &s.objects),
    ] {
        errors.extend(bad_globs(part, globs));
    }
    if !errors.is_empty() {
        return Err(Refused::Invalid(errors.join("; ")));
    }
    Ok(Ticket {
        id,
        title: new.title,
        requester: Requester {
            token: Some(by.name.clone()),
            db_user: by.db_user.clone(),
        },
        status: TicketStatus::Pending,
        approvals: vec![],
        approvals_required,
        approver_groups: new.approver_groups,
        valid_from: new.valid_from,
        valid_until: new.valid_until,
        max_uses: new.max_uses,
        uses: 0,
        scope: new.scope,
        created_at: now,
        closed_by: None,
        reason: None,
    })
}

fn ticket_pending(t: &Ticket, now: Timestamp, doing: &str) -> Result<(), Refused> {
    if t.status != TicketStatus::Pending {
        return Err(Refused::Conflict(format!(
            "ticket {} is {}; only a pending ticket can be {doing}",
            t.id,
            t.status.name()
        )));
    }
    if let Some(until) = t.valid_until.filter(|u| *u <= now) {
        return Err(Refused::Conflict(format!(
            "ticket {} expired at {until}",
            t.id
        )));
    }
    Ok(())
}

pub fn approve_ticket(
    t: &mut Ticket,
    by: &Actor,
    comment: Option<String>,
    now: Timestamp,
) -> Result<(), Refused> {
    need(by, Role::Approver, "approve tickets")?;
    ticket_pending(t, now, "approved")?;
    may_approve(by, &t.requester, &t.approver_groups, &t.approvals)?;
    t.approvals.push(approval(by, comment, now));
    if t.approvals.len() >= t.approvals_required as usize {
        t.status = TicketStatus::Approved;
    }
    Ok(())
}

pub fn reject_ticket(
    t: &mut Ticket,
    by: &Actor,
    reason: String,
    now: Timestamp,
) -> Result<(), Refused> {
    need(by, Role::Approver, "reject tickets")?;
    need_reason(&reason)?;
    ticket_pending(t, now, "rejected")?;
    may_approve(by, &t.requester, &t.approver_groups, &[])?;
    t.status = TicketStatus::Rejected;
    t.closed_by = Some(by.name.clone());
    t.reason = Some(reason);
    Ok(())
}

/// Admin only; a pending or approved ticket (also one whose validity has just run out).
pub fn revoke_ticket(t: &mut Ticket, by: &Actor, reason: String) -> Result<(), Refused> {
    need(by, Role::Admin, "revoke tickets")?;
    need_reason(&reason)?;
    if !matches!(t.status, TicketStatus::Pending | TicketStatus::Approved) {
        return Err(Refused::Conflict(format!(
            "ticket {} is {}; only a pending or approved ticket can be revoked",
            t.id,
            t.status.name()
        )));
    }
    t.status = TicketStatus::Revoked;
    t.closed_by = Some(by.name.clone());
    t.reason = Some(reason);
    Ok(())
}

/// Is the ticket's validity over at `now` while it still reads pending or approved?
pub fn ticket_due(t: &Ticket, now: Timestamp) -> bool {
    matches!(t.status, TicketStatus::Pending | TicketStatus::Approved)
        && t.valid_until.is_some_and(|u| u <= now)
}

pub fn expire_ticket(t: &mut Ticket, now: Timestamp) -> Result<(), Refused> {
    if !ticket_due(t, now) {
        return Err(Refused::Conflict(format!(
            "ticket {} is {} and not due to expire",
            t.id,
            t.status.name()
        )));
    }
    t.status = TicketStatus::Expired;
    t.closed_by = Some(PGWARDEN.into());
    Ok(())
}

/// The hold `new` asks for (id 0: the store assigns it).
pub fn new_hold(new: NewHold, now: Timestamp) -> Hold {
    Hold {
        id: 0,
        status: HoldStatus::Pending,
        sql: new.sql,
        user: new.user,
        database: new.database,
        client_addr: new.client_addr,
        application_name: new.application_name,
        rules: new.rules,
        approvals_required: new.approvals_required.max(1),
        approver_groups: new.approver_groups,
        approvals: vec![],
        opened_at: now,
        expires_at: after(now, new.timeout),
        closed_at: None,
        closed_by: None,
        reason: None,
    }
}

/// `now + d`, saturating: a timeout too long to represent means "never".
pub fn after(now: Timestamp, d: Duration) -> Timestamp {
    now.saturating_add(d).unwrap_or(Timestamp::MAX)
}

fn hold_requester(h: &Hold) -> Requester {
    Requester {
        token: None,
        db_user: Some(h.user.clone()),
    }
}

fn hold_pending(h: &Hold, doing: &str) -> Result<(), Refused> {
    if h.status != HoldStatus::Pending {
        return Err(Refused::Conflict(format!(
            "hold {} is {}; only a pending hold can be {doing}",
            h.id,
            h.status.name()
        )));
    }
    Ok(())
}

fn close_hold(h: &mut Hold, status: HoldStatus, by: &str, reason: Option<String>, now: Timestamp) {
    h.status = status;
    h.closed_at = Some(now);
    h.closed_by = Some(by.into());
    h.reason = reason;
}

pub fn approve_hold(
    h: &mut Hold,
    by: &Actor,
    comment: Option<String>,
    now: Timestamp,
) -> Result<(), Refused> {
    need(by, Role::Approver, "approve holds")?;
    hold_pending(h, "approved")?;
    if now >= h.expires_at {
        // Its session is told it expired at this time, whether or not the expiry is
        // recorded yet (the store may be unreachable from the session's instance).
        return Err(Refused::Conflict(format!(
            "hold {} expired at {}",
            h.id, h.expires_at
        )));
    }
    may_approve(by, &hold_requester(h), &h.approver_groups, &h.approvals)?;
    h.approvals.push(approval(by, comment, now));
    if h.approvals.len() >= h.approvals_required as usize {
        close_hold(h, HoldStatus::Approved, &by.name, None, now);
    }
    Ok(())
}

/// One denial ends the hold, even after partial approvals (from the same approver too).
pub fn deny_hold(h: &mut Hold, by: &Actor, reason: String, now: Timestamp) -> Result<(), Refused> {
    need(by, Role::Approver, "deny holds")?;
    need_reason(&reason)?;
    hold_pending(h, "denied")?;
    may_approve(by, &hold_requester(h), &h.approver_groups, &[])?;
    close_hold(h, HoldStatus::Denied, &by.name, Some(reason), now);
    Ok(())
}

/// Admin only: a denial that needs no approver group and may end one's own hold.
pub fn revoke_hold(
    h: &mut Hold,
    by: &Actor,
    reason: String,
    now: Timestamp,
) -> Result<(), Refused> {
    need(by, Role::Admin, "revoke holds")?;
    need_reason(&reason)?;
    hold_pending(h, "revoked")?;
    close_hold(h, HoldStatus::Denied, &by.name, Some(reason), now);
    Ok(())
}

pub fn withdraw_hold(h: &mut Hold, why: &str, now: Timestamp) -> Result<(), Refused> {
    hold_pending(h, "withdrawn")?;
    close_hold(h, HoldStatus::Withdrawn, PGWARDEN, Some(why.into()), now);
    Ok(())
}

pub fn expire_hold(h: &mut Hold, now: Timestamp) -> Result<(), Refused> {
    hold_pending(h, "expired")?;
    let why = "nobody approved or denied it before it expired";
    close_hold(h, HoldStatus::Expired, PGWARDEN, Some(why.into()), now);
    Ok(())
}

/// The review break-glass use `new` asks for (id 0: the store assigns it).
pub fn new_review(new: NewReview, now: Timestamp) -> Review {
    Review {
        id: 0,
        user: new.user,
        database: new.database,
        client_addr: new.client_addr,
        reason: new.reason,
        sql: new.sql,
        rules: new.rules,
        at: now,
        reviewed_by: None,
        reviewed_at: None,
        comment: None,
    }
}

/// Approver or admin, not the break-glass user themself, once.
pub fn mark_reviewed(
    r: &mut Review,
    by: &Actor,
    comment: Option<String>,
    now: Timestamp,
) -> Result<(), Refused> {
    need(by, Role::Approver, "review break-glass uses")?;
    if let Some(who) = &r.reviewed_by {
        return Err(Refused::Conflict(format!(
            "break-glass use {} was reviewed by {who} already",
            r.id
        )));
    }
    let requester = Requester {
        token: None,
        db_user: Some(r.user.clone()),
    };
    may_approve(by, &requester, &[], &[])?;
    r.reviewed_by = Some(by.name.clone());
    r.reviewed_at = Some(now);
    r.comment = comment;
    Ok(())
}

fn approval(by: &Actor, comment: Option<String>, now: Timestamp) -> Approval {
    Approval {
        by: by.name.clone(),
        db_user: by.db_user.clone(),
        at: now,
        comment,
    }
}
