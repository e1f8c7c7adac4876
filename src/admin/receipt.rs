//! Receipts (proof of erasure): a JSON document saying when a job removed the PII, from which
//! tables, and what the verification found, signed with HMAC-SHA256 under the key in the
//! environment variable named by `[admin] receipt_key_env`.
//!
//! The signed bytes are the `receipt` object in canonical form: compact JSON, object keys sorted
//! by their UTF-8 bytes at every level, strings escaped as serde_json does. The answer is
//! `{"receipt": {...}, "signature": "hmac-sha256=<hex>"}`, with the same value in the
//! `X-Pgredact-Signature` header. [`verify`] checks a saved answer
//! (`pgredact forget --verify-receipt FILE`).

use hmac::{Hmac, Mac};
use serde_json::Value;

/// Prefix of the signature value.
pub const SCHEME: &str = "hmac-sha256=";

/// Why a receipt could not be signed, or a saved one does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HMAC key was refused (HMAC takes keys of any length: not expected).
    #[error("{0}")]
    Key(hmac::digest::InvalidLength),
    #[error("not a JSON receipt: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("no \"receipt\" object")]
    NoReceipt,
    #[error("no \"signature\" string")]
    NoSignature,
    #[error("the signature does not start with {SCHEME}")]
    OtherScheme,
    #[error("the signature is not hex")]
    NotHex,
    #[error("signature mismatch: the receipt was changed, or signed with another key")]
    Mismatch,
}

/// `v` as canonical JSON (keys sorted at every level, no whitespace).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(*k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The signature of a receipt: `hmac-sha256=<hex>` over its canonical form.
pub fn sign(key: &[u8], receipt: &Value) -> Result<String, Error> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(Error::Key)?;
    mac.update(canonical(receipt).as_bytes());
    Ok(format!(
        "{SCHEME}{}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// The signed answer: `{"receipt": ..., "signature": ...}` and the signature.
pub fn signed(key: &[u8], receipt: Value) -> Result<(Value, String), Error> {
    let sig = sign(key, &receipt)?;
    Ok((
        serde_json::json!({ "receipt": receipt, "signature": sig }),
        sig,
    ))
}

/// Checks a saved answer (`{"receipt": ..., "signature": ...}`) against `key`. Returns the
/// receipt when the signature matches (compared in constant time).
pub fn verify(key: &[u8], text: &str) -> Result<Value, Error> {
    let doc: Value = serde_json::from_str(text).map_err(Error::NotJson)?;
    let receipt = doc
        .get("receipt")
        .filter(|r| r.is_object())
        .ok_or(Error::NoReceipt)?;
    let given = doc
        .get("signature")
        .and_then(Value::as_str)
        .ok_or(Error::NoSignature)?;
    let hex_sig = given.strip_prefix(SCHEME).ok_or(Error::OtherScheme)?;
    let bytes = hex::decode(hex_sig).map_err(|_| Error::NotHex)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(Error::Key)?;
    mac.update(canonical(receipt).as_bytes());
    mac.verify_slice(&bytes).map_err(|_| Error::Mismatch)?;
    Ok(receipt.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signed_receipts_verify_and_any_change_is_detected() {
        let key = b"k";
        let r = json!({"job_id": 7, "tables": {"public.b": 2, "public.a": 1}, "note": "é\"x"});
        assert_eq!(
            canonical(&r),
            r#"{"job_id":7,"note":"é\"x","tables":{"public.a":1,"public.b":2}}"#
        );
        let (doc, sig) = signed(key, r.clone()).unwrap();
        assert!(sig.starts_with(SCHEME));
        // Pretty-printed or with keys in another order, it still verifies.
        let text = serde_json::to_string_pretty(&doc).unwrap();
        assert_eq!(verify(key, &text).unwrap(), r);
        let reordered = format!(
            "{{\"signature\": \"{sig}\", \"receipt\": {{\"tables\": {{\"public.b\": 2, \"public.a\": 1}}, \"note\": \"é\\\"x\", \"job_id\": 7}}}}"
        );
        assert!(verify(key, &reordered).is_ok());
        // Another value, another key, a broken signature: refused.
        let edited = text.replace("\"job_id\": 7", "\"job_id\": 8");
        assert!(matches!(verify(key, &edited), Err(Error::Mismatch)));
        assert!(verify(b"other", &text)
            .unwrap_err()
            .to_string()
            .contains("mismatch"));
        assert!(matches!(
            verify(key, &text.replace(SCHEME, "md5=")),
            Err(Error::OtherScheme)
        ));
        assert!(matches!(verify(key, "{}"), Err(Error::NoReceipt)));
        assert!(matches!(verify(key, "not json"), Err(Error::NotJson(_))));
    }
}
