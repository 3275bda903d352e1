//! The query API's section of the configuration file, `[query_api]`, and its validation.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::config::{parse_duration, positive};

/// `[query_api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryApiConfig {
    /// HTTP listen address.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Doppler whose live egress feeds `/api/v1/tail`, as `host:port`.
    #[serde(default = "default_tail_doppler")]
    pub doppler: String,
    /// Largest `limit` a search may ask for.
    #[serde(default = "default_max_search_limit")]
    pub max_search_limit: usize,
    /// Rows an SQL answer may hold before it is cut (the answer says so).
    #[serde(default = "default_max_sql_rows")]
    pub max_sql_rows: usize,
    /// Longest SQL text `/api/v1/sql` takes, in bytes; longer is refused with 413 before it is
    /// parsed. Parsing work is bounded by the text's length too (see `sluice_query_api::sql`).
    #[serde(default = "default_max_sql_bytes")]
    pub max_sql_bytes: usize,
    /// Indexers to search, as `host:port` of their search service. Empty means the index
    /// directory of this process's indexer (`indexer.dir`).
    #[serde(default)]
    pub indexers: Vec<String>,
    /// How long a search waits for each indexer; one that has not answered by then is named
    /// in the answer as unavailable.
    #[serde(default = "default_indexer_timeout")]
    pub indexer_timeout: String,
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_tail_doppler() -> String {
    "127.0.0.1:8082".to_owned()
}
fn default_max_search_limit() -> usize {
    10_000
}
fn default_max_sql_rows() -> usize {
    100_000
}
fn default_max_sql_bytes() -> usize {
    256 * 1024
}
fn default_indexer_timeout() -> String {
    "10s".to_owned()
}

/// Validated `[query_api]`.
#[derive(Debug, Clone)]
pub struct QueryApiConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Doppler for live tail.
    pub doppler: String,
    /// Largest search limit.
    pub max_search_limit: usize,
    /// Largest SQL answer.
    pub max_sql_rows: usize,
    /// Longest SQL text.
    pub max_sql_bytes: usize,
    /// Remote indexers' search services; empty means the local index directory.
    pub indexers: Vec<String>,
    /// Per-indexer search deadline.
    pub indexer_timeout: Duration,
}
impl RawQueryApiConfig {
    /// Checks every field.
    pub fn validate(self) -> Result<QueryApiConfig, SluiceError> {
        positive("query_api.max_search_limit", self.max_search_limit)?;
        positive("query_api.max_sql_rows", self.max_sql_rows)?;
        positive("query_api.max_sql_bytes", self.max_sql_bytes)?;
        Ok(QueryApiConfig {
            listen: self.listen,
            doppler: self.doppler,
            max_search_limit: self.max_search_limit,
            max_sql_rows: self.max_sql_rows,
            max_sql_bytes: self.max_sql_bytes,
            indexer_timeout: parse_duration("query_api.indexer_timeout", &self.indexer_timeout)?,
            indexers: self.indexers,
        })
    }
}

sluice_common::default_from_empty_table!(RawQueryApiConfig);
