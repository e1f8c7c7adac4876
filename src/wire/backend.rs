//! Messages from PostgreSQL that pgredact decodes or builds.

use super::{begin, checked_body, finish, put_cstr, take_cstr, FrameError};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// An ErrorResponse ('E') or NoticeResponse ('N') as a list of (field code, value).
///
/// Decoding is lossy on purpose: PostgreSQL writes errors in the server's encoding before
/// `client_encoding` is settled, and a byte that is not UTF-8 must not end the session. Bytes
/// after the terminating field code are not read (the relay re-encodes what it sends, so they
/// never reach the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields(pub Vec<(u8, String)>);

impl ErrorFields {
    pub fn new(severity: &str, code: &str, message: &str) -> Self {
        ErrorFields(vec![
            (b'S', severity.into()),
            (b'V', severity.into()),
            (b'C', code.into()),
            (b'M', message.into()),
        ])
    }

    pub fn with(mut self, field: u8, v: Option<&str>) -> Self {
        if let Some(v) = v {
            self.0.push((field, v.into()));
        }
        self
    }

    pub fn get(&self, field: u8) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    }

    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let mut b = checked_body(frame, b"EN", "ErrorResponse")?;
        let mut v = Vec::new();
        loop {
            if b.is_empty() {
                return Err(FrameError::Protocol("unterminated error fields".into()));
            }
            let code = b[0];
            b = &b[1..];
            if code == 0 {
                break;
            }
            // Lossy: server text may be in a non-UTF-8 encoding.
            let pos = b
                .iter()
                .position(|c| *c == 0)
                .ok_or_else(|| FrameError::Protocol("missing string terminator".into()))?;
            v.push((code, String::from_utf8_lossy(&b[..pos]).into_owned()));
            b = &b[pos + 1..];
        }
        Ok(ErrorFields(v))
    }

    /// Encodes as an ErrorResponse (`tag` b'E') or a NoticeResponse (b'N').
    pub fn encode(&self, tag: u8, out: &mut BytesMut) {
        let start = begin(out, tag);
        for (f, s) in &self.0 {
            out.put_u8(*f);
            put_cstr(out, s);
        }
        out.put_u8(0);
        finish(out, start);
    }
}

/// Writes a FATAL error to a client during startup (best effort).
pub async fn send_fatal<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: &str,
    msg: &str,
    hint: Option<&str>,
) {
    let mut out = BytesMut::new();
    ErrorFields::new("FATAL", code, msg)
        .with(b'H', hint)
        .encode(b'E', &mut out);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}

/// ParameterStatus: a setting's name and value, nothing after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterStatus {
    pub name: String,
    pub value: String,
}

impl ParameterStatus {
    pub fn decode(frame: &[u8]) -> Result<ParameterStatus, FrameError> {
        let mut b = checked_body(frame, b"S", "ParameterStatus")?;
        let name = take_cstr(&mut b)?;
        let value = take_cstr(&mut b)?;
        if !b.is_empty() {
            return Err(FrameError::Protocol(
                "trailing bytes in ParameterStatus message".into(),
            ));
        }
        Ok(ParameterStatus { name, value })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'S');
        put_cstr(out, &self.name);
        put_cstr(out, &self.value);
        finish(out, start);
    }
}

/// ReadyForQuery: the transaction status (`I`, `T` or `E`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyForQuery {
    pub status: u8,
}

impl ReadyForQuery {
    pub fn decode(frame: &[u8]) -> Result<ReadyForQuery, FrameError> {
        match checked_body(frame, b"Z", "ReadyForQuery")? {
            [status] => Ok(ReadyForQuery { status: *status }),
            _ => Err(FrameError::Protocol(
                "malformed ReadyForQuery message".into(),
            )),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'Z');
        out.put_u8(self.status);
        finish(out, start);
    }
}

/// BackendKeyData: the process id and secret key a CancelRequest names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData {
    pub pid: i32,
    pub key: i32,
}

impl BackendKeyData {
    pub fn decode(frame: &[u8]) -> Result<BackendKeyData, FrameError> {
        match checked_body(frame, b"K", "BackendKeyData")? {
            [a, b, c, d, e, f, g, h] => Ok(BackendKeyData {
                pid: i32::from_be_bytes([*a, *b, *c, *d]),
                key: i32::from_be_bytes([*e, *f, *g, *h]),
            }),
            _ => Err(FrameError::Protocol("bad BackendKeyData".into())),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'K');
        out.put_i32(self.pid);
        out.put_i32(self.key);
        finish(out, start);
    }
}

