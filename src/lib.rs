//! pgredact: a PostgreSQL wire-protocol proxy that masks PII for every role a policy does not exempt.
pub mod config;
pub mod policy;
pub mod control;
pub mod catalog;
pub mod rewrite;
pub mod pgcluster;
