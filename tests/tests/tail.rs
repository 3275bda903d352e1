//! Live tail selectors, evaluated on the server: each kind of selector and the text filter
//! deliver exactly the envelopes that match and nothing else; a selector that cannot be
//! honoured is refused with a reason, never ignored.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use sluice_proto::v2::{Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer, envelope, log};
use sluice_tests::{Sluice, send, tail_with};

/// One envelope of the mix: its number `n` (a tag), source, instance, tags and body.
fn envelope(
    n: u32,
    round: u32,
    source: &str,
    instance: &str,
    job: Option<&str>,
    message: envelope::Message,
) -> Envelope {
    let mut tags = BTreeMap::new();
    tags.insert("n".to_owned(), n.to_string());
    tags.insert("round".to_owned(), round.to_string());
    if let Some(job) = job {
        tags.insert("job".to_owned(), job.to_owned());
    }
    Envelope {
        timestamp: sluice_common::time::now_nanos(),
        source_id: source.to_owned(),
        instance_id: instance.to_owned(),
        tags: tags.into_iter().collect(),
        message: Some(message),
        ..Default::default()
    }
}

fn line(text: &str, kind: log::Type) -> envelope::Message {
    envelope::Message::Log(Log {
        payload: text.as_bytes().to_vec(),
        r#type: kind as i32,
    })
}

/// Eight envelopes of every kind over two sources.
fn mix(round: u32) -> Vec<Envelope> {
    vec![
        envelope(
            1,
            round,
            "tsel-a",
            "0",
            Some("web"),
            line("GET /index 200 ok", log::Type::Out),
        ),
        envelope(
            2,
            round,
            "tsel-a",
            "1",
            Some("worker"),
            line("connection refused to db", log::Type::Err),
        ),
        envelope(
            3,
            round,
            "tsel-b",
            "0",
            Some("web"),
            line("payment failed with timeout", log::Type::Out),
        ),
        envelope(
            4,
            round,
            "tsel-a",
            "0",
            None,
            envelope::Message::Counter(Counter {
                name: "requests".to_owned(),
                delta: 1,
                total: 1,
            }),
        ),
        envelope(
            5,
            round,
            "tsel-b",
            "0",
            None,
            envelope::Message::Gauge(Gauge {
                metrics: [(
                    "cpu".to_owned(),
                    GaugeValue {
                        unit: "percent".to_owned(),
                        value: 5.0,
                    },
                )]
                .into_iter()
                .collect(),
            }),
        ),
        envelope(
            6,
            round,
            "tsel-a",
            "0",
            None,
            envelope::Message::Timer(Timer {
                name: "http".to_owned(),
                start: 1,
                stop: 2,
            }),
        ),
        envelope(
            7,
            round,
            "tsel-b",
            "0",
            None,
            envelope::Message::Event(Event {
                title: "deploy".to_owned(),
                body: "started".to_owned(),
            }),
        ),
        envelope(
            8,
            round,
            "tsel-a",
            "0",
            None,
            line("payment ok", log::Type::Out),
        ),
    ]
}

/// A tail's selectors and the numbers of the envelopes of a round it must deliver.
type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<u32>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_selector_and_the_text_filter_deliver_exactly_what_matches() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let both: [(&str, &str); 2] = [("source_id", "tsel-a"), ("source_id", "tsel-b")];
    let cases: Vec<Case<'_>> = vec![
        (both.to_vec(), vec![1, 2, 3, 4, 5, 6, 7, 8]),
        (vec![("source_id", "tsel-a")], vec![1, 2, 4, 6, 8]),
        ([&both[..], &[("instance_id", "1")]].concat(), vec![2]),
        (
            [&both[..], &[("type", "counter"), ("type", "event")]].concat(),
            vec![4, 7],
        ),
        ([&both[..], &[("type", "gauge")]].concat(), vec![5]),
        ([&both[..], &[("type", "timer")]].concat(), vec![6]),
        ([&both[..], &[("type", "log")]].concat(), vec![1, 2, 3, 8]),
        ([&both[..], &[("log_type", "ERR")]].concat(), vec![2]),
        ([&both[..], &[("tag.job", "web")]].concat(), vec![1, 3]),
        ([&both[..], &[("query", "payment")]].concat(), vec![3, 8]),
        (
            [&both[..], &[("query", "\"payment failed\"")]].concat(),
            vec![3],
        ),
        (
            [&both[..], &[("query", "payment NOT failed")]].concat(),
            vec![8],
        ),
        (
            [
                &both[..],
                &[("query", "source_id:tsel-b AND (timeout OR deploy)")],
            ]
            .concat(),
            vec![3, 7],
        ),
        (
            [&both[..], &[("query", "tags.job:worker")]].concat(),
            vec![2],
        ),
        (
            [
                &both[..],
                &[("query", "DB OR refused"), ("log_type", "ERR")],
            ]
            .concat(),
            vec![2],
        ),
    ];
    let mut tails = Vec::new();
    for (params, _) in &cases {
        tails.push(tail_with(&sluice.api, params).await);
    }
    let mut client = sluice.ingress().await;
    // Each tail answered 200 once the doppler had registered its subscription.
    send(&mut client, mix(1)).await.unwrap();
    send(&mut client, mix(2)).await.unwrap();

    for ((params, expected), tail) in cases.iter().zip(&mut tails) {
        // Round 2 was sent after round 1 was acknowledged, so once every round-2 match has
        // arrived, so has anything of round 1 that would (wrongly) pass.
        let mut received: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while received.get(&2).map_or(0, BTreeSet::len) < expected.len() {
            let value: Value = tokio::time::timeout_at(deadline, tail.recv())
                .await
                .unwrap_or_else(|_| panic!("{params:?}: only {received:?} of {expected:?}"))
                .unwrap();
            let number = |name: &str| {
                value["tags"][name]
                    .as_str()
                    .unwrap()
                    .parse::<u32>()
                    .unwrap()
            };
            let fresh = received
                .entry(number("round"))
                .or_default()
                .insert(number("n"));
            assert!(fresh, "{params:?}: {value} delivered twice");
        }
        let expected: BTreeSet<u32> = expected.iter().copied().collect();
        assert_eq!(received.get(&1), Some(&expected), "{params:?}: round 1");
        assert_eq!(received.get(&2), Some(&expected), "{params:?}: round 2");
    }

    // A selector that cannot be honoured is refused with its reason.
    let http = reqwest::Client::new();
    for (params, reason) in [
        (vec![("type", "metric")], "give one of log"),
        (vec![("sourceid", "tsel-a")], "unknown tail parameter"),
        (vec![("log_type", "WARN")], "log_type"),
        (
            vec![("query", "timestamp:[1 TO 2]")],
            "not supported in a tail filter",
        ),
        (vec![("query", "\"payment failed\"~2")], "slop"),
        (vec![("query", "(((")], "invalid query"),
    ] {
        let response = http
            .get(format!("{}/api/v1/tail", sluice.api))
            .query(&params)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{params:?}");
        let body = response.text().await.unwrap();
        assert!(body.contains(reason), "{params:?}: {body}");
    }
}
