//! The admin API client the `holds`, `tickets` and `reviews` commands share: the URL and
//! token flags, one request helper, and how outcomes become exit statuses (0 done, 1 the API
//! refused and said why, 2 usage or connection errors). Also the small text table printer,
//! and [`printable`], which every text output passes stored strings through: SQL, names and
//! comments come from database clients and token holders, and must not drive the terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{EXIT_ERROR, EXIT_OK, EXIT_REFUSED};

/// Where the admin API is unless `--admin` / `PGWARDEN_ADMIN_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:6433";

/// Output of the admin commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Tables and sentences.
    Text,
    /// The API's JSON, verbatim.
    Json,
}

/// Flags every admin API command takes (also after its subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Admin API of the pgwarden instance.
    #[arg(
        long = "admin",
        env = "PGWARDEN_ADMIN_URL",
        default_value = DEFAULT_ADMIN_URL,
        value_name = "URL",
        global = true
    )]
    pub admin: String,
    /// API token (`pgwarden tokens add`); prefer the environment variable, which other
    /// users cannot read in the process list.
    #[arg(
        long,
        env = "PGWARDEN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub format: OutputFormat,
}

/// Why a command did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error (`{"error": ...}`): exit 1.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    /// Bad flags or input, no connection, an answer that is not the API's: exit 2.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Refused { .. } => EXIT_REFUSED,
            CliError::Usage(_) => EXIT_ERROR,
        }
    }
}

/// Runs `f` on a fresh single-threaded runtime and turns its outcome into the exit status.
pub fn run_command<F>(f: F) -> i32
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgwarden: starting the runtime: {e}");
            return EXIT_ERROR;
        }
    };
    match rt.block_on(f) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("pgwarden: {}", printable(&e.to_string()));
            e.exit_code()
        }
    }
}

/// An answer of the API: its JSON text (printed verbatim by `--format json`) and the value.
pub struct Answer<T> {
    pub text: String,
    pub value: T,
}

/// A connection to one admin API with one token.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(args: &ClientArgs) -> Result<AdminClient, CliError> {
        let base = args.admin.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--admin {:?} is not an http:// or https:// URL",
                args.admin
            )));
        }
        let token = match args.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => {
                return Err(CliError::Usage(
                    "no API token: set PGWARDEN_TOKEN or give --token".into(),
                ))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Usage(format!("HTTP client: {e}")))?;
        Ok(AdminClient { base, token, http })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, CliError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Answer<T>, CliError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer<T>, CliError> {
        let resp =
            req.bearer_auth(&self.token).send().await.map_err(|e| {
                CliError::Usage(format!("cannot reach {}: {}", self.base, chain(&e)))
            })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::Usage(format!("reading the answer of {}: {e}", self.base)))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
            return Err(match message {
                Some(message) => CliError::Refused {
                    status: status.as_u16(),
                    message,
                },
                None => CliError::Usage(format!(
                    "{} answered {status} without an API error: {}",
                    self.base,
                    text.chars().take(200).collect::<String>()
                )),
            });
        }
        let value = serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!("{} answered with unexpected JSON: {e}", self.base))
        })?;
        Ok(Answer { text, value })
    }
}

/// An error with its causes ("error sending request: tcp connect error: refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Percent-encodes a ticket id for a path segment.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A timestamp as the tables show it: UTC, to the second.
pub fn when(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `s` fit for a terminal: every control character (C0, newline and tab included; DEL; C1)
/// and every Unicode bidirectional control (U+061C, U+200E, U+200F, U+202A–U+202E,
/// U+2066–U+2069) written as a visible escape such as `\u{1b}`, so that stored text cannot
/// move the cursor, recolour, hide, overwrite or reorder what the reader sees. Backslashes
/// are left alone, so the output is not always reversible. Text with multi-line fields
/// escapes each line.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unprintable) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unprintable(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn unprintable(c: char) -> bool {
    // `is_control`: general category Cc, which is U+0000–U+001F and U+007F–U+009F.
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` on one line, at most `max` characters, [`printable`].
pub fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let flat = printable(&flat).into_owned();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut t: String = flat.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Columns padded to their widest cell; the last column is not padded. Cells are made
/// [`printable`] (a newline in one is escaped, so it cannot start a row of its own).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_lines_shorten() {
        let t = table(
            &["ID", "STATUS", "SQL"],
            &[
                vec!["1".into(), "pending".into(), "DROP TABLE t".into()],
                vec!["12".into(), "ok".into(), "".into()],
            ],
        );
        assert_eq!(t, "ID  STATUS   SQL\n1   pending  DROP TABLE t\n12  ok\n");
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
        assert_eq!(segment("CHG-1/2 x"), "CHG-1%2F2%20x");
    }

    #[test]
    fn control_and_bidi_characters_are_printed_escaped() {
        assert!(matches!(
            printable("DROP TABLE t; -- ok ü € \\n"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("/*\x1b[8m*/ or id > 0 /*\x1b[0m*/"),
            "/*\\u{1b}[8m*/ or id > 0 /*\\u{1b}[0m*/"
        );
        assert_eq!(printable("a\nb\tc\rd\0e"), "a\\u{a}b\\u{9}c\\u{d}d\\u{0}e");
        assert_eq!(
            printable("\x7f\u{80}\u{9b}\u{9f}"),
            "\\u{7f}\\u{80}\\u{9b}\\u{9f}"
        );
        assert_eq!(
            printable("x\u{202e}y\u{2066}\u{2069}\u{200e}\u{200f}\u{61c}\u{202a}"),
            "x\\u{202e}y\\u{2066}\\u{2069}\\u{200e}\\u{200f}\\u{61c}\\u{202a}"
        );
        // Neighbours of the ranges are ordinary text.
        assert!(matches!(
            printable("\u{a0}\u{2029}\u{2065}\u{206a}"),
            Cow::Borrowed(_)
        ));
        // Escaping twice changes nothing.
        let once = printable("\x1b[2J").into_owned();
        assert_eq!(printable(&once), once);
        // Tables and one-line cells are escaped before they are measured and cut.
        assert_eq!(one_line("a\x1b[8m b", 20), "a\\u{1b}[8m b");
        assert_eq!(one_line("\x1b\x1b", 6), "\\u{1b…");
        let t = table(&["A", "B"], &[vec!["x\ny".into(), "\u{202e}z".into()]]);
        assert_eq!(t, "A        B\nx\\u{a}y  \\u{202e}z\n");
    }

    #[test]
    fn client_needs_a_url_and_a_token() {
        let args = |admin: &str, token: Option<&str>| ClientArgs {
            admin: admin.into(),
            token: token.map(Into::into),
            format: OutputFormat::Text,
        };
        assert!(AdminClient::new(&args("http://127.0.0.1:6433/", Some("pgw_x"))).is_ok());
        for a in [
            args("127.0.0.1:6433", Some("t")),
            args(DEFAULT_ADMIN_URL, None),
            args(DEFAULT_ADMIN_URL, Some(" ")),
        ] {
            let e = AdminClient::new(&a).err().expect("refused");
            assert_eq!(e.exit_code(), EXIT_ERROR);
        }
    }
}
