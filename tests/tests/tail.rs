//! Live tail selectors, evaluated on the server: each kind of selector and the text filter
//! deliver exactly the envelopes that match and nothing else; a selector that cannot be
//! honoured is refused with a reason, never ignored.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use sluice_proto::v2::{Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer, envelope, log};
use sluice_tests::sse::{SseClient, query_string};
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
    // Each tail answered 200 once it knew the bus position it reads from.
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

/// A numbered line of `source`: `line N` and padding to `width` bytes.
fn numbered(source: &str, number: usize, width: usize) -> Envelope {
    let mut text = format!("line {number} ");
    while text.len() < width {
        text.push('x');
    }
    sluice_tests::log_envelope(source, text)
}

/// The number of a `numbered` line as a tail delivers it.
fn number_of(value: &Value) -> usize {
    value["message"]
        .as_str()
        .and_then(|message| message.split_whitespace().nth(1))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered line: {value}"))
}

/// Sends lines `range` of `source` in batches of `batch`.
async fn send_numbered(
    sluice: &Sluice,
    source: &str,
    range: std::ops::Range<usize>,
    batch: usize,
    width: usize,
) {
    let mut client = sluice.ingress().await;
    let numbers: Vec<usize> = range.collect();
    for chunk in numbers.chunks(batch) {
        let envelopes = chunk
            .iter()
            .map(|number| numbered(source, *number, width))
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
}

/// Opens `/api/v1/tail` with `params` (and `headers`) and reads past its `open` event.
async fn open_tail(
    sluice: &Sluice,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
    receive_buffer: Option<u32>,
) -> (SseClient, String) {
    let path = format!("/api/v1/tail?{}", query_string(params));
    let mut client = SseClient::get(&sluice.api, &path, headers, receive_buffer).await;
    assert_eq!(client.status, 200, "tail {params:?}");
    let opened = client.next_within(Duration::from_secs(30)).await.unwrap();
    assert_eq!(opened.event, "open", "{opened:?}");
    let tail_id = opened.json()["tail_id"].as_str().unwrap().to_owned();
    (client, tail_id)
}

/// Reads envelopes until `count` arrived; returns their numbers and the last cursor.
async fn read_lines(client: &mut SseClient, count: usize) -> (Vec<usize>, String) {
    let mut numbers = Vec::with_capacity(count);
    let mut cursor = String::new();
    while numbers.len() < count {
        let event = client
            .next_within(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("the tail ended after {} lines", numbers.len()));
        if event.event == "message" {
            numbers.push(number_of(&event.json()));
            cursor = event.id.clone().expect("every envelope carries its cursor");
        } else {
            assert!(
                matches!(event.event.as_str(), "heartbeat"),
                "unexpected event {event:?}"
            );
        }
    }
    (numbers, cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_then_live_meets_at_the_seam_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    send_numbered(&sluice, "seam", 0..3_000, 100, 40).await;
    sluice
        .wait_for("lines indexed", 3_000, Duration::from_secs(60), || {
            sluice.search_total("source_id:seam")
        })
        .await;
    let (mut tail, _) = open_tail(
        &sluice,
        &[("source_id", "seam"), ("tail", "3000")],
        &[],
        None,
    )
    .await;
    let live = {
        let sluice_api = sluice.attach_clone();
        tokio::spawn(async move { send_numbered(&sluice_api, "seam", 3_000..6_000, 100, 40).await })
    };
    let (numbers, _) = read_lines(&mut tail, 6_000).await;
    live.await.unwrap();
    assert_eq!(
        numbers,
        (0..6_000).collect::<Vec<_>>(),
        "every line once, in order, across history and live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_resumed_at_its_cursor_gets_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let (mut first, _) = open_tail(&sluice, &[("source_id", "resume")], &[], None).await;
    let sender = {
        let sluice_api = sluice.attach_clone();
        tokio::spawn(async move { send_numbered(&sluice_api, "resume", 0..10_000, 100, 40).await })
    };
    let (mut numbers, cursor) = read_lines(&mut first, 2_500).await;
    drop(first);
    // Away until all of it was sent and indexed: the resume reads what it missed from the
    // bus (a range the bus forgot would come from the index: see the slow reader's test).
    sender.await.unwrap();
    sluice
        .wait_for("lines indexed", 10_000, Duration::from_secs(60), || {
            sluice.search_total("source_id:resume")
        })
        .await;
    let (mut second, _) = open_tail(
        &sluice,
        &[("source_id", "resume")],
        &[("Last-Event-ID", &cursor)],
        None,
    )
    .await;
    let (rest, _) = read_lines(&mut second, 10_000 - numbers.len()).await;
    numbers.extend(rest);
    assert_eq!(
        numbers,
        (0..10_000).collect::<Vec<_>>(),
        "the two connections together: every line once, in order"
    );
    // And a cursor that is not one is refused with the reason.
    let bad = SseClient::get(&sluice.api, "/api/v1/tail?cursor=0:x:1", &[], None).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body().await.contains("cursor"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_loses_no_indexed_line_and_is_told_the_exact_count_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    // Small bus segments and no cache of the latest records in memory, so that the bus
    // forgets what the consumers are done with while the tail is not reading; a small tail
    // queue, and a small ring in the shared live reader, so
    // the tail falls behind it and reads the bus on its own again.
    let config = "[agent]\nmax_envelope_bytes = 65536\nflush_bytes = 131072\n\
                  [doppler]\nmax_message_bytes = 200000\nmax_pending_bytes = 4194304\n\
                  max_batch_envelopes = 1000\n\
                  [doppler.patterns]\nmax_template_bytes_per_batch = 16384\n\
                  [bus]\nmax_record_bytes = 262144\n\
                  [bus.wal]\nsegment_bytes = 262144\nmax_disk_bytes = 67108864\nread_cache_bytes = 0\n\
                  [query_api.tail]\nqueue_events = 16\nheartbeat = \"1s\"\nhub_records = 16\n";
    let sluice = Sluice::start_with_config(&dir.path().join("data"), config).await;
    // The reader's socket takes 4 KiB at a time, and it reads nothing until the bus has
    // forgotten most of what was sent.
    let (mut tail, tail_id) = open_tail(&sluice, &[("source_id", "slow")], &[], Some(4096)).await;
    let mut client = sluice.ingress().await;
    // 2,000 batches of ten 1 KB lines and one counter: 20,000 lines, 2,000 counters.
    for batch in 0..2_000_usize {
        let mut envelopes: Vec<Envelope> = (0..10)
            .map(|line| numbered("slow", batch * 10 + line, 1_000))
            .collect();
        envelopes.push(Envelope {
            timestamp: sluice_common::time::now_nanos(),
            source_id: "slow".to_owned(),
            instance_id: "0".to_owned(),
            message: Some(envelope::Message::Counter(Counter {
                name: "requests".to_owned(),
                delta: 1,
                total: batch as u64,
            })),
            ..Default::default()
        });
        send(&mut client, envelopes).await.unwrap();
    }
    sluice
        .wait_for("lines indexed", 20_000, Duration::from_secs(120), || {
            sluice.search_total("source_id:slow")
        })
        .await;
    // The consumers checkpoint and the bus deletes the segments they are done with.
    sluice
        .wait_for(
            "bus segments released",
            1,
            Duration::from_secs(120),
            || async {
                let text = sluice.metrics_text().await;
                u64::from(
                    sluice_tests::metric_sample(&text, "sluice_bus_wal_disk_bytes") < 4_000_000.0,
                )
            },
        )
        .await;

    let (mut lines, mut counters, mut dropped, mut dropped_events) = (Vec::new(), 0_u64, 0_u64, 0);
    while lines.len() < 20_000 || counters + dropped < 2_000 {
        let event = tail
            .next_within(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("the tail ended after {} lines", lines.len()));
        match event.event.as_str() {
            "message" => {
                let value = event.json();
                if value["kind"] == "counter" {
                    counters += 1;
                } else {
                    lines.push(number_of(&value));
                }
            }
            "dropped" => {
                let value = event.json();
                dropped += value["count"].as_u64().unwrap();
                assert_eq!(value["unknown_records"], 0, "{value}");
                assert!(value["start"].is_string(), "the lost time range: {value}");
                dropped_events += 1;
            }
            "heartbeat" => {}
            other => panic!("unexpected event {other}: {event:?}"),
        }
    }
    assert_eq!(
        lines,
        (0..20_000).collect::<Vec<_>>(),
        "every line once, in order"
    );
    assert_eq!(
        counters + dropped,
        2_000,
        "each counter delivered or counted as lost"
    );
    assert!(
        dropped > 0 && dropped_events > 0,
        "the bus forgot records the tail had not read"
    );
    let text = sluice.metrics_text().await;
    assert_eq!(
        sluice_tests::metric_sample(
            &text,
            &format!("sluice_tail_subscriber_dropped_envelopes_total{{tail=\"{tail_id}\"}}")
        ),
        dropped as f64,
        "the count in the stream is the count in /metrics"
    );
    assert!(
        sluice_tests::metric_sample(&text, "sluice_tail_healed_envelopes_total") > 0.0,
        "lines the bus forgot came back from the index"
    );
    assert!(
        sluice_tests::metric_sample(&text, "sluice_tail_hub_lagged_total") > 0.0,
        "the tail fell behind the shared live reader and read on its own"
    );
}

/// The Loggregator egress shapes, read the way a Cloud Foundry client reads them: a bare SSE
/// client and plain JSON (no Sluice type), checking the protobuf JSON mapping's names and
/// encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loggregator_clients_read_the_rlp_gateway_and_log_cache_shapes() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with_config(
        &dir.path().join("data"),
        "[query_api.tail]\nheartbeat = \"1s\"\n",
    )
    .await;
    let path = "/v2/read?source_id=egress&log&counter";
    let mut own = SseClient::get(&sluice.api, path, &[], None).await;
    let mut shard_a =
        SseClient::get(&sluice.api, &format!("{path}&shard_id=pair"), &[], None).await;
    let mut shard_b =
        SseClient::get(&sluice.api, &format!("{path}&shard_id=pair"), &[], None).await;
    for client in [&own, &shard_a, &shard_b] {
        assert_eq!(client.status, 200);
    }
    let mut ingress = sluice.ingress().await;
    for batch in 0..20_usize {
        let mut envelopes: Vec<Envelope> = (0..10)
            .map(|line| numbered("egress", batch * 10 + line, 30))
            .collect();
        envelopes.push(Envelope {
            timestamp: sluice_common::time::now_nanos(),
            source_id: "egress".to_owned(),
            instance_id: "3".to_owned(),
            message: Some(envelope::Message::Counter(Counter {
                name: "requests".to_owned(),
                delta: 1,
                total: batch as u64 + 1,
            })),
            ..Default::default()
        });
        // Neither selected: a gauge of the source, a line of another.
        envelopes.push(Envelope {
            timestamp: sluice_common::time::now_nanos(),
            source_id: "egress".to_owned(),
            message: Some(envelope::Message::Gauge(Gauge {
                metrics: [(
                    "cpu".to_owned(),
                    GaugeValue {
                        unit: "percent".to_owned(),
                        value: 1.5,
                    },
                )]
                .into_iter()
                .collect(),
            })),
            ..Default::default()
        });
        envelopes.push(numbered("elsewhere", batch, 30));
        send(&mut ingress, envelopes).await.unwrap();
    }

    /// What a reader took: line numbers and counter totals, checked field by field.
    #[derive(Default, Debug)]
    struct Took {
        lines: Vec<usize>,
        totals: Vec<u64>,
    }
    fn take(batch: &Value, took: &mut Took) {
        for envelope in batch["batch"].as_array().expect("a batch array") {
            assert_eq!(envelope["sourceId"], "egress", "{envelope}");
            let timestamp: i64 = envelope["timestamp"]
                .as_str()
                .expect("int64 as a string")
                .parse()
                .unwrap();
            assert!(timestamp > 1_600_000_000_000_000_000);
            assert!(envelope["tags"].is_object() && envelope["deprecatedTags"].is_object());
            if let Some(log) = envelope.get("log") {
                assert_eq!(log["type"], "OUT");
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(log["payload"].as_str().expect("bytes as base64"))
                    .unwrap();
                let text = String::from_utf8(payload).unwrap();
                took.lines
                    .push(number_of(&serde_json::json!({ "message": text })));
            } else if let Some(counter) = envelope.get("counter") {
                assert_eq!(counter["name"], "requests");
                assert_eq!(counter["delta"], "1", "uint64 as a string");
                assert_eq!(envelope["instanceId"], "3");
                took.totals
                    .push(counter["total"].as_str().unwrap().parse().unwrap());
            } else {
                panic!("not selected: {envelope}");
            }
        }
    }
    let mut mine = Took::default();
    while mine.lines.len() < 200 || mine.totals.len() < 20 {
        let event = own.next_within(Duration::from_secs(30)).await.unwrap();
        if event.event == "message" {
            take(&event.json(), &mut mine);
        }
    }
    assert_eq!(mine.lines, (0..200).collect::<Vec<_>>());
    assert_eq!(mine.totals, (1..=20).collect::<Vec<_>>());

    // Two readers of one shard split the stream: each envelope reaches one of them.
    let (mut a, mut b) = (Took::default(), Took::default());
    while a.lines.len() + b.lines.len() < 200 || a.totals.len() + b.totals.len() < 20 {
        tokio::select! {
            event = shard_a.next_within(Duration::from_secs(30)) => {
                let event = event.unwrap();
                if event.event == "message" { take(&event.json(), &mut a); }
            }
            event = shard_b.next_within(Duration::from_secs(30)) => {
                let event = event.unwrap();
                if event.event == "message" { take(&event.json(), &mut b); }
            }
        }
    }
    let mut lines: Vec<usize> = a.lines.iter().chain(&b.lines).copied().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        (0..200).collect::<Vec<_>>(),
        "the shard's readers: each line once"
    );
    assert_eq!(a.totals.len() + b.totals.len(), 20);
    assert!(
        !a.lines.is_empty() && !b.lines.is_empty(),
        "both readers of the shard took part: {a:?} {b:?}"
    );
    // An idle stream says it is alive, with the time in Unix seconds.
    let heartbeat = loop {
        let event = own.next_within(Duration::from_secs(30)).await.unwrap();
        if event.event == "heartbeat" {
            break event;
        }
    };
    let seconds: i64 = heartbeat.data.parse().unwrap();
    assert!((seconds - sluice_common::time::now_nanos() / 1_000_000_000).abs() < 60);
    // A request the gateway would refuse is refused.
    let refused = SseClient::get(&sluice.api, "/v2/read?source_id=egress", &[], None).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body().await.contains("envelope type"));

    // Log Cache: logs from the index, counters from the archive, in the same mapping.
    let http = reqwest::Client::new();
    let read = |query: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/v1/read/egress?{query}", sluice.api);
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    sluice
        .wait_for("counters archived", 20, Duration::from_secs(60), || async {
            read("envelope_types=COUNTER&limit=1000").await["envelopes"]["batch"]
                .as_array()
                .unwrap()
                .len() as u64
        })
        .await;
    let mut logs = Took::default();
    take(
        &read("envelope_types=LOG&limit=1000").await["envelopes"],
        &mut logs,
    );
    assert_eq!(logs.lines, (0..200).collect::<Vec<_>>(), "oldest first");
    let mut newest = Took::default();
    take(
        &read("envelope_types=LOG&limit=5&descending=true").await["envelopes"],
        &mut newest,
    );
    assert_eq!(newest.lines, vec![199, 198, 197, 196, 195]);
    let mut counters = Took::default();
    take(
        &read("envelope_types=COUNTER&limit=1000").await["envelopes"],
        &mut counters,
    );
    assert_eq!(counters.totals, (1..=20).collect::<Vec<_>>());
    let gauges = read("envelope_types=GAUGE").await;
    let gauge = &gauges["envelopes"]["batch"][0];
    assert_eq!(
        gauge["gauge"]["metrics"]["cpu"]["unit"], "percent",
        "{gauges}"
    );
    assert_eq!(gauge["gauge"]["metrics"]["cpu"]["value"], 1.5);
    let bad = http
        .get(format!(
            "{}/api/v1/read/egress?envelope_types=METRIC",
            sluice.api
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_past_the_limits_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with_config(
        &dir.path().join("data"),
        "[query_api.tail]\nmax_tails = 3\nmax_tails_per_client = 2\nmax_history = 100\nheartbeat = \"1s\"\n",
    )
    .await;
    let (first, _) = open_tail(&sluice, &[("source_id", "limits")], &[], None).await;
    let (second, _) = open_tail(&sluice, &[("source_id", "limits")], &[], None).await;
    let third = SseClient::get(&sluice.api, "/api/v1/tail?source_id=limits", &[], None).await;
    assert_eq!(third.status, 429);
    assert!(third.body().await.contains("max_tails_per_client"));
    let too_much = SseClient::get(&sluice.api, "/api/v1/tail?tail=101", &[], None).await;
    assert_eq!(too_much.status, 400);
    assert!(too_much.body().await.contains("max_history"));
    // A tail that ends gives its place back (the server notices at its next write: a
    // heartbeat at the latest).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let again = SseClient::get(&sluice.api, "/api/v1/tail?source_id=limits", &[], None).await;
        if again.status == 200 {
            break;
        }
        assert_eq!(again.status, 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the ended tail's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
}
