//! The miner of one source: lines in, the id of each line's pattern out.
//!
//! Each line is masked ([`crate::tokens`]); lines that mask alike are one *leaf*, and leaves
//! are grouped into *patterns* (a union-find over the leaves, the oldest leaf the root). Two
//! rules group them, both checked when a leaf or a pattern's template changes:
//!
//! - **A place that varies.** Templates of one length that differ in one token only are one
//!   pattern when that place has taken [`MinerConfig::distinct_values`] different words, or
//!   when one of them already holds a value there (`rhost=<*>` takes `rhost=zummit.com`).
//!   The place needs context: at least two other constant tokens, so `generating <*>` does
//!   not swallow every two-word line. This is what finds user and host names without digits,
//!   and keeps apart what a program says in a few fixed ways (`startup` and `shutdown`).
//! - **Values of varying width.** Templates whose constant tokens are the same, in the same
//!   order, are one pattern however many values sit between them (`bytes sent` and
//!   `bytes (<*>) sent`); at least two constant tokens are needed.
//!
//! A template shows each value as its kind (`<ip>:<num>`, [`crate::kinds`]). Kinds do not take
//! part in grouping or in the id: lines whose values are of different kinds in one place are
//! one pattern all the same, shown with the wider kind there (`<*>` when none covers both),
//! a change that bumps [`PatternInfo::revision`] but keeps the id.
//!
//! A pattern's id is a hash of the source and its template, so every indexer that sees the
//! same lines gives them the same ids, and a restart that replays them does too. When a
//! pattern generalises (two merge, or a place becomes a value), its template and so its id
//! change; the ids it answered to before are kept in [`PatternInfo::merged`], so the lines
//! already stored with them still belong to it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::fast::RandomState;

use serde::{Deserialize, Serialize};

use crate::tokens;

/// Settings of the miner (one configuration for every kind of log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinerConfig {
    /// Different words seen in one place of a template that make the place a value.
    pub distinct_values: usize,
    /// Leaves (distinct masked lines) one source keeps at most; past it the least recently
    /// seen quarter is evicted (and counted).
    pub max_leaves: usize,
    /// Leaves all the sources of one [`crate::Miner`] keep at most; past it the least recently
    /// used sources are forgotten until a quarter is free (their leaves counted as evicted).
    pub max_total_leaves: usize,
}

impl Default for MinerConfig {
    fn default() -> MinerConfig {
        MinerConfig {
            distinct_values: 5,
            max_leaves: 10_000,
            max_total_leaves: 1_000_000,
        }
    }
}

/// A pattern as the miner knows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternInfo {
    /// Its id.
    pub id: u64,
    /// Its template, each value shown as its kind (`<num>`, `<ip>`; `<*>` for any).
    pub template: String,
    /// Lines mined into it.
    pub count: u64,
    /// Timestamp (ns) of its first and last line.
    pub first_seen: i64,
    /// See `first_seen`.
    pub last_seen: i64,
    /// Ids it had before it generalised, and ids of patterns merged into it.
    pub merged: Vec<u64>,
    /// Bumped whenever the template changes (a merge, or a place whose kind widened), so a
    /// consumer can tell when to describe it again.
    pub revision: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Node {
    tokens: Vec<Box<str>>,
    parent: u32,
    id: u64,
    count: u64,
    first_seen: i64,
    last_seen: i64,
    merged: Vec<u64>,
    /// The masked line of a leaf (what `exact` maps from).
    key: Box<str>,
    /// The kind of each token's value, as the template shows it (empty where a token holds
    /// none; a snapshot from before kinds has none at all, and shows `<*>`).
    #[serde(default)]
    shown: Vec<Box<str>>,
    /// A leaf's: the hash of the kinds of its last line ([`tokens::Masked::kinds_hash`]).
    #[serde(default)]
    kinds: u64,
    /// See [`PatternInfo::revision`].
    #[serde(default)]
    revision: u32,
}

