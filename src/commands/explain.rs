//! `pgwarden explain 'SQL'`: the facts pgwarden sees in a statement and the decision the
//! policy makes, with every rule that matched (with `--catalog`, the live facts too).

use std::path::Path;

use serde_json::json;

use super::check::{inspect_and_decide, LiveCatalog};
use super::{load_or_report, EXIT_ERROR, EXIT_OK, EXIT_REFUSED};

pub fn run(
    policies: &Path,
    env: &str,
    user: &str,
    sql_text: &str,
    catalog: Option<&LiveCatalog>,
) -> i32 {
    let Some(policy) = load_or_report(policies, env) else {
        return EXIT_ERROR;
    };
    let (ins, decision, notes) = inspect_and_decide(&policy, sql_text, user, catalog);
    let out = json!({
        "inspection": ins,
        "decision": decision,
        "environment": policy.environment,
        "notes": notes,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    if decision.action.refuses() {
        EXIT_REFUSED
    } else {
        EXIT_OK
    }
}
