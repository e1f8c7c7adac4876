use super::*;

#[test]
fn patterns_compile() {
    for r in [
        &EMAIL_IN_TEXT,
        &PHONE_IN_TEXT,
        &IPV4_IN_TEXT,
        &IPV6_IN_TEXT,
        &CARD_IN_TEXT,
        &IBAN_IN_TEXT,
        &NATIONAL_ID_IN_TEXT,
        &NANP_PHONE,
    ] {
        assert!(r.is_some());
    }
    assert!(LISTS.first.contains("james") && LISTS.last.contains("smith"));
    assert!(LISTS.street_after.contains("street") && LISTS.street_before.contains("rue"));
}

#[test]
fn detectors_accept_pii() {
    for v in ["jane.doe@example.com", "J.O'Neil+tag@mail.example.co.uk"] {
        assert!(is_email(v), "{v}");
    }
    for v in [
        "+44 20 7946 0958",
        "+1 (415) 555-0132",
        "+4915112345678",
        "020 7946 0958",
        "07700 900123",
        "01 23 45 67 89",
        "01.23.45.67.89",
        "(415) 555-0132",
        "415-555-0132",
        "0049 30 1234567",
    ] {
        assert!(is_phone(v), "{v}");
    }
    for v in ["192.168.10.4", "2001:db8::1", "10.0.0.1/32"] {
        assert!(is_ip(v), "{v}");
    }
    for v in [
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "6011111111111117",
    ] {
        assert!(is_card(v), "{v}");
    }
    for v in [
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "fr1420041010050500013m02606",
    ] {
        assert!(is_iban(v), "{v}");
    }
    assert_eq!(national_id("123-45-6789"), Some("us_ssn"));
    assert_eq!(national_id("AB 12 34 56 C"), Some("uk_nino"));
    assert_eq!(national_id("12345678Z"), Some("es_dni"));
    assert_eq!(national_id("X1234567L"), Some("es_nie"));
    for v in [
        "12 Main Street",
        "4 Cedar Lane, 02139",
        "Rue de la Paix 8",
        "12 rue de la Paix",
        "Bahnhofstraße 5",
        "Kerkstraat 12",
        "221B Baker Street",
        "Via Roma, 12",
    ] {
        assert!(is_street_address(v), "{v}");
    }
    for v in [
        "Jane",
        "Smith",
        "David Müller",
        "Zoë de Vries",
        "Mary Anne Jones",
        "O'Connell",
    ] {
        assert!(is_person_name(v), "{v}");
    }
    for v in [
        "1984-03-12",
        "12/03/1984",
        "12.03.1984",
        "1984-03-12 00:00:00",
    ] {
        assert!(is_birth_date_value(v), "{v}");
    }
}

#[test]
fn detectors_reject_ordinary_values() {
    let ordinary = [
        "gold",
        "silver",
        "standard",
        "platinum",
        "US",
        "GB",
        "DE",
        "United States",
        "123.45",
        "19.99",
        "1000",
        "0",
        "-4.5",
        "2023-01-05",
        "2023-01-05 10:15:00+00",
        "2023-01-05T10:15:00Z",
        "05.01.2023",
        "12:30:45",
        "550e8400-e29b-41d4-a716-446655440000",
        "active",
        "disabled",
        "pending",
        "true",
        "false",
        "t",
        "f",
        "page_view",
        "login",
        "add_to_cart",
        "purchase",
        "SKU-00123",
        "ORD-2023-000123",
        "T-100123",
        "1.4.2",
        "v2.10.0",
        "/products/shoes",
        "newsletter-2023-01",
        "Question about order",
        "USD",
        "EUR",
        "Green",
        "Pink",
        "Brown",
        "White",
        "May",
        "Red",
        "Gold",
        "Silver",
        "Premium",
        "d41d8cd98f00b204e9800998ecf8427e",
        "1234567890123456",
        "4000000000000000",
        "GB00 0000 0000 0000 0000 00",
        "000-00-0000",
        "aa:bb:cc:dd:ee:ff",
        "Windows NT 10.0",
        "3 items",
        "2 days left",
        "10 Downing",
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    ];
    for v in ordinary {
        assert_eq!(value_detectors(v), Vec::<Detector>::new(), "{v}");
        assert_eq!(embedded(v), Vec::new(), "{v}");
        assert!(
            !is_birth_date_value(v) || v.starts_with("2023") || v.starts_with("05."),
            "{v}"
        );
    }
    // A user agent whose Chrome version is a dotted quad.
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    assert_eq!(embedded(ua), Vec::new());
    assert!(!is_card("4111 1111 1111 1112"), "Luhn");
    assert!(!is_iban("GB82 WEST 1234 5698 7654 33"), "mod 97");
    assert_eq!(national_id("666-12-3456"), None);
    assert_eq!(national_id("12345678A"), None, "DNI check letter");
    assert_eq!(national_id("GB 12 34 56 C"), None, "NINO prefix");
    assert!(!is_birth_date_value("1850-01-01"));
}

