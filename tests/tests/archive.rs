//! The archive's catalog through `sluice up`: SQL reads what the catalog holds and nothing
//! else, a file no flush committed is invisible at once and collected after the grace
//! period, `sluice archive stats|ls` report what the catalog holds, and compaction leaves
//! every row as it was, whichever step a crash interrupts.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_tests::{Sluice, log_envelope, send, sluice_binary};

/// Every Parquet file under `dir`.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(parquet_files(&path));
        } else if path
            .extension()
            .is_some_and(|extension| extension == "parquet")
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sees_only_committed_files_and_the_collector_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[retention]\nflush_interval = \"1s\"\ngc_interval = \"1s\"\ngc_grace = \"3s\"\n";
    let sluice = Sluice::start_with_config(&dir.path().join("data"), config).await;
    let mut client = sluice.ingress().await;
    for batch in 0..10 {
        let envelopes = (0..100)
            .map(|index| log_envelope("catalog-app", format!("catalog b{batch} n{index}")))
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
    let count = || sluice.sql_number("SELECT count(*) FROM logs WHERE source_id = 'catalog-app'");
    sluice
        .wait_for("archived rows", 1_000, Duration::from_secs(30), count)
        .await;

    // A flush that crashed before committing left a file beside the committed ones: a copy
    // of one of them, so every row in it would count twice if SQL read it.
    let logs = sluice.data_dir.join("archive").join("logs");
    let committed = parquet_files(&logs);
    assert!(!committed.is_empty(), "no file under {}", logs.display());
    let orphan = committed[0].with_file_name("9999999999-1-0-00000000000000000000.parquet");
    std::fs::copy(&committed[0], &orphan).unwrap();
    assert_eq!(count().await, 1_000, "the uncommitted file was read");

    // The collector deletes it once it is older than the grace period; SQL never changed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while orphan.exists() {
        assert!(
            Instant::now() < deadline,
            "the uncommitted file is still there; log:\n{}",
            sluice.log()
        );
        assert_eq!(count().await, 1_000);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = sluice.metrics_text().await;
    assert!(
        metrics.contains("sluice_retention_orphan_files_removed_total 1"),
        "{metrics}"
    );

    // The catalog's totals are the SQL answer's, and the CLI prints them.
    let stats: serde_json::Value = reqwest::get(format!("{}/api/v1/archive/stats", sluice.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let logs_stats = stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|table| table["table"] == "logs")
        .unwrap();
    assert_eq!(
        logs_stats["rows"].as_u64().unwrap(),
        sluice.sql_number("SELECT count(*) FROM logs").await
    );
    assert_eq!(
        logs_stats["files"].as_u64().unwrap() as usize,
        parquet_files(&logs).len()
    );
    for arguments in [vec!["stats"], vec!["ls", "--table", "logs"]] {
        let output = std::process::Command::new(sluice_binary())
            .arg("archive")
            .args(&arguments)
            .args(["--api", &sluice.api])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{arguments:?}: {printed}");
        assert!(printed.contains("logs"), "{arguments:?}: {printed}");
    }
    // A reader that goes away (`sluice archive stats | head -0`) ends the command quietly.
    let mut child = std::process::Command::new(sluice_binary())
        .args(["archive", "stats", "--api", &sluice.api])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let complaint = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{complaint}");
    assert!(!complaint.contains("panicked"), "{complaint}");
    // Compacted on request, with the progress printed: one file per hour, the same rows.
    let before = sluice.sql_number("SELECT count(*) FROM logs").await;
    let printed = archive_cli(&sluice, &["compact", "--now"]);
    assert!(printed.contains("compacted in"), "{printed}");
    let (files, partitions) = logs_layout(&sluice).await;
    assert_eq!(files, partitions, "{printed}");
    assert_eq!(sluice.sql_number("SELECT count(*) FROM logs").await, before);
    let listed: serde_json::Value =
        reqwest::get(format!("{}/api/v1/archive/files?table=logs", sluice.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(listed["files"].as_array().unwrap().len() as u64, files);

    let (status, body) = {
        let response = reqwest::get(format!(
            "{}/api/v1/archive/partitions?table=nope",
            sluice.api
        ))
        .await
        .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown table"), "{body}");
}

/// Every row of `logs` as text, sorted: compared whole, it is a checksum of every column.
async fn every_row(sluice: &Sluice) -> Vec<String> {
    let (status, body) = sluice.sql("SELECT * FROM logs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], false);
    let mut rows: Vec<String> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.to_string())
        .collect();
    rows.sort_unstable();
    rows
}

/// The catalog's (files, partitions) of `logs`.
async fn logs_layout(sluice: &Sluice) -> (u64, u64) {
    let stats: serde_json::Value = reqwest::get(format!("{}/api/v1/archive/stats", sluice.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|table| table["table"] == "logs")
        .map(|table| {
            (
                table["files"].as_u64().unwrap(),
                table["partitions"].as_u64().unwrap(),
            )
        })
        .unwrap()
}

/// 50,000 lines over many flushes, compacted with a crash after each step of a compaction
/// in turn (merged, uploaded, committed) and a restart: the count, the distinct count and
/// every column of every row are what they were, no file is in the catalog twice, and the
/// files left behind are collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_changes_no_row_whichever_step_a_crash_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let base = "[retention]\nflush_interval = \"1s\"\nflush_rows = 2000\ngc_interval = \"1s\"\ngc_grace = \"2s\"\n";
    let mut sluice = Sluice::start_with_config(
        &data_dir,
        &format!("{base}\n[retention.compaction]\nenabled = false\n"),
    )
    .await;
    let mut client = sluice.ingress().await;
    for batch in 0..50 {
        let envelopes = (0..1_000)
            .map(|index| {
                log_envelope(
                    ["api", "web", "worker"][index % 3],
                    format!("compaction b{batch} n{index}"),
                )
            })
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
    let count = || sluice.sql_number("SELECT count(*) FROM logs");
    sluice
        .wait_for("archived rows", 50_000, Duration::from_secs(60), count)
        .await;
    let before = every_row(&sluice).await;
    assert_eq!(before.len(), 50_000);
    let (files_before, _) = logs_layout(&sluice).await;
    assert!(files_before >= 10, "only {files_before} files to compact");
    sluice.kill_hard();
    drop(sluice);

    // The hour is still being written: compact it once it holds two small files.
    let compacting = format!(
        "{base}\n[retention.compaction]\ninterval = \"1s\"\nmax_open_files = 2\ncpu_share = 1.0\n"
    );
    for point in [
        "compaction-merged",
        "compaction-uploaded",
        "compaction-committed",
    ] {
        let mut crashing =
            Sluice::start_with_config_env(&data_dir, &compacting, &[("SLUICE_FAILPOINTS", point)])
                .await;
        assert!(
            crashing.wait_exited(Duration::from_secs(60)).await,
            "{point} was never reached; log:\n{}",
            crashing.log()
        );
        drop(crashing);
        // Restarted without the crash point: every row as before, at once.
        let sluice = Sluice::start_with_config(
            &data_dir,
            &format!("{base}\n[retention.compaction]\nenabled = false\n"),
        )
        .await;
        assert_eq!(every_row(&sluice).await, before, "after a crash at {point}");
        drop(sluice);
    }

    // Compaction runs to the end: one file per hour, the same rows, the replaced files
    // collected.
    let sluice = Sluice::start_with_config(&data_dir, &compacting).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        let (files, partitions) = logs_layout(&sluice).await;
        if files == partitions {
            break partitions;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted; log:\n{}",
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(every_row(&sluice).await, before);
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) FROM logs")
            .await,
        50_000
    );
    let logs = sluice.data_dir.join("archive").join("logs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while parquet_files(&logs).len() as u64 > partitions {
        assert!(
            Instant::now() < deadline,
            "files left behind: {:?}",
            parquet_files(&logs)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `count` log lines of `source_id`, `age` old.
fn old_lines(source_id: &str, age: Duration, count: usize) -> Vec<sluice_proto::v2::Envelope> {
    let at = sluice_common::time::now_nanos() - i64::try_from(age.as_nanos()).unwrap();
    (0..count)
        .map(|index| {
            let mut envelope = log_envelope(source_id, format!("{source_id} line {index}"));
            envelope.timestamp = at + i64::try_from(index).unwrap();
            envelope
        })
        .collect()
}

fn archive_cli(sluice: &Sluice, arguments: &[&str]) -> String {
    let output = std::process::Command::new(sluice_binary())
        .arg("archive")
        .args(arguments)
        .args(["--api", &sluice.api])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{arguments:?}: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

/// Rows past their policy leave SQL and then the store; a source with a longer policy and
/// newer rows stay; a dry run changes nothing; the index drops its hours past its own age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_what_its_policy_says_and_a_dry_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[indexer]\nmax_age = \"5d\"\n\n\
                  [retention]\nflush_interval = \"1s\"\ngc_interval = \"1s\"\ngc_grace = \"1s\"\n\
                  expiry_interval = \"1h\"\n\n\
                  [retention.compaction]\nenabled = false\n\n\
                  [[retention.expiry]]\ntable = \"logs\"\nsource_id = \"audit-*\"\nmax_age = \"400d\"\n\n\
                  [[retention.expiry]]\ntable = \"logs\"\nmax_age = \"5d\"\n";
    let sluice = Sluice::start_with_config(&dir.path().join("data"), config).await;
    let mut client = sluice.ingress().await;
    let day = Duration::from_secs(86_400);
    // Ten days old: one source past its policy, one within it, in the same hour's files.
    send(&mut client, old_lines("expired-app", day * 10, 1_000))
        .await
        .unwrap();
    send(&mut client, old_lines("audit-app", day * 10, 500))
        .await
        .unwrap();
    // Twenty days old, alone in its hour: its files go whole.
    send(&mut client, old_lines("expired-app", day * 20, 500))
        .await
        .unwrap();
    send(&mut client, old_lines("fresh-app", Duration::ZERO, 1_000))
        .await
        .unwrap();
    let count = |source: &'static str| {
        let sluice = &sluice;
        async move {
            sluice
                .sql_number(&format!(
                    "SELECT count(*) FROM logs WHERE source_id = '{source}'"
                ))
                .await
        }
    };
    sluice
        .wait_for("archived rows", 3_000, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;
    let files_before = parquet_files(&sluice.data_dir.join("archive").join("logs"));

    let dry = archive_cli(&sluice, &["expire", "--dry-run"]);
    assert!(
        dry.contains("would remove") && dry.contains("would rewrite"),
        "{dry}"
    );
    assert!(dry.contains("1500 rows"), "{dry}");
    assert_eq!(
        count("expired-app").await,
        1_500,
        "the dry run changed something"
    );
    assert_eq!(
        parquet_files(&sluice.data_dir.join("archive").join("logs")),
        files_before
    );

    let done = archive_cli(&sluice, &["expire"]);
    assert!(done.contains("1500 rows"), "{done}");
    assert_eq!(count("expired-app").await, 0);
    assert_eq!(count("audit-app").await, 500);
    assert_eq!(count("fresh-app").await, 1_000);
    // The old hours' files left the store too, once the collector's grace passed: the
    // twenty-day-old hour holds none, the ten-day-old one only its rewritten file.
    let hour_dir = |age: Duration| {
        let hour = sluice_common::time::Hour::of_nanos(
            sluice_common::time::now_nanos() - i64::try_from(age.as_nanos()).unwrap(),
        );
        format!("date={}/hour={}", hour.date_string(), hour.hour_string())
    };
    let fresh = hour_dir(Duration::ZERO);
    let old: Vec<&PathBuf> = files_before
        .iter()
        .filter(|file| !file.to_string_lossy().contains(&fresh))
        .collect();
    assert!(!old.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.iter().any(|file| file.exists()) {
        assert!(
            Instant::now() < deadline,
            "expired files still in the store: {old:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let logs = sluice.data_dir.join("archive").join("logs");
    assert!(parquet_files(&logs.join(hour_dir(day * 20))).is_empty());
    assert_eq!(parquet_files(&logs.join(hour_dir(day * 10))).len(), 1);

    // The index keeps 5 days: the old hours' 2,000 documents left it, the fresh ones stay.
    sluice
        .wait_for(
            "documents deleted from the index",
            2_000,
            Duration::from_secs(60),
            || async {
                let text = sluice.metrics_text().await;
                sluice_tests::metric_sample(
                    &text,
                    "sluice_indexer_documents_deleted_total{reason=\"age\"}",
                ) as u64
            },
        )
        .await;
    assert_eq!(sluice.search_total("\"fresh-app line\"").await, 1_000);
    let (status, body) = {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/search", sluice.api))
            .query(&[
                ("query", "\"expired-app line\""),
                ("start", "0"),
                ("limit", "1"),
            ])
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 0, "{body}");
}

/// A search: its total, its hits' messages (in order) and the answer.
async fn search_all(sluice: &Sluice, query: &str) -> (u64, Vec<String>, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/search", sluice.api))
        .query(&[
            ("query", query),
            ("start", "0"),
            ("limit", "1000"),
            ("histogram", "1h"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let messages = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| format!("{} {}", hit["timestamp"], hit["message"]))
        .collect();
    (body["total"].as_u64().unwrap(), messages, body)
}

/// Once the index lets an hour go, the same searches answer the same lines from the archive,
/// and say which hours came from where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_across_the_index_edge_answers_the_same_lines_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let base = "[retention]\nflush_interval = \"1s\"\n";
    let mut sluice = Sluice::start_with_config(&data_dir, base).await;
    let mut client = sluice.ingress().await;
    let day = Duration::from_secs(86_400);
    let mut old = old_lines("edge-app", day * 10, 300);
    for (index, envelope) in old.iter_mut().enumerate() {
        let word = ["timeout", "refused", "ok"][index % 3];
        envelope.message = Some(sluice_proto::v2::envelope::Message::Log(
            sluice_proto::v2::Log {
                payload: format!("request {index} to db-{} {word} after retry", index % 4)
                    .into_bytes(),
                r#type: 0,
            },
        ));
    }
    send(&mut client, old).await.unwrap();
    send(&mut client, old_lines("edge-now", Duration::ZERO, 50))
        .await
        .unwrap();
    sluice
        .wait_for("archived rows", 350, Duration::from_secs(30), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;
    let queries = [
        "timeout",
        "\"timeout after\"",
        "source_id:edge-app NOT refused",
        "db OR line",
        "REQUEST",
    ];
    let mut before = Vec::new();
    for query in queries {
        let (total, hits, body) = search_all(&sluice, query).await;
        assert!(total > 0, "{query}: {body}");
        assert!(
            body["sources"]["archive"].as_array().unwrap().is_empty(),
            "{body}"
        );
        before.push((total, hits, body["histogram"].clone()));
    }
    sluice.kill_hard();
    drop(sluice);

    // The index keeps 5 days now: the ten-day-old hour leaves it.
    let sluice =
        Sluice::start_with_config(&data_dir, &format!("[indexer]\nmax_age = \"5d\"\n\n{base}"))
            .await;
    sluice
        .wait_for(
            "the old hour deleted from the index",
            1,
            Duration::from_secs(60),
            || async {
                let text = sluice.metrics_text().await;
                sluice_tests::metric_sample(
                    &text,
                    "sluice_indexer_hours_deleted_total{reason=\"age\"}",
                ) as u64
            },
        )
        .await;
    for (query, (total, hits, histogram)) in queries.iter().zip(before) {
        let (after_total, after_hits, body) = search_all(&sluice, query).await;
        assert_eq!(after_total, total, "{query}: {body}");
        assert_eq!(after_hits, hits, "{query}");
        assert_eq!(body["histogram"], histogram, "{query}");
        assert_eq!(
            body["sources"]["archive"].as_array().unwrap().len(),
            1,
            "{body}"
        );
    }
}
