//! pgredact: a PostgreSQL wire-protocol proxy that masks PII for every role a policy does not exempt.
//!
//! Modules: `config` (pgredact.toml), `policy` (policy files, masks as data), `catalog` (live
//! schema snapshot), `rewrite` (the pure masking rewriter), `proxy` (listener, startup, SCRAM,
//! relay, lifecycle), `wire` (framing and the typed protocol messages pgredact reads or
//! builds), `wall` (the superuser-installed masking views and privilege checks),
//! `control` (the in-database control schema), `forget` (right to be forgotten), `admin` (HTTP
//! API), `metrics` (what `/metrics` serves), `tls`, `check`, `scan` (finding unlisted PII), `demo`, `pgcluster` (throwaway
//! clusters).
//!
//! Lints: no `unwrap()` outside tests (input from the network and files is never unwrapped);
//! CI runs clippy with `-D warnings`, so these are errors there.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![warn(rust_2018_idioms, unreachable_pub)]
pub mod admin;
pub mod audit;
pub mod catalog;
pub mod check;
pub mod config;
pub mod control;
pub mod demo;
pub mod forget;
pub mod metrics;
pub mod pgcluster;
pub mod policy;
pub mod proxy;
pub mod rewrite;
pub mod scan;
pub(crate) mod sync;
pub mod tls;
pub mod wall;
pub mod wire;
