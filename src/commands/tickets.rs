//! `pgwarden tickets list | show ID | create ID --title T ... | approve ID | reject ID
//! --reason T | revoke ID --reason T`. `create --statements FILE` pins the ticket to the
//! exact statements of a migration file by their fingerprints ([`crate::sql::fingerprint`]).
//! Text output shows stored strings [`printable`]; `--format json` is the API's verbatim.

use std::io::Read;
use std::time::Duration;

use serde_json::json;

use super::client::{
    one_line, printable, run_command, segment, table, when, AdminClient, Answer, CliError,
    ClientArgs,
};
use super::holds::print;
use crate::approval::model::{NewTicket, Scope, Ticket};

#[derive(Debug, clap::Args)]
pub struct TicketsArgs {
    #[command(subcommand)]
    pub command: Option<TicketsCommand>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TicketsCommand {
    /// List tickets.
    List {
        /// pending, approved, rejected, revoked, expired or all [default: all].
        #[arg(long, value_name = "S")]
        status: Option<String>,
    },
    /// Everything about one ticket, with its scope.
    Show { id: String },
    /// Open a ticket (approver or admin tokens); it needs approval before it covers anything.
    Create(Box<CreateArgs>),
    /// Approve a ticket (not one's own).
    Approve {
        id: String,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Reject a pending ticket.
    Reject {
        id: String,
        #[arg(long, value_name = "TEXT", required = true)]
        reason: String,
    },
    /// Revoke a ticket (admin tokens only): it covers nothing from now on.
    Revoke {
        id: String,
        #[arg(long, value_name = "TEXT", required = true)]
        reason: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The ticket id, e.g. the change request's (CHG-1234).
    pub id: String,
    #[arg(long, value_name = "T")]
    pub title: String,
    /// Approvals needed before it covers anything [default: 1].
    #[arg(long, value_name = "N")]
    pub approvals: Option<u32>,
    /// An approver must belong to one of these groups.
    #[arg(long = "approver-group", value_name = "G")]
    pub approver_groups: Vec<String>,
    /// Not valid before (RFC 3339, e.g. 2025-06-01T22:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub valid_from: Option<jiff::Timestamp>,
    /// Not valid after (RFC 3339).
    #[arg(long, value_name = "RFC3339", conflicts_with = "valid_for")]
    pub valid_until: Option<jiff::Timestamp>,
    /// Valid for this long from now (or from --valid-from), e.g. 2h.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub valid_for: Option<Duration>,
    /// How many statements it may let through.
    #[arg(long, value_name = "N")]
    pub max_uses: Option<u32>,
    /// Environments it covers (repeat for several; none: any).
    #[arg(long = "env", value_name = "E")]
    pub environments: Vec<String>,
    #[arg(long = "database", value_name = "D")]
    pub databases: Vec<String>,
    #[arg(long = "user", value_name = "U")]
    pub users: Vec<String>,
    /// Rule ids it answers.
    #[arg(long = "rule", value_name = "R")]
    pub rules: Vec<String>,
    /// Statement tags it covers.
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Objects it covers, as globs (public.orders*).
    #[arg(long = "object", value_name = "GLOB")]
    pub objects: Vec<String>,
    /// Cover exactly the statements of this SQL file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub statements: Option<String>,
}

pub fn run(args: TicketsArgs) -> i32 {
    run_command(tickets(args))
}

pub async fn tickets(args: TicketsArgs) -> Result<(), CliError> {
    let format = args.client.format;
    let command = args
        .command
        .unwrap_or(TicketsCommand::List { status: None });
    // Read and check the migration file before anything goes over the wire.
    let new = match &command {
        TicketsCommand::Create(c) => Some(new_ticket(c, jiff::Timestamp::now())?),
        _ => None,
    };
    let c = AdminClient::new(&args.client)?;
    match command {
        TicketsCommand::List { status } => {
            let path = match status.as_deref() {
                None | Some("all") => "/api/tickets".to_owned(),
                Some(s) => format!("/api/tickets?status={}", segment(s)),
            };
            let a: Answer<Vec<Ticket>> = c.get(&path).await?;
            print(format, &a, || list(&a.value));
        }
        TicketsCommand::Show { id } => {
            let a: Answer<Ticket> = c.get(&format!("/api/tickets/{}", segment(&id))).await?;
            print(format, &a, || show(&a.value));
        }
        TicketsCommand::Create(_) => {
            let body = serde_json::to_value(new.expect("built above"))
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let a: Answer<Ticket> = c.post("/api/tickets", &body).await?;
            print(format, &a, || {
                format!("ticket {} created: {}\n", a.value.id, status_line(&a.value))
            });
        }
        TicketsCommand::Approve { id, comment } => {
            let a: Answer<Ticket> = c
                .post(
                    &format!("/api/tickets/{}/approve", segment(&id)),
                    &json!({ "comment": comment }),
                )
                .await?;
            print(format, &a, || summary(&a.value));
        }
        TicketsCommand::Reject { id, reason } => {
            let a: Answer<Ticket> = c
                .post(
                    &format!("/api/tickets/{}/reject", segment(&id)),
                    &json!({ "reason": reason }),
                )
                .await?;
            print(format, &a, || summary(&a.value));
        }
        TicketsCommand::Revoke { id, reason } => {
            let a: Answer<Ticket> = c
                .post(
                    &format!("/api/tickets/{}/revoke", segment(&id)),
                    &json!({ "reason": reason }),
                )
                .await?;
            print(format, &a, || summary(&a.value));
        }
    }
    Ok(())
}

/// The request `tickets create` sends, with `now` the start of `--valid-for`.
pub fn new_ticket(c: &CreateArgs, now: jiff::Timestamp) -> Result<NewTicket, CliError> {
    let valid_until = match (c.valid_until, c.valid_for) {
        (Some(t), _) => Some(t),
        (None, Some(d)) => {
            let from = c.valid_from.unwrap_or(now);
            let span = jiff::SignedDuration::try_from(d)
                .map_err(|e| CliError::Usage(format!("--valid-for: {e}")))?;
            Some(
                from.checked_add(span)
                    .map_err(|e| CliError::Usage(format!("--valid-for: {e}")))?,
            )
        }
        (None, None) => None,
    };
    let statements = match &c.statements {
        Some(file) => statement_fingerprints(file)?,
        None => Vec::new(),
    };
    Ok(NewTicket {
        id: Some(c.id.clone()),
        title: c.title.clone(),
        approvals_required: c.approvals,
        approver_groups: c.approver_groups.clone(),
        valid_from: c.valid_from,
        valid_until,
        max_uses: c.max_uses,
        scope: Scope {
            environments: c.environments.clone(),
            databases: c.databases.clone(),
            users: c.users.clone(),
            rules: c.rules.clone(),
            tags: c.tags.clone(),
            objects: c.objects.clone(),
            statements,
        },
    })
}

/// The fingerprints of every statement in `file` (`-`: standard input), in file order,
/// each once.
fn statement_fingerprints(file: &str) -> Result<Vec<String>, CliError> {
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    read.map_err(|e| CliError::Usage(format!("cannot read {file}: {e}")))?;
    let mut all = crate::sql::fingerprints(&text, crate::sql::ReadAs::default())
        .map_err(|e| CliError::Usage(format!("{file}: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    all.retain(|f| seen.insert(f.clone()));
    Ok(all)
}

fn status_line(t: &Ticket) -> String {
    format!(
        "{} ({} of {} approvals)",
        t.status.name(),
        t.approvals.len(),
        t.approvals_required
    )
}

fn summary(t: &Ticket) -> String {
    format!("ticket {}: {}\n", t.id, status_line(t))
}

pub fn list(tickets: &[Ticket]) -> String {
    if tickets.is_empty() {
        return "no tickets\n".into();
    }
    let rows: Vec<Vec<String>> = tickets
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.status.name().to_owned(),
                format!("{}/{}", t.approvals.len(), t.approvals_required),
                match t.max_uses {
                    Some(m) => format!("{}/{m}", t.uses),
                    None => t.uses.to_string(),
                },
                t.valid_until.as_ref().map(when).unwrap_or_default(),
                t.requester.token.clone().unwrap_or_default(),
                one_line(&t.title, 60),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "APPROVALS",
            "USES",
            "VALID UNTIL",
            "REQUESTER",
            "TITLE",
        ],
        &rows,
    )
}

/// One ticket in full; every stored string [`printable`].
pub fn show(t: &Ticket) -> String {
    let mut s = String::new();
    let mut field = |k: &str, v: &str| {
        if !v.is_empty() {
            s.push_str(&format!("{k:<14} {}\n", printable(v)));
        }
    };
    field("ticket", &t.id);
    field("title", &t.title);
    field("status", &status_line(t));
    field("requester", t.requester.token.as_deref().unwrap_or(""));
    field("groups", &t.approver_groups.join(", "));
    field("created", &when(&t.created_at));
    field(
        "valid from",
        &t.valid_from.as_ref().map(when).unwrap_or_default(),
    );
    field(
        "valid until",
        &t.valid_until.as_ref().map(when).unwrap_or_default(),
    );
    field(
        "uses",
        &match t.max_uses {
            Some(m) => format!("{} of {m}", t.uses),
            None => t.uses.to_string(),
        },
    );
    field("closed by", t.closed_by.as_deref().unwrap_or(""));
    field("reason", t.reason.as_deref().unwrap_or(""));
    let sc = &t.scope;
    field("environments", &sc.environments.join(", "));
    field("databases", &sc.databases.join(", "));
    field("users", &sc.users.join(", "));
    field("rules", &sc.rules.join(", "));
    field("tags", &sc.tags.join(", "));
    field("objects", &sc.objects.join(", "));
    field("statements", &sc.statements.join(", "));
    for a in &t.approvals {
        s.push_str(&format!(
            "approved by    {} at {}{}\n",
            printable(&a.by),
            when(&a.at),
            a.comment
                .as_deref()
                .map(|c| format!(": {}", printable(c)))
                .unwrap_or_default()
        ));
    }
    s
}
