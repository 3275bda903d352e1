//! Tail clients for the benchmark: many tails held open while a load runs (their cost on
//! ingest), and one tail resuming from a cursor far behind (its catch-up rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use serde::Serialize;

/// Opens `count` tails on `api`, tail `i` selecting `source_id={prefix}{i}`, prints
/// `opened` once all answered, and holds them until stdin closes; then prints a JSON line of
/// what they received.
pub async fn hold(api: &str, count: usize, prefix: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let events = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for index in 0..count {
        let response = client
            .get(format!("{}/api/v1/tail", api.trim_end_matches('/')))
            .query(&[("source_id", format!("{prefix}{index}"))])
            .send()
            .await
            .context("failed to open a tail")?;
        if !response.status().is_success() {
            return Err(anyhow!("tail {index} answered {}", response.status()));
        }
        let events = Arc::clone(&events);
        readers.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
            while let Some(Ok(chunk)) = body.next().await {
                let text = String::from_utf8_lossy(&chunk);
                events.fetch_add(text.matches("\n\n").count() as u64, Ordering::Relaxed);
            }
        }));
    }
    println!("opened {count}");
    // Hold until the harness closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|read| read > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    for reader in &readers {
        reader.abort();
    }
    println!(
        "{}",
        serde_json::json!({"tails": count, "events": events.load(Ordering::Relaxed)})
    );
    Ok(())
}

/// What a catch-up run measured.
#[derive(Serialize)]
pub struct CatchUp {
    /// Envelopes received.
    pub envelopes: u64,
    /// Seconds from the request to the last of them.
    pub seconds: f64,
    /// Envelopes per second.
    pub per_s: f64,
}

/// Opens one tail on `api` with `params` and `cursor` and reads until `count` envelopes
/// arrived (a deadline of ten minutes).
pub async fn catch_up(
    api: &str,
    params: &[(String, String)],
    cursor: &str,
    count: u64,
) -> anyhow::Result<CatchUp> {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/tail", api.trim_end_matches('/')))
        .query(params)
        .header("Last-Event-ID", cursor)
        .send()
        .await
        .context("failed to open the tail")?;
    if !response.status().is_success() {
        return Err(anyhow!("the tail answered {}", response.status()));
    }
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut envelopes = 0_u64;
    let deadline = started + Duration::from_secs(600);
    while envelopes < count {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .map_err(|_| anyhow!("only {envelopes} of {count} envelopes in ten minutes"))?
            .ok_or_else(|| anyhow!("the tail ended after {envelopes} envelopes"))??;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.lines().any(|line| line.starts_with("event:")) {
                envelopes += 1;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CatchUp {
        envelopes,
        seconds,
        per_s: envelopes as f64 / seconds,
    })
}
