//! A tiny raw PostgreSQL wire-protocol client for the adversarial suites: every byte the
//! server (or the proxy) sends is kept, so an oracle can search all of it (rows, errors,
//! notices, notifications, COPY data, parameter statuses). Only `trust` logins are supported.
//!
//! Written on the `postgres-protocol` crate (rust-postgres' codec), not on pgredact's own
//! `wire` module, so that a bug in the proxy's codec cannot hide in the test's: frontend messages
//! are encoded by `postgres_protocol::message::frontend`, backend messages framed by
//! `postgres_protocol::message::backend::Header`. Two things the crate has no encoder for are
//! framed here: `FunctionCall`, and `raw_frame` (any tag and body, for malformed-message games).
//! Backend bodies stay raw bytes ([`Msg`]), decoded only lossily ([`Msg::fields`],
//! [`Msg::cells`]): the oracles search every byte, whatever arrives.

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use postgres_protocol::IsNull;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: its type byte and body (without the length).
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// Error/notice fields ('E'/'N'), as (field type, value), read lossily up to the first
    /// malformed field. (The crate's typed `ErrorFields` stops with an error at a malformed
    /// field, and iterating it takes the `fallible-iterator` crate as one more dependency.)
    pub fn fields(&self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut b = &self.body[..];
        while let Some((&t, rest)) = b.split_first() {
            if t == 0 {
                break;
            }
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            out.push((t, String::from_utf8_lossy(&rest[..end]).into_owned()));
            b = rest.get(end + 1..).unwrap_or(&[]);
        }
        out
    }

    pub fn field(&self, t: u8) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(f, _)| *f == t)
            .map(|x| x.1)
    }

    /// DataRow cells as text (lossy, up to the first malformed cell), NULL as None.
    pub fn cells(&self) -> Vec<Option<String>> {
        let b = &self.body;
        if b.len() < 2 {
            return vec![];
        }
        let n = i16::from_be_bytes([b[0], b[1]]).max(0) as usize;
        let mut i = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if i + 4 > b.len() {
                break;
            }
            let len = i32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            i += 4;
            if len < 0 {
                out.push(None);
            } else {
                let end = (i + len as usize).min(b.len());
                out.push(Some(String::from_utf8_lossy(&b[i..end]).into_owned()));
                i = end;
            }
        }
        out
    }
}

pub struct Wire {
    pub s: TcpStream,
    buf: Vec<u8>,
    pub closed: bool,
}

/// One message encoded by `f` (a `postgres_protocol::message::frontend` function). They fail
/// only on a string with a NUL, which these helpers cannot send: `raw_frame` can.
fn encode(what: &str, f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    if let Err(e) = f(&mut buf) {
        panic!("wire::{what}: {e} (a string with a NUL: build the message with raw_frame)");
    }
    buf.to_vec()
}

pub fn query(sql: &str) -> Vec<u8> {
    encode("query", |buf| frontend::query(sql, buf))
}

/// Parse with no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    encode("parse", |buf| {
        frontend::parse(name, sql, std::iter::empty(), buf)
    })
}

/// Bind with no parameters; all results in text format.
pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    encode("bind", |buf| {
        let no_values = std::iter::empty::<()>();
        frontend::bind(
            portal,
            stmt,
            std::iter::empty(),
            no_values,
            |(), _| Ok(IsNull::No),
            std::iter::empty(),
            buf,
        )
        .map_err(|e| match e {
            frontend::BindError::Serialization(e) => e,
            frontend::BindError::Conversion(e) => std::io::Error::other(e),
        })
    })
}

pub fn describe_portal(portal: &str) -> Vec<u8> {
    encode("describe_portal", |buf| {
        frontend::describe(b'P', portal, buf)
    })
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    encode("execute", |buf| frontend::execute(portal, max_rows, buf))
}

pub fn sync() -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::sync(&mut buf);
    buf.to_vec()
}

