//! The configuration file: one TOML format for every role, with defaults for everything.
//!
//! [`RawConfig`] is what serde reads (unknown keys are rejected, every field documented, every
//! default a named function); [`RawConfig::validate`] turns it into a [`Config`] with durations
//! parsed and paths resolved, or an error naming the field. Nothing invalid is silently fixed.
//! `config/sluice.example.toml` in the repository shows every key with its default, and a test
//! loads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::SluiceError;

/// The configuration file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Directory for every role's state (WAL, indexes, archive, certificates) unless a role's
    /// own setting says otherwise. Relative paths are relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Mutual TLS for the gRPC hops.
    #[serde(default)]
    pub tls: RawTlsConfig,
    /// The agent: Loggregator ingress and forwarding to dopplers.
    #[serde(default)]
    pub agent: RawAgentConfig,
    /// The doppler: fan-in from agents, append to the bus, live egress.
    #[serde(default)]
    pub doppler: RawDopplerConfig,
    /// The bus between dopplers and consumers.
    #[serde(default)]
    pub bus: RawBusConfig,
    /// The indexer: bus to Tantivy.
    #[serde(default)]
    pub indexer: RawIndexerConfig,
    /// Retention: bus to Parquet.
    #[serde(default)]
    pub retention: RawRetentionConfig,
    /// The HTTP query API.
    #[serde(default)]
    pub query_api: RawQueryApiConfig,
    /// The process's own metrics endpoint.
    #[serde(default)]
    pub telemetry: RawTelemetryConfig,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetryConfig {
    /// Serve `/metrics` (Prometheus text of every component in the process) and `/healthz` on
    /// this address. Unset: only the query API serves `/metrics`. Set it for each role that runs
    /// as its own process.
    pub listen: Option<SocketAddr>,
}

impl Default for RawConfig {
    fn default() -> RawConfig {
        // An empty document yields every default.
        toml::from_str("").expect("an empty configuration is valid")
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}

/// `[tls]`: where the certificates are. Leave all three unset to use (and on first start create)
/// a local CA in `<data_dir>/tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    /// PEM file of the CA that signs every node certificate.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of this node's certificate.
    pub cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    pub key: Option<PathBuf>,
    /// Name clients expect in servers' certificates.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    "localhost".to_owned()
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// Address of the Loggregator v2 ingress (gRPC, mTLS).
    #[serde(default = "default_agent_listen")]
    pub listen: SocketAddr,
    /// Dopplers to forward to, as `host:port`.
    #[serde(default = "default_dopplers")]
    pub dopplers: Vec<String>,
    /// A batch is sent once it holds this many envelopes.
    #[serde(default = "default_flush_envelopes")]
    pub flush_envelopes: usize,
    /// A batch is sent once adding the next envelope would take it past this many bytes
    /// (encoded), so a batch always fits the doppler's `max_message_bytes`.
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: usize,
    /// A batch is sent this long after its first envelope arrived, if not full before.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// Envelopes older than this (by their own timestamp) are stored at their arrival time,
    /// with the original in the tag `original_timestamp`, and counted.
    #[serde(default = "default_max_timestamp_age")]
    pub max_timestamp_age: String,
    /// Likewise for envelopes whose timestamp is more than this far in the future.
    #[serde(default = "default_max_timestamp_ahead")]
    pub max_timestamp_ahead: String,
    /// Largest accepted envelope, encoded, in bytes.
    #[serde(default = "default_max_envelope_bytes")]
    pub max_envelope_bytes: usize,
    /// Largest accepted gRPC message (an `EnvelopeBatch` holds many envelopes), in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Batches sent to dopplers concurrently.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_batches: usize,
    /// Envelopes accepted but not yet acknowledged by a doppler before ingress pushes back.
    #[serde(default = "default_max_pending_envelopes")]
    pub max_pending_envelopes: usize,
    /// How long a client's request may wait for room under the pending limits before what is
    /// left of it is refused with `RESOURCE_EXHAUSTED` (syslog over TCP and followed files
    /// wait as long as it takes: their senders are held back meanwhile).
    #[serde(default = "default_agent_pending_wait")]
    pub pending_wait: String,
    /// Bytes of envelopes accepted but not yet acknowledged before ingress pushes back (with
    /// `max_pending_envelopes`, whichever is reached first): the agent's memory bound while
    /// every doppler is away.
    #[serde(default = "default_agent_max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// The Elasticsearch `_bulk` source.
    #[serde(default)]
    pub elasticsearch: RawElasticsearchSourceConfig,
    /// The syslog source (RFC 5424 and RFC 3164 over TCP, UDP and TLS).
    #[serde(default)]
    pub syslog: RawSyslogSourceConfig,
    /// The host metrics source (CPU, load, memory, network, disks from `/proc`).
    #[serde(default)]
    pub host_metrics: RawHostMetricsSourceConfig,
    /// Scraping Prometheus text endpoints.
    #[serde(default)]
    pub prometheus: RawPrometheusSourceConfig,
    /// `[[agent.files]]`: files to follow.
    #[serde(default)]
    pub files: Vec<RawFileInput>,
    /// The OTLP source (logs and metrics over gRPC and HTTP/protobuf).
    #[serde(default)]
    pub otlp: RawOtlpSourceConfig,
}

/// `[agent.otlp]`: OTLP logs and metrics receivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlpSourceConfig {
    /// Serve it (every source is on unless turned off).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// OTLP/gRPC address (plaintext).
    #[serde(default = "default_otlp_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP address (protobuf).
    #[serde(default = "default_otlp_http_listen")]
    pub http_listen: SocketAddr,
    /// Resource attribute whose value becomes the source_id.
    #[serde(default = "default_source_id_attribute")]
    pub source_id_attribute: String,
    /// Quantiles estimated from explicit-bucket histograms, each a gauge `<name>.p<q>`.
    #[serde(default = "default_histogram_quantiles")]
    pub histogram_quantiles: Vec<f64>,
    /// Largest export accepted, in bytes (as sent and after decompression).
    #[serde(default = "default_otlp_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_otlp_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4317))
}
fn default_otlp_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4318))
}
fn default_source_id_attribute() -> String {
    "service.name".to_owned()
}
fn default_histogram_quantiles() -> Vec<f64> {
    vec![0.5, 0.9, 0.99]
}
fn default_otlp_max_message_bytes() -> usize {
    16 * 1024 * 1024
}

