//! Retention: consumes the bus into zstd Parquet on object storage and exposes it to
//! DataFusion SQL.
//!
//! # Layout
//!
//! - [`tables`]: the archive's tables (`logs`, `counters`, `gauges`, `timers`, `events`,
//!   `pattern_counts`), their Arrow schemas and the row buffers that turn envelopes into
//!   record batches.
//! - [`patterns`]: lines counted per pattern and hour as they are archived.
//! - [`archive`]: paths, the commit log and checkpoint under `_sluice/retention/`, and recovery.
//! - [`pipeline`]: consume → buffer → encode Parquet → upload → commit → checkpoint the bus.
//! - [`store`]: opening the archive: a local directory or an S3 bucket under a prefix.
//! - [`catalog`]: registers the tables with a DataFusion session (hive partitions
//!   `date=YYYY-MM-DD/hour=HH`), and the `patterns` view.
//! - [`metrics`]: retention's counters.
//!
//! # Exactly once
//!
//! A flush writes its files named after the next commit number `N`
//! (`<table>/date=…/hour=…/<N>-<partition>-<first offset>.parquet`, with the bus positions in the
//! Parquet key-value metadata too), then writes commit record `N` and the checkpoint (`N` and
//! the bus positions after the flush). On start, retention deletes every data file whose commit
//! number is above the checkpoint's (the leftovers of a flush that crashed before committing)
//! and resumes the bus from the checkpoint's positions.

pub mod archive;
pub mod catalog;
pub mod config;
pub mod metrics;
pub mod patterns;
pub mod pipeline;
pub mod store;
pub mod tables;

pub use pipeline::run;
