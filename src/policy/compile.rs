//! Loading a policy directory: every `*.toml` file read strictly, every rule compiled, every
//! problem (syntax, unknown key, bad value, bad glob, duplicate id) reported at once with its
//! file and line. A set with any error is never used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml_edit::{ImDocument, Item, Table};

use super::matcher::{Globs, Period, SessionMatcher, StatementMatcher, Window};
use super::raw::{RawMatch, RawPeriod, RawRule, RawSession, RawWindow};
use super::{Action, Policy, Rule, Severity};
use crate::sql::{Class, CopyTarget, Flag, Nesting, WhereState};

/// One problem in a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: usize,
    pub rule: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(r) = &self.rule {
            write!(f, ": rule {r}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl std::fmt::Display for PolicyErrors {
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

impl std::error::Error for PolicyErrors {}

/// The policy files of `dir`: `*.toml` directly in it, sorted by name.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyErrors> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            rule: None,
            message: format!("cannot read the policy directory: {e}"),
        }])
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads and compiles every policy file in `dir` for `environment`.
pub fn load_dir(dir: &Path, environment: &str) -> Result<Policy, PolicyErrors> {
    let files = policy_files(dir)?;
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(t) => sources.push((f.clone(), t)),
            Err(e) => errors.push(PolicyError {
                file: f.clone(),
                line: 0,
                rule: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    let policy = compile_sources(&sources, environment).map(|mut p| {
        // A rule names its file relative to the policy directory: a refusal's DETAIL (and
        // every report) says `security.toml`, never where the proxy's files live on disk.
        for r in &mut p.rules {
            if let Ok(rel) = r.file.strip_prefix(dir) {
                r.file = rel.to_path_buf();
            }
        }
        p
    });
    match policy {
        Ok(p) if errors.is_empty() => Ok(p),
        Ok(_) => Err(PolicyErrors(errors)),
        Err(PolicyErrors(more)) => {
            errors.extend(more);
            Err(PolicyErrors(errors))
        }
    }
}

/// Compiles policy sources (file name, text) for `environment`.
pub fn compile_sources(
    sources: &[(PathBuf, String)],
    environment: &str,
) -> Result<Policy, PolicyErrors> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut hasher = Sha256::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    let mut break_glass: Option<Vec<String>> = None;
    for (file, text) in sources {
        hasher.update(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
        let (raws, users) = read_file(file, text, &mut errors);
        if let Some(users) = users {
            break_glass.get_or_insert_with(Vec::new).extend(users);
        }
        for (raw, line) in raws {
            let id = raw.id.clone();
            if let Some((f, l)) = seen.get(&id) {
                errors.push(PolicyError {
                    file: file.clone(),
                    line,
                    rule: Some(id.clone()),
                    message: format!("duplicate rule id (first defined at {}:{l})", f.display()),
                });
                continue;
            }
            seen.insert(id, (file.clone(), line));
            if let Some(rule) = compile_rule(raw, file, line, environment, &mut errors) {
                rules.push(rule);
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        return Err(PolicyErrors(errors));
    }
    let break_glass = match break_glass.map(|u| Globs::new(&u, false)) {
        None => None,
        Some(Ok(g)) => Some(g),
        Some(Err(e)) => {
            return Err(PolicyErrors(vec![PolicyError {
                file: PathBuf::from("[break_glass]"),
                line: 0,
                rule: None,
                message: format!("break_glass.users: {e}"),
            }]))
        }
    };
    let digest = hasher.finalize();
    let needs = rules
        .iter()
        .fold(crate::catalog::Needs::default(), |n, r| n.union(r.needs));
    Ok(Policy {
        version: hex::encode(&digest[..8]),
        environment: environment.to_owned(),
        rules,
        needs,
        break_glass,
    })
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    span.map(|s| {
        text.as_bytes()[..s.start.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    })
    .unwrap_or(0)
}

/// Finds the line of `key` anywhere in `t` (for serde's "unknown field" messages).
fn key_line(text: &str, t: &Table, key: &str) -> Option<usize> {
    for (k, item) in t.iter() {
        if k == key {
            return t.key(k).map(|k| line_of(text, k.span()));
        }
        if let Some(sub) = item.as_table() {
            if let Some(l) = key_line(text, sub, key) {
                return Some(l);
            }
        }
    }
    None
}

/// The rules of one file, and the users of its `[break_glass]` table if it has one.
fn read_file(
    file: &Path,
    text: &str,
    errors: &mut Vec<PolicyError>,
) -> (Vec<(RawRule, usize)>, Option<Vec<String>>) {
    let err = |line, rule: Option<String>, message: String| PolicyError {
        file: file.to_path_buf(),
        line,
        rule,
        message,
    };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            errors.push(err(
                line_of(text, e.span()),
                None,
                e.message().trim().to_owned(),
            ));
            return (Vec::new(), None);
        }
    };
    let mut out = Vec::new();
    let mut break_glass = None;
    for (k, item) in doc.as_table().iter() {
        if k == "break_glass" {
            let line = line_of(text, item.span());
            let raw = item
                .clone()
                .into_value()
                .map_err(|_| "`break_glass` must be a table".to_owned())
                .and_then(|v| {
                    super::raw::RawBreakGlass::deserialize(
                        serde::de::IntoDeserializer::into_deserializer(v),
                    )
                    .map_err(|e| format!("break_glass: {}", e.message().trim()))
                });
            match raw {
                Ok(b) => break_glass = Some(b.users),
                Err(message) => errors.push(err(line, None, message)),
            }
            continue;
        }
        if k != "rule" {
            let line = doc
                .as_table()
                .key(k)
                .map(|k| line_of(text, k.span()))
                .unwrap_or(0);
            errors.push(err(
                line,
                None,
                format!(
                    "unknown key `{k}` (a policy file holds [[rule]] tables and [break_glass])"
                ),
            ));
            continue;
        }
        let Some(arr) = item.as_array_of_tables() else {
            errors.push(err(
                line_of(text, item.span()),
                None,
                "`rule` must be written as [[rule]] tables".into(),
            ));
            continue;
        };
        for t in arr.iter() {
            let line = t
                .iter()
                .next()
                .and_then(|(k, _)| t.key(k))
                .map(|k| line_of(text, k.span()).saturating_sub(1))
                .unwrap_or(0)
                .max(1);
            let id = t.get("id").and_then(Item::as_str).map(str::to_owned);
            let value = match Item::Table(t.clone()).into_value() {
                Ok(v) => v,
                Err(_) => {
                    errors.push(err(line, id, "rule is not a table".into()));
                    continue;
                }
            };
            match RawRule::deserialize(serde::de::IntoDeserializer::into_deserializer(value)) {
                Ok(r) => out.push((r, line)),
                Err(e) => {
                    let msg = e.message().trim().to_owned();
                    let kline = msg
                        .split('`')
                        .nth(1)
                        .filter(|_| msg.starts_with("unknown field"))
                        .and_then(|k| key_line(text, t, k))
                        .unwrap_or(line);
                    errors.push(err(kline, id, msg));
                }
            }
        }
    }
    (out, break_glass)
}

fn compile_rule(
    raw: RawRule,
    file: &Path,
    line: usize,
    environment: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<Rule> {
    let before = errors.len();
    let mut err = |m: String| {
        errors.push(PolicyError {
            file: file.to_path_buf(),
            line,
            rule: Some(raw.id.clone()),
            message: m,
        })
    };
    if raw.id.trim().is_empty() || raw.id.contains(char::is_whitespace) {
        err(format!("rule id {:?} must be a non-empty word", raw.id));
    }
    let mut action = Action::parse(&raw.action).unwrap_or_else(|| {
        err(format!(
            "action {:?} is not one of allow, alert, require_ticket, hold, block",
            raw.action
        ));
        Action::Block
    });
    let severity = match raw.severity.as_deref() {
        None => Severity::Medium,
        Some(s) => Severity::parse(s).unwrap_or_else(|| {
            err(format!(
                "severity {s:?} is not one of info, low, medium, high, critical"
            ));
            Severity::Medium
        }),
    };
    let mut small_action = raw.small_action.as_deref().map(|a| {
        Action::parse(a).unwrap_or_else(|| {
            err(format!("small_action {a:?} is not a valid action"));
            Action::Block
        })
    });
    let mut monitor = raw.monitor;
    let mut enabled = raw.enabled;
    for (env, o) in &raw.environments {
        if let Some(a) = &o.small_action {
            match Action::parse(a) {
                Some(a) if env == environment => small_action = Some(a),
                Some(_) => {}
                None => err(format!(
                    "environments.{env}.small_action {a:?} is not a valid action"
                )),
            }
        }
        if let Some(a) = &o.action {
            match Action::parse(a) {
                Some(a) if env == environment => action = a,
                Some(_) => {}
                None => err(format!(
                    "environments.{env}.action {a:?} is not a valid action"
                )),
            }
        }
        if env == environment {
            monitor = o.monitor.unwrap_or(monitor);
            enabled = o.enabled.unwrap_or(enabled);
        }
    }
    let statement = compile_match(&raw.when, &mut err);
    let session = compile_session(&raw.session, &mut err);
    let workflow = compile_workflow(&raw, &mut err);
    if errors.len() > before || !enabled {
        return None;
    }
    // A small table never gets a stricter action than a large one.
    let small_action = small_action.map(|a| a.min(action));
    let patterns = raw
        .when
        .attributes
        .iter()
        .chain(raw.when.not_attributes.iter())
        .flatten()
        .map(String::as_str)
        .chain(raw.when.expr.as_deref());
    let needs = crate::catalog::Needs::from_patterns(patterns, small_action.is_some());
    Some(Rule {
        small_action,
        needs,
        id: raw.id,
        description: raw.description,
        severity,
        action,
        message: raw.message,
        hint: raw.hint,
        monitor,
        workflow,
        file: file.to_path_buf(),
        line,
        statement,
        session,
    })
}

fn compile_workflow(raw: &RawRule, err: &mut impl FnMut(String)) -> super::Workflow {
    if raw.approvals == Some(0) {
        err("approvals must be at least 1".into());
    }
    let hold_timeout = raw.hold_timeout.as_deref().and_then(|t| {
        humantime::parse_duration(t)
            .ok()
            .filter(|d| !d.is_zero())
            .or_else(|| {
                err(format!(
                    "hold_timeout {t:?} is not a duration such as \"15m\" or \"2h\""
                ));
                None
            })
    });
    let on_missing_ticket = raw.on_missing_ticket.as_deref().and_then(|s| match s {
        "refuse" => Some(super::OnMissingTicket::Refuse),
        "hold" => Some(super::OnMissingTicket::Hold),
        _ => {
            err(format!(
                "on_missing_ticket {s:?} is not one of refuse, hold"
            ));
            None
        }
    });
    super::Workflow {
        approvals: raw.approvals,
        approver_groups: raw.approver_groups.clone().unwrap_or_default(),
        hold_timeout,
        on_missing_ticket,
        groups_conflict: None,
    }
}

fn globs(
    list: &Option<Vec<String>>,
    ci: bool,
    what: &str,
    err: &mut impl FnMut(String),
) -> Option<Globs> {
    let l = list.as_ref()?;
    match Globs::new(l, ci) {
        Ok(g) => Some(g),
        Err(e) => {
            err(format!("{what}: {e}"));
            None
        }
    }
}

fn enums<T>(
    list: &Option<Vec<String>>,
    what: &str,
    parse: fn(&str) -> Option<T>,
    err: &mut impl FnMut(String),
) -> Option<Vec<T>> {
    let l = list.as_ref()?;
    let mut out = Vec::new();
    for s in l {
        match parse(s) {
            Some(v) => out.push(v),
            None => err(format!("{what}: unknown value {s:?}")),
        }
    }
    Some(out)
}

fn copy_target(s: &str) -> Option<CopyTarget> {
    Some(match s {
        "client" | "stdio" => CopyTarget::Client,
        "server_file" | "file" => CopyTarget::ServerFile,
        "program" => CopyTarget::Program,
        _ => return None,
    })
}

fn compile_match(m: &RawMatch, err: &mut impl FnMut(String)) -> StatementMatcher {
    let functions = m.functions.as_ref().map(|fs| {
        let (q, b): (Vec<String>, Vec<String>) = fs.iter().cloned().partition(|f| f.contains('.'));
        let mk = |v: Vec<String>, err: &mut dyn FnMut(String)| {
            if v.is_empty() {
                None
            } else {
                Globs::new(&v, false)
                    .map_err(|e| err(format!("functions: {e}")))
                    .ok()
            }
        };
        (mk(q, err), mk(b, err))
    });
    StatementMatcher {
        tags: globs(&m.tags, true, "tags", err),
        classes: enums(&m.classes, "classes", Class::parse, err),
        subcommands: globs(&m.subcommands, true, "subcommands", err),
        objects: globs(&m.objects, false, "objects", err),
        flags: enums(&m.flags, "flags", Flag::parse, err).unwrap_or_default(),
        not_flags: enums(&m.not_flags, "not_flags", Flag::parse, err).unwrap_or_default(),
        where_clause: enums(&m.where_clause, "where", WhereState::parse, err),
        nesting: enums(&m.nesting, "nesting", Nesting::parse, err),
        functions,
        set_names: globs(&m.set_names, true, "set_names", err),
        set_values: m
            .set_values
            .as_ref()
            .map(|v| v.iter().map(|s| s.to_ascii_lowercase()).collect()),
        copy_targets: enums(&m.copy_targets, "copy_targets", copy_target, err),
        copy_from: m.copy_from,
        roles: globs(&m.roles, false, "roles", err),
        dynamic_sql: m.dynamic_sql,
        attributes: globs(&m.attributes, true, "attributes", err),
        not_attributes: globs(&m.not_attributes, true, "not_attributes", err),
        created_in_session: m.created_in_session,
        unparsed: m.unparsed,
        unreadable_encoding: m.unreadable_encoding,
        expr: m.expr.as_ref().and_then(|src| {
            super::matcher::Expr::compile(src)
                .map_err(|e| err(format!("expr {src:?}: {e}")))
                .ok()
        }),
    }
}

fn compile_session(s: &RawSession, err: &mut impl FnMut(String)) -> SessionMatcher {
    let client_cidrs = s.client_cidrs.as_ref().map(|l| {
        l.iter()
            .filter_map(|c| {
                c.parse::<ipnet::IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| err(format!("client_cidrs: {c:?} is not an address or CIDR")))
                    .ok()
            })
            .collect()
    });
    SessionMatcher {
        users: globs(&s.users, false, "session.users", err),
        databases: globs(&s.databases, false, "session.databases", err),
        roles: globs(&s.roles, false, "session.roles", err),
        applications: globs(&s.applications, false, "session.applications", err),
        client_cidrs,
        tls: s.tls,
        in_transaction: s.in_transaction,
        lock_timeout_set: s.lock_timeout_set,
        window: s.window.as_ref().and_then(|w| compile_window(w, err)),
        outside_window: s
            .outside_window
            .as_ref()
            .and_then(|w| compile_window(w, err)),
        during: s
            .during
            .as_ref()
            .map(|ps| ps.iter().filter_map(|p| compile_period(p, err)).collect()),
    }
}

fn compile_period(p: &RawPeriod, err: &mut impl FnMut(String)) -> Option<Period> {
    let mut at = |what: &str, v: &str| match v.parse::<jiff::Timestamp>() {
        Ok(t) => Some(t),
        Err(e) => {
            err(format!(
                "during.{what} {v:?}: {e} (an RFC 3339 instant with an offset)"
            ));
            None
        }
    };
    let (from, until) = (at("from", &p.from)?, at("until", &p.until)?);
    if until <= from {
        err(format!(
            "during: until {} is not after from {}",
            p.until, p.from
        ));
        return None;
    }
    Some(Period { from, until })
}

fn minutes(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn compile_window(w: &RawWindow, err: &mut impl FnMut(String)) -> Option<Window> {
    let tz = match jiff::tz::TimeZone::get(&w.tz) {
        Ok(tz) => tz,
        Err(e) => {
            err(format!("window.tz {:?}: {e}", w.tz));
            return None;
        }
    };
    let mut days = Vec::new();
    for d in w.days.iter().flatten() {
        let n = match d.to_ascii_lowercase().get(..3) {
            Some("mon") => 1,
            Some("tue") => 2,
            Some("wed") => 3,
            Some("thu") => 4,
            Some("fri") => 5,
            Some("sat") => 6,
            Some("sun") => 7,
            _ => {
                err(format!("window.days: {d:?} is not a day of the week"));
                continue;
            }
        };
        days.push(n);
    }
    let time = |v: &Option<String>, what: &str, err: &mut dyn FnMut(String)| {
        v.as_ref().and_then(|s| {
            let m = minutes(s);
            if m.is_none() {
                err(format!("window.{what}: {s:?} is not HH:MM"));
            }
            m
        })
    };
    Some(Window {
        tz,
        days,
        from: time(&w.from, "from", err),
        to: time(&w.to, "to", err),
    })
}
