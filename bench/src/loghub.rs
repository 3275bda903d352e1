//! Reading the Loghub samples (`<System>/<System>_2k.log`, `…_structured.csv`) into a model
//! the generator fills: for every template, how often it occurs, the values seen in each of
//! its `<*>` slots, and the line prefixes (date, time, level, component) of its system.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, bail};

/// One template of one system.
#[derive(Debug, Clone)]
pub struct Template {
    /// The literal text between the slots: `slots + 1` pieces.
    pub pieces: Vec<String>,
    /// For each slot, the values seen there in the sample.
    pub slot_values: Vec<Vec<String>>,
    /// Whether the sample's level for this template was an error or warning.
    pub error: bool,
}

/// One system (HDFS, Apache, ...).
#[derive(Debug, Clone)]
pub struct System {
    /// Lower-case name, used in source ids.
    pub name: String,
    /// The sample's directory name.
    pub dir_name: String,
    /// Templates seen in the sample.
    pub templates: Vec<Template>,
    /// The text before the content on each raw line (timestamps, level, component).
    pub prefixes: Vec<String>,
    /// The sample's lines in order: which template, with which slot values.
    pub rows: Vec<Row>,
}

/// One line of the sample, in the model's terms.
#[derive(Debug, Clone)]
pub struct Row {
    /// Index into [`System::prefixes`].
    pub prefix: usize,
    /// Index into [`System::templates`].
    pub template: usize,
    /// The values of the template's slots on this line.
    pub values: Vec<String>,
}

/// Every system found under the Loghub directory, in name order.
#[derive(Debug, Clone)]
pub struct Model {
    /// The systems.
    pub systems: Vec<System>,
}

impl Model {
    /// Reads every `<dir>/<System>/<System>_2k.log_structured.csv` with its raw log.
    pub fn load(dir: &Path) -> anyhow::Result<Model> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .with_context(|| format!("failed to read the Loghub directory {}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut systems = Vec::new();
        for name in names {
            let structured = dir
                .join(&name)
                .join(format!("{name}_2k.log_structured.csv"));
            let raw = dir.join(&name).join(format!("{name}_2k.log"));
            if !structured.is_file() || !raw.is_file() {
                continue;
            }
            systems.push(
                load_system(&name, &structured, &raw)
                    .with_context(|| format!("failed to read the Loghub sample {name}"))?,
            );
        }
        if systems.is_empty() {
            bail!(
                "no Loghub samples (<System>/<System>_2k.log_structured.csv) in {}",
                dir.display()
            );
        }
        Ok(Model { systems })
    }

    /// The raw sample lines of every system, as read (for the compressibility comparison).
    pub fn raw_lines(dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        let model_names = Model::load(dir)?
            .systems
            .into_iter()
            .map(|system| system.dir_name)
            .collect::<Vec<_>>();
        for name in model_names {
            let raw = fs::read(dir.join(&name).join(format!("{name}_2k.log")))?;
            lines.extend(String::from_utf8_lossy(&raw).lines().map(str::to_owned));
        }
        Ok(lines)
    }
}

fn load_system(name: &str, structured: &Path, raw: &Path) -> anyhow::Result<System> {
    let text = fs::read(structured)?;
    let text = String::from_utf8_lossy(&text);
    let mut rows = parse_csv(&text).into_iter();
    let header = rows.next().context("empty structured CSV")?;
    let column = |wanted: &str| header.iter().position(|name| name == wanted);
    let content_at = column("Content").context("no Content column")?;
    let event_at = column("EventId").context("no EventId column")?;
    let template_at = column("EventTemplate").context("no EventTemplate column")?;
    let level_at = column("Level");
    let raw_text = fs::read(raw)?;
    let raw_text = String::from_utf8_lossy(&raw_text);
    let raw_lines: Vec<&str> = raw_text.lines().collect();

    let mut by_event: HashMap<String, usize> = HashMap::new();
    let mut templates: Vec<Template> = Vec::new();
    let mut prefixes = Vec::new();
    let mut sample_rows = Vec::new();
    for (index, row) in rows.enumerate() {
        let (Some(content), Some(event), Some(template)) =
            (row.get(content_at), row.get(event_at), row.get(template_at))
        else {
            continue;
        };
        let Some(prefix) = raw_lines
            .get(index)
            .and_then(|line| line.strip_suffix(content.as_str()))
        else {
            continue;
        };
        let Some(values) = match_template(template, content) else {
            continue;
        };
        prefixes.push(prefix.to_owned());
        let slot = *by_event.entry(event.clone()).or_insert_with(|| {
            let pieces: Vec<String> = template.split("<*>").map(str::to_owned).collect();
            templates.push(Template {
                slot_values: vec![Vec::new(); pieces.len() - 1],
                pieces,
                error: false,
            });
            templates.len() - 1
        });
        let entry = &mut templates[slot];
        for (pool, value) in entry.slot_values.iter_mut().zip(values.iter()) {
            pool.push(value.clone());
        }
        sample_rows.push(Row {
            prefix: prefixes.len() - 1,
            template: slot,
            values,
        });
        if let Some(level) = level_at.and_then(|at| row.get(at)) {
            let level = level.to_ascii_uppercase();
            if [
                "ERROR", "FATAL", "SEVERE", "ERR", "CRIT", "WARN", "WARNING", "ALERT",
            ]
            .iter()
            .any(|bad| level.contains(bad))
            {
                entry.error = true;
            }
        }
    }
    if templates.is_empty() {
        bail!("no row of {} matched its template", structured.display());
    }
    Ok(System {
        name: name.to_ascii_lowercase(),
        dir_name: name.to_owned(),
        templates,
        prefixes,
        rows: sample_rows,
    })
}

/// The values of `template`'s `<*>` slots in `content`, matching each literal piece at its
/// first occurrence after the previous one; `None` if the content does not fit.
pub fn match_template(template: &str, content: &str) -> Option<Vec<String>> {
    let pieces: Vec<&str> = template.split("<*>").collect();
    let mut rest = content.strip_prefix(pieces[0])?;
    let mut values = Vec::with_capacity(pieces.len() - 1);
    for (index, piece) in pieces.iter().enumerate().skip(1) {
        let last = index == pieces.len() - 1;
        if last {
            if piece.is_empty() {
                values.push(rest.to_owned());
                rest = "";
            } else {
                let value = rest.strip_suffix(piece)?;
                values.push(value.to_owned());
                rest = "";
            }
        } else if piece.is_empty() {
            values.push(String::new());
        } else {
            let at = rest.find(piece)?;
            values.push(rest[..at].to_owned());
            rest = &rest[at + piece.len()..];
        }
    }
    rest.is_empty().then_some(values)
}

/// RFC 4180 CSV: quoted fields with doubled quotes, CRLF or LF line ends.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_and_commas() {
        let rows = parse_csv("a,b\n1,\"x, \"\"y\"\"\"\n");
        assert_eq!(rows, vec![vec!["a", "b"], vec!["1", "x, \"y\""]]);
    }

    #[test]
    fn template_slots_are_extracted() {
        let values = match_template(
            "PacketResponder <*> for block blk_<*> terminating",
            "PacketResponder 1 for block blk_-6952 terminating",
        );
        assert_eq!(values, Some(vec!["1".to_owned(), "-6952".to_owned()]));
        assert_eq!(match_template("a <*> b", "a x c"), None);
        assert_eq!(
            match_template("<*>:<*> Served", "10.0.0.1:50010 Served"),
            Some(vec!["10.0.0.1".to_owned(), "50010".to_owned()])
        );
    }
}
