//! What one `[[webhook]]` says: where alerts go, which kinds, in which body format, signed
//! with which secret, and how hard delivery tries. Plain data; the config parser fills it,
//! the delivery worker reads it.

use std::time::Duration;

/// The kinds of alert a webhook can ask for (`events = [...]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filter {
    /// A statement was refused.
    Refused,
    /// A statement is held for approval.
    Held,
    /// A hold or a ticket has all its approvals.
    Approved,
    /// A hold was denied or revoked; a ticket was rejected or revoked.
    Denied,
    /// A hold or a ticket expired.
    Expired,
    /// A statement ran under break-glass.
    BreakGlass,
    /// A changed policy set was refused; the previous one stays.
    PolicyReloadFailed,
    /// The audit log cannot be written.
    AuditSinkFailing,
    /// pgwarden could not reach PostgreSQL.
    UpstreamDown,
    /// A signed audit checkpoint was written (not in the default set).
    Checkpoint,
}

impl Filter {
    /// Every kind, in the order of the contract.
    pub const ALL: [Filter; 10] = [
        Filter::Refused,
        Filter::Held,
        Filter::Approved,
        Filter::Denied,
        Filter::Expired,
        Filter::BreakGlass,
        Filter::PolicyReloadFailed,
        Filter::AuditSinkFailing,
        Filter::UpstreamDown,
        Filter::Checkpoint,
    ];

    /// What a webhook gets when its config names no `events`: all but `checkpoint`.
    pub fn defaults() -> Vec<Filter> {
        Filter::ALL
            .into_iter()
            .filter(|f| *f != Filter::Checkpoint)
            .collect()
    }

    /// The config and JSON name (`break_glass`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Refused => "refused",
            Filter::Held => "held",
            Filter::Approved => "approved",
            Filter::Denied => "denied",
            Filter::Expired => "expired",
            Filter::BreakGlass => "break_glass",
            Filter::PolicyReloadFailed => "policy_reload_failed",
            Filter::AuditSinkFailing => "audit_sink_failing",
            Filter::UpstreamDown => "upstream_down",
            Filter::Checkpoint => "checkpoint",
        }
    }

    /// Parses a config name; `break-glass` (hyphens) is accepted for `break_glass`.
    pub fn parse(s: &str) -> Option<Filter> {
        let s = s.replace('-', "_");
        Filter::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Standard Webhooks: `{"type", "timestamp", "data"}`.
    Json,
    /// Slack incoming webhook: `{"text", "blocks"}`.
    Slack,
}

/// A signing secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret as configured (`whsec_...` or raw).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One `[[webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Label in logs and metrics (`webhook-N` unless named).
    pub name: String,
    /// `http://` or `https://` URL the alerts are POSTed to.
    pub url: String,
    /// The kinds it gets.
    pub events: Vec<Filter>,
    pub format: Format,
    /// Without one, deliveries carry `webhook-id` and `webhook-timestamp` but no signature.
    pub secret: Option<Secret>,
    /// Per attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
    /// Attempts per alert, the first included.
    pub max_attempts: u32,
    /// Alerts waiting for delivery at most; more are dropped (counted and logged).
    pub queue: usize,
    /// Repeats of one rule and session within this window become one summary; zero: off.
    pub collapse_window: Duration,
    /// Backoff before the first retry (doubled each time, full jitter) ...
    pub backoff_initial: Duration,
    /// ... and its ceiling.
    pub backoff_max: Duration,
}

impl WebhookConfig {
    /// A webhook to `url` with every default (`name` is `webhook-N` in the config).
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            url: url.into(),
            events: Filter::defaults(),
            format: Format::Json,
            secret: None,
            timeout: Duration::from_secs(5),
            max_attempts: 5,
            queue: 1024,
            collapse_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_names_round_trip_and_hyphens_are_accepted() {
        for f in Filter::ALL {
            assert_eq!(Filter::parse(f.name()), Some(f));
        }
        assert_eq!(Filter::parse("break-glass"), Some(Filter::BreakGlass));
        assert_eq!(
            Filter::parse("policy-reload-failed"),
            Some(Filter::PolicyReloadFailed)
        );
        assert_eq!(Filter::parse("refuse"), None);
        assert!(!Filter::defaults().contains(&Filter::Checkpoint));
        assert_eq!(Filter::defaults().len(), 9);
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut w = WebhookConfig::new("w", "http://x");
        w.secret = Some(Secret::new("whsec_c2VjcmV0"));
        assert!(!format!("{w:?}").contains("c2VjcmV0"));
    }
}
