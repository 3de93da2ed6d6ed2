//! `pgwarden reviews [list] [--all]` and `pgwarden reviews mark ID [--comment T]`: the
//! statements break-glass let through, until an approver has looked at each. Text output
//! shows stored strings [`printable`]; `--format json` is the API's verbatim.

use serde_json::json;

use super::client::{
    one_line, printable, run_command, table, when, AdminClient, Answer, CliError, ClientArgs,
};
use super::holds::print;
use crate::approval::model::Review;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReviewsArgs {
    #[command(subcommand)]
    pub command: Option<ReviewsCommand>,
    /// With no subcommand: list reviewed ones too.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ReviewsCommand {
    /// List break-glass uses not yet reviewed (all of them with --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Mark a break-glass use reviewed (approver or admin; not one's own).
    Mark {
        id: u64,
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
}

pub fn run(args: ReviewsArgs) -> i32 {
    run_command(reviews(args))
}

pub async fn reviews(args: ReviewsArgs) -> Result<(), CliError> {
    let c = AdminClient::new(&args.client)?;
    let format = args.client.format;
    match args
        .command
        .unwrap_or(ReviewsCommand::List { all: args.all })
    {
        ReviewsCommand::List { all } => {
            let path = if all {
                "/api/reviews?status=all"
            } else {
                "/api/reviews?status=pending"
            };
            let a: Answer<Vec<Review>> = c.get(path).await?;
            print(format, &a, || list(&a.value));
        }
        ReviewsCommand::Mark { id, comment } => {
            let a: Answer<Review> = c
                .post(
                    &format!("/api/reviews/{id}/reviewed"),
                    &json!({ "comment": comment }),
                )
                .await?;
            print(format, &a, || {
                format!(
                    "review {}: reviewed by {}\n",
                    a.value.id,
                    printable(a.value.reviewed_by.as_deref().unwrap_or("?"))
                )
            });
        }
    }
    Ok(())
}

pub fn list(reviews: &[Review]) -> String {
    if reviews.is_empty() {
        return "no break-glass uses to review\n".into();
    }
    let rows: Vec<Vec<String>> = reviews
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                when(&r.at),
                r.user.clone(),
                r.database.clone(),
                r.rules.join(","),
                r.reviewed_by.clone().unwrap_or_else(|| "-".into()),
                one_line(&r.reason, 40),
                one_line(&r.sql, 80),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "AT",
            "USER",
            "DATABASE",
            "RULES",
            "REVIEWED BY",
            "REASON",
            "SQL",
        ],
        &rows,
    )
}
