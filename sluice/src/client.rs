//! The client commands `emit`, `search`, `sql` and `audit` (`tail` is in `tail.rs`).

use crate::output::outln;
use std::io::BufRead;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use sluice_common::tls::{TlsMaterial, TlsPaths};
use sluice_proto::v2::ingress_client::IngressClient;
use sluice_proto::v2::{Envelope, EnvelopeBatch, Log, envelope};
use tonic::transport::Endpoint;

use crate::output::{cell, print_table};
use crate::{AuditArgs, EmitArgs, OutputFormat, SearchArgs, SqlArgs, SqlOutput};

/// `sluice emit`: sends lines through the agent's Loggregator ingress.
pub async fn emit(args: EmitArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let spread = args
        .spread
        .as_deref()
        .map(|text| sluice_common::config::parse_duration("--spread", text))
        .transpose()?;
    if spread.is_some() && args.count.is_none() {
        bail!("--spread needs --count (lines read from stdin are stamped when sent)");
    }
    let tls_dir = args.data_dir.join("tls");
    let paths = TlsPaths {
        ca_cert: tls_dir.join("ca.pem"),
        cert: tls_dir.join("node.pem"),
        key: tls_dir.join("node-key.pem"),
    };
    let tls = TlsMaterial::load(&paths, "localhost").with_context(|| {
        format!(
            "no client certificate in {} (start `sluice up` there first, or pass --data-dir)",
            tls_dir.display()
        )
    })?;
    let channel = Endpoint::from_shared(format!("https://{}", args.agent))
        .context("invalid --agent address")?
        .tls_config(tls.client_config())?
        .connect()
        .await
        .with_context(|| format!("failed to connect to the agent at {}", args.agent))?;
    let mut client = IngressClient::new(channel);

    let started = sluice_common::time::now_nanos();
    let span = spread.map_or(0, |spread| {
        i64::try_from(spread.as_nanos()).unwrap_or(i64::MAX)
    });
    let total = args.count.unwrap_or(1).max(1);
    let stamp = |index: u64| {
        if span == 0 {
            return sluice_common::time::now_nanos();
        }
        // Line `index` of `total`, evenly from `span` ago up to now.
        let step = span as f64 / total as f64;
        started - span + (step * index as f64) as i64
    };
    let make = |line: String, timestamp: i64| Envelope {
        timestamp,
        source_id: args.source_id.clone(),
        instance_id: args.instance_id.clone(),
        message: Some(envelope::Message::Log(Log {
            payload: line.into_bytes(),
            r#type: 0,
        })),
        ..Default::default()
    };
    let mut sent: u64 = 0;
    let mut pending: Vec<Envelope> = Vec::with_capacity(args.batch);
    let mut flush = async |pending: &mut Vec<Envelope>, sent: &mut u64| -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let count = pending.len() as u64;
        client
            .send(EnvelopeBatch {
                batch: std::mem::take(pending),
            })
            .await
            .map_err(|status| {
                anyhow!(
                    "the agent refused the batch: {:?}: {}",
                    status.code(),
                    status.message()
                )
            })?;
        *sent += count;
        Ok(())
    };
    match args.count {
        Some(count) => {
            for index in 1..=count {
                pending.push(make(
                    format!(
                        "sluice emit line {index} of {count} from {}",
                        args.source_id
                    ),
                    stamp(index),
                ));
                if pending.len() >= args.batch {
                    flush(&mut pending, &mut sent).await?;
                }
            }
        }
        None => {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let line = line.context("failed to read stdin")?;
                pending.push(make(line, sluice_common::time::now_nanos()));
                if pending.len() >= args.batch {
                    flush(&mut pending, &mut sent).await?;
                }
            }
        }
    }
    flush(&mut pending, &mut sent).await?;
    match args.output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::json!({"sent": sent, "source_id": args.source_id})
        ),
        OutputFormat::Table => outln!("sent {sent} envelopes from source_id {}", args.source_id),
    }
    Ok(())
}

/// Sends `request` to the query API at `url` and returns its JSON answer, or its error.
pub(crate) async fn call(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("failed to reach the query API at {url}"))?;
    answer(response).await
}

pub(crate) async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("the query API answered with something that is not JSON")?;
    if !status.is_success() {
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        bail!("{status}: {message}");
    }
    Ok(body)
}

/// `sluice search`.
pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let mut params = vec![
        ("query", args.query.clone()),
        ("limit", args.limit.to_string()),
    ];
    if let Some(start) = &args.start {
        params.push(("start", start.clone()));
    }
    if let Some(end) = &args.end {
        params.push(("end", end.clone()));
    }
    let url = format!("{}/api/v1/search", args.client.api.trim_end_matches('/'));
    let body = call(args.client.http()?.get(&url).query(&params), &url).await?;
    match args.client.output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&body)?),
        OutputFormat::Table => {
            let hits = body
                .get("hits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let headers: Vec<String> = ["time", "source_id", "instance_id", "type", "message"]
                .map(str::to_owned)
                .to_vec();
            let rows: Vec<Vec<String>> = hits
                .iter()
                .map(|hit| {
                    ["time", "source_id", "instance_id", "log_type", "message"]
                        .iter()
                        .map(|key| cell(hit.get(*key)))
                        .collect()
                })
                .collect();
            print_table(&headers, &rows, 160)?;
            outln!(
                "{} of {} matching lines ({} ms)",
                hits.len(),
                cell(body.get("total")),
                cell(body.get("took_ms"))
            );
            warn_unavailable(&body);
        }
    }
    Ok(())
}

