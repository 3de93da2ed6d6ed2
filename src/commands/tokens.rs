//! `pgwarden tokens add NAME --role viewer|approver|admin [--group G]... [--db-user USER]
//! --file FILE`: creates an admin API token. The secret goes to standard output, one line
//! and nothing else, and is stored nowhere (the file keeps its SHA-256); notes go to
//! standard error. Every failure, a duplicate name included, exits 2.

use std::path::PathBuf;

use super::{EXIT_ERROR, EXIT_OK};
use crate::admin::auth::{add_token, role_name, NewToken};
use crate::approval::model::Role;

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create a token; prints its secret once.
    Add(AddArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Reads holds, tickets and reviews.
    Viewer,
    /// Also approves and denies, creates tickets, marks reviews.
    Approver,
    /// Also revokes tickets and holds.
    Admin,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The token's name (shown as the approver in records).
    pub name: String,
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Approver groups the holder belongs to (repeat for several).
    #[arg(long = "group", value_name = "G")]
    pub groups: Vec<String>,
    /// The database user the holder connects as: they cannot approve that user's changes.
    #[arg(long, value_name = "USER")]
    pub db_user: Option<String>,
    /// The tokens file (`[admin] tokens`); created if missing.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
}

pub fn run(command: TokensCommand) -> i32 {
    match command {
        TokensCommand::Add(a) => add(&a),
    }
}

fn add(a: &AddArgs) -> i32 {
    let role = match a.role {
        RoleArg::Viewer => Role::Viewer,
        RoleArg::Approver => Role::Approver,
        RoleArg::Admin => Role::Admin,
    };
    let new = NewToken {
        name: a.name.clone(),
        role,
        groups: a.groups.clone(),
        db_user: a.db_user.clone(),
    };
    match add_token(&a.file, &new) {
        Ok(secret) => {
            println!("{secret}");
            eprintln!(
                "pgwarden: token {} ({}) added to {}; the secret above is shown only this once (send SIGHUP to a running pgwarden to load it)",
                a.name,
                role_name(role),
                a.file.display()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("pgwarden: {e}");
            EXIT_ERROR
        }
    }
}
