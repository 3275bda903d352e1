//! Sluice on a real Kafka-protocol broker (tansu, started by `scripts/services`): `sluice up`
//! on the Kafka bus counts exactly across a `kill -9`, and every role started as its own
//! process from one configuration file gives the same answers.
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
         [doppler]\nlisten = \"127.0.0.1:{doppler}\"\n\n[retention]\nflush_interval = \"1s\"\n\n\
         [query_api]\nlisten = \"127.0.0.1:{http}\"\ndoppler = \"127.0.0.1:{doppler}\"\n",
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
