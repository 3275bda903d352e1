//! Cutting a file's new bytes into records: lines, joined into multiline records by a start
//! pattern, and lines over the length limit split into flagged parts.

use regex::Regex;

/// One record read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The text (lossy UTF-8, without the final newline).
    pub text: String,
    /// Part number and count when a line over the limit was split (1-based).
    pub part: Option<(usize, usize)>,
    /// Offset in the file just after this record: where reading resumes once it is durable.
    pub end_offset: u64,
}

/// Cuts complete lines from `buffer` (which starts at file offset `start`). Returns the records
/// and how many bytes of `buffer` they used; an unfinished last line stays unless `flush` says
/// the writer is done with it (then it is taken as a line too).
pub fn cut(buffer: &[u8], start: u64, max_line_bytes: usize, flush: bool) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut used = 0;
    while used < buffer.len() {
        let rest = &buffer[used..];
        let (line, consumed) = match rest.iter().position(|byte| *byte == b'\n') {
            Some(newline) => (&rest[..newline], newline + 1),
            None if flush || rest.len() > max_line_bytes => (rest, rest.len()),
            None => break,
        };
        used += consumed;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let end_offset = start + used as u64;
        if line.len() <= max_line_bytes {
            records.push(Record {
                text: String::from_utf8_lossy(line).into_owned(),
                part: None,
                end_offset,
            });
            continue;
        }
        // Too long: parts of at most `max_line_bytes`, cut on UTF-8 boundaries where possible.
        let mut parts = Vec::new();
        let mut from = 0;
        while from < line.len() {
            let mut to = (from + max_line_bytes).min(line.len());
            while to > from + 1 && to < line.len() && (line[to] & 0b1100_0000) == 0b1000_0000 {
                to -= 1;
            }
            parts.push(&line[from..to]);
            from = to;
        }
        let count = parts.len();
        for (index, part) in parts.into_iter().enumerate() {
            records.push(Record {
                text: String::from_utf8_lossy(part).into_owned(),
                part: Some((index + 1, count)),
                // Only the last part completes the line.
                end_offset: if index + 1 == count {
                    end_offset
                } else {
                    start + (used - consumed) as u64
                },
            });
        }
    }
    (records, used)
}

/// Joins records into multiline ones: a record not matching `start` continues the one before.
/// The last record may still get continuations, so it is held back (returned apart) unless
/// `flush`.
pub fn join(
    pending: Option<Record>,
    records: Vec<Record>,
    start: &Regex,
    flush: bool,
) -> (Vec<Record>, Option<Record>) {
    let mut out = Vec::new();
    let mut current = pending;
    for record in records {
        match &mut current {
            Some(open) if record.part.is_none() && !start.is_match(&record.text) => {
                open.text.push('\n');
                open.text.push_str(&record.text);
                open.end_offset = record.end_offset;
            }
            _ => {
                if let Some(done) = current.take() {
                    out.push(done);
                }
                current = Some(record);
            }
        }
    }
    if flush && let Some(done) = current.take() {
        out.push(done);
    }
    (out, current)
}
