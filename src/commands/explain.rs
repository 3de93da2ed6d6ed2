//! `pgwarden explain 'SQL'`: the facts pgwarden sees in a statement and the decision the
//! policy makes, with every rule that matched.

use std::path::Path;

use serde_json::json;

use super::{load_or_report, EXIT_ERROR, EXIT_OK, EXIT_REFUSED};
use crate::policy::{Mode, SessionContext};
use crate::sql::{self, ReadAs};

pub fn run(policies: &Path, env: &str, user: &str, sql_text: &str) -> i32 {
    let Some(policy) = load_or_report(policies, env) else {
        return EXIT_ERROR;
    };
    let ins = sql::inspect(sql_text, ReadAs::default());
    let session = SessionContext {
        user: user.to_owned(),
        ..SessionContext::default()
    };
    let decision = policy.decide(&ins, &session, Mode::Enforce);
    let out = json!({
        "inspection": ins,
        "decision": decision,
        "environment": policy.environment,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    if decision.action.refuses() {
        EXIT_REFUSED
    } else {
        EXIT_OK
    }
}
