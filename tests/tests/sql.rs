//! SQL's limits and formats through `sluice up`: answers stream as JSON, NDJSON, CSV or
//! Arrow; a query past its time limit is cancelled with a 503 that says so; one that needs
//! more memory than allowed fails with a 413; one whose client goes away stops; and past the
//! concurrency limit a query is refused with 429. Each leaves nothing running.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sluice_tests::{Sluice, log_envelope, send};

/// Never finishes within the tests' limits: counts twenty billion generated rows.
const ENDLESS: &str = "SELECT count(*) FROM generate_series(1, 20000000000)";

async fn post(sluice: &Sluice, query: &str, format: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/sql", sluice.api))
        .json(&serde_json::json!({ "query": query }));
    if let Some(format) = format {
        request = request.query(&[("format", format)]);
    }
    request.send().await.unwrap()
}

/// The value of the metric line starting with `name` (0 when absent).
async fn metric(sluice: &Sluice, name: &str) -> f64 {
    let text = sluice.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn wait_metric(sluice: &Sluice, name: &str, expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(sluice, name).await;
        if (value - expected).abs() < f64::EPSILON {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: expected {expected}, still {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stream_in_every_format_and_every_limit_stops_a_query_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[query_api.sql]\ntimeout = \"2s\"\nmemory_bytes = 16777216\nmax_concurrent = 1\n";
    let sluice = Sluice::start_with_config(&dir.path().join("data"), config).await;
    let mut client = sluice.ingress().await;
    let envelopes = (0..300)
        .map(|index| log_envelope("sql-app", format!("sql line {index}")))
        .collect();
    send(&mut client, envelopes).await.unwrap();
    sluice
        .wait_for("archived rows", 300, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;

    // Formats.
    let query = "SELECT message FROM logs WHERE source_id = 'sql-app' ORDER BY message LIMIT 3";
    let response = post(&sluice, query, Some("csv")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(response.headers()["x-sluice-row-limit"], "100000");
    assert_eq!(
        response.text().await.unwrap(),
        "message\nsql line 0\nsql line 1\nsql line 10\n"
    );
    let response = post(&sluice, query, Some("ndjson")).await;
    let lines: Vec<serde_json::Value> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["message"], "sql line 10");
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/sql", sluice.api))
        .header("accept", "application/vnd.apache.arrow.stream")
        .body(query)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let arrow = response.bytes().await.unwrap();
    // An IPC stream: messages behind the continuation marker, ending with the marker and 0.
    assert_eq!(&arrow[..4], &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        &arrow[arrow.len() - 8..],
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]
    );
    let (status, body) = sluice.sql(query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["message"], "sql line 0");
    assert_eq!(body["truncated"], false);
    let response = post(&sluice, query, Some("xml")).await;
    assert_eq!(response.status(), 400);

    // A query past its time limit: 503, saying why, and nothing left running.
    let started = Instant::now();
    let response = post(&sluice, ENDLESS, None).await;
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert!(text.contains("query_api.sql.timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_metric(&sluice, "sluice_query_sql_running", 0.0).await;
    wait_metric(
        &sluice,
        "sluice_query_sql_stopped_total{reason=\"timeout\"}",
        1.0,
    )
    .await;

    // More memory than allowed, in an aggregate that cannot spill: 413.
    let response = post(
        &sluice,
        "SELECT array_agg(value) FROM generate_series(1, 20000000)",
        None,
    )
    .await;
    assert_eq!(response.status(), 413);
    let text = response.text().await.unwrap();
    assert!(text.contains("query_api.sql.memory_bytes"), "{text}");
    wait_metric(&sluice, "sluice_query_sql_running", 0.0).await;

    // While one query runs, the next is refused (max_concurrent = 1); the client of the first
    // goes away, and its query stops long before its time limit would stop it.
    let api = sluice.api.clone();
    let first = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{api}/api/v1/sql"))
            .timeout(Duration::from_millis(800))
            .body(ENDLESS)
            .send()
            .await
    });
    wait_metric(&sluice, "sluice_query_sql_running", 1.0).await;
    let response = post(&sluice, "SELECT 1", None).await;
    assert_eq!(response.status(), 429);
    assert!(first.await.unwrap().is_err(), "the client timed out");
    wait_metric(&sluice, "sluice_query_sql_running", 0.0).await;
    wait_metric(
        &sluice,
        "sluice_query_sql_stopped_total{reason=\"disconnected\"}",
        1.0,
    )
    .await;
    let (status, body) = sluice.sql("SELECT 1 AS one").await;
    assert_eq!(status, 200, "{body}");
}
