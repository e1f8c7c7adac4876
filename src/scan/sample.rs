//! Sampling a database: the tables, the sampling clause, the report.

use super::*;

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
    pub(super) ty: Option<ColType>,
}

impl Finding {
    fn location(&self) -> String {
        match &self.path {
            Some(p) => format!("{} {p}", self.column),
            None => self.column.clone(),
        }
    }
    pub(super) fn what(&self) -> String {
        match self.evidence {
            "free_text" => format!("{} (in free text)", self.detector.name()),
            "name" => format!("{} (by name)", self.detector.name()),
            _ => self.detector.name().to_string(),
        }
    }
    pub(super) fn share_text(&self) -> String {
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

pub(super) struct Target {
    pub(super) oid: u32,
    pub(super) schema: String,
    pub(super) name: String,
    pub(super) kind: char,
    pub(super) estimate: f64,
    pub(super) readable: Vec<String>,
    pub(super) all_columns: usize,
}

pub(super) const TARGETS_SQL: &str = "\
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

pub(super) fn column_expr(col: &str, kind: ValueKind) -> String {
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
pub(super) async fn scan_table(
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
pub(super) async fn sample_rows(
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
pub(super) fn column_findings(
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

pub(super) fn finding(
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
pub(super) fn pg_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => crate::tls::error_chain(e),
    }
}

/// The database a scan is for: `--database`, else the only one with a policy.
pub(super) fn pick_database(set: &policy::PolicySet, asked: Option<&str>) -> Result<String, Error> {
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
pub(super) fn target_from_row(r: &tokio_postgres::Row) -> Target {
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
pub(super) fn unreadable_findings(cat: &Catalog, t: &Target, table: &str) -> Vec<Finding> {
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
pub(super) fn mark_covered(found: &mut [Finding], tp: Option<&policy::TablePolicy>) {
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
