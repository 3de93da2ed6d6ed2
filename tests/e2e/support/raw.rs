//! Raw protocol client pieces for tests that must send what no well-behaved client sends.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A StartupMessage for `user`/`database` with protocol `version` and extra parameters.
pub fn startup_message(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
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

pub fn startup(user: &str, db: &str) -> Vec<u8> {
    startup_message(0x0003_0000, &[("user", user), ("database", db)])
}

pub fn ssl_request() -> Vec<u8> {
    vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
}

pub fn gssenc_request() -> Vec<u8> {
    vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]
}

/// A typed message: tag, length, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    msg(b'Q', &b)
}

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse / NoticeResponse.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut i = 0;
        while i < self.body.len() && self.body[i] != 0 {
            let t = self.body[i];
            let end = i + 1 + self.body[i + 1..].iter().position(|&b| b == 0)?;
            if t == code {
                return Some(String::from_utf8_lossy(&self.body[i + 1..end]).into_owned());
            }
            i = end + 1;
        }
        None
    }

    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }
}

/// Reads one backend message; `None` at end of stream.
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> Option<Msg> {
    let tag = r.read_u8().await.ok()?;
    let len = r.read_u32().await.ok()? as usize;
    let mut body = vec![0; len.checked_sub(4)?];
    r.read_exact(&mut body).await.ok()?;
    Some(Msg { tag, body })
}

/// Reads messages until one with `tag` (returned) or end of stream (`None`).
pub async fn read_until<R: AsyncRead + Unpin>(r: &mut R, tag: u8) -> Option<Msg> {
    loop {
        let m = read_msg(r).await?;
        if m.tag == tag {
            return Some(m);
        }
    }
}

/// Sends a trust-auth startup and reads up to the first ReadyForQuery.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, user: &str, db: &str) {
    s.write_all(&startup(user, db)).await.unwrap();
    let z = read_until(s, b'Z')
        .await
        .expect("ReadyForQuery after login");
    assert_eq!(z.body, b"I");
}

/// Reads until the stream ends, returning the ErrorResponse seen (if any).
pub async fn read_error_then_eof<R: AsyncRead + Unpin>(r: &mut R) -> Option<Msg> {
    let mut err = None;
    while let Some(m) = read_msg(r).await {
        if m.tag == b'E' && err.is_none() {
            err = Some(m);
        }
    }
    err
}

/// Appends `s` and its NUL terminator.
pub fn cstr(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(s);
    b.push(0);
}

/// Parse of `sql` as statement `name`, no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name.as_bytes());
    cstr(&mut b, sql.as_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind of `statement` to `portal`, no parameters, text results.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal.as_bytes());
    cstr(&mut b, statement.as_bytes());
    b.extend_from_slice(&[0; 6]);
    msg(b'B', &b)
}

/// Execute of `portal`, at most `max_rows` rows (0: all).
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal.as_bytes());
    b.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &b)
}

pub fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name.as_bytes());
    msg(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    msg(b'H', b"")
}

/// What one batch answered: the SQLSTATEs and messages of its errors, and the status of
/// its ReadyForQuery.
#[derive(Debug)]
pub struct Answer {
    pub errors: Vec<String>,
    pub messages: Vec<String>,
    pub status: u8,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn refused(&self) -> bool {
        self.errors.iter().any(|e| e == "42501")
    }
}

/// Reads up to and including the next ReadyForQuery (within a minute).
pub async fn answer<R: AsyncRead + Unpin>(s: &mut R) -> Answer {
    let mut a = Answer {
        errors: Vec::new(),
        messages: Vec::new(),
        status: 0,
    };
    super::within(std::time::Duration::from_secs(60), "ReadyForQuery", async {
        loop {
            let m: Msg = read_msg(s).await.expect("the session answers");
            match m.tag {
                b'E' => {
                    a.errors.push(m.sqlstate().unwrap_or_default());
                    a.messages.push(m.field(b'M').unwrap_or_default());
                }
                b'Z' => {
                    a.status = m.body[0];
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    a
}

/// A raw session to `addr`, logged in as the tests' user.
pub async fn session(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    super::within(
        std::time::Duration::from_secs(60),
        "login",
        login(&mut s, super::PG_USER, super::PG_DB),
    )
    .await;
    s
}

/// Sends `bytes` and reads the answer up to the next ReadyForQuery.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Answer {
    s.write_all(bytes).await.unwrap();
    answer(s).await
}

/// Sends a simple Query and reads its answer.
pub async fn q<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sql: &str) -> Answer {
    send(s, &query(sql)).await
}
