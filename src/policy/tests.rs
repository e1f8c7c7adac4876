use super::model::fingerprint;
use super::*;
use std::collections::BTreeMap;
use std::path::Path;
fn p(text: &str) -> Result<DatabasePolicy, String> {
    parse_policy(text, Path::new("policies/app.toml")).map_err(|e| e.to_string())
}

#[test]
fn a_table_named_only_by_a_sub_table_header_parses_with_its_line() {
    let pol = p(r#"
database = "app"

[tables."public.events".columns.payload]
mask = "json"
paths = { "$.email" = "email" }

[tables."public.other"]
columns.x = "null"
"#)
    .unwrap();
    let t = pol.table("public", "events").unwrap();
    assert_eq!(t.line, 4);
    assert!(matches!(t.columns["payload"].mask, Mask::Json(_)));
    assert_eq!(pol.table("public", "other").unwrap().line, 8);
    let e = p("database = \"app\"\n\n[tables.\"a.b.c\".columns.payload]\nmask = \"null\"\n")
        .unwrap_err();
    assert!(e.starts_with("policies/app.toml:3: "), "{e}");
}

#[test]
fn parses_design_example() {
    let pol = p(r#"
database = "app"
unmasked_roles = ["dba"]

[tables."public.customers"]
subject = "customer_id"
columns.email = "email"
columns.first_name = "null"
columns.phone = { mask = "partial", keep_last = 2 }
columns.birth_date = "year"

[tables."public.customer_events"]
subject = "customer_id"
columns.ip_address = "null"
"#)
    .unwrap();
    let t = pol.table("public", "customers").unwrap();
    assert_eq!(t.subject.as_deref(), Some("customer_id"));
    assert_eq!(t.columns["email"].mask, Mask::Email);
    assert_eq!(
        t.columns["phone"].mask,
        Mask::Partial {
            keep_first: 0,
            keep_last: 2,
            padding: "****".into()
        }
    );
    assert_eq!(t.columns["phone"].line, 9);
    assert!(pol.table("public", "customer_events").is_some());
}

#[test]
fn errors_name_file_and_line() {
    let e =
        p("database = \"app\"\n\n[tables.\"public.c\"]\ncolumns.email = \"emial\"\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:4:"), "{e}");
    assert!(e.contains("unknown mask kind"), "{e}");
    let e = p("database = \"app\"\nunmasked_role = [\"dba\"]\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:2:"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    let e = p("database = \"app\"\n[tables.\"public.c\"]\ncolumns.x = { mask = \"null\", keep_last = 2 }\n")
        .unwrap_err();
    assert!(
        e.contains(":3:") && e.contains("only apply to mask \"partial\""),
        "{e}"
    );
    let e = p("database = \"app\"\nunmasked_roles = [\"a\" \"b\"]\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:2:"), "{e}");
}

#[test]
fn qualified_names() {
    assert_eq!(
        split_qualified("customers").unwrap(),
        ("public".into(), "customers".into())
    );
    assert_eq!(
        split_qualified("CRM.Customers").unwrap(),
        ("crm".into(), "customers".into())
    );
    assert_eq!(
        split_qualified("\"My Schema\".\"T\"").unwrap(),
        ("My Schema".into(), "T".into())
    );
    assert!(split_qualified("a.b.c").is_err());
    assert!(split_qualified("a.").is_err());
}

#[test]
fn mask_type_fit() {
    let int = ColType {
        sql: "integer".into(),
        base: "int4".into(),
        category: 'N',
    };
    let date = ColType {
        sql: "date".into(),
        base: "date".into(),
        category: 'D',
    };
    assert!(mask_fits(&Mask::Email, &int).is_err());
    assert!(mask_fits(&Mask::Year, &date).is_ok());
    assert!(mask_fits(&Mask::Year, &int).is_err());
    assert!(mask_fits(&Mask::Redact, &int).is_ok());
}

#[test]
fn hmac_matches_reference() {
    // RFC 4231 test case 2
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
    m.update(b"what do ya want for nothing?");
    let full = hex::encode(m.finalize().into_bytes());
    assert!(full.starts_with("5bdcc146bf60754e"));
    assert_eq!(
        hash_pseudonym(b"Jefe", "what do ya want for nothing?"),
        "5bdcc146bf60754e"
    );
}

#[test]
fn json_path_masks_parse_and_compile() {
    let pol = p(r#"
database = "app"
[tables."public.customer_events"]
columns.ip_address = "null"
[tables."public.customer_events".columns.payload]
mask = "json"
default = "keep"
paths = { "$.to" = "email", "$.billing.name" = "redact", "$.**.phone" = "null", "$.items[*].\"a/b~c\"" = { mask = "partial", keep_last = 2 }, "$.*.sku" = "hash" }
"#)
    .unwrap();
    let t = pol.table("public", "customer_events").unwrap();
    let Mask::Json(j) = &t.columns["payload"].mask else {
        panic!("json mask expected")
    };
    assert_eq!(t.columns["payload"].line, 5);
    assert_eq!(j.default, None);
    let re: BTreeMap<&str, String> = j
        .rules
        .iter()
        .map(|r| (r.path.as_str(), r.regex()))
        .collect();
    assert_eq!(re["$.to"], "^/to$");
    assert_eq!(re["$.billing.name"], "^/billing/name$");
    assert_eq!(re["$.**.phone"], "^(/[^/]*)*/phone$");
    assert_eq!(re["$.items[*].\"a/b~c\""], "^/items/a\\~1b\\~0c$");
    assert_eq!(re["$.*.sku"], "^/[^/]*/sku$");
    assert!(t.columns["payload"].mask.uses_key());
    assert!(pol.uses_hash());
    // Strictest first in the spec the database reads.
    let spec = t.columns["payload"].mask.spec();
    let kinds: Vec<&str> = spec["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mask"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["null", "redact", "hash", "email", "partial"]);
    assert_eq!(spec["default"]["kind"], "keep");
    let by_path = |p: &str| {
        spec["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(by_path("$.billing.name")["needle"], "\"name\": ");
    assert_eq!(by_path("$.billing.name")["keys"], "{\"billing\",\"name\"}");
    assert_eq!(by_path("$.**.phone")["needle"], "\"phone\": ");
    assert!(by_path("$.**.phone").get("keys").is_none());
    assert_eq!(
        by_path("$.items[*].\"a/b~c\"")["keys"],
        "{\"items\",\"a/b~c\"}"
    );
    assert!(by_path("$.*.sku").get("keys").is_none());
    // `$.*.sku` ends in a key too, so the prefilter applies; a default mask disables it.
    assert_eq!(
        spec["prefilter"].as_str().unwrap().split('|').count(),
        5,
        "{}",
        spec["prefilter"]
    );
    assert!(spec["prefilter"]
        .as_str()
        .unwrap()
        .contains("\\\"name\\\"\\:\\ "));
    assert_eq!(spec["uses_key"], true);
    let jsonb = ColType {
        sql: "jsonb".into(),
        base: "jsonb".into(),
        category: 'U',
    };
    let text = ColType {
        sql: "text".into(),
        base: "text".into(),
        category: 'S',
    };
    assert!(mask_fits(&t.columns["payload"].mask, &jsonb).is_ok());
    assert!(mask_fits(&t.columns["payload"].mask, &text).is_err());
}

fn ty(sql: &str, base: &str, category: char) -> ColType {
    ColType {
        sql: sql.into(),
        base: base.into(),
        category,
    }
}

#[test]
fn fake_noise_bucket_parse_and_publish() {
    let pol = p(r#"
database = "app"
[tables."public.people"]
columns.first = { mask = "fake", kind = "first_name" }
columns.mail = { mask = "fake", kind = "email" }
columns.amount = { mask = "noise", ratio = 0.1 }
columns.seen = { mask = "noise", interval = "30 days", per_row = true }
columns.age = { mask = "bucket", step = 10 }
columns.price = { mask = "bucket", step = 0.25 }
columns.fee = { mask = "bucket", step = "0.050" }
columns.born = { mask = "bucket", interval = "10 years" }
columns.at = { mask = "bucket", interval = "3 months" }
"#)
    .unwrap();
    let c = &pol.table("public", "people").unwrap().columns;
    assert_eq!(c["first"].mask, Mask::Fake(FakeKind::FirstName));
    assert_eq!(
        c["amount"].mask,
        Mask::Noise(Noise::Ratio {
            ppm: 100_000,
            per_row: false
        })
    );
    assert_eq!(
        c["seen"].mask,
        Mask::Noise(Noise::Interval {
            span: Span {
                n: 30,
                unit: Unit::Day
            },
            per_row: true
        })
    );
    assert_eq!(c["age"].mask, Mask::Bucket(Bucket::Step("10".into())));
    assert_eq!(c["price"].mask, Mask::Bucket(Bucket::Step("0.25".into())));
    assert_eq!(c["fee"].mask, Mask::Bucket(Bucket::Step("0.05".into())));
    assert_eq!(c["mail"].line, 5);
    // Keyed kinds join the key; bucket does not need it.
    assert!(c["first"].mask.uses_key() && c["amount"].mask.uses_key());
    assert!(!c["age"].mask.uses_key());
    assert!(pol.uses_hash());
    let spec = c["seen"].mask.spec();
    assert_eq!(spec["kind"], "noise");
    assert_eq!(spec["seconds"], 30 * 86_400);
    assert_eq!(spec["uses_key"], true);
    assert_eq!(c["mail"].mask.spec()["flavour"], "email");
    assert_eq!(c["born"].mask.spec()["unit"], "year");
    assert_eq!(c["born"].mask.spec()["n"], 10);
    assert_eq!(c["at"].mask.spec()["seconds"], serde_json::Value::Null);
    assert_eq!(c["fee"].mask.spec()["step"], "0.05");
}

#[test]
fn fake_noise_bucket_errors_name_the_line() {
    for (body, want) in [
        ("columns.x = \"fake\"", "needs a `kind`"),
        ("columns.x = { mask = \"fake\", kind = \"ssn\" }", "unknown fake kind"),
        ("columns.x = { mask = \"noise\" }", "needs `ratio`"),
        ("columns.x = { mask = \"noise\", ratio = 0 }", "between 0.001 and 1"),
        ("columns.x = { mask = \"noise\", ratio = 1.5 }", "between 0.001 and 1"),
        ("columns.x = { mask = \"noise\", ratio = 0.1, interval = \"1 day\" }", "not both"),
        ("columns.x = { mask = \"noise\", interval = \"1 year\" }", "no fixed length"),
        ("columns.x = { mask = \"noise\", interval = \"soon\" }", "whole count and a unit"),
        ("columns.x = { mask = \"noise\", interval = \"0 days\" }", "between 1 and"),
        ("columns.x = { mask = \"bucket\" }", "needs `step`"),
        ("columns.x = { mask = \"bucket\", step = -5 }", "positive number"),
        ("columns.x = { mask = \"bucket\", step = 0 }", "positive number"),
        ("columns.x = { mask = \"bucket\", step = \"1e3\" }", "positive number"),
        ("columns.x = { mask = \"bucket\", interval = \"5 months\" }", "divide the year"),
        ("columns.x = { mask = \"hash\", kind = \"name\" }", "`kind` only applies"),
        ("columns.x = { mask = \"hash\", ratio = 0.1 }", "`ratio` only applies"),
        ("columns.x = { mask = \"year\", interval = \"1 year\" }", "`interval` only applies"),
        ("columns.x = { mask = \"noise\", ratio = 0.1, step = 1 }", "`step` only applies"),
        ("columns.x = { mask = \"hash\", per_row = true }", "`per_row` only applies"),
        ("columns.x = { mask = \"json\", paths = { \"$.a\" = { mask = \"noise\", ratio = 0.1 } } }", "does not apply inside JSON"),
    ] {
        let e = p(&format!("database = \"app\"\n[tables.t]\n{body}\n")).unwrap_err();
        assert!(e.contains(want), "{body}: {e}");
        assert!(e.starts_with("policies/app.toml:3:"), "{body}: {e}");
    }
}

#[test]
fn new_kinds_type_fit() {
    let text = ty("character varying(20)", "varchar", 'S');
    let int = ty("integer", "int4", 'N');
    let num = ty("numeric(12,2)", "numeric", 'N');
    let float = ty("double precision", "float8", 'N');
    let money = ty("money", "money", 'N');
    let date = ty("date", "date", 'D');
    let tstz = ty("timestamp with time zone", "timestamptz", 'D');
    let fake = Mask::Fake(FakeKind::Name);
    let ratio = Mask::Noise(Noise::Ratio {
        ppm: 100_000,
        per_row: false,
    });
    let span = |n, unit| Span { n, unit };
    let days = Mask::Noise(Noise::Interval {
        span: span(30, Unit::Day),
        per_row: false,
    });
    let hours = Mask::Noise(Noise::Interval {
        span: span(36, Unit::Hour),
        per_row: true,
    });
    let step = Mask::Bucket(Bucket::Step("10".into()));
    let half = Mask::Bucket(Bucket::Step("0.5".into()));
    let years = Mask::Bucket(Bucket::Interval(span(10, Unit::Year)));
    let hour = Mask::Bucket(Bucket::Interval(span(1, Unit::Hour)));
    assert!(mask_fits(&fake, &text).is_ok());
    assert!(mask_fits(&fake, &int)
        .unwrap_err()
        .contains("needs a text column"));
    for t in [&int, &num, &float] {
        assert!(mask_fits(&ratio, t).is_ok(), "{}", t.sql);
        assert!(mask_fits(&step, t).is_ok(), "{}", t.sql);
    }
    assert!(mask_fits(&ratio, &text)
        .unwrap_err()
        .contains("number column"));
    assert!(mask_fits(&ratio, &money).is_err());
    assert!(mask_fits(&ratio, &date)
        .unwrap_err()
        .contains("use `interval`"));
    assert!(mask_fits(&days, &date).is_ok() && mask_fits(&days, &tstz).is_ok());
    assert!(mask_fits(&hours, &tstz).is_ok());
    assert!(mask_fits(&hours, &date)
        .unwrap_err()
        .contains("whole number of days"));
    assert!(mask_fits(&days, &int).unwrap_err().contains("use `ratio`"));
    assert!(mask_fits(&half, &num).is_ok());
    assert!(mask_fits(&half, &int)
        .unwrap_err()
        .contains("not a whole number"));
    assert!(mask_fits(&step, &text).is_err());
    assert!(mask_fits(&years, &date).is_ok() && mask_fits(&hour, &tstz).is_ok());
    assert!(mask_fits(&hour, &date).is_err());
    assert!(mask_fits(&years, &int).unwrap_err().contains("use `step`"));
}

#[test]
fn fake_lists_come_from_the_crate() {
    let lists = fake_lists();
    let first = lists.iter().find(|(n, _)| *n == "first_name").unwrap().1;
    assert!(first.len() > 1000 && first.contains(&"Aaliyah"));
    assert!(lists.iter().all(|(_, l)| !l.is_empty()));
}

#[test]
fn json_path_mask_errors_name_the_line_and_path() {
    for (body, want) in [
        ("columns.p = { mask = \"json\" }", "needs `paths`"),
        (
            "columns.p = { mask = \"json\", paths = { \"email\" = \"email\" } }",
            "must start with `$`",
        ),
        (
            "columns.p = { mask = \"json\", paths = { \"$.a[0]\" = \"null\" } }",
            "array positions",
        ),
        (
            "columns.p = { mask = \"json\", paths = { \"$.a\" = \"year\" } }",
            "does not apply inside JSON",
        ),
        (
            "columns.p = { mask = \"json\", paths = { \"$.a\" = \"bogus\" } }",
            "unknown mask kind",
        ),
        (
            "columns.p = { mask = \"null\", paths = { \"$.a\" = \"null\" } }",
            "only apply to mask \"json\"",
        ),
        (
            "columns.p = { mask = \"json\", paths = { \"$..a\" = \"null\" } }",
            "expected a key",
        ),
        (
            "columns.p = { mask = \"json\", paths = {}, default = \"keep\", keep_last = 1 }",
            "partial",
        ),
    ] {
        let e = p(&format!("database = \"app\"\n[tables.t]\n{body}\n")).unwrap_err();
        assert!(e.contains(want), "{body}: {e}");
        assert!(e.starts_with("policies/app.toml:3:"), "{body}: {e}");
    }
}

#[test]
fn privacy_by_default_parses_publishes_and_expands() {
    let text = "database = \"app\"\n\n[tables.\"public.accounts\"]\nsubject = \"id\"\nprivacy_by_default = true\npublic = [\"id\", \"tier\"]\ncolumns.email = \"email\"\n\n[tables.\"public.plain\"]\ncolumns.x = \"null\"\n";
    let pol = p(text).unwrap();
    let t = pol.table("public", "accounts").unwrap();
    assert!(t.privacy_by_default);
    assert_eq!(
        t.public.iter().map(String::as_str).collect::<Vec<_>>(),
        ["id", "tier"]
    );
    let cols = ["id", "tier", "email", "notes", "score"];
    assert_eq!(t.default_masked(cols), ["notes", "score"]);
    let eff = t.effective_columns(cols);
    assert_eq!(
        eff.keys().map(String::as_str).collect::<Vec<_>>(),
        ["email", "notes", "score"]
    );
    assert_eq!(eff["email"].mask, Mask::Email);
    assert_eq!(eff["notes"].mask, Mask::Redact);
    // The spec the database reads carries both keys; a table without them is unchanged.
    let spec = pol.spec();
    let tables = spec["tables"].as_array().unwrap();
    let acc = tables.iter().find(|v| v["name"] == "accounts").unwrap();
    assert_eq!(acc["privacy_by_default"], serde_json::json!(true));
    assert_eq!(acc["public"], serde_json::json!(["id", "tier"]));
    let plain = tables.iter().find(|v| v["name"] == "plain").unwrap();
    assert!(plain.get("privacy_by_default").is_none() && plain.get("public").is_none());
    // Both keys change the table's fingerprint.
    let off = p(&text.replace("privacy_by_default = true", "privacy_by_default = false")).unwrap();
    let off = off.table("public", "accounts").unwrap();
    assert!(!off.privacy_by_default && off.default_masked(cols).is_empty());
    assert_ne!(off.fingerprint(), t.fingerprint());
    let more = p(&text.replace("\"tier\"]", "\"tier\", \"score\"]")).unwrap();
    assert_ne!(
        more.table("public", "accounts").unwrap().fingerprint(),
        t.fingerprint()
    );
    // Without the new keys a table keeps the fingerprint it had before they existed.
    let plain = pol.table("public", "plain").unwrap();
    let before = serde_json::json!({"schema": "public", "name": "plain", "columns": {"x": Mask::Null.spec()}});
    assert_eq!(plain.fingerprint(), fingerprint(&before.to_string()));
}

#[test]
fn privacy_by_default_errors_name_file_and_line() {
    let e = p("database = \"app\"\n[tables.\"public.a\"]\nprivacy_by_default = true\ncolumns.email = \"email\"\npublic = [\"id\",\n  \"email\"]\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:6: "), "{e}");
    assert!(
        e.contains("column email is listed both as public and under columns (line 4)"),
        "{e}"
    );
    let e =
        p("database = \"app\"\n[tables.\"public.a\"]\nprivacy_by_default = \"yes\"\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:3: "), "{e}");
    let e = p("database = \"app\"\n[tables.\"public.a\"]\npublic = \"id\"\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:3: "), "{e}");
    let e = p("database = \"app\"\n[tables.\"public.a\"]\npublic = [\"\"]\n").unwrap_err();
    assert!(e.starts_with("policies/app.toml:3: "), "{e}");
}
