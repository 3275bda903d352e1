//! Faults on a real network: the agent runs in a network namespace of its own, joined to the
//! rest of Sluice by veth pairs, and the test cuts links while clients keep sending. Afterwards
//! every acknowledged line is found exactly once by search and by SQL, the audit shows no
//! unexplained gap, and peak memory is recorded and bounded.
//!
//! Needs root and iproute2 (the test creates namespaces and links; CI runs `scripts/test` as
//! root).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::v2::EnvelopeBatch;
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_tests::netns::{Link, Netns, peak_rss_bytes};
use sluice_tests::{RoleProcess, Sluice, free_port, log_envelope, wait_listening};
use tonic::transport::Channel;

const BATCH: usize = 100;

/// The agent's settings for these tests: the Loggregator ingress on `listen`, forwarding to
/// `dopplers`, its own `/metrics` on `telemetry`, no other source, a pending budget small
/// enough that a long cut reaches it, and a short wait for room in it.
fn agent_config(
    data_dir: &Path,
    tls_dir: &Path,
    listen: &str,
    dopplers: &[String],
    telemetry: &str,
) -> String {
    format!(
        "data_dir = {data_dir:?}\n\
         [tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n\
         [telemetry]\nlisten = \"{telemetry}\"\n\
         [agent]\nlisten = \"{listen}\"\ndopplers = {dopplers:?}\n\
         max_pending_envelopes = 8000\nmax_pending_bytes = 33554432\npending_wait = \"1s\"\n\
         [agent.elasticsearch]\nenabled = false\n[agent.syslog]\nenabled = false\n\
         [agent.host_metrics]\nenabled = false\n[agent.otlp]\nenabled = false\n",
        tls_dir.join("ca.pem"),
        tls_dir.join("node.pem"),
        tls_dir.join("node-key.pem"),
    )
}

/// What the clients saw of their rounds of [`BATCH`] lines.
#[derive(Default)]
struct Tally {
    /// Rounds the agent acknowledged (stored in the bus).
    acknowledged: Vec<usize>,
    /// Rounds the agent took but had not delivered by the client's deadline: it holds them
    /// and must deliver them later.
    held: Vec<usize>,
    /// Rounds refused with `RESOURCE_EXHAUSTED` (the agent may have taken part of one before
    /// refusing the rest).
    refused: Vec<usize>,
}

/// Sends one round with a deadline longer than the agent's `pending_wait`, so a round is
/// always either taken or refused before the client gives up on it.
async fn send_round(
    client: &mut IngressClient<Channel>,
    source_id: &str,
    round: usize,
    tally: &Mutex<Tally>,
) {
    let batch = EnvelopeBatch {
        batch: (0..BATCH)
            .map(|index| log_envelope(source_id, format!("netline r{round} n{index}")))
            .collect(),
    };
    let mut request = tonic::Request::new(batch);
    request.set_timeout(Duration::from_secs(3));
    let outcome = client.send(request).await;
    let mut tally = tally.lock().unwrap();
    match outcome {
        Ok(_) => tally.acknowledged.push(round),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ) =>
        {
            tally.held.push(round)
        }
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::ResourceExhausted,
                "round {round}: {status:?}"
            );
            tally.refused.push(round);
        }
    }
}

