//! Failure patterns end to end on a real `sluice up`: every line's pattern is mined at the
//! doppler and stored beside it in the index and the archive; `/api/v1/patterns` counts and
//! compares them.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use sluice_proto::v2::Envelope;
use sluice_tests::{Sluice, log_envelope, metric_sample as sample, send};

const MINUTE_NS: i64 = 60_000_000_000;

/// A small deterministic generator (xorshift), so each run sends the same values.
struct Values(u64);

impl Values {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A lowercase word of 3 to 9 letters.
    fn word(&mut self) -> String {
        let length = 3 + self.below(7);
        (0..length)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }
}

const NAMES: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];

/// The ten shapes, and the template each must read back as.
const SHAPES: [&str; 10] = [
    "user <*> logged in from <ip>",
    // A path with digits in it is a value as a whole.
    "GET <path> returned <num> in <duration>",
    "connection to <ip>:<num> closed after <num> bytes",
    "block blk_<num> replicated to <ip>",
    "cache miss for key <hex>",
    "worker <num> finished job <hex>",
    "disk <path> usage at <num>%",
    "retrying request <num> after a timeout of <duration>",
    "session <hex> expired",
    "payment <num> declined: insufficient funds",
];

/// A line of shape `shape` with fresh values.
fn line(shape: usize, values: &mut Values) -> String {
    let ip = format!(
        "10.{}.{}.{}",
        values.below(256),
        values.below(256),
        values.below(256)
    );
    match shape {
        0 => format!(
            "user {} logged in from {ip}",
            NAMES[values.below(12) as usize]
        ),
        1 => format!(
            "GET /api/items/{} returned {} in {} ms",
            values.below(100_000),
            [200, 404, 500][values.below(3) as usize],
            values.below(900)
        ),
        2 => format!(
            "connection to {ip}:{} closed after {} bytes",
            values.below(65_536),
            values.below(10_000_000)
        ),
        3 => format!("block blk_{} replicated to {ip}", values.next() >> 1),
        4 => format!("cache miss for key {:016x}", values.next()),
        5 => format!(
            "worker {} finished job {:08x}-{:04x}",
            values.below(64),
            values.next() as u32,
            values.below(65_536)
        ),
        6 => format!(
            "disk /dev/sd{} usage at {}%",
            values.below(9),
            values.below(100)
        ),
        7 => format!(
            "retrying request {} after a timeout of {}ms",
            values.below(1_000_000),
            values.below(30_000)
        ),
        8 => format!("session {:012x} expired", values.next() >> 16),
        _ => format!(
            "payment {} declined: insufficient funds",
            values.below(1_000_000_000)
        ),
    }
}

/// `rounds` lines of every shape, interleaved, sent in batches of 100.
async fn send_shapes(sluice: &Sluice, source: &str, rounds: usize, values: &mut Values) {
    let mut client = sluice.ingress().await;
    let mut envelopes: Vec<Envelope> = Vec::new();
    for _ in 0..rounds {
        for shape in 0..SHAPES.len() {
            envelopes.push(log_envelope(source, line(shape, values)));
        }
    }
    for chunk in envelopes.chunks(100) {
        send(&mut client, chunk.to_vec()).await.unwrap();
    }
}

async fn patterns(sluice: &Sluice, params: &[(&str, &str)]) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/patterns", sluice.api))
        .query(params)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Template → (pattern id, count) of the source's patterns in the last hour.
