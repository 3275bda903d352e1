//! The pattern miner alone on the labelled Loghub samples: grouping accuracy per system (the
//! logparser benchmark's GA: a line counts when the group it was put in is exactly its true
//! group) beside Drain's published figures, and the miner's speed on one core.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use sluice_patterns::{Miner, MinerConfig};

use crate::loghub::parse_csv;

/// Drain's grouping accuracy on the Loghub-2k samples (Zhu et al., "Tools and Benchmarks for
/// Automated Log Parsing", ICSE-SEIP 2019, table III), tuned with a regular expression set
/// per system there.
const DRAIN: [(&str, f64); 8] = [
    ("HDFS", 0.998),
    ("Hadoop", 0.948),
    ("Spark", 0.920),
    ("Zookeeper", 0.967),
    ("Linux", 0.690),
    ("Apache", 1.0),
    ("OpenSSH", 0.788),
    ("Proxifier", 0.527),
];

#[derive(Serialize)]
struct SystemReport {
    system: String,
    lines: usize,
    ga: f64,
    drain_ga: Option<f64>,
    patterns: usize,
    true_groups: usize,
}

#[derive(Serialize)]
struct Report {
    systems: Vec<SystemReport>,
    mean_ga: f64,
    /// Lines mined per second on one thread: every sample's lines again and again through
    /// the same miners (the steady state: shapes known, values new).
    warm_lines_per_s: f64,
    /// The same with fresh miners each round (every shape new).
    cold_lines_per_s: f64,
    /// Unique random lines (two to six random words each) mined into one source: every line a
    /// new shape, the miner at its cap and evicting.
    unique_lines_per_s: f64,
    /// Masked lines evicted over those.
    unique_evictions: u64,
}

/// `count` lines of two to six random lowercase words of three to nine letters.
fn unique_lines(count: usize) -> Vec<String> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut below = |bound: u64| {
        // xorshift64*: deterministic, and enough for words.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    };
    (0..count)
        .map(|_| {
            let words = 2 + below(5);
            let mut line = String::new();
            for word in 0..words {
                if word > 0 {
                    line.push(' ');
                }
                for _ in 0..3 + below(7) {
                    line.push(char::from(b'a' + below(26) as u8));
                }
            }
            line
        })
        .collect()
}

