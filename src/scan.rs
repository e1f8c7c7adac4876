//! `pgredact scan`: samples every table the control role can read and reports the columns and
//! JSON paths whose names or values look like PII, and whether the policy already covers them.
//! `--propose` prints the policy with one entry added per unlisted finding.
//!
//! The detectors are pure functions of one value (or one column name) and are unit-tested below;
//! [`Tally`] counts them over a sample and [`Tally::findings`] applies the thresholds. Sampled
//! values never leave this module: a finding carries counts and a masked example only.

use crate::catalog::Catalog;
use crate::config::Config;
use crate::policy::{self, ColType, DatabasePolicy, JsonMask, Mask, PathSeg};
use regex::Regex;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::LazyLock;

/// Why a scan could not run, a table was not sampled, or `--propose` could not add to the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy files do not load (their own `file:line: reason` message).
    #[error("{0}")]
    Policy(crate::policy::Error),
    #[error("no policy files: name the database to scan with --database")]
    NoPolicyFiles,
    #[error("policies for several databases ({}): name one with --database", .0.join(", "))]
    SeveralDatabases(Vec<String>),
    /// The control connection could not be opened (the proxy's own message).
    #[error("{0}")]
    Connect(crate::proxy::Error),
    #[error("reading the catalog: {}", crate::tls::error_chain(.0))]
    Catalog(#[source] tokio_postgres::Error),
    #[error("listing tables: {}", crate::tls::error_chain(.0))]
    ListTables(#[source] tokio_postgres::Error),
    /// A table was not sampled (reported in the scan's `skipped`).
    #[error("not in the catalog snapshot (dropped meanwhile?)")]
    NotInCatalog,
    #[error("{}", pg_reason(.0))]
    Sample(#[source] tokio_postgres::Error),
    #[error("the current policy does not parse: {0}")]
    PolicyToml(#[source] toml_edit::TomlError),
    #[error("`tables` in the current policy is not a table")]
    TablesNotATable,
    #[error("tables.{0:?} in the current policy is not a table")]
    TableNotATable(String),
    #[error("tables.{0:?}.columns is not a table")]
    ColumnsNotATable(String),
    #[error("tables.{table:?}.columns.{column} is not a json mask")]
    NotAJsonMask { table: String, column: String },
    #[error("tables.{table:?}.columns.{column}.paths is not a table")]
    PathsNotATable { table: String, column: String },
    /// The proposed file fails the policy parser: a bug.
    #[error("pgredact produced an invalid policy (a bug; please report it): {reason}\n{text}")]
    InvalidProposal { reason: String, text: String },
}

// ---------------------------------------------------------------------------------------------
// Detectors
// ---------------------------------------------------------------------------------------------

/// What a finding looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    Phone,
    IpAddress,
    CardNumber,
    Iban,
    NationalId,
    BirthDate,
    StreetAddress,
    PersonName,
}

impl Detector {
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::IpAddress => "ip_address",
            Detector::CardNumber => "card_number",
            Detector::Iban => "iban",
            Detector::NationalId => "national_id",
            Detector::BirthDate => "birth_date",
            Detector::StreetAddress => "street_address",
            Detector::PersonName => "person_name",
        }
    }

    /// In words, for `check` warnings.
    pub fn describe(self) -> &'static str {
        match self {
            Detector::Email => "an e-mail address",
            Detector::Phone => "a phone number",
            Detector::IpAddress => "an IP address",
            Detector::CardNumber => "a payment card number",
            Detector::Iban => "a bank account (IBAN)",
            Detector::NationalId => "a national identity number",
            Detector::BirthDate => "a date of birth",
            Detector::StreetAddress => "a street address",
            Detector::PersonName => "a person's name",
        }
    }

    /// (share of sampled values, distinct matching values) a column needs to be flagged, with
    /// and without a name that says the same thing. Structural detectors (checksums, fixed
    /// formats) need half the values; names and addresses, whose lists and patterns also match
    /// ordinary words now and then, need more and need variety.
    fn threshold(self, hinted: bool) -> (f64, usize) {
        match (self, hinted) {
            (Detector::PersonName, false) => (0.6, 5),
            (Detector::PersonName, true) => (0.3, 3),
            (Detector::StreetAddress, false) => (0.5, 3),
            (Detector::StreetAddress, true) => (0.2, 2),
            (Detector::Phone, false) => (0.5, 3),
            (Detector::Phone, true) => (0.2, 2),
            // Only ever counted for a column or key whose name says birth.
            (Detector::BirthDate, _) => (0.5, 2),
            (_, false) => (0.5, 2),
            (_, true) => (0.1, 1),
        }
    }
}

/// Constant patterns; `None` only if one fails to compile, which a unit test rules out.
fn re(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

static EMAIL_IN_TEXT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)+",
    )
});
static PHONE_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"\+[1-9][0-9 ().\-]{6,20}[0-9]"));
static IPV4_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));
static IPV6_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"));
static CARD_IN_TEXT: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"[0-9](?:[ \-]?[0-9]){12,18}"));
static IBAN_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"));
static NATIONAL_ID_IN_TEXT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]|[XYZ]?-?[0-9]{7,8}-?[A-Z]",
    )
});
static NANP_PHONE: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[\-. ])[0-9]{3}[\-. ][0-9]{4}$"));

/// A whole value that is an e-mail address (`local@domain.tld`).
pub fn is_email(v: &str) -> bool {
    let v = v.trim();
    let Some((local, domain)) = v.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._%+-'".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|t| t.len() >= 2 && t.chars().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

/// A whole value that is a phone number: E.164 (`+` and 8 to 15 digits, any of ` -.()` between
/// them), an international `00` prefix, a national number with a trunk `0` (9 to 12 digits:
/// `020 7946 0958`, `07700 900123`, `01 23 45 67 89`, `030 1234567`), or the North American
/// `(555) 123-4567` / `555-123-4567` / `555.123.4567`.
pub fn is_phone(v: &str) -> bool {
    let v = v.trim();
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_digit() || " -.()+".contains(c))
        || v[1..].contains('+')
    {
        return false;
    }
    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len();
    if digits.chars().all(|c| digits.starts_with(c)) {
        return false;
    }
    // A run of separators or a dot-only layout of few groups reads as a number or a date.
    if v.contains("..") || v.contains("--") {
        return false;
    }
    if let Some(rest) = v.strip_prefix('+') {
        return (8..=15).contains(&n) && !rest.trim_start_matches([' ', '(']).starts_with('0');
    }
    if let Some(rest) = digits.strip_prefix("00") {
        return (10..=17).contains(&n) && !rest.starts_with('0');
    }
    if v.starts_with('0') || v.starts_with("(0") {
        if v.contains('.') {
            // `01.23.45.67.89`; `05.01.2023` is a date.
            return n == 10 && v.split('.').count() == 5;
        }
        // Grouped with separators, or a bare 10/11-digit national number.
        let grouped = v.contains([' ', '-', '(']);
        return (9..=12).contains(&n) && (grouped || (10..=11).contains(&n));
    }
    NANP_PHONE.as_ref().is_some_and(|r| r.is_match(v))
}

/// A whole value that is an IP address (v4 dotted quad or v6; an `inet` host's `/32` or
/// `/128` suffix is allowed), other than the unspecified address.
pub fn is_ip(v: &str) -> bool {
    let v = v.trim();
    let addr = match v.split_once('/') {
        Some((a, "32")) | Some((a, "128")) => a,
        Some(_) => return false,
        None => v,
    };
    if let Ok(a) = Ipv4Addr::from_str(addr) {
        return !a.is_unspecified();
    }
    match Ipv6Addr::from_str(addr) {
        Ok(a) => !a.is_unspecified() && addr.matches(':').count() >= 2,
        Err(_) => false,
    }
}

