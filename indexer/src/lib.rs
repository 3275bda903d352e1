//! The indexer: consumes the bus into Tantivy indexes, one per UTC hour, and searches them.
//!
//! # Layout
//!
//! - [`schema`]: the document schema and the mapping from an envelope to a document.
//! - [`store`]: the partition directories (`<dir>/partitions/YYYY-MM-DDTHH`) and opening them.
//! - [`pipeline`]: consume → decode and index → commit and checkpoint, with a bounded channel
//!   between the async consumer and the indexing thread.
//! - [`search`]: query parsing and newest-first search over the partitions of a time range.
//! - [`history`]: the indexed envelopes of a range of bus positions, for live tails.
//! - [`patterns`]: the pattern templates the dopplers described, and matches counted by
//!   pattern.
//! - [`service`]: `sluice.v1.IndexSearch`, the search service for query APIs elsewhere.
//! - [`metrics`]: the indexer's counters.
//!
//! # Exactly once
//!
//! Each hour's index stores, in its Tantivy commit payload, the bus positions it had consumed
//! up to when it committed. After committing every hour it changed, the indexer writes the same
//! positions to `<dir>/checkpoint.json`. On start it resumes the bus from `checkpoint.json`
//! and, for each record, skips the hours whose payload says they already hold it. A crash
//! between two partition commits therefore neither loses nor duplicates a document, and the
//! bus is told to release records only after the checkpoint is written.

pub mod config;
pub mod histogram;
pub mod history;
pub mod metrics;
pub mod patterns;
pub mod pipeline;
pub mod schema;
pub mod scope;
pub mod search;
pub mod service;
pub mod store;

pub use pipeline::run;
pub use search::{SearchHit, SearchRequest, SearchResponse, Searcher};
