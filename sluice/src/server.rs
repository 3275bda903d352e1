//! Starting the server roles: alone, or all together in `sluice up`.
//!
//! Shutdown is staged so that nothing accepted is dropped on the way out: on SIGINT or SIGTERM
//! the agent stops accepting and drains its batches into the doppler first; then the doppler
//! and query API stop; then the indexer and retention commit what they hold.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, RawConfig};
use anyhow::{Context, bail};
use sluice_bus::config::{BusConfig, WalDurability};
use sluice_bus::kafka::KafkaBus;
use sluice_bus::metrics::BusMetrics;
use sluice_bus::wal::{Durability, WalBus, WalSettings};
use sluice_bus::{Bus, Sharing};
use sluice_common::SluiceError;
use sluice_common::shutdown::{Shutdown, ShutdownTrigger};
use sluice_common::telemetry::Telemetry;
use sluice_common::tls::{TlsMaterial, ensure_local_ca};
use sluice_indexer::config::IndexerConfig;
use sluice_query_api::TailBus;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::ServerArgs;

/// A role that can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Doppler,
    Indexer,
    Retention,
    QueryApi,
}

fn load_config(args: &ServerArgs) -> anyhow::Result<Config> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    if let Some(data_dir) = &args.data_dir {
        raw.data_dir = data_dir.clone();
    }
    if let Some(listen) = args.agent_listen {
        raw.agent.listen = listen;
    }
    if let Some(listen) = args.doppler_listen {
        raw.doppler.listen = listen;
        raw.agent.dopplers = vec![listen.to_string()];
    }
    if let Some(listen) = args.http_listen {
        raw.query_api.listen = listen;
    }
    if let Some(listen) = args.elasticsearch_listen {
        raw.agent.elasticsearch.listen = listen;
    }
    if let Some(listen) = args.syslog_listen {
        raw.agent.syslog.listen = listen;
    }
    if let Some(listen) = args.otlp_grpc_listen {
        raw.agent.otlp.grpc_listen = listen;
    }
    if let Some(listen) = args.otlp_http_listen {
        raw.agent.otlp.http_listen = listen;
    }
    if args.no_sources {
        raw.agent.elasticsearch.enabled = false;
        raw.agent.syslog.enabled = false;
        raw.agent.otlp.enabled = false;
        raw.agent.prometheus.targets.clear();
        raw.agent.files.clear();
        raw.agent.host_metrics.enabled = false;
    }
    if args.no_host_metrics {
        raw.agent.host_metrics.enabled = false;
    }
    if let Some(interval) = &args.retention_flush_interval {
        raw.retention.flush_interval = interval.clone();
    }
    Ok(raw.validate()?)
}

/// Loads the certificates (creating the local CA on first start) and re-reads them whenever
/// their files change or the process gets `SIGHUP`.
fn load_tls(config: &Config, telemetry: &Telemetry) -> anyhow::Result<TlsMaterial> {
    let paths = match &config.tls {
        Some(paths) => paths.clone(),
        None => ensure_local_ca(&config.data_dir.join("tls"))?,
    };
    let tls = TlsMaterial::load(&paths, &config.tls_server_name)?;
    tls.spawn_reloader(telemetry);
    #[cfg(unix)]
    {
        static HANGUP: std::sync::Once = std::sync::Once::new();
        HANGUP.call_once(|| {
            if let Ok(mut hangup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        info!("SIGHUP: re-reading the tls certificates");
                        sluice_common::tls::reload_now();
                    }
                });
            }
        });
    }
    Ok(tls)
}

async fn open_bus(config: &Config, telemetry: &Telemetry) -> anyhow::Result<Arc<dyn Bus>> {
    match &config.bus {
        BusConfig::Wal {
            dir,
            max_record_bytes,
            max_disk_bytes,
            segment_bytes,
            durability,
            read_cache_bytes,
        } => {
            let settings = WalSettings {
                max_record_bytes: *max_record_bytes,
                max_disk_bytes: *max_disk_bytes,
                segment_bytes: *segment_bytes,
                durability: match durability {
                    WalDurability::Fsync => Durability::Fsync,
                    WalDurability::Flush(interval) => Durability::Flush {
                        interval: *interval,
                    },
                },
                read_cache_bytes: *read_cache_bytes,
            };
            let bus = WalBus::open(dir, settings, BusMetrics::register(telemetry))
                .await
                .with_context(|| format!("failed to open the WAL bus at {}", dir.display()))?;
            Ok(Arc::new(bus))
        }
        BusConfig::Kafka {
            settings,
            max_record_bytes,
        } => {
            let bus = KafkaBus::open(settings, *max_record_bytes, BusMetrics::register(telemetry))
                .await
                .with_context(|| format!("failed to open the Kafka bus at {}", settings.brokers))?;
            Ok(Arc::new(bus))
        }
    }
}

