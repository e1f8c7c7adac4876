//! Refusals: why a statement of a masked session is not run (always SQLSTATE 42501), and the
//! machine-readable kind of each (metrics, tests, the README's table).

/// The reason a statement was refused. Always SQLSTATE 42501 (insufficient_privilege).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    pub hint: Option<String>,
}

pub const REFUSAL_SQLSTATE: &str = "42501";

impl Refusal {
    pub(super) fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: format!("pgredact: {}", message.into()),
            hint: None,
        }
    }
    pub(super) fn hint(mut self, h: impl Into<String>) -> Refusal {
        self.hint = Some(h.into());
        self
    }
}

/// The category of a refusal. Each has a fixed label (the `reason` of the statements metric);
/// the labels are the ones the metric had when it derived them from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// Reading a PII column (or a whole row) where masking cannot apply: in writes, RETURNING *.
    PiiRead,
    /// Writing a PII column, or every column.
    PiiWrite,
    /// Functions, operators, casts and types that run user code, CALL.
    Function,
    /// Settings the masking depends on (SET, RESET ALL, DISCARD ALL, search_path, encoding).
    Setting,
    /// SET ROLE, SET SESSION AUTHORIZATION.
    Identity,
    /// COPY to or from files and programs, COPY of refused tables.
    Copy,
    /// EXPLAIN ANALYZE or COSTS of a statement that reads PII, nested EXPLAIN.
    Explain,
    /// LISTEN.
    Listen,
    /// Relations refused outright: statistics, pgredact's schemas, views over PII.
    CatalogObject,
    /// A name that could resolve to a protected relation other than the one it reads.
    AmbiguousName,
    /// Writing to a refused relation, or one whose triggers or rules may read PII.
    WriteTarget,
    /// A statement form pgredact does not analyse.
    Unsupported,
    /// A statement kind masked sessions may not run.
    StatementKind,
    /// The statement does not parse, or its parsed form does not read back identically.
    Unparsable,
    /// A prepared statement decided before a change that would now decide it differently.
    StalePrepared,
    /// A protocol message masked sessions may not send (FunctionCall).
    Protocol,
    /// The database fails the privilege check (the wall), so masked sessions are refused.
    WallBroken,
    /// pgredact cannot show that its catalog is current.
    CatalogUnavailable,
    /// None of the above (Unicode escapes, LOCK modes, system columns in writes, ...).
    Other,
}

impl RefusalKind {
    /// Every kind, in the order of the README's table.
    pub const ALL: [RefusalKind; 19] = [
        RefusalKind::PiiRead,
        RefusalKind::PiiWrite,
        RefusalKind::Function,
        RefusalKind::Setting,
        RefusalKind::Identity,
        RefusalKind::Copy,
        RefusalKind::Explain,
        RefusalKind::Listen,
        RefusalKind::CatalogObject,
        RefusalKind::AmbiguousName,
        RefusalKind::WriteTarget,
        RefusalKind::Unsupported,
        RefusalKind::StatementKind,
        RefusalKind::Unparsable,
        RefusalKind::StalePrepared,
        RefusalKind::Protocol,
        RefusalKind::WallBroken,
        RefusalKind::CatalogUnavailable,
        RefusalKind::Other,
    ];

    /// The metric label (`reason`).
    pub fn label(self) -> &'static str {
        match self {
            RefusalKind::PiiRead => "pii_read",
            RefusalKind::PiiWrite => "pii_write",
            RefusalKind::Function => "function",
            RefusalKind::Setting => "setting",
            RefusalKind::Identity => "identity",
            RefusalKind::Copy => "copy",
            RefusalKind::Explain => "explain",
            RefusalKind::Listen => "listen",
            RefusalKind::CatalogObject => "catalog_object",
            RefusalKind::AmbiguousName => "ambiguous_name",
            RefusalKind::WriteTarget => "write_target",
            RefusalKind::Unsupported => "unsupported",
            RefusalKind::StatementKind => "statement_kind",
            RefusalKind::Unparsable => "unparsable",
            RefusalKind::StalePrepared => "stale_prepared",
            RefusalKind::Protocol => "protocol",
            RefusalKind::WallBroken => "wall_broken",
            RefusalKind::CatalogUnavailable => "catalog_unavailable",
            RefusalKind::Other => "other",
        }
    }
}
