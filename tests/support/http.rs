//! A minimal HTTP/1.1 client for the admin API: one request a connection (`Connection: close`),
//! over plain TCP or any stream (the HTTPS tests pass a TLS stream to [`http_on`]), the whole
//! response read until the server closes it.

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The admin API's route for forget requests.
pub const REMOVE_PII: &str = "/v1/customers/remove-pii";

/// A response: status, lower-cased head, body (de-chunked).
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The value of header `name` (lower-cased, as the whole head).
    pub fn header(&self, name: &str) -> Option<String> {
        let name = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find(|l| l.starts_with(&name))
            .map(|l| l[name.len()..].trim().to_string())
    }
}

/// The head of a request with a body of `body_len` bytes.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body_len: usize) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {body_len}\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Reads a whole response (the server closes the connection). A read error ends the response
/// where it stands: a server that refuses a request before its body may reset the connection.
pub async fn read_resp<S: AsyncRead + Unpin>(s: &mut S) -> Resp {
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp).await;
    parse_resp(&resp)
}

pub fn parse_resp(resp: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(resp).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp { status, head, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One request over `s` (plain TCP, or TLS for the HTTPS tests).
pub async fn http_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    s.write_all(request(method, path, headers, body.len()).as_bytes())
        .await
        .expect("write request");
    s.write_all(body).await.expect("write body");
    s.flush().await.expect("flush");
    read_resp(&mut s).await
}

/// One request over a new TCP connection to `addr`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin API");
    http_on(s, method, path, headers, body).await
}

/// The `Authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// GET `path` with `token`.
pub async fn get(addr: SocketAddr, token: &str, path: &str) -> Resp {
    let a = bearer(token);
    http(addr, "GET", path, &[("Authorization", a.as_str())], b"").await
}

/// POST `path` with `token` and no body (nor content type).
pub async fn post(addr: SocketAddr, token: &str, path: &str) -> Resp {
    let a = bearer(token);
    http(addr, "POST", path, &[("Authorization", a.as_str())], b"").await
}

/// POST `body` of `content_type` to `path` with `token`.
pub async fn post_as(
    addr: SocketAddr,
    token: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Resp {
    let a = bearer(token);
    http(
        addr,
        "POST",
        path,
        &[
            ("Authorization", a.as_str()),
            ("Content-Type", content_type),
        ],
        body.as_bytes(),
    )
    .await
}

/// POST `body` as JSON to `path` with `token`.
pub async fn post_json(addr: SocketAddr, token: &str, path: &str, body: &str) -> Resp {
    post_as(addr, token, path, "application/json", body).await
}

/// Polls job `id` until it ends (done, failed or blocked); its status.
pub async fn wait_job(addr: SocketAddr, token: &str, id: i64) -> serde_json::Value {
    loop {
        let r = get(addr, token, &format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        if matches!(v["state"].as_str(), Some("done" | "failed" | "blocked")) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// GET `path` without a token: (status, content type, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let r = http(addr, "GET", path, &[], b"").await;
    let ctype = r.header("content-type").unwrap_or_default();
    (r.status, ctype, r.body)
}
