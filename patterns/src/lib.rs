//! Log patterns, mined online: every line gets the id of its template (constant tokens with
//! typed placeholders where values go, `<ip>:<num>`), per source, with one configuration for
//! every kind of log.
//!
//! [`tokens`] masks what varies by its type (numbers, addresses, ids, times, keyed values),
//! and [`kinds`] names each masked value's kind for the template;
//! [`miner`] groups the masked lines of a source into patterns and generalises them as it
//! sees more (a place that takes many different words becomes a value). [`Miner`] holds the
//! miners of every source. Memory is bounded: each source keeps at most
//! [`MinerConfig::max_leaves`] distinct masked lines, evicting the least recently seen, and
//! all sources together [`MinerConfig::max_total_leaves`], forgetting the least recently used
//! sources.

#![deny(missing_docs)]

pub mod kinds;
pub mod miner;
pub mod tokens;

use std::collections::HashMap;

pub use miner::{Mined, MinerConfig, PatternInfo, Snapshot, SourceMiner};

/// The miners of every source.
#[derive(Debug, Default)]
pub struct Miner {
    config: MinerConfig,
    sources: HashMap<String, Held>,
    /// Leaves over every source.
    leaves: usize,
    /// Lines mined, as a clock for which source was used last.
    clock: u64,
    /// Leaves of the sources forgotten at the total cap, and what they had evicted.
    forgotten: u64,
}

#[derive(Debug)]
struct Held {
    miner: SourceMiner,
    used: u64,
}

impl Miner {
    /// Miners with `config`.
    pub fn new(config: MinerConfig) -> Miner {
        Miner {
            config,
            ..Miner::default()
        }
    }

    /// Mines one line of `source` stamped `timestamp` (ns): the id of its pattern.
    pub fn mine(&mut self, source: &str, message: &str, timestamp: i64) -> u64 {
        self.mine_line(source, message, timestamp).id
    }

    /// Mines one line of `source`: where it went, for [`Miner::describe`].
    pub fn mine_line(&mut self, source: &str, message: &str, timestamp: i64) -> Mined {
        self.clock += 1;
        let clock = self.clock;
        let mine = |held: &mut Held| {
            held.used = clock;
            let before = held.miner.leaves();
            let mined = held.miner.mine_line(message, timestamp);
            (mined, before, held.miner.leaves())
        };
        let (mined, before, after) = match self.sources.get_mut(source) {
            Some(held) => mine(held),
            None => {
                let config = self.config;
                mine(self.sources.entry(source.to_owned()).or_insert(Held {
                    miner: SourceMiner::new(source, config),
                    used: clock,
                }))
            }
        };
        self.leaves = (self.leaves + after).saturating_sub(before);
        if self.leaves > self.config.max_total_leaves.max(1) {
            self.forget(source);
        }
        mined
    }

    /// Forgets the least recently used sources but `keep` until a quarter of the total cap is
    /// free (or only `keep` is left).
    fn forget(&mut self, keep: &str) {
        let target = self.config.max_total_leaves / 4 * 3;
        let mut by_use: Vec<(u64, String)> = self
            .sources
            .iter()
            .filter(|(name, _)| name.as_str() != keep)
            .map(|(name, held)| (held.used, name.clone()))
            .collect();
        by_use.sort_unstable();
        for (_, name) in by_use {
            if self.leaves <= target {
                break;
            }
            if let Some(held) = self.sources.remove(&name) {
                let leaves = held.miner.leaves();
                self.leaves -= leaves.min(self.leaves);
                self.forgotten += leaves as u64 + held.miner.evicted();
            }
        }
    }

    /// The pattern `mined` (the last line mined of `source`) went to.
    pub fn describe(&self, source: &str, mined: Mined) -> Option<PatternInfo> {
        self.sources.get(source)?.miner.describe(mined)
    }

    /// The state of every source.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.sources
            .values()
            .map(|held| held.miner.snapshot())
            .collect()
    }

    /// Miners with `config` and the state of `snapshots`.
    pub fn restore(config: MinerConfig, snapshots: Vec<Snapshot>) -> Miner {
        let sources: HashMap<String, Held> = snapshots
            .into_iter()
            .map(|snapshot| {
                let source = snapshot.source().to_owned();
                let miner = SourceMiner::restore(snapshot, config);
                (source, Held { miner, used: 0 })
            })
            .collect();
        let leaves = sources.values().map(|held| held.miner.leaves()).sum();
        Miner {
            config,
            sources,
            leaves,
            ..Miner::default()
        }
    }

    /// Patterns held over every source.
    pub fn patterns(&self) -> usize {
        self.sources
            .values()
            .map(|held| held.miner.pattern_count())
            .sum()
    }

    /// Leaves (distinct masked lines) held over every source.
    pub fn leaves(&self) -> usize {
        self.leaves
    }

    /// The miner of `source`, if it has seen a line (and is not forgotten).
    pub fn source(&self, source: &str) -> Option<&SourceMiner> {
        self.sources.get(source).map(|held| &held.miner)
    }

    /// Sources held.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &SourceMiner)> {
        self.sources
            .iter()
            .map(|(name, held)| (name.as_str(), &held.miner))
    }

    /// Leaves evicted over every source, those of forgotten sources included (it only grows).
    pub fn evicted(&self) -> u64 {
        self.forgotten
            + self
                .sources
                .values()
                .map(|held| held.miner.evicted())
                .sum::<u64>()
    }
}

/// A pattern id as it is stored and searched: 16 lowercase hex digits.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests;
