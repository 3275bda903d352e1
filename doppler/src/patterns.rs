//! The pattern of every log line, mined as its batch arrives.
//!
//! The doppler is the one place every line passes before it is stored, so it mines there
//! and writes each line's pattern id into the bus record ([`BatchPatterns`]); the indexer
//! and retention store the id the record carries. So the index and the archive agree by
//! construction, and however many indexers or retention processes consume the bus, a line
//! has one id. Ids are a hash of the source and the template, so dopplers that see lines of
//! one shape (a source's batches go to any of them) give them one id too, each mining on its
//! own; the query side merges what they say about a pattern.
//!
//! A template travels with the first batch that uses its id after the doppler starts, again
//! once an hour, and whenever it changes (its revision moves; a pattern that generalises keeps, in `merged`, the
//! ids it answered to, so the lines already stored with them still belong to it). Template
//! bytes per batch are bounded ([`PatternsConfig::max_template_bytes_per_batch`]); what does
//! not fit waits for the next batch of that pattern (counted).
//!
//! The miners are sharded by source, each shard behind its own lock, and saved to
//! `patterns.json` in the doppler's state directory whenever they learned something (every
//! `snapshot_interval` at most) and at shutdown, so a restart keeps every id.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use sluice_common::shutdown::Shutdown;
use sluice_common::telemetry::Telemetry;
use sluice_patterns::{Miner, MinerConfig, Snapshot};
use sluice_proto::v1::{AgentBatch, BatchPatterns, PatternTemplate};
use sluice_proto::v2::envelope;
use tracing::warn;

use crate::config::PatternsConfig;

/// Shards of miners (by source): batches of different sources mine in parallel.
const SHARDS: usize = 16;

/// A template is described again after this long, so a consumer that started since (or lost
/// its registry) learns it without waiting for it to change.
const DESCRIBE_AGAIN: Duration = Duration::from_secs(3600);

/// Ids whose last description a shard remembers at most; past it it forgets them all, and
/// describes each again at its next line (as after a restart). A source of ever-new shapes
/// would otherwise grow it without bound.
const MAX_DESCRIBED_PER_SHARD: usize = 50_000;

/// Longest template text carried, in bytes (longer ones are cut at a character boundary,
/// with `…`): a line of 100 KiB of constants would otherwise be a 100 KiB template.
pub const MAX_TEMPLATE_BYTES: usize = 1024;

/// Bytes a batch's patterns add to its record besides the templates: at most two bytes of
/// position and eight of id per envelope, and framing.
pub const fn overhead_bytes(max_batch_envelopes: usize, max_template_bytes: usize) -> usize {
    max_batch_envelopes * 10 + max_template_bytes + 1024
}

#[derive(Clone)]
struct PatternMetrics {
    lines: Counter,
    patterns: Gauge,
    leaves: Gauge,
    evictions: Counter,
    deferred: Counter,
    snapshots: Counter,
    snapshot_failures: Counter,
}

impl PatternMetrics {
    fn register(telemetry: &Telemetry) -> PatternMetrics {
        PatternMetrics {
            lines: telemetry.register(
                "sluice_doppler_pattern_lines",
                "Log lines given a pattern id at ingest",
                Counter::default(),
            ),
            patterns: telemetry.register(
                "sluice_doppler_patterns",
                "Patterns the doppler's miners hold (all sources)",
                Gauge::default(),
            ),
            leaves: telemetry.register(
                "sluice_doppler_pattern_leaves",
                "Distinct masked lines the doppler's miners hold (capped per source by doppler.patterns.max_leaves_per_source, over all by doppler.patterns.max_leaves)",
                Gauge::default(),
            ),
            evictions: telemetry.register(
                "sluice_doppler_pattern_evictions",
                "Masked lines evicted from a source's miner at its cap (their pattern's lines keep their ids; the shape is learned again if it returns)",
                Counter::default(),
            ),
            deferred: telemetry.register(
                "sluice_doppler_pattern_templates_deferred",
                "Templates left for a later batch because a batch's template budget was spent",
                Counter::default(),
            ),
            snapshots: telemetry.register(
                "sluice_doppler_pattern_snapshots",
                "Times the miners' state was saved to patterns.json",
                Counter::default(),
            ),
            snapshot_failures: telemetry.register(
                "sluice_doppler_pattern_snapshot_failures",
                "Times saving the miners' state failed (the ids of what was learned since may change after a restart)",
                Counter::default(),
            ),
        }
    }
}

