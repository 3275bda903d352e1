//! The Kafka consumer against a real Kafka-protocol broker (tansu, started by
//! `scripts/services start kafka`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_bus::config::RawKafkaConfig;
use sluice_bus::kafka::KafkaBus;
use sluice_bus::metrics::BusMetrics;
use sluice_bus::{Bus, BusEvent, Sharing};
use sluice_common::telemetry::Telemetry;

fn settings(topic: &str) -> RawKafkaConfig {
    let brokers = std::env::var("SLUICE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_KAFKA_BROKERS is not set: start the broker with `scripts/services start \
             kafka` and load its variables with `eval \"$(scripts/services env)\"` (scripts/test \
             does both)"
        )
    });
    toml::from_str(&format!(
        "brokers = \"{brokers}\"\ntopic = \"{topic}\"\npartitions = 2\ngroup_prefix = \"{topic}\"\n"
    ))
    .unwrap()
}

/// A poll dropped at an await point (a `select!` that picked another branch, as the indexer's
/// and retention's loops do on every tick) must leave what it had taken from the broker for the
/// next poll: every record arrives once, in order, with no gap. (A poll that kept its records
/// in its own future lost runs of them, and the indexer then never indexed those lines.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_cut_short_by_select_lose_no_record() {
    let topic = format!("poll-cancel-{}", sluice_common::time::now_nanos());
    let bus = KafkaBus::open(
        &settings(&topic),
        16 * 1024 * 1024,
        BusMetrics::register(&Telemetry::new()),
    )
    .await
    .expect("open the kafka bus");
    const RECORDS: usize = 3_000;
    for index in 0..RECORDS {
        bus.append(
            &format!("key-{}", index % 7),
            Bytes::from(format!("{index}")),
        )
        .await
        .unwrap();
    }

    let mut consumer = bus
        .subscribe(&format!("{topic}-reader"), "reader", Sharing::Sole)
        .await
        .unwrap();
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut received = 0_usize;
    let (mut cut_short, mut polls) = (0_u32, 0_u32);
    let deadline = Instant::now() + Duration::from_secs(120);
    while received < RECORDS {
        assert!(
            Instant::now() < deadline,
            "{received} of {RECORDS} records in 120 s"
        );
        polls += 1;
        // Every other poll is cut short at its first wait: it has asked for records (or is
        // inside its wait for them) when the other branch wins. Dropping it there must leave
        // what was taken for the next poll.
        let cut = polls % 2 == 0;
        let events = tokio::select! {
            biased;
            () = async { if cut { tokio::task::yield_now().await } else { std::future::pending().await } } => {
                cut_short += 1;
                continue;
            }
            polled = consumer.poll(1_000, Duration::from_millis(500)) => polled.unwrap(),
        };
        for event in events {
            let BusEvent::Record(record) = event else {
                panic!("a sole consumer is never rewound");
            };
            let expected = next.entry(record.partition).or_insert(0);
            assert_eq!(
                record.offset, *expected,
                "partition {}: offset {} arrived where {} was due",
                record.partition, record.offset, expected
            );
            *expected += 1;
            received += 1;
        }
    }
    assert_eq!(received, RECORDS);
    assert!(cut_short > 0, "no poll was cut short");
    eprintln!("{RECORDS} records in order over {polls} polls, {cut_short} of them cut short");
    consumer.close().await;
}

/// Regression: rebalance callbacks (committed offsets, the stint log: network I/O) ran inside
/// the consumer's poll on an async worker, so a group join stalled every other task on that
/// worker for as long as it took. On a single-threaded runtime a ticker must keep ticking
/// while a shared consumer joins its group and takes its partitions. (The callback also
/// asserts, in debug builds, that it is not on a runtime.)
#[tokio::test(flavor = "current_thread")]
async fn regression_a_group_join_never_blocks_the_async_runtime() {
    let topic = format!("join-blocking-{}", sluice_common::time::now_nanos());
    // A long stint log (other groups' records, as years of rebalances leave), which every
    // join reads through: that read used to hold the runtime.
    let filler = KafkaBus::open(
        &settings(&format!("{topic}-stints")),
        16 * 1024 * 1024,
        BusMetrics::register(&Telemetry::new()),
    )
    .await
    .expect("open the stint log");
    for chunk in 0..20 {
        let appends = (0..5_000).map(|index| {
            filler.append(
                "other/0",
                Bytes::from(format!("{{\"filler\":{chunk}{index}}}")),
            )
        });
        for appended in futures::future::join_all(appends).await {
            appended.unwrap();
        }
    }
    let bus = KafkaBus::open(
        &settings(&topic),
        16 * 1024 * 1024,
        BusMetrics::register(&Telemetry::new()),
    )
    .await
    .expect("open the kafka bus");
    for index in 0..20 {
        bus.append(&format!("key-{index}"), Bytes::from(format!("{index}")))
            .await
            .unwrap();
    }
    let ticks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let ticker = tokio::spawn({
        let ticks = std::sync::Arc::clone(&ticks);
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            loop {
                interval.tick().await;
                ticks.lock().unwrap().push(Instant::now());
            }
        }
    });
    let mut consumer = bus
        .subscribe(&format!("{topic}-indexer"), "member-a", Sharing::Shared)
        .await
        .unwrap();
    let started = Instant::now();
    let mut received = 0;
    while received < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{received} of 20 records in 120 s"
        );
        let events = consumer
            .poll(100, Duration::from_millis(200))
            .await
            .unwrap();
        received += events
            .iter()
            .filter(|event| matches!(event, BusEvent::Record(_)))
            .count();
    }
    ticker.abort();
    let ticks = ticks.lock().unwrap().clone();
    let longest = ticks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    let joined_in = started.elapsed();
    eprintln!("longest stall {longest:?}; joined and fetched in {joined_in:?}");
    // Most of the join is reading the stint log: had it run on this runtime, the ticker
    // would have stopped for most of it. (Measured: 0.46 of the join with the callbacks on
    // the runtime, 0.03 off it.)
    assert!(
        longest * 3 < joined_in,
        "the runtime stalled for {longest:?} while the consumer joined (in {joined_in:?})"
    );
    consumer.close().await;
}