#[test]
fn free_text_finds_embedded_pii_with_checksums() {
    let t =
        "Call me at +44 20 7946 0958 or write to jane.doe@example.com; card 4111-1111-1111-1111, \
             IBAN DE89 3704 0044 0532 0130 00, from 203.0.113.9, SSN 123-45-6789.";
    let found: Vec<Detector> = embedded(t).into_iter().map(|(d, _)| d).collect();
    for d in [
        Detector::Phone,
        Detector::Email,
        Detector::CardNumber,
        Detector::Iban,
        Detector::IpAddress,
        Detector::NationalId,
    ] {
        assert!(found.contains(&d), "{d:?} in {found:?}");
    }
    assert_eq!(embedded("order 4111-1111-1111-1112 shipped"), Vec::new());
}

#[test]
fn names_say_what_columns_hold() {
    for (n, d) in [
        ("email", Detector::Email),
        ("contactEmail", Detector::Email),
        ("email_address", Detector::Email),
        ("mobile_phone", Detector::Phone),
        ("phone_number", Detector::Phone),
        ("ip_address", Detector::IpAddress),
        ("remote_addr", Detector::IpAddress),
        ("first_name", Detector::PersonName),
        ("surname", Detector::PersonName),
        ("card_holder_name", Detector::PersonName),
        ("date_of_birth", Detector::BirthDate),
        ("dob", Detector::BirthDate),
        ("shipping_address", Detector::StreetAddress),
        ("address_line1", Detector::StreetAddress),
        ("ssn", Detector::NationalId),
        ("passport_number", Detector::NationalId),
        ("iban", Detector::Iban),
        ("card_number", Detector::CardNumber),
    ] {
        assert_eq!(name_hint(n), Some(d), "{n}");
    }
    for n in [
        "email_verified",
        "phone_country_code",
        "address_type",
        "tier",
        "country",
        "name",
        "product_name",
        "username",
        "mac_address",
        "event_type",
        "status",
        "amount",
        "created_at",
        "birth_place",
        "card_number_last4",
    ] {
        assert_eq!(name_hint(n), None, "{n}");
    }
}

fn tally(kind: ValueKind, values: &[&str], hint: Option<Detector>) -> Vec<Detector> {
    let mut t = Tally::default();
    for v in values {
        t.observe(kind, v, hint);
    }
    t.findings(hint).into_iter().map(|f| f.detector).collect()
}

#[test]
fn thresholds_need_share_and_variety() {
    let emails: Vec<String> = (0..10).map(|i| format!("user{i}@example.com")).collect();
    let mut mixed: Vec<&str> = emails.iter().map(String::as_str).take(4).collect();
    mixed.extend(["n/a"; 6]);
    assert_eq!(tally(ValueKind::Text, &mixed, None), Vec::<Detector>::new());
    assert_eq!(
        tally(ValueKind::Text, &mixed, Some(Detector::Email)),
        vec![Detector::Email]
    );
    let all: Vec<&str> = emails.iter().map(String::as_str).collect();
    assert_eq!(tally(ValueKind::Text, &all, None), vec![Detector::Email]);
    // Few distinct Title-case words are an enum, not names.
    let colours = ["Olivia", "Grace", "Olivia", "Grace", "Olivia", "Grace"];
    assert_eq!(
        tally(ValueKind::Text, &colours, None),
        Vec::<Detector>::new()
    );
    // A constant address in every row of free text is not a customer's.
    let notes = ["mail support@example.com for help"; 10];
    assert_eq!(tally(ValueKind::Text, &notes, None), Vec::<Detector>::new());
    // Birth dates need the name.
    assert_eq!(
        tally(ValueKind::Text, &["1984-03-12", "1990-01-02"], None),
        Vec::<Detector>::new()
    );
    assert_eq!(
        tally(
            ValueKind::Date,
            &["1984-03-12", "1990-01-02"],
            Some(Detector::BirthDate)
        ),
        vec![Detector::BirthDate]
    );
    // Nothing sampled: the name alone.
    let t = Tally::default();
    let f = t.findings(Some(Detector::Email));
    assert!(f.len() == 1 && f[0].by_name);
}