impl Node {
    /// The pattern this (root) node is, as callers see it.
    fn info(&self) -> PatternInfo {
        PatternInfo {
            id: self.id,
            template: tokens::display(&self.tokens, &self.shown),
            count: self.count,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            merged: self.merged.clone(),
            revision: self.revision,
        }
    }
}

/// A source miner's state as it is saved and restored ([`SourceMiner::snapshot`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    source: String,
    nodes: Vec<Node>,
    /// Indexes of the nodes that are leaves (held in `exact`).
    leaves: Vec<u32>,
    evicted: u64,
}

impl Snapshot {
    /// The source the snapshot is of.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Where the last mined line went: its pattern's id, and the node that describes it (valid
/// until the miner mines again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mined {
    /// The pattern's id.
    pub id: u64,
    /// The pattern's revision ([`PatternInfo::revision`]): whether a description of it is
    /// still current can be told without describing it.
    pub revision: u32,
    node: u32,
}

/// The patterns of one source.
#[derive(Debug)]
pub struct SourceMiner {
    source: String,
    config: MinerConfig,
    nodes: Vec<Node>,
    /// Roots among the nodes (patterns).
    roots: usize,
    /// The hasher of the maps and of the keys below (seeded per process: they are never
    /// saved, and a seed nobody knows keeps crafted lines from colliding).
    state: RandomState,
    exact: HashMap<Box<str>, u32, RandomState>,
    /// A template with one place left out → the words seen there (by hash, and whether each
    /// holds a value), with the node holding each.
    slots: HashMap<u64, Vec<(u64, bool, u32)>, RandomState>,
    /// Scratch for [`SourceMiner::mergeable`]: each place's slot key, word hash and whether it
    /// holds a value.
    places: Vec<(u64, u64, bool)>,
    /// The constant tokens of a template → a node with them.
    skeletons: HashMap<u64, u32, RandomState>,
    evicted: u64,
    masked: tokens::Masked,
}

impl SourceMiner {
    /// An empty miner for `source`.
    pub fn new(source: &str, config: MinerConfig) -> SourceMiner {
        let state = RandomState::default();
        SourceMiner {
            source: source.to_owned(),
            config,
            nodes: Vec::new(),
            roots: 0,
            state: state.clone(),
            exact: HashMap::with_hasher(state.clone()),
            slots: HashMap::with_hasher(state.clone()),
            places: Vec::new(),
            skeletons: HashMap::with_hasher(state),
            evicted: 0,
            masked: tokens::Masked::default(),
        }
    }

    /// Mines one line stamped `timestamp` (ns): the id of its pattern.
    pub fn mine(&mut self, message: &str, timestamp: i64) -> u64 {
        self.mine_line(message, timestamp).id
    }

    /// Mines one line: where it went, which [`SourceMiner::describe`] turns into the pattern.
    pub fn mine_line(&mut self, message: &str, timestamp: i64) -> Mined {
        tokens::mask(message, &mut self.masked);
        let leaf = match self.exact.get(self.masked.line()) {
            Some(&leaf) => {
                let kinds = self.masked.kinds_hash();
                if self.nodes[leaf as usize].kinds != kinds {
                    self.nodes[leaf as usize].kinds = kinds;
                    self.widen(leaf);
                }
                leaf
            }
            None => {
                if self.exact.len() >= self.config.max_leaves.max(4) {
                    self.evict();
                }
                self.add_leaf(timestamp)
            }
        };
        self.touch(leaf, timestamp);
        let root = self.find(leaf);
        let node = &mut self.nodes[root as usize];
        node.count += 1;
        node.first_seen = node.first_seen.min(timestamp);
        node.last_seen = node.last_seen.max(timestamp);
        Mined {
            id: node.id,
            revision: node.revision,
            node: root,
        }
    }

    /// The pattern the line of `mined` went to, as it is now; `None` when the miner has mined
    /// since (`mined` no longer names it).
    pub fn describe(&self, mined: Mined) -> Option<PatternInfo> {
        let node = self.nodes.get(mined.node as usize)?;
        (node.id == mined.id && node.parent == mined.node).then(|| node.info())
    }

