//! The first slice end to end, over the real protocols: 10,000 envelopes through the agent's
//! Loggregator ingress are all found by search, counted exactly by SQL, and streamed to a
//! live tail that connected before they were sent.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_proto::v2::{Counter, Envelope, Gauge, GaugeValue, envelope};
use sluice_tests::{Sluice, log_envelope, send, tail};

const TOTAL: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_envelopes_are_searchable_countable_and_tailed() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let mut tail_receiver = tail(&sluice.api, "e2e-app").await;
    let mut client = sluice.ingress().await;

    for batch in 0..TOTAL / 100 {
        let envelopes: Vec<Envelope> = (0..100)
            .map(|index| {
                let number = batch * 100 + index;
                let mut envelope = log_envelope(
                    "e2e-app",
                    format!("request e2emsg{number:05} handled in {index} ms"),
                );
                envelope.instance_id = (number % 3).to_string();
                envelope.tags.insert("job".to_owned(), "web".to_owned());
                envelope
            })
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }

    // Search: the exact total, then every message, newest first.
    sluice
        .wait_for(
            "search total",
            TOTAL as u64,
            Duration::from_secs(30),
            || sluice.search_total("handled"),
        )
        .await;
    let (status, body) = sluice.search("handled", TOTAL).await;
    assert_eq!(status, 200);
    let hits = body["hits"].as_array().unwrap();
    assert_eq!(hits.len(), TOTAL);
    let tokens: BTreeSet<String> = hits
        .iter()
        .map(|hit| {
            hit["message"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = (0..TOTAL)
        .map(|number| format!("e2emsg{number:05}"))
        .collect();
    assert_eq!(tokens, expected, "every envelope is found by search");
    let timestamps: Vec<i64> = hits
        .iter()
        .map(|hit| hit["timestamp"].as_i64().unwrap())
        .collect();
    assert!(
        timestamps.windows(2).all(|pair| pair[0] >= pair[1]),
        "hits are newest first"
    );
    assert_eq!(
        sluice.search_total("e2emsg04242").await,
        1,
        "a single token finds its one line"
    );
    assert_eq!(
        sluice
            .search_total("tags.job:web AND source_id:e2e-app")
            .await,
        TOTAL as u64
    );
    // A date histogram of the same matches: its buckets add up to the total, oldest first.
    let answer = sluice.search_histogram("source_id:e2e-app", "1m").await;
    let buckets = answer["histogram"].as_array().expect("histogram buckets");
    let counted: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, TOTAL as u64, "{answer}");
    let starts: Vec<i64> = buckets
        .iter()
        .map(|b| b["start_ns"].as_i64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|pair| pair[0] < pair[1]), "{answer}");
    assert!(
        starts.iter().all(|start| start % 60_000_000_000 == 0),
        "{answer}"
    );

    // SQL: the exact count, no duplicates, tags and partitions queryable.
    sluice
        .wait_for("sql count", TOTAL as u64, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) AS n FROM logs WHERE source_id = 'e2e-app'")
        })
        .await;
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) AS n FROM logs")
            .await,
        TOTAL as u64
    );
    assert_eq!(
        sluice
            .sql_number("SELECT count(*) AS n FROM logs WHERE tags['job'] = 'web'")
            .await,
        TOTAL as u64
    );
    let (status, body) = sluice
        .sql(
            "SELECT instance_id, count(*) AS n FROM logs GROUP BY instance_id ORDER BY instance_id",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 3);
    let (status, body) = sluice.sql("SELECT date, hour FROM logs LIMIT 1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["hour"].as_str().unwrap().len(), 2, "{body}");

    // Live tail: everything sent after the subscriber connected.
    let mut tailed = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tailed.len() < TOTAL {
        let value = tokio::time::timeout_at(deadline, tail_receiver.recv())
            .await
            .unwrap_or_else(|_| panic!("tail received {} of {TOTAL}", tailed.len()))
            .unwrap();
        assert_eq!(value["source_id"], "e2e-app");
        tailed.insert(value["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(tailed.len(), TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_envelopes_land_in_their_own_tables() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let mut client = sluice.ingress().await;
    let now = sluice_common::time::now_nanos();
    let mut envelopes = Vec::new();
    for index in 0..40_u64 {
        envelopes.push(Envelope {
            timestamp: now,
            source_id: "metrics-app".into(),
            message: Some(envelope::Message::Counter(Counter {
                name: "requests".into(),
                delta: 1,
                total: index + 1,
            })),
            ..Default::default()
        });
        envelopes.push(Envelope {
            timestamp: now,
            source_id: "metrics-app".into(),
            message: Some(envelope::Message::Gauge(Gauge {
                metrics: [
                    (
                        "cpu".to_owned(),
                        GaugeValue {
                            unit: "percentage".into(),
                            value: index as f64,
                        },
                    ),
                    (
                        "memory".to_owned(),
                        GaugeValue {
                            unit: "bytes".into(),
                            value: 1024.0,
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            })),
            ..Default::default()
        });
    }
    send(&mut client, envelopes).await.unwrap();
    sluice
        .wait_for("counters", 40, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM counters")
        })
        .await;
    assert_eq!(
        sluice.sql_number("SELECT max(total) FROM counters").await,
        40
    );
    assert_eq!(sluice.sql_number("SELECT count(*) FROM gauges").await, 80);
    assert_eq!(
        sluice
            .sql_number("SELECT count(*) FROM gauges WHERE name = 'cpu' AND value >= 20")
            .await,
        20
    );
    assert_eq!(
        sluice.search_total("*").await,
        0,
        "metrics are archived, not indexed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_loggregator_ingress_method_delivers() {
    use sluice_proto::v2::EnvelopeBatch;
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let mut client = sluice.ingress().await;
    let singles: Vec<Envelope> = (0..30)
        .map(|index| log_envelope("methods", format!("viasender {index}")))
        .collect();
    client.sender(futures::stream::iter(singles)).await.unwrap();
    let batches: Vec<EnvelopeBatch> = (0..3)
        .map(|batch| EnvelopeBatch {
            batch: (0..10)
                .map(|index| log_envelope("methods", format!("viabatchsender {batch} {index}")))
                .collect(),
        })
        .collect();
    client
        .batch_sender(futures::stream::iter(batches))
        .await
        .unwrap();
    send(
        &mut client,
        (0..30)
            .map(|index| log_envelope("methods", format!("viasend {index}")))
            .collect(),
    )
    .await
    .unwrap();
    for method in ["viasender", "viabatchsender", "viasend"] {
        sluice
            .wait_for(method, 30, Duration::from_secs(30), || {
                sluice.search_total(method)
            })
            .await;
    }
}