/// One `[[agent.files]]`: files to follow, by glob.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileInput {
    /// Globs (`/var/log/app/*.log`).
    pub paths: Vec<String>,
    /// source_id of their lines.
    pub source_id: String,
    /// A line matching this regular expression starts a record; others continue the one
    /// before (stack traces). Unset: every line is a record.
    #[serde(default)]
    pub multiline_start: Option<String>,
    /// Longer lines are split into parts of this many bytes, each tagged `split = "i/n"`.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Where files present at start without a checkpoint begin: `end` or `beginning`.
    #[serde(default = "default_start_at")]
    pub start_at: String,
}

fn default_max_line_bytes() -> usize {
    256 * 1024
}
fn default_start_at() -> String {
    "end".to_owned()
}

/// `[agent.prometheus]`: Prometheus text endpoints scraped every interval (on when it names
/// targets).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheusSourceConfig {
    /// Time between scrapes.
    #[serde(default = "default_scrape_interval")]
    pub interval: String,
    /// Largest page accepted, in bytes.
    #[serde(default = "default_max_page_bytes")]
    pub max_page_bytes: usize,
    /// `[[agent.prometheus.targets]]`.
    #[serde(default)]
    pub targets: Vec<RawPrometheusTarget>,
}

/// One `[[agent.prometheus.targets]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheusTarget {
    /// `http://host:port/metrics`.
    pub url: String,
    /// source_id of its samples.
    #[serde(default = "default_prometheus_source_id")]
    pub source_id: String,
}

fn default_scrape_interval() -> String {
    "15s".to_owned()
}
fn default_max_page_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_prometheus_source_id() -> String {
    "prometheus".to_owned()
}

/// `[agent.host_metrics]`: gauges of the host from `/proc` every interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostMetricsSourceConfig {
    /// Sample (every source is on unless turned off).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between samples.
    #[serde(default = "default_host_interval")]
    pub interval: String,
    /// source_id of the gauges.
    #[serde(default = "default_host_source_id")]
    pub source_id: String,
}

fn default_host_interval() -> String {
    "10s".to_owned()
}
fn default_host_source_id() -> String {
    "host".to_owned()
}

/// `[agent.elasticsearch]`: an Elasticsearch-compatible `_bulk` endpoint over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawElasticsearchSourceConfig {
    /// Serve it (every source is on unless turned off).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// HTTP address.
    #[serde(default = "default_elasticsearch_listen")]
    pub listen: SocketAddr,
    /// A document field (dotted path, e.g. `service.name`) whose value becomes the source_id;
    /// documents without it use their index name.
    #[serde(default)]
    pub source_id_field: Option<String>,
    /// Largest request body, in bytes, as sent and again after gzip decompression.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_true() -> bool {
    true
}
fn default_elasticsearch_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9200))
}
fn default_max_body_bytes() -> usize {
    100 * 1024 * 1024
}

/// `[agent.syslog]`: syslog over TCP (octet counting or newline framing), UDP and TLS, all on
/// one port (a TCP connection that opens with a TLS handshake is served over TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyslogSourceConfig {
    /// Serve it (every source is on unless turned off).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// TCP and UDP address.
    #[serde(default = "default_syslog_listen")]
    pub listen: SocketAddr,
    /// Largest message, in bytes; longer ones are refused (counted), the connection goes on.
    #[serde(default = "default_max_syslog_message_bytes")]
    pub max_message_bytes: usize,
    /// source_id of messages without an app name.
    #[serde(default = "default_syslog_source_id")]
    pub default_source_id: String,
}

fn default_syslog_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5514))
}
fn default_max_syslog_message_bytes() -> usize {
    64 * 1024
}
fn default_syslog_source_id() -> String {
    "syslog".to_owned()
}

fn default_agent_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3458))
}
fn default_dopplers() -> Vec<String> {
    vec!["127.0.0.1:8082".to_owned()]
}
fn default_flush_envelopes() -> usize {
    100
}
fn default_flush_interval() -> String {
    "100ms".to_owned()
}
fn default_flush_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_timestamp_age() -> String {
    "30d".to_owned()
}
fn default_max_timestamp_ahead() -> String {
    "1h".to_owned()
}
fn default_agent_pending_wait() -> String {
    "10s".to_owned()
}
fn default_agent_max_pending_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_max_envelope_bytes() -> usize {
    1024 * 1024
}
fn default_max_message_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_in_flight() -> usize {
    4
}
fn default_max_pending_envelopes() -> usize {
    100_000
}

/// `[doppler]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDopplerConfig {
    /// Address agents connect to (gRPC, mTLS); also serves `loggregator.v2.Egress`.
    #[serde(default = "default_doppler_listen")]
    pub listen: SocketAddr,
    /// Batches buffered per live subscriber; past this the subscriber's batches are dropped
    /// and counted, so a slow reader never slows ingestion.
    #[serde(default = "default_subscriber_buffer")]
    pub subscriber_buffer_batches: usize,
    /// Largest accepted gRPC message from an agent (one encoded batch, which becomes one bus
    /// record), in bytes. Must be at least `agent.flush_bytes` plus a batch's framing
    /// (1 KiB) and at most `bus.max_record_bytes`.
    #[serde(default = "default_doppler_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bytes of batches waiting for the bus at once. While the bus is slow or away, a batch
    /// past this waits up to `pending_wait`, then is refused with `RESOURCE_EXHAUSTED` (and
    /// counted); its agent keeps it and retries, pushing back on its own clients.
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// How long a batch may wait for room under `max_pending_bytes`.
    #[serde(default = "default_pending_wait")]
    pub pending_wait: String,
}

fn default_max_pending_bytes() -> usize {
    256 * 1024 * 1024
}
fn default_pending_wait() -> String {
    "5s".to_owned()
}

