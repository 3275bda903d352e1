//! Driving an agent's Loggregator ingress: several concurrent `BatchSender` streams, each on
//! its own connection, send the generator's envelopes as fast as the agent takes them (its
//! admission control pushes back through HTTP/2 flow control) or at a fixed rate.
//!
//! Freshness probes ride along: every `probe_every`, one marker line goes out on its own
//! `Send` call; a live-tail subscription through the query API and a search poller note when
//! each marker shows up. Latencies are measured from just before the marker's `Send`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use sluice_common::tls::{TlsMaterial, TlsPaths};
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_proto::v2::{Envelope, EnvelopeBatch, Log, envelope};
use tonic::transport::{Channel, Endpoint};

use crate::generator::Generator;

/// How to drive the agent.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// Agent ingress `host:port`.
    pub agent: String,
    /// Directory with `ca.pem`, `node.pem`, `node-key.pem`.
    pub tls_dir: PathBuf,
    /// First envelope index (so consecutive runs send new data).
    pub first: u64,
    /// Envelopes to send.
    pub count: u64,
    /// Concurrent streams.
    pub streams: u64,
    /// Envelopes per batch.
    pub batch: usize,
    /// Envelopes per second over all streams; 0 for as fast as the agent takes them.
    pub rate: f64,
    /// Spread timestamps evenly over this many seconds ending now; 0 stamps them when sent.
    pub time_span_s: u64,
    /// Query API base URL for freshness probes; none disables them.
    pub api: Option<String>,
    /// Interval between probes.
    pub probe_every: Duration,
}

/// What a load run did.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// Envelopes the agent accepted.
    pub envelopes: u64,
    /// Of which log lines.
    pub log_lines: u64,
    /// Bytes of log line payloads.
    pub log_bytes: u64,
    /// Seconds from the first send to the last stream's completion.
    pub elapsed_s: f64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Emit → live tail latency of each probe that arrived, ms.
    pub tail_ms: Vec<f64>,
    /// Emit → searchable latency of each probe found, ms.
    pub search_ms: Vec<f64>,
}

async fn connect(settings: &LoadSettings) -> anyhow::Result<IngressClient<Channel>> {
    connect_agent(&settings.agent, &settings.tls_dir).await
}

/// A Loggregator ingress client of the agent at `agent`, with the client certificate in
/// `tls_dir` (`ca.pem`, `node.pem`, `node-key.pem`).
pub async fn connect_agent(
    agent: &str,
    tls_dir: &std::path::Path,
) -> anyhow::Result<IngressClient<Channel>> {
    let paths = TlsPaths {
        ca_cert: tls_dir.join("ca.pem"),
        cert: tls_dir.join("node.pem"),
        key: tls_dir.join("node-key.pem"),
    };
    let tls = TlsMaterial::load(&paths, "localhost")
        .with_context(|| format!("no client certificate in {}", tls_dir.display()))?;
    let channel = Endpoint::from_shared(format!("https://{agent}"))?
        .tls_config(tls.client_config())?
        .connect()
        .await
        .with_context(|| format!("failed to connect to the agent at {agent}"))?;
    Ok(IngressClient::new(channel).max_encoding_message_size(64 * 1024 * 1024))
}

