//! `sluice certs issue|rotate|rotate-ca`: the local CA of a data directory (`<data_dir>/tls`,
//! made by `sluice up`). Every Sluice process on the directory re-reads the files within a
//! second of a change (or on `SIGHUP`), so nothing is restarted.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use sluice_common::tls::authority::{CaStage, LocalCa};

use crate::output::outln;

/// `sluice certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
    /// Data directory whose `tls/` holds the local CA.
    #[arg(long, global = true, default_value = "./sluice-data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Issue a certificate from the local CA, for another host or a client: writes
    /// `<name>.pem`, `<name>-key.pem` and the CA bundle `ca.pem` into `--out`.
    Issue {
        /// The certificate's common name, and its files' names.
        #[arg(long)]
        name: String,
        /// A DNS name it is valid for; repeatable.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// An IP address it is valid for; repeatable.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// The directory to write into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace this data directory's node certificate and key with new ones from the CA.
    Rotate,
    /// Rotate the CA in three steps, each once every process has the previous one: add (a new
    /// CA trusted beside the old), switch (the new CA signs; the node certificate re-issued),
    /// drop (only the new CA trusted).
    RotateCa {
        /// The step.
        #[arg(value_enum)]
        step: CaStep,
    },
    /// Where a CA rotation stands.
    Status,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CaStep {
    Add,
    Switch,
    Drop,
}

fn stage_name(stage: CaStage) -> &'static str {
    match stage {
        CaStage::Steady => "steady: one CA, trusted and signing",
        CaStage::Added => {
            "added: a new CA is trusted beside the old one, which still signs (next: switch)"
        }
        CaStage::Switched => {
            "switched: the new CA signs, the old one is still trusted (next: drop)"
        }
    }
}

/// Runs `sluice certs …`.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.join("tls");
    let ca = LocalCa::at(&dir);
    match args.command {
        CertsCommand::Issue {
            name,
            dns,
            ips,
            out,
        } => {
            if dns.is_empty() && ips.is_empty() {
                anyhow::bail!("give at least one --dns name or --ip address");
            }
            let (certificate, key) = ca.issue(&name, &dns, &ips)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("failed to create {}", out.display()))?;
            for (file, contents) in [
                (format!("{name}-key.pem"), key),
                (format!("{name}.pem"), certificate),
                (
                    "ca.pem".to_owned(),
                    std::fs::read_to_string(dir.join("ca.pem"))?,
                ),
            ] {
                write_private(&out.join(&file), &contents)?;
            }
            outln!(
                "wrote {name}.pem, {name}-key.pem and ca.pem to {}",
                out.display()
            );
        }
        CertsCommand::Rotate => {
            ca.rotate_node()?;
            outln!(
                "rotated {}: processes on this data directory present it within a second",
                dir.join("node.pem").display()
            );
        }
        CertsCommand::RotateCa { step } => {
            match step {
                CaStep::Add => ca.add_ca()?,
                CaStep::Switch => ca.switch_ca()?,
                CaStep::Drop => ca.drop_ca()?,
            }
            outln!("{}", stage_name(ca.stage()?));
        }
        CertsCommand::Status => outln!("{}", stage_name(ca.stage()?)),
    }
    Ok(())
}

fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