/// A running role: its name and how it ended.
type RoleHandle = JoinHandle<(&'static str, Result<(), SluiceError>)>;

fn spawn_role(
    name: &'static str,
    task: impl Future<Output = Result<(), SluiceError>> + Send + 'static,
) -> RoleHandle {
    tokio::spawn(async move { (name, task.await) })
}

fn spawn_query_api(
    config: &Config,
    tail_bus: TailBus,
    tls: TlsMaterial,
    telemetry: Telemetry,
    shutdown: Shutdown,
) -> anyhow::Result<RoleHandle> {
    if let Some(tokens_file) = &config.query_api.tokens_file {
        crate::tokens::ensure_admin_token(tokens_file, &config.data_dir)?;
    }
    Ok(spawn_role(
        "query-api",
        sluice_query_api::run(
            config.query_api.clone(),
            config.indexer.dir.clone(),
            config.retention.archive.clone(),
            tail_bus,
            tls,
            telemetry,
            shutdown,
        ),
    ))
}

/// Completes on SIGINT or SIGTERM.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Waits for one stage's tasks, with a deadline; returns the first error.
async fn join_stage(handles: Vec<RoleHandle>, deadline: Duration) -> Option<String> {
    let mut first_error = None;
    for handle in handles {
        match tokio::time::timeout(deadline, handle).await {
            Ok(Ok((_, Ok(())))) => {}
            Ok(Ok((name, Err(failure)))) => {
                error!(role = name, error = %failure, "role failed");
                first_error.get_or_insert(format!("{name}: {failure}"));
            }
            Ok(Err(join_error)) => {
                first_error.get_or_insert(format!("a role panicked: {join_error}"));
            }
            Err(_) => {
                first_error.get_or_insert("a role did not stop in time".to_owned());
            }
        }
    }
    first_error
}

/// The indexer, and its search service when `indexer.listen` is set.
async fn run_indexer(
    config: IndexerConfig,
    bus: Arc<dyn Bus>,
    sharing: Sharing,
    telemetry: Telemetry,
    shutdown: Shutdown,
    tls: TlsMaterial,
) -> Result<(), SluiceError> {
    let Some(listen) = config.listen else {
        return sluice_indexer::run(config, bus, sharing, telemetry, shutdown).await;
    };
    let searcher = Arc::new(sluice_indexer::Searcher::new(&config.dir));
    let service = sluice_indexer::service::serve(listen, searcher, tls, shutdown.clone());
    tokio::try_join!(
        sluice_indexer::run(config, bus, sharing, telemetry, shutdown),
        service
    )
    .map(|_| ())
}

/// `sluice up`: every role in this process.
pub async fn up(args: ServerArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "failed to create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let telemetry = Telemetry::new();
    let tls = load_tls(&config, &telemetry)?;
    let bus = open_bus(&config, &telemetry).await?;

    let (ingress_trigger, ingress_shutdown) = ShutdownTrigger::new();
    let (serving_trigger, serving_shutdown) = ShutdownTrigger::new();
    let (consumers_trigger, consumers_shutdown) = ShutdownTrigger::new();

    let consumers = vec![
        spawn_role(
            "indexer",
            run_indexer(
                config.indexer.clone(),
                Arc::clone(&bus),
                Sharing::Sole,
                telemetry.clone(),
                consumers_shutdown.clone(),
                tls.clone(),
            ),
        ),
        spawn_role(
            "retention",
            sluice_retention::run(
                config.retention.clone(),
                Arc::clone(&bus),
                telemetry.clone(),
                consumers_shutdown,
            ),
        ),
    ];
    let mut serving = vec![
        spawn_role(
            "doppler",
            sluice_doppler::run(
                config.doppler.clone(),
                tls.clone(),
                Arc::clone(&bus),
                telemetry.clone(),
                serving_shutdown.clone(),
            ),
        ),
        spawn_query_api(
            &config,
            TailBus::Bus(Arc::clone(&bus)),
            tls.clone(),
            telemetry.clone(),
            serving_shutdown.clone(),
        )?,
    ];
    if let Some(listen) = config.telemetry_listen {
        serving.push(spawn_role(
            "metrics",
            sluice_query_api::serve_telemetry(listen, telemetry.clone(), serving_shutdown),
        ));
    }
    let ingress = vec![spawn_role(
        "agent",
        sluice_agent::run(
            config.agent.clone(),
            tls,
            telemetry.clone(),
            ingress_shutdown,
        ),
    )];
    info!(
        agent = %config.agent.listen,
        doppler = %config.doppler.listen,
        query_api = %format!("http://{}", config.query_api.listen),
        data_dir = %config.data_dir.display(),
        "sluice is up"
    );
    eprintln!(
        "sluice is up: agent ingress {} (gRPC, mTLS), doppler {} (gRPC, mTLS), query API http://{}, data in {}",
        config.agent.listen,
        config.doppler.listen,
        config.query_api.listen,
        config.data_dir.display()
    );

    // Run until a signal, or until any role stops on its own (which is a failure).
    let all: Vec<&JoinHandle<_>> = consumers
        .iter()
        .chain(serving.iter())
        .chain(ingress.iter())
        .collect();
    let early_exit = async {
        loop {
            if all.iter().any(|handle| handle.is_finished()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        () = termination() => info!("stopping"),
        () = early_exit => error!("a role stopped unexpectedly; stopping the others"),
    }
    ingress_trigger.fire();
    let mut failure = join_stage(ingress, Duration::from_secs(60)).await;
    serving_trigger.fire();
    failure = failure.or(join_stage(serving, Duration::from_secs(30)).await);
    consumers_trigger.fire();
    failure = failure.or(join_stage(consumers, Duration::from_secs(60)).await);
    match failure {
        Some(message) => bail!("{message}"),
        None => Ok(()),
    }
}

/// One role alone.
pub async fn role(role: Role, args: ServerArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let telemetry = Telemetry::new();
    let telemetry_for_endpoint = telemetry.clone();
    let (trigger, shutdown) = ShutdownTrigger::new();
    let metrics_shutdown = shutdown.clone();
    let handle = match role {
        Role::Agent => {
            let tls = load_tls(&config, &telemetry)?;
            spawn_role(
                "agent",
                sluice_agent::run(config.agent.clone(), tls, telemetry, shutdown),
            )
        }
        Role::Doppler => {
            let tls = load_tls(&config, &telemetry)?;
            let bus = open_bus(&config, &telemetry).await?;
            spawn_role(
                "doppler",
                sluice_doppler::run(config.doppler.clone(), tls, bus, telemetry, shutdown),
            )
        }
        Role::Indexer | Role::Retention => {
            if let BusConfig::Wal { .. } = &config.bus
                && !args.replay_wal
            {
                bail!(
                    "the embedded WAL bus lives inside one process: run the indexer and retention with `sluice up`, \
                     or set bus.kind = \"kafka\" in the configuration (or pass --replay-wal to consume \
                     the WAL a stopped process left behind)"
                );
            }
            let bus = open_bus(&config, &telemetry).await?;
            if role == Role::Indexer {
                let tls = load_tls(&config, &telemetry)?;
                spawn_role(
                    "indexer",
                    run_indexer(
                        config.indexer.clone(),
                        bus,
                        Sharing::Shared,
                        telemetry,
                        shutdown,
                        tls,
                    ),
                )
            } else {
                spawn_role(
                    "retention",
                    sluice_retention::run(config.retention.clone(), bus, telemetry, shutdown),
                )
            }
        }
        Role::QueryApi => {
            // Tails read the bus; the embedded WAL is readable only inside its own process.
            let tail_bus = match &config.bus {
                BusConfig::Wal { .. } => TailBus::Unreachable(
                    "live tails read the bus, and the embedded WAL bus lives inside the `sluice up` process: \
                     tail through that process's query API, or set bus.kind = \"kafka\""
                        .to_owned(),
                ),
                BusConfig::Kafka { .. } => TailBus::Bus(open_bus(&config, &telemetry).await?),
            };
            spawn_query_api(
                &config,
                tail_bus,
                load_tls(&config, &telemetry)?,
                telemetry,
                shutdown,
            )?
        }
    };
    let mut handles = vec![handle];
    if let Some(listen) = config.telemetry_listen {
        handles.push(spawn_role(
            "metrics",
            sluice_query_api::serve_telemetry(listen, telemetry_for_endpoint, metrics_shutdown),
        ));
    }
    tokio::select! {
        () = termination() => info!("stopping"),
        _ = async { while !handles.iter().any(JoinHandle::is_finished) { tokio::time::sleep(Duration::from_millis(200)).await; } } => {}
    }
    trigger.fire();
    match join_stage(handles, Duration::from_secs(60)).await {
        Some(message) => bail!("{message}"),
        None => Ok(()),
    }
}
