//! What every `/v1` request passes before its handler runs (and before its body is read):
//!
//! 1. the concurrency limit (`[admin] max_concurrent_requests`): one request more is answered
//!    503 with `Retry-After: 1`;
//! 2. the bearer token, compared in constant time: 401 without reading the body (a failed
//!    authentication also spends a token of a bucket shared by every failed authentication, so
//!    guessing tokens is slowed down to the configured rate);
//! 3. the request rate per token (`[admin] requests_per_minute`, `request_burst`): a token
//!    bucket; an empty bucket is answered 429 with `Retry-After` (seconds until the next token).

use super::{AdminState, ApiError};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// The limits of one admin server.
pub(super) struct Limits {
    /// `None`: no concurrency limit.
    concurrency: Option<Arc<Semaphore>>,
    /// Tokens a second (0: no rate limit) and bucket size.
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The bucket failed authentications share.
const UNAUTHENTICATED: &str = "<unauthenticated>";

impl Limits {
    pub(super) fn new(max_concurrent: usize, per_minute: u32, burst: u32) -> Limits {
        Limits {
            concurrency: (max_concurrent > 0).then(|| Arc::new(Semaphore::new(max_concurrent))),
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; `Err(seconds)` to wait when it is empty.
    pub(super) fn take(&self, key: &str) -> Result<(), u64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = crate::sync::lock(&self.buckets);
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / self.per_second).ceil();
            Err((wait as u64).max(1))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ok when `headers` carry the admin token.
pub(super) fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), state.token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid bearer token".to_string(),
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send `Authorization: Bearer <token>`".to_string(),
        )),
    }
}

/// The middleware of every `/v1` route (see the module documentation).
pub(super) async fn guard(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let limits = state.limits.clone();
    let _permit = match &limits.concurrency {
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in progress: retry later".to_string(),
                )
                .retry_after(1)
                .into_response();
            }
        },
        None => None,
    };
    if let Err(e) = authorize(&state, req.headers()) {
        if let Err(wait) = limits.take(UNAUTHENTICATED) {
            return too_many(wait).into_response();
        }
        return e.into_response();
    }
    // One valid token today; the bucket is keyed by the token's hash so that more tokens would
    // each get their own.
    let key = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(state.token.as_bytes()))
    };
    if let Err(wait) = limits.take(&key) {
        return too_many(wait).into_response();
    }
    next.run(req).await
}

fn too_many(wait: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("request rate limit reached: retry in {wait} s"),
    )
    .retry_after(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_the_burst_then_refuses_with_the_wait() {
        let l = Limits::new(0, 60, 3);
        for _ in 0..3 {
            assert_eq!(l.take("a"), Ok(()));
        }
        assert_eq!(l.take("a"), Err(1));
        // Another key has its own bucket.
        assert_eq!(l.take("b"), Ok(()));
        let slow = Limits::new(0, 1, 1);
        assert_eq!(slow.take("a"), Ok(()));
        let wait = slow.take("a").unwrap_err();
        assert!((59..=60).contains(&wait), "{wait}");
        let unlimited = Limits::new(0, 0, 1);
        for _ in 0..1000 {
            assert_eq!(unlimited.take("a"), Ok(()));
        }
    }
}
