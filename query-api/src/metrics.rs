//! Metrics of the query API (see `docs/telemetry.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_common::telemetry::Telemetry;

/// Labels: `endpoint` (search, tail, sql) and `status` (2xx, 4xx, 5xx).
pub type RequestLabels = Vec<(String, String)>;

/// The query API's counters.
#[derive(Clone)]
pub struct QueryMetrics {
    /// Requests by endpoint and status class.
    pub requests: Family<RequestLabels, Counter>,
}

impl QueryMetrics {
    /// Registers the query API's metrics.
    pub fn register(telemetry: &Telemetry) -> QueryMetrics {
        QueryMetrics {
            requests: telemetry.register(
                "sluice_query_requests",
                "Requests by endpoint and status class",
                Family::default(),
            ),
        }
    }

    /// Counts one request to `endpoint` answered with `status`.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&vec![
                ("endpoint".to_owned(), endpoint.to_owned()),
                ("status".to_owned(), class.to_owned()),
            ])
            .inc();
    }
}
