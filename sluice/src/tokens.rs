//! `sluice tokens create|list|revoke`: the API tokens of a data directory; and the admin
//! token `sluice up` makes when tokens are required and none can administer yet.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sluice_auth::{DEFAULT_TENANT, NewToken, Right, TokenFile};

use crate::OutputFormat;
use crate::output::{outln, print_table};

/// Where the admin token `sluice up` makes is kept for the client commands.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("auth").join("admin.token")
}

/// When tokens are required and none has the admin right, makes one and writes its text to
/// `<data_dir>/auth/admin.token` (readable by its owner only), where the `sluice` client
/// commands find it.
pub fn ensure_admin_token(tokens_file: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let file = TokenFile::at(tokens_file.to_path_buf());
    let tokens = file.load()?;
    if tokens
        .iter()
        .any(|token| token.rights.contains(&Right::Admin))
    {
        return Ok(());
    }
    let (record, text) = file.create(NewToken {
        name: "admin (made by sluice up)".to_owned(),
        tenant: DEFAULT_TENANT.to_owned(),
        sources: Vec::new(),
        rights: vec![Right::Read, Right::Ingest, Right::Admin],
        expires_unix_s: None,
    })?;
    let path = admin_token_path(data_dir);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    writeln!(out, "{text}")?;
    out.sync_all()?;
    tracing::info!(token_id = %record.id, path = %path.display(), "made an admin token");
    Ok(())
}

/// `sluice tokens`.
#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
    /// Data directory whose `auth/tokens.json` holds the tokens.
    #[arg(long, global = true, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// The token file, if not the data directory's (`query_api.auth.tokens_file`).
    #[arg(long, global = true)]
    tokens_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: OutputFormat,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        /// What it is for (shown in lists and logs).
        #[arg(long)]
        name: String,
        /// The tenant whose records it reaches.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// Narrow it to source ids matching this pattern (`*`, `?`); repeatable.
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Its rights, comma-separated: read, ingest, admin.
        #[arg(long, default_value = "read")]
        rights: String,
        /// It stops working this long from now (`30d`, `12h`); never by default.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token by id: every process refuses it within a second.
    Revoke {
        /// The token's id (the hex after `sluice_`).
        id: String,
    },
}

/// Runs `sluice tokens …`.
pub fn tokens(args: TokensArgs) -> anyhow::Result<()> {
    let file = TokenFile::at(
        args.tokens_file
            .clone()
            .unwrap_or_else(|| TokenFile::in_data_dir(&args.data_dir).path().to_path_buf()),
    );
    match args.command {
        TokensCommand::Create {
            name,
            tenant,
            sources,
            rights,
            expires_in,
        } => {
            let rights = rights
                .split(',')
                .map(Right::parse)
                .collect::<Result<Vec<_>, _>>()?;
            let expires_unix_s = match expires_in {
                Some(text) => {
                    let lasting = sluice_common::config::parse_duration("--expires-in", &text)?;
                    Some(
                        sluice_common::time::now_nanos() / 1_000_000_000 + lasting.as_secs() as i64,
                    )
                }
                None => None,
            };
            let (record, text) = file.create(NewToken {
                name,
                tenant,
                sources,
                rights,
                expires_unix_s,
            })?;
            match args.output {
                OutputFormat::Json => outln!(
                    "{}",
                    serde_json::json!({"id": record.id, "token": text, "tenant": record.tenant,
                        "sources": record.sources, "rights": record.rights})
                ),
                OutputFormat::Table => {
                    outln!("{text}");
                    eprintln!(
                        "token {} made; it is shown only now: keep it (send it as Authorization: Bearer <token>)",
                        record.id
                    );
                }
            }
        }
        TokensCommand::List => {
            let tokens = file.load()?;
            match args.output {
                OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&tokens)?),
                OutputFormat::Table => {
                    let headers: Vec<String> = [
                        "id", "name", "tenant", "sources", "rights", "created", "expires",
                    ]
                    .map(str::to_owned)
                    .to_vec();
                    let time = |seconds: i64| {
                        sluice_common::time::format_rfc3339_nanos(
                            seconds.saturating_mul(1_000_000_000),
                        )
                        .replace(".000000000Z", "Z")
                    };
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|token| {
                            vec![
                                token.id.clone(),
                                token.name.clone(),
                                token.tenant.clone(),
                                if token.sources.is_empty() {
                                    "*".to_owned()
                                } else {
                                    token.sources.join(",")
                                },
                                token
                                    .rights
                                    .iter()
                                    .map(|right| right.name())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                time(token.created_unix_s),
                                token
                                    .expires_unix_s
                                    .map_or_else(|| "never".to_owned(), time),
                            ]
                        })
                        .collect();
                    print_table(&headers, &rows, 80)?;
                }
            }
        }
        TokensCommand::Revoke { id } => {
            if !file.revoke(&id)? {
                anyhow::bail!("no token {id} in {}", file.path().display());
            }
            outln!("token {id} revoked");
        }
    }
    Ok(())
}
