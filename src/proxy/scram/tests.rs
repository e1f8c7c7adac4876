use super::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

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
    let pg = ServerExchange::start(SCRAM_SHA_256, up.client_first().as_bytes(), None, &v).unwrap();
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
    let ex = ServerExchange::start(SCRAM_SHA_256, c.client_first().as_bytes(), None, &v).unwrap();
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
