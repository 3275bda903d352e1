//! Open-loop overload: unary `Send` requests to an agent's Loggregator ingress at a fixed
//! rate, whatever the agent answers, for a fixed time, the way a fleet of applications keeps
//! logging while the pipeline is saturated. Each request's outcome is counted: accepted,
//! refused with a status the client sees (by gRPC code), or not sent because every one of the
//! client's request slots was already waiting on the agent (the agent holding its clients
//! back). Only accepted envelopes must end up stored; the harness checks that they all do,
//! exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_proto::v2::{EnvelopeBatch, envelope};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::generator::Generator;

/// How to overload the agent.
#[derive(Debug, Clone)]
pub struct OverloadSettings {
    /// First envelope index (so the run sends new data).
    pub first: u64,
    /// Envelopes per second offered, over all connections.
    pub rate: f64,
    /// How long to offer them.
    pub duration: Duration,
    /// Envelopes per request.
    pub batch: usize,
    /// Requests waiting on the agent at once, at most; a request due while all are busy is
    /// counted as held back and not sent.
    pub max_in_flight: usize,
    /// A request's deadline.
    pub timeout: Duration,
}

/// What an overload run saw.
#[derive(Debug, Default, Serialize)]
pub struct OverloadReport {
    /// Envelopes the schedule offered.
    pub offered: u64,
    /// Envelopes in requests actually sent.
    pub sent: u64,
    /// Envelopes the agent accepted (acknowledged: durable).
    pub accepted: u64,
    /// Of which log lines (what the index and the `logs` table must hold).
    pub accepted_log_lines: u64,
    /// Envelopes refused, by gRPC code.
    pub refused: BTreeMap<String, u64>,
    /// Envelopes not sent because every request slot was waiting on the agent.
    pub held_back: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed_s: f64,
    /// Median and 99th-percentile latency of accepted requests, ms.
    pub accepted_p50_ms: f64,
    pub accepted_p99_ms: f64,
}

/// Runs the schedule over `clients` (requests go to them in turn) and waits for every request sent to be answered.
pub async fn run(
    generator: Arc<Generator>,
    clients: Vec<IngressClient<Channel>>,
    settings: OverloadSettings,
) -> OverloadReport {
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let accepted = Arc::new(AtomicU64::new(0));
    let accepted_lines = Arc::new(AtomicU64::new(0));
    let refused: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut report = OverloadReport::default();
    let interval = Duration::from_secs_f64(settings.batch as f64 / settings.rate.max(1.0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut index = settings.first;
    let mut request = 0usize;
    while started.elapsed() < settings.duration {
        let due = started + interval.mul_f64(request as f64);
        tokio::time::sleep_until(due.into()).await;
        report.offered += settings.batch as u64;
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            report.held_back += settings.batch as u64;
            index += settings.batch as u64;
            request += 1;
            continue;
        };
        let mut client = clients[request % clients.len()].clone();
        request += 1;
        let (generator, accepted, accepted_lines, refused, latencies) = (
            Arc::clone(&generator),
            Arc::clone(&accepted),
            Arc::clone(&accepted_lines),
            Arc::clone(&refused),
            Arc::clone(&latencies),
        );
        let (first, count, timeout) = (index, settings.batch, settings.timeout);
        index += count as u64;
        report.sent += count as u64;
        tasks.spawn(async move {
            let _slot = slot;
            let now = sluice_common::time::now_nanos();
            let batch: Vec<_> = (first..first + count as u64)
                .map(|item| generator.envelope(item, now))
                .collect();
            let lines = batch
                .iter()
                .filter(|envelope| matches!(envelope.message, Some(envelope::Message::Log(_))))
                .count() as u64;
            let mut call = tonic::Request::new(EnvelopeBatch { batch });
            call.set_timeout(timeout);
            let sent_at = Instant::now();
            match client.send(call).await {
                Ok(_) => {
                    accepted.fetch_add(count as u64, Ordering::Relaxed);
                    accepted_lines.fetch_add(lines, Ordering::Relaxed);
                    latencies
                        .lock()
                        .expect("latencies")
                        .push(sent_at.elapsed().as_secs_f64() * 1000.0);
                }
                Err(status) => {
                    *refused
                        .lock()
                        .expect("refused")
                        .entry(format!("{:?}", status.code()))
                        .or_default() += count as u64;
                }
            }
        });
        // Reap what has finished, so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.accepted = accepted.load(Ordering::Relaxed);
    report.accepted_log_lines = accepted_lines.load(Ordering::Relaxed);
    report.refused = std::mem::take(&mut *refused.lock().expect("refused"));
    let mut latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    report.accepted_p50_ms = at(0.5);
    report.accepted_p99_ms = at(0.99);
    report
}
