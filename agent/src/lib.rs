//! The Sluice agent: runs on every VM, accepts envelopes from local sources and forwards them
//! in numbered batches to dopplers over gRPC with mutual TLS.
//!
//! # Layout
//!
//! - [`sources`]: one folder per input (the Loggregator v2 gRPC ingress, Elasticsearch `_bulk`,
//!   syslog). A source validates what it receives, refuses bad records one by one (counted by
//!   reason), and hands envelopes to the forwarder.
//! - [`forwarder`]: batches envelopes (flush at N envelopes or after an interval), numbers each
//!   batch per agent, sends batches to dopplers and retries until one acknowledges.
//! - [`identity`]: the agent's id, stable across restarts, plus its start time.
//! - [`metrics`]: the agent's counters.
//!
//! # Delivery guarantee
//!
//! A source answers its client only after every envelope of the request is in a batch that a
//! doppler has appended to the durable bus. So an acknowledged envelope is never lost, and the
//! agent needs no spool of its own: backpressure (a bounded number of unacknowledged envelopes)
//! reaches the client instead.

pub mod config;
pub mod forwarder;
pub mod identity;
pub mod metrics;
pub mod sources;
#[cfg(test)]
mod test_support;

use std::sync::Arc;

use crate::config::AgentConfig;
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::telemetry::Telemetry;
use sluice_common::tls::TlsMaterial;
use tracing::info;

/// Runs the agent until `shutdown` fires: the ingress stops accepting, pending batches are
/// flushed and acknowledged (or their clients told they failed).
pub async fn run(
    config: AgentConfig,
    tls: TlsMaterial,
    telemetry: Telemetry,
    shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let metrics = metrics::AgentMetrics::register(&telemetry);
    let agent_id = identity::agent_id(&config.state_dir)?;
    info!(agent_id = %agent_id, listen = %config.listen, dopplers = ?config.dopplers, "agent starting");
    let forwarder = forwarder::Forwarder::start(&config, agent_id, &tls, metrics.clone())?;
    let mut sources = tokio::task::JoinSet::new();
    if let Some(source_config) = config.elasticsearch.clone() {
        let authenticator = sources::auth::open(source_config.tokens_file.as_ref())?;
        let source = sources::elasticsearch::ElasticsearchSource::new(
            source_config,
            Arc::clone(&forwarder),
            config.max_envelope_bytes,
            metrics.clone(),
            authenticator,
            &tls,
        );
        sources.spawn(source.serve(shutdown.clone()));
    }
    if let Some(source_config) = config.syslog.clone() {
        let source = sources::syslog::SyslogSource::new(
            source_config,
            Arc::clone(&forwarder),
            &tls,
            config.tenants_by_certificate.clone(),
            metrics.clone(),
        )?;
        sources.spawn(source.serve(shutdown.clone()));
    }
    if let Some(source_config) = config.host_metrics.clone() {
        let source = sources::host::HostMetricsSource::new(
            source_config,
            Arc::clone(&forwarder),
            metrics.clone(),
        );
        sources.spawn(source.serve(shutdown.clone()));
    }
    if let Some(source_config) = config.prometheus.clone() {
        let source = sources::prometheus::PrometheusSource::new(
            source_config,
            Arc::clone(&forwarder),
            metrics.clone(),
        );
        sources.spawn(source.serve(shutdown.clone()));
    }
    if !config.files.is_empty() {
        let source = sources::files::FilesSource::new(
            config.files.clone(),
            &config.state_dir,
            Arc::clone(&forwarder),
            metrics.clone(),
        )?;
        sources.spawn(source.serve(shutdown.clone()));
    }
    if let Some(source_config) = config.otlp.clone() {
        let authenticator = sources::auth::open(source_config.tokens_file.as_ref())?;
        let source = sources::otlp::OtlpSource::new(
            source_config,
            Arc::clone(&forwarder),
            config.max_envelope_bytes,
            metrics.clone(),
            authenticator,
            &tls,
        );
        sources.spawn(source.serve(shutdown.clone()));
    }
    let ingress =
        sources::loggregator::LoggregatorIngress::new(Arc::clone(&forwarder), &config, metrics);
    sources.spawn({
        let tls = tls.clone();
        let (listen, max_message_bytes) = (config.listen, config.max_message_bytes);
        async move {
            ingress
                .serve(listen, &tls, max_message_bytes, shutdown)
                .await
        }
    });
    // A source that cannot start (say its port is taken) stops the agent with its error.
    let mut result = Ok(());
    while let Some(joined) = sources.join_next().await {
        let outcome = joined.unwrap_or_else(|error| {
            Err(SluiceError::internal(format!(
                "an agent source failed: {error}"
            )))
        });
        if let Err(error) = outcome {
            if result.is_ok() {
                result = Err(error);
            }
            sources.abort_all();
        }
    }
    forwarder.drain().await;
    result
}