#[test]
fn json_paths_are_walked_and_matched_against_rules() {
    let doc: serde_json::Value = serde_json::json!({
        "user": {"contact": {"mail": "a@example.com", "mobile": "+44 20 7946 0958"}},
        "items": [{"sku": "SKU-1"}, {"sku": "SKU-2"}],
        "by id": {"12345": {"name": "x"}},
        "jane@example.com": 1
    });
    let mut out = BTreeMap::new();
    walk_json(&doc, &mut Vec::new(), &mut out);
    let paths: Vec<String> = out.keys().map(|k| format_path(k)).collect();
    assert!(
        paths.contains(&"$.user.contact.mail".to_string()),
        "{paths:?}"
    );
    assert!(paths.contains(&"$.items.sku".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"$.\"by id\".*.name".to_string()),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.contains("jane")), "{paths:?}");
    assert_eq!(
        out[&vec![PathKey::Key("items".into()), PathKey::Key("sku".into())]].values,
        2
    );
    // Every printed path parses as a policy path.
    for p in &paths {
        assert!(policy::parse_json_path(p).is_ok(), "{p}");
    }
    let pol = policy::parse_policy(
        "database = \"app\"\n[tables.t]\ncolumns.p = { mask = \"json\", paths = { \"$.user\" = \"redact\", \"$.user.contact.mail\" = \"keep\", \"$.**.mobile\" = \"null\" } }\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    let tp = pol.table("public", "t");
    let k = |p: &str| -> Vec<PathKey> {
        policy::parse_json_path(p)
            .unwrap()
            .into_iter()
            .map(|s| match s {
                PathSeg::Key(k) => PathKey::Key(k),
                _ => PathKey::Any,
            })
            .collect()
    };
    assert_eq!(
        covered_by(tp, "p", Some(&k("$.user.name"))).as_deref(),
        Some("json $.user = redact")
    );
    assert_eq!(covered_by(tp, "p", Some(&k("$.user.contact.mail"))), None);
    assert_eq!(
        covered_by(tp, "p", Some(&k("$.user.contact.mobile"))).as_deref(),
        Some("json $.**.mobile = null")
    );
    assert_eq!(covered_by(tp, "p", Some(&k("$.items.sku"))), None);
    assert_eq!(covered_by(tp, "q", None), None);
}