fn default_doppler_max_message_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_doppler_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8082))
}
fn default_subscriber_buffer() -> usize {
    1024
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusConfig {
    /// `wal`, the embedded durable write-ahead log (one process only), or `kafka`.
    #[serde(default = "default_bus_kind")]
    pub kind: String,
    /// WAL directory; default `<data_dir>/wal`.
    pub wal_dir: Option<PathBuf>,
    /// `[bus.wal]`: how the embedded WAL keeps its records.
    #[serde(default)]
    pub wal: RawWalConfig,
    /// Largest record (one encoded agent batch) the bus takes, in bytes. On Kafka this is the
    /// producer's `message.max.bytes` and the `max.message.bytes` of a topic Sluice creates;
    /// the brokers' own limit must be at least as large.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Kafka settings, for `kind = "kafka"`.
    #[serde(default)]
    pub kafka: RawKafkaConfig,
}

/// `[bus.wal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWalConfig {
    /// Bytes the WAL may hold on disk (records some consumer has not checkpointed). Past it,
    /// and when the disk is full, the doppler refuses batches with `RESOURCE_EXHAUSTED`;
    /// agents hold theirs and retry.
    #[serde(default = "default_wal_max_disk_bytes")]
    pub max_disk_bytes: u64,
    /// A new segment file starts once the current one holds this many bytes; released
    /// records leave the disk a whole segment at a time.
    #[serde(default = "default_wal_segment_bytes")]
    pub segment_bytes: u64,
    /// `fsync`: a batch is acknowledged once written and synced to disk (per group of
    /// batches), surviving a power loss. `flush`: once written to the operating system,
    /// surviving a crash of the process, synced every `sync_interval`.
    #[serde(default = "default_wal_durability")]
    pub durability: String,
    /// With `durability = "flush"`, time between syncs.
    #[serde(default = "default_wal_sync_interval")]
    pub sync_interval: String,
}

impl Default for RawWalConfig {
    fn default() -> RawWalConfig {
        toml::from_str("").expect("an empty [bus.wal] is valid")
    }
}

fn default_wal_max_disk_bytes() -> u64 {
    8 * 1024 * 1024 * 1024
}
fn default_wal_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_wal_durability() -> String {
    "fsync".to_owned()
}
fn default_wal_sync_interval() -> String {
    "200ms".to_owned()
}

/// When a WAL append counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalDurability {
    /// Synced to disk before the acknowledgement.
    Fsync,
    /// Written to the operating system before the acknowledgement, synced every interval.
    Flush(Duration),
}

fn default_max_record_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_bus_kind() -> String {
    "wal".to_owned()
}

/// `[bus.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topic holding the batches; created with `partitions` partitions if missing.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Partitions of a topic Sluice creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a topic Sluice creates.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Consumer group names are `<group_prefix>-indexer` and `<group_prefix>-retention`.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Extra librdkafka client settings for producers and consumers alike
    /// (e.g. `"security.protocol" = "sasl_plaintext"`).
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}
fn default_topic() -> String {
    "sluice-envelopes".to_owned()
}
fn default_partitions() -> i32 {
    4
}
fn default_replication() -> i32 {
    1
}
fn default_group_prefix() -> String {
    "sluice".to_owned()
}

/// `[indexer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIndexerConfig {
    /// Index directory (one Tantivy index per UTC hour inside); default `<data_dir>/index`.
    pub dir: Option<PathBuf>,
    /// How often new documents are committed and become searchable.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    /// Memory budget of each hour's index writer, in bytes.
    #[serde(default = "default_writer_memory")]
    pub writer_memory_bytes: usize,
    /// An hour's writer is closed after this long without new documents.
    #[serde(default = "default_idle_writer")]
    pub close_idle_writer_after: String,
    /// Hour writers open at once (each has a thread and up to `writer_memory_bytes`). A
    /// document for another hour first commits and closes the writer written least recently.
    #[serde(default = "default_max_open_writers")]
    pub max_open_writers: usize,
    /// Where the indexer serves `sluice.v1.IndexSearch` (gRPC, mutual TLS) to query APIs in
    /// other processes; unset means no search service (`sluice up` searches in process).
    pub listen: Option<SocketAddr>,
}

fn default_commit_interval() -> String {
    "1s".to_owned()
}
fn default_writer_memory() -> usize {
    64 * 1024 * 1024
}
fn default_max_open_writers() -> usize {
    4
}
fn default_idle_writer() -> String {
    "5m".to_owned()
}

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetentionConfig {
    /// Archive location: a local directory (path or `file://` URL); default `<data_dir>/archive`.
    pub archive: Option<String>,
    /// Buffered rows are written out at least this often.
    #[serde(default = "default_flush_interval_retention")]
    pub flush_interval: String,
    /// Buffered rows are written out once this many are waiting.
    #[serde(default = "default_flush_rows")]
    pub flush_rows: usize,
    /// Zstd level of Parquet pages.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Connection settings when `archive` is an `s3://bucket/prefix` URL.
    #[serde(default)]
    pub s3: RawS3Config,
}

/// `[retention.s3]`: an S3-compatible store. Unset keys fall back to the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`; unset means AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint (off unless set: credentials would travel in clear).
    #[serde(default)]
    pub allow_http: bool,
    /// Address buckets as `bucket.host` instead of the default path style `host/bucket`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
}

impl std::fmt::Debug for RawS3Config {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RawS3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

fn default_flush_interval_retention() -> String {
    "5s".to_owned()
}
fn default_flush_rows() -> usize {
    200_000
}
fn default_zstd_level() -> i32 {
    3
}

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
fn default_indexer_timeout() -> String {
    "10s".to_owned()
}

fn validate_elasticsearch(
    raw: RawElasticsearchSourceConfig,
) -> Result<Option<ElasticsearchSourceConfig>, SluiceError> {
    if !raw.enabled {
        return Ok(None);
    }
    if raw.max_body_bytes == 0 {
        return Err(SluiceError::invalid(
            "agent.elasticsearch.max_body_bytes: must be at least 1",
        ));
    }
    let source_id_field = match raw.source_id_field {
        None => None,
        Some(field) => {
            let path: Vec<String> = field.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(SluiceError::invalid(format!(
                    "agent.elasticsearch.source_id_field: {field:?} is not a dotted field path"
                )));
            }
            Some(path)
        }
    };
    Ok(Some(ElasticsearchSourceConfig {
        listen: raw.listen,
        source_id_field,
        max_body_bytes: raw.max_body_bytes,
    }))
}

