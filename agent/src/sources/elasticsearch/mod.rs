//! An Elasticsearch-compatible `_bulk` endpoint over HTTP, for the shippers that speak it
//! (Elasticsearch and OpenSearch clients, rsyslog's `omelasticsearch`, Fluent Bit, Vector, …).
//! The mapping of documents onto envelopes is documented in [`bulk`].

pub mod bulk;
pub mod config;
mod source;
#[cfg(test)]
mod tests;

pub use source::ElasticsearchSource;
