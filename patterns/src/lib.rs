//! Log patterns, mined online: every line gets the id of its template (constant tokens with
//! typed placeholders where values go, `<ip>:<num>`), per source, with one configuration for
//! every kind of log.
//!
//! [`tokens`] masks what varies by its type (numbers, addresses, ids, times, keyed values),
//! and [`kinds`] names each masked value's kind for the template;
//! [`miner`] groups the masked lines of a source into patterns and generalises them as it
//! sees more (a place that takes many different words becomes a value). [`Miner`] holds the
//! miners of every source. Memory is bounded: each source keeps at most
//! [`MinerConfig::max_leaves`] distinct masked lines, evicting the least recently seen.

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
    sources: HashMap<String, SourceMiner>,
}

impl Miner {
    /// Miners with `config`.
    pub fn new(config: MinerConfig) -> Miner {
        Miner {
            config,
            sources: HashMap::new(),
        }
    }

    /// Mines one line of `source` stamped `timestamp` (ns): the id of its pattern.
    pub fn mine(&mut self, source: &str, message: &str, timestamp: i64) -> u64 {
        if let Some(miner) = self.sources.get_mut(source) {
            return miner.mine(message, timestamp);
        }
        let config = self.config;
        self.sources
            .entry(source.to_owned())
            .or_insert_with(|| SourceMiner::new(source, config))
            .mine(message, timestamp)
    }

    /// Mines one line of `source`: where it went, for [`Miner::describe`].
    pub fn mine_line(&mut self, source: &str, message: &str, timestamp: i64) -> Mined {
        if let Some(miner) = self.sources.get_mut(source) {
            return miner.mine_line(message, timestamp);
        }
        let config = self.config;
        self.sources
            .entry(source.to_owned())
            .or_insert_with(|| SourceMiner::new(source, config))
            .mine_line(message, timestamp)
    }

    /// The pattern `mined` (the last line mined of `source`) went to.
    pub fn describe(&self, source: &str, mined: Mined) -> Option<PatternInfo> {
        self.sources.get(source)?.describe(mined)
    }

    /// The state of every source.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        self.sources.values().map(SourceMiner::snapshot).collect()
    }

    /// Miners with `config` and the state of `snapshots`.
    pub fn restore(config: MinerConfig, snapshots: Vec<Snapshot>) -> Miner {
        let sources = snapshots
            .into_iter()
            .map(|snapshot| {
                let source = snapshot.source().to_owned();
                (source, SourceMiner::restore(snapshot, config))
            })
            .collect();
        Miner { config, sources }
    }

    /// Patterns held over every source.
    pub fn patterns(&self) -> usize {
        self.sources.values().map(SourceMiner::pattern_count).sum()
    }

    /// Leaves (distinct masked lines) held over every source.
    pub fn leaves(&self) -> usize {
        self.sources.values().map(SourceMiner::leaves).sum()
    }

    /// The miner of `source`, if it has seen a line.
    pub fn source(&self, source: &str) -> Option<&SourceMiner> {
        self.sources.get(source)
    }

    /// Sources seen.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &SourceMiner)> {
        self.sources
            .iter()
            .map(|(name, miner)| (name.as_str(), miner))
    }

    /// Leaves evicted over every source.
    pub fn evicted(&self) -> u64 {
        self.sources.values().map(SourceMiner::evicted).sum()
    }
}

/// A pattern id as it is stored and searched: 16 lowercase hex digits.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests;
