//! The query API's section of the configuration file, `[query_api]`, and its validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Serve HTTPS with the node certificate (`[tls]`, or the local CA's); the `sluice`
    /// commands trust the data directory's CA by themselves.
    #[serde(default)]
    pub tls: bool,
    /// Serve plain HTTP on an address beyond loopback (refused at start otherwise).
    #[serde(default)]
    pub allow_plaintext: bool,
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
    /// `[query_api.tail]`: live tails.
    #[serde(default)]
    pub tail: RawTailConfig,
    /// `[query_api.sql]`: how SQL queries run.
    #[serde(default)]
    pub sql: RawSqlConfig,
    /// `[query_api.auth]`: who may call the API.
    #[serde(default)]
    pub auth: RawAuthConfig,
}

/// `[query_api.sql]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlConfig {
    /// Longest a query may run; past it, it is cancelled (503 before any row was sent).
    #[serde(default = "default_sql_timeout")]
    pub timeout: String,
    /// Memory one query may use; sorts, joins and aggregations spill to disk past it, and a
    /// query that needs more still fails with 413.
    #[serde(default = "default_sql_memory_bytes")]
    pub memory_bytes: usize,
    /// Queries running at once; more are refused with 429.
    #[serde(default = "default_sql_max_concurrent")]
    pub max_concurrent: usize,
    /// Threads of the runtime queries run on (apart from the API's own).
    #[serde(default = "default_sql_threads")]
    pub threads: usize,
}

fn default_sql_timeout() -> String {
    "60s".to_owned()
}
fn default_sql_memory_bytes() -> usize {
    1024 * 1024 * 1024
}
fn default_sql_max_concurrent() -> usize {
    4
}
fn default_sql_threads() -> usize {
    2
}

/// `[query_api.tail]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTailConfig {
    /// Tails open at once, in all; more are refused with 429.
    #[serde(default = "default_max_tails")]
    pub max_tails: usize,
    /// Tails open at once from one client address; more are refused with 429.
    #[serde(default = "default_max_tails_per_client")]
    pub max_tails_per_client: usize,
    /// Most history envelopes a tail sends (`tail=N` may ask for up to this many; `since=`
    /// sends the newest this many and says so when more matched).
    #[serde(default = "default_max_history")]
    pub max_history: usize,
    /// How often an idle tail sends a heartbeat with its cursor.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: String,
    /// Events queued between a tail's bus reader and its client; past it the reader waits
    /// (and falls behind on the bus, which the ingest path never notices).
    #[serde(default = "default_queue_events")]
    pub queue_events: usize,
    /// Records the shared reader of the live edge keeps (decoded, in memory: at most this
    /// many times `bus.max_record_bytes`, and typically 100 KiB each) for tails a little
    /// behind; a tail further behind reads the bus on its own until it catches up.
    #[serde(default = "default_hub_records")]
    pub hub_records: usize,
}

/// `[query_api.auth]`: API tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthConfig {
    /// Require a bearer token (`sluice tokens create`) on every route but `/healthz`.
    #[serde(default)]
    pub enabled: bool,
    /// The token file; `<data_dir>/auth/tokens.json` by default.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Requests each token may make per second, on average (a token bucket); past it, 429.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Requests a token may make at once above that rate.
    #[serde(default = "default_request_burst")]
    pub request_burst: u32,
}

