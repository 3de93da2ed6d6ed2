//! `pgwarden holds [list] [--status S] | show ID | approve ID [--comment T] | deny ID
//! --reason T | revoke ID [--reason T]`: what is waiting, and the approver's answer.
//! Text output shows stored strings [`printable`]; `--format json` is the API's verbatim.

use serde_json::json;

use super::client::{
    one_line, printable, run_command, table, when, AdminClient, Answer, CliError, ClientArgs,
    OutputFormat,
};
use crate::approval::model::Hold;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HoldsArgs {
    #[command(subcommand)]
    pub command: Option<HoldsCommand>,
    /// With no subcommand: list holds in this status (pending, approved, denied, expired,
    /// withdrawn, all) [default: pending].
    #[arg(long, value_name = "S")]
    pub status: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum HoldsCommand {
    /// List holds: id, status, who, where, rules, approvals, times and the SQL.
    List {
        /// pending, approved, denied, expired, withdrawn or all [default: pending].
        #[arg(long, value_name = "S")]
        status: Option<String>,
    },
    /// Everything about one hold, with its full SQL.
    Show { id: u64 },
    /// Approve a held statement (it runs once enough approvers agree).
    Approve {
        id: u64,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Deny a held statement; the client gets an error with the reason.
    Deny {
        id: u64,
        #[arg(long, value_name = "TEXT", required = true)]
        reason: String,
    },
    /// End a hold as an administrator (admin tokens only).
    Revoke {
        id: u64,
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

pub fn run(args: HoldsArgs) -> i32 {
    run_command(holds(args))
}

pub async fn holds(args: HoldsArgs) -> Result<(), CliError> {
    let c = AdminClient::new(&args.client)?;
    let format = args.client.format;
    match args.command.unwrap_or(HoldsCommand::List {
        status: args.status,
    }) {
        HoldsCommand::List { status } => {
            let status = status.unwrap_or_else(|| "pending".into());
            let path = if status == "all" {
                "/api/holds".to_owned()
            } else {
                format!("/api/holds?status={}", super::client::segment(&status))
            };
            let a: Answer<Vec<Hold>> = c.get(&path).await?;
            print(format, &a, || list(&a.value));
        }
        HoldsCommand::Show { id } => {
            let a: Answer<Hold> = c.get(&format!("/api/holds/{id}")).await?;
            print(format, &a, || show(&a.value));
        }
        HoldsCommand::Approve { id, comment } => {
            let a: Answer<Hold> = c
                .post(
                    &format!("/api/holds/{id}/approve"),
                    &json!({ "comment": comment }),
                )
                .await?;
            print(format, &a, || summary(&a.value));
        }
        HoldsCommand::Deny { id, reason } => {
            let a: Answer<Hold> = c
                .post(
                    &format!("/api/holds/{id}/deny"),
                    &json!({ "reason": reason }),
                )
                .await?;
            print(format, &a, || summary(&a.value));
        }
        HoldsCommand::Revoke { id, reason } => {
            let body = match reason {
                Some(r) => json!({ "reason": r }),
                None => json!({}),
            };
            let a: Answer<Hold> = c.post(&format!("/api/holds/{id}/revoke"), &body).await?;
            print(format, &a, || summary(&a.value));
        }
    }
    Ok(())
}

/// Prints the API's JSON verbatim, or the text `render` makes: each of its lines
/// [`printable`] once more, in case a field was missed.
pub(super) fn print<T>(format: OutputFormat, a: &Answer<T>, render: impl FnOnce() -> String) {
    match format {
        OutputFormat::Json => println!("{}", a.text.trim_end()),
        OutputFormat::Text => {
            let text = render();
            let lines: Vec<_> = text.split('\n').map(printable).collect();
            print!("{}", lines.join("\n"));
        }
    }
}

fn rules(h: &Hold) -> String {
    h.rules
        .iter()
        .map(|r| r.id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The hold table.
pub fn list(holds: &[Hold]) -> String {
    if holds.is_empty() {
        return "no holds\n".into();
    }
    let rows: Vec<Vec<String>> = holds
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                h.status.name().to_owned(),
                h.user.clone(),
                h.database.clone(),
                h.application_name.clone(),
                rules(h),
                format!("{}/{}", h.approvals.len(), h.approvals_required),
                when(&h.opened_at),
                when(&h.expires_at),
                one_line(&h.sql, 80),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATUS",
            "USER",
            "DATABASE",
            "APPLICATION",
            "RULES",
            "APPROVALS",
            "OPENED",
            "EXPIRES",
            "SQL",
        ],
        &rows,
    )
}

/// One hold in full; every stored string [`printable`], the SQL line by line.
pub fn show(h: &Hold) -> String {
    let mut s = String::new();
    let mut field = |k: &str, v: &str| {
        if !v.is_empty() {
            s.push_str(&format!("{k:<12} {}\n", printable(v)));
        }
    };
    field("hold", &h.id.to_string());
    field("status", h.status.name());
    field("user", &h.user);
    field("database", &h.database);
    field("client", h.client_addr.as_deref().unwrap_or(""));
    field("application", &h.application_name);
    field(
        "approvals",
        &format!("{} of {}", h.approvals.len(), h.approvals_required),
    );
    field("groups", &h.approver_groups.join(", "));
    field("opened", &when(&h.opened_at));
    field("expires", &when(&h.expires_at));
    field(
        "closed",
        &h.closed_at.as_ref().map(when).unwrap_or_default(),
    );
    field("closed by", h.closed_by.as_deref().unwrap_or(""));
    field("reason", h.reason.as_deref().unwrap_or(""));
    for r in &h.rules {
        s.push_str(&format!(
            "rule         {}: {}\n",
            printable(&r.id),
            printable(&r.message)
        ));
        if let Some(hint) = &r.hint {
            s.push_str(&format!("             hint: {}\n", printable(hint)));
        }
    }
    for a in &h.approvals {
        s.push_str(&format!(
            "approved by  {} at {}{}\n",
            printable(&a.by),
            when(&a.at),
            a.comment
                .as_deref()
                .map(|c| format!(": {}", printable(c)))
                .unwrap_or_default()
        ));
    }
    s.push_str("sql:\n");
    for line in h.sql.lines() {
        s.push_str(&format!("  {}\n", printable(line)));
    }
    s
}

/// The one line after an approval or denial.
fn summary(h: &Hold) -> String {
    format!(
        "hold {}: {} ({} of {} approvals)\n",
        h.id,
        h.status.name(),
        h.approvals.len(),
        h.approvals_required
    )
}
