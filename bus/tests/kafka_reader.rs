//! The Kafka reader (outside every group) against a real Kafka-protocol broker (tansu,
//! started by `scripts/services start kafka`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_bus::config::RawKafkaConfig;
use sluice_bus::kafka::KafkaBus;
use sluice_bus::metrics::BusMetrics;
use sluice_bus::{Bus, Positions, ReadEvent, Reader};
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

/// Reads until every partition reached `end`, checking that each record comes once, in
/// offset order, from where the reader started, with no gap.
async fn read_to(reader: &mut Box<dyn Reader>, start: &Positions, end: &Positions) -> usize {
    let mut next: BTreeMap<u32, u64> = start.0.clone();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while end
        .0
        .iter()
        .any(|(partition, last)| next.get(partition).copied().unwrap_or(0) < *last)
    {
        assert!(
            Instant::now() < deadline,
            "read {received} records in 60 s: at {next:?} of {end:?}"
        );
        for event in reader.poll(500, Duration::from_millis(500)).await.unwrap() {
            let ReadEvent::Record(record) = event else {
                panic!("the broker kept every record: {event:?}");
            };
            let expected = next.entry(record.partition).or_insert(0);
            assert_eq!(record.offset, *expected, "partition {}", record.partition);
            *expected += 1;
            received += 1;
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_reads_from_any_position_and_then_live() {
    let topic = format!("reader-{}", sluice_common::time::now_nanos());
    let bus = KafkaBus::open(
        &settings(&topic),
        16 * 1024 * 1024,
        BusMetrics::register(&Telemetry::new()),
    )
    .await
    .expect("open the kafka bus");
    const RECORDS: u64 = 600;
    for index in 0..RECORDS {
        bus.append(
            &format!("key-{}", index % 5),
            Bytes::from(format!("{index}")),
        )
        .await
        .unwrap();
    }
    let end = bus.end_positions().await.unwrap();
    assert_eq!(end.0.len(), 2, "{end:?}");
    assert_eq!(end.0.values().sum::<u64>(), RECORDS);

    // From the middle of each partition: exactly the rest.
    let middle = Positions(
        end.0
            .iter()
            .map(|(partition, last)| (*partition, last / 2))
            .collect(),
    );
    let mut reader = bus.reader(&middle).await.unwrap();
    let rest: u64 = end.0.values().map(|last| last - last / 2).sum();
    assert_eq!(read_to(&mut reader, &middle, &end).await as u64, rest);

    // Then live: the next appends arrive on the same reader.
    for index in 0..20 {
        bus.append(&format!("key-{}", index % 5), Bytes::from_static(b"live"))
            .await
            .unwrap();
    }
    let later = bus.end_positions().await.unwrap();
    assert_eq!(read_to(&mut reader, &end, &later).await, 20);

    // A reader from the end sees nothing old; group positions are empty for a group that
    // never committed.
    let mut fresh = bus.reader(&later).await.unwrap();
    assert!(
        fresh
            .poll(100, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        bus.group_positions("indexer").await.unwrap(),
        Positions::default()
    );
}
