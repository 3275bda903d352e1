//! Retention: consumes the bus into zstd Parquet on object storage and exposes it to
//! DataFusion SQL.
//!
//! # Layout
//!
//! - [`tables`]: the archive's tables (`logs`, `counters`, `gauges`, `timers`, `events`,
//!   `pattern_counts`), their Arrow schemas and the row buffers that turn envelopes into
//!   record batches.
//! - [`patterns`]: lines counted per pattern and hour as they are archived.
//! - [`archive`]: where data files go and how they are named.
//! - [`catalog`]: the truth about which files make up each table (a versioned log in the
//!   object store, fenced by conditional writes), the lease that makes one process its
//!   writer, and the tables as DataFusion sees them.
//! - [`pipeline`]: lease → consume → buffer → encode Parquet → upload → commit → checkpoint
//!   the bus.
//! - [`compaction`]: merges each hour's small files into large sorted ones, in the background.
//! - [`expiry`]: rows past their policy leave the archive (planned in the catalog, then collected).
//! - [`collector`]: deletes what the catalog no longer holds, after a grace period.
//! - [`store`]: opening the archive: a local directory or an S3 bucket under a prefix.
//! - [`metrics`]: retention's counters.
//!
//! # Exactly once
//!
//! A flush writes its files named after the catalog version it will commit, then commits
//! that version: the files and the bus positions after them, in one object written only if
//! it does not exist yet. Until then no query sees the files; if the process dies first, the
//! next writer resumes the bus from the positions of the last version, and the collector
//! deletes the files nobody committed.

pub mod archive;
pub mod catalog;
pub mod collector;
pub mod compaction;
pub mod config;
pub mod expiry;
pub mod metrics;
pub mod patterns;
pub mod pipeline;
pub mod store;
pub mod tables;

pub use pipeline::run;
