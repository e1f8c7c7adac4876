//! SCRAM-SHA-256 terminated at pgredact (RFC 5802, RFC 7677), with `tls-server-end-point`
//! channel binding (RFC 5929) on each leg.
//!
//! A relayed SCRAM exchange cannot survive TLS on both legs: the client binds to its TLS channel
//! with pgredact, which PostgreSQL never sees, and a client that is told no binding is offered
//! says so in its gs2 header ("y"), which a server on TLS rejects as a downgrade. The gs2 header
//! is inside the signed AuthMessage, so pgredact cannot rewrite it. So pgredact completes SCRAM
//! on each leg itself, the way pgbouncer's SCRAM pass-through and Neon's proxy do:
//!
//! - towards the client it is the SCRAM server, with the role's verifier
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, read through
//!   `pgredact_admin.auth_verifier`), offering `SCRAM-SHA-256-PLUS` bound to its own certificate
//!   when the client leg is TLS. The client's proof yields its ClientKey:
//!   `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked by
//!   `H(ClientKey) = StoredKey`;
//! - towards PostgreSQL it is the SCRAM client with that ClientKey. PostgreSQL reads the same
//!   verifier, so its salt and iteration count are the ones the client used, and
//!   `ClientProof' = ClientKey XOR HMAC(StoredKey, AuthMessage')`; PostgreSQL's signature is
//!   checked with ServerKey. It binds to the upstream TLS channel when PostgreSQL offers
//!   `-PLUS`.
//!
//! PostgreSQL stays the authority: the proof pgredact sends is derived only from the key the
//! client's proof yields. A wrong password gives a wrong key, PostgreSQL refuses it (and logs the
//! failure as for a direct login) and its error is relayed.
//!
//! Without a verifier pgredact may use, the exchange is relayed when PostgreSQL can accept the
//! client's answer (gs2 "n", or "y" towards a plaintext PostgreSQL). A role the function does not
//! return (a superuser, no SCRAM password, an unknown role) is offered what every role is offered,
//! so the offer does not tell roles apart; when the function is missing, PostgreSQL's offer goes
//! out without the `-PLUS` mechanisms pgredact cannot honour. An answer that cannot be relayed
//! gets, after a mock exchange, the error PostgreSQL gives for a wrong password.
//!
//! Nothing here logs a password, a verifier, a proof or a key; the types that hold them print
//! as `..`.

use super::shared::Shared;
use crate::tls::{ClientStream, ServerStream};
use crate::wire::backend::{send_fatal, Authentication, AuthenticationSasl};
use crate::wire::frontend::{SaslInitialResponse, SaslResponse};
use crate::wire::{FrameError, FrameReader};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel-binding type PostgreSQL supports.
const CB_TYPE: &str = "tls-server-end-point";
/// Random bytes in a nonce (PostgreSQL: 18, base64-encoded).
const NONCE_BYTES: usize = 18;
/// Iteration count of mock exchanges (PostgreSQL's default).
const MOCK_ITERATIONS: u32 = 4096;

/// AuthenticationSASLContinue, AuthenticationSASLFinal (AuthenticationSASL: its own type).
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

type Key = [u8; 32];

fn hmac(key: &[u8], msg: &[u8]) -> Key {
    // HMAC accepts keys of any length.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(msg);
    m.finalize().into_bytes().into()
}

fn sha256(b: &[u8]) -> Key {
    Sha256::digest(b).into()
}

fn xor(a: &Key, b: &Key) -> Key {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b) {
        *o ^= x;
    }
    out
}

/// Compares without an early exit (keys and signatures).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

fn key32(b: &[u8]) -> Option<Key> {
    b.try_into().ok()
}

/// A role's SCRAM-SHA-256 secret as `pg_authid.rolpassword` stores it. It suffices to
/// impersonate the server to the role and to recover the role's ClientKey from a proof: never
/// printed (its Debug is `..`), never logged.
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Key,
    server_key: Key,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts), or None.
    pub fn parse(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty())?;
        Some(Verifier {
            iterations,
            salt,
            stored_key: key32(&B64.decode(stored).ok()?)?,
            server_key: key32(&B64.decode(server).ok()?)?,
        })
    }

    /// A verifier no password matches, with a salt that stays the same for `user` in this
    /// process (so repeated attempts look like those of a real role).
    fn mock(user: &str) -> Verifier {
        static SECRET: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            use rand::RngCore;
            let mut k = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut k);
            k
        });
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        {
            use rand::RngCore;
            rand::thread_rng().fill_bytes(&mut stored_key);
            rand::thread_rng().fill_bytes(&mut server_key);
        }
        Verifier {
            iterations: MOCK_ITERATIONS,
            salt: hmac(secret, user.as_bytes())[..16].to_vec(),
            stored_key,
            server_key,
        }
    }
}

/// A failed exchange: what the client is told (FATAL). Never holds secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramError {
    pub code: &'static str,
    pub message: String,
}

fn malformed(what: &str) -> ScramError {
    ScramError {
        code: "08P01",
        message: format!("malformed SCRAM message ({what})"),
    }
}

