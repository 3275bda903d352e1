//! Faults that used to grow memory without bound or lose data, on a real `sluice up` with a
//! real S3 server (s3s-fs, from `scripts/services start s3`) and a small filesystem of the
//! test's own (a tmpfs it mounts: the test runs as root, as CI does).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_proto::v2::EnvelopeBatch;
use sluice_tests::{PrivateServer, Sluice, log_envelope, metric_sample as sample};

/// A tmpfs of `size` mounted at `path` for the test's lifetime.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "failed to mount a tmpfs at {}: this test needs root (CI runs `scripts/test` as root)",
            path.display()
        );
        SmallDisk(path.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Regression: the embedded WAL kept every record retention had not archived in memory, so
/// an S3 outage grew `sluice up` until the kernel killed it. Now, with S3 down under load, the
/// records pile up on disk (here a 128 MiB filesystem of the WAL's own) while memory stays
/// flat; when that disk is full the doppler refuses batches and clients get
/// `RESOURCE_EXHAUSTED`; when S3 returns, the archive catches up, the disk empties, new data
/// is taken again, and every acknowledged line is in the archive and the index exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_s3_outage_fills_the_wal_disk_not_memory_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("wal-disk"), "128m");
    let mut s3 = PrivateServer::s3(&dir.path().join("s3")).await;
    let config = format!(
        "[agent]\nflush_bytes = 2097152\nmax_pending_bytes = 16777216\npending_wait = \"2s\"\n\
         [doppler]\nmax_message_bytes = 4000000\n\
         [bus]\nwal_dir = {:?}\nmax_record_bytes = 4194304\n\
         [bus.wal]\nmax_disk_bytes = 1073741824\nsegment_bytes = 4194304\n\
         [indexer]\nwriter_memory_bytes = 15000000\n\
         [retention]\narchive = \"s3://sluice-test/faults\"\nflush_interval = \"1s\"\n\
         [retention.s3]\nendpoint = \"http://{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"sluice-test-key\"\nsecret_access_key = \"sluice-test-secret\"\n\
         allow_http = true\n",
        disk.0.join("wal"),
        s3.address
    );
    let sluice = Sluice::start_with_config(&dir.path().join("data"), &config).await;
    let mut client = sluice.ingress().await;
    let filler = "f".repeat(1_000);
    let batch = |round: usize| EnvelopeBatch {
        batch: (0..500)
            .map(|index| log_envelope("outage", format!("outage r{round} n{index} {filler}")))
            .collect(),
    };
    client.send(batch(0)).await.unwrap();
    let mut acknowledged = 500_u64;
    // Rounds that must be stored in full (acknowledged, or taken and held by the agent), and
    // rounds refused part-way (what the agent took of them before refusing the rest is
    // stored, the rest is not).
    let mut must_have = vec![0_usize];
    let mut refused_rounds = Vec::new();
    sluice
        .wait_for(
            "warm-up rows",
            acknowledged,
            Duration::from_secs(60),
            || sluice.sql_number("SELECT count(*) AS n FROM logs WHERE source_id = 'outage'"),
        )
        .await;
    let baseline = sluice.anon_rss_bytes();

    s3.stop();
    let mut peak = baseline;
    let mut refusal = None;
    // Sends the agent took but could not get acknowledged in time: it holds them and retries
    // until the bus takes them again, so they are stored in the end.
    let mut held_back = 0_u64;
    let started = Instant::now();
    for round in 1..=400 {
        let mut request = tonic::Request::new(batch(round));
        request.set_timeout(Duration::from_secs(5));
        match client.send(request).await {
            Ok(_) => {
                acknowledged += 500;
                must_have.push(round);
            }
            // The client's own deadline (tonic reports it as CANCELLED): taken, not yet stored.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) =>
            {
                held_back += 500;
                must_have.push(round);
            }
            Err(status) => {
                refused_rounds.push(round);
                refusal = Some(status);
                break;
            }
        }
        peak = peak.max(sluice.anon_rss_bytes());
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "still no refusal after {acknowledged} lines"
        );
    }
    let refusal = refusal.unwrap_or_else(|| panic!("200 MB were taken by a 128 MiB disk"));
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    let text = sluice.metrics_text().await;
    let held = sample(&text, "sluice_bus_wal_disk_bytes");
    assert!(
        held > 100.0 * 1024.0 * 1024.0,
        "the wal holds only {held} bytes\n{text}"
    );
    assert!(
        sample(
            &text,
            "sluice_bus_wal_refused_records_total{reason=\"disk_full\"}"
        ) >= 1.0,
        "{text}"
    );
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "outage: {acknowledged} lines acknowledged, {held_back} held back by the agent, the wal held {:.0} MiB on its disk; anonymous RSS {:.0} MiB before, peak {:.0} MiB",
        held / 1_048_576.0,
        baseline as f64 / 1_048_576.0,
        peak as f64 / 1_048_576.0
    );
    // The records on disk are not in memory too: an in-memory log grows its anonymous memory
    // by at least what it holds. (Resident memory as a whole also counts the index's mapped
    // segment files, which grow with what is indexed during the outage and are page cache
    // the kernel reclaims: 129 MiB of VmRSS growth once, with 128 MiB on disk.) What does
    // grow (83 MiB of VmRSS when measured, with 128 MiB on disk) is the agent's
    // pending budget (16 MiB), the index writer's (15 MB), the batches in flight and
    // allocator slack, none of which scales with the outage.
    assert!(
        (growth as f64) < held,
        "anonymous RSS grew by {} MiB while the wal held {:.0} MiB",
        growth / 1_048_576,
        held / 1_048_576.0
    );

    // S3 returns: retention catches up, segments go, the agent delivers what it held, and
    // new data is taken again.
    s3.start().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for attempt in 1_000.. {
        let mut request = tonic::Request::new(batch(attempt));
        request.set_timeout(Duration::from_secs(10));
        match client.send(request).await {
            Ok(_) => {
                must_have.push(attempt);
                break;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                refused_rounds.push(attempt);
                assert!(
                    Instant::now() < deadline,
                    "still refused 120 s after S3 came back"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let rounds = |list: &[usize]| {
        list.iter()
            .map(|round| format!("'r{round}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let required = 500 * must_have.len() as u64;
    let required_query = format!(
        "SELECT count(*) AS n FROM logs WHERE source_id = 'outage' AND split_part(message, ' ', 2) IN ({})",
        rounds(&must_have)
    );
    sluice
        .wait_for(
            "every line acknowledged or held",
            required,
            Duration::from_secs(180),
            || sluice.sql_number(&required_query),
        )
        .await;
    // Of the refused rounds, at most what the agent took before refusing the rest.
    let partial = if refused_rounds.is_empty() {
        0
    } else {
        sluice
            .sql_number(&format!(
                "SELECT count(*) AS n FROM logs WHERE source_id = 'outage' AND split_part(message, ' ', 2) IN ({})",
                rounds(&refused_rounds)
            ))
            .await
    };
    assert!(
        partial < 500 * refused_rounds.len() as u64,
        "{partial} lines of refused rounds"
    );
    let stored = required + partial;
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) AS n FROM logs WHERE source_id = 'outage'")
            .await,
        stored,
        "no line twice, none beyond what was taken"
    );
    assert_eq!(
        sluice
            .sql_number("SELECT count(*) AS n FROM logs WHERE source_id = 'outage'")
            .await,
        stored
    );
    sluice
        .wait_for("indexed lines", stored, Duration::from_secs(60), || {
            sluice.search_total("source_id:outage")
        })
        .await;
    eprintln!(
        "after the outage: {stored} lines stored ({required} acknowledged or held, {partial} of {} refused rounds)",
        refused_rounds.len()
    );
    let audit: serde_json::Value =
        reqwest::get(format!("{}/api/v1/audit?source_id=outage", sluice.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(audit["unexplained_gaps"], 0, "{audit}");
    drop(sluice);
    drop(disk);
}

/// Bytes free on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("df said {output:?}"))
}

/// The whole data directory (WAL, index, archive) on one small filesystem that fills up: new
/// data is refused with `RESOURCE_EXHAUSTED`, the indexer and retention wait instead of
/// stopping (the indexer failed on the full disk and restarts from its last commit), and once
/// space returns Sluice takes data again by itself, with every line it took stored once.
/// (The indexer used to stop for good at the first failed commit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_full_data_disk_refuses_new_data_loses_nothing_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("data-disk"), "160m");
    let config = "[agent]\nflush_bytes = 2097152\nmax_pending_bytes = 16777216\npending_wait = \"2s\"\n\
         [doppler]\nmax_message_bytes = 4000000\n\
         [bus]\nmax_record_bytes = 4194304\n\
         [bus.wal]\nsegment_bytes = 4194304\n\
         [indexer]\nwriter_memory_bytes = 15000000\n\
         [retention]\nflush_interval = \"1s\"\n";
    let sluice = Sluice::start_with_config(&disk.0.join("data"), config).await;
    let mut client = sluice.ingress().await;
    let filler = "f".repeat(1_000);
    let batch = |round: usize| EnvelopeBatch {
        batch: (0..500)
            .map(|index| log_envelope("diskfull", format!("diskfull r{round} n{index} {filler}")))
            .collect(),
    };
    // Rounds stored in full (acknowledged, or taken and held by the agent) and rounds refused
    // part-way, as in the outage test above.
    let mut must_have = Vec::new();
    let mut refused_rounds = Vec::new();
    client.send(batch(0)).await.unwrap();
    must_have.push(0);
    // Everything but 24 MiB goes to a ballast file.
    let ballast = disk.0.join("ballast");
    let keep = 24 * 1024 * 1024;
    let mut file = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 1024 * 1024];
    while free_bytes(&disk.0) > keep + chunk.len() as u64 {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);

    let started = Instant::now();
    let mut round = 1;
    let mut refusal = None;
    while refusal.is_none() {
        let mut request = tonic::Request::new(batch(round));
        request.set_timeout(Duration::from_secs(5));
        match client.send(request).await {
            Ok(_) => must_have.push(round),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) =>
            {
                must_have.push(round)
            }
            Err(status) => {
                refused_rounds.push(round);
                refusal = Some(status);
            }
        }
        round += 1;
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no refusal after {round} rounds of 500 KB on a disk with 24 MiB free"
        );
    }
    let refusal = refusal.unwrap();
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    let text = sluice.metrics_text().await;
    eprintln!(
        "disk full after {round} rounds: {}; indexer restarts {}",
        refusal.message(),
        sample(&text, "sluice_indexer_restarts_total")
    );

    // Space returns: Sluice takes data again by itself.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut request = tonic::Request::new(batch(round));
        request.set_timeout(Duration::from_secs(10));
        match client.send(request).await {
            Ok(_) => {
                must_have.push(round);
                break;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                refused_rounds.push(round);
                assert!(
                    Instant::now() < deadline,
                    "still refused 120 s after space returned"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
        round += 1;
    }
    let rounds = |list: &[usize]| {
        list.iter()
            .map(|round| format!("'r{round}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let required = 500 * must_have.len() as u64;
    let required_query = format!(
        "SELECT count(*) AS n FROM logs WHERE source_id = 'diskfull' AND split_part(message, ' ', 2) IN ({})",
        rounds(&must_have)
    );
    sluice
        .wait_for(
            "every line taken, in the archive",
            required,
            Duration::from_secs(180),
            || sluice.sql_number(&required_query),
        )
        .await;
    let partial = sluice
        .sql_number(&format!(
            "SELECT count(*) AS n FROM logs WHERE source_id = 'diskfull' AND split_part(message, ' ', 2) IN ({})",
            rounds(&refused_rounds)
        ))
        .await;
    assert!(
        partial < 500 * refused_rounds.len() as u64,
        "{partial} lines of refused rounds"
    );
    let stored = required + partial;
    assert_eq!(
        sluice
            .sql_number(
                "SELECT count(DISTINCT message) AS n FROM logs WHERE source_id = 'diskfull'"
            )
            .await,
        stored,
        "no line twice, none beyond what was taken"
    );
    sluice
        .wait_for("indexed lines", stored, Duration::from_secs(120), || {
            sluice.search_total("source_id:diskfull")
        })
        .await;
    let audit: serde_json::Value =
        reqwest::get(format!("{}/api/v1/audit?source_id=diskfull", sluice.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(audit["unexplained_gaps"], 0, "{audit}");
    eprintln!(
        "after the disk had room again: {stored} lines stored exactly once ({} refused rounds)",
        refused_rounds.len()
    );
    drop(sluice);
    drop(disk);
}
