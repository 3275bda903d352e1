//! The configuration file: one TOML format for every role, with defaults for everything.
//!
//! Each section belongs to its role's crate, which reads and validates it
//! (`sluice_agent::config`, `sluice_doppler::config`, `sluice_bus::config`,
//! `sluice_indexer::config`, `sluice_retention::config`, `sluice_query_api::config`). Here they
//! are composed into [`RawConfig`], and [`RawConfig::validate`] checks each section and then
//! what no one section can check alone: that the size limits along the path nest. Nothing
//! invalid is silently fixed. `config/sluice.example.toml` in the repository shows every key
//! with its default, and a test loads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_agent::config::{AgentConfig, RawAgentConfig};
use sluice_bus::config::{BusConfig, RawBusConfig};
use sluice_common::SluiceError;
use sluice_common::config::{RawTlsConfig, from_empty_table, positive};
use sluice_common::tls::TlsPaths;
use sluice_doppler::config::{DopplerConfig, RawDopplerConfig};
use sluice_indexer::config::{IndexerConfig, RawIndexerConfig};
use sluice_query_api::config::{QueryApiConfig, RawQueryApiConfig};
use sluice_retention::config::{RawRetentionConfig, RetentionConfig};

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
        from_empty_table()
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./sluice-data")
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// See [`RawConfig::data_dir`].
    pub data_dir: PathBuf,
    /// TLS file locations; `None` means "use the local CA in `<data_dir>/tls`".
    pub tls: Option<TlsPaths>,
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

/// Bytes of an encoded batch besides its envelopes' own framing (the agent id and sequence
/// number, with room to spare): what `doppler.max_message_bytes` must leave above
/// `agent.flush_bytes`.
pub const BATCH_OVERHEAD_BYTES: usize = 1024;

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

    /// Checks every section, then the limits that cross sections, and resolves the defaults
    /// that depend on `data_dir`.
    pub fn validate(self) -> Result<Config, SluiceError> {
        let data_dir = self.data_dir;
        let tls = match (self.tls.ca_cert, self.tls.cert, self.tls.key) {
            (None, None, None) => None,
            (Some(ca_cert), Some(cert), Some(key)) => Some(TlsPaths { ca_cert, cert, key }),
            _ => {
                return Err(SluiceError::invalid(
                    "tls: set all of ca_cert, cert and key, or none of them to use the local CA",
                ));
            }
        };
        check_size_limits(&self.agent, &self.doppler, self.bus.max_record_bytes)?;
        Ok(Config {
            tls,
            tls_server_name: self.tls.server_name,
            agent: self.agent.validate(&data_dir)?,
            doppler: self.doppler.validate(&data_dir)?,
            bus: self.bus.validate(&data_dir)?,
            indexer: self.indexer.validate(&data_dir)?,
            retention: self.retention.validate(&data_dir)?,
            query_api: self.query_api.validate(&data_dir)?,
            telemetry_listen: self.telemetry.listen,
            data_dir,
        })
    }
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
    // The doppler writes each line's pattern into the record it appends.
    let patterns_overhead = if doppler.patterns.enabled {
        sluice_doppler::patterns::overhead_bytes(
            doppler.max_batch_envelopes,
            doppler.patterns.max_template_bytes_per_batch,
        )
    } else {
        0
    };
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
            "doppler.max_message_bytes + what a batch's patterns add (10 bytes per envelope up to doppler.max_batch_envelopes, doppler.patterns.max_template_bytes_per_batch, 1024)",
            doppler.max_message_bytes.saturating_add(patterns_overhead),
        ),
        (
            "doppler.max_batch_envelopes",
            doppler.max_batch_envelopes,
            "agent.flush_envelopes",
            agent.flush_envelopes,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_retention::config::ArchiveLocation;

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
                "[doppler]\nmax_message_bytes = 16777216\n",
                ["bus.max_record_bytes", "doppler.max_batch_envelopes"],
            ),
            (
                "[agent]\nflush_envelopes = 20000\n",
                ["doppler.max_batch_envelopes", "agent.flush_envelopes"],
            ),
            (
                "[agent]\nmax_pending_bytes = 1048576\n",
                ["agent.max_pending_bytes", "agent.flush_bytes"],
            ),
            (
                "[bus.wal]\nsegment_bytes = 1048576\n",
                ["bus.wal.segment_bytes", "bus.max_record_bytes"],
            ),
            (
                "[doppler.patterns]\nmax_leaves = 100\n",
                [
                    "doppler.patterns.max_leaves",
                    "doppler.patterns.max_leaves_per_source",
                ],
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
}
