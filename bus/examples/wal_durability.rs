//! Measures the embedded WAL's two durability settings side by side, on this machine's disk:
//! appends per second and append latency with `fsync` (a group commit per write) and with
//! `flush` (synced every 200 ms), for the same load: `writers` concurrent appenders (as
//! dopplers serve concurrent agents), each appending `records` records of `bytes` bytes.
//!
//! `cargo run --release -p sluice-bus --example wal_durability -- [writers] [records] [bytes]`
//! prints one JSON object per setting (bench/run records them in the report).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_bus::Bus;
use sluice_bus::metrics::BusMetrics;
use sluice_bus::wal::{Durability, WalBus, WalSettings};
use sluice_common::telemetry::Telemetry;

fn argument(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let writers = argument(1, 16);
    let records = argument(2, 2_000);
    let bytes = argument(3, 20_000);
    let base = std::env::var("SLUICE_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), Into::into);
    for (name, durability) in [
        ("fsync", Durability::Fsync),
        (
            "flush",
            Durability::Flush {
                interval: Duration::from_millis(200),
            },
        ),
    ] {
        let dir = base.join(format!("sluice-wal-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = WalSettings {
            durability,
            max_disk_bytes: 64 * 1024 * 1024 * 1024,
            ..WalSettings::default()
        };
        let bus = Arc::new(
            WalBus::open(&dir, settings, BusMetrics::register(&Telemetry::new()))
                .await
                .expect("open the wal"),
        );
        let payload = Bytes::from(vec![b'r'; bytes]);
        let started = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let bus = Arc::clone(&bus);
                let payload = payload.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(records);
                    for _ in 0..records {
                        let sent = Instant::now();
                        bus.append("key", payload.clone()).await.expect("append");
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("writer"));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let percentile = |p: f64| {
            latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1_000.0
        };
        let total = (writers * records) as f64;
        println!(
            "{{\"durability\": \"{name}\", \"writers\": {writers}, \"records\": {}, \"record_bytes\": {bytes}, \"seconds\": {:.3}, \"records_per_s\": {:.0}, \"mb_per_s\": {:.1}, \"latency_ms_p50\": {:.3}, \"latency_ms_p99\": {:.3}}}",
            writers * records,
            elapsed.as_secs_f64(),
            total / elapsed.as_secs_f64(),
            total * bytes as f64 / elapsed.as_secs_f64() / 1e6,
            percentile(0.5),
            percentile(0.99),
        );
        drop(bus);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
