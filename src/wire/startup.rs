//! The startup phase: the untyped first packets a client sends (SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage), and the `options` parameter read with PostgreSQL's own
//! rules (`pg_split_opts`, then `-c name=value` / `--name=value` switches).

use thiserror::Error;

use super::frame::read_cstr;

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_LEN: u32 = 10_000;
/// The smallest packet: length word + code.
pub const MIN_STARTUP_LEN: u32 = 8;

/// One startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    SslRequest,
    GssEncRequest,
    /// A cancel request: process id and secret key (4 bytes in protocol 3.0, up to 256 in 3.2).
    Cancel(CancelKey),
    Startup(Startup),
}

/// The identity of a backend for cancellation, exactly as BackendKeyData carried it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: u32,
    pub secret: Vec<u8>,
}

/// A StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub major: u16,
    pub minor: u16,
    /// Parameters in the order sent; bytes are read as UTF-8 (lossy) for decisions and logs.
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> &str {
        self.param("user").unwrap_or("")
    }

    /// The database, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> &str {
        match self.param("database") {
            Some(d) if !d.is_empty() => d,
            _ => self.user(),
        }
    }

    /// True when the client asks for a replication connection (physical or logical).
    pub fn is_replication(&self) -> bool {
        match self.param("replication") {
            None => false,
            Some(v) => !matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0" | "f" | "n" | "of"
            ),
        }
    }

    /// `-c name=value` settings from the `options` parameter, as PostgreSQL will apply them.
    pub fn option_settings(&self) -> Vec<(String, String)> {
        self.param("options")
            .map(|o| parse_option_settings(&split_options(o)))
            .unwrap_or_default()
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength(u32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Parses the packet at the start of `buf`. `Ok(None)` means more bytes are needed; on success
/// the packet and its length in bytes are returned.
pub fn parse_packet(buf: &[u8]) -> Result<Option<(Packet, usize)>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[4..len];
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    let packet = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if !rest.is_empty() {
                return Err(StartupError::Malformed("negotiation request with a body"));
            }
            if code == SSL_REQUEST_CODE {
                Packet::SslRequest
            } else {
                Packet::GssEncRequest
            }
        }
        CANCEL_REQUEST_CODE => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(StartupError::Malformed("cancel request of a wrong size"));
            }
            Packet::Cancel(CancelKey {
                pid: u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                secret: rest[4..].to_vec(),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Packet::Startup(Startup {
                major,
                minor,
                params: parse_params(rest)?,
            })
        }
    };
    Ok(Some((packet, len)))
}

fn parse_params(buf: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    let mut pos = 0;
    loop {
        let name = read_cstr(buf, &mut pos).ok_or(StartupError::Malformed("missing terminator"))?;
        if name.is_empty() {
            break;
        }
        let value =
            read_cstr(buf, &mut pos).ok_or(StartupError::Malformed("parameter without a value"))?;
        params.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    if pos != buf.len() {
        return Err(StartupError::Malformed("bytes after the final terminator"));
    }
    Ok(params)
}

/// Splits `options` into words like PostgreSQL's `pg_split_opts`: words are separated by
/// whitespace, and a backslash makes the next character literal (so `\ ` keeps a space).
pub fn split_options(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| is_pg_space(*c)) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if is_pg_space(c) {
                break;
            }
            chars.next();
            if c == '\\' {
                match chars.next() {
                    Some(n) => w.push(n),
                    None => break,
                }
            } else {
                w.push(c);
            }
        }
        words.push(w);
    }
    words
}

/// C `isspace` in the C locale.
fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Single-letter postgres switches that take an argument (from `postgres.c`'s getopt string).
const SWITCHES_WITH_ARG: &str = "BcCDdfhkNprStvW-";

/// The `name=value` settings among backend switches (`-c name=value`, `-cname=value`,
/// `--name=value`), read the way PostgreSQL's getopt reads them: flags may be clustered
/// (`-bc role=x` is `-b` then `-c role=x`), a flag that takes an argument takes the rest of
/// the word or the next word. Names get `-` turned into `_` as `ParseLongOption` does, and are
/// lower-cased (GUC names are case-insensitive).
pub fn parse_option_settings(words: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let Some(flags) = w.strip_prefix('-') else {
            continue;
        };
        for (at, flag) in flags.char_indices() {
            if !SWITCHES_WITH_ARG.contains(flag) {
                continue;
            }
            let inline = &flags[at + flag.len_utf8()..];
            let arg = if !inline.is_empty() {
                inline.to_owned()
            } else if i < words.len() {
                i += 1;
                words[i - 1].clone()
            } else {
                break;
            };
            if flag == 'c' || flag == '-' {
                if let Some((name, value)) = arg.split_once('=') {
                    out.push((
                        name.replace('-', "_").to_ascii_lowercase(),
                        value.to_owned(),
                    ));
                }
            }
            break;
        }
    }
    out
}