fn violation(message: &str) -> ScramError {
    ScramError {
        code: "08P01",
        message: message.into(),
    }
}

/// `k=value` attributes of a SCRAM message, split at commas (values cannot hold commas).
fn attr<'a>(part: Option<&'a str>, key: char, what: &str) -> Result<&'a str, ScramError> {
    let p = part.ok_or_else(|| malformed(what))?;
    let mut c = p.chars();
    if c.next() != Some(key) || c.next() != Some('=') {
        return Err(malformed(what));
    }
    Ok(&p[2..])
}

fn printable_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// pgredact as the SCRAM server towards the client, after the client-first-message.
pub struct ServerExchange {
    /// The gs2 header as the client sent it (`n,,`, `y,,` or `p=tls-server-end-point,,`).
    gs2_header: String,
    /// The channel-binding data the client must send back (empty without binding).
    cbind_data: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// The ClientKey recovered from the client's proof, and whether it matches the verifier.
pub struct Recovered {
    pub client_key: Key,
    /// `H(ClientKey) = StoredKey`: the client knows the password.
    pub proven: bool,
    /// The server-final-message for the client (its signature is over the client's
    /// AuthMessage): sent only once PostgreSQL accepted the login.
    pub server_final: String,
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recovered {{ proven: {}, .. }}", self.proven)
    }
}

impl std::fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerExchange(..)")
    }
}

impl ServerExchange {
    /// Reads the client's SASLInitialResponse (mechanism and client-first-message).
    /// `end_point`: pgredact's `tls-server-end-point` data when the client leg is TLS and
    /// `-PLUS` was offered; None when only `SCRAM-SHA-256` was.
    pub fn start(
        mechanism: &str,
        client_first: &[u8],
        end_point: Option<&[u8]>,
        v: &Verifier,
    ) -> Result<ServerExchange, ScramError> {
        Self::start_with_nonce(mechanism, client_first, end_point, v, &nonce())
    }

    fn start_with_nonce(
        mechanism: &str,
        client_first: &[u8],
        end_point: Option<&[u8]>,
        v: &Verifier,
        server_nonce: &str,
    ) -> Result<ServerExchange, ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if end_point.is_some() => true,
            _ => {
                return Err(violation(
                    "client selected an invalid SASL authentication mechanism",
                ))
            }
        };
        let msg = std::str::from_utf8(client_first).map_err(|_| malformed("not UTF-8"))?;
        let (flag, rest) = msg.split_once(',').ok_or_else(|| malformed("gs2 header"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| malformed("gs2 header"))?;
        let cbind_data = match flag {
            "n" | "y" if plus => {
                return Err(violation(
                    "channel binding is required by SCRAM-SHA-256-PLUS, but the client did not use it",
                ))
            }
            // "y": the client could bind but thinks the server cannot; a server that offered
            // -PLUS must refuse (a downgrade).
            "y" if end_point.is_some() => {
                return Err(violation("SCRAM channel binding negotiation error: the client supports SCRAM channel binding but thinks the server does not, yet this server does support it"))
            }
            "n" | "y" => Vec::new(),
            f if f.starts_with("p=") => {
                if !plus {
                    return Err(violation("client selected SCRAM-SHA-256 without channel binding but sent channel-binding data"));
                }
                if &f[2..] != CB_TYPE {
                    return Err(violation("unsupported SCRAM channel-binding type"));
                }
                end_point.unwrap_or_default().to_vec()
            }
            _ => return Err(malformed("unexpected channel-binding flag")),
        };
        if !authzid.is_empty() {
            return Err(violation(
                "client uses authorization identity, but it is not supported",
            ));
        }
        if bare.starts_with("m=") {
            return Err(violation("client requires an unsupported SCRAM extension"));
        }
        let mut parts = bare.split(',');
        // The user name is the startup packet's (PostgreSQL ignores this one too).
        attr(parts.next(), 'n', "user name")?;
        let client_nonce = attr(parts.next(), 'r', "nonce")?;
        if !printable_nonce(client_nonce) || !printable_nonce(server_nonce) {
            return Err(malformed("nonce"));
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&v.salt), v.iterations);
        Ok(ServerExchange {
            gs2_header: msg[..msg.len() - bare.len()].to_string(),
            cbind_data,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        })
    }

    /// The server-first-message (AuthenticationSASLContinue).
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Reads the client-final-message: checks the channel binding and the nonce, and recovers
    /// the ClientKey from the proof.
    pub fn finish(&self, client_final: &[u8], v: &Verifier) -> Result<Recovered, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| malformed("not UTF-8"))?;
        let at = msg.rfind(",p=").ok_or_else(|| malformed("no proof"))?;
        let (without_proof, proof) = (&msg[..at], &msg[at + 3..]);
        let mut parts = without_proof.split(',');
        let cbind = attr(parts.next(), 'c', "channel binding")?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| malformed("channel binding"))?;
        let mut want = self.gs2_header.as_bytes().to_vec();
        want.extend_from_slice(&self.cbind_data);
        if !ct_eq(&cbind, &want) {
            return Err(violation("SCRAM channel binding check failed"));
        }
        if attr(parts.next(), 'r', "nonce")? != self.nonce {
            return Err(violation("SCRAM nonce mismatch"));
        }
        let proof = B64
            .decode(proof)
            .ok()
            .and_then(|p| key32(&p))
            .ok_or_else(|| malformed("proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_key = xor(&proof, &hmac(&v.stored_key, auth_message.as_bytes()));
        let proven = ct_eq(&sha256(&client_key), &v.stored_key);
        let server_final = format!(
            "v={}",
            B64.encode(hmac(&v.server_key, auth_message.as_bytes()))
        );
        Ok(Recovered {
            client_key,
            proven,
            server_final,
        })
    }
}

