//! The Kafka consumer against a real Kafka-protocol broker (tansu, started by
//! `scripts/services start kafka`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_bus::kafka::KafkaBus;
use sluice_bus::metrics::BusMetrics;
use sluice_bus::{Bus, BusEvent, Sharing};
use sluice_common::config::RawKafkaConfig;
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
        // Every other poll is given a few hundred microseconds: long enough to be inside its
        // loop over the already fetched messages, too short to finish it.
        let budget = if polls % 2 == 0 {
            Duration::from_micros(300)
        } else {
            Duration::from_secs(5)
        };
        let events = tokio::select! {
            polled = consumer.poll(1_000, Duration::from_millis(500)) => polled.unwrap(),
            () = tokio::time::sleep(budget) => {
                cut_short += 1;
                continue;
            }
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
