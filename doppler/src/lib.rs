//! The doppler: fan-in from agents, durable append to the bus, and live egress.
//!
//! # Layout
//!
//! - [`ingress`]: `sluice.v1.DopplerIngress/Push`: validates a batch, appends it to the bus,
//!   acknowledges once durable, then hands it to the hub.
//! - [`egress`]: `loggregator.v2.Egress`: subscribers with selectors and shard groups. Each
//!   subscriber has a bounded queue; when it is full the subscriber's envelopes are dropped and
//!   counted, so a slow reader never slows ingestion.
//! - [`patterns`]: the pattern of every log line, mined as its batch arrives and carried in
//!   the bus record, so the index and the archive store the same id.
//! - [`metrics`]: the doppler's counters.

pub mod config;
pub mod egress;
pub mod ingress;
pub mod metrics;
pub mod patterns;

use std::sync::Arc;

use crate::config::DopplerConfig;
use sluice_bus::Bus;
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_common::telemetry::Telemetry;
use sluice_common::tls::TlsMaterial;
use sluice_proto::v1::doppler_ingress_server::DopplerIngressServer;
use sluice_proto::v2::egress_server::EgressServer;

/// Serves the doppler on `config.listen` until `shutdown` fires.
pub async fn run(
    config: DopplerConfig,
    tls: TlsMaterial,
    bus: Arc<dyn Bus>,
    telemetry: Telemetry,
    mut shutdown: Shutdown,
) -> Result<(), SluiceError> {
    let metrics = metrics::DopplerMetrics::register(&telemetry);
    let hub = Arc::new(egress::Hub::new(
        config.subscriber_buffer_batches,
        metrics.clone(),
    ));
    let patterns = Arc::new(patterns::Patterns::open(
        config.patterns.clone(),
        &telemetry,
    ));
    let saver = tokio::spawn(Arc::clone(&patterns).run_saver(shutdown.clone()));
    let ingress = ingress::DopplerIngressService::new(
        bus,
        Arc::clone(&hub),
        metrics,
        config.max_pending_bytes,
        config.pending_wait,
    )
    .with_patterns(patterns, config.max_batch_envelopes);
    let egress = egress::EgressService::new(hub);
    let listener = sluice_common::listen(config.listen, "doppler").await?;
    let served = tonic::transport::Server::builder()
        .add_service(
            DopplerIngressServer::new(ingress)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .add_service(EgressServer::new(egress).max_encoding_message_size(config.max_message_bytes))
        .serve_with_incoming_shutdown(tls.incoming(listener), async move { shutdown.wait().await })
        .await
        .map_err(|error| SluiceError::internal(format!("doppler failed: {error}")));
    // What the miners learned last is saved before the doppler is done.
    let _ = saver.await;
    served
}