/// The channel binding pgredact uses towards PostgreSQL.
pub enum Binding {
    /// gs2 "n": no TLS on this leg (or no usable certificate hash).
    Unsupported,
    /// gs2 "y": pgredact could bind but PostgreSQL did not offer `-PLUS`.
    NotOffered,
    /// `SCRAM-SHA-256-PLUS` with the server certificate's `tls-server-end-point` data.
    EndPoint(Vec<u8>),
}

/// pgredact as the SCRAM client towards PostgreSQL, with a recovered ClientKey.
pub struct ClientExchange {
    gs2_header: &'static str,
    cbind_data: Vec<u8>,
    plus: bool,
    /// The user name of client-first-message-bare: empty, as libpq sends it (PostgreSQL uses
    /// the startup packet's).
    user: String,
    nonce: String,
    auth_message: String,
}

impl ClientExchange {
    pub fn new(binding: Binding) -> ClientExchange {
        Self::with_nonce(binding, nonce())
    }

    fn with_nonce(binding: Binding, nonce: String) -> ClientExchange {
        let (gs2_header, cbind_data, plus) = match binding {
            Binding::Unsupported => ("n,,", Vec::new(), false),
            Binding::NotOffered => ("y,,", Vec::new(), false),
            Binding::EndPoint(d) => ("p=tls-server-end-point,,", d, true),
        };
        ClientExchange {
            gs2_header,
            cbind_data,
            plus,
            user: String::new(),
            nonce,
            auth_message: String::new(),
        }
    }

    pub fn mechanism(&self) -> &'static str {
        if self.plus {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        }
    }

    /// Whether this exchange binds to the TLS channel (for logs).
    pub fn binding(&self) -> &'static str {
        match self.gs2_header {
            "n,," => "none (no TLS)",
            "y,," => "none (not offered)",
            _ => CB_TYPE,
        }
    }

    /// The client-first-message (SASLInitialResponse data).
    pub fn client_first(&self) -> String {
        format!("{}n={},r={}", self.gs2_header, self.user, self.nonce)
    }

    /// Answers PostgreSQL's server-first-message with the proof from `client_key`. Errors when
    /// the salt or iteration count is not the verifier's: the password changed since it was
    /// read.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        v: &Verifier,
        client_key: &Key,
    ) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(server_first).map_err(|_| malformed("not UTF-8"))?;
        let mut parts = msg.split(',');
        let nonce = attr(parts.next(), 'r', "server nonce")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(violation(
                "PostgreSQL's SCRAM nonce does not extend pgredact's",
            ));
        }
        let salt = B64
            .decode(attr(parts.next(), 's', "salt")?)
            .map_err(|_| malformed("salt"))?;
        let iterations: u32 = attr(parts.next(), 'i', "iteration count")?
            .parse()
            .map_err(|_| malformed("iteration count"))?;
        if salt != v.salt || iterations != v.iterations {
            return Err(ScramError {
                code: "28P01",
                message: "the role's password changed while it was logging in; try again".into(),
            });
        }
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cbind_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(&cbind));
        self.auth_message = format!("n={},r={},{msg},{without_proof}", self.user, self.nonce);
        let proof = xor(
            client_key,
            &hmac(&v.stored_key, self.auth_message.as_bytes()),
        );
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks PostgreSQL's server-final-message: its signature proves it holds the verifier.
    pub fn verify_server_final(&self, server_final: &[u8], v: &Verifier) -> Result<(), ScramError> {
        let fail = || {
            ScramError {
            code: "08006",
            message: "PostgreSQL's SCRAM signature did not verify: pgredact is not talking to the server that holds this role's password".into(),
        }
        };
        let msg = std::str::from_utf8(server_final).map_err(|_| fail())?;
        let sig = msg
            .strip_prefix("v=")
            .and_then(|s| B64.decode(s.split(',').next().unwrap_or_default()).ok())
            .ok_or_else(fail)?;
        if self.auth_message.is_empty()
            || !ct_eq(&sig, &hmac(&v.server_key, self.auth_message.as_bytes()))
        {
            return Err(fail());
        }
        Ok(())
    }
}

// ---------- the exchange on the wire ----------

fn auth_message(code: i32, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(9 + data.len());
    Authentication { code, data }.encode(&mut out);
    out
}

fn sasl_offer(mechanisms: &[&str]) -> BytesMut {
    let mut out = BytesMut::new();
    AuthenticationSasl {
        mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
    }
    .encode(&mut out);
    out
}

