//! A tiny raw PostgreSQL wire-protocol client for the adversarial suites: every byte the
//! server (or the proxy) sends is kept, so an oracle can search all of it (rows, errors,
//! notices, notifications, COPY data, parameter statuses). Only `trust` logins are supported.

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
    /// Error/notice fields ('E'/'N'), as (field type, value).
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

    /// DataRow cells as text (lossy), NULL as None.
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

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'P', &b)
}

/// Bind with no parameters; all results in text format.
pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    frame(b'B', &b)
}

pub fn describe_portal(portal: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    cstr(&mut b, portal);
    frame(b'D', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

/// FunctionCall ('F') with text-format arguments and a text result.
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
    frame(b'F', &b)
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

/// Any raw frame (for malformed-message games).
pub fn raw_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    frame(tag, body)
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
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        cstr(&mut body, "user");
        cstr(&mut body, user);
        cstr(&mut body, "database");
        cstr(&mut body, db);
        if !extra.iter().any(|(k, _)| *k == "client_encoding") {
            cstr(&mut body, "client_encoding");
            cstr(&mut body, "UTF8");
        }
        for (k, v) in extra {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        pkt.extend(body);
        w.send(&pkt).await;
        let msgs = w.until_ready(1).await;
        if msgs.iter().any(|m| m.tag == b'E') || !msgs.iter().any(|m| m.tag == b'Z') {
            let err = msgs
                .iter()
                .find(|m| m.tag == b'E')
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

    /// Reads one message; None on EOF, error or a long silence.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = 1 + len.max(4) as usize;
                if self.buf.len() >= total {
                    let m = Msg {
                        tag: self.buf[0],
                        body: self.buf[5..total].to_vec(),
                    };
                    self.buf.drain(..total);
                    return Some(m);
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
                    if m.tag == b'Z' {
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
    msgs.iter().find(|m| m.tag == b'E').map(|m| {
        (
            m.field(b'C').unwrap_or_default(),
            m.field(b'M').unwrap_or_default(),
        )
    })
}