fn validate_syslog(raw: RawSyslogSourceConfig) -> Result<Option<SyslogSourceConfig>, SluiceError> {
    if !raw.enabled {
        return Ok(None);
    }
    if raw.max_message_bytes < 480 {
        // RFC 5424 section 6.1: receivers must accept messages of 480 octets.
        return Err(SluiceError::invalid(
            "agent.syslog.max_message_bytes: must be at least 480 (RFC 5424)",
        ));
    }
    if raw.default_source_id.trim().is_empty() {
        return Err(SluiceError::invalid(
            "agent.syslog.default_source_id: must not be empty",
        ));
    }
    Ok(Some(SyslogSourceConfig {
        listen: raw.listen,
        max_message_bytes: raw.max_message_bytes,
        default_source_id: raw.default_source_id,
    }))
}

fn validate_host_metrics(
    raw: RawHostMetricsSourceConfig,
) -> Result<Option<HostMetricsSourceConfig>, SluiceError> {
    if !raw.enabled {
        return Ok(None);
    }
    let interval = parse_duration("agent.host_metrics.interval", &raw.interval)?;
    if interval < Duration::from_millis(100) {
        return Err(SluiceError::invalid(
            "agent.host_metrics.interval: must be at least 100ms",
        ));
    }
    if raw.source_id.trim().is_empty() {
        return Err(SluiceError::invalid(
            "agent.host_metrics.source_id: must not be empty",
        ));
    }
    Ok(Some(HostMetricsSourceConfig {
        interval,
        source_id: raw.source_id,
    }))
}

fn validate_prometheus(
    raw: RawPrometheusSourceConfig,
) -> Result<Option<PrometheusSourceConfig>, SluiceError> {
    if raw.targets.is_empty() {
        return Ok(None);
    }
    let interval = parse_duration("agent.prometheus.interval", &raw.interval)?;
    if interval < Duration::from_millis(100) {
        return Err(SluiceError::invalid(
            "agent.prometheus.interval: must be at least 100ms",
        ));
    }
    let mut targets = Vec::with_capacity(raw.targets.len());
    for (index, target) in raw.targets.into_iter().enumerate() {
        let field = format!("agent.prometheus.targets[{index}]");
        let url = url::Url::parse(&target.url)
            .map_err(|error| SluiceError::invalid(format!("{field}.url: {error}")))?;
        if url.scheme() != "http" {
            return Err(SluiceError::invalid(format!(
                "{field}.url: only http:// targets are scraped (not {})",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| SluiceError::invalid(format!("{field}.url: no host")))?;
        let instance = match url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        if target.source_id.trim().is_empty() {
            return Err(SluiceError::invalid(format!(
                "{field}.source_id: must not be empty"
            )));
        }
        targets.push(PrometheusTarget {
            url: target.url,
            source_id: target.source_id,
            instance,
        });
    }
    Ok(Some(PrometheusSourceConfig {
        interval,
        max_page_bytes: raw.max_page_bytes,
        targets,
    }))
}

fn validate_files(raw: Vec<RawFileInput>) -> Result<Vec<FileInputConfig>, SluiceError> {
    raw.into_iter()
        .enumerate()
        .map(|(index, input)| {
            let field = format!("agent.files[{index}]");
            if input.paths.is_empty() {
                return Err(SluiceError::invalid(format!(
                    "{field}.paths: name at least one glob"
                )));
            }
            if input.source_id.trim().is_empty() {
                return Err(SluiceError::invalid(format!(
                    "{field}.source_id: must not be empty"
                )));
            }
            if input.max_line_bytes < 64 {
                return Err(SluiceError::invalid(format!(
                    "{field}.max_line_bytes: must be at least 64"
                )));
            }
            let start_at = match input.start_at.as_str() {
                "end" => StartAt::End,
                "beginning" => StartAt::Beginning,
                other => {
                    return Err(SluiceError::invalid(format!(
                        "{field}.start_at: {other:?}; expected \"end\" or \"beginning\""
                    )));
                }
            };
            Ok(FileInputConfig {
                paths: input.paths,
                source_id: input.source_id,
                multiline_start: input.multiline_start,
                max_line_bytes: input.max_line_bytes,
                start_at,
            })
        })
        .collect()
}

fn validate_otlp(raw: RawOtlpSourceConfig) -> Result<Option<OtlpSourceConfig>, SluiceError> {
    if !raw.enabled {
        return Ok(None);
    }
    if raw.grpc_listen == raw.http_listen {
        return Err(SluiceError::invalid(
            "agent.otlp: grpc_listen and http_listen must differ",
        ));
    }
    if let Some(bad) = raw
        .histogram_quantiles
        .iter()
        .find(|quantile| !(0.0..=1.0).contains(*quantile))
    {
        return Err(SluiceError::invalid(format!(
            "agent.otlp.histogram_quantiles: {bad} is not between 0 and 1"
        )));
    }
    if raw.source_id_attribute.trim().is_empty() || raw.max_message_bytes == 0 {
        return Err(SluiceError::invalid(
            "agent.otlp: source_id_attribute must not be empty and max_message_bytes not 0",
        ));
    }
    Ok(Some(OtlpSourceConfig {
        grpc_listen: raw.grpc_listen,
        http_listen: raw.http_listen,
        source_id_attribute: raw.source_id_attribute,
        histogram_quantiles: raw.histogram_quantiles,
        max_message_bytes: raw.max_message_bytes,
    }))
}

macro_rules! default_from_empty_table {
    ($($name:ident),*) => {$(
        impl Default for $name {
            fn default() -> $name {
                toml::from_str("").expect("an empty section is valid")
            }
        }
    )*};
}
default_from_empty_table!(
    RawBusConfig,
    RawKafkaConfig,
    RawTlsConfig,
    RawAgentConfig,
    RawElasticsearchSourceConfig,
    RawSyslogSourceConfig,
    RawHostMetricsSourceConfig,
    RawPrometheusSourceConfig,
    RawOtlpSourceConfig,
    RawDopplerConfig,
    RawIndexerConfig,
    RawRetentionConfig,
    RawQueryApiConfig
);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// See [`RawConfig::data_dir`].
    pub data_dir: PathBuf,
    /// TLS file locations; `None` means "use the local CA in `<data_dir>/tls`".
    pub tls: Option<crate::tls::TlsPaths>,
    /// See [`RawTlsConfig::server_name`].
    pub tls_server_name: String,
    /// Agent settings.
    pub agent: AgentConfig,
    /// Doppler settings.
    pub doppler: DopplerConfig,
    /// Bus settings.
    pub bus: BusConfig,
    /// Indexer settings.
    pub indexer: IndexerConfig,
    /// Retention settings.
    pub retention: RetentionConfig,
    /// Query API settings.
    pub query_api: QueryApiConfig,
    /// Where the process serves its own `/metrics`, if anywhere.
    pub telemetry_listen: Option<SocketAddr>,
}

/// Validated `[agent]`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Ingress listen address.
    pub listen: SocketAddr,
    /// Doppler addresses.
    pub dopplers: Vec<String>,
    /// Envelopes per batch.
    pub flush_envelopes: usize,
    /// Largest batch, encoded.
    pub flush_bytes: usize,
    /// Longest wait before a partial batch is sent.
    pub flush_interval: Duration,
    /// Oldest timestamp kept as sent.
    pub max_timestamp_age: Duration,
    /// Furthest future timestamp kept as sent.
    pub max_timestamp_ahead: Duration,
    /// Largest envelope in bytes.
    pub max_envelope_bytes: usize,
    /// Largest gRPC message in bytes.
    pub max_message_bytes: usize,
    /// Concurrent batches to dopplers.
    pub max_in_flight_batches: usize,
    /// Accepted, unacknowledged envelopes before backpressure.
    pub max_pending_envelopes: usize,
    /// Accepted, unacknowledged bytes before backpressure.
    pub max_pending_bytes: usize,
    /// Longest wait for room under the pending limits.
    pub pending_wait: Duration,
    /// Directory for the agent's identity.
    pub state_dir: PathBuf,
    /// The Elasticsearch `_bulk` source, when on.
    pub elasticsearch: Option<ElasticsearchSourceConfig>,
    /// The syslog source, when on.
    pub syslog: Option<SyslogSourceConfig>,
    /// The host metrics source, when on.
    pub host_metrics: Option<HostMetricsSourceConfig>,
    /// Prometheus scraping, when it has targets.
    pub prometheus: Option<PrometheusSourceConfig>,
    /// Files to follow.
    pub files: Vec<FileInputConfig>,
    /// The OTLP source, when on.
    pub otlp: Option<OtlpSourceConfig>,
}

/// Validated `[agent.otlp]`.
#[derive(Debug, Clone)]
pub struct OtlpSourceConfig {
    /// OTLP/gRPC address.
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP address.
    pub http_listen: SocketAddr,
    /// Resource attribute naming the source_id.
    pub source_id_attribute: String,
    /// Quantiles estimated from histograms.
    pub histogram_quantiles: Vec<f64>,
    /// Largest export.
    pub max_message_bytes: usize,
}

/// Where a followed file without a checkpoint begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At its start.
    Beginning,
    /// At its end (only what is written from now on).
    End,
}