/// The mechanisms of an AuthenticationSASL message.
fn offered(f: &[u8]) -> Result<Vec<String>, FrameError> {
    Ok(AuthenticationSasl::decode(f)?.mechanisms)
}

/// Ends a login with a FATAL naming pgredact as the one that refused it.
async fn refuse(
    client: &mut FrameReader<ClientStream>,
    e: &ScramError,
) -> Result<bool, FrameError> {
    send_fatal(
        client.get_mut(),
        e.code,
        &format!("pgredact: {}", e.message),
        None,
    )
    .await;
    Ok(false)
}

/// The code and data of an authentication request from PostgreSQL.
fn auth_request(f: &[u8]) -> Option<(i32, &[u8])> {
    let a = Authentication::decode(f).ok()?;
    Some((a.code, a.data))
}

/// Mechanism and data of a SASLInitialResponse.
fn initial_response(f: &[u8]) -> Result<(String, Vec<u8>), FrameError> {
    let r = SaslInitialResponse::decode(f)?;
    Ok((r.mechanism, r.data))
}

fn sasl_initial_response(mechanism: &str, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(10 + mechanism.len() + data.len());
    SaslInitialResponse {
        mechanism: mechanism.into(),
        data: data.to_vec(),
    }
    .encode(&mut out);
    out
}

fn sasl_response(data: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(5 + data.len());
    SaslResponse { data }.encode(&mut out);
    out
}

async fn send<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut FrameReader<S>,
    b: &[u8],
) -> Result<(), FrameError> {
    r.get_mut().write_all(b).await.map_err(FrameError::Io)
}

/// The client's next SASL message ('p'), or None when it went away.
async fn client_response(
    client: &mut FrameReader<ClientStream>,
) -> Result<Option<bytes::Bytes>, FrameError> {
    match client.next().await? {
        Some(f) if f[0] == b'p' => Ok(Some(f)),
        Some(_) => Err(FrameError::Protocol("expected a SASL response".into())),
        None => Ok(None),
    }
}

/// What pgredact learned about the role's verifier.
enum Lookup {
    Found(Verifier),
    /// The function answered: this role has no verifier pgredact may read.
    NoVerifier,
    /// No database could answer (setup-sql not run, no grant, no connection): why.
    Unavailable(String),
}

/// Asks `pgredact_admin.auth_verifier` in the session's database, then in the protected
/// databases (roles are cluster-wide, the function exists where setup-sql ran).
async fn lookup(shared: &Arc<Shared>, database: &str, user: &str) -> Lookup {
    let mut names = vec![database.to_string()];
    let mut others: Vec<String> = shared
        .policy_set()
        .by_database
        .keys()
        .filter(|d| d.as_str() != database)
        .cloned()
        .collect();
    others.sort();
    names.extend(others);
    let mut why = Vec::new();
    for name in names {
        let db = match shared.db(&name).await {
            Ok(d) => d,
            Err(e) => {
                why.push(e.to_string());
                continue;
            }
        };
        match db.auth_verifier(shared, user).await {
            Ok(Some(text)) => {
                return match Verifier::parse(&text) {
                    Some(v) => Lookup::Found(v),
                    None => Lookup::NoVerifier,
                }
            }
            Ok(None) => return Lookup::NoVerifier,
            Err(e) => why.push(format!("database {name:?}: {e}")),
        }
    }
    Lookup::Unavailable(why.join("; "))
}

/// Whether the "cannot read verifiers" warning was logged (once per process; then debug).
static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// pgredact's own channel-binding data for this client, when it offers `-PLUS`: the client came
/// over TLS and pgredact's certificate names a hash.
fn own_offer<'a>(shared: &'a Shared, client: &mut FrameReader<ClientStream>) -> Option<&'a [u8]> {
    if client.get_mut().is_tls() {
        shared.tls_end_point.as_deref()
    } else {
        None
    }
}

fn offer_for(end_point: Option<&[u8]>) -> &'static [&'static str] {
    if end_point.is_some() {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    }
}

/// PostgreSQL asked for SASL (`offer` is its AuthenticationSASL): completes SCRAM with the
/// client and with PostgreSQL. Returns false when the session ended (the client was told why);
/// true when authentication goes on (terminated: the client has its AuthenticationSASLFinal
/// and PostgreSQL's AuthenticationOk comes next; relayed: the caller relays the rest).
pub(super) async fn authenticate_sasl(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    offer: &[u8],
) -> Result<bool, FrameError> {
    let mechanisms = offered(offer)?;
    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
        send(client, offer).await?;
        return relay_initial(client, server).await;
    }
    match lookup(shared, database, user).await {
        Lookup::Found(v) => terminate(shared, user, client, server, &mechanisms, &v).await,
        Lookup::NoVerifier => {
            // The same offer as for a role pgredact has a verifier for, so the offer does not
            // tell which roles exist; what cannot be relayed fails like a wrong password.
            let own = own_offer(shared, client);
            relay_or_refuse(user, client, server, offer_for(own), own, None).await
        }
        Lookup::Unavailable(why) => {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!("pgredact cannot read SCRAM verifiers, so SCRAM logins are relayed (with TLS on both legs they fail unless the client sets channel_binding=disable): {why}; a superuser must run the output of `pgredact setup-sql`");
            } else {
                tracing::debug!("SCRAM verifier lookup failed: {why}");
            }
            // PostgreSQL's offer without the -PLUS mechanisms pgredact cannot honour (the same
            // for every role).
            let plain: Vec<&str> = mechanisms
                .iter()
                .map(String::as_str)
                .filter(|m| !m.ends_with("-PLUS"))
                .collect();
            let hint = "pgredact could not read SCRAM verifiers (pgredact_admin.auth_verifier); an administrator must run the output of `pgredact setup-sql`, or connect with channel_binding=disable";
            relay_or_refuse(user, client, server, &plain, None, Some(hint)).await
        }
    }
}

