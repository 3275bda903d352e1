//! `sluice tail`: prints a live tail, reconnecting by itself and resuming at its cursor, so a
//! broken connection or a restarted query API costs no line and repeats none.

use crate::output::outln;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;

use crate::output::cell;
use crate::{OutputFormat, TailArgs};

/// The longest pause between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How one connection ended.
enum Ended {
    /// Printed `--count` envelopes.
    Done,
    /// The stream broke or the server closed it: reconnect.
    Broken(String),
}

/// `sluice tail`.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/tail", args.client.api.trim_end_matches('/'));
    let mut params = selector_params(&args)?;
    if let Some(since) = &args.since {
        params.push(("since".to_owned(), since.clone()));
    }
    if let Some(count) = args.tail {
        params.push(("tail".to_owned(), count.to_string()));
    }
    let mut state = TailState {
        cursor: args.cursor.clone(),
        printed: 0,
    };
    let client = args.client.http()?;
    let mut backoff = Duration::from_millis(200);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        // Once a cursor is known, it alone says where to go on: history was already sent.
        let mut request = client.get(&url);
        request = match &state.cursor {
            Some(cursor) => request
                .query(&selector_params(&args)?)
                .header("Last-Event-ID", cursor),
            None => request.query(&params),
        };
        let ended = tokio::select! {
            _ = &mut interrupted => {
                report_cursor(&state);
                return Ok(());
            }
            ended = stream_once(request, &args, &mut state) => ended?,
        };
        match ended {
            Ended::Done => {
                report_cursor(&state);
                return Ok(());
            }
            Ended::Broken(reason) => {
                eprintln!(
                    "sluice tail: {reason}; reconnecting in {} ms{}",
                    backoff.as_millis(),
                    state
                        .cursor
                        .as_deref()
                        .map(|cursor| format!(" to resume at {cursor}"))
                        .unwrap_or_default()
                );
                tokio::select! {
                    _ = &mut interrupted => {
                        report_cursor(&state);
                        return Ok(());
                    }
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if state.printed > 0 {
            backoff = Duration::from_millis(200);
        }
    }
}

struct TailState {
    cursor: Option<String>,
    printed: u64,
}

fn report_cursor(state: &TailState) {
    if let Some(cursor) = &state.cursor {
        eprintln!("sluice tail: stopped at cursor {cursor} (resume with --cursor {cursor})");
    }
}

/// The selectors as query parameters.
fn selector_params(args: &TailArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut params: Vec<(String, String)> = Vec::new();
    params.extend(
        args.source_id
            .iter()
            .map(|id| ("source_id".to_owned(), id.clone())),
    );
    params.extend(
        args.instance_id
            .iter()
            .map(|id| ("instance_id".to_owned(), id.clone())),
    );
    params.extend(
        args.types
            .iter()
            .map(|kind| ("type".to_owned(), kind.clone())),
    );
    params.extend(
        args.log_type
            .iter()
            .map(|kind| ("log_type".to_owned(), kind.clone())),
    );
    for tag in &args.tag {
        let (name, value) = tag
            .split_once('=')
            .with_context(|| format!("--tag {tag:?}: give NAME=VALUE"))?;
        params.push((format!("tag.{name}"), value.to_owned()));
    }
    params.extend(
        args.query
            .iter()
            .map(|query| ("query".to_owned(), query.clone())),
    );
    Ok(params)
}

/// One connection: prints its events until it ends. A refusal (4xx) is an error; a server
/// that cannot be reached or breaks the stream is reconnected to.
async fn stream_once(
    request: reqwest::RequestBuilder,
    args: &TailArgs,
    state: &mut TailState,
) -> anyhow::Result<Ended> {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return Ok(Ended::Broken(format!(
                "cannot reach the query API: {error}"
            )));
        }
    };
    let status = response.status();
    if status.is_client_error() {
        crate::client::answer(response).await?;
        bail!("the query API refused the tail ({status})");
    }
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Ok(Ended::Broken(format!(
            "the query API answered {status}: {}",
            body.trim()
        )));
    }
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return Ok(Ended::Broken(format!("the stream broke: {error}"))),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut kind = "message";
            let mut id = None;
            let mut data_lines = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    kind = match value.trim() {
                        "open" => "open",
                        "dropped" => "dropped",
                        "truncated" => "truncated",
                        "heartbeat" => "heartbeat",
                        "close" => "close",
                        _ => "other",
                    };
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data_lines.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            let data = data_lines.join("\n");
            if let Some(id) = id.filter(|id| !id.is_empty()) {
                state.cursor = Some(id);
            }
            match kind {
                "message" if !data.is_empty() => {
                    print_envelope(&data, args.client.output)?;
                    state.printed += 1;
                    if args.count.is_some_and(|count| state.printed >= count) {
                        return Ok(Ended::Done);
                    }
                }
                "dropped" | "truncated" => print_notice(kind, &data, args.client.output),
                "close" => {
                    let reason = serde_json::from_str::<Value>(&data)
                        .ok()
                        .and_then(|value| {
                            value
                                .get("reason")
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        })
                        .unwrap_or(data);
                    return Ok(Ended::Broken(format!(
                        "the query API closed the tail: {reason}"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(Ended::Broken("the query API ended the stream".to_owned()))
}

fn print_envelope(data: &str, output: OutputFormat) -> std::io::Result<()> {
    match output {
        OutputFormat::Json => outln!("{data}"),
        OutputFormat::Table => {
            let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            let text = match value.get("message") {
                Some(message) => cell(Some(message)),
                None => value.to_string(),
            };
            outln!(
                "{}  {}/{}  {}",
                cell(value.get("time")),
                cell(value.get("source_id")),
                cell(value.get("instance_id")),
                text
            );
        }
    }
    Ok(())
}

/// Lines that are not envelopes go to stderr, so stdout stays the envelopes alone.
fn print_notice(kind: &str, data: &str, output: OutputFormat) {
    let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    match output {
        OutputFormat::Json => eprintln!("{}", serde_json::json!({"event": kind, "data": value})),
        OutputFormat::Table => match kind {
            "dropped" => eprintln!(
                "sluice tail: {} envelopes lost ({} records unknown, {} healed) between {} and {}: {}",
                cell(value.get("count")),
                cell(value.get("unknown_records")),
                cell(value.get("healed")),
                cell(value.get("start")),
                cell(value.get("end")),
                cell(value.get("reason"))
            ),
            _ => eprintln!(
                "sluice tail: history cut: {} of {} matching lines sent: {}",
                cell(value.get("sent")),
                cell(value.get("matched")),
                cell(value.get("reason"))
            ),
        },
    }
}
