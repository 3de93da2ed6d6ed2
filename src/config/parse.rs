//! Reading the TOML file key by key against the known schema, so that every problem is
//! reported with its line, all at once (serde would stop at the first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ImDocument, Item, Table};

use super::{ClientTlsMode, Config, OnMissingTicket, Overrides, UpstreamAddr, UpstreamTlsMode};

/// One configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, 0 when not tied to a line (a flag, an unreadable file).
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, line: usize, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, item: &Item, key: &str, msg: impl Into<String>) {
        let line = line_of(self.text, item.span());
        self.errors
            .push(ConfigError::new(self.file, line, key, msg.into()));
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    match span {
        Some(s) => {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        }
        None => 0,
    }
}

pub(super) fn apply_toml(cfg: &mut Config, file: &Path, text: &str, errors: &mut Vec<ConfigError>) {
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let line = line_of(text, e.span());
            errors.push(ConfigError::new(
                file,
                line,
                "",
                e.message().trim().to_owned(),
            ));
            return;
        }
    };
    let mut cx = Ctx { file, text, errors };
    let root = doc.as_table();
    for (key, item) in root.iter() {
        let kspan = root.key(key).and_then(|k| k.span());
        match key {
            "listen" => {
                if let Some(v) = string(&mut cx, item, key) {
                    match v.parse() {
                        Ok(a) => cfg.listen = a,
                        Err(_) => cx.err(
                            item,
                            key,
                            format!(
                                "{v:?} is not an IP address and port (e.g. \"127.0.0.1:6432\")"
                            ),
                        ),
                    }
                }
            }
            "max_client_connections" => {
                if let Some(n) = integer(&mut cx, item, key, 1, 1_000_000) {
                    cfg.max_client_connections = n as usize;
                }
            }
            "workers" => {
                if let Some(n) = integer(&mut cx, item, key, 0, 1024) {
                    cfg.workers = n as usize;
                }
            }
            "startup_timeout" => {
                if let Some(d) = duration(&mut cx, item, key) {
                    cfg.startup_timeout = d;
                }
            }
            "shutdown_grace" => {
                if let Some(d) = duration(&mut cx, item, key) {
                    cfg.shutdown_grace = d;
                }
            }
            "allow_replication" => {
                if let Some(b) = boolean(&mut cx, item, key) {
                    cfg.allow_replication = b;
                }
            }
            "policies" => {
                if let Some(v) = string(&mut cx, item, key) {
                    cfg.policies = PathBuf::from(v);
                }
            }
            "environment" => {
                if let Some(v) = string(&mut cx, item, key) {
                    if v.trim().is_empty() {
                        cx.err(item, key, "must not be empty");
                    } else {
                        cfg.environment = v;
                    }
                }
            }
            "mode" => {
                if let Some(v) = string(&mut cx, item, key) {
                    match parse_mode(&v) {
                        Some(m) => cfg.mode = m,
                        None => cx.err(item, key, format!("{v:?} is not one of enforce, monitor")),
                    }
                }
            }
            "tls" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_client_tls(cfg, &mut cx, t);
                }
            }
            "upstream" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_upstream(cfg, &mut cx, t);
                }
            }
            "catalog" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_catalog(cfg, &mut cx, item, t);
                }
            }
            "admin" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_admin(cfg, &mut cx, t);
                }
            }
            "state" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_state(cfg, &mut cx, item, t);
                }
            }
            "audit" => {
                if let Some(t) = table(&mut cx, item, "audit") {
                    apply_audit(cfg, &mut cx, t);
                }
            }
            "holds" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_holds(cfg, &mut cx, t);
                }
            }
            "webhook" => apply_webhooks(cfg, &mut cx, item),
            "limits" => {
                if let Some(t) = table(&mut cx, item, key) {
                    apply_limits(cfg, &mut cx, t);
                }
            }
            _ => unknown(&mut cx, kspan, key),
        }
    }
}

fn unknown(cx: &mut Ctx<'_>, span: Option<std::ops::Range<usize>>, key: &str) {
    let line = line_of(cx.text, span);
    cx.errors
        .push(ConfigError::new(cx.file, line, key, "unknown key"));
}