struct Shard {
    miner: Miner,
    /// When each id's template was last carried, and its revision then.
    described: HashMap<u64, (Instant, u32)>,
    /// Learned something since the last save.
    dirty: bool,
    leaves: usize,
    patterns: usize,
    evicted: u64,
}

/// The doppler's miners.
pub struct Patterns {
    config: PatternsConfig,
    shards: Vec<Mutex<Shard>>,
    metrics: PatternMetrics,
    path: PathBuf,
}

impl Patterns {
    /// Miners restored from `config.state_dir` (empty when there is no state, or it cannot be
    /// read: logged, and the ids are learned again).
    pub fn open(config: PatternsConfig, telemetry: &Telemetry) -> Patterns {
        let metrics = PatternMetrics::register(telemetry);
        let path = config.state_dir.join("patterns.json");
        let miner_config = MinerConfig {
            max_leaves: config.max_leaves_per_source,
            // Each shard its share, and at least what one source may hold.
            max_total_leaves: (config.max_leaves / SHARDS).max(config.max_leaves_per_source),
            ..MinerConfig::default()
        };
        let mut by_shard: Vec<Vec<Snapshot>> = (0..SHARDS).map(|_| Vec::new()).collect();
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Snapshot>>(&bytes) {
                Ok(snapshots) => {
                    for snapshot in snapshots {
                        by_shard[shard_of(snapshot.source())].push(snapshot);
                    }
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "the saved patterns cannot be read; mining starts afresh");
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                warn!(path = %path.display(), %error, "the saved patterns cannot be read; mining starts afresh");
            }
        }
        let shards: Vec<Mutex<Shard>> = by_shard
            .into_iter()
            .map(|snapshots| {
                let miner = Miner::restore(miner_config, snapshots);
                Mutex::new(Shard {
                    leaves: miner.leaves(),
                    patterns: miner.patterns(),
                    evicted: miner.evicted(),
                    miner,
                    described: HashMap::new(),
                    dirty: false,
                })
            })
            .collect();
        let patterns = Patterns {
            config,
            shards,
            metrics,
            path,
        };
        patterns.update_gauges();
        patterns
    }

    /// Replaces whatever patterns `batch` carries with those of its log lines.
    pub fn annotate(&self, batch: &mut AgentBatch) {
        batch.patterns = None;
        if !self.config.enabled {
            return;
        }
        let mut of_envelope = Vec::with_capacity(batch.envelopes.len());
        let mut ids: Vec<u64> = Vec::new();
        let mut index_of: HashMap<u64, u32> = HashMap::new();
        let mut templates = Vec::new();
        let mut budget = self.config.max_template_bytes_per_batch;
        let mut lines = 0_u64;
        // Consecutive envelopes of one source are the common case: one lock for each run.
        let mut held: Option<(usize, std::sync::MutexGuard<'_, Shard>)> = None;
        let now = Instant::now();
        for envelope in &batch.envelopes {
            let Some(envelope::Message::Log(log)) = &envelope.message else {
                of_envelope.push(0);
                continue;
            };
            let shard_index = shard_of(&envelope.source_id);
            if held.as_ref().is_none_or(|(index, _)| *index != shard_index) {
                // One lock at a time: never two shards' locks held at once.
                drop(held.take());
                let guard = self.shards[shard_index]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                held = Some((shard_index, guard));
            }
            let Some((_, shard)) = held.as_mut() else {
                of_envelope.push(0);
                continue;
            };
            let text = String::from_utf8_lossy(&log.payload);
            let message = text.trim_end_matches(['\n', '\r']);
            let mined = shard
                .miner
                .mine_line(&envelope.source_id, message, envelope.timestamp);
            lines += 1;
            let position = match index_of.get(&mined.id) {
                Some(&position) => position,
                None => {
                    let position = u32::try_from(ids.len() + 1).unwrap_or(u32::MAX);
                    ids.push(mined.id);
                    index_of.insert(mined.id, position);
                    // Described now, while `mined` still names it (and only when what the
                    // consumers were told is not current: describing builds the template).
                    let stale = shard
                        .described
                        .get(&mined.id)
                        .is_none_or(|(when, revision)| {
                            *revision != mined.revision
                                || now.duration_since(*when) >= DESCRIBE_AGAIN
                        });
                    if stale && let Some(info) = shard.miner.describe(&envelope.source_id, mined) {
                        let template = PatternTemplate {
                            id: info.id,
                            source_id: envelope.source_id.clone(),
                            template: cut(info.template, MAX_TEMPLATE_BYTES),
                            merged: info.merged,
                            first_seen: info.first_seen,
                        };
                        let size = template.encoded_len() + 3;
                        if size <= budget {
                            budget -= size;
                            if shard.described.len() >= MAX_DESCRIBED_PER_SHARD {
                                shard.described.clear();
                            }
                            shard.described.insert(info.id, (now, info.revision));
                            templates.push(template);
                        } else {
                            self.metrics.deferred.inc();
                        }
                    }
                    position
                }
            };
            of_envelope.push(position);
        }
        drop(held);
        self.metrics.lines.inc_by(lines);
        if lines == 0 {
            return;
        }
        self.note_changes(batch);
        batch.patterns = Some(BatchPatterns {
            of_envelope,
            ids,
            templates,
        });
    }

    /// Marks the shards of `batch`'s sources dirty when their miners learned something, and
    /// keeps the gauges current.
    fn note_changes(&self, batch: &AgentBatch) {
        let mut seen = [false; SHARDS];
        for envelope in &batch.envelopes {
            seen[shard_of(&envelope.source_id)] = true;
        }
        let mut changed = false;
        for (index, seen) in seen.iter().enumerate() {
            if !seen {
                continue;
            }
            let mut shard = self.shards[index]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let leaves = shard.miner.leaves();
            let evicted = shard.miner.evicted();
            if leaves != shard.leaves || evicted != shard.evicted {
                self.metrics.evictions.inc_by(evicted - shard.evicted);
                shard.leaves = leaves;
                shard.evicted = evicted;
                shard.patterns = shard.miner.patterns();
                shard.dirty = true;
                changed = true;
            }
        }
        if changed {
            self.update_gauges();
        }
    }

    fn update_gauges(&self) {
        let (mut leaves, mut patterns) = (0, 0);
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            leaves += shard.leaves;
            patterns += shard.patterns;
        }
        self.metrics
            .leaves
            .set(i64::try_from(leaves).unwrap_or(i64::MAX));
        self.metrics
            .patterns
            .set(i64::try_from(patterns).unwrap_or(i64::MAX));
    }

    /// Saves the miners when any learned something since the last save (`force`: in any
    /// case). Atomic: a crash leaves the previous file or this one.
    pub fn save(&self, force: bool) {
        let mut any = force;
        let mut snapshots = Vec::new();
        for shard in &self.shards {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            any |= shard.dirty;
            shard.dirty = false;
            snapshots.extend(shard.miner.snapshot());
        }
        if !any {
            return;
        }
        match write_atomically(&self.path, &snapshots) {
            Ok(()) => {
                self.metrics.snapshots.inc();
            }
            Err(error) => {
                self.metrics.snapshot_failures.inc();
                for shard in &self.shards {
                    shard
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .dirty = true;
                }
                warn!(path = %self.path.display(), %error, "failed to save the patterns");
            }
        }
    }

    /// Saves every `snapshot_interval` what was learned, and once more at shutdown.
    pub async fn run_saver(self: std::sync::Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.config.snapshot_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                _ = tick.tick() => {}
            }
            let patterns = std::sync::Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || patterns.save(false)).await;
        }
        let patterns = std::sync::Arc::clone(&self);
        let _ = tokio::task::spawn_blocking(move || patterns.save(false)).await;
    }
}