/// Luhn checksum over decimal digits.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Whether `digits` starts with an issuer prefix of a card scheme and has one of its lengths
/// (Visa, Mastercard, American Express, Discover, JCB, Diners Club, UnionPay).
fn card_scheme(digits: &str) -> bool {
    let n = digits.len();
    let p = |k: usize| {
        digits
            .get(..k)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0)
    };
    match digits.as_bytes().first() {
        Some(b'4') => n == 13 || n == 16 || n == 19,
        Some(b'5') => (51..=55).contains(&p(2)) && n == 16,
        Some(b'2') => (2221..=2720).contains(&p(4)) && n == 16,
        Some(b'3') => {
            ((p(2) == 34 || p(2) == 37) && n == 15)
                || ((3528..=3589).contains(&p(4)) && (16..=19).contains(&n))
                || (((300..=305).contains(&p(3)) || p(2) == 36 || p(2) == 38 || p(2) == 39)
                    && (14..=19).contains(&n))
        }
        Some(b'6') => {
            (p(4) == 6011 || (644..=649).contains(&p(3)) || p(2) == 65 || p(2) == 62)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

/// A whole value that is a payment card number: 13 to 19 digits (single spaces or dashes
/// between groups allowed), a known scheme prefix and length, and a valid Luhn check digit.
pub fn is_card(v: &str) -> bool {
    let v = v.trim();
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
        || v.contains("  ")
        || v.contains("--")
    {
        return false;
    }
    let digits: String = v.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len())
        && card_scheme(&digits)
        && luhn(&digits)
        && !digits.chars().all(|c| digits.starts_with(c))
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// A whole value that is an IBAN: a registered country's length and a mod-97 check of 1
/// (spaces between groups allowed, any case).
pub fn is_iban(v: &str) -> bool {
    let s: String = v
        .trim()
        .chars()
        .filter(|c| *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if !s.chars().all(|c| c.is_ascii_alphanumeric()) || s.len() < 15 {
        return false;
    }
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(cc, _)| s.starts_with(cc)) else {
        return false;
    };
    if s.len() != len || !s[2..4].chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let rearranged = format!("{}{}", &s[4..], &s[..4]);
    let mut rem: u32 = 0;
    for c in rearranged.chars() {
        let n = match c.to_digit(36) {
            Some(n) => n,
            None => return false,
        };
        rem = if n >= 10 {
            (rem * 100 + n) % 97
        } else {
            (rem * 10 + n) % 97
        };
    }
    rem == 1
}

/// The national identity number format of a whole value: `us_ssn` (`123-45-6789`, with the
/// dashes; area not 000, 666 or 9xx, group not 00, serial not 0000), `uk_nino` (`QQ 12 34 56
/// C`, valid prefix letters), `es_dni` / `es_nie` (8 digits or X/Y/Z and 7 digits, and the
/// mod-23 check letter).
pub fn national_id(v: &str) -> Option<&'static str> {
    let v = v.trim();
    let b = v.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b.len() == 11 && b[3] == b'-' && b[6] == b'-' {
        let (a, g, s) = (&v[..3], &v[4..6], &v[7..]);
        if digits(a.as_bytes()) && digits(g.as_bytes()) && digits(s.as_bytes()) {
            let ok = a != "000" && a != "666" && !a.starts_with('9') && g != "00" && s != "0000";
            return ok.then_some("us_ssn");
        }
        return None;
    }
    let compact: String = v.chars().filter(|c| *c != ' ' && *c != '-').collect();
    let c = compact.as_bytes();
    if c.len() == 9
        && c[..2].iter().all(u8::is_ascii_uppercase)
        && digits(&c[2..8])
        && (b'A'..=b'D').contains(&c[8])
        && v.chars().all(|ch| ch != '-')
    {
        let first_ok = !b"DFIQUV".contains(&c[0]);
        let second_ok = !b"DFIOQUV".contains(&c[1]);
        let prefix = &compact[..2];
        let banned = ["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&prefix);
        return (first_ok && second_ok && !banned).then_some("uk_nino");
    }
    const LETTERS: &[u8] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    if c.len() == 9 && c[8].is_ascii_uppercase() {
        let (num, kind) = match c[0] {
            b'X' | b'Y' | b'Z' if digits(&c[1..8]) => {
                (format!("{}{}", c[0] - b'X', &compact[1..8]), "es_nie")
            }
            _ if digits(&c[..8]) => (compact[..8].to_string(), "es_dni"),
            _ => return None,
        };
        let n: usize = num.parse().ok()?;
        return (LETTERS[n % 23] == c[8]).then_some(kind);
    }
    None
}

/// The person-name and street lists, from the `fake` crate's locale data.
struct Lists {
    first: HashSet<String>,
    last: HashSet<String>,
    /// Street types written after the name (`Street`, `straße`, `laan`...), lower case.
    street_after: HashSet<String>,
    /// Street types written before the name (`Rue`, `Via`, `Avenida`...), lower case.
    street_before: HashSet<String>,
}

/// Words in the name lists that are at least as often ordinary words in a database (colours,
/// months, seasons, ranks, virtues...): a Title-case value such as `Green` or `May` is not
/// taken for a name.
const NOT_NAMES: &[&str] = &[
    "amber", "april", "august", "autumn", "baby", "black", "blue", "brown", "crystal", "diamond",
    "easter", "faith", "forest", "general", "gold", "golden", "gray", "green", "grey", "hope",
    "jade", "joy", "june", "king", "little", "may", "olive", "pearl", "pink", "precious", "price",
    "prince", "princess", "queen", "red", "river", "rose", "royal", "ruby", "sister", "sky",
    "spring", "stone", "summer", "unique", "violet", "west", "white", "will", "winter", "young",
    "silver", "bronze", "standard", "premium", "free", "basic", "pro", "active", "hand", "block",
    "mills", "hills", "ward", "mark", "bill", "page", "view", "new", "open", "pending", "paid",
    "total", "star", "north", "south", "east", "ok", "yes", "no",
];

/// Lower case without the marks of accented letters (`Zoë` and `Zoe` are the same name).
fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'ø' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            'ß' => 's',
            c => c,
        })
        .collect()
}

static LISTS: LazyLock<Lists> = LazyLock::new(|| {
    use fake::locales::*;
    fn add<L: Data>(l: &mut Lists) {
        let ok = |w: &&&str| {
            w.chars()
                .all(|c| c.is_alphabetic() || c == '\'' || c == '-')
        };
        l.first
            .extend(L::NAME_FIRST_NAME.iter().filter(ok).map(|w| fold(w)));
        l.last
            .extend(L::NAME_LAST_NAME.iter().filter(ok).map(|w| fold(w)));
        for s in L::ADDRESS_STREET_SUFFIX {
            let w = fold(s).trim_end_matches('.').to_string();
            if w.chars().count() < 2 || !w.chars().all(char::is_alphabetic) {
                continue;
            }
            // Capitalised in the data: a word before or after the name (`Rue`, `Street`);
            // lower case: the end of a compound (`Bahnhofstraße`, `Kerkstraat`).
            if s.chars().next().is_some_and(char::is_lowercase) {
                l.street_after.insert(w);
            } else if L::ADDRESS_STREET_TPL.starts_with("{StreetSuffix}") {
                l.street_before.insert(w);
            } else {
                l.street_after.insert(w);
            }
        }
    }
    let mut l = Lists {
        first: HashSet::new(),
        last: HashSet::new(),
        street_after: HashSet::new(),
        street_before: HashSet::new(),
    };
    add::<EN>(&mut l);
    add::<FR_FR>(&mut l);
    add::<DE_DE>(&mut l);
    add::<IT_IT>(&mut l);
    add::<NL_NL>(&mut l);
    add::<PT_BR>(&mut l);
    add::<PT_PT>(&mut l);
    add::<CY_GB>(&mut l);
    add::<TR_TR>(&mut l);
    for w in NOT_NAMES {
        l.first.remove(*w);
        l.last.remove(*w);
    }
    // Abbreviations the lists leave out.
    for w in [
        "st", "ave", "rd", "blvd", "ln", "dr", "ct", "pl", "sq", "hwy", "pkwy", "str", "calle",
        "carrer", "avenida", "plaza", "paseo", "ulica", "ul",
    ] {
        if [
            "calle", "carrer", "avenida", "plaza", "paseo", "ulica", "ul",
        ]
        .contains(&w)
        {
            l.street_before.insert(w.to_string());
        } else {
            l.street_after.insert(w.to_string());
        }
    }
    l.street_after.insert("strasse".into());
    l
});

/// Particles inside names (`de Vries`, `van der Berg`, `da Silva`).
const PARTICLES: &[&str] = &[
    "de", "van", "von", "der", "den", "da", "di", "du", "del", "della", "la", "le", "dos", "das",
    "do", "bin", "al", "el", "ter", "ten", "zu",
];

/// A name-shaped word: a capital followed by lower-case letters (apostrophes and hyphens
/// inside: `O'Brien`, `Anne-Marie`).
fn name_word(w: &str) -> bool {
    let mut cs = w.chars();
    let Some(first) = cs.next() else {
        return false;
    };
    let rest: Vec<char> = cs.collect();
    first.is_uppercase()
        && rest.len() <= 30
        && rest
            .iter()
            .all(|c| c.is_alphabetic() || *c == '\'' || *c == '-')
        && rest
            .iter()
            .filter(|c| c.is_alphabetic())
            .any(|c| c.is_lowercase())
}

/// A whole value that is a person's name: one to four name-shaped words (particles such as
/// `de` or `van` between them), one of which is a first or last name from the lists, with a
/// first name first or a last name last when there are several.
pub fn is_person_name(v: &str) -> bool {
    let words: Vec<&str> = v.split_whitespace().collect();
    if words.is_empty() || words.len() > 5 {
        return false;
    }
    let core: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !PARTICLES.contains(w))
        .collect();
    if core.is_empty() || core.len() > 4 || !core.iter().all(|w| name_word(w)) {
        return false;
    }
    let l = &*LISTS;
    let first = |w: &str| l.first.contains(&fold(w));
    let last = |w: &str| l.last.contains(&fold(w));
    match core.as_slice() {
        [one] => first(one) || last(one),
        [f, .., z] => first(f) || last(z),
        [] => false,
    }
}