fn rounds_list(rounds: &[usize]) -> String {
    rounds
        .iter()
        .map(|round| format!("'r{round}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every acknowledged round is stored whole, no line twice, nothing beyond what was taken;
/// search agrees with SQL; the audit explains every gap. Returns the lines stored.
async fn assert_exact(sluice: &Sluice, source_id: &str, tally: &Tally) -> u64 {
    let must_have: Vec<usize> = tally
        .acknowledged
        .iter()
        .chain(&tally.held)
        .copied()
        .collect();
    let acknowledged = (BATCH * must_have.len()) as u64;
    let in_rounds = |rounds: &[usize]| {
        format!(
            "SELECT count(*) AS n FROM logs WHERE source_id = '{source_id}' AND split_part(message, ' ', 2) IN ({})",
            rounds_list(rounds)
        )
    };
    let acknowledged_query = in_rounds(&must_have);
    sluice
        .wait_for(
            "every acknowledged or held line in the archive",
            acknowledged,
            Duration::from_secs(240),
            || sluice.sql_number(&acknowledged_query),
        )
        .await;
    let partial = if tally.refused.is_empty() {
        0
    } else {
        sluice.sql_number(&in_rounds(&tally.refused)).await
    };
    assert!(
        partial < (BATCH * tally.refused.len().max(1)) as u64,
        "{partial} lines of {} refused rounds",
        tally.refused.len()
    );
    let stored = acknowledged + partial;
    assert_eq!(
        sluice
            .sql_number(&format!(
                "SELECT count(DISTINCT message) AS n FROM logs WHERE source_id = '{source_id}'"
            ))
            .await,
        stored,
        "a line twice, or one that was never taken"
    );
    assert_eq!(
        sluice
            .sql_number(&format!(
                "SELECT count(*) AS n FROM logs WHERE source_id = '{source_id}'"
            ))
            .await,
        stored
    );
    let search = format!("source_id:{source_id}");
    sluice
        .wait_for("indexed lines", stored, Duration::from_secs(120), || {
            sluice.search_total(&search)
        })
        .await;
    let audit: serde_json::Value =
        reqwest::get(format!("{}/api/v1/audit?source_id={source_id}", sluice.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(audit["unexplained_gaps"], 0, "{audit}");
    stored
}

/// The agent, alone in its namespace, loses its only doppler for two minutes while four
/// clients keep sending: the agent holds what it took up to its pending budget, then refuses
/// with `RESOURCE_EXHAUSTED` (the clients see it), and when the link heals it delivers
/// everything it took, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cut_from_its_doppler_for_two_minutes_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let core_dir = dir.path().join("core");
    let tls_dir = core_dir.join("tls");
    sluice_common::tls::ensure_local_ca(&tls_dir).unwrap();
    let netns = Netns::create(&format!("sluice-cut-{}", std::process::id()));
    // One link carries the client's lines to the agent, the other the agent's batches to the
    // doppler; only the second is cut.
    let feed = Link::new(&netns, "slcutf", 11);
    let forward = Link::new(&netns, "slcutd", 12);

    let (agent_port, doppler_port, http_port, telemetry_port) =
        (free_port(), free_port(), free_port(), free_port());
    let doppler = format!("{}:{doppler_port}", forward.host_ip);
    let core_config = dir.path().join("core.toml");
    std::fs::write(
        &core_config,
        format!(
            "data_dir = {core_dir:?}\n\
             [agent]\nlisten = \"127.0.0.1:{}\"\ndopplers = [\"{doppler}\"]\n\
             [agent.elasticsearch]\nenabled = false\n[agent.syslog]\nenabled = false\n\
             [agent.host_metrics]\nenabled = false\n[agent.otlp]\nenabled = false\n\
             [doppler]\nlisten = \"{doppler}\"\n\
             [retention]\nflush_interval = \"1s\"\n\
             [query_api]\nlisten = \"127.0.0.1:{http_port}\"\ndoppler = \"{doppler}\"\n",
            free_port()
        ),
    )
    .unwrap();
    let core = RoleProcess::start("up", &core_config);
    wait_listening(&doppler, Duration::from_secs(60)).await;
    wait_listening(&format!("127.0.0.1:{http_port}"), Duration::from_secs(60)).await;

    let agent_listen = format!("{}:{agent_port}", feed.ns_ip);
    let agent_config_path = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config_path,
        agent_config(
            &dir.path().join("agent"),
            &tls_dir,
            &agent_listen,
            std::slice::from_ref(&doppler),
            &format!("{}:{telemetry_port}", feed.ns_ip),
        ),
    )
    .unwrap();
    let agent = RoleProcess::start_in(&netns.name, "agent", &agent_config_path);
    wait_listening(&agent_listen, Duration::from_secs(60)).await;

    let sluice = Sluice::attach(
        &core_dir,
        &agent_listen,
        &format!("http://127.0.0.1:{http_port}"),
    );
    // Four clients, each sending a round of 100 lines every 400 ms (1,000 lines a second in
    // all while the agent answers at once), from before the cut until after it heals.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_round = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(150);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = sluice.ingress().await;
        let (tally, next_round) = (Arc::clone(&tally), Arc::clone(&next_round));
        clients.push(tokio::spawn(async move {
            let mut at = Instant::now();
            while at < end {
                tokio::time::sleep_until(at.into()).await;
                let round = next_round.fetch_add(1, Ordering::Relaxed);
                send_round(&mut client, "netcut", round, &tally).await;
                at += Duration::from_millis(400);
            }
        }));
    }
    let report = |phase: &str| {
        let tally = tally.lock().unwrap();
        eprintln!(
            "{phase}: rounds acknowledged {}, held {}, refused {}; agent peak RSS {} MiB",
            tally.acknowledged.len(),
            tally.held.len(),
            tally.refused.len(),
            peak_rss_bytes(agent.pid()) / 1_048_576
        );
        tally.refused.len()
    };
    tokio::time::sleep(Duration::from_secs(15)).await;
    report("before the cut");
    forward.cut();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let refused = report("after two minutes cut");
    // The clients kept offering more than the agent's pending budget (8,000 lines): it must
    // have pushed back.
    assert!(refused > 0, "no refusal during a two-minute cut");
    forward.heal();
    for client in clients {
        client.await.unwrap();
    }
    report("healed");
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let stored = assert_exact(&sluice, "netcut", &tally).await;
    let (agent_peak, core_peak) = (peak_rss_bytes(agent.pid()), peak_rss_bytes(core.pid()));
    eprintln!(
        "agent cut for 120 s: {} lines acknowledged, {} held, {} rounds refused, {stored} stored exactly once; peak RSS agent {} MiB, sluice up {} MiB",
        BATCH * tally.acknowledged.len(),
        BATCH * tally.held.len(),
        tally.refused.len(),
        agent_peak / 1_048_576,
        core_peak / 1_048_576
    );
    // The agent holds at most its pending budget (32 MiB of batches) beyond its own working
    // set; an agent that buffered the whole cut would hold 120,000 lines and more.
    assert!(
        agent_peak < 256 * 1_048_576,
        "agent peak RSS {} MiB",
        agent_peak / 1_048_576
    );
    drop(agent);
    drop(core);
}
