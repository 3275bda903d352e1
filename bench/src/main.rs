//! `sluice-bench`: the Rust half of the benchmark harness (`bench/run` drives it).
//!
//! - `corpus` writes the log lines a run sends (for `zstd -3` and `tantivy-cli`) and the
//!   original Loghub lines they are shaped after.
//! - `load` drives an agent's Loggregator ingress and prints what it measured as JSON.
//! - `overload` offers it a fixed rate whatever it answers, and counts every outcome.
//! - `patterns` runs the pattern miner alone on the labelled Loghub samples: grouping
//!   accuracy per system and lines per second.
//! - `tails` holds many live tails open (their cost on ingest); `catch-up` times one tail
//!   resuming from a cursor far behind.

mod generator;
mod load;
mod loghub;
mod overload;
mod patterns;
mod tails;

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::generator::{Generator, Item, Settings};
use crate::loghub::Model;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "Sluice's benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the generated log lines (and the Loghub originals) to files.
    Corpus(CorpusArgs),
    /// Drive an agent's Loggregator ingress; print a JSON report.
    Load(LoadArgs),
    /// Offer an agent a fixed rate, whatever it answers; print a JSON report.
    Overload(OverloadArgs),
    /// Hold live tails open until stdin closes; print what they received.
    Tails(TailsArgs),
    /// Time one tail resuming from a cursor; print a JSON report.
    CatchUp(CatchUpArgs),
    /// Mine the labelled Loghub samples' patterns; print accuracy and speed as JSON.
    Patterns(PatternsArgs),
}

#[derive(Args)]
struct PatternsArgs {
    /// The directory of `<System>/<System>_2k.log_structured.csv` samples.
    #[arg(long)]
    loghub: PathBuf,
    /// Rounds over every sample for the speed figures.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Also print each system's mined templates (count and template, largest first) to stderr.
    #[arg(long)]
    templates: bool,
}

#[derive(Args)]
struct TailsArgs {
    /// Query API base URL.
    #[arg(long)]
    api: String,
    /// Tails to open.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Tail i selects source_id PREFIX{i}.
    #[arg(long, default_value = "bench-idle-tail-")]
    source_prefix: String,
}

#[derive(Args)]
struct CatchUpArgs {
    /// Query API base URL.
    #[arg(long)]
    api: String,
    /// Sources selected (repeatable).
    #[arg(long)]
    source_id: Vec<String>,
    /// Where to resume.
    #[arg(long)]
    cursor: String,
    /// Envelopes to read.
    #[arg(long)]
    count: u64,
}

/// Which agent to drive, and the client certificate to do it with.
#[derive(Args)]
struct AgentArgs {
    /// Agent ingress address.
    #[arg(long, default_value = "127.0.0.1:3458")]
    agent: String,
    /// Directory with ca.pem, node.pem, node-key.pem.
    #[arg(long)]
    tls_dir: PathBuf,
}