    /// The state, to restore with [`SourceMiner::restore`] (after a restart, say).
    pub fn snapshot(&self) -> Snapshot {
        let mut leaves: Vec<u32> = self.exact.values().copied().collect();
        leaves.sort_unstable();
        Snapshot {
            source: self.source.clone(),
            nodes: self.nodes.clone(),
            leaves,
            evicted: self.evicted,
        }
    }

    /// A miner with `snapshot`'s state: lines of the shapes it knew get the ids they had.
    /// A snapshot that does not hold together (a parent or leaf out of range) restores as an
    /// empty miner, which learns the shapes again.
    pub fn restore(snapshot: Snapshot, config: MinerConfig) -> SourceMiner {
        let mut miner = SourceMiner::new(&snapshot.source, config);
        let count = snapshot.nodes.len();
        // A parent is never younger than its child (merges keep the oldest root), so a
        // snapshot that says otherwise could hold a cycle.
        let sound = snapshot
            .nodes
            .iter()
            .enumerate()
            .all(|(index, node)| node.parent as usize <= index)
            && snapshot.leaves.iter().all(|&leaf| (leaf as usize) < count);
        if !sound {
            return miner;
        }
        miner.evicted = snapshot.evicted;
        miner.nodes = snapshot.nodes;
        let leaves: std::collections::HashSet<u32> = snapshot.leaves.into_iter().collect();
        miner.rebuild(&leaves);
        miner
    }

