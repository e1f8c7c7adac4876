//! Refusals: why a statement of a masked session is not run (always SQLSTATE 42501).

/// The reason a statement was refused. Always SQLSTATE 42501 (insufficient_privilege).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: Option<String>,
}

pub const REFUSAL_SQLSTATE: &str = "42501";

impl Refusal {
    pub(super) fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: format!("pgredact: {}", message.into()),
            hint: None,
        }
    }
    pub(super) fn hint(mut self, h: impl Into<String>) -> Refusal {
        self.hint = Some(h.into());
        self
    }
}
