//! pgredact: a PostgreSQL wire-protocol proxy that masks PII for every role a policy does not exempt.
//!
//! Modules: `config` (pgredact.toml), `policy` (policy files, masks as SQL), `catalog` (live
//! schema snapshot), `rewrite` (the pure masking rewriter), `proxy` (listener, startup, relay),
//! `control` (the in-database control schema), `check`, `demo`, `pgcluster` (throwaway clusters).
pub mod admin;
pub mod audit;
pub mod catalog;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod forget;
pub mod pgcluster;
pub mod policy;
pub mod proxy;
pub mod rewrite;
pub mod tls;
pub mod wall;