/// Startup parameters that are not settings: who, where, what kind of connection.
pub fn is_connection_parameter(name: &str) -> bool {
    matches!(name, "user" | "database" | "options" | "replication") || name.starts_with("_pq_.")
}

impl Startup {
    /// The first parameter name that appears twice (PostgreSQL would use the last value,
    /// which a reader of the first would not see).
    pub fn duplicate_parameter(&self) -> Option<&str> {
        self.params
            .iter()
            .enumerate()
            .find(|(i, (k, _))| self.params[..*i].iter().any(|(k2, _)| k2 == k))
            .map(|(_, (k, _))| k.as_str())
    }

    /// Every setting the server will apply from this packet: top-level parameters that are
    /// not connection parameters (`application_name`, `client_encoding`, `role`…), then the
    /// `-c` settings of `options`.
    pub fn all_settings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .params
            .iter()
            .filter(|(k, _)| !is_connection_parameter(k))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        out.extend(self.option_settings());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)], version: u32) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn parses_startup_and_reports_its_length() {
        let b = startup_bytes(&[("user", "bob"), ("database", "db")], 0x0003_0000);
        let (p, n) = parse_packet(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        let Packet::Startup(s) = p else { panic!() };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.user(), "bob");
        assert_eq!(s.database(), "db");
        assert!(!s.is_replication());
    }

    #[test]
    fn protocol_3_2_accepted_and_4_refused() {
        let b = startup_bytes(&[("user", "u")], 0x0003_0002);
        assert!(parse_packet(&b).unwrap().is_some());
        let b = startup_bytes(&[("user", "u")], 0x0004_0000);
        assert_eq!(
            parse_packet(&b),
            Err(StartupError::UnsupportedProtocol { major: 4, minor: 0 })
        );
    }

    #[test]
    fn truncated_and_oversized_packets() {
        let b = startup_bytes(&[("user", "u")], 0x0003_0000);
        assert_eq!(parse_packet(&b[..b.len() - 1]), Ok(None));
        assert_eq!(
            parse_packet(&[0, 0, 0x27, 0x11, 0, 3, 0, 0]),
            Err(StartupError::BadLength(10001))
        );
        assert_eq!(parse_packet(&[0, 0, 0, 3]), Err(StartupError::BadLength(3)));
        // Missing final terminator.
        let mut b = startup_bytes(&[("user", "u")], 0x0003_0000);
        b.pop();
        let l = (b.len() as u32).to_be_bytes();
        b[..4].copy_from_slice(&l);
        assert!(matches!(parse_packet(&b), Err(StartupError::Malformed(_))));
    }

    #[test]
    fn ssl_gss_cancel() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_packet(&ssl).unwrap().unwrap().0, Packet::SslRequest);
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(
            parse_packet(&gss).unwrap().unwrap().0,
            Packet::GssEncRequest
        );
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 1, 2, 3, 4];
        assert_eq!(
            parse_packet(&cancel).unwrap().unwrap().0,
            Packet::Cancel(CancelKey {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            })
        );
    }

    #[test]
    fn options_split_like_postgres() {
        assert_eq!(
            split_options("  -c role=admin\t-c search_path=a\\ b "),
            vec!["-c", "role=admin", "-c", "search_path=a b"]
        );
        let s = Startup {
            major: 3,
            minor: 0,
            params: vec![(
                "options".into(),
                "-c role=x -cStatement-Timeout=5 --pgwarden.ticket=CHG-1 -B 10 -c bad".into(),
            )],
        };
        assert_eq!(
            s.option_settings(),
            vec![
                ("role".into(), "x".into()),
                ("statement_timeout".into(), "5".into()),
                ("pgwarden.ticket".into(), "CHG-1".into()),
            ]
        );
    }

    #[test]
    fn clustered_switches_are_read_like_getopt() {
        let w = split_options("-bc role=admin -nc search_path=x -ec work_mem=1");
        assert_eq!(
            parse_option_settings(&w),
            vec![
                ("role".into(), "admin".into()),
                ("search_path".into(), "x".into()),
                ("work_mem".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn duplicates_and_top_level_settings() {
        let s = Startup {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "a".into()),
                ("role".into(), "admin".into()),
                ("options".into(), "-c work_mem=1".into()),
                ("user".into(), "b".into()),
            ],
        };
        assert_eq!(s.duplicate_parameter(), Some("user"));
        assert_eq!(
            s.all_settings(),
            vec![
                ("role".into(), "admin".into()),
                ("work_mem".into(), "1".into())
            ]
        );
    }

    #[test]
    fn replication_values() {
        for (v, want) in [
            ("true", true),
            ("database", true),
            ("off", false),
            ("0", false),
        ] {
            let s = Startup {
                major: 3,
                minor: 0,
                params: vec![("replication".into(), v.into())],
            };
            assert_eq!(s.is_replication(), want, "{v}");
        }
    }
}
