//! `sluice archive stats|ls`: what the archive's catalog holds, through the query API.

use crate::output::outln;
use serde_json::Value;

use crate::client::call;
use crate::output::{cell, print_table};
use crate::{ArchiveArgs, ArchiveCommand, ClientArgs, OutputFormat};

/// Bytes as a person reads them (`1.5 MiB`).
fn human_bytes(value: Option<&Value>) -> String {
    let Some(bytes) = value.and_then(Value::as_u64) else {
        return cell(value);
    };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut amount = bytes as f64;
    let mut unit = 0;
    while amount >= 1024.0 && unit + 1 < units.len() {
        amount /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{amount:.1} {}", units[unit])
    }
}

/// A nanosecond time as RFC 3339, to the second.
fn time(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_i64)
        .map(|nanos| {
            let text = sluice_common::time::format_rfc3339_nanos(nanos);
            text.get(..19)
                .map_or(text.clone(), |short| format!("{short}Z"))
        })
        .unwrap_or_default()
}

fn rows_of<'a>(body: &'a Value, key: &str) -> &'a [Value] {
    body.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Runs `sluice archive …`.
pub async fn archive(args: ArchiveArgs) -> anyhow::Result<()> {
    match args.command {
        ArchiveCommand::Stats(client) => {
            let url = format!("{}/api/v1/archive/stats", client.api.trim_end_matches('/'));
            let body = call(client.http()?.get(&url), &url).await?;
            if client.output == OutputFormat::Json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let headers: Vec<String> = [
                "table",
                "partitions",
                "files",
                "rows",
                "bytes",
                "from",
                "to",
            ]
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
            let rows: Vec<Vec<String>> = rows_of(&body, "tables")
                .iter()
                .map(|table| {
                    vec![
                        cell(table.get("table")),
                        cell(table.get("partitions")),
                        cell(table.get("files")),
                        cell(table.get("rows")),
                        human_bytes(table.get("bytes")),
                        time(table.get("min_time")),
                        time(table.get("max_time")),
                    ]
                })
                .collect();
            print_table(&headers, &rows, 120)?;
            outln!(
                "catalog version {}, {} files ({}) waiting for the collector",
                cell(body.get("version")),
                cell(body.get("garbage_files")),
                human_bytes(body.get("garbage_bytes"))
            );
        }
        ArchiveCommand::Compact { now, client } => compact(now, &client).await?,
        ArchiveCommand::Expire { dry_run, client } => expire(dry_run, &client).await?,
        ArchiveCommand::Ls { table, client } => {
            let mut url = format!(
                "{}/api/v1/archive/partitions",
                client.api.trim_end_matches('/')
            );
            let request = client.http()?.get(&url);
            let request = match &table {
                Some(table) => request.query(&[("table", table)]),
                None => request,
            };
            if let Some(table) = &table {
                url = format!("{url}?table={table}");
            }
            let body = call(request, &url).await?;
            if client.output == OutputFormat::Json {
                outln!("{}", serde_json::to_string_pretty(&body)?);
                return Ok(());
            }
            let headers: Vec<String> = ["table", "partition", "files", "rows", "bytes"]
                .iter()
                .map(|name| (*name).to_owned())
                .collect();
            let rows: Vec<Vec<String>> = rows_of(&body, "partitions")
                .iter()
                .map(|partition| {
                    vec![
                        cell(partition.get("table")),
                        cell(partition.get("partition")),
                        cell(partition.get("files")),
                        cell(partition.get("rows")),
                        human_bytes(partition.get("bytes")),
                    ]
                })
                .collect();
            print_table(&headers, &rows, 120)?;
            outln!("{} partitions", rows.len());
        }
    }
    Ok(())
}

/// One line of progress: a bar, groups, files and bytes.
fn progress_line(progress: &Value) -> String {
    let number = |key: &str| progress.get(key).and_then(Value::as_u64).unwrap_or(0);
    let (done, total) = (number("groups_done"), number("groups_total"));
    let width: u64 = 30;
    // Nothing to do is all done.
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!(
        "[{}{}] {done}/{total} groups, {} files into {}, {} into {}",
        "#".repeat(filled as usize),
        " ".repeat((width - filled) as usize),
        number("files_in"),
        number("files_out"),
        human_bytes(progress.get("bytes_in")),
        human_bytes(progress.get("bytes_out")),
    )
}

/// `sluice archive compact [--now]`.
async fn compact(now: bool, client: &ClientArgs) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/v1/archive/compact",
        client.api.trim_end_matches('/')
    );
    let http = client.http()?;
    if !now {
        let body = call(http.get(&url), &url).await?;
        match body.get("progress").filter(|progress| !progress.is_null()) {
            Some(progress) if client.output == OutputFormat::Json => {
                outln!("{}", serde_json::to_string_pretty(progress)?);
            }
            Some(progress) => outln!(
                "latest round {}: {}",
                cell(progress.get("state")),
                progress_line(progress)
            ),
            None => outln!("no compaction round has run yet"),
        }
        return Ok(());
    }
    let asked = call(http.post(&url), &url).await?;
    let id = asked
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let body = call(http.get(&url), &url).await?;
        let progress = body.get("progress").cloned().unwrap_or(Value::Null);
        let ours = progress.get("request").and_then(Value::as_str) == Some(id.as_str());
        if ours {
            let line = progress_line(&progress);
            if line != last {
                if interactive {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
                last = line;
            }
            if progress.get("state").and_then(Value::as_str) == Some("done") {
                if interactive {
                    eprintln!();
                }
                if client.output == OutputFormat::Json {
                    outln!("{}", serde_json::to_string_pretty(&progress)?);
                } else {
                    outln!(
                        "compacted in {:.1} s: {}",
                        started.elapsed().as_secs_f64(),
                        progress_line(&progress)
                    );
                }
                return Ok(());
            }
        } else if started.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!(
                "no retention process took the request within 60 s (is one running on this archive?)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `sluice archive expire [--dry-run]`.
async fn expire(dry_run: bool, client: &ClientArgs) -> anyhow::Result<()> {
    let base = format!("{}/api/v1/archive/expire", client.api.trim_end_matches('/'));
    let http = client.http()?;
    let asked = call(http.post(&base).query(&[("dry_run", dry_run)]), &base).await?;
    let id = asked
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let started = std::time::Instant::now();
    let report = loop {
        let body = call(http.get(&base), &base).await?;
        let report = body.get("report").cloned().unwrap_or(Value::Null);
        if report.get("request").and_then(Value::as_str) == Some(id.as_str())
            && report.get("state").and_then(Value::as_str) == Some("done")
        {
            break report;
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            anyhow::bail!(
                "no retention process answered the request within 10 minutes (is one running on this archive?)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    if client.output == OutputFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let number = |key: &str| report.get(key).and_then(Value::as_u64).unwrap_or(0);
    let paths = |key: &str| -> Vec<String> {
        report
            .get(key)
            .and_then(Value::as_array)
            .map(|paths| {
                paths
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for path in paths("removed") {
        outln!(
            "{} {path}",
            if dry_run {
                "would remove "
            } else {
                "removed      "
            }
        );
    }
    for path in paths("rewritten") {
        outln!(
            "{} {path}",
            if dry_run {
                "would rewrite"
            } else {
                "rewrote      "
            }
        );
    }
    outln!(
        "{}{} files whole, {} rewritten without their expired rows: {} rows, {}",
        if dry_run {
            "dry run, nothing changed; would expire "
        } else {
            "expired "
        },
        number("files_removed"),
        number("files_rewritten"),
        number("rows_expired"),
        human_bytes(report.get("bytes_released")),
    );
    Ok(())
}
