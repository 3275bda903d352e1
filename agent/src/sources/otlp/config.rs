//! `[agent.otlp]`: what serde reads and its validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_common::SluiceError;

fn default_true() -> bool {
    true
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
    /// Serve both over TLS with the node certificate (`[tls]`, or the local CA's; no client
    /// certificate asked): OTLP exporters take the CA as their `certificate` setting.
    #[serde(default)]
    pub tls: bool,
    /// Serve without TLS on addresses beyond loopback (refused at start otherwise).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Resource attribute whose value becomes the source_id.
    #[serde(default = "default_source_id_attribute")]
    pub source_id_attribute: String,
    /// Quantiles estimated from explicit-bucket histograms, each a gauge `<name>.p<q>`.
    #[serde(default = "default_histogram_quantiles")]
    pub histogram_quantiles: Vec<f64>,
    /// Largest export accepted, in bytes (as sent and after decompression).
    #[serde(default = "default_otlp_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Require a Sluice token with the ingest right (`sluice tokens create --rights ingest`)
    /// on every export, as `authorization: Bearer <token>` (gRPC metadata or HTTP header; the
    /// OpenTelemetry exporters' `headers` setting).
    #[serde(default)]
    pub require_token: bool,
    /// The token file; `<data_dir>/auth/tokens.json` by default.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
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

/// Validated `[agent.otlp]`.
#[derive(Debug, Clone)]
pub struct OtlpSourceConfig {
    /// OTLP/gRPC address.
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP address.
    pub http_listen: SocketAddr,
    /// Whether both serve TLS.
    pub tls: bool,
    /// Resource attribute naming the source_id.
    pub source_id_attribute: String,
    /// Quantiles estimated from histograms.
    pub histogram_quantiles: Vec<f64>,
    /// Largest export.
    pub max_message_bytes: usize,
    /// The token file senders are checked against, when tokens are required.
    pub tokens_file: Option<PathBuf>,
}

impl RawOtlpSourceConfig {
    /// Checks every field; the token file defaults to `<data_dir>/auth/tokens.json`.
    pub fn validate(self, data_dir: &Path) -> Result<Option<OtlpSourceConfig>, SluiceError> {
        let raw = self;
        if !raw.enabled {
            return Ok(None);
        }
        for (key, listen) in [
            ("grpc_listen", raw.grpc_listen),
            ("http_listen", raw.http_listen),
        ] {
            sluice_common::config::check_plaintext(
                "agent.otlp",
                key,
                listen,
                raw.tls,
                raw.allow_plaintext,
            )?;
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
            tls: raw.tls,
            source_id_attribute: raw.source_id_attribute,
            histogram_quantiles: raw.histogram_quantiles,
            max_message_bytes: raw.max_message_bytes,
            tokens_file: raw.require_token.then(|| {
                raw.tokens_file
                    .unwrap_or_else(|| data_dir.join("auth").join("tokens.json"))
            }),
        }))
    }
}