/// FunctionCall ('F') with text-format arguments and a text result (postgres-protocol has no
/// encoder for it: the body is built here).
pub fn function_call(oid: u32, args: &[Option<&str>]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&oid.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(args.len() as i16).to_be_bytes());
    for a in args {
        match a {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    raw_frame(b'F', &b)
}

/// Parse/Bind/Describe/Execute/Sync of one statement (unnamed).
pub fn extended(sql: &str) -> Vec<u8> {
    let mut v = parse("", sql);
    v.extend(bind("", ""));
    v.extend(describe_portal(""));
    v.extend(execute("", 0));
    v.extend(sync());
    v
}

/// Any raw frame: `tag`, the length, `body` as given (for malformed-message games; postgres-protocol
/// encodes only well-formed messages).
pub fn raw_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

const READ_WAIT: Duration = Duration::from_secs(60);

impl Wire {
    /// Connects and logs in (trust only). Returns the client and every startup message.
    pub async fn connect(
        port: u16,
        user: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> Result<(Wire, Vec<Msg>), String> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut w = Wire {
            s,
            buf: Vec::new(),
            closed: false,
        };
        let mut params = vec![("user", user), ("database", db)];
        if !extra.iter().any(|(k, _)| *k == "client_encoding") {
            params.push(("client_encoding", "UTF8"));
        }
        params.extend(extra.iter().copied());
        let mut pkt = BytesMut::new();
        frontend::startup_message(params, &mut pkt).map_err(|e| format!("startup message: {e}"))?;
        w.send(&pkt).await;
        let msgs = w.until_ready(1).await;
        let is_error = |m: &&Msg| m.tag == backend::ERROR_RESPONSE_TAG;
        if msgs.iter().any(|m| is_error(&m))
            || !msgs.iter().any(|m| m.tag == backend::READY_FOR_QUERY_TAG)
        {
            let err = msgs
                .iter()
                .find(is_error)
                .map(|m| format!("{:?}", m.fields()))
                .unwrap_or_else(|| "no ReadyForQuery".into());
            return Err(err);
        }
        Ok((w, msgs))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        if self.s.write_all(bytes).await.is_err() {
            self.closed = true;
        }
        let _ = self.s.flush().await;
    }

    /// Reads one message; None on EOF, error or a long silence. Bytes that cannot be framed (a
    /// length below 4, or a message cut short) come back as one last `?` message: everything
    /// received stays visible.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            match backend::Header::parse(&self.buf) {
                Ok(Some(header)) => {
                    // The length counts itself, not the tag; `Header::parse` checked it is >= 4.
                    let total = 1 + header.len() as usize;
                    if self.buf.len() >= total {
                        let m = Msg {
                            tag: header.tag(),
                            body: self.buf[5..total].to_vec(),
                        };
                        self.buf.drain(..total);
                        return Some(m);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    // No frame boundary can be trusted after this: the rest is one raw message,
                    // and this client reads no further.
                    self.closed = true;
                    return Some(Msg {
                        tag: b'?',
                        body: std::mem::take(&mut self.buf),
                    });
                }
            }
            if self.closed {
                return None;
            }
            let mut tmp = [0u8; 16384];
            match tokio::time::timeout(READ_WAIT, self.s.read(&mut tmp)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                _ => {
                    self.closed = true;
                    // Leftover partial bytes are still "received": keep them visible.
                    if !self.buf.is_empty() {
                        let m = Msg {
                            tag: b'?',
                            body: std::mem::take(&mut self.buf),
                        };
                        return Some(m);
                    }
                    return None;
                }
            }
        }
    }

    /// Reads until `n` ReadyForQuery messages (or the connection ends).
    pub async fn until_ready(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            match self.next().await {
                Some(m) => {
                    if m.tag == backend::READY_FOR_QUERY_TAG {
                        seen += 1;
                    }
                    out.push(m);
                }
                None => break,
            }
        }
        out
    }

    /// Sends `bytes` and collects the answer up to `n` ReadyForQuery.
    pub async fn roundtrip(&mut self, bytes: &[u8], n: usize) -> Vec<Msg> {
        self.send(bytes).await;
        self.until_ready(n).await
    }
}

/// Every byte of the messages, as lossy text (for canary search).
pub fn visible(msgs: &[Msg]) -> String {
    let mut s = String::new();
    for m in msgs {
        s.push_str(&String::from_utf8_lossy(&m.body));
        s.push('\n');
    }
    s
}

/// The first error of an answer: (SQLSTATE, message).
pub fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    msgs.iter()
        .find(|m| m.tag == backend::ERROR_RESPONSE_TAG)
        .map(|m| {
            (
                m.field(b'C').unwrap_or_default(),
                m.field(b'M').unwrap_or_default(),
            )
        })
}