#[test]
fn privacy_by_default_covers_unlisted_columns_but_not_public_ones() {
    let pol = policy::parse_policy(
        "database = \"app\"\n[tables.t]\nprivacy_by_default = true\npublic = [\"id\", \"tier\"]\ncolumns.email = \"email\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    let tp = pol.table("public", "t");
    assert_eq!(covered_by(tp, "notes", None).as_deref(), Some(BY_DEFAULT));
    assert_eq!(
        covered_by(tp, "payload", Some(&[PathKey::Key("to".into())])).as_deref(),
        Some(BY_DEFAULT)
    );
    assert_eq!(covered_by(tp, "email", None).as_deref(), Some("email"));
    assert_eq!(covered_by(tp, "tier", None), None);
}

#[test]
fn masked_examples_never_hold_the_value() {
    for (d, v) in [
        (Detector::Email, "jane.doe@example.com"),
        (Detector::PersonName, "Jane Smith"),
        (Detector::Phone, "+44 20 7946 0958"),
        (Detector::CardNumber, "4111 1111 1111 1111"),
        (Detector::IpAddress, "9.9.9.9"),
        (Detector::Iban, "GB82 WEST 1234 5698 7654 32"),
    ] {
        let m = masked_example(d, v);
        assert!(!m.contains(v) && !v.contains(&m), "{v} -> {m}");
    }
    assert_eq!(
        masked_example(Detector::Email, "jane@example.com"),
        "j***@example.com"
    );
}

fn f(table: &str, column: &str, path: Option<&str>, d: Detector, ty: Option<ColType>) -> Finding {
    Finding {
        table: table.into(),
        column: column.into(),
        path: path.map(str::to_string),
        detector: d,
        evidence: "values",
        matched: 9,
        sampled: 10,
        share: Some(0.9),
        example: None,
        covered_by: None,
        ty,
    }
}

#[test]
fn proposals_extend_the_policy_and_parse() {
    let text_ty = ColType {
        sql: "text".into(),
        base: "text".into(),
        category: 'S',
    };
    let date_ty = ColType {
        sql: "date".into(),
        base: "date".into(),
        category: 'D',
    };
    let original = "# demo\ndatabase = \"app\"\n\n[tables.\"public.customers\"]\nsubject = \"customer_id\"\ncolumns.email = \"email\"\n\n[tables.\"public.events\"]\n[tables.\"public.events\".columns.payload]\nmask = \"json\"\ndefault = \"keep\"\npaths = { \"$.to\" = \"email\" }\n";
    let findings = vec![
        f(
            "public.customers",
            "phone",
            None,
            Detector::Phone,
            Some(text_ty.clone()),
        ),
        f(
            "public.customers",
            "dob",
            None,
            Detector::BirthDate,
            Some(date_ty),
        ),
        f(
            "public.events",
            "payload",
            Some("$.billing.name"),
            Detector::PersonName,
            None,
        ),
        f(
            "public.events",
            "payload",
            Some("$.\"odd key\".iban"),
            Detector::Iban,
            None,
        ),
        f(
            "public.leads",
            "full_name",
            None,
            Detector::PersonName,
            Some(text_ty.clone()),
        ),
        f("public.leads", "doc", Some("$.mail"), Detector::Email, None),
        f(
            "Odd Schema.T",
            "ssn",
            None,
            Detector::NationalId,
            Some(text_ty),
        ),
    ];
    let out = propose(Some(original), "app", &findings, true).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.starts_with("# demo\n"), "{out}");
    let pol = policy::parse_policy(&out, std::path::Path::new("x.toml")).unwrap();
    let c = pol.table("public", "customers").unwrap();
    assert_eq!(c.subject.as_deref(), Some("customer_id"));
    assert_eq!(c.columns["email"].mask, Mask::Email);
    assert!(matches!(
        c.columns["phone"].mask,
        Mask::Partial { keep_last: 2, .. }
    ));
    assert_eq!(c.columns["dob"].mask, Mask::Year);
    let Mask::Json(j) = &pol.table("public", "events").unwrap().columns["payload"].mask else {
        panic!("{out}")
    };
    let paths: BTreeMap<&str, Option<&Mask>> = j
        .rules
        .iter()
        .map(|r| (r.path.as_str(), r.mask.as_deref()))
        .collect();
    assert_eq!(paths["$.to"], Some(&Mask::Email));
    assert_eq!(paths["$.billing.name"], Some(&Mask::Hash));
    assert_eq!(paths["$.\"odd key\".iban"], Some(&Mask::Null));
    let l = pol.table("public", "leads").unwrap();
    assert_eq!(l.columns["full_name"].mask, Mask::Hash);
    assert!(matches!(&l.columns["doc"].mask, Mask::Json(_)));
    assert_eq!(
        pol.table("Odd Schema", "T").unwrap().columns["ssn"].mask,
        Mask::Null
    );
    assert!(
        out.contains("# pgredact scan: phone: phone, 9/10 (90%)"),
        "{out}"
    );
    assert!(
        out.contains("# pgredact scan: payload $.billing.name: person_name"),
        "{out}"
    );
    // Without a hash key, names are redacted (check refuses hash without one).
    let out = propose(None, "app", &findings[4..5], false).unwrap();
    let pol = policy::parse_policy(&out, std::path::Path::new("x.toml")).unwrap();
    assert_eq!(
        pol.table("public", "leads").unwrap().columns["full_name"].mask,
        Mask::Redact
    );
    // Nothing unlisted: the file as it was.
    assert_eq!(propose(Some(original), "app", &[], true).unwrap(), original);
}

#[test]
fn sampling_clauses() {
    assert_eq!(sampling_clause(-1.0, 1000), "");
    assert_eq!(sampling_clause(500.0, 1000), "");
    assert!(sampling_clause(50_000.0, 1000).starts_with(" TABLESAMPLE BERNOULLI (4.0000)"));
    assert!(sampling_clause(10_000_000.0, 1000).starts_with(" TABLESAMPLE SYSTEM (0.0400)"));
}
