//! `[agent.elasticsearch]`: what serde reads and its validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_common::SluiceError;

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
    /// Serve HTTPS with the node certificate (`[tls]`, or the local CA's); Elasticsearch
    /// clients take the CA as `ca_certs`.
    #[serde(default)]
    pub tls: bool,
    /// Serve plain HTTP on an address beyond loopback (refused at start otherwise).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// A document field (dotted path, e.g. `service.name`) whose value becomes the source_id;
    /// documents without it use their index name.
    #[serde(default)]
    pub source_id_field: Option<String>,
    /// Largest request body, in bytes, as sent and again after gzip decompression.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Require a Sluice token with the ingest right (`sluice tokens create --rights ingest`),
    /// sent the ways Elasticsearch clients send credentials: `Authorization: ApiKey
    /// base64(id:token)` (a client's `api_key=(id, token)`), `Basic base64(user:token)` (any
    /// user name, the token as password) or `Bearer token`.
    #[serde(default)]
    pub require_token: bool,
    /// The token file; `<data_dir>/auth/tokens.json` by default.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
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

/// Validated `[agent.elasticsearch]`.
#[derive(Debug, Clone)]
pub struct ElasticsearchSourceConfig {
    /// HTTP address.
    pub listen: SocketAddr,
    /// Whether it serves HTTPS.
    pub tls: bool,
    /// Field naming the source_id, as path segments.
    pub source_id_field: Option<Vec<String>>,
    /// Largest body, compressed and decompressed.
    pub max_body_bytes: usize,
    /// The token file senders are checked against, when tokens are required.
    pub tokens_file: Option<PathBuf>,
}

impl RawElasticsearchSourceConfig {
    /// Checks every field; the token file defaults to `<data_dir>/auth/tokens.json`.
    pub fn validate(
        self,
        data_dir: &Path,
    ) -> Result<Option<ElasticsearchSourceConfig>, SluiceError> {
        let raw = self;
        if !raw.enabled {
            return Ok(None);
        }
        if raw.max_body_bytes == 0 {
            return Err(SluiceError::invalid(
                "agent.elasticsearch.max_body_bytes: must be at least 1",
            ));
        }
        sluice_common::config::check_plaintext(
            "agent.elasticsearch",
            "listen",
            raw.listen,
            raw.tls,
            raw.allow_plaintext,
        )?;
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
            tls: raw.tls,
            source_id_field,
            max_body_bytes: raw.max_body_bytes,
            tokens_file: raw.require_token.then(|| {
                raw.tokens_file
                    .unwrap_or_else(|| data_dir.join("auth").join("tokens.json"))
            }),
        }))
    }
}
