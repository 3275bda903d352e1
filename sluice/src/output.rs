//! Printing answers: lines, and aligned tables.

/// `println!` that hands the write's error to the caller instead of panicking, so a reader
/// that goes away (`sluice search … | head`) ends the command quietly (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}
pub(crate) use outln;

/// Prints `rows` under `headers` with columns padded to their widest cell. Cells are cut at
/// `max_width` characters so one long log line does not wreck the table.
pub fn print_table(
    headers: &[String],
    rows: &[Vec<String>],
    max_width: usize,
) -> std::io::Result<()> {
    let cut = |cell: &str| -> String {
        let single_line = cell.replace(['\n', '\r'], " ");
        if single_line.chars().count() > max_width {
            let mut kept: String = single_line
                .chars()
                .take(max_width.saturating_sub(1))
                .collect();
            kept.push('…');
            kept
        } else {
            single_line
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| cut(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in &rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(index, cell)| {
                let width = widths.get(index).copied().unwrap_or(0);
                if index + 1 == cells.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    outln!("{}", line(headers));
    for row in &rows {
        outln!("{}", line(row));
    }
    Ok(())
}

/// A JSON value as a table cell: strings bare, null empty, the rest as JSON.
pub fn cell(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}
