//! Samples `/proc` every interval and forwards the gauges (see [`super::procfs`] for the
//! names). Envelopes: `source_id` as configured (`host` by default), `instance_id` the host
//! name, tag `host`; per-interface and per-device gauges also carry `interface` or `device`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::config::HostMetricsSourceConfig;
use sluice_common::SluiceError;
use sluice_common::shutdown::Shutdown;
use sluice_proto::v2::{Envelope, Gauge, GaugeValue, envelope};
use tracing::{info, warn};

use super::procfs::{self, Counters, CpuTimes};
use crate::forwarder::{Forwarder, Ticket};
use crate::metrics::AgentMetrics;

const SOURCE: &str = "host";

/// The host metrics source.
pub struct HostMetricsSource {
    config: HostMetricsSourceConfig,
    forwarder: Arc<Forwarder>,
    metrics: AgentMetrics,
    proc_dir: PathBuf,
}

struct Sample {
    at: Instant,
    cpu: Option<CpuTimes>,
    network: BTreeMap<String, Counters>,
    disks: BTreeMap<String, Counters>,
}

impl HostMetricsSource {
    /// A source feeding `forwarder`.
    pub fn new(
        config: HostMetricsSourceConfig,
        forwarder: Arc<Forwarder>,
        metrics: AgentMetrics,
    ) -> HostMetricsSource {
        HostMetricsSource {
            config,
            forwarder,
            metrics,
            proc_dir: PathBuf::from("/proc"),
        }
    }

    /// Samples until `shutdown` fires.
    pub async fn serve(self, mut shutdown: Shutdown) -> Result<(), SluiceError> {
        let host = self.read("sys/kernel/hostname").trim().to_owned();
        info!(interval = ?self.config.interval, source_id = %self.config.source_id, "host metrics source sampling");
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<Sample> = None;
        loop {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let (sample, envelopes) = self.sample(&host, previous.as_ref());
            previous = Some(sample);
            if envelopes.is_empty() {
                continue;
            }
            let count = envelopes.len() as u64;
            let (ticket, _done) = Ticket::new(SOURCE);
            match self.forwarder.submit(envelopes, &ticket).await {
                Ok(()) => self.metrics.source_accepted(SOURCE, count),
                Err(status) => warn!(error = %status.message(), "host metrics not forwarded"),
            }
        }
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.proc_dir.join(path)).unwrap_or_default()
    }

    fn sample(&self, host: &str, previous: Option<&Sample>) -> (Sample, Vec<Envelope>) {
        let now = sluice_common::time::now_nanos();
        let stat = procfs::parse_stat(&self.read("stat"));
        let sample = Sample {
            at: Instant::now(),
            cpu: stat.map(|(times, _)| times),
            network: procfs::parse_net_dev(&self.read("net/dev")),
            disks: procfs::parse_diskstats(&self.read("diskstats")),
        };
        let seconds = previous.map_or(0.0, |before| {
            sample.at.duration_since(before.at).as_secs_f64()
        });
        let mut host_wide: Vec<(&str, &str, f64)> = Vec::new();
        if let Some((_, count)) = stat {
            host_wide.push(("cpu.count", "count", count as f64));
        }
        if let (Some(before), Some(after)) = (previous.and_then(|before| before.cpu), sample.cpu) {
            host_wide.extend(
                procfs::cpu_percent(before, after)
                    .into_iter()
                    .map(|(name, value)| (name, "percent", value)),
            );
        }
        if let Some((one, five, fifteen)) = procfs::parse_loadavg(&self.read("loadavg")) {
            host_wide.push(("load.1m", "", one));
            host_wide.push(("load.5m", "", five));
            host_wide.push(("load.15m", "", fifteen));
        }
        host_wide.extend(procfs::memory_gauges(&procfs::parse_meminfo(
            &self.read("meminfo"),
        )));

        let mut envelopes = Vec::new();
        let mut push = |gauges: Vec<(&str, &str, f64)>, extra: Option<(&str, &str)>| {
            if gauges.is_empty() {
                return;
            }
            let mut tags = HashMap::from([("host".to_owned(), host.to_owned())]);
            if let Some((key, value)) = extra {
                tags.insert(key.to_owned(), value.to_owned());
            }
            envelopes.push(Envelope {
                timestamp: now,
                source_id: self.config.source_id.clone(),
                instance_id: host.to_owned(),
                tags,
                message: Some(envelope::Message::Gauge(Gauge {
                    metrics: gauges
                        .into_iter()
                        .map(|(name, unit, value)| {
                            (
                                name.to_owned(),
                                GaugeValue {
                                    unit: unit.to_owned(),
                                    value,
                                },
                            )
                        })
                        .collect(),
                })),
                ..Default::default()
            });
        };
        push(host_wide, None);
        if let Some(before) = previous {
            for (name, after) in &sample.network {
                if let Some(old) = before.network.get(name) {
                    push(
                        procfs::rates(old, after, seconds),
                        Some(("interface", name)),
                    );
                }
            }
            for (name, after) in &sample.disks {
                if let Some(old) = before.disks.get(name) {
                    push(procfs::rates(old, after, seconds), Some(("device", name)));
                }
            }
        }
        (sample, envelopes)
    }
}
