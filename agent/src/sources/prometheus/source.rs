//! Scrapes each configured target every interval (plain HTTP, `GET`, the page capped in
//! size) and forwards its samples. A target that cannot be reached or answers badly is logged
//! and counted (`reason="scrape_failed"`), and tried again next interval.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{PrometheusSourceConfig, PrometheusTarget};
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use tracing::{debug, info, warn};

use super::exposition;
use crate::forwarder::{Forwarder, Ticket};
use crate::metrics::AgentMetrics;

const SOURCE: &str = "prometheus";

/// The Prometheus scraping source.
pub struct PrometheusSource {
    config: PrometheusSourceConfig,
    forwarder: Arc<Forwarder>,
    metrics: AgentMetrics,
}

impl PrometheusSource {
    /// A source feeding `forwarder`.
    pub fn new(
        config: PrometheusSourceConfig,
        forwarder: Arc<Forwarder>,
        metrics: AgentMetrics,
    ) -> PrometheusSource {
        PrometheusSource {
            config,
            forwarder,
            metrics,
        }
    }

    /// Scrapes until `shutdown` fires.
    pub async fn serve(self, mut shutdown: Shutdown) -> Result<(), SluiceError> {
        let client = reqwest::Client::builder()
            .timeout(self.config.interval.min(Duration::from_secs(10)))
            .build()
            .map_err(|error| {
                SluiceError::internal(format!("failed to build the scrape client: {error}"))
            })?;
        info!(targets = self.config.targets.len(), interval = ?self.config.interval, "prometheus source scraping");
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                _ = ticker.tick() => {}
            }
            for target in &self.config.targets {
                if let Err(error) = self.scrape(&client, target).await {
                    self.metrics.source_refused(SOURCE, "scrape_failed");
                    warn!(url = %target.url, error = %error, "prometheus scrape failed");
                }
            }
        }
    }

    async fn scrape(
        &self,
        client: &reqwest::Client,
        target: &PrometheusTarget,
    ) -> Result<(), String> {
        let mut response = client
            .get(&target.url)
            .header("accept", "text/plain;version=0.0.4")
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > self.config.max_page_bytes {
                return Err(format!(
                    "the page is over {} bytes",
                    self.config.max_page_bytes
                ));
            }
        }
        let text = String::from_utf8_lossy(&body);
        let page = exposition::parse(&text);
        for (line, reason) in &page.refused {
            debug!(url = %target.url, line, reason = %reason, "refused a prometheus line");
            self.metrics.source_refused(SOURCE, "malformed_line");
        }
        let (envelopes, refused) = exposition::envelopes(
            &page,
            &target.source_id,
            &target.instance,
            sluice_common::time::now_nanos(),
        );
        for reason in refused {
            debug!(url = %target.url, reason = %reason, "refused a prometheus sample");
            self.metrics.source_refused(SOURCE, "bad_counter");
        }
        if envelopes.is_empty() {
            return Ok(());
        }
        let count = envelopes.len() as u64;
        let (ticket, _done) = Ticket::new(SOURCE);
        self.forwarder
            .submit(envelopes, &ticket)
            .await
            .map_err(|status| status.message().to_owned())?;
        self.metrics.source_accepted(SOURCE, count);
        Ok(())
    }
}
