//! Read-back fidelity and lexical cross-checks: the text sent to PostgreSQL parses back to what
//! was checked, and every sensitive word in it stands in a position the checks analysed.

use super::audit::count_positions;
use super::parse::{parse_statements, words};
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use std::collections::HashMap;

impl State<'_> {
    /// Every sensitive word in the raw text must be explained by a name the parser saw in a
    /// relation or function position.
    pub(super) fn lexically_explained(&self, sql: &str) -> bool {
        let sens = &self.ctx.prot.sensitive_words;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for w in words(sql) {
            if sens.contains(&w) || self.extra_sensitive.contains(&w) {
                *counts.entry(w).or_default() += 1;
            }
        }
        counts.iter().all(|(w, n)| {
            self.analyzed.get(w).copied().unwrap_or(0) >= *n && !self.extra_sensitive.contains(w)
        })
    }

    /// In the text sent to PostgreSQL, every identifier that names a protected relation or a
    /// sensitive function must stand where the checks looked: a relation or function name, or an
    /// alias. Anything else (a name in a position this code does not analyse) is refused.
    pub(super) fn final_words_explained(
        &self,
        text: &str,
        stmts: &[Statement],
    ) -> Result<(), Refusal> {
        use sqlparser::tokenizer::{Token, Tokenizer};
        let toks = Tokenizer::new(&PostgreSqlDialect {}, text)
            .tokenize()
            .map_err(|e| Refusal::new(RefusalKind::Other, format!("statement refused: {e}")))?;
        let sens = &self.ctx.prot.sensitive_words;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for t in toks {
            if let Token::Word(w) = t {
                let v = if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                };
                let v = v.to_lowercase();
                if sens.contains(&v) {
                    *seen.entry(v).or_default() += 1;
                }
            }
        }
        if seen.is_empty() {
            return Ok(());
        }
        let mut explained: HashMap<String, usize> = HashMap::new();
        for s in stmts {
            count_positions(s, &mut explained);
        }
        for (w, n) in seen {
            if explained.get(&w).copied().unwrap_or(0) < n {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    format!(
                        "statement refused: it names {w} in a position pgredact does not analyse"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The parsed text of the client's statements must parse back to the same statements, and
    /// name nothing sensitive outside analysed positions.
    pub(super) fn read_back(&self, source: &str) -> Result<(), Refusal> {
        // PostgreSQL will run the displayed text: the client's part of it must read back as
        // exactly what was checked, and name nothing sensitive outside analysed positions.
        // (The masking view names put in are pgredact's own.)
        let original = parse_statements(source).map_err(|e| {
            Refusal::new(
                RefusalKind::Unparsable,
                format!("statement refused: it no longer parses ({e})"),
            )
        })?;
        let text0 = original
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(";\n");
        match parse_statements(&text0) {
            Ok(again) if again == original => {}
            _ => {
                return Err(Refusal::new(RefusalKind::Unparsable,
                    "statement refused: its parsed form does not read back identically, so pgredact cannot prove it safe",
                ))
            }
        }
        self.final_words_explained(&text0, &original)?;
        Ok(())
    }
}