/// Without a verifier: offers `mechanisms` and relays the client's answer when PostgreSQL can
/// accept it (plain SCRAM with gs2 "n", or "y" on a plaintext upstream leg when pgredact did
/// not offer `-PLUS`). Otherwise (bound to pgredact's channel, or "y" that PostgreSQL on TLS
/// or pgredact's `-PLUS` offer makes a downgrade) finishes a mock exchange and refuses as
/// PostgreSQL refuses a wrong password.
async fn relay_or_refuse(
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    mechanisms: &[&str],
    own: Option<&[u8]>,
    hint: Option<&str>,
) -> Result<bool, FrameError> {
    send(client, &sasl_offer(mechanisms)).await?;
    let Some(f) = client_response(client).await? else {
        return Ok(false);
    };
    let (mechanism, data) = initial_response(&f)?;
    let upstream_tls = server.get_mut().is_tls();
    let flag = data.first().copied();
    let relayable =
        mechanism != SCRAM_SHA_256_PLUS && !(flag == Some(b'y') && (own.is_some() || upstream_tls));
    if relayable {
        send(server, &f).await?;
        return Ok(true);
    }
    tracing::info!(user = %user, "SCRAM login refused: pgredact has no verifier it may use for this role (unknown role, a superuser, no SCRAM password, or pgredact_admin.auth_verifier missing), and the client's answer cannot be relayed (bound to pgredact's TLS channel, or announcing channel binding that PostgreSQL would take for a downgrade); with channel_binding=disable PostgreSQL decides");
    let v = Verifier::mock(user);
    let ex = match ServerExchange::start(&mechanism, &data, own, &v) {
        Ok(ex) => ex,
        Err(e) => {
            send_fatal(client.get_mut(), e.code, &e.message, None).await;
            return Ok(false);
        }
    };
    send(
        client,
        &auth_message(AUTH_SASL_CONTINUE, ex.server_first().as_bytes()),
    )
    .await?;
    let Some(f) = client_response(client).await? else {
        return Ok(false);
    };
    if let Err(e) = ex.finish(SaslResponse::decode(&f)?.data, &v) {
        send_fatal(client.get_mut(), e.code, &e.message, None).await;
        return Ok(false);
    }
    send_fatal(
        client.get_mut(),
        "28P01",
        &format!("password authentication failed for user \"{user}\""),
        hint,
    )
    .await;
    Ok(false)
}

/// Relays the client's SASLInitialResponse to PostgreSQL.
async fn relay_initial(
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
) -> Result<bool, FrameError> {
    let Some(f) = client_response(client).await? else {
        return Ok(false);
    };
    send(server, &f).await?;
    Ok(true)
}

/// SCRAM terminated at pgredact: server towards the client, client towards PostgreSQL.
async fn terminate(
    shared: &Shared,
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    mechanisms: &[String],
    v: &Verifier,
) -> Result<bool, FrameError> {
    let Some((recovered, client_binding)) = client_leg(shared, client, v).await? else {
        return Ok(false);
    };
    // Server leg: -PLUS bound to PostgreSQL's certificate when offered. A wrong password gives
    // a wrong key: PostgreSQL refuses the proof and its error goes to the client.
    let upstream = server.get_mut().peer_end_point();
    let binding = match upstream {
        Some(d) if mechanisms.iter().any(|m| m == SCRAM_SHA_256_PLUS) => Binding::EndPoint(d),
        Some(_) => Binding::NotOffered,
        None => Binding::Unsupported,
    };
    let mut ce = ClientExchange::new(binding);
    send(
        server,
        &sasl_initial_response(ce.mechanism(), ce.client_first().as_bytes()),
    )
    .await?;
    let Some(data) = server_step(client, server, AUTH_SASL_CONTINUE).await? else {
        return Ok(false);
    };
    let client_final = match ce.client_final(&data, v, &recovered.client_key) {
        Ok(m) => m,
        Err(e) => {
            tracing::info!(user = %user, "SCRAM login refused: {}", e.message);
            return refuse(client, &e).await;
        }
    };
    send(server, &sasl_response(client_final.as_bytes())).await?;
    let Some(data) = server_step(client, server, AUTH_SASL_FINAL).await? else {
        return Ok(false);
    };
    if let Err(e) = ce.verify_server_final(&data, v) {
        tracing::warn!(user = %user, "{}", e.message);
        return refuse(client, &e).await;
    }
    if !recovered.proven {
        // PostgreSQL accepted a key whose hash is not the StoredKey pgredact read, with the
        // same salt: not expected to happen (a new password gets a new salt), and never a
        // reason to let the client in.
        send_fatal(
            client.get_mut(),
            "28P01",
            &format!("password authentication failed for user \"{user}\""),
            None,
        )
        .await;
        return Ok(false);
    }
    tracing::debug!(user = %user, client_binding, upstream_binding = ce.binding(), "SCRAM completed at pgredact");
    send(
        client,
        &auth_message(AUTH_SASL_FINAL, recovered.server_final.as_bytes()),
    )
    .await?;
    Ok(true)
}

