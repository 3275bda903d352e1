//! `sluice patterns`: the patterns of the lines a query matches, as a table with a sparkline
//! per pattern (or the API's JSON with `--output json`).

use crate::output::outln;
use serde_json::Value;

use crate::client::{call, warn_unavailable};
use crate::output::{cell, print_table};
use crate::{OutputFormat, PatternsArgs};

/// `sluice patterns`.
pub async fn patterns(args: PatternsArgs) -> anyhow::Result<()> {
    let mut params = vec![
        ("query", args.query.clone()),
        ("limit", args.limit.to_string()),
        ("factor", args.factor.to_string()),
    ];
    for (name, value) in [
        ("since", &args.since),
        ("start", &args.start),
        ("end", &args.end),
        ("step", &args.step),
        ("compare", &args.compare),
    ] {
        if let Some(value) = value {
            params.push((name, value.clone()));
        }
    }
    let url = format!("{}/api/v1/patterns", args.client.api.trim_end_matches('/'));
    let body = call(args.client.http()?.get(&url).query(&params), &url).await?;
    match args.client.output {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&body)?),
        OutputFormat::Table => print(&body, args.compare.is_some())?,
    }
    Ok(())
}

fn print(body: &Value, compared: bool) -> std::io::Result<()> {
    let patterns = body
        .get("patterns")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut headers = vec!["count"];
    if compared {
        headers.extend(["before", "change"]);
    }
    headers.extend(["trend", "source_id", "pattern_id", "template"]);
    let headers: Vec<String> = headers.into_iter().map(str::to_owned).collect();
    let rows: Vec<Vec<String>> = patterns
        .iter()
        .map(|pattern| {
            let mut row = vec![cell(pattern.get("count"))];
            if compared {
                row.push(cell(pattern.get("baseline_count")));
                row.push(change(pattern));
            }
            row.push(sparkline(pattern.get("steps")));
            row.push(cell(pattern.get("source_id")));
            row.push(cell(pattern.get("pattern_id")));
            row.push(
                pattern
                    .get("template")
                    .and_then(Value::as_str)
                    .map_or_else(|| "(template not known yet)".to_owned(), str::to_owned),
            );
            row
        })
        .collect();
    print_table(&headers, &rows, 200)?;
    let mut summary = format!(
        "{} patterns of {} matching lines ({} to {}",
        cell(body.get("pattern_count")),
        cell(body.get("total")),
        cell(body.get("start")),
        cell(body.get("end")),
    );
    if let Some(baseline) = body.get("baseline") {
        summary.push_str(&format!(
            "; compared with {} lines from {} to {}",
            cell(baseline.get("total")),
            cell(baseline.get("start")),
            cell(baseline.get("end"))
        ));
    }
    summary.push_str(&format!(", {} ms)", cell(body.get("took_ms"))));
    outln!("{summary}");
    let unpatterned = body.get("unpatterned").and_then(Value::as_u64).unwrap_or(0);
    if unpatterned > 0 {
        outln!(
            "{unpatterned} matching lines have no pattern (events, or indexed before patterns were mined)"
        );
    }
    warn_unavailable(body);
    Ok(())
}

/// `new`, or `rose 40×` / `fell 0.1×` / `steady`.
fn change(pattern: &Value) -> String {
    let change = pattern.get("change").and_then(Value::as_str).unwrap_or("");
    match (change, pattern.get("ratio").and_then(Value::as_f64)) {
        ("rose" | "fell", Some(ratio)) if ratio >= 10.0 => format!("{change} {ratio:.0}×"),
        ("rose" | "fell", Some(ratio)) => format!("{change} {ratio:.2}×"),
        (change, _) => change.to_owned(),
    }
}

/// The counts per step as block characters, at most 24 of them (steps summed into them).
fn sparkline(steps: Option<&Value>) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let counts: Vec<u64> = steps
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .map(|step| step.get("count").and_then(Value::as_u64).unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    if counts.is_empty() {
        return String::new();
    }
    let width = counts.len().min(24);
    let per = counts.len().div_ceil(width);
    let cells: Vec<u64> = counts.chunks(per).map(|chunk| chunk.iter().sum()).collect();
    let max = cells.iter().copied().max().unwrap_or(0).max(1);
    cells
        .iter()
        .map(|&count| {
            if count == 0 {
                ' '
            } else {
                BLOCKS[((count * 7).div_ceil(max)) as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_scales_to_the_largest_step_and_leaves_empty_steps_blank() {
        let steps = serde_json::json!([{"count": 0}, {"count": 1}, {"count": 8}]);
        assert_eq!(sparkline(Some(&steps)), " ▂█");
    }
}