/// A whole value that is a street address: a house number, one or more words and a street
/// type (`12 Main Street`, `4 Cedar Lane, 02139`), a street type first (`Rue de la Paix 8`,
/// `Via Roma, 12`, `12 Rue de la Paix`), or a compound ending in one (`Bahnhofstraße 5`).
pub fn is_street_address(v: &str) -> bool {
    let l = &*LISTS;
    let words: Vec<String> = v
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| fold(w).trim_end_matches('.').to_string())
        .collect();
    if words.len() < 2 || words.len() > 14 {
        return false;
    }
    let number = |w: &str| {
        let d = w.chars().take_while(char::is_ascii_digit).count();
        (1..=5).contains(&d)
            && w.chars().skip(d).count() <= 1
            && w.chars().skip(d).all(char::is_alphabetic)
    };
    let word = |w: &str| {
        w.chars().count() >= 2
            && w.chars()
                .all(|c| c.is_alphabetic() || c == '\'' || c == '-')
    };
    let has_number = words.iter().any(|w| number(w));
    if !has_number {
        return false;
    }
    // number, words..., street type
    if number(&words[0]) {
        let mut seen_word = false;
        for w in &words[1..] {
            if l.street_after.contains(w.as_str()) && seen_word {
                return true;
            }
            if l.street_before.contains(w.as_str()) && !seen_word {
                // `12 Rue de la Paix`
                return words.len() >= 3;
            }
            if !word(w) {
                break;
            }
            seen_word = true;
        }
        return false;
    }
    // street type first, then words, then a number
    if l.street_before.contains(words[0].as_str()) {
        return words.iter().skip(1).take(6).any(|w| number(w))
            && words
                .iter()
                .skip(1)
                .take_while(|w| !number(w))
                .all(|w| word(w))
            && words.len() >= 3;
    }
    // a compound name ending in a street type, then a number
    if let Some(pos) = words.iter().position(|w| number(w)) {
        return (1..=4).contains(&pos)
            && words[..pos].iter().all(|w| word(w))
            && words[..pos].iter().any(|w| {
                l.street_after
                    .iter()
                    .any(|s| w.len() > s.len() + 2 && w.ends_with(s.as_str()))
                    || l.street_after.contains(w.as_str()) && pos >= 2
            });
    }
    false
}

/// A value that reads as a calendar date between 1900 and this year: `YYYY-MM-DD` (a
/// timestamp's date part too), `DD/MM/YYYY`, `MM/DD/YYYY` or `DD.MM.YYYY`.
pub fn is_birth_date_value(v: &str) -> bool {
    let v = v.trim();
    let this_year = current_year();
    let ok = |y: u32, m: u32, d: u32| {
        (1900..=this_year).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d)
    };
    let num = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.len() <= 4 && s.chars().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())?
    };
    let head: String = v.chars().take(10).collect();
    if head.len() == 10 && head.as_bytes()[4] == b'-' && head.as_bytes()[7] == b'-' {
        if let (Some(y), Some(m), Some(d)) = (num(&head[..4]), num(&head[5..7]), num(&head[8..10]))
        {
            return ok(y, m, d)
                && (v.len() == 10 || v.as_bytes()[10] == b' ' || v.as_bytes()[10] == b'T');
        }
    }
    for sep in ['/', '.'] {
        let parts: Vec<&str> = v.split(sep).collect();
        if let [a, b, y] = parts.as_slice() {
            if y.len() != 4 {
                continue;
            }
            if let (Some(a), Some(b), Some(y)) = (num(a), num(b), num(y)) {
                return ok(y, b, a) || ok(y, a, b);
            }
        }
    }
    false
}

fn current_year() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs as f64 / (365.2425 * 86400.0)) as u32
}

/// The detectors a whole value matches (birth dates aside: they need a name that says birth).
pub fn value_detectors(v: &str) -> Vec<Detector> {
    let v = v.trim();
    let mut out = Vec::new();
    if v.is_empty() || v.len() > 200 {
        return out;
    }
    if is_email(v) {
        out.push(Detector::Email);
        return out;
    }
    if is_ip(v) {
        out.push(Detector::IpAddress);
        return out;
    }
    if is_card(v) {
        out.push(Detector::CardNumber);
    }
    if is_iban(v) {
        out.push(Detector::Iban);
    }
    if national_id(v).is_some() {
        out.push(Detector::NationalId);
    }
    if out.is_empty() && is_phone(v) {
        out.push(Detector::Phone);
    }
    if out.is_empty() && is_street_address(v) {
        out.push(Detector::StreetAddress);
    }
    if out.is_empty() && is_person_name(v) {
        out.push(Detector::PersonName);
    }
    out
}

/// PII embedded in free text: e-mail addresses, E.164 phone numbers, IP addresses, card
/// numbers, IBANs and national identity numbers, each checked as a whole value once cut out
/// (so checksums apply). Returns each match with its detector.
pub fn embedded(text: &str) -> Vec<(Detector, String)> {
    let mut out = Vec::new();
    // A match must not be glued to letters or digits around it.
    let bounded = |s: usize, e: usize| {
        let before = text[..s].chars().next_back();
        let after = text[e..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric()) && !after.is_some_and(|c| c.is_alphanumeric())
    };
    let mut scan = |r: &LazyLock<Option<Regex>>, d: Detector, check: &dyn Fn(&str) -> bool| {
        if let Some(r) = r.as_ref() {
            for m in r.find_iter(text) {
                if bounded(m.start(), m.end()) && check(m.as_str()) {
                    out.push((d, m.as_str().to_string()));
                }
            }
        }
    };
    scan(&EMAIL_IN_TEXT, Detector::Email, &is_email);
    scan(&PHONE_IN_TEXT, Detector::Phone, &|s| {
        is_phone(s) && s.chars().filter(char::is_ascii_digit).count() >= 9
    });
    // Version numbers (`Chrome/120.0.0.0`, `v1.2.3.4`) are dotted quads too: an address in
    // text must not follow `/`, `.` or a `v`, and must not end in `.0`.
    scan(&IPV4_IN_TEXT, Detector::IpAddress, &|s| {
        is_ip(s) && !s.ends_with(".0")
    });
    scan(&IPV6_IN_TEXT, Detector::IpAddress, &|s| {
        is_ip(s) && s.split(':').filter(|g| !g.is_empty()).count() >= 3
    });
    scan(&CARD_IN_TEXT, Detector::CardNumber, &is_card);
    scan(&IBAN_IN_TEXT, Detector::Iban, &is_iban);
    scan(&NATIONAL_ID_IN_TEXT, Detector::NationalId, &|s| {
        national_id(s).is_some()
    });
    // Drop addresses right after a path or version marker.
    out.retain(|(d, tok)| {
        if *d != Detector::IpAddress {
            return true;
        }
        match text.find(tok.as_str()) {
            Some(i) => !text[..i].ends_with(['/', '.', 'v', 'V']),
            None => true,
        }
    });
    out
}

