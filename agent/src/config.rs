//! The agent's section of the configuration file, `[agent]` and its sources
//! (`[agent.otlp]`, `[agent.prometheus]`, `[agent.host_metrics]`, `[agent.elasticsearch]`,
//! `[agent.syslog]`, `[[agent.files]]`): what serde reads, with a default for every field, and
//! [`RawAgentConfig::validate`], which makes an [`AgentConfig`] of it or names the bad field.
//! The limits the agent shares with the doppler and the bus are checked where the file is
//! composed, in the `sluice` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_common::SluiceError;
use sluice_common::config::{parse_duration, positive};

pub use crate::sources::elasticsearch::config::{
    ElasticsearchSourceConfig, RawElasticsearchSourceConfig,
};
pub use crate::sources::otlp::config::{OtlpSourceConfig, RawOtlpSourceConfig};

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// Address of the Loggregator v2 ingress (gRPC, mTLS).
    #[serde(default = "default_agent_listen")]
    pub listen: SocketAddr,
    /// For platform agents trusted to say whose records they send (their client certificate
    /// is the trust): the Loggregator ingress files each envelope under the tenant this tag
    /// names (Cloud Foundry's `organization_id`), the default tenant where it is missing.
    /// Unset: every envelope of this ingress belongs to the default tenant.
    #[serde(default)]
    pub tenant_tag: Option<String>,
    /// Senders whose client certificate names them (its common name, as `sluice certs issue
    /// --name` writes it) have their envelopes filed under the tenant given here: on the
    /// Loggregator ingress this wins over `tenant_tag`.
    #[serde(default)]
    pub tenants_by_certificate: std::collections::BTreeMap<String, String>,
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
    /// While batches are in flight, a partial batch is sent this long after its first envelope
    /// arrived at the latest (with nothing in flight it is sent at once).
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
    /// The largest share of each pending limit one source may hold (0 < share ≤ 1), so a
    /// source that floods the agent (a syslog connection that never lets up, say) leaves room
    /// for the others instead of queueing them out.
    #[serde(default = "default_max_pending_share")]
    pub max_pending_share: f64,
    /// Bytes of client requests the agent holds while they wait for room under the pending
    /// limits; past it a request is refused at once with `RESOURCE_EXHAUSTED` (one request
    /// alone is always let in to wait). With `max_pending_bytes`, the agent's memory bound
    /// under overload.
    #[serde(default = "default_max_waiting_bytes")]
    pub max_waiting_bytes: usize,
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

fn default_true() -> bool {
    true
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
fn default_max_waiting_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_pending_share() -> f64 {
    0.5
}
fn default_max_pending_envelopes() -> usize {
    100_000
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

/// Validated `[agent]`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Ingress listen address.
    pub listen: SocketAddr,
    /// The Loggregator ingress's tenant tag.
    pub tenant_tag: Option<String>,
    /// Tenants of senders by their certificate's common name.
    pub tenants_by_certificate: std::collections::BTreeMap<String, String>,
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
    /// Largest share of each pending limit one source may hold.
    pub max_pending_share: f64,
    /// Bytes of requests waiting for room, at most.
    pub max_waiting_bytes: usize,
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
impl RawAgentConfig {
    /// Checks every field; the agent keeps its identity under `<data_dir>/agent`.
    pub fn validate(self, data_dir: &Path) -> Result<AgentConfig, SluiceError> {
        positive("agent.flush_envelopes", self.flush_envelopes)?;
        positive("agent.max_envelope_bytes", self.max_envelope_bytes)?;
        positive("agent.max_in_flight_batches", self.max_in_flight_batches)?;
        positive("agent.max_pending_envelopes", self.max_pending_envelopes)?;
        positive("agent.max_waiting_bytes", self.max_waiting_bytes)?;
        if !(self.max_pending_share > 0.0 && self.max_pending_share <= 1.0) {
            return Err(SluiceError::invalid(format!(
                "agent.max_pending_share: {} is not a share: give a number above 0 and at most 1",
                self.max_pending_share
            )));
        }
        let share_of = |limit: usize| (limit as f64 * self.max_pending_share).floor() as usize;
        if share_of(self.max_pending_envelopes) < self.flush_envelopes
            || share_of(self.max_pending_bytes) < self.flush_bytes
        {
            return Err(SluiceError::invalid(format!(
                "agent.max_pending_share: {} of the pending limits ({} envelopes, {} bytes) must hold at least one whole batch (agent.flush_envelopes {}, agent.flush_bytes {})",
                self.max_pending_share,
                self.max_pending_envelopes,
                self.max_pending_bytes,
                self.flush_envelopes,
                self.flush_bytes
            )));
        }
        if self.dopplers.is_empty() {
            return Err(SluiceError::invalid(
                "agent.dopplers: name at least one doppler",
            ));
        }
        if self
            .tenant_tag
            .as_deref()
            .is_some_and(|tag| tag.trim().is_empty())
        {
            return Err(SluiceError::invalid(
                "agent.tenant_tag: name a tag, or leave the key out",
            ));
        }
        if let Some((name, tenant)) = self
            .tenants_by_certificate
            .iter()
            .find(|(_, tenant)| !sluice_common::tenancy::valid_name(tenant))
        {
            return Err(SluiceError::invalid(format!(
                "agent.tenants_by_certificate.{name}: {tenant:?} is not a tenant name (1 to 64 of ASCII letters, digits, '-', '_' and '.')"
            )));
        }
        Ok(AgentConfig {
            listen: self.listen,
            tenant_tag: self.tenant_tag,
            tenants_by_certificate: self.tenants_by_certificate,
            dopplers: self.dopplers,
            flush_envelopes: self.flush_envelopes,
            flush_bytes: self.flush_bytes,
            flush_interval: parse_duration("agent.flush_interval", &self.flush_interval)?,
            max_timestamp_age: parse_duration("agent.max_timestamp_age", &self.max_timestamp_age)?,
            max_timestamp_ahead: parse_duration(
                "agent.max_timestamp_ahead",
                &self.max_timestamp_ahead,
            )?,
            max_envelope_bytes: self.max_envelope_bytes,
            max_message_bytes: self.max_message_bytes,
            max_in_flight_batches: self.max_in_flight_batches,
            max_pending_envelopes: self.max_pending_envelopes,
            max_pending_bytes: self.max_pending_bytes,
            pending_wait: parse_duration("agent.pending_wait", &self.pending_wait)?,
            max_pending_share: self.max_pending_share,
            max_waiting_bytes: self.max_waiting_bytes,
            state_dir: data_dir.join("agent"),
            elasticsearch: self.elasticsearch.validate(data_dir)?,
            syslog: validate_syslog(self.syslog)?,
            host_metrics: validate_host_metrics(self.host_metrics)?,
            prometheus: validate_prometheus(self.prometheus)?,
            files: validate_files(self.files)?,
            otlp: self.otlp.validate(data_dir)?,
        })
    }
}

sluice_common::default_from_empty_table!(
    RawAgentConfig,
    RawElasticsearchSourceConfig,
    RawSyslogSourceConfig,
    RawHostMetricsSourceConfig,
    RawPrometheusSourceConfig,
    RawOtlpSourceConfig
);
