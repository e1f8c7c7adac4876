//! Messages from the client that pgredact decodes or builds.

use super::{begin, checked_body, finish, put_cstr, take_cstr, FrameError};
use bytes::{Buf, BufMut, BytesMut};

/// Query: exactly one string, nothing after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sql: String,
}

impl Query {
    pub fn decode(frame: &[u8]) -> Result<Query, FrameError> {
        let mut b = checked_body(frame, b"Q", "Query")?;
        let sql = take_cstr(&mut b)?;
        if !b.is_empty() {
            return Err(FrameError::Protocol(
                "trailing bytes in Query message".into(),
            ));
        }
        Ok(Query { sql })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        Query::put(out, &self.sql)
    }

    /// Encodes a Query of `sql` (without making a `Query` of it).
    pub fn put(out: &mut BytesMut, sql: &str) {
        let start = begin(out, b'Q');
        put_cstr(out, sql);
        finish(out, start);
    }
}

/// Parse: statement name, text, parameter type OIDs; nothing after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: String,
    pub query: String,
    pub param_types: Vec<u32>,
}

impl Parse {
    pub fn decode(frame: &[u8]) -> Result<Parse, FrameError> {
        let mut b = checked_body(frame, b"P", "Parse")?;
        let name = take_cstr(&mut b)?;
        let query = take_cstr(&mut b)?;
        if b.len() < 2 {
            return Err(FrameError::Protocol("Parse message too short".into()));
        }
        let n = b.get_i16();
        if n < 0 || b.len() != n as usize * 4 {
            return Err(FrameError::Protocol(
                "bad parameter count in Parse message".into(),
            ));
        }
        let param_types = (0..n).map(|_| b.get_u32()).collect();
        Ok(Parse {
            name,
            query,
            param_types,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'P');
        put_cstr(out, &self.name);
        put_cstr(out, &self.query);
        out.put_i16(self.param_types.len() as i16);
        for t in &self.param_types {
            out.put_u32(*t);
        }
        finish(out, start);
    }
}

/// Bind: pgredact reads the portal and statement names; the rest (formats, parameters, result
/// formats) is PostgreSQL's to check and stays as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: String,
    pub statement: String,
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn decode(frame: &'a [u8]) -> Result<Bind<'a>, FrameError> {
        let mut b = checked_body(frame, b"B", "Bind")?;
        let portal = take_cstr(&mut b)?;
        let statement = take_cstr(&mut b)?;
        Ok(Bind {
            portal,
            statement,
            rest: b,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'B');
        put_cstr(out, &self.portal);
        put_cstr(out, &self.statement);
        out.put_slice(self.rest);
        finish(out, start);
    }
}

/// Close: pgredact reads a statement's name (to forget the statement); anything else is
/// PostgreSQL's to check and stays as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close<'a> {
    /// 'S': a prepared statement; `rest`: whatever follows its name (nothing, when well formed).
    Statement { name: String, rest: &'a [u8] },
    /// A portal ('P'), or a kind PostgreSQL refuses: the body, not read.
    Other(&'a [u8]),
}

impl<'a> Close<'a> {
    pub fn decode(frame: &'a [u8]) -> Result<Close<'a>, FrameError> {
        let b = checked_body(frame, b"C", "Close")?;
        match b.split_first() {
            Some((b'S', mut rest)) => {
                let name = take_cstr(&mut rest)?;
                Ok(Close::Statement { name, rest })
            }
            _ => Ok(Close::Other(b)),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'C');
        match self {
            Close::Statement { name, rest } => {
                out.put_u8(b'S');
                put_cstr(out, name);
                out.put_slice(rest);
            }
            Close::Other(body) => out.put_slice(body),
        }
        finish(out, start);
    }
}

/// Terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminate;

impl Terminate {
    /// The whole message.
    pub const BYTES: [u8; 5] = [b'X', 0, 0, 0, 4];

    pub fn decode(frame: &[u8]) -> Result<Terminate, FrameError> {
        match checked_body(frame, b"X", "Terminate")? {
            [] => Ok(Terminate),
            _ => Err(FrameError::Protocol("malformed Terminate message".into())),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&Terminate::BYTES);
    }
}

/// SASLInitialResponse ('p' during SASL): mechanism and initial data (-1, "none", reads as
/// empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: String,
    pub data: Vec<u8>,
}

impl SaslInitialResponse {
    pub fn decode(frame: &[u8]) -> Result<SaslInitialResponse, FrameError> {
        let bad = || FrameError::Protocol("malformed SASLInitialResponse".into());
        if frame.first() != Some(&b'p') {
            return Err(FrameError::Protocol("expected a SASL response".into()));
        }
        let mut b = checked_body(frame, b"p", "SASLInitialResponse")?;
        let mechanism = take_cstr(&mut b)?;
        let (len, data) = b.split_first_chunk::<4>().ok_or_else(bad)?;
        match i32::from_be_bytes(*len) {
            -1 if data.is_empty() => Ok(SaslInitialResponse {
                mechanism,
                data: Vec::new(),
            }),
            n if n >= 0 && n as usize == data.len() => Ok(SaslInitialResponse {
                mechanism,
                data: data.to_vec(),
            }),
            _ => Err(bad()),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'p');
        put_cstr(out, &self.mechanism);
        out.put_i32(self.data.len() as i32);
        out.put_slice(&self.data);
        finish(out, start);
    }
}

/// SASLResponse ('p' after the first step of SASL): the mechanism's data, all of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslResponse<'a> {
    pub data: &'a [u8],
}

impl<'a> SaslResponse<'a> {
    pub fn decode(frame: &'a [u8]) -> Result<SaslResponse<'a>, FrameError> {
        Ok(SaslResponse {
            data: checked_body(frame, b"p", "SASLResponse")?,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, b'p');
        out.put_slice(self.data);
        finish(out, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::test_util::{err, frame};

    #[test]
    fn query_round_trip() {
        for sql in ["SELECT 1", "", "SELECT 'é'"] {
            let mut out = BytesMut::new();
            Query { sql: sql.into() }.encode(&mut out);
            assert_eq!(&out[..], &frame(b'Q', format!("{sql}\0").as_bytes())[..]);
            assert_eq!(Query::decode(&out).unwrap().sql, sql);
            let mut put = BytesMut::new();
            Query::put(&mut put, sql);
            assert_eq!(put, out);
        }
    }

    #[test]
    fn malformed_query_is_refused_not_overread() {
        // Missing its NUL (followed by another message in the stream: never swallowed).
        assert_eq!(
            err(Query::decode(&frame(b'Q', b"abc"))),
            "protocol error: missing string terminator"
        );
        let mut two = frame(b'Q', b"abc");
        two.extend_from_slice(&frame(b'Q', b"x\0"));
        assert!(Query::decode(&two).is_err(), "the frame is only the first");
        assert_eq!(
            err(Query::decode(&frame(b'Q', b"x\0!"))),
            "protocol error: trailing bytes in Query message"
        );
        assert_eq!(
            err(Query::decode(&frame(b'Q', b"x\0y\0"))),
            "protocol error: trailing bytes in Query message"
        );
        assert_eq!(
            err(Query::decode(&frame(b'Q', b"\xc3\0"))),
            "protocol error: string is not valid UTF-8"
        );
        assert!(Query::decode(&frame(b'P', b"x\0")).is_err(), "not a Query");
    }

    #[test]
    fn parse_round_trip() {
        for p in [
            Parse {
                name: "s1".into(),
                query: "SELECT $1".into(),
                param_types: vec![23, u32::MAX],
            },
            Parse {
                name: String::new(),
                query: String::new(),
                param_types: Vec::new(),
            },
        ] {
            let mut out = BytesMut::new();
            p.encode(&mut out);
            assert_eq!(Parse::decode(&out).unwrap(), p);
        }
    }

    #[test]
    fn malformed_parse_is_refused() {
        let cases: [(&[u8], &str); 7] = [
            (b"s1\0SELECT 1", "missing string terminator"),
            (b"s1", "missing string terminator"),
            (b"\xff\0SELECT 1\0\0\0", "string is not valid UTF-8"),
            (b"s1\0SELECT 1\0\0", "Parse message too short"),
            (
                b"s1\0SELECT 1\0\0\x01",
                "bad parameter count in Parse message",
            ),
            (
                b"s1\0SELECT 1\0\xff\xff",
                "bad parameter count in Parse message",
            ),
            (
                b"s1\0SELECT 1\0\0\0\0\0\0\x17",
                "bad parameter count in Parse message",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                err(Parse::decode(&frame(b'P', body))),
                format!("protocol error: {want}"),
                "{body:?}"
            );
        }
    }

    #[test]
    fn bind_round_trip_keeps_the_unread_rest() {
        let b = Bind {
            portal: "p".into(),
            statement: "s1".into(),
            rest: b"\0\0\0\x01\0\0\0\x011\0\0",
        };
        let mut out = BytesMut::new();
        b.encode(&mut out);
        assert_eq!(Bind::decode(&out).unwrap(), b);
        // What follows the names is not read: a short rest is PostgreSQL's to refuse.
        let short = frame(b'B', b"\0s1\0\x01");
        assert_eq!(Bind::decode(&short).unwrap().statement, "s1");
        assert_eq!(
            err(Bind::decode(&frame(b'B', b"\0s1"))),
            "protocol error: missing string terminator"
        );
        assert_eq!(
            err(Bind::decode(&frame(b'B', b"\0\xe9\0"))),
            "protocol error: string is not valid UTF-8"
        );
    }

    #[test]
    fn close_round_trip() {
        for c in [
            Close::Statement {
                name: "s1".into(),
                rest: b"",
            },
            Close::Other(b"Pportal\0"),
            Close::Other(b""),
        ] {
            let mut out = BytesMut::new();
            c.encode(&mut out);
            assert_eq!(Close::decode(&out).unwrap(), c);
        }
        // A statement's name must be read; a portal's is not.
        assert!(Close::decode(&frame(b'C', b"Ss1")).is_err());
        assert!(Close::decode(&frame(b'C', b"S\xe9\0")).is_err());
        assert_eq!(
            Close::decode(&frame(b'C', b"P\xe9")).unwrap(),
            Close::Other(b"P\xe9")
        );
    }

    #[test]
    fn terminate_round_trip() {
        let mut out = BytesMut::new();
        Terminate.encode(&mut out);
        assert_eq!(&out[..], &frame(b'X', b"")[..]);
        assert_eq!(Terminate::decode(&out).unwrap(), Terminate);
        assert!(Terminate::decode(&frame(b'X', b"x")).is_err());
    }

    #[test]
    fn sasl_round_trips() {
        for data in [&b"n,,n=,r=abc"[..], b""] {
            let p = SaslInitialResponse {
                mechanism: "SCRAM-SHA-256".into(),
                data: data.to_vec(),
            };
            let mut out = BytesMut::new();
            p.encode(&mut out);
            assert_eq!(SaslInitialResponse::decode(&out).unwrap(), p);
        }
        let r = SaslResponse { data: b"c=biws" };
        let mut out = BytesMut::new();
        r.encode(&mut out);
        assert_eq!(SaslResponse::decode(&out).unwrap(), r);
    }

    #[test]
    fn malformed_sasl_initial_response_is_refused() {
        // No data (-1) reads as empty; -1 with data, or a length that is not the data's, is
        // refused.
        let none = frame(b'p', b"SCRAM-SHA-256\0\xff\xff\xff\xff");
        assert!(SaslInitialResponse::decode(&none).unwrap().data.is_empty());
        for body in [
            &b"SCRAM-SHA-256\0\xff\xff\xff\xffx"[..],
            b"SCRAM-SHA-256\0\0\0\0\x02x",
            b"SCRAM-SHA-256\0\0\0\0\x01xy",
            b"SCRAM-SHA-256\0\0\0",
        ] {
            assert_eq!(
                err(SaslInitialResponse::decode(&frame(b'p', body))),
                "protocol error: malformed SASLInitialResponse"
            );
        }
        assert_eq!(
            err(SaslInitialResponse::decode(&frame(b'p', b"SCRAM"))),
            "protocol error: missing string terminator"
        );
        assert_eq!(
            err(SaslInitialResponse::decode(&frame(b'Q', b"x\0"))),
            "protocol error: expected a SASL response"
        );
    }
}