/// A validated `[[agent.files]]`.
#[derive(Debug, Clone)]
pub struct FileInputConfig {
    /// Globs.
    pub paths: Vec<String>,
    /// source_id of their lines.
    pub source_id: String,
    /// Start pattern of multiline records.
    pub multiline_start: Option<String>,
    /// Longest line before it is split.
    pub max_line_bytes: usize,
    /// Where files without a checkpoint begin.
    pub start_at: StartAt,
}

/// Validated `[agent.prometheus]`.
#[derive(Debug, Clone)]
pub struct PrometheusSourceConfig {
    /// Time between scrapes.
    pub interval: Duration,
    /// Largest page.
    pub max_page_bytes: usize,
    /// What to scrape.
    pub targets: Vec<PrometheusTarget>,
}

/// A validated scrape target.
#[derive(Debug, Clone)]
pub struct PrometheusTarget {
    /// The URL.
    pub url: String,
    /// source_id of its samples.
    pub source_id: String,
    /// Its `host:port`, the `instance` tag.
    pub instance: String,
}

/// Validated `[agent.host_metrics]`.
#[derive(Debug, Clone)]
pub struct HostMetricsSourceConfig {
    /// Time between samples.
    pub interval: Duration,
    /// source_id of the gauges.
    pub source_id: String,
}

/// Validated `[agent.elasticsearch]`.
#[derive(Debug, Clone)]
pub struct ElasticsearchSourceConfig {
    /// HTTP address.
    pub listen: SocketAddr,
    /// Field naming the source_id, as path segments.
    pub source_id_field: Option<Vec<String>>,
    /// Largest body, compressed and decompressed.
    pub max_body_bytes: usize,
}

/// Validated `[agent.syslog]`.
#[derive(Debug, Clone)]
pub struct SyslogSourceConfig {
    /// TCP and UDP address.
    pub listen: SocketAddr,
    /// Largest message.
    pub max_message_bytes: usize,
    /// source_id of messages without an app name.
    pub default_source_id: String,
}

/// Validated `[doppler]`.
#[derive(Debug, Clone)]
pub struct DopplerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Batches buffered per subscriber.
    pub subscriber_buffer_batches: usize,
    /// Largest gRPC message in bytes.
    pub max_message_bytes: usize,
    /// Bytes of batches waiting for the bus at once.
    pub max_pending_bytes: usize,
    /// Longest wait for room under `max_pending_bytes`.
    pub pending_wait: Duration,
}

/// Validated `[bus]`.
#[derive(Debug, Clone)]
pub enum BusConfig {
    /// The embedded write-ahead log in this directory.
    Wal {
        /// WAL directory.
        dir: PathBuf,
        /// Largest record.
        max_record_bytes: usize,
        /// Disk budget.
        max_disk_bytes: u64,
        /// Segment size.
        segment_bytes: u64,
        /// When an append counts as stored.
        durability: WalDurability,
    },
    /// A Kafka topic.
    Kafka {
        /// Connection and topic settings.
        settings: RawKafkaConfig,
        /// Largest record.
        max_record_bytes: usize,
    },
}

impl BusConfig {
    /// Largest record the bus takes.
    pub fn max_record_bytes(&self) -> usize {
        match self {
            BusConfig::Wal {
                max_record_bytes, ..
            }
            | BusConfig::Kafka {
                max_record_bytes, ..
            } => *max_record_bytes,
        }
    }
}