/// Lower-case words of an identifier: `contactEmail`, `contact_email` and `Contact-Email` all
/// give `["contact", "email"]`.
fn name_tokens(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What a column's (or JSON key's) name says it holds. The PII word must end the name
/// (`contact_email`, `mobile_phone`, `date_of_birth`), so `email_verified`, `phone_country_code`
/// or `address_type` say nothing.
// Long: one rule per detector, in priority order, each with its word lists inline (rustfmt puts
// one word a line); the rules share the name's tokens and read best as one ordered list.
pub fn name_hint(name: &str) -> Option<Detector> {
    let t = name_tokens(name);
    let joined = t.concat();
    let ends = |suffix: &[&str]| {
        t.len() >= suffix.len()
            && t[t.len() - suffix.len()..]
                .iter()
                .zip(suffix)
                .all(|(a, b)| a == b)
    };
    let last = t.last().map(String::as_str).unwrap_or("");
    // Address lines: `address_line1`, `address_line_2`, `street2`.
    let line_of_address = t.len() >= 2
        && t.iter().any(|w| w == "address" || w == "addr")
        && (last.starts_with("line") || last.chars().all(|c| c.is_ascii_digit()));
    if t.iter()
        .any(|w| ["birth", "birthdate", "birthday", "dob", "born"].contains(&w.as_str()))
        && !t.iter().any(|w| {
            ["place", "city", "country", "name", "weight", "certificate"].contains(&w.as_str())
        })
    {
        return Some(Detector::BirthDate);
    }
    if ["email", "mail", "emailaddress", "mailaddress"].contains(&last)
        || ends(&["email", "address"])
        || ends(&["e", "mail"])
        || ends(&["mail", "address"])
    {
        return Some(Detector::Email);
    }
    if ["ip", "ipaddress", "ipaddr", "ipv4", "ipv6"].contains(&last)
        || ends(&["ip", "address"])
        || ends(&["ip", "addr"])
        || ends(&["remote", "addr"])
        || ends(&["client", "addr"])
    {
        return Some(Detector::IpAddress);
    }
    if [
        "phone",
        "phonenumber",
        "mobile",
        "mobilephone",
        "cellphone",
        "telephone",
        "tel",
        "fax",
        "msisdn",
        "cell",
    ]
    .contains(&last)
        || ends(&["phone", "number"])
        || ends(&["phone", "no"])
        || ends(&["mobile", "number"])
        || ends(&["telephone", "number"])
    {
        return Some(Detector::Phone);
    }
    if ["iban"].contains(&last)
        || ends(&["bank", "account"])
        || ends(&["bank", "account", "number"])
    {
        return Some(Detector::Iban);
    }
    if ["cardnumber", "creditcard", "ccnumber", "pan", "ccnum"].contains(&last)
        || ends(&["card", "number"])
        || ends(&["credit", "card"])
        || ends(&["cc", "number"])
        || ends(&["card", "no"])
    {
        return Some(Detector::CardNumber);
    }
    if [
        "ssn",
        "nino",
        "dni",
        "nie",
        "nif",
        "passport",
        "passportnumber",
        "personnummer",
        "bsn",
        "nationalid",
        "taxid",
    ]
    .contains(&last)
        || ends(&["social", "security", "number"])
        || ends(&["national", "insurance", "number"])
        || ends(&["national", "id"])
        || ends(&["passport", "number"])
        || ends(&["passport", "no"])
        || ends(&["tax", "id"])
        || ends(&["driver", "license", "number"])
        || ends(&["drivers", "license", "number"])
        || ends(&["driving", "licence", "number"])
    {
        return Some(Detector::NationalId);
    }
    if ["address", "street", "streetaddress", "addressline", "addr"].contains(&last)
        || line_of_address
    {
        if t.iter().any(|w| {
            [
                "mac", "web", "url", "wallet", "contract", "memory", "bitcoin",
            ]
            .contains(&w.as_str())
        }) {
            return None;
        }
        return Some(Detector::StreetAddress);
    }
    let person = [
        "first",
        "last",
        "given",
        "family",
        "full",
        "middle",
        "maiden",
        "contact",
        "customer",
        "person",
        "patient",
        "employee",
        "recipient",
        "holder",
        "sur",
        "fore",
    ];
    if [
        "surname",
        "forename",
        "firstname",
        "lastname",
        "fullname",
        "givenname",
        "familyname",
        "maidenname",
        "middlename",
    ]
    .contains(&joined.as_str())
        || [
            "surname",
            "forename",
            "firstname",
            "lastname",
            "fullname",
            "givenname",
            "familyname",
        ]
        .contains(&last)
        || (last == "name" && t.len() >= 2 && person.contains(&t[t.len() - 2].as_str()))
    {
        return Some(Detector::PersonName);
    }
    None
}

/// Whether a column of this type can hold what the detector finds (a `phone_verified boolean`
/// holds no phone number).
pub fn type_can_hold(d: Detector, ty: &ColType) -> bool {
    let text = ty.category == 'S';
    match d {
        Detector::BirthDate => {
            text || matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz")
        }
        Detector::IpAddress => text || matches!(ty.base.as_str(), "inet" | "cidr"),
        Detector::CardNumber | Detector::Phone => {
            text || matches!(ty.base.as_str(), "int8" | "numeric")
        }
        _ => text,
    }
}

// ---------------------------------------------------------------------------------------------
// Masked examples (never a sampled value)
// ---------------------------------------------------------------------------------------------

