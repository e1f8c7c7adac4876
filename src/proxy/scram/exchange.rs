//! The SCRAM-SHA-256 exchanges themselves, without I/O: the verifier, the server side towards
//! the client (which recovers the client's ClientKey from its proof), and the client side towards
//! PostgreSQL (which proves with that key). The flow on the wire is in the parent module.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The one channel-binding type PostgreSQL supports.
pub(super) const CB_TYPE: &str = "tls-server-end-point";
/// Random bytes in a nonce (PostgreSQL: 18, base64-encoded).
pub(super) const NONCE_BYTES: usize = 18;
/// Iteration count of mock exchanges (PostgreSQL's default).
pub(super) const MOCK_ITERATIONS: u32 = 4096;

pub(super) type Key = [u8; 32];

pub(super) fn hmac(key: &[u8], msg: &[u8]) -> Key {
    // HMAC accepts keys of any length.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(msg);
    m.finalize().into_bytes().into()
}

pub(super) fn sha256(b: &[u8]) -> Key {
    Sha256::digest(b).into()
}

pub(super) fn xor(a: &Key, b: &Key) -> Key {
    let mut out = *a;
    for (o, x) in out.iter_mut().zip(b) {
        *o ^= x;
    }
    out
}

/// Compares without an early exit (keys and signatures).
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

pub(super) fn key32(b: &[u8]) -> Option<Key> {
    b.try_into().ok()
}

/// A role's SCRAM-SHA-256 secret as `pg_authid.rolpassword` stores it. It suffices to
/// impersonate the server to the role and to recover the role's ClientKey from a proof: never
/// printed (its Debug is `..`), never logged.
pub struct Verifier {
    pub(super) iterations: u32,
    pub(super) salt: Vec<u8>,
    pub(super) stored_key: Key,
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
    pub(super) fn mock(user: &str) -> Verifier {
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

pub(super) fn malformed(what: &str) -> ScramError {
    ScramError {
        code: "08P01",
        message: format!("malformed SCRAM message ({what})"),
    }
}

pub(super) fn violation(message: &str) -> ScramError {
    ScramError {
        code: "08P01",
        message: message.into(),
    }
}

/// `k=value` attributes of a SCRAM message, split at commas (values cannot hold commas).
pub(super) fn attr<'a>(
    part: Option<&'a str>,
    key: char,
    what: &str,
) -> Result<&'a str, ScramError> {
    let p = part.ok_or_else(|| malformed(what))?;
    let mut c = p.chars();
    if c.next() != Some(key) || c.next() != Some('=') {
        return Err(malformed(what));
    }
    Ok(&p[2..])
}

pub(super) fn printable_nonce(n: &str) -> bool {
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

    pub(super) fn start_with_nonce(
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
    pub(super) user: String,
    nonce: String,
    auth_message: String,
}

impl ClientExchange {
    pub fn new(binding: Binding) -> ClientExchange {
        Self::with_nonce(binding, nonce())
    }

    pub(super) fn with_nonce(binding: Binding, nonce: String) -> ClientExchange {
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