/// Warns on stderr of each indexer that did not answer a fanned-out request.
pub(crate) fn warn_unavailable(body: &Value) {
    let unavailable = body
        .pointer("/indexers/unavailable")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for failure in &unavailable {
        eprintln!(
            "warning: indexer {} did not answer ({}); these results may miss lines",
            cell(failure.get("indexer")),
            cell(failure.get("error"))
        );
    }
}

/// `sluice sql`.
pub async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/sql", args.api.trim_end_matches('/'));
    let streamed = match args.output {
        SqlOutput::Csv => Some("csv"),
        SqlOutput::Ndjson => Some("ndjson"),
        SqlOutput::Table | SqlOutput::Json => None,
    };
    if let Some(format) = streamed {
        // Written out as it arrives: a large answer never sits in memory here.
        let response = args
            .credentials
            .http()?
            .post(&url)
            .query(&[("format", format)])
            .json(&serde_json::json!({"query": args.query}))
            .send()
            .await
            .with_context(|| format!("failed to reach {url}"))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|body| body.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            anyhow::bail!("{url} answered {status}: {message}");
        }
        let mut stream = response.bytes_stream();
        let mut stdout = std::io::stdout().lock();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            let chunk = chunk.with_context(|| format!("the answer from {url} broke off"))?;
            std::io::Write::write_all(&mut stdout, &chunk)?;
        }
        return Ok(());
    }
    let request = args
        .credentials
        .http()?
        .post(&url)
        .json(&serde_json::json!({"query": args.query}));
    let body = call(request, &url).await?;
    if let Some(error) = body.get("error").and_then(Value::as_str) {
        anyhow::bail!("the query failed after some rows were sent: {error}");
    }
    match args.output {
        SqlOutput::Json | SqlOutput::Csv | SqlOutput::Ndjson => {
            outln!("{}", serde_json::to_string_pretty(&body)?);
        }
        SqlOutput::Table => {
            let headers: Vec<String> = body
                .get("columns")
                .and_then(Value::as_array)
                .map(|columns| {
                    columns
                        .iter()
                        .map(|column| cell(column.get("name")))
                        .collect()
                })
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = body
                .get("rows")
                .and_then(Value::as_array)
                .map(|rows| {
                    rows.iter()
                        .map(|row| headers.iter().map(|name| cell(row.get(name))).collect())
                        .collect()
                })
                .unwrap_or_default();
            print_table(&headers, &rows, 120)?;
            let truncated = body
                .get("truncated")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            outln!(
                "{} rows{} ({} ms)",
                rows.len(),
                if truncated { ", truncated" } else { "" },
                cell(body.get("took_ms"))
            );
        }
    }
    Ok(())
}

/// `sluice audit`: per agent, batches found and missing; per source and agent, rows archived
/// and indexed; then every counted refusal or drop. Exits non-zero when gaps are unexplained.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut params: Vec<(&str, String)> = args
        .source_id
        .iter()
        .map(|source_id| ("source_id", source_id.clone()))
        .collect();
    if let Some(start) = &args.start {
        params.push(("start", start.clone()));
    }
    if let Some(end) = &args.end {
        params.push(("end", end.clone()));
    }
    let url = format!("{}/api/v1/audit", args.client.api.trim_end_matches('/'));
    let body = call(args.client.http()?.get(&url).query(&params), &url).await?;
    let list = |key: &str| {
        body.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match args.client.output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&body)?),
        OutputFormat::Table => {
            outln!("{} to {}", cell(body.get("start")), cell(body.get("end")));
            let headers: Vec<String> = ["agent_id", "first", "last", "batches", "missing"]
                .map(str::to_owned)
                .to_vec();
            let rows: Vec<Vec<String>> = list("agents")
                .iter()
                .map(|agent| {
                    [
                        "agent_id",
                        "first_sequence",
                        "last_sequence",
                        "batches_found",
                        "batches_missing",
                    ]
                    .iter()
                    .map(|key| cell(agent.get(*key)))
                    .collect()
                })
                .collect();
            print_table(&headers, &rows, 160)?;
            let headers: Vec<String> =
                ["source_id", "agent_id", "archived", "indexable", "indexed"]
                    .map(str::to_owned)
                    .to_vec();
            let mut rows = Vec::new();
            for source in list("sources") {
                for agent in source
                    .get("agents")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let archived: u64 = agent
                        .get("archived")
                        .and_then(Value::as_object)
                        .map(|tables| tables.values().filter_map(Value::as_u64).sum())
                        .unwrap_or(0);
                    rows.push(vec![
                        cell(source.get("source_id")),
                        cell(agent.get("agent_id")),
                        archived.to_string(),
                        cell(agent.get("indexable")),
                        cell(agent.get("indexed")),
                    ]);
                }
            }
            outln!();
            print_table(&headers, &rows, 160)?;
            let counted = list("refused_or_dropped");
            if !counted.is_empty() {
                outln!();
                let headers: Vec<String> = ["stage", "metric", "labels", "count"]
                    .map(str::to_owned)
                    .to_vec();
                let rows: Vec<Vec<String>> = counted
                    .iter()
                    .map(|entry| {
                        vec![
                            cell(entry.get("stage")),
                            cell(entry.get("metric")),
                            entry
                                .get("labels")
                                .map(Value::to_string)
                                .unwrap_or_default(),
                            cell(entry.get("value")),
                        ]
                    })
                    .collect();
                print_table(&headers, &rows, 160)?;
            }
            outln!(
                "\n{} batches missing, {} given up (clients told), {} unexplained",
                cell(body.get("batches_missing")),
                cell(body.get("batches_given_up")),
                cell(body.get("unexplained_gaps"))
            );
        }
    }
    if body
        .get("unexplained_gaps")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        > 0
    {
        bail!("the audit found batches missing that nothing explains");
    }
    Ok(())
}
