//! Detectors: pure functions of one value or one column name.

use super::*;

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
    pub(super) fn threshold(self, hinted: bool) -> (f64, usize) {
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
pub(super) fn re(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

pub(super) static EMAIL_IN_TEXT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)+",
    )
});
pub(super) static PHONE_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"\+[1-9][0-9 ().\-]{6,20}[0-9]"));
pub(super) static IPV4_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"));
pub(super) static IPV6_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"));
pub(super) static CARD_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[0-9](?:[ \-]?[0-9]){12,18}"));
pub(super) static IBAN_IN_TEXT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"));
pub(super) static NATIONAL_ID_IN_TEXT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]|[XYZ]?-?[0-9]{7,8}-?[A-Z]",
    )
});
pub(super) static NANP_PHONE: LazyLock<Option<Regex>> =
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
pub(super) fn card_scheme(digits: &str) -> bool {
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
pub(super) const IBAN_LENGTHS: &[(&str, usize)] = &[
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
pub(super) struct Lists {
    pub(super) first: HashSet<String>,
    pub(super) last: HashSet<String>,
    /// Street types written after the name (`Street`, `straße`, `laan`...), lower case.
    pub(super) street_after: HashSet<String>,
    /// Street types written before the name (`Rue`, `Via`, `Avenida`...), lower case.
    pub(super) street_before: HashSet<String>,
}

/// Words in the name lists that are at least as often ordinary words in a database (colours,
/// months, seasons, ranks, virtues...): a Title-case value such as `Green` or `May` is not
/// taken for a name.
pub(super) const NOT_NAMES: &[&str] = &[
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
pub(super) fn fold(s: &str) -> String {
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

pub(super) static LISTS: LazyLock<Lists> = LazyLock::new(|| {
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
pub(super) const PARTICLES: &[&str] = &[
    "de", "van", "von", "der", "den", "da", "di", "du", "del", "della", "la", "le", "dos", "das",
    "do", "bin", "al", "el", "ter", "ten", "zu",
];

/// A name-shaped word: a capital followed by lower-case letters (apostrophes and hyphens
/// inside: `O'Brien`, `Anne-Marie`).
pub(super) fn name_word(w: &str) -> bool {
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

pub(super) fn current_year() -> u32 {
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
pub(super) fn name_tokens(name: &str) -> Vec<String> {
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
