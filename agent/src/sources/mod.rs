//! Agent sources, one folder each with the same shape: `mod.rs` (declarations only),
//! `source.rs` (the server or reader), `tests.rs`.

pub mod elasticsearch;
pub mod loggregator;
pub mod syslog;
