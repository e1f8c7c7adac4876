//! `pgredact scan` against real throwaway PostgreSQL clusters: a database that plants PII in
//! named and unnamed columns, free text and nested json/jsonb paths next to ordinary columns;
//! the demo database, whose policy must leave nothing unlisted.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

fn pgredact(args: &[&str], cfg: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgredact"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .expect("run pgredact")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `table|column|path|detector|evidence` of every finding in a `--format json` report.
fn findings(report: &serde_json::Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            format!(
                "{}|{}|{}|{}|{}",
                f["table"].as_str().unwrap_or(""),
                f["column"].as_str().unwrap_or(""),
                f["path"].as_str().unwrap_or(""),
                f["detector"].as_str().unwrap_or(""),
                f["evidence"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn json_report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

// ---------- planted data ----------

const FIRST: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
];
const LAST: &[&str] = &[
    "Smith", "Johnson", "Williams", "Jones", "Miller", "Davis", "Wilson", "Anderson", "Taylor",
    "Moore", "Jackson", "Martin", "Thompson", "Harris", "Clark", "Lewis", "Walker", "Hall",
];
const STREET: &[&str] = &["Oak", "Maple", "Cedar", "Pine", "Elm", "Willow", "Chestnut"];
const SUFFIX: &[&str] = &["Street", "Avenue", "Road", "Lane", "Drive"];

fn luhn_digit(body: &str) -> u32 {
    let mut sum = 0;
    for (i, c) in body.chars().rev().enumerate() {
        let mut d = c.to_digit(10).unwrap();
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    (10 - sum % 10) % 10
}

fn mod97(s: &str) -> u32 {
    s.chars().fold(0u32, |r, c| {
        let n = c.to_digit(36).unwrap();
        if n >= 10 {
            (r * 100 + n) % 97
        } else {
            (r * 10 + n) % 97
        }
    })
}

/// One planted person, all values derived from `i`.
struct Person {
    first: String,
    last: String,
    email: String,
    phone: String,
    address: String,
    iban: String,
    card: String,
    ssn: String,
    nino: String,
    ip: String,
    dob: String,
}

fn person(i: usize) -> Person {
    let first = FIRST[i % FIRST.len()].to_string();
    let last = LAST[(i * 7 + 3) % LAST.len()].to_string();
    let email = format!(
        "{}.{}{i}@example.org",
        first.to_lowercase(),
        last.to_lowercase()
    );
    let phone = match i % 3 {
        0 => format!("+44 20 7946 {:04}", 1000 + i),
        1 => format!("+1 415 555 {:04}", 2000 + i),
        _ => format!("(212) 555-{:04}", 3000 + i),
    };
    let address = format!(
        "{} {} {}",
        1 + i * 3 % 400,
        STREET[i % STREET.len()],
        SUFFIX[i % SUFFIX.len()]
    );
    let bban = format!("37040044{:010}", 532013000 + i * 7919);
    let check = 98 - mod97(&format!("{bban}DE00"));
    let iban = format!("DE{check:02}{bban}");
    let body = format!("4{:014}", 12345678901 + i * 1_000_003);
    let card = format!("{body}{}", luhn_digit(&body));
    let ssn = format!("{:03}-{:02}-{:04}", 101 + i % 500, 10 + i % 80, 1000 + i);
    let nino = format!(
        "{} {:02} {:02} {:02} {}",
        ["AB", "CE", "JG", "PR"][i % 4],
        i % 100,
        (i * 7) % 100,
        (i * 13) % 100,
        ["A", "B", "C", "D"][i % 4]
    );
    let ip = format!("203.0.{}.{}", i % 256, 1 + i % 250);
    let dob = format!("{}-{:02}-{:02}", 1950 + i % 50, 1 + i % 12, 1 + i % 28);
    Person {
        first,
        last,
        email,
        phone,
        address,
        iban,
        card,
        ssn,
        nino,
        ip,
        dob,
    }
}

const ROWS: usize = 120;

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The planted database's SQL (run by the superuser) and every raw PII value it holds.
fn planted() -> (String, Vec<String>) {
    let mut sql = String::from(
        "CREATE TABLE people (id int PRIMARY KEY, email text, phone text, first_name text, last_name text, \
           birth_date date, ssn text, iban text, card_number text, home_address text, client_ip inet, \
           tier text, country char(2), amount numeric(10,2), created_at timestamptz, ext_id uuid, \
           status text, active boolean, event_type text, score int, big_ref int8, color text, country_name text);\n\
         CREATE TABLE unnamed (id int PRIMARY KEY, c1 text, c2 text, c3 text, c4 text, c5 text, c6 text, c7 text, c8 text, ref_code text);\n\
         CREATE TABLE tickets (id int PRIMARY KEY, subject text, body text, priority text);\n\
         CREATE TABLE events (id int PRIMARY KEY, payload jsonb, doc json, meta jsonb);\n\
         CREATE TABLE metrics (id bigserial PRIMARY KEY, ts timestamptz, amount numeric(12,2), currency char(3), \
           country char(2), http_status int, version text, sku text, digest text, trace_id uuid, ok boolean, \
           event_type text, tier text, took interval, user_agent text, page text, city text, note text);\n\
         CREATE TABLE leads_new (id int, email text, mobile_phone text, tier text);\n\
         CREATE TABLE secret (id int, email text);\n\
         CREATE TABLE part_people (id int, contact text, tier text) PARTITION BY RANGE (id);\n\
         CREATE TABLE part_people_a PARTITION OF part_people FOR VALUES FROM (0) TO (60);\n\
         CREATE TABLE part_people_b PARTITION OF part_people FOR VALUES FROM (60) TO (1000);\n",
    );
    let mut raw = Vec::new();
    let tiers = ["standard", "silver", "gold", "platinum"];
    let countries = ["US", "GB", "DE", "FR", "NL", "ES", "IT", "JP"];
    let statuses = ["active", "disabled", "pending"];
    let events = ["page_view", "login", "logout", "purchase", "email_open"];
    let colors = [
        "Green", "Pink", "Red", "Blue", "Black", "White", "Brown", "Gray",
    ];
    let country_names = [
        "United States",
        "Jordan",
        "Chad",
        "Georgia",
        "Germany",
        "France",
        "Japan",
        "Brazil",
    ];
    let cities = [
        "Paris", "Austin", "Sydney", "Milan", "Chicago", "Lyon", "Berlin", "Tokyo",
    ];
    let uas = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        "cdp-mobile-app/4.2.1 (iOS 17.2)",
    ];
    for i in 0..ROWS {
        let p = person(i);
        let full = format!("{} {}", p.first, p.last);
        raw.extend([
            p.email.clone(),
            p.phone.clone(),
            full.clone(),
            p.address.clone(),
            p.iban.clone(),
            p.card.clone(),
            p.ssn.clone(),
            p.nino.clone(),
            p.ip.clone(),
        ]);
        sql.push_str(&format!(
            "INSERT INTO people VALUES ({i}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, \
             timestamptz '2023-01-01 00:00:00+00' + {i} * interval '7 hours', md5('{i}')::uuid, {}, {}, {}, {}, {}, {}, {});\n",
            lit(&p.email),
            lit(&p.phone),
            lit(&p.first),
            lit(&p.last),
            lit(&p.dob),
            lit(&p.ssn),
            lit(&p.iban),
            lit(&p.card),
            lit(&p.address),
            lit(&p.ip),
            lit(tiers[i % 4]),
            lit(countries[i % 8]),
            (i * 37 % 5000) as f64 / 100.0,
            lit(statuses[i % 3]),
            i % 2 == 0,
            lit(events[i % 5]),
            i * 7 % 100,
            4_000_000_000_000_000u64 + (i as u64) * 7_777_777_777,
            lit(colors[i % 8]),
            lit(country_names[i % 8]),
        ));
        let spaced_iban: String = p
            .iban
            .chars()
            .collect::<Vec<_>>()
            .chunks(4)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(" ");
        let spaced_card = format!(
            "{} {} {} {}",
            &p.card[..4],
            &p.card[4..8],
            &p.card[8..12],
            &p.card[12..]
        );
        raw.push(spaced_iban.clone());
        raw.push(spaced_card.clone());
        sql.push_str(&format!(
            "INSERT INTO unnamed VALUES ({i}, {}, {}, {}, {}, {}, {}, {}, {}, {});\n",
            lit(&p.email),
            lit(&p.phone),
            lit(&full),
            lit(&p.address),
            lit(&p.ip),
            lit(&spaced_iban),
            lit(&spaced_card),
            lit(&p.nino),
            lit(&format!("ORD-2023-{:06}", 100 + i)),
        ));
        let body = match i % 4 {
            0 => format!("Please contact me at {} about my refund.", p.email),
            1 => format!(
                "Call me back on {} tomorrow morning.",
                p.phone.replace(['(', ')'], "")
            ),
            2 => format!("My card {} was charged twice.", p.card),
            _ => "The parcel arrived late, no further details.".to_string(),
        };
        sql.push_str(&format!(
            "INSERT INTO part_people VALUES ({i}, {}, {});\n",
            lit(&p.email),
            lit(tiers[i % 4])
        ));
        sql.push_str(&format!(
            "INSERT INTO tickets VALUES ({i}, {}, {}, {});\n",
            lit(&format!("Question about order #{}", 1000 + i)),
            lit(&body),
            lit(["low", "normal", "high"][i % 3]),
        ));
        let payload = serde_json::json!({
            "type": events[i % 5],
            "user": {
                "contact": {"mail": p.email, "mobile": p.phone},
                "name": full,
                "dob": p.dob,
                "tier": tiers[i % 4],
            },
            "items": [{"sku": format!("SKU-{:05}", i), "qty": 1 + i % 3}, {"sku": "SKU-00001", "qty": 1}],
            "amount": (i * 37 % 5000) as f64 / 100.0,
            "ts": format!("2023-02-{:02}T10:00:00Z", 1 + i % 28),
            "flags": {"beta": i % 2 == 0},
        });
        let note = if i % 3 == 0 {
            format!("customer asked to be mailed at {}", p.email)
        } else {
            "no note".to_string()
        };
        let doc = serde_json::json!({
            "billing": {"iban": p.iban, "card": p.card, "currency": "EUR"},
            "note": note,
        });
        let theme = ["dark", "light"][i % 2];
        let meta = serde_json::json!({"theme": theme, "retries": i % 4, "locale": "en-US", "version": "1.4.2"});
        sql.push_str(&format!(
            "INSERT INTO events VALUES ({i}, {}, {}, {});\n",
            lit(&payload.to_string()),
            lit(&doc.to_string()),
            lit(&meta.to_string()),
        ));
        sql.push_str(&format!(
            "INSERT INTO metrics (ts, amount, currency, country, http_status, version, sku, digest, trace_id, ok, event_type, tier, took, user_agent, page, city, note) \
             VALUES (timestamptz '2024-03-01 00:00:00+00' + {i} * interval '1 minute', {}, 'USD', {}, {}, {}, {}, md5('m{i}'), md5('t{i}')::uuid, {}, {}, {}, {i} * interval '1 second', {}, {}, {}, {});\n",
            (i * 1234 % 100000) as f64 / 100.0,
            lit(countries[i % 8]),
            [200, 201, 404, 500][i % 4],
            lit(&format!("1.{}.{}", i % 5, i % 10)),
            lit(&format!("SKU-{:05}", i * 3)),
            i % 3 != 0,
            lit(events[i % 5]),
            lit(tiers[i % 4]),
            lit(uas[i % 3]),
            lit(&format!("/products/{}", i % 10)),
            lit(cities[i % 8]),
            lit(&format!("batch {} processed in {} ms, retried {} times", i, 100 + i, i % 3)),
        ));
    }
    sql.push_str(
        "INSERT INTO secret VALUES (1, 'hidden.person@example.org');\n\
         ANALYZE;\n\
         GRANT CONNECT, CREATE ON DATABASE plant TO pgredact;\n\
         GRANT USAGE ON SCHEMA public TO pgredact;\n\
         GRANT SELECT ON people, unnamed, tickets, events, metrics, leads_new, part_people TO pgredact;\n",
    );
    (sql, raw)
}

/// Every planted finding: `table|column|path|detector|evidence`.
fn expected() -> BTreeSet<String> {
    [
        "public.people|email||email|values",
        "public.people|phone||phone|values",
        "public.people|first_name||person_name|values",
        "public.people|last_name||person_name|values",
        "public.people|birth_date||birth_date|values",
        "public.people|ssn||national_id|values",
        "public.people|iban||iban|values",
        "public.people|card_number||card_number|values",
        "public.people|home_address||street_address|values",
        "public.people|client_ip||ip_address|values",
        "public.unnamed|c1||email|values",
        "public.unnamed|c2||phone|values",
        "public.unnamed|c3||person_name|values",
        "public.unnamed|c4||street_address|values",
        "public.unnamed|c5||ip_address|values",
        "public.unnamed|c6||iban|values",
        "public.unnamed|c7||card_number|values",
        "public.unnamed|c8||national_id|values",
        "public.tickets|body||email|free_text",
        "public.tickets|body||phone|free_text",
        "public.tickets|body||card_number|free_text",
        "public.events|payload|$.user.contact.mail|email|values",
        "public.events|payload|$.user.contact.mobile|phone|values",
        "public.events|payload|$.user.name|person_name|values",
        "public.events|payload|$.user.dob|birth_date|values",
        "public.events|doc|$.billing.iban|iban|values",
        "public.events|doc|$.billing.card|card_number|values",
        "public.events|doc|$.note|email|free_text",
        "public.leads_new|email||email|name",
        // Sampled through the partitioned parent, not per partition.
        "public.part_people|contact||email|values",
        "public.leads_new|mobile_phone||phone|name",
        // Not readable by the control role: judged by its name.
        "public.secret|email||email|name",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn write_config(dir: &Path, port: u16, policy: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/plant.toml"), policy).unwrap();
    let cfg = dir.join("pgredact.toml");
    std::fs::write(&cfg, config_text("127.0.0.1:0", port)).unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_every_planted_pii_and_nothing_else_and_proposes_a_policy_check_accepts() {
    let env = start_default().await;
    let (sql, raw) = planted();
    tokio::task::block_in_place(|| {
        env.cluster.create_database("plant").unwrap();
        env.cluster.superuser_psql("plant", &sql).unwrap();
    });
    let dir = env.dir.join("plant");
    let cfg = write_config(&dir, env.cluster.port, "database = \"plant\"\n");

    // The report: exactly the planted findings, all unlisted, the unreadable table skipped.
    let out = pgredact(&["scan", "--format", "json"], &cfg);
    assert!(out.status.success(), "{}", text(&out));
    let report = json_report(&out);
    let found = findings(&report);
    let want = expected();
    let missed: Vec<_> = want.difference(&found).collect();
    let extra: Vec<_> = found.difference(&want).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed {missed:#?}\nfalse positives {extra:#?}"
    );
    assert!(report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["covered_by"].is_null()));
    assert!(
        report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["table"] == "public.secret"),
        "{report:#}"
    );
    let email = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["table"] == "public.people" && f["column"] == "email")
        .unwrap();
    assert_eq!(email["matched"], ROWS);
    assert_eq!(email["sampled"], ROWS);

    // A smaller sample than the tables: TABLESAMPLE BERNOULLI (and the partitioned parent
    // through its partitions) finds the same.
    let small = pgredact(&["scan", "--format", "json", "--sample", "60"], &cfg);
    assert!(small.status.success(), "{}", text(&small));
    let small = json_report(&small);
    assert_eq!(findings(&small), want);
    assert!(small["findings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["sampled"].as_u64().unwrap_or(0) <= 60 * 3));

    // Text output, --fail-on-unlisted, --propose: never a planted value.
    let plain = pgredact(&["scan", "--fail-on-unlisted"], &cfg);
    assert_eq!(plain.status.code(), Some(2), "{}", text(&plain));
    let plain_text = text(&plain);
    assert!(plain_text.contains("UNLISTED"), "{plain_text}");
    assert!(
        plain_text.contains("public.events") && plain_text.contains("$.user.contact.mail"),
        "{plain_text}"
    );
    let proposal = pgredact(&["scan", "--propose", "--sample", "500"], &cfg);
    assert!(proposal.status.success(), "{}", text(&proposal));
    let all = format!("{}{}{}", text(&out), plain_text, text(&proposal));
    for v in &raw {
        assert!(
            !all.contains(v.as_str()),
            "a sampled value was printed: {v}"
        );
    }
    assert!(!all.contains("hidden.person@example.org"));

    // check (names only) warns about the named columns and about nothing ordinary.
    let check = pgredact(&["check"], &cfg);
    let check_text = text(&check);
    for col in [
        "people.email",
        "people.birth_date",
        "people.ssn",
        "leads_new.mobile_phone",
    ] {
        assert!(
            check_text.contains(&format!(
                "warning: {}",
                dir.join("policies/plant.toml").display()
            )) && check_text.contains(&format!("public.{col} looks like")),
            "{col}: {check_text}"
        );
    }
    for col in ["people.tier", "people.country", "metrics.", "unnamed."] {
        assert!(
            !check_text.contains(&format!("public.{col}")),
            "{col}: {check_text}"
        );
    }

    // The proposal, as printed, is a policy check accepts once set up, and leaves nothing
    // unlisted.
    let policy = String::from_utf8(proposal.stdout).unwrap();
    assert!(
        policy.contains("# pgredact scan: email: email, 120/120 (100%)"),
        "{policy}"
    );
    std::fs::write(dir.join("policies/plant.toml"), &policy).unwrap();
    let setup = pgredact(&["setup-sql", "--database", "plant"], &cfg);
    assert!(setup.status.success(), "{}", text(&setup));
    let setup = String::from_utf8(setup.stdout).unwrap();
    tokio::task::block_in_place(|| env.cluster.superuser_psql("plant", &setup))
        .unwrap_or_else(|e| panic!("setup-sql: {e}"));
    let check = pgredact(&["check"], &cfg);
    assert!(check.status.success(), "{}\n{policy}", text(&check));
    assert!(!text(&check).contains("looks like"), "{}", text(&check));
    let rescan = pgredact(&["scan", "--fail-on-unlisted", "--format", "json"], &cfg);
    assert!(rescan.status.success(), "{}", text(&rescan));
    let report = json_report(&rescan);
    // setup-sql let the control role read public.secret (a policy table now): sampled this time.
    let mut want_now = want.clone();
    want_now.remove("public.secret|email||email|name");
    want_now.insert("public.secret|email||email|values".into());
    assert_eq!(findings(&report), want_now);
    let pol = pgredact::policy::parse_policy(&policy, Path::new("plant.toml")).unwrap();
    let people = pol.table("public", "people").unwrap();
    assert_eq!(people.columns["email"].mask.kind(), "email");
    assert_eq!(people.columns["phone"].mask.kind(), "partial");
    assert_eq!(people.columns["last_name"].mask.kind(), "hash");
    assert_eq!(people.columns["birth_date"].mask.kind(), "year");
    assert_eq!(people.columns["card_number"].mask.kind(), "null");
    assert!(!people.columns.contains_key("tier"));
    assert_eq!(
        pol.table("public", "events").unwrap().columns["payload"]
            .mask
            .kind(),
        "json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_scans_clean() {
    let env = start_default().await;
    let cfg = env.dir.join("pgredact.toml");
    let out = pgredact(&["scan", "--fail-on-unlisted", "--format", "json"], &cfg);
    assert!(out.status.success(), "{}", text(&out));
    let report = json_report(&out);
    let found = findings(&report);
    assert_eq!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["covered_by"].is_null())
            .count(),
        0
    );
    // It does find the PII the policy lists, each covered.
    for f in [
        "public.customers|email||email|values",
        "public.customers|phone||phone|values",
        "public.customers|first_name||person_name|values",
        "public.customers|birth_date||birth_date|values",
        "public.customers|address||street_address|values",
        "public.customer_events|ip_address||ip_address|values",
        "public.customer_events|payload|$.to|email|values",
        "public.customer_events|payload|$.billing.name|person_name|values",
        "public.customer_events|payload|$.billing.address|street_address|values",
        "public.customer_events|payload|$.callback_phone|phone|values",
        "public.orders|shipping_address||street_address|values",
        "public.customer_history|email||email|values",
    ] {
        assert!(found.contains(f), "{f} not in {found:#?}");
    }
    // and nothing in the ordinary columns.
    for f in &found {
        for col in [
            "|tier|",
            "|country|",
            "|city|",
            "|segment|",
            "|status|",
            "|amount|",
            "|event_type|",
            "|lifetime_value|",
        ] {
            assert!(!f.contains(col), "{f}");
        }
    }
    // The text report names what covers each finding.
    let plain = pgredact(&["scan"], &cfg);
    let plain = text(&plain);
    assert!(
        plain.contains("listed: json $.billing.name = hash") && plain.contains("0 unlisted"),
        "{plain}"
    );
    let check = pgredact(&["check"], &cfg);
    assert!(check.status.success(), "{}", text(&check));
    assert!(!text(&check).contains("looks like"), "{}", text(&check));
}