fn shard_of(source: &str) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut hasher);
    (hasher.finish() % SHARDS as u64) as usize
}

/// `text` cut to at most `max` bytes at a character boundary, ending in `…` when cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

fn write_atomically(path: &Path, snapshots: &[Snapshot]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let bytes = serde_json::to_vec(snapshots).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent()
        && let Ok(directory) = std::fs::File::open(parent)
    {
        let _ = directory.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v2::{Envelope, Log};

    fn config(dir: &Path) -> PatternsConfig {
        PatternsConfig {
            enabled: true,
            max_leaves_per_source: 100,
            max_leaves: 10_000,
            snapshot_interval: Duration::from_secs(5),
            max_template_bytes_per_batch: 64 * 1024,
            state_dir: dir.to_path_buf(),
        }
    }

    fn batch(lines: &[(&str, &str)]) -> AgentBatch {
        AgentBatch {
            agent_id: "agent".to_owned(),
            sequence: 1,
            envelopes: lines
                .iter()
                .map(|(source, line)| Envelope {
                    source_id: (*source).to_owned(),
                    timestamp: 1,
                    message: Some(envelope::Message::Log(Log {
                        payload: line.as_bytes().to_vec(),
                        r#type: 0,
                    })),
                    ..Envelope::default()
                })
                .chain(std::iter::once(Envelope {
                    source_id: "web".to_owned(),
                    message: Some(envelope::Message::Counter(Default::default())),
                    ..Envelope::default()
                }))
                .collect(),
            patterns: None,
        }
    }

    fn ids(batch: &AgentBatch) -> Vec<u64> {
        let patterns = batch.patterns.as_ref().expect("patterns");
        patterns
            .of_envelope
            .iter()
            .map(|&position| match position {
                0 => 0,
                position => patterns.ids[position as usize - 1],
            })
            .collect()
    }

    #[test]
    fn every_log_line_gets_its_pattern_and_each_template_travels_once() {
        let dir = tempfile::tempdir().expect("dir");
        let patterns = Patterns::open(config(dir.path()), &Telemetry::new());
        let mut first = batch(&[
            ("web", "GET /a took 12 ms"),
            ("web", "GET /a took 15 ms"),
            ("api", "user 7 logged in"),
        ]);
        patterns.annotate(&mut first);
        let first_ids = ids(&first);
        assert_eq!(first_ids[0], first_ids[1]);
        assert_ne!(first_ids[0], first_ids[2]);
        assert_eq!(first_ids[3], 0, "a counter has no pattern");
        let described = &first.patterns.as_ref().expect("patterns").templates;
        assert_eq!(described.len(), 2);
        assert_eq!(described[0].template, "GET /a took <duration>");
        assert_eq!(described[0].source_id, "web");

        let mut second = batch(&[("web", "GET /a took 99 ms")]);
        patterns.annotate(&mut second);
        assert_eq!(ids(&second)[0], first_ids[0]);
        assert!(
            second
                .patterns
                .as_ref()
                .expect("patterns")
                .templates
                .is_empty(),
            "described already"
        );

        // A value of a wider kind in a known place changes the template, not the id: it is
        // described again.
        let mut third = batch(&[("api", "user 3fa9c0de logged in")]);
        patterns.annotate(&mut third);
        assert_eq!(ids(&third)[0], first_ids[2]);
        let described = &third.patterns.as_ref().expect("patterns").templates;
        assert_eq!(described.len(), 1);
        assert_eq!(described[0].template, "user <hex> logged in");
    }

    #[test]
    fn a_restarted_doppler_gives_the_lines_it_knew_their_ids() {
        let dir = tempfile::tempdir().expect("dir");
        let lines = [
            ("web", "connection from 10.0.0.1 closed"),
            ("web", "worker alpha started task"),
            ("web", "worker beta started task"),
        ];
        let before = {
            let patterns = Patterns::open(config(dir.path()), &Telemetry::new());
            let mut first = batch(&lines);
            patterns.annotate(&mut first);
            patterns.save(false);
            ids(&first)
        };
        let patterns = Patterns::open(config(dir.path()), &Telemetry::new());
        let mut again = batch(&lines);
        patterns.annotate(&mut again);
        assert_eq!(ids(&again), before);
        // A fresh doppler describes them again, for consumers that start with it (two
        // workers are two patterns until more names are seen in that place).
        assert_eq!(
            again.patterns.as_ref().expect("patterns").templates.len(),
            3
        );
    }

    #[test]
    fn templates_past_the_batch_budget_wait_for_a_later_batch() {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = config(dir.path());
        config.max_template_bytes_per_batch = 60;
        let telemetry = Telemetry::new();
        let patterns = Patterns::open(config, &telemetry);
        let mut first = batch(&[
            ("web", "the first kind of line here"),
            ("web", "a second and different sort"),
        ]);
        patterns.annotate(&mut first);
        assert_eq!(
            first.patterns.as_ref().expect("patterns").templates.len(),
            1
        );
        assert_eq!(patterns.metrics.deferred.get(), 1);
        let mut second = batch(&[("web", "a second and different sort")]);
        patterns.annotate(&mut second);
        assert_eq!(
            second.patterns.as_ref().expect("patterns").templates[0].template,
            "a second and different sort"
        );
    }

    #[test]
    fn a_long_template_is_cut_at_a_character_boundary() {
        let cut = cut("é".repeat(600), MAX_TEMPLATE_BYTES);
        assert!(cut.len() <= MAX_TEMPLATE_BYTES);
        assert!(cut.ends_with('…'));
    }
}