/// Runs the load and returns what it measured.
pub async fn run(generator: Arc<Generator>, settings: LoadSettings) -> anyhow::Result<LoadReport> {
    let envelopes = Arc::new(AtomicU64::new(0));
    let log_lines = Arc::new(AtomicU64::new(0));
    let log_bytes = Arc::new(AtomicU64::new(0));
    let now_ns = sluice_common::time::now_nanos();
    let span_ns = settings.time_span_s as i64 * 1_000_000_000;
    let run_id = format!("{:x}", now_ns as u64 & 0xffff_ffff);

    let probes = match &settings.api {
        Some(api) if !settings.probe_every.is_zero() => {
            Some(Probes::start(api.clone(), run_id.clone(), connect(&settings).await?).await?)
        }
        _ => None,
    };

    let started = Instant::now();
    let mut tasks = Vec::new();
    for stream in 0..settings.streams {
        let mut client = connect(&settings).await?;
        let generator = Arc::clone(&generator);
        let settings = settings.clone();
        let (envelopes, log_lines, log_bytes) = (
            Arc::clone(&envelopes),
            Arc::clone(&log_lines),
            Arc::clone(&log_bytes),
        );
        tasks.push(tokio::spawn(async move {
            let (sender, receiver) = tokio::sync::mpsc::channel::<EnvelopeBatch>(4);
            let call = tokio::spawn(async move {
                client
                    .batch_sender(tokio_stream::wrappers::ReceiverStream::new(receiver))
                    .await
            });
            let per_stream_rate = settings.rate / settings.streams as f64;
            let mut index = settings.first + stream;
            let end = settings.first + settings.count;
            let mut sent_here: u64 = 0;
            while index < end {
                let mut batch = Vec::with_capacity(settings.batch);
                let (mut lines, mut bytes) = (0u64, 0u64);
                while batch.len() < settings.batch && index < end {
                    let timestamp = if span_ns > 0 {
                        let offset = (index - settings.first) as i128 * span_ns as i128
                            / settings.count.max(1) as i128;
                        now_ns - span_ns + offset as i64
                    } else {
                        sluice_common::time::now_nanos()
                    };
                    let envelope = generator.envelope(index, timestamp);
                    if let Some(envelope::Message::Log(log)) = &envelope.message {
                        lines += 1;
                        bytes += log.payload.len() as u64;
                    }
                    batch.push(envelope);
                    index += settings.streams;
                }
                let size = batch.len() as u64;
                if sender.send(EnvelopeBatch { batch }).await.is_err() {
                    break;
                }
                envelopes.fetch_add(size, Ordering::Relaxed);
                log_lines.fetch_add(lines, Ordering::Relaxed);
                log_bytes.fetch_add(bytes, Ordering::Relaxed);
                sent_here += size;
                if per_stream_rate > 0.0 {
                    let due = started + Duration::from_secs_f64(sent_here as f64 / per_stream_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            drop(sender);
            match call.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(anyhow!(
                    "the agent ended a stream: {:?}: {}",
                    status.code(),
                    status.message()
                )),
                Err(join) => Err(anyhow!("stream task failed: {join}")),
            }
        }));
    }

    let done = Arc::new(AtomicBool::new(false));
    let prober = probes.as_ref().map(|probes| {
        let probes = probes.clone();
        let done = Arc::clone(&done);
        let every = settings.probe_every;
        tokio::spawn(async move { probes.emit_until(every, &done).await })
    });
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failure = Some(error),
            Err(join) => failure = Some(anyhow!("stream task panicked: {join}")),
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(prober) = prober {
        prober.await??;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let (probes_sent, tail_ms, search_ms) = match probes {
        Some(probes) => probes.finish(Duration::from_secs(30)).await,
        None => (0, Vec::new(), Vec::new()),
    };
    Ok(LoadReport {
        envelopes: envelopes.load(Ordering::Relaxed),
        log_lines: log_lines.load(Ordering::Relaxed),
        log_bytes: log_bytes.load(Ordering::Relaxed),
        elapsed_s,
        probes_sent,
        tail_ms,
        search_ms,
    })
}

#[derive(Default)]
struct ProbeState {
    sent: HashMap<String, Instant>,
    tail: HashMap<String, Duration>,
    search: HashMap<String, Duration>,
}

/// Freshness probes of one run.
#[derive(Clone)]
struct Probes {
    api: String,
    source_id: String,
    started_ns: i64,
    client: IngressClient<Channel>,
    http: reqwest::Client,
    state: Arc<Mutex<ProbeState>>,
    stop: Arc<AtomicBool>,
}

impl Probes {
    /// Subscribes to the live tail and starts the search poller.
    async fn start(
        api: String,
        run_id: String,
        client: IngressClient<Channel>,
    ) -> anyhow::Result<Probes> {
        let probes = Probes {
            api: api.trim_end_matches('/').to_owned(),
            source_id: format!("bench-probe-{run_id}"),
            started_ns: sluice_common::time::now_nanos(),
            client,
            http: reqwest::Client::new(),
            state: Arc::default(),
            stop: Arc::default(),
        };
        let response = probes
            .http
            .get(format!("{}/api/v1/tail", probes.api))
            .query(&[("source_id", &probes.source_id)])
            .send()
            .await
            .context("failed to subscribe to the live tail")?;
        if !response.status().is_success() {
            return Err(anyhow!("the live tail answered {}", response.status()));
        }
        let tail = probes.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                let arrived = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find('\n') {
                    let line: String = buffer.drain(..=end).collect();
                    if let Some(token) = probe_token(&line) {
                        tail.note(&token, arrived, true);
                    }
                }
                if tail.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        let poller = probes.clone();
        tokio::spawn(async move { poller.poll_search().await });
        // The tail answered once it knew the bus position it reads from: every probe sent
        // from now on reaches it.
        Ok(probes)
    }

    fn note(&self, token: &str, arrived: Instant, tail: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let Some(sent) = state.sent.get(token).copied() else {
            return;
        };
        let seen = if tail {
            &mut state.tail
        } else {
            &mut state.search
        };
        seen.entry(token.to_owned())
            .or_insert_with(|| arrived.saturating_duration_since(sent));
    }

    async fn poll_search(&self) {
        let query = format!("source_id:\"{}\"", self.source_id);
        while !self.stop.load(Ordering::Relaxed) {
            let asked = Instant::now();
            let answer = self
                .http
                .get(format!("{}/api/v1/search", self.api))
                .query(&[
                    ("query", query.as_str()),
                    ("limit", "10000"),
                    ("start", &self.started_ns.to_string()),
                ])
                .send()
                .await;
            if let Ok(response) = answer
                && let Ok(body) = response.json::<Value>().await
            {
                // A probe counts as searchable when the query that found it was sent.
                for hit in body["hits"].as_array().into_iter().flatten() {
                    if let Some(token) = hit["message"].as_str().and_then(probe_token) {
                        self.note(&token, asked, false);
                    }
                }
            }
            tokio::time::sleep_until((asked + Duration::from_millis(25)).into()).await;
        }
    }

    async fn emit_until(&self, every: Duration, done: &AtomicBool) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        let mut ticker = tokio::time::interval(every);
        let mut n = 0u64;
        while !done.load(Ordering::Relaxed) {
            ticker.tick().await;
            n += 1;
            let token = format!("benchprobe{n}x{}", self.source_id.len());
            let envelope = Envelope {
                timestamp: sluice_common::time::now_nanos(),
                source_id: self.source_id.clone(),
                instance_id: "0".to_owned(),
                message: Some(envelope::Message::Log(Log {
                    payload: format!("sluice bench probe {token}").into_bytes(),
                    r#type: 0,
                })),
                ..Default::default()
            };
            if let Ok(mut state) = self.state.lock() {
                state.sent.insert(token, Instant::now());
            }
            client
                .send(EnvelopeBatch {
                    batch: vec![envelope],
                })
                .await
                .map_err(|status| anyhow!("the agent refused a probe: {}", status.message()))?;
        }
        Ok(())
    }

    /// Waits up to `grace` for outstanding probes; returns (sent, tail ms, search ms).
    async fn finish(self, grace: Duration) -> (u64, Vec<f64>, Vec<f64>) {
        let deadline = Instant::now() + grace;
        loop {
            let complete = self.state.lock().map_or(true, |state| {
                state.tail.len() == state.sent.len() && state.search.len() == state.sent.len()
            });
            if complete || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let Ok(state) = self.state.lock() else {
            return (0, Vec::new(), Vec::new());
        };
        let millis = |seen: &HashMap<String, Duration>| {
            let mut values: Vec<f64> = seen
                .values()
                .map(|latency| latency.as_secs_f64() * 1000.0)
                .collect();
            values.sort_by(f64::total_cmp);
            values
        };
        (
            state.sent.len() as u64,
            millis(&state.tail),
            millis(&state.search),
        )
    }
}

/// The probe token in a line, if any (`benchprobe<n>x<m>`).
fn probe_token(text: &str) -> Option<String> {
    let at = text.find("benchprobe")?;
    let token: String = text[at..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    Some(token)
}