/// The client leg of [`terminate`]: pgredact as the SCRAM server, -PLUS bound to its own
/// certificate when the client came over TLS. Returns what the client's proof recovered and the
/// binding it used (None: refused or gone; the client was told).
async fn client_leg(
    shared: &Shared,
    client: &mut FrameReader<ClientStream>,
    v: &Verifier,
) -> Result<Option<(Recovered, &'static str)>, FrameError> {
    // Client leg: -PLUS bound to pgredact's certificate when the client came over TLS.
    let own = own_offer(shared, client);
    send(client, &sasl_offer(offer_for(own))).await?;
    let Some(f) = client_response(client).await? else {
        return Ok(None);
    };
    let (mechanism, data) = initial_response(&f)?;
    let ex = match ServerExchange::start(&mechanism, &data, own, v) {
        Ok(ex) => ex,
        Err(e) => {
            send_fatal(client.get_mut(), e.code, &e.message, None).await;
            return Ok(None);
        }
    };
    let client_binding = if mechanism == SCRAM_SHA_256_PLUS {
        CB_TYPE
    } else {
        "none"
    };
    send(
        client,
        &auth_message(AUTH_SASL_CONTINUE, ex.server_first().as_bytes()),
    )
    .await?;
    let Some(f) = client_response(client).await? else {
        return Ok(None);
    };
    let recovered = match ex.finish(SaslResponse::decode(&f)?.data, v) {
        Ok(r) => r,
        Err(e) => {
            send_fatal(client.get_mut(), e.code, &e.message, None).await;
            return Ok(None);
        }
    };
    Ok(Some((recovered, client_binding)))
}

