//! What a privacy request carries besides its IDs: the caller's request id (`external_id`),
//! the regulation and the deadline.

use super::ApiError;
use crate::forget::jobs::RequestInfo;

/// Days from receipt to the deadline, per regulation: GDPR art. 12(3) "one month" (30 days),
/// CCPA/CPRA 45 days.
pub(super) const REGULATIONS: [(&str, i32); 2] = [("gdpr", 30), ("ccpa", 45)];
/// The regulation of a request that names none.
pub(super) const DEFAULT_REGULATION: &str = "gdpr";
/// Longest `external_id`.
pub(super) const MAX_EXTERNAL_ID: usize = 200;

/// The request fields, as given (JSON members or query parameters).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Fields {
    pub external_id: Option<String>,
    pub regulation: Option<String>,
    pub deadline: Option<String>,
}

/// Checks the fields and turns them into what the job stores (the deadline literal is checked
/// by PostgreSQL when the job is created; [`deadline_literal`] only lets ISO 8601 through).
pub(super) fn request_info(f: &Fields) -> Result<RequestInfo, ApiError> {
    let external_id = match &f.external_id {
        None => None,
        Some(e) => {
            let e = e.trim();
            if e.is_empty() || e.len() > MAX_EXTERNAL_ID || e.chars().any(char::is_control) {
                return Err(ApiError::bad(format!(
                    "\"external_id\" must be 1 to {MAX_EXTERNAL_ID} characters without control characters"
                )));
            }
            Some(e.to_string())
        }
    };
    let regulation = f
        .regulation
        .as_deref()
        .map(|r| r.trim().to_ascii_lowercase())
        .unwrap_or_else(|| DEFAULT_REGULATION.to_string());
    if regulation.is_empty()
        || regulation.len() > 40
        || !regulation
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad(
            "\"regulation\" must be a short name such as gdpr or ccpa".to_string(),
        ));
    }
    let (deadline, deadline_days) = match &f.deadline {
        Some(d) => (Some(deadline_literal(d)?), None),
        None => match REGULATIONS.iter().find(|(r, _)| *r == regulation) {
            Some((_, days)) => (None, Some(*days)),
            None => {
                return Err(ApiError::bad(format!(
                    "regulation {regulation:?} has no default deadline: give \"deadline\" (ISO 8601), or use {}",
                    REGULATIONS
                        .iter()
                        .map(|(r, d)| format!("{r} ({d} days)"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )))
            }
        },
    };
    Ok(RequestInfo {
        external_id,
        regulation: Some(regulation),
        deadline,
        deadline_days,
        request_hash: None,
        callback_url: None,
    })
}

/// An ISO 8601 deadline as a `timestamptz` literal: a date means the end of that day in UTC; a
/// date and time needs its offset (`Z` or `+02:00`).
pub(super) fn deadline_literal(d: &str) -> Result<String, ApiError> {
    let d = d.trim();
    let date =
        regex::Regex::new(r"^\d{4}-\d{2}-\d{2}$").map_err(|e| ApiError::bad(e.to_string()))?;
    let datetime = regex::Regex::new(
        r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|z|[+-]\d{2}(:?\d{2})?)$",
    )
    .map_err(|e| ApiError::bad(e.to_string()))?;
    if date.is_match(d) {
        Ok(format!("{d}T23:59:59.999999Z"))
    } else if datetime.is_match(d) {
        Ok(d.to_string())
    } else {
        Err(ApiError::bad(format!(
            "\"deadline\" {d:?} is not an ISO 8601 date (2025-06-30) or date and time with its offset (2025-06-30T17:00:00Z)"
        )))
    }
}

/// An ISO 8601 instant for the `since` / `until` filters: a date means midnight UTC at its start.
pub(super) fn instant_literal(name: &str, d: &str) -> Result<String, ApiError> {
    let d = d.trim();
    let lit = deadline_literal(d).map_err(|_| {
        ApiError::bad(format!(
            "\"{name}\" {d:?} is not an ISO 8601 date (2025-06-30) or date and time with its offset (2025-06-30T17:00:00Z)"
        ))
    })?;
    Ok(match lit.strip_suffix("T23:59:59.999999Z") {
        Some(date) if date.len() == 10 => format!("{date}T00:00:00Z"),
        _ => lit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: Option<&str>, r: Option<&str>, d: Option<&str>) -> Fields {
        Fields {
            external_id: e.map(String::from),
            regulation: r.map(String::from),
            deadline: d.map(String::from),
        }
    }

    #[test]
    fn regulations_give_default_deadlines_and_dates_are_iso() {
        let i = request_info(&fields(Some(" req-1 "), None, None)).unwrap();
        assert_eq!(i.external_id.as_deref(), Some("req-1"));
        assert_eq!(i.regulation.as_deref(), Some("gdpr"));
        assert_eq!(i.deadline_days, Some(30));
        let i = request_info(&fields(None, Some("CCPA"), None)).unwrap();
        assert_eq!(
            (i.regulation.as_deref(), i.deadline_days),
            (Some("ccpa"), Some(45))
        );
        let i = request_info(&fields(None, Some("lgpd"), Some("2025-06-30"))).unwrap();
        assert_eq!(i.deadline.as_deref(), Some("2025-06-30T23:59:59.999999Z"));
        assert_eq!(i.deadline_days, None);
        assert!(request_info(&fields(None, Some("lgpd"), None)).is_err());
        for ok in [
            "2025-06-30T17:00:00Z",
            "2025-06-30T17:00+02:00",
            "2025-06-30 17:00:00.5-0500",
        ] {
            assert!(deadline_literal(ok).is_ok(), "{ok}");
        }
        for bad in [
            "2025-06-30T17:00:00",
            "30/06/2025",
            "tomorrow",
            "2025-06-30T17:00:00Z; DROP",
        ] {
            assert!(deadline_literal(bad).is_err(), "{bad}");
        }
        assert!(request_info(&fields(Some(""), None, None)).is_err());
        assert!(request_info(&fields(Some("a\nb"), None, None)).is_err());
        assert!(request_info(&fields(Some(&"x".repeat(201)), None, None)).is_err());
    }
}