/// An authentication request ('R'): its code (0 ok, 3 cleartext, 5 MD5, 10 SASL, 11 SASL
/// continue, 12 SASL final...) and the data after it, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication<'a> {
    pub code: i32,
    pub data: &'a [u8],
}

impl<'a> Authentication<'a> {
    pub fn decode(frame: &'a [u8]) -> Result<Authentication<'a>, FrameError> {
        let (code, data) = checked_body(frame, b"R", "authentication")?
            .split_first_chunk::<4>()
            .ok_or_else(|| FrameError::Protocol("short authentication message".into()))?;
        Ok(Authentication {
            code: i32::from_be_bytes(*code),
            data,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'R');
        out.put_i32(self.code);
        out.put_slice(self.data);
        finish(out, start);
    }
}

/// AuthenticationSASL (authentication code 10): the mechanisms offered. Bytes after the empty
/// name that ends the list are not read (PostgreSQL sends none; pgredact never re-sends a
/// decoded offer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationSasl {
    pub mechanisms: Vec<String>,
}

impl AuthenticationSasl {
    pub const CODE: i32 = 10;

    pub fn decode(frame: &[u8]) -> Result<AuthenticationSasl, FrameError> {
        let a = Authentication::decode(frame)?;
        if a.code != Self::CODE {
            return Err(FrameError::Protocol(
                "not an AuthenticationSASL message".into(),
            ));
        }
        let mut b = a.data;
        let mut mechanisms = Vec::new();
        loop {
            let m = take_cstr(&mut b)?;
            if m.is_empty() {
                return Ok(AuthenticationSasl { mechanisms });
            }
            mechanisms.push(m);
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'R');
        out.put_i32(Self::CODE);
        for m in &self.mechanisms {
            put_cstr(out, m);
        }
        out.put_u8(0);
        finish(out, start);
    }
}

/// DataRow: each column's value, None for NULL; nothing after the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRow<'a> {
    pub columns: Vec<Option<&'a [u8]>>,
}

