//! The Prometheus registry that every component registers its metrics in, and its text encoding.
//!
//! Naming follows `docs/telemetry.md`: `sluice_<component>_<noun>_<unit>`, counters get the
//! `_total` suffix from the encoder, and label values come from small fixed sets.

use std::sync::{Arc, Mutex};

use prometheus_client::registry::{Metric, Registry};

/// A shared, cloneable handle on one process's metric registry.
#[derive(Clone, Default)]
pub struct Telemetry {
    registry: Arc<Mutex<Registry>>,
}

impl Telemetry {
    /// Creates an empty registry.
    pub fn new() -> Telemetry {
        Telemetry::default()
    }

    /// Registers `metric` under `name` (without the `_total` suffix) and returns it.
    pub fn register<M: Metric + Clone>(&self, name: &str, help: &str, metric: M) -> M {
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.register(name, help, metric.clone());
        metric
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            // Encoding into a String only fails on a formatting bug; say so in the output.
            text.push_str(&format!("# encoding failed: {error}\n"));
        }
        text
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Telemetry")
    }
}
