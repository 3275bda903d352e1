use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// A small deterministic generator (xorshift), so the tests need no dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn word(&mut self) -> String {
        let length = 3 + self.below(6);
        (0..length)
            .map(|_| char::from(b'a' + u8::try_from(self.below(26)).unwrap_or(0)))
            .collect()
    }
}

const NAMES: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];

/// Ten shapes of line and the template each must read back as.
fn ten_templates(random: &mut Random, shape: u64) -> (String, &'static str) {
    let n = random.below(100_000);
    let name = NAMES[usize::try_from(random.below(12)).unwrap_or(0)];
    match shape {
        0 => (
            format!(
                "Receiving block blk_{n} src: /10.0.{}.{}:50010 dest: /10.0.0.{}:50010",
                n % 256,
                n % 7,
                n % 9
            ),
            "Receiving block blk_<num> src: /<ip>:<num> dest: /<ip>:<num>",
        ),
        1 => (
            format!(
                "Accepted password for {name} from 192.168.{}.{} port {} ssh2",
                n % 256,
                n % 200,
                1024 + n % 60_000
            ),
            "Accepted password for <*> from <ip> port <num> ssh2",
        ),
        2 => (
            format!("session opened for user {name} by (uid={})", n % 1000),
            "session opened for user <*> by (uid=<num>)",
        ),
        3 => (
            format!("GET /api/v1/items/{n} returned 200 in {} ms", n % 900),
            "GET <path> returned <num> in <duration>",
        ),
        4 => (
            format!("worker {n} finished job {name} after {} retries", n % 5),
            "worker <num> finished job <*> after <num> retries",
        ),
        5 => (
            format!(
                "cache miss for key user:{n} in region eu-west-{}",
                n % 3 + 1
            ),
            "cache miss for key user:<num> in region eu-west-<num>",
        ),
        6 => (
            format!("Connection reset by peer {name}.example.org while reading"),
            "Connection reset by peer <*> while reading",
        ),
        7 => (
            format!(
                "disk usage on /dev/sda{} at {}.{}% threshold exceeded",
                n % 4 + 1,
                n % 100,
                n % 10
            ),
            "disk usage on <path> at <num>% threshold exceeded",
        ),
        8 => (
            format!(
                "transaction 0x{n:08x} committed rows={} lag={}ms",
                n % 500,
                n % 50
            ),
            "transaction <hex> committed rows=<num> lag=<duration>",
        ),
        _ => (
            format!(
                "OutOfMemoryError in thread pool-{}-thread-{} heap={}MB",
                n % 9,
                n % 31,
                n % 4096
            ),
            "OutOfMemoryError in thread pool-<num>-thread-<num> heap=<size>",
        ),
    }
}

#[test]
fn lines_of_ten_templates_give_exactly_ten_patterns_with_the_values_as_placeholders() {
    let mut random = Random(0x5eed);
    let mut miner = Miner::default();
    let mut ids: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut lines = Vec::new();
    for time in 0..5_000_i64 {
        let shape = random.below(10);
        let (line, _) = ten_templates(&mut random, shape);
        let id = miner.mine("app", &line, time);
        lines.push((shape, line, id));
        ids.entry(shape).or_default().insert(id);
    }
    let patterns = miner
        .source("app")
        .map(SourceMiner::patterns)
        .unwrap_or_default();
    assert_eq!(patterns.len(), 10, "{patterns:#?}");
    let mut probe = Random(0x5eed);
    for shape in 0..10 {
        let (_, template) = ten_templates(&mut probe, shape);
        let found = patterns.iter().find(|pattern| pattern.template == template);
        let found = found.unwrap_or_else(|| panic!("no pattern reads {template:?}: {patterns:#?}"));
        // Every line of the shape was given the pattern's id, or one it had before it
        // generalised.
        let answers: BTreeSet<u64> = found.merged.iter().copied().chain([found.id]).collect();
        assert!(
            ids[&shape].is_subset(&answers),
            "shape {shape}: ids {:?} outside {answers:?}",
            ids[&shape]
        );
    }
    // A line mined again now gets the final id of its shape.
    for (shape, line, _) in lines.iter().take(50) {
        let id = miner.mine("app", line, 10_000);
        let (_, template) = ten_templates(&mut Random(1), *shape);
        let pattern = patterns.iter().find(|pattern| pattern.id == id);
        assert_eq!(
            pattern.map(|pattern| pattern.template.as_str()),
            Some(template)
        );
    }
}

