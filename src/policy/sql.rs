//! SQL text and keys: quoting, and the keyed hash the pseudonyms use.

// ---------- SQL text and keys ----------

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// HMAC-SHA256 inner/outer padded keys, so SQL can compute HMAC with `sha256` alone.
pub fn hmac_pads(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use sha2::{Digest, Sha256};
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad = k.iter().map(|b| b ^ 0x36).collect();
    let opad = k.iter().map(|b| b ^ 0x5c).collect();
    (ipad, opad)
}

/// The pseudonym the `hash` mask produces (for tests and the forget list).
pub fn hash_pseudonym(key: &[u8], value: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())[..16].to_string()
}