/// Bytes of an encoded batch besides its envelopes' own framing (the agent id and sequence
/// number, with room to spare): what `doppler.max_message_bytes` must leave above
/// `agent.flush_bytes`.
pub const BATCH_OVERHEAD_BYTES: usize = 1024;

/// Validated `[indexer]`.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Index root directory.
    pub dir: PathBuf,
    /// Commit interval.
    pub commit_interval: Duration,
    /// Writer memory budget per hour index.
    pub writer_memory_bytes: usize,
    /// Idle time after which an hour's writer is closed.
    pub close_idle_writer_after: Duration,
    /// Hour writers open at once.
    pub max_open_writers: usize,
    /// Search service address, if served.
    pub listen: Option<SocketAddr>,
}

/// Where the archive lives.
#[derive(Debug, Clone)]
pub enum ArchiveLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket, under a prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
        /// Connection settings.
        settings: RawS3Config,
    },
}

/// Validated `[retention]`.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Archive location.
    pub archive: ArchiveLocation,
    /// Flush interval.
    pub flush_interval: Duration,
    /// Rows that trigger a flush.
    pub flush_rows: usize,
    /// Zstd level.
    pub zstd_level: i32,
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
    /// Remote indexers' search services; empty means the local index directory.
    pub indexers: Vec<String>,
    /// Per-indexer search deadline.
    pub indexer_timeout: Duration,
}

impl RawConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<RawConfig, SluiceError> {
        toml::from_str(text)
            .map_err(|error| SluiceError::invalid(format!("invalid configuration: {error}")))
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, SluiceError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            SluiceError::invalid(format!(
                "failed to read configuration {}: {error}",
                path.display()
            ))
        })?;
        RawConfig::from_toml(&text)
            .map_err(|error| SluiceError::invalid(format!("{}: {error}", path.display())))
    }

    /// Checks every field and resolves defaults that depend on `data_dir`.
    pub fn validate(self) -> Result<Config, SluiceError> {
        let data_dir = self.data_dir;
        let tls = match (self.tls.ca_cert, self.tls.cert, self.tls.key) {
            (None, None, None) => None,
            (Some(ca_cert), Some(cert), Some(key)) => {
                Some(crate::tls::TlsPaths { ca_cert, cert, key })
            }
            _ => {
                return Err(SluiceError::invalid(
                    "tls: set all of ca_cert, cert and key, or none of them to use the local CA",
                ));
            }
        };
        positive("agent.flush_envelopes", self.agent.flush_envelopes)?;
        positive("agent.max_envelope_bytes", self.agent.max_envelope_bytes)?;
        positive(
            "agent.max_in_flight_batches",
            self.agent.max_in_flight_batches,
        )?;
        positive(
            "agent.max_pending_envelopes",
            self.agent.max_pending_envelopes,
        )?;
        positive(
            "doppler.subscriber_buffer_batches",
            self.doppler.subscriber_buffer_batches,
        )?;
        positive("retention.flush_rows", self.retention.flush_rows)?;
        positive(
            "query_api.max_search_limit",
            self.query_api.max_search_limit,
        )?;
        positive("query_api.max_sql_rows", self.query_api.max_sql_rows)?;
        positive("indexer.max_open_writers", self.indexer.max_open_writers)?;
        check_size_limits(&self.agent, &self.doppler, self.bus.max_record_bytes)?;
        if self.agent.dopplers.is_empty() {
            return Err(SluiceError::invalid(
                "agent.dopplers: name at least one doppler",
            ));
        }
        if self.indexer.writer_memory_bytes < 15_000_000 {
            return Err(SluiceError::invalid(
                "indexer.writer_memory_bytes: Tantivy needs at least 15000000 bytes",
            ));
        }
        if !(1..=22).contains(&self.retention.zstd_level) {
            return Err(SluiceError::invalid(
                "retention.zstd_level: must be between 1 and 22",
            ));
        }
        let max_record_bytes = self.bus.max_record_bytes;
        let bus = match self.bus.kind.as_str() {
            "wal" => {
                let wal = self.bus.wal;
                let durability = match wal.durability.as_str() {
                    "fsync" => WalDurability::Fsync,
                    "flush" => WalDurability::Flush(parse_duration(
                        "bus.wal.sync_interval",
                        &wal.sync_interval,
                    )?),
                    other => {
                        return Err(SluiceError::invalid(format!(
                            "bus.wal.durability: unknown setting {other:?}; expected \"fsync\" or \"flush\""
                        )));
                    }
                };
                if wal.segment_bytes < max_record_bytes as u64 {
                    return Err(SluiceError::invalid(format!(
                        "bus.wal.segment_bytes ({}) must be at least bus.max_record_bytes ({max_record_bytes})",
                        wal.segment_bytes
                    )));
                }
                if wal.max_disk_bytes < 2 * wal.segment_bytes {
                    return Err(SluiceError::invalid(format!(
                        "bus.wal.max_disk_bytes ({}) must be at least twice bus.wal.segment_bytes ({})",
                        wal.max_disk_bytes, wal.segment_bytes
                    )));
                }
                BusConfig::Wal {
                    dir: self.bus.wal_dir.unwrap_or_else(|| data_dir.join("wal")),
                    max_record_bytes,
                    max_disk_bytes: wal.max_disk_bytes,
                    segment_bytes: wal.segment_bytes,
                    durability,
                }
            }
            "kafka" => {
                let kafka = self.bus.kafka;
                if kafka.brokers.trim().is_empty() || kafka.topic.trim().is_empty() {
                    return Err(SluiceError::invalid(
                        "bus.kafka: brokers and topic must not be empty",
                    ));
                }
                if kafka.partitions < 1 || kafka.replication < 1 {
                    return Err(SluiceError::invalid(
                        "bus.kafka: partitions and replication must be at least 1",
                    ));
                }
                if kafka.client.contains_key("message.max.bytes") {
                    return Err(SluiceError::invalid(
                        "bus.kafka.client.\"message.max.bytes\": set bus.max_record_bytes instead, so the limits along the path stay consistent",
                    ));
                }
                BusConfig::Kafka {
                    settings: kafka,
                    max_record_bytes,
                }
            }
            other => {
                return Err(SluiceError::invalid(format!(
                    "bus.kind: unknown bus {other:?}; expected \"wal\" or \"kafka\""
                )));
            }
        };
        let archive = match self.retention.archive {
            None => ArchiveLocation::Local(data_dir.join("archive")),
            Some(location) => parse_archive_location(&location, self.retention.s3)?,
        };
        Ok(Config {
            tls,
            tls_server_name: self.tls.server_name,
            agent: AgentConfig {
                listen: self.agent.listen,
                dopplers: self.agent.dopplers,
                flush_envelopes: self.agent.flush_envelopes,
                flush_bytes: self.agent.flush_bytes,
                flush_interval: parse_duration("agent.flush_interval", &self.agent.flush_interval)?,
                max_timestamp_age: parse_duration(
                    "agent.max_timestamp_age",
                    &self.agent.max_timestamp_age,
                )?,
                max_timestamp_ahead: parse_duration(
                    "agent.max_timestamp_ahead",
                    &self.agent.max_timestamp_ahead,
                )?,
                max_envelope_bytes: self.agent.max_envelope_bytes,
                max_message_bytes: self.agent.max_message_bytes,
                max_in_flight_batches: self.agent.max_in_flight_batches,
                max_pending_envelopes: self.agent.max_pending_envelopes,
                max_pending_bytes: self.agent.max_pending_bytes,
                pending_wait: parse_duration("agent.pending_wait", &self.agent.pending_wait)?,
                state_dir: data_dir.join("agent"),
                elasticsearch: validate_elasticsearch(self.agent.elasticsearch)?,
                syslog: validate_syslog(self.agent.syslog)?,
                host_metrics: validate_host_metrics(self.agent.host_metrics)?,
                prometheus: validate_prometheus(self.agent.prometheus)?,
                files: validate_files(self.agent.files)?,
                otlp: validate_otlp(self.agent.otlp)?,
            },
            doppler: DopplerConfig {
                listen: self.doppler.listen,
                subscriber_buffer_batches: self.doppler.subscriber_buffer_batches,
                max_message_bytes: self.doppler.max_message_bytes,
                max_pending_bytes: self.doppler.max_pending_bytes,
                pending_wait: parse_duration("doppler.pending_wait", &self.doppler.pending_wait)?,
            },
            bus,
            indexer: IndexerConfig {
                dir: self.indexer.dir.unwrap_or_else(|| data_dir.join("index")),
                commit_interval: parse_duration(
                    "indexer.commit_interval",
                    &self.indexer.commit_interval,
                )?,
                writer_memory_bytes: self.indexer.writer_memory_bytes,
                close_idle_writer_after: parse_duration(
                    "indexer.close_idle_writer_after",
                    &self.indexer.close_idle_writer_after,
                )?,
                max_open_writers: self.indexer.max_open_writers,
                listen: self.indexer.listen,
            },
            retention: RetentionConfig {
                archive,
                flush_interval: parse_duration(
                    "retention.flush_interval",
                    &self.retention.flush_interval,
                )?,
                flush_rows: self.retention.flush_rows,
                zstd_level: self.retention.zstd_level,
            },
            query_api: QueryApiConfig {
                listen: self.query_api.listen,
                doppler: self.query_api.doppler,
                max_search_limit: self.query_api.max_search_limit,
                max_sql_rows: self.query_api.max_sql_rows,
                indexer_timeout: parse_duration(
                    "query_api.indexer_timeout",
                    &self.query_api.indexer_timeout,
                )?,
                indexers: self.query_api.indexers,
            },
            telemetry_listen: self.telemetry.listen,
            data_dir,
        })
    }
}

