//! Cutting a byte stream into protocol frames by their length words.
//!
//! A frame is a type byte, a 4-byte big-endian length that counts itself, and a body. The
//! framer only reads the 5-byte header: it never allocates, never looks past a frame's end,
//! and checks the length against the limit PostgreSQL itself applies to that message type
//! (client side: `postgres.c` `SocketBackend`, auth tokens; server side: libpq's rule that
//! only a few types may exceed 30,000 bytes). `Ok(None)` means "need more bytes".

use thiserror::Error;

/// PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`.
pub const SMALL_LIMIT: u32 = 10_000;
/// PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT` (MaxAllocSize - 1): Query, Parse, Bind, CopyData, FunctionCall.
pub const LARGE_LIMIT: u32 = 0x3fff_fffe;
/// PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH` for password and SASL messages.
pub const AUTH_LIMIT: u32 = 65_535;
/// libpq refuses any server message over this length unless its type may be long.
pub const BACKEND_SHORT_LIMIT: u32 = 30_000;
/// Backend types that may be long (libpq's `VALID_LONG_MESSAGE_TYPE`).
pub const BACKEND_LONG_LIMIT: u32 = i32::MAX as u32;

/// Size of a frame header: type byte + length word.
pub const HEADER_LEN: usize = 5;

/// Which table of message types and limits applies to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// Client messages while authenticating: only password / SASL / GSS responses.
    FrontendAuth,
    /// Client messages once the session is established.
    Frontend,
    /// Server messages.
    Backend,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// The length word: body length + 4.
    pub len: u32,
}

impl Header {
    /// Bytes of the whole frame, type byte included.
    pub fn frame_len(&self) -> usize {
        self.len as usize + 1
    }

    pub fn body_len(&self) -> usize {
        self.len as usize - 4
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid frontend message type {}", show_tag(*.0))]
    UnexpectedType(u8),
    #[error("invalid message length {len} for message type {}", show_tag(*.tag))]
    BadLength { tag: u8, len: u32 },
    #[error("message type {} of {len} bytes exceeds the limit of {max} bytes", show_tag(*.tag))]
    TooLong { tag: u8, len: u32, max: u32 },
}

fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("\"{}\"", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// The largest length word allowed for `tag` under `limits`, or `None` if the type is not
/// allowed at all.
pub fn max_len(tag: u8, limits: Limits) -> Option<u32> {
    match limits {
        Limits::FrontendAuth => match tag {
            b'p' => Some(AUTH_LIMIT),
            b'X' => Some(SMALL_LIMIT),
            _ => None,
        },
        Limits::Frontend => match tag {
            b'Q' | b'P' | b'B' | b'd' | b'F' => Some(LARGE_LIMIT),
            b'C' | b'D' | b'E' | b'H' | b'S' | b'X' | b'c' | b'f' => Some(SMALL_LIMIT),
            _ => None,
        },
        Limits::Backend => match tag {
            b'T' | b'D' | b'd' | b'V' | b'E' | b'N' | b'A' => Some(BACKEND_LONG_LIMIT),
            _ => Some(BACKEND_SHORT_LIMIT),
        },
    }
}

/// Reads the header at the start of `buf`. `Ok(None)`: fewer than 5 bytes are there yet.
#[inline]
pub fn parse_header(buf: &[u8], limits: Limits) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let max = max_len(tag, limits).ok_or(FrameError::UnexpectedType(tag))?;
    if len < 4 {
        return Err(FrameError::BadLength { tag, len });
    }
    if len > max {
        return Err(FrameError::TooLong { tag, len, max });
    }
    Ok(Some(Header { tag, len }))
}

/// Reads a NUL-terminated string starting at `*pos` and moves `*pos` past its NUL.
/// `None` if there is no NUL before the end of `buf`.
pub fn read_cstr<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = buf.get(*pos..)?;
    let n = rest.iter().position(|&b| b == 0)?;
    *pos += n + 1;
    Some(&rest[..n])
}

/// Reads a big-endian i32 at `*pos`.
pub fn read_i32(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let b = buf.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_is_not_an_error() {
        assert_eq!(parse_header(b"", Limits::Frontend), Ok(None));
        assert_eq!(parse_header(b"Q\0\0\0", Limits::Frontend), Ok(None));
    }

    #[test]
    fn lengths_below_four_are_refused() {
        for len in 0..4u32 {
            let mut b = vec![b'Q'];
            b.extend_from_slice(&len.to_be_bytes());
            assert_eq!(
                parse_header(&b, Limits::Frontend),
                Err(FrameError::BadLength { tag: b'Q', len })
            );
        }
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let b = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            parse_header(&b, Limits::Frontend),
            Err(FrameError::TooLong { .. })
        ));
        // A small message type gets the small limit.
        let b = [b'S', 0, 0, 0x27, 0x11];
        assert!(matches!(
            parse_header(&b, Limits::Frontend),
            Err(FrameError::TooLong {
                max: SMALL_LIMIT,
                ..
            })
        ));
    }

    #[test]
    fn unknown_frontend_types_are_refused() {
        assert_eq!(
            parse_header(b"Zabcd", Limits::Frontend),
            Err(FrameError::UnexpectedType(b'Z'))
        );
        assert_eq!(
            parse_header(b"Q\0\0\0\x05", Limits::FrontendAuth),
            Err(FrameError::UnexpectedType(b'Q'))
        );
    }

    #[test]
    fn backend_short_types_have_libpq_limit() {
        let b = [b'Z', 0, 0, 0x75, 0x31]; // 30001
        assert!(parse_header(&b, Limits::Backend).is_err());
        let b = [b'D', 0, 0x10, 0, 0];
        assert_eq!(
            parse_header(&b, Limits::Backend),
            Ok(Some(Header {
                tag: b'D',
                len: 0x100000
            }))
        );
    }

    #[test]
    fn cstr_reading_stops_at_buffer_end() {
        let mut pos = 0;
        assert_eq!(read_cstr(b"ab\0cd", &mut pos), Some(&b"ab"[..]));
        assert_eq!(pos, 3);
        assert_eq!(read_cstr(b"ab\0cd", &mut pos), None);
    }
}