    /// Patterns now (roots only), largest first.
    pub fn patterns(&self) -> Vec<PatternInfo> {
        let mut out: Vec<PatternInfo> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(index, node)| node.parent as usize == *index)
            .map(|(_, node)| node.info())
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.id.cmp(&b.id)));
        out
    }

    /// Leaves evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Patterns held (roots).
    pub fn pattern_count(&self) -> usize {
        self.roots
    }

    /// Distinct masked lines held.
    pub fn leaves(&self) -> usize {
        self.exact.len()
    }

    fn add_leaf(&mut self, timestamp: i64) -> u32 {
        let index = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let masked = &self.masked;
        let tokens: Vec<Box<str>> = (0..masked.len())
            .map(|index| masked.token(index).into())
            .collect();
        let shown: Vec<Box<str>> = (0..masked.len())
            .map(|index| masked.kind(index).into())
            .collect();
        let key: Box<str> = masked.line().into();
        self.nodes.push(Node {
            id: pattern_id(&self.source, &tokens),
            tokens,
            parent: index,
            count: 0,
            first_seen: timestamp,
            last_seen: timestamp,
            merged: Vec::new(),
            key: key.clone(),
            shown,
            kinds: masked.kinds_hash(),
            revision: 0,
        });
        self.exact.insert(key, index);
        self.roots += 1;
        self.settle(index);
        index
    }

    /// Widens the kinds the pattern of `leaf` shows to cover the line just masked (which
    /// masked like `leaf`). A pattern whose template is longer than the leaf (values of
    /// varying width) keeps the kinds it shows.
    fn widen(&mut self, leaf: u32) {
        let root = self.find(leaf) as usize;
        let node = &mut self.nodes[root];
        if node.tokens.len() != self.masked.len() || node.shown.len() != node.tokens.len() {
            return;
        }
        let mut changed = false;
        for (index, shown) in node.shown.iter_mut().enumerate() {
            if shown.is_empty() {
                continue;
            }
            let seen = self.masked.kind(index);
            let wider = crate::kinds::join(shown, seen);
            if wider != &**shown {
                *shown = wider.into();
                changed = true;
            }
        }
        if changed {
            node.revision = node.revision.wrapping_add(1);
        }
    }

    fn touch(&mut self, leaf: u32, timestamp: i64) {
        let node = &mut self.nodes[leaf as usize];
        node.last_seen = node.last_seen.max(timestamp);
    }

    fn find(&mut self, mut node: u32) -> u32 {
        let mut root = node;
        while self.nodes[root as usize].parent != root {
            root = self.nodes[root as usize].parent;
        }
        while self.nodes[node as usize].parent != root {
            let next = self.nodes[node as usize].parent;
            self.nodes[node as usize].parent = root;
            node = next;
        }
        root
    }

    /// Registers `node`'s template and applies the grouping rules until nothing merges.
    fn settle(&mut self, mut node: u32) {
        while let Some(group) = self.mergeable(node) {
            node = self.merge(group);
        }
    }

    /// Registers the template of root `node`; the roots to merge with it, if a rule says so.
    fn mergeable(&mut self, node: u32) -> Option<Vec<u32>> {
        // Keys first, from the template borrowed (no copy of it): the skeleton's, and for each
        // place the key of the template without it (the sum of the other places' hashes).
        let template = &self.nodes[node as usize].tokens;
        let state = &self.state;
        let mut skeleton = state.build_hasher();
        let mut skeleton_parts = 0_usize;
        let mut constants = 0_usize;
        self.places.clear();
        let mut sum = 0_u64;
        for (place, token) in template.iter().enumerate() {
            if let Some(part) = skeleton_part(token) {
                part.hash(&mut skeleton);
                skeleton_parts += 1;
            }
            let value = tokens::has_value(token);
            constants += usize::from(!value);
            let word = state.hash_one(token);
            let at = state.hash_one((place, token));
            sum = sum.wrapping_add(at);
            self.places.push((at, word, value));
        }
        let length = template.len() as u64;
        for entry in &mut self.places {
            // The slot key of this place: the template's length and every other place.
            entry.0 = state.hash_one((length, sum.wrapping_sub(entry.0)));
        }
        if skeleton_parts >= 2 {
            let key = skeleton.finish();
            match self.skeletons.get(&key).copied() {
                Some(other) => {
                    let other = self.find(other);
                    if other != node {
                        return Some(vec![other, node]);
                    }
                }
                None => {
                    self.skeletons.insert(key, node);
                }
            }
        }
        for place in 0..self.places.len() {
            let (key, word, value) = self.places[place];
            let others = constants - usize::from(!value);
            if others < 2 {
                continue;
            }
            let values = self.slots.entry(key).or_default();
            match values.iter_mut().find(|(seen, _, _)| *seen == word) {
                Some(entry) => entry.2 = node,
                None => values.push((word, value, node)),
            }
            let any_value = values.iter().any(|(_, value, _)| *value);
            if !(any_value || values.len() >= self.config.distinct_values) || values.len() < 2 {
                continue;
            }
            let holders: Vec<u32> = values.iter().map(|(_, _, holder)| *holder).collect();
            let mut roots: Vec<u32> = holders
                .into_iter()
                .map(|holder| self.find(holder))
                .collect();
            roots.sort_unstable();
            roots.dedup();
            if roots.len() > 1 {
                return Some(roots);
            }
        }
        None
    }

    /// Merges `roots` into the oldest; its template generalises. Returns it.
    fn merge(&mut self, roots: Vec<u32>) -> u32 {
        let root = roots.iter().copied().min().unwrap_or(roots[0]);
        let mut template = self.nodes[root as usize].tokens.clone();
        let mut shown = self.nodes[root as usize].shown.clone();
        let mut merged = std::mem::take(&mut self.nodes[root as usize].merged);
        merged.push(self.nodes[root as usize].id);
        let (mut count, mut first, mut last) = {
            let node = &self.nodes[root as usize];
            (node.count, node.first_seen, node.last_seen)
        };
        for &other in roots.iter().filter(|&&other| other != root) {
            let node = &mut self.nodes[other as usize];
            node.parent = root;
            self.roots -= 1;
            if node.tokens.len() == template.len() {
                let mut generalised = Vec::with_capacity(template.len());
                let mut kinds = Vec::with_capacity(template.len());
                for (index, (a, b)) in template.iter().zip(&node.tokens).enumerate() {
                    let token: Box<str> = tokens::generalise(a, b).into();
                    let kind = match (shown.get(index), node.shown.get(index)) {
                        _ if !tokens::has_value(&token) => "",
                        (Some(x), Some(y)) if a == b && !x.is_empty() && !y.is_empty() => {
                            crate::kinds::join(x, y)
                        }
                        _ => crate::kinds::ANY,
                    };
                    kinds.push(kind.into());
                    generalised.push(token);
                }
                template = generalised;
                shown = kinds;
            } else if node.tokens.len() > template.len() {
                template = node.tokens.clone();
                shown = node.shown.clone();
            }
            merged.push(node.id);
            merged.append(&mut node.merged);
            count += node.count;
            first = first.min(node.first_seen);
            last = last.max(node.last_seen);
        }
        let id = pattern_id(&self.source, &template);
        merged.retain(|&old| old != id);
        merged.sort_unstable();
        merged.dedup();
        let node = &mut self.nodes[root as usize];
        node.tokens = template;
        node.shown = shown;
        node.revision = node.revision.wrapping_add(1);
        node.id = id;
        node.merged = merged;
        node.count = count;
        node.first_seen = first;
        node.last_seen = last;
        root
    }

    /// Keeps the most recently seen three quarters of the leaves (and the patterns they
    /// belong to), and rebuilds the indexes from them.
    fn evict(&mut self) {
        let mut leaves: Vec<(i64, u32)> = self
            .exact
            .values()
            .map(|&leaf| (self.nodes[leaf as usize].last_seen, leaf))
            .collect();
        leaves.sort_unstable_by(|a, b| b.cmp(a));
        let keep = self.exact.len() * 3 / 4;
        let kept: Vec<u32> = leaves.iter().take(keep).map(|&(_, leaf)| leaf).collect();
        self.evicted += (leaves.len() - kept.len()) as u64;
        // Survivors: each kept leaf and its root, renumbered in their old order.
        let mut survivors: Vec<u32> = Vec::with_capacity(kept.len() * 2);
        for &leaf in &kept {
            survivors.push(leaf);
            survivors.push(self.find(leaf));
        }
        survivors.sort_unstable();
        survivors.dedup();
        let renumber: HashMap<u32, u32> = survivors
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, u32::try_from(new).unwrap_or(u32::MAX)))
            .collect();
        let mut old_nodes: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        let kept_leaves: std::collections::HashSet<u32> = kept.iter().copied().collect();
        let mut leaves = std::collections::HashSet::with_capacity(kept_leaves.len());
        for &old in &survivors {
            let Some(mut node) = old_nodes[old as usize].take() else {
                continue;
            };
            // find() above pointed every kept leaf at its root, which survives too.
            node.parent = renumber
                .get(&node.parent)
                .copied()
                .unwrap_or(renumber[&old]);
            if kept_leaves.contains(&old) {
                leaves.insert(renumber[&old]);
            }
            self.nodes.push(node);
        }
        self.rebuild(&leaves);
    }

    /// Rebuilds the indexes from the nodes, `leaves` being those that are leaves.
    fn rebuild(&mut self, leaves: &std::collections::HashSet<u32>) {
        self.exact.clear();
        self.slots.clear();
        self.skeletons.clear();
        for &leaf in leaves {
            let key = self.nodes[leaf as usize].key.clone();
            self.exact.insert(key, leaf);
        }
        self.roots = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(index, node)| node.parent as usize == *index)
            .count();
        for index in 0..self.nodes.len() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            if self.find(index) == index {
                self.settle(index);
            }
        }
    }
}

/// A template's id: FNV-1a (64 bits) over the source and the template's tokens, stable across
/// processes and versions.
fn pattern_id(source: &str, tokens: &[Box<str>]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(source.as_bytes());
    for token in tokens {
        feed(&[0xff]);
        feed(token.as_bytes());
    }
    hash
}

/// What a token adds to a template's skeleton: a constant token itself, a keyed value its key.
fn skeleton_part(token: &str) -> Option<&str> {
    if !tokens::has_value(token) {
        return Some(token);
    }
    let (prefix, core, _) = tokens::split_affix(token);
    tokens::key_len(core).map(|key| &token[..prefix.len() + key])
}