#[test]
fn ids_depend_on_the_source_and_the_template_only() {
    let mut first = Miner::default();
    let mut second = Miner::default();
    let line = "Connection from 10.0.0.1 port 22 closed";
    let a = first.mine("web", line, 1);
    assert_eq!(
        second.mine("web", line, 99),
        a,
        "the same line in another miner"
    );
    assert_eq!(
        second.mine("web", "Connection from 10.9.9.9 port 2200 closed", 100),
        a
    );
    assert_ne!(first.mine("worker", line, 1), a, "another source");
    assert_eq!(format_id(a).len(), 16);
}

#[test]
fn a_place_that_takes_many_words_becomes_a_value_and_few_words_stay_apart() {
    let mut miner = Miner::default();
    let start = miner.mine("sys", "cupsd startup succeeded", 1);
    let stop = miner.mine("sys", "cupsd shutdown succeeded", 2);
    assert_ne!(start, stop, "two fixed words are two messages");
    let mut ids = BTreeSet::new();
    for (time, name) in NAMES.iter().enumerate() {
        let time = i64::try_from(time).unwrap_or(0);
        ids.insert(miner.mine(
            "sys",
            &format!("Invalid user {name} from 10.0.0.{time}"),
            time,
        ));
    }
    let patterns = miner
        .source("sys")
        .map(SourceMiner::patterns)
        .unwrap_or_default();
    let invalid = patterns
        .iter()
        .find(|pattern| pattern.template == "Invalid user <*> from <ip>")
        .unwrap_or_else(|| panic!("{patterns:#?}"));
    assert_eq!(invalid.count, 12);
    // The first four names came before the place was known to vary: their lines keep the
    // ids they were stored with, which the pattern still answers to.
    for id in ids {
        assert!(id == invalid.id || invalid.merged.contains(&id), "{id:x}");
    }
}

#[test]
fn values_of_varying_width_between_the_same_words_are_one_pattern() {
    let mut miner = Miner::default();
    let a = miner.mine(
        "proxy",
        "conn close, 403 bytes sent, 1200 bytes received, lifetime 00:01",
        1,
    );
    let b = miner.mine(
        "proxy",
        "conn close, 403 bytes (1.2 KB) sent, 1200 bytes received, lifetime <1 sec",
        2,
    );
    let patterns = miner
        .source("proxy")
        .map(SourceMiner::patterns)
        .unwrap_or_default();
    assert_eq!(patterns.len(), 1, "{patterns:#?}");
    assert!(patterns[0].id == b && (a == b || patterns[0].merged.contains(&a)));
}

#[test]
fn one_million_unique_lines_keep_the_leaves_at_the_cap_and_count_the_evictions() {
    let config = MinerConfig {
        max_leaves: 2_000,
        ..MinerConfig::default()
    };
    let mut miner = Miner::new(config);
    let mut random = Random(7);
    for time in 0..1_000_000_i64 {
        let words = 2 + random.below(3);
        let line: Vec<String> = (0..words).map(|_| random.word()).collect();
        miner.mine("noise", &line.join(" "), time);
        let leaves = miner.source("noise").map_or(0, SourceMiner::leaves);
        assert!(leaves <= 2_000, "{leaves} leaves after {time} lines");
    }
    let evicted = miner.evicted();
    assert!(
        evicted >= 990_000,
        "{evicted} evicted of a million distinct lines"
    );
    let source = miner
        .source("noise")
        .map(SourceMiner::patterns)
        .unwrap_or_default();
    assert!(source.len() <= 2_000, "{} patterns", source.len());
}

#[test]
fn arbitrary_lines_never_panic() {
    let mut random = Random(11);
    let mut miner = Miner::new(MinerConfig {
        max_leaves: 64,
        ..MinerConfig::default()
    });
    let alphabet: Vec<char> = " \t=:\"()[]{}<>,;.'/_-#@0123456789abcXYZé\u{1}\u{0}"
        .chars()
        .collect();
    for time in 0..20_000 {
        let length = random.below(40);
        let line: String = (0..length)
            .map(|_| alphabet[usize::try_from(random.below(alphabet.len() as u64)).unwrap_or(0)])
            .collect();
        miner.mine("fuzz", &line, time);
    }
}

