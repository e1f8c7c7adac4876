//! Process-wide metrics (Prometheus/OpenMetrics text through `prometheus-client`), served by the
//! admin server on `GET /metrics`.
//!
//! Every label has a bounded set of values: `kind` (masked, unmasked), `decision` (pass,
//! rewrite, refuse), `reason` (a fixed category, [`RefusalKind::label`]), `outcome`,
//! `connection`, and the database names and fingerprints of the policy files (bounded by the
//! policy directory). No label ever carries a role name, a client address, SQL text or a value.

use crate::rewrite::{Decision, Refusal, RefusalKind};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Kind {
    masked,
    unmasked,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DecisionLabel {
    pass,
    rewrite,
    refuse,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    pub decision: DecisionLabel,
    /// A refusal category for `refuse`, `none` otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `session` (a client session's own connection) or `control` (catalog, role lookups,
    /// freshness, LISTEN, readiness).
    pub connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabels {
    pub database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForgetLabels {
    pub database: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub database: String,
    pub fingerprint: String,
}

pub struct Metrics {
    registry: Registry,
    pub sessions_open: Family<KindLabels, Gauge>,
    pub sessions: Family<KindLabels, Counter>,
    pub statements: Family<StatementLabels, Counter>,
    pub rewrite_seconds: Histogram,
    pub rewrite_cache: Family<CacheLabels, Counter>,
    pub catalog_refreshes: Family<OutcomeLabels, Counter>,
    pub upstream_errors: Family<ConnectionLabels, Counter>,
    pub forget_jobs: Family<ForgetLabels, Gauge>,
    pub forget_query_errors: Counter,
    pub policy_version: Gauge,
    pub policy_info: Family<PolicyLabels, Gauge>,
    pub cancel_requests: Family<OutcomeLabels, Counter>,
    pub instances: Family<PolicyLabels, Gauge>,
    pub policy_disagreements: Family<DatabaseLabels, Gauge>,
}

impl Metrics {
    // Long: one registration per metric family, with its help text.
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("pgredact"),
            sessions_open: Family::default(),
            sessions: Family::default(),
            statements: Family::default(),
            // 5 µs .. ~80 ms: a cached decision never reaches the rewriter; a cold rewrite of a
            // masked lookup takes ~16 µs, a 3-table join ~100 µs.
            rewrite_seconds: Histogram::new(exponential_buckets(5e-6, 2.0, 15)),
            rewrite_cache: Family::default(),
            catalog_refreshes: Family::default(),
            upstream_errors: Family::default(),
            forget_jobs: Family::default(),
            forget_query_errors: Counter::default(),
            policy_version: Gauge::default(),
            policy_info: Family::default(),
            cancel_requests: Family::default(),
            instances: Family::default(),
            policy_disagreements: Family::default(),
        };
        // Label sets that exist from the start, so rates work from the first scrape.
        for kind in [Kind::masked, Kind::unmasked] {
            let l = KindLabels { kind };
            let _ = m.sessions_open.get_or_create(&l);
            let _ = m.sessions.get_or_create(&l);
        }
        for d in [DecisionLabel::pass, DecisionLabel::rewrite] {
            let _ = m.statements.get_or_create(&StatementLabels {
                decision: d,
                reason: "none",
            });
        }
        for result in ["hit", "miss"] {
            let _ = m.rewrite_cache.get_or_create(&CacheLabels { result });
        }
        for outcome in ["ok", "error"] {
            let _ = m
                .catalog_refreshes
                .get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["local", "unknown", "forwarded", "unroutable"] {
            let _ = m.cancel_requests.get_or_create(&OutcomeLabels { outcome });
        }
        for connection in ["session", "control"] {
            let _ = m
                .upstream_errors
                .get_or_create(&ConnectionLabels { connection });
        }
        let mut m = m;
        let r = &mut m.registry;
        r.register(
            "sessions_open",
            "Client sessions open now (after authentication), by kind",
            m.sessions_open.clone(),
        );
        r.register(
            "sessions",
            "Client sessions established, by kind",
            m.sessions.clone(),
        );
        r.register(
            "statements",
            "Statements of masked sessions decided (Query and Parse messages), by decision and refusal reason",
            m.statements.clone(),
        );
        r.register(
            "rewrite_duration_seconds",
            "Time the rewriter took for a statement not in the rewrite cache",
            m.rewrite_seconds.clone(),
        );
        r.register(
            "rewrite_cache_lookups",
            "Rewrite cache lookups of masked statements, by result (hit or miss)",
            m.rewrite_cache.clone(),
        );
        r.register(
            "catalog_refreshes",
            "Catalog reads (first load, DDL notifications, periodic refresh, policy change), by outcome",
            m.catalog_refreshes.clone(),
        );
        r.register(
            "upstream_errors",
            "Connections to PostgreSQL that could not be opened (refused, TLS, timeout, authentication of the control role), by connection",
            m.upstream_errors.clone(),
        );
        r.register(
            "forget_jobs",
            "Forget jobs in pgredact.forget_jobs, by database and state (read at scrape time, at most once a second)",
            m.forget_jobs.clone(),
        );
        r.register(
            "forget_jobs_query_errors",
            "Scrapes that could not read pgredact.forget_jobs",
            m.forget_query_errors.clone(),
        );
        r.register(
            "policy_version",
            "Version of the policy set in force (1 at start, +1 per reload that changed it)",
            m.policy_version.clone(),
        );
        r.register(
            "policy_info",
            "The policy in force per database, with its fingerprint (value always 1)",
            m.policy_info.clone(),
        );
        r.register(
            "cancel_requests",
            "Cancel requests received, by outcome: local (sent to this instance's backend), unknown (no session here holds the key), forwarded (to the peer whose id the key carries), unroutable (that peer is not listed or did not answer)",
            m.cancel_requests.clone(),
        );
        r.register(
            "instances",
            "Live pgredact instances serving a database (pgredact.instances, read at each catalog refresh), by the fingerprint of their policy",
            m.instances.clone(),
        );
        r.register(
            "policy_disagreements",
            "Live instances serving a database whose policy differs from this instance's (0 when all agree)",
            m.policy_disagreements.clone(),
        );
        m
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// The metrics in OpenMetrics text (ends with `# EOF`).
pub fn encode() -> String {
    let mut out = String::with_capacity(8 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &get().registry) {
        tracing::warn!("encoding the metrics failed: {e}");
    }
    out
}

/// An open session: counted in `sessions_open` until dropped.
pub struct SessionGuard(Kind);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        get()
            .sessions_open
            .get_or_create(&KindLabels { kind: self.0 })
            .dec();
    }
}

/// Counts an established session (open until the guard drops).
pub fn session_started(masked: bool) -> SessionGuard {
    let kind = if masked { Kind::masked } else { Kind::unmasked };
    let l = KindLabels { kind };
    get().sessions.get_or_create(&l).inc();
    get().sessions_open.get_or_create(&l).inc();
    SessionGuard(kind)
}

/// Counts the decision of a masked statement; a refusal is also logged (see [`refused`]).
pub fn statement(d: &Decision) {
    match d {
        Decision::Pass => count(DecisionLabel::pass, "none"),
        Decision::Rewrite(_) => count(DecisionLabel::rewrite, "none"),
        Decision::Refuse(r) => refused(r),
    }
}

/// Counts a refused statement and logs it at info level with its reason category, in the
/// session's span. Never the statement or the refusal's message: a parse error may quote a
/// literal of the statement, and literals can be PII.
pub fn refused(r: &Refusal) {
    let reason = r.kind.label();
    count(DecisionLabel::refuse, reason);
    tracing::info!(reason, "statement refused");
}

fn count(decision: DecisionLabel, reason: &'static str) {
    get()
        .statements
        .get_or_create(&StatementLabels { decision, reason })
        .inc();
}

pub fn upstream_error(connection: &'static str) {
    get()
        .upstream_errors
        .get_or_create(&ConnectionLabels { connection })
        .inc();
}

pub fn cancel_request(outcome: &'static str) {
    get()
        .cancel_requests
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// The registry's view of `database`: live instances by policy fingerprint, and how many of
/// them disagree with this instance.
pub fn instances(database: &str, by_fingerprint: &[(String, i64)], disagreeing: usize) {
    static SHOWN: LazyLock<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>> =
        LazyLock::new(Default::default);
    let m = get();
    let mut shown = crate::sync::lock(&SHOWN);
    for fingerprint in shown.remove(database).unwrap_or_default() {
        m.instances.remove(&PolicyLabels {
            database: database.to_string(),
            fingerprint,
        });
    }
    shown.insert(
        database.to_string(),
        by_fingerprint.iter().map(|(f, _)| f.clone()).collect(),
    );
    for (fingerprint, n) in by_fingerprint {
        m.instances
            .get_or_create(&PolicyLabels {
                database: database.to_string(),
                fingerprint: fingerprint.clone(),
            })
            .set(*n);
    }
    m.policy_disagreements
        .get_or_create(&DatabaseLabels {
            database: database.to_string(),
        })
        .set(i64::try_from(disagreeing).unwrap_or(i64::MAX));
}

pub fn catalog_refresh(ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    get()
        .catalog_refreshes
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

pub fn rewrite_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    get()
        .rewrite_cache
        .get_or_create(&CacheLabels { result })
        .inc();
}

/// Every `reason` a refusal can be counted under (`RefusalKind::label`), sorted.
pub fn refusal_reasons() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = RefusalKind::ALL.iter().map(|k| k.label()).collect();
    v.sort_unstable();
    v
}

/// The table that derived the `reason` from the message before refusals carried a kind; the
/// rewriter's tests check that each kind still gives the label this table gave.
#[cfg(test)]
pub(crate) const LEGACY_REASONS: &[(&[&str], &str)] = &[
    (&["prepared statement", "decided before"], "stale_prepared"),
    (&["masked sessions are refused"], "wall_broken"),
    (&["fails the privilege check"], "wall_broken"),
    (&["DDL watch"], "catalog_unavailable"),
    (&["catalog could not be re-read"], "catalog_unavailable"),
    (&["freshness check failed"], "catalog_unavailable"),
    (&["control-plane connection"], "catalog_unavailable"),
    (&["could not parse"], "unparsable"),
    (&["no longer parses"], "unparsable"),
    (&["does not read back identically"], "unparsable"),
    (&["cannot change its identity"], "identity"),
    (&["client_encoding"], "setting"),
    (&["standard_conforming_strings"], "setting"),
    (&["search_path"], "setting"),
    (&["RESET ALL"], "setting"),
    (&["DISCARD ALL"], "setting"),
    (&["only settings that cannot affect masking"], "setting"),
    (&["the masking reads SQL with"], "setting"),
    (&["FunctionCall protocol message"], "protocol"),
    (&["reading PII column"], "pii_read"),
    (&["RETURNING *"], "pii_read"),
    (&["reads every column", "including PII"], "pii_read"),
    (&["which holds PII"], "pii_write"),
    (&["COPY into PII column"], "pii_write"),
    (&["writes PII columns"], "pii_write"),
    (&["writes every column", "including PII"], "pii_write"),
    (&["UPDATE SET *"], "pii_write"),
    (&["EXPLAIN"], "explain"),
    (&["COPY"], "copy"),
    (&["function "], "function"),
    (&["OPERATOR("], "function"),
    (&["operator "], "function"),
    (&["casting to"], "function"),
    (&["column of type"], "function"),
    (&["CALL is not allowed"], "function"),
    (&["LISTEN is not allowed"], "listen"),
    (&["belongs to pgredact"], "catalog_object"),
    (&["is not accessible to masked roles"], "catalog_object"),
    (
        &["reading ", " is not allowed for masked roles"],
        "catalog_object",
    ),
    (&["shadows a protected relation"], "ambiguous_name"),
    (&["has the name of a protected relation"], "ambiguous_name"),
    (&["writing to "], "write_target"),
    (&["not supported"], "unsupported"),
    (&["unsupported"], "unsupported"),
    (&["position pgredact does not"], "unsupported"),
    (&["is not allowed for masked roles"], "statement_kind"),
];

/// The label `LEGACY_REASONS` gives a message.
#[cfg(test)]
pub(crate) fn legacy_reason(message: &str) -> &'static str {
    LEGACY_REASONS
        .iter()
        .find(|(pats, _)| pats.iter().all(|p| message.contains(p)))
        .map_or("other", |(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_are_bounded_and_never_the_message() {
        let cases = [
            ("pgredact: writing column email of public.customers, which holds PII (policy public.customers), is not allowed for masked roles", "pii_write"),
            ("pgredact: statement refused for a masked role: pgredact could not parse it, so it cannot prove it safe (sql parser error: Expected: end of statement, found: 'bob@example.com')", "unparsable"),
            ("pgredact: function public.leak is not allowed for masked roles: user-defined functions may read PII internally", "function"),
            ("pgredact: SET role is not allowed for masked roles: a masked session cannot change its identity", "identity"),
            ("pgredact: RETURNING * would return the PII columns of public.customers (email), which masked roles may not read", "pii_read"),
            ("pgredact: COPY TO a file or program is not allowed for masked roles", "copy"),
            ("pgredact: EXPLAIN ANALYZE of a statement that reads a table with PII is not allowed for masked roles: ...", "explain"),
            ("pgredact: schema pgredact belongs to pgredact and is not accessible to masked roles", "catalog_object"),
            ("pgredact: reading pg_stats is not allowed for masked roles: it holds data values", "catalog_object"),
            ("pgredact: the FunctionCall protocol message is not allowed for masked roles", "protocol"),
            ("pgredact: prepared statement \"s1\" was decided before a change to the schema, the policies or this session, and would now be masked differently", "stale_prepared"),
            ("pgredact: LISTEN is not allowed for masked roles: notification payloads from other sessions are not masked", "listen"),
            ("pgredact: DO is not allowed for masked roles: pgredact only lets through statements it can prove do not reveal PII", "statement_kind"),
            ("pgredact: something new", "other"),
        ];
        let all = refusal_reasons();
        for (msg, want) in cases {
            let got = legacy_reason(msg);
            assert_eq!(got, want, "{msg}");
            assert!(all.contains(&got));
        }
        assert!(all.len() < 30, "{all:?}");
        // The kinds' labels are exactly the labels the message table gave (dashboards unchanged).
        let mut legacy: Vec<&str> = LEGACY_REASONS.iter().map(|(_, r)| *r).collect();
        legacy.push("other");
        legacy.sort_unstable();
        legacy.dedup();
        assert_eq!(all, legacy);
    }

    #[test]
    fn encodes_openmetrics_text() {
        statement(&Decision::Pass);
        let _g = session_started(true);
        let text = encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE pgredact_statements counter"),
            "{text}"
        );
        assert!(
            text.contains("pgredact_sessions_open{kind=\"masked\"}"),
            "{text}"
        );
        assert!(
            text.contains("pgredact_rewrite_duration_seconds_bucket{le="),
            "{text}"
        );
    }
}
