//! The PostgreSQL wire protocol as pgredact speaks it: framing (`frame`), the startup packet
//! (`startup`), and one type per message pgredact decodes or builds (`frontend`, `backend`).
//! Everything else is relayed as raw bytes.
//!
//! Each message type decodes one whole frame (tag, length, body: what [`FrameReader`] returns)
//! and encodes one. Decoding reads only inside the frame, refuses invalid UTF-8 wherever it is
//! refused today (everywhere but the text of errors and notices) and is exactly as strict as
//! pgredact has always been: where pgredact reads only the start of a message (Bind, Close),
//! the rest stays raw bytes for PostgreSQL to check, since the client's bytes are what goes on.
//!
//! Why not `postgres-protocol` (in the tree through tokio-postgres, 0.6): its backend parser
//! frames messages itself from a growing buffer with no bound on their length (ours is
//! [`FrameReader`]: bounded, strict), refuses an ErrorResponse with bytes after its terminator
//! (pgredact drops them), and `ErrorField::value` panics on text that is not UTF-8 (PostgreSQL
//! sends errors in the server's encoding before `client_encoding` is known: pgredact reads them
//! lossily); its frontend module only encodes. Each message here is a few lines.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use frame::{FrameError, FrameReader, MessageTracker};

use bytes::{BufMut, BytesMut};

/// Body of a frame (after tag and length).
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// The body of a whole frame whose tag is one of `tags` and whose length field matches its size.
fn checked_body<'a>(frame: &'a [u8], tags: &[u8], what: &str) -> Result<&'a [u8], FrameError> {
    let bad = || FrameError::Protocol(format!("malformed {what} message"));
    let (&tag, rest) = frame.split_first().ok_or_else(bad)?;
    let (len, body) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    if !tags.contains(&tag) || i32::from_be_bytes(*len) as i64 != rest.len() as i64 {
        return Err(bad());
    }
    Ok(body)
}

/// Takes a NUL-terminated UTF-8 string from the front of `b`.
pub fn take_cstr(b: &mut &[u8]) -> Result<String, FrameError> {
    let pos = b
        .iter()
        .position(|c| *c == 0)
        .ok_or_else(|| FrameError::Protocol("missing string terminator".into()))?;
    let s = std::str::from_utf8(&b[..pos])
        .map_err(|_| FrameError::Protocol("string is not valid UTF-8".into()))?
        .to_string();
    *b = &b[pos + 1..];
    Ok(s)
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Starts a message: its tag and a length to be filled by [`finish`]. Returns where it starts.
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    start
}

/// Writes the length of the message that starts at `start` (it ends at the end of `out`).
fn finish(out: &mut BytesMut, start: usize) {
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Helpers of the message types' unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use super::FrameError;

    /// A frame with `tag` and `body`, its length filled in.
    pub(crate) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// The error of a decode that must fail.
    pub(crate) fn err<T: std::fmt::Debug>(r: Result<T, FrameError>) -> String {
        r.expect_err("must be refused").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_body_wants_tag_and_exact_length() {
        assert_eq!(checked_body(b"Q\0\0\0\x05x", b"Q", "Query").unwrap(), b"x");
        assert!(checked_body(b"Q\0\0\0\x05x", b"P", "Parse").is_err());
        assert!(checked_body(b"Q\0\0\0\x06x", b"Q", "Query").is_err());
        assert!(checked_body(b"Q\0\0\0\x04x", b"Q", "Query").is_err());
        assert!(checked_body(b"Q\0\0\0", b"Q", "Query").is_err());
        assert!(checked_body(b"", b"Q", "Query").is_err());
        assert!(checked_body(b"Q\xff\xff\xff\xff", b"Q", "Query").is_err());
    }

    #[test]
    fn cstr_is_strict() {
        let mut b: &[u8] = b"ab\0cd";
        assert_eq!(take_cstr(&mut b).unwrap(), "ab");
        assert_eq!(b, b"cd");
        assert!(take_cstr(&mut b).is_err(), "missing NUL");
        let mut b: &[u8] = b"\xe9\0";
        assert!(take_cstr(&mut b).is_err(), "not UTF-8");
    }
}