/// Parses `retention.archive`: a path, a `file://` URL or an `s3://bucket/prefix` URL.
fn parse_archive_location(location: &str, s3: RawS3Config) -> Result<ArchiveLocation, SluiceError> {
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(ArchiveLocation::Local(PathBuf::from(path)));
    }
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SluiceError::invalid(format!(
                "retention.archive: no bucket in {location:?}"
            )));
        }
        return Ok(ArchiveLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            settings: s3,
        });
    }
    if location.contains("://") {
        return Err(SluiceError::invalid(format!(
            "retention.archive: unsupported location {location:?}; use a directory, a file:// URL or an s3://bucket/prefix URL"
        )));
    }
    Ok(ArchiveLocation::Local(PathBuf::from(location)))
}

/// The size limits along the path must nest, so that every batch an agent cuts is one the
/// doppler receives and the bus stores: an envelope fits a batch (with its framing), a batch
/// fits the doppler's receive limit, that fits a bus record, and the agent's pending budget
/// holds at least one whole batch. Checked at start, naming the keys.
fn check_size_limits(
    agent: &RawAgentConfig,
    doppler: &RawDopplerConfig,
    max_record_bytes: usize,
) -> Result<(), SluiceError> {
    positive("agent.flush_bytes", agent.flush_bytes)?;
    positive("bus.max_record_bytes", max_record_bytes)?;
    let framed_envelope = agent.max_envelope_bytes.saturating_add(16);
    let nested = [
        (
            "agent.max_message_bytes",
            agent.max_message_bytes,
            "agent.max_envelope_bytes",
            agent.max_envelope_bytes,
        ),
        (
            "agent.flush_bytes",
            agent.flush_bytes,
            "agent.max_envelope_bytes + 16 (its framing)",
            framed_envelope,
        ),
        (
            "doppler.max_message_bytes",
            doppler.max_message_bytes,
            "agent.flush_bytes + 1024 (a batch's framing)",
            agent.flush_bytes.saturating_add(BATCH_OVERHEAD_BYTES),
        ),
        (
            "bus.max_record_bytes",
            max_record_bytes,
            "doppler.max_message_bytes",
            doppler.max_message_bytes,
        ),
        (
            "agent.max_pending_bytes",
            agent.max_pending_bytes,
            "agent.flush_bytes",
            agent.flush_bytes,
        ),
        (
            "doppler.max_pending_bytes",
            doppler.max_pending_bytes,
            "doppler.max_message_bytes",
            doppler.max_message_bytes,
        ),
    ];
    for (outer, outer_value, inner, inner_value) in nested {
        if outer_value < inner_value {
            return Err(SluiceError::invalid(format!(
                "{outer} ({outer_value}) must be at least {inner} ({inner_value})"
            )));
        }
    }
    Ok(())
}

