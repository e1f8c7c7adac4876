//! Masked examples of what a detector found (never a sampled value).

use super::*;

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