/// A masked example of a matched value: `j***@example.com` for e-mails, `J*** S***` for names,
/// `****67` for phone numbers, and otherwise the value's shape (letters as `x`/`X`, digits as
/// `#`), at most 24 characters.
pub fn masked_example(d: Detector, v: &str) -> String {
    let v = v.trim();
    match d {
        Detector::Email => match v.rsplit_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".into(),
        },
        Detector::PersonName => v
            .split_whitespace()
            .map(|w| {
                if PARTICLES.contains(&w) {
                    w.to_string()
                } else {
                    format!("{}***", w.chars().take(1).collect::<String>())
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Detector::Phone => {
            let digits: Vec<char> = v.chars().filter(char::is_ascii_digit).collect();
            let tail: String = digits[digits.len().saturating_sub(2)..].iter().collect();
            format!("****{tail}")
        }
        _ => v
            .chars()
            .take(24)
            .map(|c| {
                if c.is_ascii_digit() {
                    '#'
                } else if c.is_uppercase() {
                    'X'
                } else if c.is_alphabetic() {
                    'x'
                } else {
                    c
                }
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tallies over a sample
// ---------------------------------------------------------------------------------------------

/// How a column's sampled values are read (columns of other types are not sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text: whole-value detectors, and free-text search when the whole value matches none.
    Text,
    /// json/jsonb: walked by key path; each string is read as `Text`.
    Json,
    /// date/timestamp, sampled only when the name says birth.
    Date,
    /// inet/cidr.
    Inet,
    /// int8/numeric: card numbers (and phone numbers when the name says phone).
    BigNum,
    /// Arrays as text: free-text search only.
    Array,
}

/// How a column of this type is sampled, if at all.
pub fn value_kind(ty: &ColType, hint: Option<Detector>) -> Option<ValueKind> {
    match ty.base.as_str() {
        "json" | "jsonb" => Some(ValueKind::Json),
        "inet" | "cidr" => Some(ValueKind::Inet),
        "date" | "timestamp" | "timestamptz" => {
            (hint == Some(Detector::BirthDate)).then_some(ValueKind::Date)
        }
        "int8" | "numeric" => Some(ValueKind::BigNum),
        _ if ty.category == 'S' => Some(ValueKind::Text),
        _ if ty.category == 'A' => Some(ValueKind::Array),
        _ => None,
    }
}

fn hash64(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Distinct values remembered per tally (enough for every threshold).
const MAX_DISTINCT: usize = 4096;

#[derive(Debug, Default)]
struct Hit {
    count: usize,
    distinct: HashSet<u64>,
    example: Option<String>,
}

/// Counts of one column (or one JSON path of a column) over a sample.
#[derive(Debug, Default)]
pub struct Tally {
    values: usize,
    distinct: HashSet<u64>,
    /// (detector, found inside free text) -> hits.
    hits: BTreeMap<(Detector, bool), Hit>,
}

/// One detector's verdict on one tally.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub detector: Detector,
    /// Found inside free text rather than as the whole value.
    pub free_text: bool,
    /// Only the name says so (nothing was sampled).
    pub by_name: bool,
    pub matched: usize,
    pub sampled: usize,
    pub example: Option<String>,
}

impl Tally {
    fn hit(&mut self, d: Detector, free_text: bool, v: &str) {
        let h = self.hits.entry((d, free_text)).or_default();
        h.count += 1;
        if h.distinct.len() < MAX_DISTINCT {
            h.distinct.insert(hash64(v));
        }
        if h.example.is_none() {
            h.example = Some(masked_example(d, v));
        }
    }

    /// Counts one non-null value.
    pub fn observe(&mut self, kind: ValueKind, v: &str, hint: Option<Detector>) {
        self.values += 1;
        if self.distinct.len() < MAX_DISTINCT {
            self.distinct.insert(hash64(v));
        }
        match kind {
            ValueKind::Text => {
                let ds = value_detectors(v);
                for d in &ds {
                    self.hit(*d, false, v);
                }
                if hint == Some(Detector::BirthDate) && is_birth_date_value(v) {
                    self.hit(Detector::BirthDate, false, v);
                }
                if hint == Some(Detector::Phone) && ds.is_empty() && bare_phone_digits(v) {
                    self.hit(Detector::Phone, false, v);
                }
                if ds.is_empty() {
                    self.embedded(v);
                }
            }
            ValueKind::Array => self.embedded(v),
            ValueKind::Json => {}
            ValueKind::Date => {
                if is_birth_date_value(v) {
                    self.hit(Detector::BirthDate, false, v);
                }
            }
            ValueKind::Inet => {
                if is_ip(v) {
                    self.hit(Detector::IpAddress, false, v);
                }
            }
            ValueKind::BigNum => {
                if is_card(v) {
                    self.hit(Detector::CardNumber, false, v);
                } else if hint == Some(Detector::Phone) && bare_phone_digits(v) {
                    self.hit(Detector::Phone, false, v);
                }
            }
        }
    }

    fn embedded(&mut self, v: &str) {
        let mut seen = HashSet::new();
        for (d, tok) in embedded(v) {
            if seen.insert(d) {
                self.hit(d, true, &tok);
            } else if let Some(h) = self.hits.get_mut(&(d, true)) {
                if h.distinct.len() < MAX_DISTINCT {
                    h.distinct.insert(hash64(&tok));
                }
            }
        }
    }

    /// The detectors that pass their thresholds (see [`Detector::threshold`]). Inside free
    /// text, a detector needs two values and two distinct matches (a constant such as the
    /// company's own support address in every row is not a customer's). With no value
    /// sampled, a name that says PII is a finding of its own.
    pub fn findings(&self, hint: Option<Detector>) -> Vec<Found> {
        let mut out = Vec::new();
        let total_distinct = self.distinct.len().max(1);
        for ((d, free), h) in &self.hits {
            if *free {
                continue;
            }
            let hinted = hint == Some(*d);
            if *d == Detector::BirthDate && !hinted {
                continue;
            }
            let (share, min_distinct) = d.threshold(hinted);
            // Variety is asked of samples of mostly distinct values only as much as they have
            // (a three-row table); a sample repeating a few values must show it in full.
            let min_distinct = if total_distinct * 2 > self.values {
                min_distinct.min(total_distinct)
            } else {
                min_distinct
            };
            if h.count as f64 >= share * self.values as f64 && h.distinct.len() >= min_distinct {
                out.push(Found {
                    detector: *d,
                    free_text: false,
                    by_name: false,
                    matched: h.count,
                    sampled: self.values,
                    example: h.example.clone(),
                });
            }
        }
        for ((d, free), h) in &self.hits {
            if *free
                && h.count >= 2
                && h.distinct.len() >= 2
                && !out.iter().any(|f| f.detector == *d)
            {
                out.push(Found {
                    detector: *d,
                    free_text: true,
                    by_name: false,
                    matched: h.count,
                    sampled: self.values,
                    example: h.example.clone(),
                });
            }
        }
        if self.values == 0 {
            if let Some(d) = hint {
                out.push(Found {
                    detector: d,
                    free_text: false,
                    by_name: true,
                    matched: 0,
                    sampled: 0,
                    example: None,
                });
            }
        }
        out
    }
}

/// 8 to 15 digits and nothing else but spaces and dashes (a phone number stored without `+`,
/// counted only where the name says phone).
fn bare_phone_digits(v: &str) -> bool {
    let v = v.trim();
    let n = v.chars().filter(char::is_ascii_digit).count();
    (8..=15).contains(&n)
        && v.chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
}

/// One key of a concrete JSON path; `Any` stands for a key that is itself data (digits, a
/// date, an e-mail address...): such keys are never printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKey {
    Key(String),
    Any,
}

fn path_key(k: &str) -> PathKey {
    let data_like = k.len() > 64
        || !k.chars().any(char::is_alphabetic)
        || !value_detectors(k).is_empty()
        || k.chars().filter(char::is_ascii_digit).count() >= 6;
    if data_like {
        PathKey::Any
    } else {
        PathKey::Key(k.to_string())
    }
}

/// The path in policy syntax: `$.billing.name`, `$."odd key"`, `$.*.phone`.
pub fn format_path(keys: &[PathKey]) -> String {
    let mut s = String::from("$");
    for k in keys {
        match k {
            PathKey::Any => s.push_str(".*"),
            PathKey::Key(k)
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                s.push('.');
                s.push_str(k);
            }
            PathKey::Key(k) => {
                s.push_str(".\"");
                for c in k.chars() {
                    if c == '"' || c == '\\' {
                        s.push('\\');
                    }
                    s.push(c);
                }
                s.push('"');
            }
        }
    }
    s
}

/// Most distinct paths kept per JSON column (documents keyed by data stop adding paths).
const MAX_PATHS: usize = 2000;

/// Tallies every scalar of a JSON document at its path (array elements share the array's
/// path, as in policies).
pub fn walk_json(
    v: &serde_json::Value,
    path: &mut Vec<PathKey>,
    out: &mut BTreeMap<Vec<PathKey>, Tally>,
) {
    use serde_json::Value;
    if path.len() > 32 {
        return;
    }
    let mut leaf = |kind: ValueKind, s: &str, path: &Vec<PathKey>| {
        if !out.contains_key(path) && out.len() >= MAX_PATHS {
            return;
        }
        let hint = match path.last() {
            Some(PathKey::Key(k)) => name_hint(k),
            _ => None,
        };
        out.entry(path.clone()).or_default().observe(kind, s, hint);
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                path.push(path_key(k));
                walk_json(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for x in a {
                walk_json(x, path, out);
            }
        }
        Value::String(s) => leaf(ValueKind::Text, s, path),
        Value::Number(n) => {
            let s = n.to_string();
            if s.chars().all(|c| c.is_ascii_digit()) {
                leaf(ValueKind::BigNum, &s, path);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage by the policy
// ---------------------------------------------------------------------------------------------

fn rule_matches(segs: &[PathSeg], keys: &[PathKey]) -> bool {
    match segs.split_first() {
        None => keys.is_empty(),
        Some((PathSeg::AnyDepth, rest)) => (0..=keys.len()).any(|i| rule_matches(rest, &keys[i..])),
        Some((PathSeg::AnyKey, rest)) => !keys.is_empty() && rule_matches(rest, &keys[1..]),
        Some((PathSeg::Key(k), rest)) => {
            matches!(keys.first(), Some(PathKey::Key(x)) if x == k)
                && rule_matches(rest, &keys[1..])
        }
    }
}

fn strictness(m: &Mask) -> u8 {
    match m {
        Mask::Null => 6,
        Mask::Redact => 5,
        Mask::Constant(_) => 4,
        Mask::Hash => 3,
        Mask::Email => 2,
        _ => 1,
    }
}

/// The mask a JSON mask gives the node at `keys` and what gave it (the rule's path or
/// `default`); `None` when it is kept. Mirrors the policy semantics: a node takes the mask of
/// the deepest rule matching it or an ancestor (the strictest when several match one node),
/// else the default.
pub fn json_effective<'a>(j: &'a JsonMask, keys: &[PathKey]) -> Option<(&'a Mask, String)> {
    let mut eff: Option<(&Mask, String)> = j.default.as_deref().map(|m| (m, "default".into()));
    for n in 0..=keys.len() {
        let matched: Vec<_> = j
            .rules
            .iter()
            .filter(|r| rule_matches(&r.segments, &keys[..n]))
            .collect();
        if matched.is_empty() {
            continue;
        }
        eff = matched
            .iter()
            .filter_map(|r| r.mask.as_deref().map(|m| (m, r.path.clone())))
            .max_by_key(|(m, _)| strictness(m));
    }
    eff
}

/// The policy entry for a relation: its own, or its nearest ancestor's (partitions and
/// inheritance children are protected by their parent's entry).
pub fn table_policy<'a>(
    pol: Option<&'a DatabasePolicy>,
    cat: &Catalog,
    oid: u32,
) -> Option<&'a policy::TablePolicy> {
    let pol = pol?;
    let mut queue = vec![oid];
    let mut seen = HashSet::new();
    while let Some(o) = queue.pop() {
        if !seen.insert(o) {
            continue;
        }
        if let Some(r) = cat.relations.get(&o) {
            if let Some(t) = pol.table(&r.schema, &r.name) {
                return Some(t);
            }
        }
        queue.extend(cat.parents.get(&o).into_iter().flatten());
    }
    None
}

/// What [`covered_by`] says of a column its table's `privacy_by_default` masks.
pub const BY_DEFAULT: &str = "masked by privacy_by_default";

/// How the policy covers a column or a JSON path of it: `email`, `json $.billing.name = hash`,
/// [`BY_DEFAULT`].
pub fn covered_by(
    tp: Option<&policy::TablePolicy>,
    column: &str,
    path: Option<&[PathKey]>,
) -> Option<String> {
    let tp = tp?;
    if tp.masked_by_default(column) {
        return Some(BY_DEFAULT.into());
    }
    let cp = tp.columns.get(column)?;
    match (&cp.mask, path) {
        (Mask::Json(j), Some(keys)) => {
            json_effective(j, keys).map(|(m, by)| format!("json {by} = {}", m.kind()))
        }
        (m, _) => Some(m.kind().to_string()),
    }
}

/// `check`: columns whose name says PII (in a type that can hold it) that no policy entry
/// covers, as `schema.table.column looks like ...` lines.
pub fn name_warnings(pol: &DatabasePolicy, cat: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    let mut rels: Vec<_> = cat
        .relations
        .values()
        .filter(|r| matches!(r.kind, 'r' | 'p' | 'm' | 'f') && !system_schema(&r.schema))
        .collect();
    rels.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    for r in rels {
        let tp = table_policy(Some(pol), cat, r.oid);
        for c in &r.columns {
            let Some(d) = name_hint(&c.name) else {
                continue;
            };
            if !type_can_hold(d, &c.ty) || covered_by(tp, &c.name, None).is_some() {
                continue;
            }
            out.push(format!(
                "{}.{}.{} looks like {} (by its name) and no policy entry masks it; `pgredact scan` checks its values",
                r.schema,
                r.name,
                c.name,
                d.describe()
            ));
        }
    }
    out
}

/// Schemas scan and check leave alone: PostgreSQL's and pgredact's own.
fn system_schema(s: &str) -> bool {
    matches!(
        s,
        "pg_catalog" | "information_schema" | "pgredact" | "pgredact_admin" | "pgredact_mask"
    ) || s.starts_with("pg_toast")
        || s.starts_with("pg_temp_")
        || s.starts_with("pgredact_masked")
}

// ---------------------------------------------------------------------------------------------
// Sampling a database
// ---------------------------------------------------------------------------------------------

/// `pgredact scan` flags (see README, "Finding PII: pgredact scan").
#[derive(clap::Args, Debug, Clone)]
pub struct ScanArgs {
    /// The database to scan (default: the only database that has a policy file).
    #[arg(long)]
    pub database: Option<String>,
    /// Rows sampled per table, at most.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sample: u32,
    /// Print a complete policy file on standard output: the current policy plus one entry per
    /// unlisted finding (the report then goes to standard error).
    #[arg(long)]
    pub propose: bool,
    /// Exit with status 2 when a finding is not covered by the policy.
    #[arg(long)]
    pub fail_on_unlisted: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Seconds the sample of one table may take (its statement_timeout); 0 for no limit.
    #[arg(long, default_value_t = 10)]
    pub table_timeout_secs: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// One finding as reported. Never holds a sampled value.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `schema.table`
    pub table: String,
    pub column: String,
    /// The JSON path inside the column, in policy syntax.
    pub path: Option<String>,
    pub detector: Detector,
    /// `values` (whole values), `free_text` (inside longer text) or `name` (the column or key
    /// name alone: nothing was sampled).
    pub evidence: &'static str,
    pub matched: usize,
    pub sampled: usize,
    /// matched / sampled, 0 to 1 (absent for `name`).
    pub share: Option<f64>,
    /// A masked example (`j***@example.com`), never a sampled value.
    pub example: Option<String>,
    /// How the policy covers it (`email`, `json $.to = email`), absent when unlisted.
    pub covered_by: Option<String>,
    #[serde(skip)]
    ty: Option<ColType>,
}

impl Finding {
    fn location(&self) -> String {
        match &self.path {
            Some(p) => format!("{} {p}", self.column),
            None => self.column.clone(),
        }
    }
    fn what(&self) -> String {
        match self.evidence {
            "free_text" => format!("{} (in free text)", self.detector.name()),
            "name" => format!("{} (by name)", self.detector.name()),
            _ => self.detector.name().to_string(),
        }
    }
    fn share_text(&self) -> String {
        match self.share {
            Some(s) => format!("{}/{} ({:.0}%)", self.matched, self.sampled, s * 100.0),
            None => "nothing sampled".into(),
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub database: String,
    /// The policy file compared against, if the database has one.
    pub policy: Option<String>,
    pub sample: u32,
    pub tables_sampled: usize,
    pub findings: Vec<Finding>,
    /// Tables not sampled, with the reason (no privilege, timeout...).
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub table: String,
    pub reason: String,
}

impl Report {
    pub fn unlisted(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.covered_by.is_none())
            .count()
    }

    /// The plain-text table.
    pub fn text(&self) -> String {
        let mut s = format!(
            "pgredact scan: database {:?}, policy {}, at most {} rows per table\n",
            self.database,
            self.policy.as_deref().unwrap_or("(none)"),
            self.sample
        );
        s.push_str(&format!(
            "{} tables sampled, {} skipped\n\n",
            self.tables_sampled,
            self.skipped.len()
        ));
        let head = [
            "TABLE",
            "COLUMN / JSON PATH",
            "DETECTOR",
            "MATCHED",
            "EXAMPLE",
            "POLICY",
        ];
        let rows: Vec<[String; 6]> = self
            .findings
            .iter()
            .map(|f| {
                [
                    f.table.clone(),
                    f.location(),
                    f.what(),
                    f.share_text(),
                    f.example.clone().unwrap_or_else(|| "-".into()),
                    match &f.covered_by {
                        Some(c) if c == BY_DEFAULT => c.clone(),
                        Some(c) => format!("listed: {c}"),
                        None => "UNLISTED".into(),
                    },
                ]
            })
            .collect();
        if rows.is_empty() {
            s.push_str("No PII found.\n");
        } else {
            let mut w = head.map(|h| h.chars().count());
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut l = String::new();
                for (i, c) in cells.iter().enumerate() {
                    if i + 1 == cells.len() {
                        l.push_str(c);
                    } else {
                        l.push_str(&format!("{c:<width$}  ", width = w[i]));
                    }
                }
                l.trim_end().to_string() + "\n"
            };
            s.push_str(&line(head.to_vec()));
            for r in &rows {
                s.push_str(&line(r.iter().map(String::as_str).collect()));
            }
            s.push('\n');
            s.push_str(&format!(
                "{} findings: {} covered by the policy, {} unlisted.\n",
                self.findings.len(),
                self.findings.len() - self.unlisted(),
                self.unlisted()
            ));
        }
        for k in &self.skipped {
            s.push_str(&format!("skipped {}: {}\n", k.table, k.reason));
        }
        s
    }
}

struct Target {
    oid: u32,
    schema: String,
    name: String,
    kind: char,
    estimate: f64,
    readable: Vec<String>,
    all_columns: usize,
}

const TARGETS_SQL: &str = "\
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text, \
       CASE WHEN c.relkind = 'p' THEN \
            (SELECT coalesce(sum(greatest(pc.reltuples, 0)), 0)::float8 \
             FROM pg_catalog.pg_partition_tree(c.oid) t \
             JOIN pg_catalog.pg_class pc ON pc.oid = t.relid WHERE t.isleaf) \
       ELSE c.reltuples::float8 END, \
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               AND pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT') ORDER BY a.attnum), \
       (SELECT count(*) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::int8 \
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgredact', 'pgredact_admin', 'pgredact_mask') \
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
  AND n.nspname NOT LIKE 'pgredact\\_masked%' \
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                    AND d.objid = c.oid AND d.deptype = 'e') \
ORDER BY 2, 3";

/// The sampling clause for a relation of about `estimate` rows: none when the whole table fits
/// in the sample (or it was never analyzed: then `LIMIT` reads the first rows), `BERNOULLI`
/// (rows picked across the table) up to 100,000 rows, `SYSTEM` (whole pages, cheap on big
/// tables) above; oversampled so that `LIMIT` is usually filled, and `REPEATABLE` so two scans
/// of unchanged data agree.
pub fn sampling_clause(estimate: f64, sample: u32) -> String {
    let n = f64::from(sample);
    if estimate <= 0.0 || estimate <= n {
        return String::new();
    }
    let (method, factor) = if estimate <= 100_000.0 {
        ("BERNOULLI", 2.0)
    } else {
        ("SYSTEM", 4.0)
    };
    let pct = (100.0 * factor * n / estimate).clamp(0.0001, 100.0);
    format!(" TABLESAMPLE {method} ({pct:.4}) REPEATABLE (7)")
}

fn column_expr(col: &str, kind: ValueKind) -> String {
    let q = policy::quote_ident(col);
    match kind {
        ValueKind::Json => {
            format!("CASE WHEN pg_catalog.octet_length({q}::text) <= 65536 THEN {q}::text END")
        }
        ValueKind::Text | ValueKind::Array => format!("pg_catalog.left({q}::text, 4000)"),
        _ => format!("{q}::text"),
    }
}

/// A readable column of a sampled table: its name, type, what its name says it holds, and
/// how its values are sampled (`None`: not sampled).
type SampledCol = (String, ColType, Option<Detector>, Option<ValueKind>);

/// Samples one table and returns its findings (coverage not yet filled in).
async fn scan_table(
    client: &tokio_postgres::Client,
    cat: &Catalog,
    t: &Target,
    args: &ScanArgs,
) -> Result<Vec<Finding>, Error> {
    let Some(rel) = cat.relations.get(&t.oid) else {
        return Err(Error::NotInCatalog);
    };
    let table = format!("{}.{}", t.schema, t.name);
    let mut cols: Vec<SampledCol> = Vec::new();
    for c in &rel.columns {
        if !t.readable.contains(&c.name) {
            continue;
        }
        let hint = name_hint(&c.name).filter(|d| type_can_hold(*d, &c.ty));
        cols.push((c.name.clone(), c.ty.clone(), hint, value_kind(&c.ty, hint)));
    }
    let sampled: Vec<(usize, ValueKind)> = cols
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.3.map(|k| (i, k)))
        .collect();
    let mut tallies: Vec<Tally> = cols.iter().map(|_| Tally::default()).collect();
    let mut paths: Vec<BTreeMap<Vec<PathKey>, Tally>> =
        cols.iter().map(|_| BTreeMap::new()).collect();
    if !sampled.is_empty() {
        let exprs: Vec<String> = sampled
            .iter()
            .map(|(i, k)| column_expr(&cols[*i].0, *k))
            .collect();
        let msgs = sample_rows(client, t, args, &exprs).await?;
        for m in msgs {
            let tokio_postgres::SimpleQueryMessage::Row(r) = m else {
                continue;
            };
            for (j, (i, kind)) in sampled.iter().enumerate() {
                let Some(v) = r.get(j) else {
                    continue;
                };
                if *kind == ValueKind::Json {
                    // Unparsable text (cut at the size limit) counts as nothing.
                    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(v) {
                        walk_json(&doc, &mut Vec::new(), &mut paths[*i]);
                    }
                } else {
                    tallies[*i].observe(*kind, v, cols[*i].2);
                }
            }
        }
    }
    Ok(column_findings(&table, &cols, &tallies, &paths))
}

/// Runs the sample query of table `t` (the expressions `exprs`) in a read-only transaction
/// with the table's time limits.
async fn sample_rows(
    client: &tokio_postgres::Client,
    t: &Target,
    args: &ScanArgs,
    exprs: &[String],
) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, Error> {
    let only = if t.kind == 'r' { "ONLY " } else { "" };
    let sql = format!(
        "SELECT {} FROM {only}{}.{}{} LIMIT {}",
        exprs.join(", "),
        policy::quote_ident(&t.schema),
        policy::quote_ident(&t.name),
        sampling_clause(t.estimate, args.sample),
        args.sample
    );
    let begin = format!(
        "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
        args.table_timeout_secs.saturating_mul(1000),
        2000.min(args.table_timeout_secs.saturating_mul(1000).max(1))
    );
    client.batch_execute(&begin).await.map_err(Error::Sample)?;
    let res = client.simple_query(&sql).await;
    let end = if res.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let _ = client.batch_execute(end).await;
    res.map_err(Error::Sample)
}

/// The findings of a sampled table's columns (whole values, then JSON paths), from their
/// tallies.
fn column_findings(
    table: &str,
    cols: &[SampledCol],
    tallies: &[Tally],
    paths: &[BTreeMap<Vec<PathKey>, Tally>],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, (name, ty, hint, _)) in cols.iter().enumerate() {
        for f in tallies[i].findings(*hint) {
            out.push(finding(table, name, None, f, Some(ty.clone())));
        }
        for (keys, tally) in &paths[i] {
            let hint = match keys.last() {
                Some(PathKey::Key(k)) => name_hint(k),
                _ => None,
            };
            for f in tally.findings(hint) {
                out.push(finding(table, name, Some(keys), f, None));
            }
        }
    }
    out
}

fn finding(
    table: &str,
    column: &str,
    keys: Option<&Vec<PathKey>>,
    f: Found,
    ty: Option<ColType>,
) -> Finding {
    Finding {
        table: table.to_string(),
        column: column.to_string(),
        path: keys.map(|k| format_path(k)),
        detector: f.detector,
        evidence: if f.by_name {
            "name"
        } else if f.free_text {
            "free_text"
        } else {
            "values"
        },
        matched: f.matched,
        sampled: f.sampled,
        share: (f.sampled > 0).then(|| f.matched as f64 / f.sampled as f64),
        example: f.example,
        covered_by: None,
        ty,
    }
}

/// SQLSTATE and message of a failed sample, without DETAIL (which could quote a value).
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => crate::tls::error_chain(e),
    }
}

