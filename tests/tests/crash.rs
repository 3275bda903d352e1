//! Crash exactness: `kill -9` in the middle of a stream, restart on the same data directory,
//! finish sending. Search and SQL then count exactly the envelopes whose batches were
//! acknowledged: none lost, none twice.
//!
//! One batch may be in flight when the process dies: the client never learns whether it was
//! accepted. The test does not resend it (a real client would, and that is at-least-once by
//! design); instead it checks that this one batch is present either whole or not at all, and
//! counts it only if present.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_tests::{Sluice, log_envelope, send};

const BATCH: usize = 100;
const BATCHES: usize = 100;

fn batch(number: usize) -> Vec<sluice_proto::v2::Envelope> {
    (0..BATCH)
        .map(|index| {
            log_envelope(
                "crash-app",
                format!("crashtest b{number:03} line {index} crashline"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = Sluice::start(&dir.path().join("data")).await;
    let mut client = sluice.ingress().await;

    // Stream batches from a task while the main task pulls the plug partway through.
    let (acknowledged_sender, mut acknowledged) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let sender = tokio::spawn(async move {
        for number in 0..BATCHES {
            match send(&mut client, batch(number)).await {
                Ok(()) => acknowledged_sender.send(number).unwrap(),
                // The process died with this batch in flight.
                Err(_) => return Some(number),
            }
        }
        None
    });
    let mut acked: Vec<usize> = Vec::new();
    while acked.len() < 30 {
        acked.push(acknowledged.recv().await.unwrap());
    }
    sluice.kill_hard();
    let in_flight = tokio::time::timeout(Duration::from_secs(30), sender)
        .await
        .unwrap()
        .unwrap();
    while let Ok(number) = acknowledged.try_recv() {
        acked.push(number);
    }
    let in_flight = in_flight.expect("the sender saw the crash");
    assert_eq!(in_flight, acked.len(), "batches are sent in order");

    // Restart on the same data directory and finish the stream with new batches.
    sluice.restart().await;
    let mut client = sluice.ingress().await;
    for number in in_flight + 1..BATCHES {
        send(&mut client, batch(number)).await.unwrap();
        acked.push(number);
    }

    // Wait for every acknowledged line, then for things to settle, then count exactly.
    let acknowledged_lines = (acked.len() * BATCH) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let searched = sluice.search_total("crashline").await;
        let counted = sluice.sql_number("SELECT count(*) FROM logs").await;
        if searched >= acknowledged_lines && counted >= acknowledged_lines {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "search {searched}, sql {counted}, acknowledged {acknowledged_lines}; log:\n{}",
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let in_flight_lines = sluice
        .sql_number(&format!(
            "SELECT count(*) FROM logs WHERE message LIKE 'crashtest b{in_flight:03} %'"
        ))
        .await;
    assert!(
        in_flight_lines == 0 || in_flight_lines == BATCH as u64,
        "the batch in flight at the crash is whole or absent, found {in_flight_lines} lines"
    );
    let expected = acknowledged_lines + in_flight_lines;
    assert_eq!(
        sluice.sql_number("SELECT count(*) FROM logs").await,
        expected,
        "sql count"
    );
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) FROM logs")
            .await,
        expected,
        "no duplicates in sql"
    );
    assert_eq!(
        sluice.search_total("crashline").await,
        expected,
        "search count"
    );
    for number in &acked {
        let lines = sluice
            .sql_number(&format!(
                "SELECT count(*) FROM logs WHERE message LIKE 'crashtest b{number:03} %'"
            ))
            .await;
        assert_eq!(lines, BATCH as u64, "acknowledged batch {number}");
    }
}