#[derive(Args)]
struct OverloadArgs {
    #[command(flatten)]
    generator: GeneratorArgs,
    #[command(flatten)]
    target: AgentArgs,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Envelopes per second offered.
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests waiting on the agent at once, at most.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// A request's deadline, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Args, Clone)]
struct GeneratorArgs {
    /// The Loghub samples: a directory of `<System>/<System>_2k.log_structured.csv`.
    #[arg(long)]
    loghub: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of slot values swapped for another value of the slot (compressibility knob:
    /// 0.3 lands `zstd -3` within a few percent of the Loghub originals' ratio).
    #[arg(long, default_value_t = 0.3)]
    mutation: f64,
    /// Share of envelopes that are metrics.
    #[arg(long, default_value_t = 0.05)]
    metrics_share: f64,
    #[arg(long, default_value_t = 25)]
    apps_per_system: u64,
    #[arg(long, default_value_t = 4)]
    instances: u64,
}

impl GeneratorArgs {
    fn generator(&self) -> anyhow::Result<Generator> {
        let model = Model::load(&self.loghub)?;
        Ok(Generator::new(
            model,
            Settings {
                seed: self.seed,
                mutation: self.mutation,
                metrics_share: self.metrics_share,
                apps_per_system: self.apps_per_system.max(1),
                instances: self.instances.max(1),
            },
        ))
    }
}

#[derive(Args)]
struct CorpusArgs {
    #[command(flatten)]
    generator: GeneratorArgs,
    /// Items (envelopes) to generate; metric items are skipped, so fewer lines come out.
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// One log line per line.
    #[arg(long)]
    lines_out: PathBuf,
    /// The same lines as NDJSON documents (timestamp, source_id, instance_id, message).
    #[arg(long)]
    docs_out: Option<PathBuf>,
    /// The Loghub sample lines, concatenated.
    #[arg(long)]
    originals_out: Option<PathBuf>,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    generator: GeneratorArgs,
    #[command(flatten)]
    target: AgentArgs,
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[arg(long, default_value_t = 8)]
    streams: u64,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Envelopes per second over all streams; 0 = as fast as the agent takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Spread timestamps over this many seconds ending now (0 = stamp when sent).
    #[arg(long, default_value_t = 0)]
    time_span: u64,
    /// Query API base URL; enables freshness probes.
    #[arg(long)]
    api: Option<String>,
    /// Milliseconds between freshness probes.
    #[arg(long, default_value_t = 200)]
    probe_every_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Corpus(args) => corpus(args),
        Command::Load(args) => {
            let generator = Arc::new(args.generator.generator()?);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(load::run(
                generator,
                load::LoadSettings {
                    agent: args.target.agent,
                    tls_dir: args.target.tls_dir,
                    first: args.first,
                    count: args.count,
                    streams: args.streams.max(1),
                    batch: args.batch.max(1),
                    rate: args.rate,
                    time_span_s: args.time_span,
                    api: args.api,
                    probe_every: Duration::from_millis(args.probe_every_ms),
                },
            ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Patterns(args) => patterns::run(&args.loghub, args.rounds, args.templates),
        Command::Tails(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(tails::hold(&args.api, args.count, &args.source_prefix)),
        Command::CatchUp(args) => {
            let params: Vec<(String, String)> = args
                .source_id
                .iter()
                .map(|source| ("source_id".to_owned(), source.clone()))
                .collect();
            let report = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(tails::catch_up(
                    &args.api,
                    &params,
                    &args.cursor,
                    args.count,
                ))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Overload(args) => {
            let generator = Arc::new(args.generator.generator()?);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(async {
                let mut clients = Vec::new();
                for _ in 0..args.connections.max(1) {
                    clients
                        .push(load::connect_agent(&args.target.agent, &args.target.tls_dir).await?);
                }
                anyhow::Ok(
                    overload::run(
                        generator,
                        clients,
                        overload::OverloadSettings {
                            first: args.first,
                            rate: args.rate,
                            duration: Duration::from_secs(args.seconds),
                            batch: args.batch.max(1),
                            max_in_flight: args.max_in_flight.max(1),
                            timeout: Duration::from_secs(args.timeout),
                        },
                    )
                    .await,
                )
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

fn corpus(args: CorpusArgs) -> anyhow::Result<()> {
    let generator = args.generator.generator()?;
    let create = |path: &PathBuf| -> anyhow::Result<BufWriter<std::fs::File>> {
        Ok(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)
                .with_context(|| format!("failed to create {}", path.display()))?,
        ))
    };
    let mut lines_out = create(&args.lines_out)?;
    let mut docs_out = args.docs_out.as_ref().map(create).transpose()?;
    let (mut lines, mut bytes) = (0u64, 0u64);
    for index in args.first..args.first + args.count {
        let Item::Log {
            source_id,
            instance_id,
            line,
            ..
        } = generator.item(index)
        else {
            continue;
        };
        lines_out.write_all(line.as_bytes())?;
        lines_out.write_all(b"\n")?;
        if let Some(docs) = &mut docs_out {
            serde_json::to_writer(
                &mut *docs,
                &serde_json::json!({
                    "timestamp": 1_700_000_000_000_000_000i64 + index as i64 * 1_000_000,
                    "source_id": source_id,
                    "instance_id": instance_id,
                    "message": line,
                }),
            )?;
            docs.write_all(b"\n")?;
        }
        lines += 1;
        bytes += line.len() as u64;
    }
    lines_out.flush()?;
    if let Some(docs) = &mut docs_out {
        docs.flush()?;
    }
    if let Some(path) = &args.originals_out {
        let mut out = create(path)?;
        for line in Model::raw_lines(&args.generator.loghub)? {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    println!(
        "{}",
        serde_json::json!({"lines": lines, "bytes": bytes, "items": args.count})
    );
    Ok(())
}