/// (content, true group) of every line of one system's structured sample.
fn labelled(dir: &Path, system: &str) -> anyhow::Result<Vec<(String, String)>> {
    let path = dir
        .join(system)
        .join(format!("{system}_2k.log_structured.csv"));
    let bytes =
        std::fs::read(&path).with_context(|| format!("failed to read {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut rows = parse_csv(&text).into_iter();
    let header = rows.next().unwrap_or_default();
    let column = |name: &str| header.iter().position(|field| field == name);
    let (Some(content), Some(event)) = (column("Content"), column("EventId")) else {
        bail!("{} has no Content and EventId columns", path.display());
    };
    Ok(rows
        .filter(|row| row.len() > content.max(event))
        .map(|row| (row[content].clone(), row[event].clone()))
        .collect())
}

/// The logparser benchmark's grouping accuracy.
fn grouping_accuracy(truth: &[String], predicted: &[u64]) -> f64 {
    let mut by_predicted: HashMap<u64, Vec<usize>> = HashMap::new();
    for (line, &group) in predicted.iter().enumerate() {
        by_predicted.entry(group).or_default().push(line);
    }
    let mut by_truth: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    for (line, group) in truth.iter().enumerate() {
        by_truth.entry(group.as_str()).or_default().insert(line);
    }
    let correct: usize = by_predicted
        .values()
        .filter(|lines| {
            let group = truth[lines[0]].as_str();
            lines.len() == by_truth[group].len() && lines.iter().all(|&line| truth[line] == group)
        })
        .map(Vec::len)
        .sum();
    correct as f64 / truth.len().max(1) as f64
}

/// Runs the miner on every system under `dir` (each system its own source) and prints the
/// report as JSON.
pub fn run(dir: &Path, rounds: usize, templates: bool) -> anyhow::Result<()> {
    let drain: BTreeMap<&str, f64> = DRAIN.into_iter().collect();
    let mut systems: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            dir.join(name)
                .join(format!("{name}_2k.log_structured.csv"))
                .is_file()
        })
        .collect();
    systems.sort();
    if systems.is_empty() {
        bail!(
            "no <System>/<System>_2k.log_structured.csv under {}",
            dir.display()
        );
    }
    let mut samples = Vec::new();
    let mut reports = Vec::new();
    for system in &systems {
        let lines = labelled(dir, system)?;
        let mut miner = Miner::new(MinerConfig::default());
        let ids: Vec<u64> = lines
            .iter()
            .enumerate()
            .map(|(time, (content, _))| {
                miner.mine(system, content, i64::try_from(time).unwrap_or(0))
            })
            .collect();
        // Each line belongs to the pattern that now answers for the id it was given.
        let mut answers: HashMap<u64, u64> = HashMap::new();
        if let Some(source) = miner.source(system) {
            for pattern in source.patterns() {
                if templates {
                    eprintln!("{system}\t{}\t{}", pattern.count, pattern.template);
                }
                answers.insert(pattern.id, pattern.id);
                for old in pattern.merged {
                    answers.insert(old, pattern.id);
                }
            }
        }
        let predicted: Vec<u64> = ids
            .iter()
            .map(|id| answers.get(id).copied().unwrap_or(*id))
            .collect();
        let truth: Vec<String> = lines.iter().map(|(_, group)| group.clone()).collect();
        reports.push(SystemReport {
            system: system.clone(),
            lines: lines.len(),
            ga: grouping_accuracy(&truth, &predicted),
            drain_ga: drain.get(system.as_str()).copied(),
            patterns: predicted.iter().collect::<BTreeSet<_>>().len(),
            true_groups: truth.iter().collect::<BTreeSet<_>>().len(),
        });
        samples.push((system.clone(), lines));
    }
    let total: usize = samples.iter().map(|(_, lines)| lines.len()).sum();
    let time = |fresh: bool| {
        let mut miner = Miner::new(MinerConfig::default());
        let started = Instant::now();
        for _ in 0..rounds {
            if fresh {
                miner = Miner::new(MinerConfig::default());
            }
            for (system, lines) in &samples {
                for (content, _) in lines {
                    std::hint::black_box(miner.mine(system, content, 0));
                }
            }
        }
        (total * rounds) as f64 / started.elapsed().as_secs_f64()
    };
    let warm = time(false);
    let cold = time(true);
    let unique = unique_lines(200_000);
    let mut miner = Miner::new(MinerConfig::default());
    let started = Instant::now();
    for (time, line) in unique.iter().enumerate() {
        std::hint::black_box(miner.mine("unique", line, i64::try_from(time).unwrap_or(0)));
    }
    let unique_lines_per_s = unique.len() as f64 / started.elapsed().as_secs_f64();
    let unique_evictions = miner.evicted();
    let mean = reports.iter().map(|report| report.ga).sum::<f64>() / reports.len() as f64;
    let report = Report {
        systems: reports,
        mean_ga: mean,
        warm_lines_per_s: warm,
        cold_lines_per_s: cold,
        unique_lines_per_s,
        unique_evictions,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_accuracy_counts_only_exact_groups() {
        let truth: Vec<String> = ["a", "a", "b", "b", "c"]
            .iter()
            .map(|group| (*group).to_owned())
            .collect();
        assert!((grouping_accuracy(&truth, &[1, 1, 2, 2, 3]) - 1.0).abs() < 1e-9);
        // c put with a, and b split in two: no group is exact.
        assert!((grouping_accuracy(&truth, &[1, 1, 2, 4, 1]) - 0.0).abs() < 1e-9);
        assert!((grouping_accuracy(&truth, &[1, 1, 2, 4, 3]) - 0.6).abs() < 1e-9);
    }
}
