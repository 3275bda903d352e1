//! Sluice on a real Kafka-protocol broker (tansu, started by `scripts/services`): `sluice up`
//! on the Kafka bus counts exactly across a `kill -9`, and every role started as its own
//! process from one configuration file gives the same answers, and a standby retention
//! process takes over the archive from a dead or paused one without losing or doubling a row.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_tests::{
    RoleProcess, Sluice, free_port, kafka_brokers, log_envelope, send, wait_listening,
};

fn kafka_section(topic: &str) -> String {
    format!(
        "[bus]\nkind = \"kafka\"\n\n[bus.kafka]\nbrokers = \"{}\"\ntopic = \"{topic}\"\npartitions = 4\ngroup_prefix = \"{topic}\"\n",
        kafka_brokers()
    )
}

fn unique(name: &str) -> String {
    format!("{name}-{}", sluice_common::time::now_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_up_on_kafka_counts_exactly_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[retention]\nflush_interval = \"1s\"\n",
        kafka_section(&unique("up"))
    );
    let mut sluice = Sluice::start_with_config(&dir.path().join("data"), &config).await;
    let mut client = sluice.ingress().await;
    for batch in 0..20 {
        let envelopes = (0..100)
            .map(|index| {
                log_envelope(
                    &format!("kafka-app-{}", index % 5),
                    format!("kafkaline b{batch} n{index}"),
                )
            })
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
    sluice
        .wait_for("search", 2_000, Duration::from_secs(60), || {
            sluice.search_total("kafkaline")
        })
        .await;
    sluice
        .wait_for("sql", 2_000, Duration::from_secs(60), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;

    sluice.restart().await;
    let mut client = sluice.ingress().await;
    send(
        &mut client,
        (0..1_000)
            .map(|index| log_envelope("kafka-app-9", format!("kafkaline after n{index}")))
            .collect(),
    )
    .await
    .unwrap();
    sluice
        .wait_for(
            "search after restart",
            3_000,
            Duration::from_secs(60),
            || sluice.search_total("kafkaline"),
        )
        .await;
    sluice
        .wait_for("sql after restart", 3_000, Duration::from_secs(60), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sluice.search_total("kafkaline").await, 3_000);
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) FROM logs")
            .await,
        3_000
    );
    assert_eq!(sluice.sql_number("SELECT count(*) FROM logs").await, 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_as_its_own_process_gives_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // One CA for every process, made before any of them starts.
    sluice_common::tls::ensure_local_ca(&data_dir.join("tls")).unwrap();
    let (agent, doppler, http) = (free_port(), free_port(), free_port());
    let config = format!(
        "data_dir = \"{}\"\n\n{}\n[agent]\nlisten = \"127.0.0.1:{agent}\"\ndopplers = [\"127.0.0.1:{doppler}\"]\n\n\
         [agent.elasticsearch]\nenabled = false\n\n[agent.syslog]\nenabled = false\n\n[agent.host_metrics]\nenabled = false\n\n[agent.otlp]\nenabled = false\n\n\
         [doppler]\nlisten = \"127.0.0.1:{doppler}\"\n\n[retention]\nflush_interval = \"1s\"\n\n\
         [query_api]\nlisten = \"127.0.0.1:{http}\"\n",
        data_dir.display(),
        kafka_section(&unique("roles"))
    );
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(&config_path, config).unwrap();

    let _doppler = RoleProcess::start("doppler", &config_path);
    wait_listening(&format!("127.0.0.1:{doppler}"), Duration::from_secs(60)).await;
    let _indexer = RoleProcess::start("indexer", &config_path);
    let _retention = RoleProcess::start("retention", &config_path);
    let _query_api = RoleProcess::start("query-api", &config_path);
    let _agent = RoleProcess::start("agent", &config_path);
    wait_listening(&format!("127.0.0.1:{agent}"), Duration::from_secs(60)).await;
    wait_listening(&format!("127.0.0.1:{http}"), Duration::from_secs(60)).await;

    // The harness's client helpers work against any Sluice; point one at these processes.
    let sluice = Sluice::attach(
        &data_dir,
        &format!("127.0.0.1:{agent}"),
        &format!("http://127.0.0.1:{http}"),
    );
    let mut client = sluice.ingress().await;
    for batch in 0..10 {
        let envelopes = (0..100)
            .map(|index| log_envelope("roles-app", format!("roleline b{batch} n{index}")))
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
    sluice
        .wait_for("search", 1_000, Duration::from_secs(60), || {
            sluice.search_total("roleline")
        })
        .await;
    sluice
        .wait_for("sql", 1_000, Duration::from_secs(60), || {
            sluice.sql_number("SELECT count(*) FROM logs")
        })
        .await;
}

/// Sends `count` lines tagged `phase` as one source.
async fn send_phase(sluice: &Sluice, phase: &str, count: usize) {
    let mut client = sluice.ingress().await;
    for batch in 0..count / 100 {
        let envelopes = (0..100)
            .map(|index| log_envelope("standby-app", format!("{phase} b{batch} n{index}")))
            .collect();
        send(&mut client, envelopes).await.unwrap();
    }
}

fn signal(process: &RoleProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(process.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} failed");
}

/// Two retention processes on one archive: one writes, the other waits as a standby. The
/// writer is killed: the standby takes over. The new writer is paused (`SIGSTOP`) past its
/// lease: the other takes over, and the paused one, resumed, finds itself fenced and stops
/// writing. Every line is archived exactly once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_retention_takes_over_and_a_paused_writer_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    sluice_common::tls::ensure_local_ca(&data_dir.join("tls")).unwrap();
    let (agent, doppler, http) = (free_port(), free_port(), free_port());
    let config = format!(
        "data_dir = \"{}\"\n\n{}\n[agent]\nlisten = \"127.0.0.1:{agent}\"\ndopplers = [\"127.0.0.1:{doppler}\"]\n\n\
         [agent.elasticsearch]\nenabled = false\n\n[agent.syslog]\nenabled = false\n\n[agent.host_metrics]\nenabled = false\n\n[agent.otlp]\nenabled = false\n\n\
         [doppler]\nlisten = \"127.0.0.1:{doppler}\"\n\n[retention]\nflush_interval = \"1s\"\nlease_ttl = \"2s\"\n\n\
         [query_api]\nlisten = \"127.0.0.1:{http}\"\n",
        data_dir.display(),
        kafka_section(&unique("standby"))
    );
    // One file per retention process, so each has its own log.
    let (config_a, config_b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&config_a, &config).unwrap();
    std::fs::write(&config_b, &config).unwrap();

    let _doppler = RoleProcess::start("doppler", &config_a);
    wait_listening(&format!("127.0.0.1:{doppler}"), Duration::from_secs(60)).await;
    let mut first = RoleProcess::start("retention", &config_a);
    let _query_api = RoleProcess::start("query-api", &config_a);
    let _agent = RoleProcess::start("agent", &config_a);
    wait_listening(&format!("127.0.0.1:{agent}"), Duration::from_secs(60)).await;
    wait_listening(&format!("127.0.0.1:{http}"), Duration::from_secs(60)).await;
    let sluice = Sluice::attach(
        &data_dir,
        &format!("127.0.0.1:{agent}"),
        &format!("http://127.0.0.1:{http}"),
    );
    let count = || sluice.sql_number("SELECT count(*) FROM logs WHERE source_id = 'standby-app'");

    send_phase(&sluice, "one", 1_000).await;
    sluice
        .wait_for(
            "rows the first writer archived",
            1_000,
            Duration::from_secs(60),
            count,
        )
        .await;
    let second = RoleProcess::start("retention", &config_b);

    // The writer dies: the standby takes over and archives what follows.
    first.kill_hard();
    send_phase(&sluice, "two", 1_000).await;
    sluice
        .wait_for(
            "rows after the writer died",
            2_000,
            Duration::from_secs(60),
            count,
        )
        .await;
    assert!(
        second.log().contains("holds the archive's lease"),
        "{}",
        second.log()
    );

    // The first comes back as a standby; the writer is paused past its lease.
    first.restart();
    let standing_by = std::time::Instant::now();
    while !first.log().contains("waiting as a standby") {
        assert!(
            standing_by.elapsed() < Duration::from_secs(60),
            "{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&second, "-STOP");
    send_phase(&sluice, "three", 1_000).await;
    sluice
        .wait_for(
            "rows after the writer paused",
            3_000,
            Duration::from_secs(60),
            count,
        )
        .await;

    // Resumed, the paused one is fenced; the one writing goes on.
    signal(&second, "-CONT");
    let fenced = std::time::Instant::now();
    while !second.log().contains("stops writing") {
        assert!(
            fenced.elapsed() < Duration::from_secs(60),
            "{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_phase(&sluice, "four", 500).await;
    sluice
        .wait_for(
            "rows after the fence",
            3_500,
            Duration::from_secs(60),
            count,
        )
        .await;
    assert_eq!(
        sluice
            .sql_number("SELECT count(DISTINCT message) FROM logs WHERE source_id = 'standby-app'")
            .await,
        3_500
    );
    assert_eq!(count().await, 3_500);
}

/// A Kafka client that is not Sluice's (Python confluent-kafka, installed by
/// `scripts/services`) reads the topic and decodes records by the documented format
/// (docs/bus-format.md): agent id, sequence, and each envelope's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_kafka_client_reads_and_decodes_the_topic() {
    let python = sluice_tests::test_python("SLUICE_TEST_PYTHON", "kafka");
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("python");
    let sluice = Sluice::start_with_config(&dir.path().join("data"), &kafka_section(&topic)).await;
    let mut client = sluice.ingress().await;
    let mut envelope = log_envelope("checkout", "payment accepted order=17");
    envelope.instance_id = "3".to_owned();
    envelope.tags.insert("region".to_owned(), "eu".to_owned());
    send(
        &mut client,
        vec![
            envelope,
            log_envelope("checkout", "payment failed order=18"),
        ],
    )
    .await
    .unwrap();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_bus.py");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(kafka_brokers())
            .arg(&topic)
            .arg("2")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "read_bus.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let first = &records[0];
    assert_eq!(first["message"], "payment accepted order=17");
    assert_eq!(first["source_id"], "checkout");
    assert_eq!(first["instance_id"], "3");
    assert_eq!(first["type"], "OUT");
    assert_eq!(first["tags"]["region"], "eu");
    assert_eq!(first["key"], "checkout", "records are keyed by source_id");
    assert!(
        first["timestamp"].as_i64().unwrap() > 1_600_000_000_000_000_000,
        "timestamp in ns: {first}"
    );
    assert!(!first["agent_id"].as_str().unwrap().is_empty());
    assert!(first["sequence"].as_u64().unwrap() >= 1);
    assert_eq!(records[1]["message"], "payment failed order=18");
    assert_eq!(records[1]["sequence"], first["sequence"], "one batch");
}