fn positive(field: &str, value: usize) -> Result<(), SluiceError> {
    if value == 0 {
        return Err(SluiceError::invalid(format!(
            "{field}: must be greater than zero"
        )));
    }
    Ok(())
}

/// Parses durations such as `250ms`, `1s`, `5m`, `2h` (a positive integer and a unit).
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, SluiceError> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        SluiceError::invalid(format!(
            "{field}: invalid duration {text:?}; expected e.g. 250ms, 1s, 5m, 2h, 7d"
        ))
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(invalid)?),
        "h" => Duration::from_secs(number.checked_mul(3_600).ok_or_else(invalid)?),
        "d" => Duration::from_secs(number.checked_mul(86_400).ok_or_else(invalid)?),
        _ => return Err(invalid()),
    };
    if duration.is_zero() {
        return Err(SluiceError::invalid(format!(
            "{field}: must be greater than zero"
        )));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size limits along the path must nest; each broken link is refused at start with
    /// both keys named.
    #[test]
    fn size_limits_that_do_not_nest_are_refused_naming_the_keys() {
        for (document, keys) in [
            (
                "[agent]\nflush_bytes = 1000\n",
                ["agent.flush_bytes", "agent.max_envelope_bytes"],
            ),
            (
                "[agent]\nflush_bytes = 33554432\nmax_pending_bytes = 67108864\n",
                ["doppler.max_message_bytes", "agent.flush_bytes"],
            ),
            (
                "[doppler]\nmax_message_bytes = 33554432\n",
                ["bus.max_record_bytes", "doppler.max_message_bytes"],
            ),
            (
                "[agent]\nmax_pending_bytes = 1048576\n",
                ["agent.max_pending_bytes", "agent.flush_bytes"],
            ),
            (
                "[bus.wal]\nsegment_bytes = 1048576\n",
                ["bus.wal.segment_bytes", "bus.max_record_bytes"],
            ),
        ] {
            let error = RawConfig::from_toml(document)
                .expect("parses")
                .validate()
                .expect_err("refused");
            for key in keys {
                assert!(error.message().contains(key), "{document}: {error}");
            }
        }
        let kafka =
            "[bus]\nkind = \"kafka\"\n[bus.kafka.client]\n\"message.max.bytes\" = \"1000\"\n";
        let error = RawConfig::from_toml(kafka)
            .expect("parses")
            .validate()
            .expect_err("refused");
        assert!(error.message().contains("bus.max_record_bytes"), "{error}");
    }

    #[test]
    fn the_example_config_in_the_repository_loads_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sluice.example.toml");
        let example = RawConfig::from_file(&path)
            .expect("example config parses")
            .validate()
            .expect("valid");
        let defaults = RawConfig::default().validate().expect("defaults are valid");
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn the_role_examples_in_the_repository_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/roles");
        for role in ["agent", "doppler", "indexer", "retention", "query-api"] {
            let path = dir.join(format!("{role}.toml"));
            let config = RawConfig::from_file(&path)
                .and_then(RawConfig::validate)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            match role {
                "doppler" | "indexer" | "retention" => {
                    assert!(
                        matches!(config.bus, BusConfig::Kafka { .. }),
                        "{role} on kafka"
                    )
                }
                "query-api" => {
                    assert_eq!(config.query_api.indexers, vec!["127.0.0.1:8090".to_owned()])
                }
                _ => {}
            }
            if matches!(role, "retention" | "query-api") {
                assert!(
                    matches!(config.retention.archive, ArchiveLocation::S3 { .. }),
                    "{role} archive on s3"
                );
            }
        }
    }

    #[test]
    fn defaults_match_the_documented_addresses_and_batching() {
        let config = RawConfig::default().validate().expect("valid");
        assert_eq!(config.agent.listen.to_string(), "127.0.0.1:3458");
        assert_eq!(config.doppler.listen.to_string(), "127.0.0.1:8082");
        assert_eq!(config.query_api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.agent.flush_envelopes, 100);
        assert_eq!(config.agent.flush_interval, Duration::from_millis(100));
        assert_eq!(config.agent.max_envelope_bytes, 1_048_576);
        assert_eq!(config.indexer.commit_interval, Duration::from_secs(1));
        assert_eq!(config.tls_server_name, "localhost");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_with_the_field_name() {
        let error = RawConfig::from_toml("[agent]\nflush_envelope = 5\n").expect_err("typo");
        assert!(error.message().contains("flush_envelope"), "{error}");
        let error = RawConfig::from_toml("[indexer]\ncommit_interval = \"soon\"\n")
            .expect("parses")
            .validate()
            .expect_err("bad duration");
        assert!(
            error.message().starts_with("indexer.commit_interval"),
            "{error}"
        );
        let error = RawConfig::from_toml("[tls]\nca_cert = \"ca.pem\"\n")
            .expect("parses")
            .validate()
            .expect_err("partial tls");
        assert!(error.message().starts_with("tls:"), "{error}");
        let error = RawConfig::from_toml("[retention]\narchive = \"gs://bucket\"\n")
            .expect("parses")
            .validate()
            .expect_err("unsupported scheme");
        assert!(error.message().starts_with("retention.archive"), "{error}");
        let error = RawConfig::from_toml("[retention]\narchive = \"s3:///prefix\"\n")
            .expect("parses")
            .validate()
            .expect_err("no bucket");
        assert!(error.message().contains("no bucket"), "{error}");
    }

    #[test]
    fn s3_archives_parse_with_their_settings_and_hide_the_secret() {
        let config = RawConfig::from_toml(
            "[retention]\narchive = \"s3://logs-bucket/sluice/prod/\"\n[retention.s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\nsecret_access_key = \"hunter2\"\n",
        )
        .expect("parses")
        .validate()
        .expect("valid");
        match &config.retention.archive {
            ArchiveLocation::S3 {
                bucket,
                prefix,
                settings,
            } => {
                assert_eq!(bucket, "logs-bucket");
                assert_eq!(prefix, "sluice/prod");
                assert!(settings.allow_http);
            }
            other => panic!("expected s3, got {other:?}"),
        }
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("x", "250ms").expect("ms"),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("x", "2h").expect("h"),
            Duration::from_secs(7_200)
        );
        assert!(parse_duration("x", "0s").is_err());
        assert!(parse_duration("x", "1.5s").is_err());
        assert!(parse_duration("x", "s").is_err());
    }
}
