//! Policy files (`policies/<name>.toml`, one per database): which roles see raw data,
//! which columns hold PII and how each is masked.
//!
//! `mask` (the mask kinds as data, and which types they fit), `model` (a loaded policy),
//! `file` (the file format: parsing with file:line errors, loading the directory), `sql`
//! (quoting and the keyed hash).

mod file;
mod mask;
mod model;
mod sql;
#[cfg(test)]
mod tests;

pub use file::*;
pub use mask::*;
pub use model::*;
pub use sql::*;