/// The database a scan is for: `--database`, else the only one with a policy.
fn pick_database(set: &policy::PolicySet, asked: Option<&str>) -> Result<String, Error> {
    if let Some(d) = asked {
        return Ok(d.to_string());
    }
    let mut names: Vec<&String> = set.by_database.keys().collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NoPolicyFiles),
        many => Err(Error::SeveralDatabases(
            many.iter().map(|s| s.to_string()).collect(),
        )),
    }
}

/// Scans the database: every table the control role can read, one sample each.
pub async fn scan(
    cfg: &Config,
    args: &ScanArgs,
) -> Result<(Report, Option<Arc<DatabasePolicy>>), Error> {
    let set = policy::load_dir(&cfg.policies_dir(), 1).map_err(Error::Policy)?;
    let database = pick_database(&set, args.database.as_deref())?;
    let pol = set.get(&database);
    let shared = crate::proxy::Shared::new(cfg.clone(), Default::default());
    let client = shared
        .control_connect(&database)
        .await
        .map_err(Error::Connect)?;
    let cat = Catalog::load(&client).await.map_err(Error::Catalog)?;
    let rows = client
        .query(TARGETS_SQL, &[])
        .await
        .map_err(Error::ListTables)?;
    let mut report = Report {
        database: database.clone(),
        policy: pol.as_ref().map(|p| p.file.display().to_string()),
        sample: args.sample,
        tables_sampled: 0,
        findings: Vec::new(),
        skipped: Vec::new(),
    };
    for r in rows {
        let t = target_from_row(&r);
        let table = format!("{}.{}", t.schema, t.name);
        // Columns it may not read are judged by their names alone.
        let mut found = unreadable_findings(&cat, &t, &table);
        if t.readable.is_empty() && t.all_columns > 0 {
            report.skipped.push(Skipped {
                table: table.clone(),
                reason: format!(
                    "the control role ({}) may read none of its columns (judged by column names only)",
                    cfg.upstream.user
                ),
            });
        } else {
            match scan_table(&client, &cat, &t, args).await {
                Ok(sampled) => {
                    report.tables_sampled += 1;
                    found.extend(sampled);
                    if t.readable.len() < t.all_columns {
                        report.skipped.push(Skipped {
                            table: table.clone(),
                            reason: format!(
                                "{} of its {} columns are not readable by the control role (judged by their names only)",
                                t.all_columns - t.readable.len(),
                                t.all_columns
                            ),
                        });
                    }
                }
                Err(e) => report.skipped.push(Skipped {
                    table: table.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        mark_covered(&mut found, table_policy(pol.as_deref(), &cat, t.oid));
        report.findings.extend(found);
    }
    Ok((report, pol))
}

/// A row of `TARGETS_SQL`.
fn target_from_row(r: &tokio_postgres::Row) -> Target {
    let kind: String = r.get(3);
    Target {
        oid: r.get::<_, i64>(0) as u32,
        schema: r.get(1),
        name: r.get(2),
        kind: kind.chars().next().unwrap_or('r'),
        estimate: r.get(4),
        readable: r.get(5),
        all_columns: r.get::<_, i64>(6) as usize,
    }
}

/// The findings, by name alone, for the columns of `t` the control role may not read.
fn unreadable_findings(cat: &Catalog, t: &Target, table: &str) -> Vec<Finding> {
    cat.relations
        .get(&t.oid)
        .map(|rel| {
            rel.columns
                .iter()
                .filter(|c| !t.readable.contains(&c.name))
                .filter_map(|c| {
                    let d = name_hint(&c.name).filter(|d| type_can_hold(*d, &c.ty))?;
                    let f = Tally::default().findings(Some(d)).into_iter().next()?;
                    Some(finding(table, &c.name, None, f, Some(c.ty.clone())))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Fills in which entry of the table's policy `tp` covers each finding.
fn mark_covered(found: &mut [Finding], tp: Option<&policy::TablePolicy>) {
    for f in found {
        let keys = f.path.as_ref().and_then(|p| {
            policy::parse_json_path(p).ok().map(|segs| {
                segs.into_iter()
                    .map(|s| match s {
                        PathSeg::Key(k) => PathKey::Key(k),
                        _ => PathKey::Any,
                    })
                    .collect::<Vec<_>>()
            })
        });
        f.covered_by = covered_by(tp, &f.column, keys.as_deref());
    }
}

use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// --propose
// ---------------------------------------------------------------------------------------------

/// Suggested masks, from the least to the most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Suggest {
    Partial,
    Email,
    Hash,
    Year,
    Redact,
    Null,
}

impl Suggest {
    fn mask(self) -> Mask {
        match self {
            Suggest::Partial => Mask::Partial {
                keep_first: 0,
                keep_last: 2,
                padding: "****".into(),
            },
            Suggest::Email => Mask::Email,
            Suggest::Hash => Mask::Hash,
            Suggest::Year => Mask::Year,
            Suggest::Redact => Mask::Redact,
            Suggest::Null => Mask::Null,
        }
    }
    fn value(self) -> toml_edit::Value {
        match self {
            Suggest::Partial => {
                let mut t = toml_edit::InlineTable::new();
                t.insert("mask", "partial".into());
                t.insert("keep_last", 2i64.into());
                toml_edit::Value::InlineTable(t)
            }
            other => other.mask().kind().into(),
        }
    }
}

/// The mask `--propose` suggests for a finding: e-mail → `email`; phone → `partial` keeping
/// the last two digits; names → `hash` (`redact` without a hash key); birth dates → `year` on
/// date columns; addresses and PII inside free text → `redact`; card numbers, IBANs, national
/// identity numbers and IP addresses → `null`. A mask the column type cannot take becomes
/// `null`.
fn suggest(f: &Finding, hash_ok: bool) -> Suggest {
    let s = if f.evidence == "free_text" {
        Suggest::Redact
    } else {
        match f.detector {
            Detector::Email => Suggest::Email,
            Detector::Phone => Suggest::Partial,
            Detector::PersonName if hash_ok => Suggest::Hash,
            Detector::PersonName | Detector::StreetAddress => Suggest::Redact,
            Detector::BirthDate if f.path.is_none() => Suggest::Year,
            _ => Suggest::Null,
        }
    };
    match &f.ty {
        Some(ty) if policy::mask_fits(&s.mask(), ty).is_err() => Suggest::Null,
        None if s == Suggest::Year => Suggest::Null,
        _ => s,
    }
}

fn add_comment(d: &mut toml_edit::Decor, note: &str) {
    let prefix = d
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string();
    d.set_prefix(format!("{prefix}{note}"));
}

fn comment(f: &Finding) -> String {
    let at = match &f.path {
        Some(p) => format!("{} {p}", f.column),
        None => f.column.clone(),
    };
    format!("# pgredact scan: {at}: {}, {}\n", f.what(), f.share_text())
}

/// A complete policy file: `original` (the current file's text, comments kept) plus one entry
/// per unlisted finding, each with a comment naming the detector and the share matched.
/// Checked by the policy parser before it is returned.
pub fn propose(
    original: Option<&str>,
    database: &str,
    findings: &[Finding],
    hash_ok: bool,
) -> Result<String, Error> {
    use toml_edit::{DocumentMut, Item, Table};
    let base = match original {
        Some(t) => t.to_string(),
        None => format!(
            "# Masking policy for database {database:?}, proposed by `pgredact scan --propose`.\n# Members of unmasked_roles see raw data; every other role is masked.\ndatabase = {}\nunmasked_roles = []\n",
            toml_edit::Value::from(database)
        ),
    };
    let mut doc: DocumentMut = base.parse().map_err(Error::PolicyToml)?;
    let by_col = uncovered_by_column(findings);
    if by_col.is_empty() {
        return Ok(base);
    }
    if !doc.contains_key("tables") {
        let mut t = Table::new();
        t.set_implicit(true);
        doc.insert("tables", Item::Table(t));
    }
    let tables = doc
        .get_mut("tables")
        .and_then(Item::as_table_like_mut)
        .ok_or(Error::TablesNotATable)?;
    for ((schema, name), cols) in by_col {
        let key = proposed_table_key(tables, &schema, &name);
        let table = tables
            .get_mut(&key)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| Error::TableNotATable(key.clone()))?;
        if !table.contains_key("columns") {
            table.insert("columns", Item::Table(Table::new()));
        }
        let columns_inline = table.get("columns").is_some_and(Item::is_inline_table);
        let columns = table
            .get_mut("columns")
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| Error::ColumnsNotATable(key.clone()))?;
        for (col, fs) in cols {
            let note = propose_column(columns, &key, &col, &fs, hash_ok)?;
            if !note.is_empty() && !columns_inline {
                if let Some(mut k) = columns.key_mut(&col) {
                    add_comment(k.leaf_decor_mut(), &note);
                }
            }
        }
    }
    let out = doc.to_string();
    if let Err(reason) = policy::parse_policy(&out, std::path::Path::new("proposed policy")) {
        return Err(Error::InvalidProposal {
            reason: reason.to_string(),
            text: out,
        });
    }
    Ok(out)
}

/// The findings no policy entry covers, by (schema, table), then column.
#[allow(clippy::type_complexity)]
fn uncovered_by_column(
    findings: &[Finding],
) -> BTreeMap<(String, String), BTreeMap<String, Vec<&Finding>>> {
    let mut by_col: BTreeMap<(String, String), BTreeMap<String, Vec<&Finding>>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.covered_by.is_none()) {
        let (schema, name) = f.table.split_once('.').unwrap_or(("public", &f.table));
        by_col
            .entry((schema.to_string(), name.to_string()))
            .or_default()
            .entry(f.column.clone())
            .or_default()
            .push(f);
    }
    by_col
}

/// The key of table `schema.name` under `[tables]`: its existing entry's, else that of a new
/// entry (with an empty `columns` table) added for it.
fn proposed_table_key(tables: &mut dyn toml_edit::TableLike, schema: &str, name: &str) -> String {
    use toml_edit::{Item, Table};
    let existing = tables
        .iter()
        .map(|(k, _)| k.to_string())
        .find(|k| policy::split_qualified(k).ok() == Some((schema.to_string(), name.to_string())));
    if let Some(k) = existing {
        return k;
    }
    let simple = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let part = |s: &str| {
        if simple(s) {
            s.to_string()
        } else {
            policy::quote_ident(s)
        }
    };
    let k = format!("{}.{}", part(schema), part(name));
    let mut t = Table::new();
    let mut columns = Table::new();
    columns.set_dotted(true);
    // An explicit [table] header: the policy parser needs one (toml's spans do not
    // cover tables that exist only through their sub-tables).
    t.decor_mut().set_prefix(format!(
        "\n# pgredact scan: {schema}.{name} had no policy entry\n"
    ));
    t.insert("columns", Item::Table(columns));
    tables.insert(&k, Item::Table(t));
    k
}

/// Adds the mask suggested for column `col` of table `key` from its findings `fs`; returns
/// the comment lines still to be put on the column's entry.
fn propose_column(
    columns: &mut dyn toml_edit::TableLike,
    key: &str,
    col: &str,
    fs: &[&Finding],
    hash_ok: bool,
) -> Result<String, Error> {
    use toml_edit::Item;
    let whole: Vec<&&Finding> = fs.iter().filter(|f| f.path.is_none()).collect();
    let json: Vec<&&Finding> = fs.iter().filter(|f| f.path.is_some()).collect();
    let mut note = String::new();
    if !whole.is_empty() {
        let s = whole
            .iter()
            .map(|f| suggest(f, hash_ok))
            .max()
            .unwrap_or(Suggest::Null);
        for f in &whole {
            note.push_str(&comment(f));
        }
        columns.insert(col, Item::Value(s.value()));
    } else if !json.is_empty() {
        // path -> strictest suggestion
        let mut paths: BTreeMap<String, Suggest> = BTreeMap::new();
        for f in &json {
            note.push_str(&comment(f));
            if let Some(p) = &f.path {
                let s = suggest(f, hash_ok);
                let e = paths.entry(p.clone()).or_insert(s);
                *e = (*e).max(s);
            }
        }
        match columns.get_mut(col) {
            Some(item) => add_json_paths(item, key, col, &paths, &mut note)?,
            None => {
                let mut p = toml_edit::InlineTable::new();
                for (path, s) in &paths {
                    p.insert(path, s.value());
                }
                let mut m = toml_edit::InlineTable::new();
                m.insert("mask", "json".into());
                m.insert("default", "keep".into());
                m.insert("paths", toml_edit::Value::InlineTable(p));
                columns.insert(col, Item::Value(toml_edit::Value::InlineTable(m)));
            }
        }
    }
    Ok(note)
}

/// Adds the `paths` an existing json mask `item` (column `col` of table `key`) misses; on a
/// `[table]` entry, moves the comment lines `note` onto its `paths` key.
fn add_json_paths(
    item: &mut toml_edit::Item,
    key: &str,
    col: &str,
    paths: &BTreeMap<String, Suggest>,
    note: &mut String,
) -> Result<(), Error> {
    use toml_edit::Item;
    let entry_is_table = item.is_table();
    let entry = item
        .as_table_like_mut()
        .ok_or_else(|| Error::NotAJsonMask {
            table: key.to_string(),
            column: col.to_string(),
        })?;
    if !entry.contains_key("paths") {
        entry.insert(
            "paths",
            Item::Value(toml_edit::Value::InlineTable(Default::default())),
        );
    }
    let p = entry
        .get_mut("paths")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| Error::PathsNotATable {
            table: key.to_string(),
            column: col.to_string(),
        })?;
    for (path, s) in paths {
        p.insert(path, Item::Value(s.value()));
    }
    // Only a [table] may carry comments, not an inline one.
    if entry_is_table {
        if let Some(mut k) = entry.key_mut("paths") {
            add_comment(k.leaf_decor_mut(), note);
            note.clear();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

/// `pgredact scan`: exit 0 (done), 1 (could not scan), 2 (`--fail-on-unlisted` and a finding
/// the policy does not cover).
pub async fn run_cli(config: &std::path::Path, args: &ScanArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgredact: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (report, pol) = match scan(&cfg, args).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgredact: scan failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rendered = match args.format {
        Format::Text => report.text(),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("pgredact: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if args.propose {
        eprint!("{rendered}");
        let original = match &pol {
            Some(p) => match std::fs::read_to_string(&p.file) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("pgredact: {}: {e}", p.file.display());
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        match propose(
            original.as_deref(),
            &report.database,
            &report.findings,
            cfg.hash_key().is_some(),
        ) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("pgredact: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{rendered}");
    }
    if args.fail_on_unlisted && report.unlisted() > 0 {
        eprintln!(
            "pgredact: {} finding(s) not covered by the policy",
            report.unlisted()
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
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
        let t = "Call me at +44 20 7946 0958 or write to jane.doe@example.com; card 4111-1111-1111-1111, \
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

    fn f(
        table: &str,
        column: &str,
        path: Option<&str>,
        d: Detector,
        ty: Option<ColType>,
    ) -> Finding {
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
}