fn apply_limits(cfg: &mut Config, cx: &mut Ctx<'_>, t: &Table) {
    for (key, item) in t.iter() {
        let full = format!("limits.{key}");
        match key {
            "max_statement_bytes" => match bytes(cx, item, &full) {
                Some(n) if (1024..=crate::sql::MAX_TEXT_BYTES as u64).contains(&n) => {
                    cfg.limits.max_statement_bytes = n as usize
                }
                Some(_) => cx.err(
                    item,
                    &full,
                    format!(
                        "between 1kB and {}MiB (the most pgwarden inspects)",
                        crate::sql::MAX_TEXT_BYTES >> 20
                    ),
                ),
                None => {}
            },
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
}

fn apply_client_tls(cfg: &mut Config, cx: &mut Ctx<'_>, t: &Table) {
    for (key, item) in t.iter() {
        let full = format!("tls.{key}");
        match key {
            "mode" => {
                if let Some(v) = string(cx, item, &full) {
                    match parse_client_tls_mode(&v) {
                        Some(m) => cfg.tls.mode = m,
                        None => cx.err(
                            item,
                            &full,
                            format!("{v:?} is not one of disable, allow, prefer, require"),
                        ),
                    }
                }
            }
            "cert" => cfg.tls.cert = string(cx, item, &full).map(PathBuf::from),
            "key" => cfg.tls.key = string(cx, item, &full).map(PathBuf::from),
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
}

fn apply_upstream(cfg: &mut Config, cx: &mut Ctx<'_>, t: &Table) {
    for (key, item) in t.iter() {
        let full = format!("upstream.{key}");
        match key {
            "address" => {
                if let Some(v) = string(cx, item, &full) {
                    match parse_upstream_addr(&v) {
                        Ok(a) => cfg.upstream.address = a,
                        Err(m) => cx.err(item, &full, m),
                    }
                }
            }
            "tls" => {
                if let Some(v) = string(cx, item, &full) {
                    match parse_upstream_tls_mode(&v) {
                        Some(m) => cfg.upstream.tls = m,
                        None => cx.err(item, &full, format!("{v:?} is not one of disable, prefer, require, verify-ca, verify-full")),
                    }
                }
            }
            "ca" => cfg.upstream.ca = string(cx, item, &full).map(PathBuf::from),
            "server_name" => cfg.upstream.server_name = string(cx, item, &full),
            "connect_timeout" => {
                if let Some(d) = duration(cx, item, &full) {
                    cfg.upstream.connect_timeout = d;
                }
            }
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
}

fn apply_catalog(cfg: &mut Config, cx: &mut Ctx<'_>, whole: &Item, t: &Table) {
    let mut c = super::catalog::CatalogConfig::default();
    let mut dsn = false;
    for (key, item) in t.iter() {
        let full = format!("catalog.{key}");
        match key {
            "dsn" => {
                if let Some(v) = string(cx, item, &full) {
                    match v.parse::<tokio_postgres::Config>() {
                        Ok(_) => {
                            c.dsn = v;
                            dsn = true;
                        }
                        Err(e) => cx.err(item, &full, format!("not a connection string: {e}")),
                    }
                }
            }
            "ttl" => c.ttl = duration(cx, item, &full).unwrap_or(c.ttl),
            "timeout" => match duration(cx, item, &full) {
                Some(d)
                    if d >= std::time::Duration::from_millis(1)
                        && d <= std::time::Duration::from_secs(3600) =>
                {
                    c.timeout = d
                }
                Some(_) => cx.err(item, &full, "must be between 1ms and 1h"),
                None => {}
            },
            "large_rows" => {
                if let Some(n) = integer(cx, item, &full, 0, i64::MAX) {
                    c.thresholds.large_rows = n as f64;
                }
            }
            "large_write_rows" => {
                if let Some(n) = integer(cx, item, &full, 0, i64::MAX) {
                    c.thresholds.large_write_rows = n as f64;
                }
            }
            "large_bytes" => {
                if let Some(n) = bytes(cx, item, &full) {
                    c.thresholds.large_bytes = n;
                }
            }
            "connections" => {
                if let Some(n) = integer(cx, item, &full, 1, 64) {
                    c.connections = n as usize;
                }
            }
            "admin_roles" => match item.as_array() {
                Some(a) if a.iter().all(|v| v.as_str().is_some()) => {
                    c.admin_roles = a
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                }
                _ => cx.err(item, &full, "expected an array of role names"),
            },
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
    if dsn {
        cfg.catalog = Some(c);
    } else {
        cx.err(
            whole,
            "catalog.dsn",
            "the [catalog] section needs dsn (e.g. \"host=127.0.0.1 user=pgwarden\")",
        );
    }
}

fn apply_admin(cfg: &mut Config, cx: &mut Ctx<'_>, t: &Table) {
    for (key, item) in t.iter() {
        let full = format!("admin.{key}");
        match key {
            "listen" => {
                if let Some(v) = string(cx, item, &full) {
                    match parse_admin_listen(&v) {
                        Ok(a) => cfg.admin.listen = a,
                        Err(m) => cx.err(item, &full, m),
                    }
                }
            }
            "tokens" => cfg.admin.tokens = non_empty_path(cx, item, &full),
            "tls_cert" => cfg.admin.tls_cert = non_empty_path(cx, item, &full),
            "tls_key" => cfg.admin.tls_key = non_empty_path(cx, item, &full),
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
}

fn apply_state(cfg: &mut Config, cx: &mut Ctx<'_>, whole: &Item, t: &Table) {
    let (mut postgres, mut dsn, mut schema) = (false, None, None);
    for (key, item) in t.iter() {
        let full = format!("state.{key}");
        match key {
            "dir" => {
                if let Some(p) = non_empty_path(cx, item, &full) {
                    cfg.state_dir = p;
                }
            }
            "backend" => match string(cx, item, &full).as_deref() {
                Some("sqlite") => postgres = false,
                Some("postgres") => postgres = true,
                Some(v) => cx.err(item, &full, format!("{v:?} is not one of sqlite, postgres")),
                None => {}
            },
            "dsn" => {
                if let Some(v) = string(cx, item, &full) {
                    match v.parse::<tokio_postgres::Config>() {
                        Ok(_) => dsn = Some(v),
                        Err(e) => cx.err(item, &full, format!("not a connection string: {e}")),
                    }
                }
            }
            "schema" => {
                if let Some(v) = string(cx, item, &full) {
                    if crate::approval::store::valid_schema(&v) {
                        schema = Some(v);
                    } else {
                        cx.err(item, &full, "expected a plain lower-case identifier ([a-z_][a-z0-9_]*, at most 63 bytes)");
                    }
                }
            }
            "instance" => {
                if let Some(v) = string(cx, item, &full) {
                    if v.is_empty() || v.len() > 200 || v.chars().any(|c| c.is_control()) {
                        cx.err(
                            item,
                            &full,
                            "expected a name of 1 to 200 printable characters",
                        );
                    } else {
                        cfg.state.instance = Some(v);
                    }
                }
            }
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
    if !postgres {
        return;
    }
    // The DSN may carry a password: the environment can give it instead of the file.
    let dsn = std::env::var("PGWARDEN_STATE_DSN")
        .ok()
        .filter(|v| !v.is_empty())
        .or(dsn);
    match dsn {
        Some(dsn) => {
            cfg.state.backend = crate::config::StateBackend::Postgres {
                dsn,
                schema: schema.unwrap_or_else(|| crate::config::DEFAULT_STATE_SCHEMA.into()),
            }
        }
        None => cx.err(
            whole,
            "state.dsn",
            "backend = \"postgres\" needs dsn (or PGWARDEN_STATE_DSN), e.g. \"host=10.0.0.5 user=pgwarden dbname=pgwarden\"",
        ),
    }
}

fn apply_audit(cfg: &mut Config, cx: &mut Ctx<'_>, t: &Table) {
    for (key, item) in t.iter() {
        let full = format!("audit.{key}");
        let a = &mut cfg.audit;
        match key {
            "file" => a.file = non_empty_path(cx, item, &full),
            "checkpoints" => a.checkpoints = non_empty_path(cx, item, &full),
            "signing_key" => a.signing_key = non_empty_path(cx, item, &full),
            "record" => {
                let Some(arr) = item.as_array() else {
                    cx.err(item, &full, "expected an array of statement classes, e.g. [\"write\", \"ddl\"], or [\"all\"]");
                    continue;
                };
                let mut classes = Vec::new();
                for v in arr.iter() {
                    match v.as_str() {
                        Some("all") => classes.extend(crate::sql::Class::ALL),
                        Some(name) => match crate::sql::Class::parse(name) {
                            Some(c) => classes.push(c),
                            None => cx.err(item, &full, format!("{name:?} is not a statement class (read, write, ddl, role, function, tcl, session, maintenance, unknown, all)")),
                        },
                        None => cx.err(item, &full, "expected class names as strings"),
                    }
                }
                a.record = classes;
            }
            "redact_literals" => {
                if let Some(b) = boolean(cx, item, &full) {
                    a.redact_literals = b;
                }
            }
            "on_failure" => match string(cx, item, &full).as_deref() {
                Some("refuse") => a.on_failure = crate::config::AuditOnFailure::Refuse,
                Some("continue") => a.on_failure = crate::config::AuditOnFailure::Continue,
                Some(_) => cx.err(item, &full, "expected \"refuse\" or \"continue\""),
                None => {}
            },
            "max_file_size" => match bytes(cx, item, &full) {
                Some(n) if n >= 4096 => a.max_file_size = n,
                Some(_) => cx.err(item, &full, "at least 4kB"),
                None => {}
            },
            "checkpoint_interval" => match duration(cx, item, &full) {
                Some(d) if d >= Duration::from_millis(100) => a.checkpoint_interval = d,
                Some(_) => cx.err(item, &full, "at least 100ms"),
                None => {}
            },
            "checkpoint_idle" => match duration(cx, item, &full) {
                Some(d) if d >= Duration::from_millis(10) => a.checkpoint_idle = d,
                Some(_) => cx.err(item, &full, "at least 10ms"),
                None => {}
            },
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
}

/// Longest hold timeout accepted: a held statement keeps its client session and its
/// upstream connection (and in a transaction, its locks) for that long.
const MAX_HOLD_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

fn apply_holds(cfg: &mut Config, cx: &mut Ctx<'_>, t: &Table) {
    for (key, item) in t.iter() {
        let full = format!("holds.{key}");
        match key {
            "timeout" => match duration(cx, item, &full) {
                Some(d) if d >= Duration::from_secs(1) && d <= MAX_HOLD_TIMEOUT => {
                    cfg.holds.timeout = d
                }
                Some(_) => cx.err(item, &full, "must be between 1s and 7days"),
                None => {}
            },
            "reminder" => match duration(cx, item, &full) {
                Some(d) if d >= Duration::from_secs(1) => cfg.holds.reminder = d,
                Some(_) => cx.err(item, &full, "must be at least 1s"),
                None => {}
            },
            "show_literals" => {
                if let Some(b) = boolean(cx, item, &full) {
                    cfg.holds.show_literals = b;
                }
            }
            "on_missing_ticket" => {
                if let Some(v) = string(cx, item, &full) {
                    match v.as_str() {
                        "refuse" => cfg.holds.on_missing_ticket = OnMissingTicket::Refuse,
                        "hold" => cfg.holds.on_missing_ticket = OnMissingTicket::Hold,
                        _ => cx.err(item, &full, format!("{v:?} is not one of refuse, hold")),
                    }
                }
            }
            _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
        }
    }
}

/// Longest webhook timeout, backoff or collapse window accepted.
const MAX_WEBHOOK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `[[webhook]]`: one table per webhook; `url` is required, everything else has a default
/// (see [`crate::alerts::WebhookConfig::new`]); `secret_file` is read here, at startup.
fn apply_webhooks(cfg: &mut Config, cx: &mut Ctx<'_>, whole: &Item) {
    use crate::alerts::{Filter, Format, Secret, WebhookConfig};
    let Some(tables) = whole.as_array_of_tables() else {
        cx.err(whole, "webhook", "expected [[webhook]] tables");
        return;
    };
    for (i, t) in tables.iter().enumerate() {
        let mut w = WebhookConfig::new(format!("webhook-{}", i + 1), "");
        let (mut secret, mut secret_file) = (None, None);
        let table_line = line_of(cx.text, t.span());
        for (key, item) in t.iter() {
            let full = format!("webhook.{key}");
            match key {
                "name" => {
                    if let Some(v) = string(cx, item, &full) {
                        if v.trim().is_empty() {
                            cx.err(item, &full, "must not be empty");
                        } else {
                            w.name = v;
                        }
                    }
                }
                "url" => {
                    if let Some(v) = string(cx, item, &full) {
                        match reqwest::Url::parse(&v) {
                            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                                w.url = v
                            }
                            Ok(_) => cx.err(item, &full, "must be an http:// or https:// URL"),
                            Err(e) => cx.err(item, &full, format!("not a URL: {e}")),
                        }
                    }
                }
                "events" => match item.as_array() {
                    Some(a) => {
                        let mut events = Vec::new();
                        for v in a.iter() {
                            match v.as_str().and_then(Filter::parse) {
                                Some(f) if !events.contains(&f) => events.push(f),
                                Some(_) => {}
                                None => {
                                    let names: Vec<_> =
                                        Filter::ALL.iter().map(|f| f.name()).collect();
                                    cx.err(
                                        item,
                                        &full,
                                        format!(
                                            "{} is not one of {}",
                                            v.to_string().trim(),
                                            names.join(", ")
                                        ),
                                    );
                                }
                            }
                        }
                        if a.is_empty() {
                            cx.err(
                                item,
                                &full,
                                "must name at least one event (or leave it out for all)",
                            );
                        }
                        w.events = events;
                    }
                    None => cx.err(item, &full, "expected an array of event names"),
                },
                "format" => {
                    if let Some(v) = string(cx, item, &full) {
                        match v.as_str() {
                            "json" => w.format = Format::Json,
                            "slack" => w.format = Format::Slack,
                            _ => cx.err(item, &full, format!("{v:?} is not one of json, slack")),
                        }
                    }
                }
                "secret" => secret = string(cx, item, &full).map(|v| (item, v)),
                "secret_file" => secret_file = non_empty_path(cx, item, &full).map(|p| (item, p)),
                "timeout" => match duration(cx, item, &full) {
                    Some(d) if d >= Duration::from_millis(1) && d <= MAX_WEBHOOK_WAIT => {
                        w.timeout = d
                    }
                    Some(_) => cx.err(item, &full, "must be between 1ms and 24h"),
                    None => {}
                },
                "max_attempts" => {
                    if let Some(n) = integer(cx, item, &full, 1, 100) {
                        w.max_attempts = n as u32;
                    }
                }
                "queue" => {
                    if let Some(n) = integer(cx, item, &full, 1, 1_000_000) {
                        w.queue = n as usize;
                    }
                }
                "collapse_window" => match duration(cx, item, &full) {
                    Some(d) if d <= MAX_WEBHOOK_WAIT => w.collapse_window = d,
                    Some(_) => cx.err(item, &full, "must be at most 24h (\"0s\" turns it off)"),
                    None => {}
                },
                "backoff_initial" | "backoff_max" => match duration(cx, item, &full) {
                    Some(d) if d >= Duration::from_millis(1) && d <= MAX_WEBHOOK_WAIT => {
                        if key == "backoff_initial" {
                            w.backoff_initial = d;
                        } else {
                            w.backoff_max = d;
                        }
                    }
                    Some(_) => cx.err(item, &full, "must be between 1ms and 24h"),
                    None => {}
                },
                _ => unknown(cx, t.key(key).and_then(|k| k.span()), &full),
            }
        }
        match (secret, secret_file) {
            (Some((item, _)), Some(_)) => cx.err(
                item,
                "webhook.secret",
                "secret and secret_file exclude each other: set one",
            ),
            (Some((item, v)), None) => match crate::alerts::sign::key(&v) {
                Ok(_) => w.secret = Some(Secret::new(v)),
                Err(e) => cx.err(item, "webhook.secret", e.to_string()),
            },
            (None, Some((item, path))) => match std::fs::read_to_string(&path) {
                Ok(text) => match crate::alerts::sign::key(text.trim()) {
                    Ok(_) => w.secret = Some(Secret::new(text.trim())),
                    Err(e) => cx.err(
                        item,
                        "webhook.secret_file",
                        format!("{}: {e}", path.display()),
                    ),
                },
                Err(e) => cx.err(
                    item,
                    "webhook.secret_file",
                    format!("cannot read {}: {e}", path.display()),
                ),
            },
            (None, None) => {}
        }
        if w.backoff_initial > w.backoff_max {
            cx.errors.push(ConfigError::new(
                cx.file,
                table_line,
                "webhook.backoff_max",
                "must not be shorter than backoff_initial",
            ));
        }
        if w.url.is_empty() && !t.contains_key("url") {
            cx.errors.push(ConfigError::new(
                cx.file,
                table_line,
                "webhook.url",
                "a [[webhook]] needs url (e.g. \"https://hooks.example.com/pgwarden\")",
            ));
        }
        if cfg.webhooks.iter().any(|o| o.name == w.name) {
            cx.errors.push(ConfigError::new(
                cx.file,
                table_line,
                "webhook.name",
                format!("{:?} names two webhooks", w.name),
            ));
        }
        if !w.url.is_empty() {
            cfg.webhooks.push(w);
        }
    }
}

/// `[admin] listen` / `--admin-listen`: an IP address and port, or `off`.
pub fn parse_admin_listen(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!("{s:?} is not an IP address and port (e.g. \"127.0.0.1:6433\") or \"off\"")
    })
}

fn non_empty_path(cx: &mut Ctx<'_>, item: &Item, key: &str) -> Option<PathBuf> {
    let v = string(cx, item, key)?;
    if v.is_empty() {
        cx.err(item, key, "must not be empty");
        return None;
    }
    Some(PathBuf::from(v))
}

/// A size: an integer of bytes, or a string like "1GiB", "512MB", "100kB" (units of 1024).
fn bytes(cx: &mut Ctx<'_>, item: &Item, key: &str) -> Option<u64> {
    if let Some(n) = item.as_integer() {
        if n >= 0 {
            return Some(n as u64);
        }
    }
    let s = item.as_str().unwrap_or("").trim().to_owned();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => Some(1),
        "kb" | "kib" => Some(1 << 10),
        "mb" | "mib" => Some(1 << 20),
        "gb" | "gib" => Some(1 << 30),
        "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    match (num.parse::<u64>().ok(), mult) {
        (Some(n), Some(m)) => n.checked_mul(m).or_else(|| {
            cx.err(item, key, "too large");
            None
        }),
        _ => {
            cx.err(
                item,
                key,
                "expected a size in bytes, or a string like \"1GiB\", \"512MB\"",
            );
            None
        }
    }
}

fn string(cx: &mut Ctx<'_>, item: &Item, key: &str) -> Option<String> {
    match item.as_str() {
        Some(s) => Some(s.to_owned()),
        None => {
            cx.err(item, key, "expected a string");
            None
        }
    }
}

fn boolean(cx: &mut Ctx<'_>, item: &Item, key: &str) -> Option<bool> {
    let b = item.as_bool();
    if b.is_none() {
        cx.err(item, key, "expected true or false");
    }
    b
}

fn integer(cx: &mut Ctx<'_>, item: &Item, key: &str, min: i64, max: i64) -> Option<i64> {
    match item.as_integer() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            cx.err(item, key, format!("{n} is outside {min}..={max}"));
            None
        }
        None => {
            cx.err(item, key, "expected an integer");
            None
        }
    }
}

fn duration(cx: &mut Ctx<'_>, item: &Item, key: &str) -> Option<Duration> {
    let s = string(cx, item, key)?;
    match humantime::parse_duration(&s) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(
                item,
                key,
                format!("{s:?} is not a duration like \"10s\" or \"500ms\": {e}"),
            );
            None
        }
    }
}

fn table<'a>(cx: &mut Ctx<'_>, item: &'a Item, key: &str) -> Option<&'a Table> {
    let t = item.as_table();
    if t.is_none() {
        cx.err(item, key, "expected a table");
    }
    t
}

pub fn parse_mode(s: &str) -> Option<crate::policy::Mode> {
    match s {
        "enforce" => Some(crate::policy::Mode::Enforce),
        "monitor" => Some(crate::policy::Mode::Monitor),
        _ => None,
    }
}

pub fn parse_client_tls_mode(s: &str) -> Option<ClientTlsMode> {
    Some(match s {
        "disable" => ClientTlsMode::Disable,
        "allow" => ClientTlsMode::Allow,
        "prefer" => ClientTlsMode::Prefer,
        "require" => ClientTlsMode::Require,
        _ => return None,
    })
}

pub fn parse_upstream_tls_mode(s: &str) -> Option<UpstreamTlsMode> {
    Some(match s {
        "disable" => UpstreamTlsMode::Disable,
        "prefer" => UpstreamTlsMode::Prefer,
        "require" => UpstreamTlsMode::Require,
        "verify-ca" => UpstreamTlsMode::VerifyCa,
        "verify-full" => UpstreamTlsMode::VerifyFull,
        _ => return None,
    })
}

/// `host:port`, `[v6]:port`, or the absolute path of a Unix socket file.
pub fn parse_upstream_addr(s: &str) -> Result<UpstreamAddr, String> {
    if s.starts_with('/') {
        return Ok(UpstreamAddr::Unix(PathBuf::from(s)));
    }
    let bad = || format!("{s:?} is not HOST:PORT or the absolute path of a Unix socket");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(UpstreamAddr::Tcp {
        host: host.to_owned(),
        port,
    })
}

pub(super) fn apply_overrides(cfg: &mut Config, o: &Overrides, errors: &mut Vec<ConfigError>) {
    if let Some(l) = &o.listen {
        match l.parse() {
            Ok(a) => cfg.listen = a,
            Err(_) => errors.push(ConfigError::new(
                Path::new("--listen"),
                0,
                "",
                format!("{l:?} is not an IP address and port"),
            )),
        }
    }
    if let Some(p) = &o.policies {
        cfg.policies = p.clone();
    }
    if let Some(e) = &o.environment {
        cfg.environment = e.clone();
    }
    if let Some(m) = o.mode {
        cfg.mode = m;
    }
    if let Some(u) = &o.upstream {
        match parse_upstream_addr(u) {
            Ok(a) => cfg.upstream.address = a,
            Err(m) => errors.push(ConfigError::new(Path::new("--upstream"), 0, "", m)),
        }
    }
    if let Some(l) = &o.admin_listen {
        match parse_admin_listen(l) {
            Ok(a) => cfg.admin.listen = a,
            Err(m) => errors.push(ConfigError::new(Path::new("--admin-listen"), 0, "", m)),
        }
    }
    if let Some(t) = &o.admin_tokens {
        cfg.admin.tokens = Some(t.clone());
    }
    if let Some(d) = &o.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(f) = &o.audit_file {
        cfg.audit.file = Some(f.clone());
    }
}

/// Checks that need the whole configuration.
pub(super) fn check(cfg: &Config, file: Option<&Path>, errors: &mut Vec<ConfigError>) {
    let file = file.unwrap_or(Path::new("<config>"));
    if cfg.tls.mode != ClientTlsMode::Disable && (cfg.tls.cert.is_none() || cfg.tls.key.is_none()) {
        errors.push(ConfigError::new(
            file,
            0,
            "tls",
            "tls.mode other than \"disable\" needs tls.cert and tls.key",
        ));
    }
    if matches!(
        cfg.upstream.tls,
        UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull
    ) && cfg.upstream.ca.is_none()
    {
        errors.push(ConfigError::new(
            file,
            0,
            "upstream.ca",
            "upstream.tls verify-ca and verify-full need upstream.ca (a PEM CA bundle)",
        ));
    }
    if cfg.admin.tls_cert.is_some() != cfg.admin.tls_key.is_some() {
        errors.push(ConfigError::new(
            file,
            0,
            "admin",
            "admin.tls_cert and admin.tls_key go together: set both for HTTPS, or neither",
        ));
    }
    if matches!(cfg.upstream.address, UpstreamAddr::Unix(_))
        && cfg.upstream.tls != UpstreamTlsMode::Disable
    {
        errors.push(ConfigError::new(
            file,
            0,
            "upstream.tls",
            "TLS is not used over a Unix socket: set upstream.tls = \"disable\"",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_errors_at_once_with_lines() {
        let text = "listen = \"nope\"\nbogus = 1\n[tls]\nmode = \"sometimes\"\n[upstream]\naddress = \"127.0.0.1:5432\"\nconect_timeout = \"5s\"\n";
        let err = Config::from_toml(Path::new("p.toml"), text).unwrap_err();
        let lines: Vec<_> = err.0.iter().map(|e| (e.line, e.key.clone())).collect();
        assert_eq!(
            lines,
            vec![
                (1, "listen".into()),
                (2, "bogus".into()),
                (4, "tls.mode".into()),
                (7, "upstream.conect_timeout".into()),
            ],
            "{err}"
        );
        assert!(err.to_string().contains("p.toml:2: bogus: unknown key"));
    }

    #[test]
    fn statement_limit_is_a_size_within_what_pgwarden_inspects() {
        let cfg = Config::from_toml(Path::new("l.toml"), "").unwrap();
        assert_eq!(cfg.limits.max_statement_bytes, 64 << 20);
        let cfg = Config::from_toml(
            Path::new("l.toml"),
            "[limits]\nmax_statement_bytes = \"200MiB\"\n",
        )
        .unwrap();
        assert_eq!(cfg.limits.max_statement_bytes, 200 << 20);
        let err = Config::from_toml(
            Path::new("l.toml"),
            "[limits]\nmax_statement_bytes = \"2GiB\"\nmax_stmt = 1\n",
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            keys,
            vec![(2, "limits.max_statement_bytes"), (3, "limits.max_stmt")]
        );
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
listen = "0.0.0.0:7000"
max_client_connections = 5
startup_timeout = "2s"
shutdown_grace = "1m"
allow_replication = true
[tls]
mode = "require"
cert = "c.pem"
key = "k.pem"
[upstream]
address = "/run/postgresql/.s.PGSQL.5432"
connect_timeout = "250ms"
"#;
        let cfg = Config::from_toml(Path::new("p.toml"), text).unwrap();
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.max_client_connections, 5);
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(60));
        assert_eq!(cfg.tls.mode, ClientTlsMode::Require);
        assert!(matches!(cfg.upstream.address, UpstreamAddr::Unix(_)));
        assert_eq!(cfg.upstream.connect_timeout, Duration::from_millis(250));
    }

    #[test]
    fn catalog_section() {
        let text = r#"
[catalog]
dsn = "host=db user=pgwarden password=secret"
ttl = "30s"
timeout = "500ms"
large_rows = 5000
large_bytes = "512MB"
large_write_rows = 100
admin_roles = ["dba"]
connections = 2
"#;
        let cfg = Config::from_toml(Path::new("p.toml"), text).unwrap();
        let c = cfg.catalog.expect("catalog configured");
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.thresholds.large_rows, 5000.0);
        assert_eq!(c.thresholds.large_bytes, 512 << 20);
        assert_eq!(c.thresholds.large_write_rows, 100.0);
        assert_eq!(c.admin_roles, vec!["dba".to_string()]);
        assert_eq!(c.connections, 2);
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password is not printed"
        );
        assert!(Config::from_toml(Path::new("p.toml"), "")
            .unwrap()
            .catalog
            .is_none());

        let bad = "[catalog]\nttl = \"1s\"\nlarge_bytes = \"lots\"\nsize = 1\n";
        let err = Config::from_toml(Path::new("p.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("catalog.dsn"), "{err}");
        assert!(err.contains("p.toml:3: catalog.large_bytes"), "{err}");
        assert!(err.contains("p.toml:4: catalog.size: unknown key"), "{err}");
    }

    #[test]
    fn admin_state_and_holds_sections() {
        let text = r#"
[admin]
listen = "0.0.0.0:7433"
tokens = "/etc/pgwarden/tokens.toml"
tls_cert = "a.pem"
tls_key = "a.key"
[state]
dir = "/var/lib/pgwarden"
[holds]
timeout = "5m"
reminder = "10s"
show_literals = true
on_missing_ticket = "hold"
"#;
        let cfg = Config::from_toml(Path::new("p.toml"), text).unwrap();
        assert_eq!(cfg.admin.listen, Some("0.0.0.0:7433".parse().unwrap()));
        assert_eq!(
            cfg.admin.tokens.as_deref(),
            Some(Path::new("/etc/pgwarden/tokens.toml"))
        );
        assert_eq!(cfg.admin.tls_key.as_deref(), Some(Path::new("a.key")));
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/pgwarden"));
        assert_eq!(cfg.holds.timeout, Duration::from_secs(300));
        assert_eq!(cfg.holds.reminder, Duration::from_secs(10));
        assert!(cfg.holds.show_literals);
        assert_eq!(cfg.holds.on_missing_ticket, OnMissingTicket::Hold);

        let defaults = Config::from_toml(Path::new("p.toml"), "").unwrap();
        assert_eq!(
            defaults.admin.listen,
            Some("127.0.0.1:6433".parse().unwrap())
        );
        assert_eq!(defaults.state_dir, PathBuf::from("pgwarden-state"));
        assert_eq!(defaults.holds.timeout, Duration::from_secs(900));
        assert_eq!(defaults.holds.on_missing_ticket, OnMissingTicket::Refuse);

        let off = Config::from_toml(Path::new("p.toml"), "[admin]\nlisten = \"off\"\n").unwrap();
        assert_eq!(off.admin.listen, None);
    }

    #[test]
    fn admin_state_and_holds_errors_have_lines() {
        let text = "[admin]\nlisten = \"nowhere\"\ntoken = \"t\"\ntls_cert = \"c.pem\"\n[state]\ndri = \"x\"\n[holds]\ntimeout = \"0s\"\non_missing_ticket = \"allow\"\nshow_literals = \"yes\"\n";
        let err = Config::from_toml(Path::new("p.toml"), text).unwrap_err();
        let got: Vec<_> = err.0.iter().map(|e| (e.line, e.key.clone())).collect();
        assert_eq!(
            got,
            vec![
                (2, "admin.listen".into()),
                (3, "admin.token".into()),
                (6, "state.dri".into()),
                (8, "holds.timeout".into()),
                (9, "holds.on_missing_ticket".into()),
                (10, "holds.show_literals".into()),
                (0, "admin".into()),
            ],
            "{err}"
        );
    }

    #[test]
    fn admin_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "[admin]\nlisten = \"127.0.0.1:1\"\n[state]\ndir = \"a\"\n",
        )
        .unwrap();
        let o = Overrides {
            admin_listen: Some("off".into()),
            admin_tokens: Some(PathBuf::from("t.toml")),
            state_dir: Some(PathBuf::from("b")),
            ..Overrides::default()
        };
        let cfg = Config::load(Some(&file), &o).unwrap();
        assert_eq!(cfg.admin.listen, None);
        assert_eq!(cfg.admin.tokens, Some(PathBuf::from("t.toml")));
        assert_eq!(cfg.state_dir, PathBuf::from("b"));
        let bad = Overrides {
            admin_listen: Some("6433".into()),
            ..Overrides::default()
        };
        let err = Config::load(None, &bad).unwrap_err().to_string();
        assert!(err.contains("--admin-listen"), "{err}");
    }

    #[test]
    fn webhooks_parse_with_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "whsec_c2VjcmV0\n").unwrap();
        let text = format!(
            r#"
[[webhook]]
url = "https://hooks.example.com/pgwarden"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[webhook]]
name = "chat"
url = "http://127.0.0.1:9000/slack"
events = ["refused", "break-glass", "checkpoint"]
format = "slack"
secret_file = "{}"
timeout = "2s"
max_attempts = 3
queue = 10
collapse_window = "0s"
backoff_initial = "100ms"
backoff_max = "1s"
"#,
            secret_file.display()
        );
        let cfg = Config::from_toml(Path::new("p.toml"), &text).unwrap();
        use crate::alerts::{Filter, Format};
        let [a, b] = &cfg.webhooks[..] else {
            panic!("two webhooks: {:?}", cfg.webhooks)
        };
        assert_eq!(a.name, "webhook-1");
        assert_eq!(a.events, Filter::defaults());
        assert_eq!(a.format, Format::Json);
        assert_eq!(a.timeout, Duration::from_secs(5));
        assert_eq!((a.max_attempts, a.queue), (5, 1024));
        assert_eq!(a.collapse_window, Duration::from_secs(60));
        assert_eq!(a.backoff_initial, Duration::from_millis(500));
        assert_eq!(a.backoff_max, Duration::from_secs(30));
        assert!(a.secret.is_some());
        assert_eq!(b.name, "chat");
        assert_eq!(
            b.events,
            vec![Filter::Refused, Filter::BreakGlass, Filter::Checkpoint]
        );
        assert_eq!(b.format, Format::Slack);
        assert_eq!(b.secret.as_ref().unwrap().expose(), "whsec_c2VjcmV0");
        assert_eq!((b.max_attempts, b.queue), (3, 10));
        assert_eq!(b.collapse_window, Duration::ZERO);
        assert_eq!(b.backoff_max, Duration::from_secs(1));
        assert!(
            !format!("{cfg:?}").contains("c2VjcmV0"),
            "secrets are not printed"
        );
        assert!(Config::from_toml(Path::new("p.toml"), "")
            .unwrap()
            .webhooks
            .is_empty());
    }

    #[test]
    fn webhook_errors_have_lines() {
        let text = "[[webhook]]\nurl = \"ftp://x/\"\nevents = [\"refused\", \"dropped\"]\nformat = \"xml\"\nsecret = \"a\"\nsecret_file = \"/nonexistent\"\nretries = 3\nqueue = 0\n[[webhook]]\nname = \"webhook-1\"\nsecret = \"whsec_!!\"\nbackoff_initial = \"2s\"\nbackoff_max = \"1s\"\n[[webhook]]\ntimeout = \"soon\"\n";
        let err = Config::from_toml(Path::new("p.toml"), text).unwrap_err();
        let got: Vec<_> = err.0.iter().map(|e| (e.line, e.key.clone())).collect();
        assert_eq!(
            got,
            vec![
                (2, "webhook.url".into()),
                (3, "webhook.events".into()),
                (4, "webhook.format".into()),
                (7, "webhook.retries".into()),
                (8, "webhook.queue".into()),
                (5, "webhook.secret".into()),
                (11, "webhook.secret".into()),
                (9, "webhook.backoff_max".into()),
                (9, "webhook.url".into()),
                (15, "webhook.timeout".into()),
                (14, "webhook.url".into()),
            ],
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("\"dropped\" is not one of refused, held"),
            "{err}"
        );
        assert!(err.to_string().contains("exclude each other"), "{err}");
        let not_tables = Config::from_toml(Path::new("p.toml"), "webhook = \"x\"\n").unwrap_err();
        assert_eq!(not_tables.0[0].key, "webhook");
        let twice = "[[webhook]]\nurl = \"http://a/\"\n[[webhook]]\nname = \"webhook-1\"\nurl = \"http://b/\"\n";
        let err = Config::from_toml(Path::new("p.toml"), twice).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!((err.0[0].line, err.0[0].key.as_str()), (3, "webhook.name"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = Config::from_toml(Path::new("p.toml"), "listen = \"a\"\nx = = 1\n").unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, 2);
    }

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            parse_upstream_addr("[::1]:5433"),
            Ok(UpstreamAddr::Tcp {
                host: "::1".into(),
                port: 5433
            })
        );
        assert!(parse_upstream_addr("localhost").is_err());
        assert!(parse_upstream_addr("h:0").is_err());
    }

    #[test]
    fn cross_checks() {
        let err = Config::from_toml(
            Path::new("p.toml"),
            "[tls]\nmode = \"allow\"\n[upstream]\ntls = \"verify-full\"\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }
}
