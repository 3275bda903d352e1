//! The stint log against a real Kafka-protocol broker (tansu, started by
//! `scripts/services start kafka`): reads stay bounded however many rebalances were recorded,
//! and answer as the whole log would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rdkafka::ClientConfig;
use rdkafka::producer::BaseProducer;
use sluice_bus::config::RawKafkaConfig;
use sluice_bus::kafka::KafkaBus;
use sluice_bus::kafka::stints::{SNAPSHOT_AFTER, Stint, StintLog, StintState};
use sluice_bus::metrics::BusMetrics;
use sluice_common::telemetry::Telemetry;

fn brokers() -> String {
    std::env::var("SLUICE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_KAFKA_BROKERS is not set: start the broker with `scripts/services start \
             kafka` and load its variables with `eval \"$(scripts/services env)\"` (scripts/test \
             does both)"
        )
    })
}

/// 400 stints of 3 members over 4 partitions, read after every 10: each read answers as a
/// fold of every stint so far, while no read takes more than a few snapshots' worth of
/// records, though the log ends up several times longer. (Before snapshots, each read took
/// the whole log: a group join slowed down with every rebalance ever recorded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stint_log_reads_stay_bounded_and_answer_as_the_whole_log() {
    let topic = format!("stints-{}", sluice_common::time::now_nanos());
    let settings: RawKafkaConfig = toml::from_str(&format!(
        "brokers = \"{}\"\ntopic = \"{topic}\"\npartitions = 1\n",
        brokers()
    ))
    .unwrap();
    // Creates the data topic and its stint log.
    KafkaBus::open(
        &settings,
        1024 * 1024,
        BusMetrics::register(&Telemetry::new()),
    )
    .await
    .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let stints_topic = format!("{topic}-stints");
    let settings_for_thread = settings.clone();
    tokio::task::spawn_blocking(move || {
        let log = StintLog {
            topic: &stints_topic,
            group: "indexers",
            settings: &settings_for_thread,
            producer: &producer,
        };
        // Another group's stints share the log and are not this group's business.
        let other = StintLog {
            topic: log.topic,
            group: "others",
            settings: log.settings,
            producer: log.producer,
        };
        let mut expected = StintState::default();
        let mut most_read = 0;
        let mut snapshots = 0;
        for round in 0..40u64 {
            let batch: Vec<Stint> = (0..10u64)
                .map(|index| Stint {
                    group: "indexers".to_owned(),
                    partition: ((round + index) % 4) as i32,
                    member: format!("member-{}", (round * 7 + index) % 3),
                    start: round * 100 + index,
                })
                .collect();
            log.write(&batch).unwrap();
            other
                .write(&[Stint {
                    group: "others".to_owned(),
                    partition: 0,
                    member: "stranger".to_owned(),
                    start: round,
                }])
                .unwrap();
            for stint in &batch {
                expected.apply(stint);
            }
            let read = log.read().unwrap();
            assert_eq!(read.state, expected, "round {round}");
            most_read = most_read.max(read.records_read);
            snapshots += usize::from(read.snapshotted);
        }
        assert!(snapshots >= 4, "{snapshots} snapshots");
        assert!(
            most_read <= 3 * SNAPSHOT_AFTER,
            "a read took {most_read} records"
        );
    })
    .await
    .unwrap();
}