#[test]
fn a_restored_miner_gives_the_lines_it_knew_the_ids_they_had() {
    let mut random = Random(0xabc);
    let mut miner = Miner::default();
    for time in 0..3_000_i64 {
        let shape = random.below(10);
        let (line, _) = ten_templates(&mut random, shape);
        miner.mine("app", &line, time);
    }
    let text = serde_json_roundtrip(&miner.snapshot());
    let mut restored = Miner::restore(MinerConfig::default(), text);
    let mut probe = random.0;
    let mut again = Random(probe);
    for time in 3_000..4_000_i64 {
        let shape = again.below(10);
        let (line, _) = ten_templates(&mut again, shape);
        let expected = miner.mine("app", &line, time);
        assert_eq!(restored.mine("app", &line, time), expected, "{line}");
        probe = again.0;
    }
    assert_eq!(probe, again.0);
    let before = miner.source("app").map(SourceMiner::patterns);
    let after = restored.source("app").map(SourceMiner::patterns);
    assert_eq!(before, after);
}

/// What a snapshot goes through on its way to disk and back.
fn serde_json_roundtrip(snapshots: &[Snapshot]) -> Vec<Snapshot> {
    let text = serde_json::to_string(snapshots).expect("encode");
    serde_json::from_str(&text).expect("decode")
}

#[test]
fn a_snapshot_that_does_not_hold_together_restores_empty() {
    let mut miner = Miner::default();
    miner.mine("app", "one two three", 1);
    miner.mine("app", "one two four", 2);
    let text = serde_json::to_string(&miner.snapshot()).expect("encode");
    let broken = text.replace("\"parent\":0", "\"parent\":7");
    assert_ne!(broken, text);
    let restored = Miner::restore(
        MinerConfig::default(),
        serde_json::from_str(&broken).expect("decode"),
    );
    assert_eq!(restored.patterns(), 0);
}

#[test]
fn the_last_line_describes_its_pattern_until_the_next_line() {
    let mut miner = Miner::default();
    let mined = miner.mine_line("app", "GET /a returned 200 in 5 ms", 7);
    let pattern = miner.describe("app", mined).expect("described");
    assert_eq!(pattern.id, mined.id);
    assert_eq!(pattern.template, "GET /a returned <num> in <duration>");
    assert_eq!((pattern.count, pattern.first_seen), (1, 7));
}

#[test]
fn a_place_whose_values_change_kind_widens_and_keeps_its_id() {
    let mut miner = Miner::default();
    let first = miner.mine_line("app", "request 1234 served by worker 7", 1);
    let before = miner.describe("app", first).expect("described");
    assert_eq!(before.template, "request <num> served by worker <num>");
    // Decimal digits read as hexadecimal too: the place widens to `<hex>`.
    let second = miner.mine_line("app", "request 3fa9c0de served by worker 7", 2);
    let hex = miner.describe("app", second).expect("described");
    assert_eq!(hex.template, "request <hex> served by worker <num>");
    assert_eq!(hex.id, before.id, "kinds are not part of the id");
    assert!(hex.revision > before.revision);
    // An address has nothing in common with either.
    let third = miner.mine_line("app", "request 10.0.0.1 served by worker 9", 3);
    let any = miner.describe("app", third).expect("described");
    assert_eq!(any.template, "request <*> served by worker <num>");
    assert_eq!(any.id, before.id);
    assert!(any.revision > hex.revision);
    // Lines of the kinds seen before change nothing more.
    let fourth = miner.mine_line("app", "request 99 served by worker 3", 4);
    assert_eq!(
        miner.describe("app", fourth),
        Some(PatternInfo {
            count: 4,
            last_seen: 4,
            ..any
        })
    );
}

#[test]
fn all_sources_together_stay_at_the_total_cap_forgetting_the_least_recently_used() {
    const WORDS: [&str; 10] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    ];
    let config = MinerConfig {
        max_leaves: 10,
        max_total_leaves: 100,
        ..MinerConfig::default()
    };
    let mut miner = Miner::new(config);
    for source in 0..50 {
        for (time, word) in WORDS.iter().enumerate() {
            let time = i64::try_from(time).unwrap_or(0);
            miner.mine(
                &format!("app-{source}"),
                &format!("queue {word} drained"),
                time,
            );
        }
        assert!(miner.leaves() <= 100, "{} leaves", miner.leaves());
        let held: usize = miner.sources().map(|(_, source)| source.leaves()).sum();
        assert_eq!(held, miner.leaves());
    }
    // Every source held ten leaves; what is not held any more was counted.
    assert_eq!(miner.evicted(), 500 - miner.leaves() as u64);
    assert!(
        miner.source("app-49").is_some(),
        "the latest source is kept"
    );
    assert!(
        miner.source("app-0").is_none(),
        "the oldest source is forgotten"
    );
}