fn default_requests_per_second() -> f64 {
    100.0
}
fn default_request_burst() -> u32 {
    200
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_tails() -> usize {
    256
}
fn default_max_tails_per_client() -> usize {
    32
}
fn default_max_history() -> usize {
    100_000
}
fn default_heartbeat() -> String {
    "10s".to_owned()
}
fn default_queue_events() -> usize {
    1024
}
fn default_hub_records() -> usize {
    256
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
    /// Whether it serves HTTPS.
    pub tls: bool,
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
    /// Live tails' limits.
    pub tail: crate::tail::TailLimits,
    /// SQL's limits.
    pub sql: crate::sql::engine::EngineLimits,
    /// The token file every request is checked against, when tokens are required.
    pub tokens_file: Option<PathBuf>,
    /// Each token's request rate: (per second, burst).
    pub request_rate: (f64, u32),
}
impl RawQueryApiConfig {
    /// Checks every field.
    pub fn validate(self, data_dir: &Path) -> Result<QueryApiConfig, SluiceError> {
        sluice_common::config::check_plaintext(
            "query_api",
            "listen",
            self.listen,
            self.tls,
            self.allow_plaintext,
        )?;
        positive("query_api.max_search_limit", self.max_search_limit)?;
        if !(self.auth.requests_per_second > 0.0 && self.auth.requests_per_second.is_finite()) {
            return Err(SluiceError::invalid(
                "query_api.auth.requests_per_second: must be a number above 0",
            ));
        }
        positive(
            "query_api.auth.request_burst",
            self.auth.request_burst as usize,
        )?;
        positive("query_api.max_sql_rows", self.max_sql_rows)?;
        positive("query_api.max_sql_bytes", self.max_sql_bytes)?;
        positive("query_api.tail.max_tails", self.tail.max_tails)?;
        positive(
            "query_api.tail.max_tails_per_client",
            self.tail.max_tails_per_client,
        )?;
        positive("query_api.tail.max_history", self.tail.max_history)?;
        positive("query_api.tail.queue_events", self.tail.queue_events)?;
        positive("query_api.tail.hub_records", self.tail.hub_records)?;
        let heartbeat = parse_duration("query_api.tail.heartbeat", &self.tail.heartbeat)?;
        if heartbeat < Duration::from_millis(100) {
            return Err(SluiceError::invalid(format!(
                "query_api.tail.heartbeat: {:?} is below 100ms",
                self.tail.heartbeat
            )));
        }
        positive("query_api.sql.max_concurrent", self.sql.max_concurrent)?;
        positive("query_api.sql.threads", self.sql.threads)?;
        if self.sql.memory_bytes < 16 * 1024 * 1024 {
            return Err(SluiceError::invalid(
                "query_api.sql.memory_bytes: must be at least 16777216 (16 MiB)",
            ));
        }
        let sql_timeout = parse_duration("query_api.sql.timeout", &self.sql.timeout)?;
        if sql_timeout < Duration::from_millis(100) {
            return Err(SluiceError::invalid(format!(
                "query_api.sql.timeout: {:?} is below 100ms",
                self.sql.timeout
            )));
        }
        Ok(QueryApiConfig {
            listen: self.listen,
            tls: self.tls,
            max_search_limit: self.max_search_limit,
            max_sql_rows: self.max_sql_rows,
            max_sql_bytes: self.max_sql_bytes,
            indexer_timeout: parse_duration("query_api.indexer_timeout", &self.indexer_timeout)?,
            indexers: self.indexers,
            tail: crate::tail::TailLimits {
                max_tails: self.tail.max_tails,
                max_tails_per_client: self.tail.max_tails_per_client,
                max_history: self.tail.max_history,
                heartbeat,
                queue_events: self.tail.queue_events,
                hub_records: self.tail.hub_records,
            },
            sql: crate::sql::engine::EngineLimits {
                max_bytes: self.max_sql_bytes,
                max_rows: self.max_sql_rows,
                timeout: sql_timeout,
                memory_bytes: self.sql.memory_bytes,
                max_concurrent: self.sql.max_concurrent,
                threads: self.sql.threads,
            },
            request_rate: (self.auth.requests_per_second, self.auth.request_burst),
            tokens_file: self.auth.enabled.then(|| {
                self.auth
                    .tokens_file
                    .unwrap_or_else(|| data_dir.join("auth").join("tokens.json"))
            }),
        })
    }
}

sluice_common::default_from_empty_table!(RawQueryApiConfig, RawSqlConfig);
sluice_common::default_from_empty_table!(RawTailConfig, RawAuthConfig);