impl<'a> DataRow<'a> {
    pub fn decode(frame: &'a [u8]) -> Result<DataRow<'a>, FrameError> {
        let bad = || FrameError::Protocol("malformed DataRow message".into());
        let b = checked_body(frame, b"D", "DataRow")?;
        let (n, mut b) = b.split_first_chunk::<2>().ok_or_else(bad)?;
        let n = i16::from_be_bytes(*n);
        // Each column takes 4 bytes at least: the count alone reserves nothing large.
        let mut columns = Vec::with_capacity((n.max(0) as usize).min(b.len() / 4));
        for _ in 0..n {
            let (len, rest) = b.split_first_chunk::<4>().ok_or_else(bad)?;
            match i32::from_be_bytes(*len) {
                -1 => {
                    columns.push(None);
                    b = rest;
                }
                len if len >= 0 && rest.len() >= len as usize => {
                    let (v, rest) = rest.split_at(len as usize);
                    columns.push(Some(v));
                    b = rest;
                }
                _ => return Err(bad()),
            }
        }
        if n < 0 || !b.is_empty() {
            return Err(bad());
        }
        Ok(DataRow { columns })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'D');
        out.put_i16(self.columns.len() as i16);
        for c in &self.columns {
            match c {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
        finish(out, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::test_util::{err, frame};

    #[test]
    fn error_round_trip() {
        let e = ErrorFields::new("ERROR", "42501", "no").with(b'H', Some("h"));
        for tag in [b'E', b'N'] {
            let mut out = BytesMut::new();
            e.encode(tag, &mut out);
            assert_eq!(ErrorFields::decode(&out).unwrap(), e);
        }
        let mut out = BytesMut::new();
        ErrorFields(Vec::new()).encode(b'E', &mut out);
        assert_eq!(&out[..], &frame(b'E', b"\0")[..]);
    }

    #[test]
    fn error_fields_are_read_lossily_and_malformed_ones_refused() {
        let e = ErrorFields::decode(&frame(b'E', b"Mcaf\xe9\0\0")).unwrap();
        assert_eq!(e.get(b'M'), Some("caf\u{fffd}"));
        // Bytes after the terminator are not read.
        let e = ErrorFields::decode(&frame(b'N', b"Mx\0\0junk")).unwrap();
        assert_eq!(e, ErrorFields(vec![(b'M', "x".into())]));
        assert_eq!(
            err(ErrorFields::decode(&frame(b'E', b"Mx\0"))),
            "protocol error: unterminated error fields"
        );
        assert_eq!(
            err(ErrorFields::decode(&frame(b'E', b""))),
            "protocol error: unterminated error fields"
        );
        assert_eq!(
            err(ErrorFields::decode(&frame(b'E', b"Mx"))),
            "protocol error: missing string terminator"
        );
        assert!(ErrorFields::decode(&frame(b'Z', b"\0")).is_err());
    }

    #[tokio::test]
    async fn fatal_is_an_error_response() {
        let mut out = Vec::new();
        send_fatal(&mut out, "08P01", "pgredact: no", Some("h")).await;
        let e = ErrorFields::decode(&out).unwrap();
        assert_eq!(out[0], b'E');
        assert_eq!(
            e,
            ErrorFields::new("FATAL", "08P01", "pgredact: no").with(b'H', Some("h"))
        );
    }

    #[test]
    fn parameter_status_round_trip_and_refusals() {
        let p = ParameterStatus {
            name: "client_encoding".into(),
            value: "UTF8".into(),
        };
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(ParameterStatus::decode(&out).unwrap(), p);
        for body in [
            &b"client_encoding\0UTF8"[..],
            b"client_encoding",
            b"client_encoding\0\xe9\0",
            b"client_encoding\0UTF8\0x",
        ] {
            assert!(
                ParameterStatus::decode(&frame(b'S', body)).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn ready_for_query_round_trip_and_refusals() {
        for status in [b'I', b'T', b'E'] {
            let mut out = BytesMut::new();
            ReadyForQuery { status }.encode(&mut out);
            assert_eq!(&out[..], &frame(b'Z', &[status])[..]);
            assert_eq!(ReadyForQuery::decode(&out).unwrap().status, status);
        }
        assert!(ReadyForQuery::decode(&frame(b'Z', b"")).is_err());
        assert!(ReadyForQuery::decode(&frame(b'Z', b"II")).is_err());
    }

    #[test]
    fn backend_key_data_round_trip_and_refusals() {
        let k = BackendKeyData {
            pid: 0x0102_0304,
            key: -2,
        };
        let mut out = BytesMut::new();
        k.encode(&mut out);
        assert_eq!(out.len(), 13);
        assert_eq!(BackendKeyData::decode(&out).unwrap(), k);
        assert_eq!(
            err(BackendKeyData::decode(&frame(b'K', &[0; 7]))),
            "protocol error: bad BackendKeyData"
        );
        assert!(BackendKeyData::decode(&frame(b'K', &[0; 9])).is_err());
    }

    #[test]
    fn authentication_round_trip_and_refusals() {
        for a in [
            Authentication { code: 0, data: b"" },
            Authentication {
                code: 12,
                data: b"v=abc",
            },
        ] {
            let mut out = BytesMut::new();
            a.encode(&mut out);
            assert_eq!(Authentication::decode(&out).unwrap(), a);
        }
        assert_eq!(
            err(Authentication::decode(&frame(b'R', b"\0\0\0"))),
            "protocol error: short authentication message"
        );
    }

    #[test]
    fn sasl_offer_round_trip_and_refusals() {
        let o = AuthenticationSasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
        };
        let mut out = BytesMut::new();
        o.encode(&mut out);
        assert_eq!(
            &out[..],
            &frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")[..]
        );
        assert_eq!(AuthenticationSasl::decode(&out).unwrap(), o);
        for body in [
            &b"\0\0\0\x0aSCRAM-SHA-256\0"[..],
            b"\0\0\0\x0aSCRAM-SHA-256",
            b"\0\0\0\x0a",
            b"\0\0\0\x0a\xe9\0\0",
            b"\0\0\0\x0bSCRAM-SHA-256\0\0",
        ] {
            assert!(
                AuthenticationSasl::decode(&frame(b'R', body)).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn data_row_round_trip_and_refusals() {
        for r in [
            DataRow {
                columns: vec![Some(b"public"), None, Some(b"")],
            },
            DataRow {
                columns: Vec::new(),
            },
        ] {
            let mut out = BytesMut::new();
            r.encode(&mut out);
            assert_eq!(DataRow::decode(&out).unwrap(), r);
        }
        for body in [
            &b""[..],
            b"\0",
            b"\xff\xff",
            b"\0\x01\0\0\0\x05abc",
            b"\0\x01\0\0\0\x01ab",
            b"\0\x01\xff\xff\xff\xfe",
            b"\0\x01\0\0",
            b"\0\0x",
        ] {
            assert!(DataRow::decode(&frame(b'D', body)).is_err(), "{body:?}");
        }
    }
}