async fn templates(sluice: &Sluice, source: &str) -> BTreeMap<String, (String, u64)> {
    let body = patterns(
        sluice,
        &[("query", &format!("source_id:{source}")), ("since", "1h")],
    )
    .await;
    body["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pattern| {
            (
                pattern["template"]
                    .as_str()
                    .unwrap_or("(unknown)")
                    .to_owned(),
                (
                    pattern["pattern_id"].as_str().unwrap().to_owned(),
                    pattern["count"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// Leaves of `source` in the doppler's saved state.
fn saved_leaves(sluice: &Sluice, source: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(sluice.data_dir.join("doppler/patterns.json")) else {
        return 0;
    };
    let snapshots: Value = serde_json::from_str(&text).unwrap();
    snapshots
        .as_array()
        .unwrap()
        .iter()
        .filter(|snapshot| snapshot["source"] == source)
        .map(|snapshot| snapshot["leaves"].as_array().unwrap().len() as u64)
        .sum()
}

/// Waits until the doppler has saved everything it learned (the leaves on disk are the
/// leaves it holds).
async fn wait_saved(sluice: &Sluice, source: &str) {
    let held = sample(
        &sluice.metrics_text().await,
        "sluice_doppler_pattern_leaves",
    ) as u64;
    sluice
        .wait_for("leaves saved", held, Duration::from_secs(30), || async {
            saved_leaves(sluice, source)
        })
        .await;
}

/// Ten shapes with varying values are ten patterns, each read back with placeholders where
/// the values varied; a line has one `pattern_id` in search hits and in SQL (and `pattern_id:`
/// finds exactly the lines SQL counts); and the ids survive `kill -9` and an orderly restart:
/// the same shapes sent afterwards join the same ten patterns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_shapes_are_ten_patterns_with_one_id_in_search_and_sql_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[retention]\nflush_interval = \"1s\"\n[doppler.patterns]\nsnapshot_interval = \"1s\"\n";
    let mut sluice = Sluice::start_with_config(&dir.path().join("data"), config).await;
    let mut values = Values(0x5eed_cafe_f00d_1234);
    send_shapes(&sluice, "shapes", 30, &mut values).await;
    sluice
        .wait_for("indexed", 300, Duration::from_secs(60), || {
            sluice.search_total("source_id:shapes")
        })
        .await;
    let first = templates(&sluice, "shapes").await;
    let expected: BTreeSet<String> = SHAPES.iter().map(|shape| (*shape).to_owned()).collect();
    assert_eq!(
        first.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{first:#?}"
    );
    assert!(first.values().all(|(_, count)| *count == 30), "{first:#?}");

    // Search and SQL agree on every line's id.
    sluice
        .wait_for("archived", 300, Duration::from_secs(60), || {
            sluice.sql_number("SELECT count(*) AS n FROM logs WHERE source_id = 'shapes'")
        })
        .await;
    let (status, body) = sluice.search("source_id:shapes", 300).await;
    assert_eq!(status, 200);
    let searched: BTreeMap<String, String> = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| {
            (
                hit["message"].as_str().unwrap().to_owned(),
                hit["pattern_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let (status, body) = sluice
        .sql("SELECT message, pattern_id FROM logs WHERE source_id = 'shapes'")
        .await;
    assert_eq!(status, 200, "{body}");
    let archived: BTreeMap<String, String> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["message"].as_str().unwrap().to_owned(),
                row["pattern_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(searched.len(), 300);
    assert_eq!(searched, archived);
    let (some_id, _) = &first["session <hex> expired"];
    let in_sql = sluice
        .sql_number(&format!(
            "SELECT count(*) AS n FROM logs WHERE pattern_id = '{some_id}'"
        ))
        .await;
    assert!(in_sql > 0);
    assert_eq!(
        sluice.search_total(&format!("pattern_id:{some_id}")).await,
        in_sql
    );
    // The templates are a table SQL can join.
    let joined = sluice
        .sql_number(
            "SELECT count(*) AS n FROM logs l JOIN patterns p ON l.pattern_id = p.id \
             WHERE l.source_id = 'shapes' AND p.template IS NOT NULL",
        )
        .await;
    assert_eq!(joined, 300);

    // kill -9 once what the doppler learned is saved: the same shapes keep their ids.
    wait_saved(&sluice, "shapes").await;
    sluice.kill_hard();
    sluice.restart().await;
    send_shapes(&sluice, "shapes", 30, &mut values).await;
    sluice
        .wait_for(
            "indexed after kill -9",
            600,
            Duration::from_secs(60),
            || sluice.search_total("source_id:shapes"),
        )
        .await;
    let second = templates(&sluice, "shapes").await;
    for (template, (id, count)) in &second {
        assert_eq!(
            Some(id),
            first.get(template).map(|(id, _)| id),
            "{template}"
        );
        assert_eq!(*count, 60, "{template}");
    }
    assert_eq!(second.len(), 10, "{second:#?}");

    // An orderly restart saves at shutdown.
    sluice.stop();
    sluice.restart().await;
    send_shapes(&sluice, "shapes", 30, &mut values).await;
    sluice
        .wait_for(
            "indexed after a restart",
            900,
            Duration::from_secs(60),
            || sluice.search_total("source_id:shapes"),
        )
        .await;
    let third = templates(&sluice, "shapes").await;
    assert_eq!(third.len(), 10, "{third:#?}");
    for (template, (id, count)) in &third {
        assert_eq!(
            Some(id),
            first.get(template).map(|(id, _)| id),
            "{template}"
        );
        assert_eq!(*count, 90, "{template}");
    }
}

/// Lines of `text` stamped evenly over `[start, start + span)`.
fn spread(source: &str, text: &str, count: usize, start: i64, span: i64) -> Vec<Envelope> {
    (0..count)
        .map(|index| {
            let mut envelope = log_envelope(source, format!("{text} {index}"));
            envelope.timestamp = start + span * index as i64 / count as i64;
            envelope
        })
        .collect()
}

/// `compare`: against the hour before the last ten minutes, a shape seen only in those ten
/// minutes is new, one whose rate went up 50× rose (by about 50), one that kept its rate is
/// steady, one that nearly stopped fell; the new and the risen one are the most surprising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_marks_a_new_shape_and_one_whose_rate_rose_fifty_fold() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data")).await;
    let now = sluice_common::time::now_nanos();
    // The range is the last 10 minutes (ending a minute from now, so every line is in it);
    // the baseline the 60 minutes before.
    let end = now + MINUTE_NS;
    let start = end - 10 * MINUTE_NS;
    let baseline = start - 60 * MINUTE_NS;
    let mut envelopes = Vec::new();
    // 1 line a minute in the baseline; 50 a minute in the range.
    envelopes.extend(spread(
        "cmp",
        "upstream timeout talking to billing",
        60,
        baseline,
        60 * MINUTE_NS,
    ));
    envelopes.extend(spread(
        "cmp",
        "upstream timeout talking to billing",
        500,
        start,
        9 * MINUTE_NS,
    ));
    // 1 a minute all along.
    envelopes.extend(spread(
        "cmp",
        "heartbeat from the scheduler",
        60,
        baseline,
        60 * MINUTE_NS,
    ));
    envelopes.extend(spread(
        "cmp",
        "heartbeat from the scheduler",
        10,
        start,
        9 * MINUTE_NS,
    ));
    // 10 a minute, then one line.
    envelopes.extend(spread(
        "cmp",
        "cache refreshed for tenant",
        600,
        baseline,
        60 * MINUTE_NS,
    ));
    envelopes.extend(spread(
        "cmp",
        "cache refreshed for tenant",
        1,
        start,
        9 * MINUTE_NS,
    ));
    // Only in the range.
    envelopes.extend(spread(
        "cmp",
        "java.lang.OutOfMemoryError: Java heap space in worker",
        40,
        start,
        9 * MINUTE_NS,
    ));
    let total = envelopes.len() as u64;
    let mut client = sluice.ingress().await;
    for chunk in envelopes.chunks(100) {
        send(&mut client, chunk.to_vec()).await.unwrap();
    }
    sluice
        .wait_for("indexed", total, Duration::from_secs(60), || {
            sluice.search_total("source_id:cmp")
        })
        .await;
    let start_text = start.to_string();
    let end_text = end.to_string();
    let body = patterns(
        &sluice,
        &[
            ("query", "source_id:cmp"),
            ("start", &start_text),
            ("end", &end_text),
            ("compare", "1h"),
        ],
    )
    .await;
    let rows = body["patterns"].as_array().unwrap();
    let by_template: BTreeMap<&str, &Value> = rows
        .iter()
        .map(|row| (row["template"].as_str().unwrap(), row))
        .collect();
    let oom = by_template["java.lang.OutOfMemoryError: Java heap space in worker <num>"];
    assert_eq!(oom["change"], "new", "{body:#}");
    assert_eq!(oom["count"], 40);
    assert_eq!(oom["baseline_count"], 0);
    let timeout = by_template["upstream timeout talking to billing <num>"];
    assert_eq!(timeout["change"], "rose", "{body:#}");
    let ratio = timeout["ratio"].as_f64().unwrap();
    assert!((45.0..=55.0).contains(&ratio), "ratio {ratio}: {body:#}");
    assert_eq!(
        by_template["heartbeat from the scheduler <num>"]["change"], "steady",
        "{body:#}"
    );
    assert_eq!(
        by_template["cache refreshed for tenant <num>"]["change"], "fell",
        "{body:#}"
    );
    let top: BTreeSet<&str> = rows[..2]
        .iter()
        .map(|row| row["template"].as_str().unwrap())
        .collect();
    assert!(
        top.contains("java.lang.OutOfMemoryError: Java heap space in worker <num>")
            && top.contains("upstream timeout talking to billing <num>"),
        "{body:#}"
    );
    assert_eq!(body["baseline"]["total"], 720);
    // Bad input is refused, naming the parameter.
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/patterns", sluice.api))
        .query(&[("query", "*"), ("compare", "soon")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("compare"));
}

/// Bounded memory: a source of unique random lines keeps its masked lines at the cap (so its
/// patterns too), every eviction counted, and every line still gets a pattern id. (200,000
/// lines here, 30 s of a debug build; the bench sends a million through a release build and
/// measures the ingest rate beside that of lines of known shapes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_of_unique_lines_stays_at_the_cap_and_counts_the_evictions() {
    const LINES: usize = 200_000;
    const CAP: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[doppler.patterns]\nmax_leaves_per_source = {CAP}\n");
    let sluice = Sluice::start_with_config(&dir.path().join("data"), &config).await;
    let mut values = Values(0x0dd_ba11_cafe_babe);
    let mut client = sluice.ingress().await;
    let mut peak_leaves = 0.0_f64;
    for round in 0..LINES / 1_000 {
        let envelopes: Vec<Envelope> = (0..1_000)
            .map(|_| {
                let words: Vec<String> = (0..2 + values.below(5)).map(|_| values.word()).collect();
                log_envelope("noise", words.join(" "))
            })
            .collect();
        send(&mut client, envelopes).await.unwrap();
        if round % 20 == 19 {
            let text = sluice.metrics_text().await;
            peak_leaves = peak_leaves.max(sample(&text, "sluice_doppler_pattern_leaves"));
        }
    }
    sluice
        .wait_for("indexed", LINES as u64, Duration::from_secs(120), || {
            sluice.search_total("source_id:noise")
        })
        .await;
    let text = sluice.metrics_text().await;
    let leaves = sample(&text, "sluice_doppler_pattern_leaves");
    let patterns_held = sample(&text, "sluice_doppler_patterns");
    let evictions = sample(&text, "sluice_doppler_pattern_evictions_total");
    assert!(
        peak_leaves.max(leaves) <= CAP as f64 && patterns_held <= CAP as f64,
        "leaves {leaves} (peak {peak_leaves}), patterns {patterns_held}, cap {CAP}"
    );
    // Each eviction removes a quarter of the cap; the rest of the lines went in one by one.
    assert!(
        evictions >= (LINES as u64 - CAP) as f64 * 0.9,
        "evictions {evictions}"
    );
    assert_eq!(
        sample(&text, "sluice_doppler_pattern_lines_total"),
        LINES as f64
    );
    // Every line got an id.
    let (status, body) = sluice.search("source_id:noise", 1_000).await;
    assert_eq!(status, 200);
    assert!(
        body["hits"]
            .as_array()
            .unwrap()
            .iter()
            .all(|hit| hit["pattern_id"].as_str().is_some_and(|id| id.len() == 16)),
        "{body}"
    );
}