/// PostgreSQL's next SASL message, which must be `want`: its data, or None after relaying its
/// ErrorResponse (a refused login) to the client.
async fn server_step(
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
    want: i32,
) -> Result<Option<Vec<u8>>, FrameError> {
    loop {
        let Some(f) = server.next().await? else {
            return Ok(None);
        };
        match f[0] {
            b'E' => {
                send(client, &f).await?;
                return Ok(None);
            }
            // A NoticeResponse may come at any time.
            b'N' => send(client, &f).await?,
            b'R' => match auth_request(&f) {
                Some((code, data)) if code == want => return Ok(Some(data.to_vec())),
                _ => {
                    return Err(FrameError::Protocol(
                        "unexpected authentication message from PostgreSQL during SCRAM".into(),
                    ))
                }
            },
            _ => {
                return Err(FrameError::Protocol(
                    "unexpected message from PostgreSQL during SCRAM".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PBKDF2-HMAC-SHA-256 (SCRAM's Hi), for test verifiers.
    fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Key {
        let mut s = salt.to_vec();
        s.extend_from_slice(&[0, 0, 0, 1]);
        let mut u = hmac(password, &s);
        let mut out = u;
        for _ in 1..iterations {
            u = hmac(password, &u);
            out = xor(&out, &u);
        }
        out
    }

    fn client_key(password: &str, salt: &[u8], iterations: u32) -> Key {
        hmac(&hi(password.as_bytes(), salt, iterations), b"Client Key")
    }

    /// The verifier text PostgreSQL stores for `password`.
    fn verifier_text(password: &str, salt: &[u8], iterations: u32) -> String {
        let salted = hi(password.as_bytes(), salt, iterations);
        let ck = hmac(&salted, b"Client Key");
        format!(
            "SCRAM-SHA-256${iterations}:{}${}:{}",
            B64.encode(salt),
            B64.encode(sha256(&ck)),
            B64.encode(hmac(&salted, b"Server Key"))
        )
    }

    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_CNONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SNONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc_verifier() -> Verifier {
        let salt = B64.decode(RFC_SALT).unwrap();
        Verifier::parse(&verifier_text("pencil", &salt, 4096)).unwrap()
    }

    #[test]
    fn rfc7677_server_side() {
        let v = rfc_verifier();
        let ex = ServerExchange::start_with_nonce(
            SCRAM_SHA_256,
            format!("n,,n=user,r={RFC_CNONCE}").as_bytes(),
            None,
            &v,
            RFC_SNONCE,
        )
        .unwrap();
        assert_eq!(
            ex.server_first(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let r = ex.finish(RFC_FINAL.as_bytes(), &v).unwrap();
        assert!(r.proven);
        assert_eq!(
            r.server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let salt = B64.decode(RFC_SALT).unwrap();
        assert_eq!(r.client_key, client_key("pencil", &salt, 4096));
        // One bit off in the proof: the recovered key does not match.
        let bad = RFC_FINAL.replace("p=dHzb", "p=dHzc");
        assert!(!ex.finish(bad.as_bytes(), &v).unwrap().proven);
    }

    #[test]
    fn rfc7677_client_side() {
        let v = rfc_verifier();
        let salt = B64.decode(RFC_SALT).unwrap();
        let ck = client_key("pencil", &salt, 4096);
        let mut ce = ClientExchange::with_nonce(Binding::Unsupported, RFC_CNONCE.into());
        ce.user = "user".into();
        assert_eq!(ce.client_first(), format!("n,,n=user,r={RFC_CNONCE}"));
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = ce.client_final(server_first.as_bytes(), &v, &ck).unwrap();
        assert_eq!(fin, RFC_FINAL);
        ce.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", &v)
            .unwrap();
        assert!(ce
            .verify_server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", &v)
            .is_err());
    }

    /// A libpq-like client: the first and final messages for `password`.
    struct TestClient {
        ex: ClientExchange,
        key: Key,
    }

    impl TestClient {
        fn new(password: &str, v: &Verifier, binding: Binding) -> TestClient {
            TestClient {
                ex: ClientExchange::new(binding),
                key: client_key(password, &v.salt, v.iterations),
            }
        }
    }

    /// Client → pgredact (server side) → PostgreSQL (a second server side), with the recovered
    /// key: both proofs verify, and the client gets a server signature it accepts.
    #[test]
    fn client_key_round_trip_with_binding_on_both_legs() {
        let salt = b"0123456789abcdef";
        let v = Verifier::parse(&verifier_text("s3cret", salt, 4096)).unwrap();
        let ours = vec![7u8; 48];
        let theirs = vec![9u8; 32];
        // Client leg, bound to pgredact's certificate.
        let mut c = TestClient::new("s3cret", &v, Binding::EndPoint(ours.clone()));
        assert_eq!(c.ex.mechanism(), SCRAM_SHA_256_PLUS);
        let ex = ServerExchange::start(
            c.ex.mechanism(),
            c.ex.client_first().as_bytes(),
            Some(&ours),
            &v,
        )
        .unwrap();
        let fin =
            c.ex.client_final(ex.server_first().as_bytes(), &v, &c.key)
                .unwrap();
        let rec = ex.finish(fin.as_bytes(), &v).unwrap();
        assert!(rec.proven);
        assert_eq!(rec.client_key, c.key);
        c.ex.verify_server_final(rec.server_final.as_bytes(), &v)
            .unwrap();
        // Server leg, bound to PostgreSQL's certificate, with the recovered key.
        let mut up = ClientExchange::new(Binding::EndPoint(theirs.clone()));
        let pg = ServerExchange::start(
            up.mechanism(),
            up.client_first().as_bytes(),
            Some(&theirs),
            &v,
        )
        .unwrap();
        let fin = up
            .client_final(pg.server_first().as_bytes(), &v, &rec.client_key)
            .unwrap();
        let pg_rec = pg.finish(fin.as_bytes(), &v).unwrap();
        assert!(pg_rec.proven, "PostgreSQL accepts the proof");
        up.verify_server_final(pg_rec.server_final.as_bytes(), &v)
            .unwrap();
        // A wrong password: not proven here, and the forwarded proof fails upstream too.
        let mut w = TestClient::new("wrong", &v, Binding::Unsupported);
        let ex =
            ServerExchange::start(SCRAM_SHA_256, w.ex.client_first().as_bytes(), None, &v).unwrap();
        let fin =
            w.ex.client_final(ex.server_first().as_bytes(), &v, &w.key)
                .unwrap();
        let rec = ex.finish(fin.as_bytes(), &v).unwrap();
        assert!(!rec.proven);
        let mut up = ClientExchange::new(Binding::Unsupported);
        let pg =
            ServerExchange::start(SCRAM_SHA_256, up.client_first().as_bytes(), None, &v).unwrap();
        let fin = up
            .client_final(pg.server_first().as_bytes(), &v, &rec.client_key)
            .unwrap();
        assert!(!pg.finish(fin.as_bytes(), &v).unwrap().proven);
    }

    #[test]
    fn channel_binding_rules() {
        let v = Verifier::parse(&verifier_text("pw", b"saltsaltsaltsalt", 4096)).unwrap();
        let ep = [1u8; 32];
        let start = |mech: &str, first: &str, ep: Option<&[u8]>| {
            ServerExchange::start(mech, first.as_bytes(), ep, &v)
        };
        // -PLUS is accepted only when offered, and only with p=tls-server-end-point.
        assert!(start(
            SCRAM_SHA_256_PLUS,
            "p=tls-server-end-point,,n=,r=abc",
            Some(&ep)
        )
        .is_ok());
        assert!(start(SCRAM_SHA_256_PLUS, "p=tls-server-end-point,,n=,r=abc", None).is_err());
        assert!(start(SCRAM_SHA_256_PLUS, "n,,n=,r=abc", Some(&ep)).is_err());
        assert!(start(SCRAM_SHA_256_PLUS, "p=tls-unique,,n=,r=abc", Some(&ep)).is_err());
        assert!(start(SCRAM_SHA_256, "p=tls-server-end-point,,n=,r=abc", Some(&ep)).is_err());
        // "y" after -PLUS was offered is a downgrade; without the offer it is fine.
        let e = start(SCRAM_SHA_256, "y,,n=,r=abc", Some(&ep)).unwrap_err();
        assert!(e.message.contains("negotiation"), "{e:?}");
        assert!(start(SCRAM_SHA_256, "y,,n=,r=abc", None).is_ok());
        assert!(start(SCRAM_SHA_256, "n,,n=,r=abc", Some(&ep)).is_ok());
        assert!(start(SCRAM_SHA_256, "n,a=other,n=,r=abc", None).is_err());
        assert!(start(SCRAM_SHA_256, "n,,m=x,n=,r=abc", None).is_err());
        assert!(start(SCRAM_SHA_256, "n,,n=,r=", None).is_err());
        assert!(start("PLAIN", "n,,n=,r=abc", None).is_err());
        // The client's binding data must be pgredact's certificate hash.
        let mut c = ClientExchange::new(Binding::EndPoint(vec![2u8; 32]));
        let ex = ServerExchange::start(
            SCRAM_SHA_256_PLUS,
            c.client_first().as_bytes(),
            Some(&ep),
            &v,
        )
        .unwrap();
        let key = client_key("pw", &v.salt, v.iterations);
        let fin = c
            .client_final(ex.server_first().as_bytes(), &v, &key)
            .unwrap();
        let e = ex.finish(fin.as_bytes(), &v).unwrap_err();
        assert_eq!(e.message, "SCRAM channel binding check failed");
        // A nonce that is not the server's.
        let mut c = ClientExchange::new(Binding::Unsupported);
        let ex =
            ServerExchange::start(SCRAM_SHA_256, c.client_first().as_bytes(), None, &v).unwrap();
        let fin = c
            .client_final(ex.server_first().as_bytes(), &v, &key)
            .unwrap();
        let tampered = fin.replacen(",r=", ",r=x", 1);
        assert_eq!(
            ex.finish(tampered.as_bytes(), &v).unwrap_err().message,
            "SCRAM nonce mismatch"
        );
        // A server nonce that does not extend the client's.
        let mut c = ClientExchange::new(Binding::Unsupported);
        let other = ex.server_first().replacen("r=", "r=x", 1);
        assert!(c.client_final(other.as_bytes(), &v, &key).is_err());
    }

    #[test]
    fn a_changed_password_is_reported_not_guessed() {
        let v = Verifier::parse(&verifier_text("pw", b"saltsaltsaltsalt", 4096)).unwrap();
        let mut c = ClientExchange::new(Binding::Unsupported);
        let first = c.client_first();
        let nonce = &first[first.find("r=").unwrap() + 2..];
        let server_first = format!("r={nonce}xyz,s={},i=4096", B64.encode(b"othersaltothersa"));
        let e = c
            .client_final(server_first.as_bytes(), &v, &[0u8; 32])
            .unwrap_err();
        assert_eq!(e.code, "28P01");
    }

    #[test]
    fn verifiers_parse_and_never_print() {
        let text = verifier_text("pw", b"saltsaltsaltsalt", 4096);
        let v = Verifier::parse(&text).unwrap();
        assert_eq!(format!("{v:?}"), "Verifier(..)");
        let stored = B64.encode(v.stored_key);
        let rec = Recovered {
            client_key: [5; 32],
            proven: true,
            server_final: "v=x".into(),
        };
        assert!(!format!("{rec:?}").contains(&stored));
        assert!(!format!("{rec:?}").contains("v=x"));
        for bad in [
            "md5abcdef",
            "SCRAM-SHA-256$4096:c2FsdA==$abc:def",
            "SCRAM-SHA-256$0:c2FsdA==$",
            "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
            "",
        ] {
            assert!(Verifier::parse(bad).is_none(), "{bad}");
        }
        // The mock's salt is stable per user, its keys match nothing.
        assert_eq!(Verifier::mock("a").salt, Verifier::mock("a").salt);
        assert_ne!(Verifier::mock("a").salt, Verifier::mock("b").salt);
    }

    #[test]
    fn wire_messages() {
        let offer = sasl_offer(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        assert_eq!(
            offered(&offer).unwrap(),
            vec![SCRAM_SHA_256_PLUS.to_string(), SCRAM_SHA_256.to_string()]
        );
        let len = i32::from_be_bytes([offer[1], offer[2], offer[3], offer[4]]) as usize;
        assert_eq!(len + 1, offer.len());
        let p = sasl_initial_response(SCRAM_SHA_256, b"n,,n=,r=abc");
        let len = i32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
        assert_eq!(len + 1, p.len());
        assert_eq!(
            initial_response(&p).unwrap(),
            (SCRAM_SHA_256.to_string(), b"n,,n=,r=abc".to_vec())
        );
        let mut short = p.to_vec();
        short.pop();
        assert!(initial_response(&short).is_err());
        assert_eq!(
            auth_request(&auth_message(AUTH_SASL_FINAL, b"v=abc")),
            Some((AUTH_SASL_FINAL, &b"v=abc"[..]))
        );
    }
}
