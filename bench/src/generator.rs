//! The deterministic load: envelope `i` of a run is a pure function of `(seed, i)`, so any
//! number of concurrent streams produce the same corpus, and `sluice-bench corpus` writes the
//! very lines `sluice-bench load` sent.
//!
//! A log line is a Loghub template of a system (chosen by its frequency in the sample) whose
//! slots are filled with values seen in that slot, behind a line prefix of the same system.
//! A share of the values has its digits redrawn (`mutation`), which is what keeps the
//! generated lines about as compressible as real ones: the sample alone repeats too much, and
//! redrawing every number makes logs unrealistically incompressible.

use std::collections::HashMap;

use sluice_proto::v2::{Counter, Envelope, Gauge, GaugeValue, Log, Timer, envelope};

use crate::loghub::Model;

/// SplitMix64: small, fast and good enough to pick templates and digits.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator for item `index` of the run seeded `seed`.
    pub fn for_item(seed: u64, index: u64) -> Rng {
        let mut rng = Rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound > 0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Consecutive items from one source.
pub const RUN: u64 = 32;

/// What the generator makes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seed of the run.
    pub seed: u64,
    /// Share of slot values whose digits are redrawn.
    pub mutation: f64,
    /// Share of envelopes that are metrics (counters, gauges, timers) instead of log lines.
    pub metrics_share: f64,
    /// Applications per system; source ids are `<system>-<n>`.
    pub apps_per_system: u64,
    /// Instances per application.
    pub instances: u64,
}

/// One generated item.
pub enum Item {
    /// A log line: its source and text.
    Log {
        /// Source id.
        source_id: String,
        /// Instance id.
        instance_id: String,
        /// The line.
        line: String,
        /// Whether it is an error line (sent as `ERR`).
        error: bool,
    },
    /// A metric envelope (without timestamp).
    Metric(Envelope),
}

/// The generator over a loaded Loghub model.
pub struct Generator {
    model: Model,
    settings: Settings,
    /// Per system, the id strings (prebuilt to keep generation cheap).
    source_ids: Vec<Vec<String>>,
    instance_ids: Vec<String>,
}

impl Generator {
    /// A generator for `model`.
    pub fn new(model: Model, settings: Settings) -> Generator {
        let source_ids = model
            .systems
            .iter()
            .map(|system| {
                (0..settings.apps_per_system)
                    .map(|app| format!("{}-{app}", system.name))
                    .collect()
            })
            .collect();
        let instance_ids = (0..settings.instances).map(|n| n.to_string()).collect();
        Generator {
            model,
            settings,
            source_ids,
            instance_ids,
        }
    }

    /// Item `index` of the run.
    ///
    /// Items come in runs of [`RUN`] consecutive indexes from one source, as an application's
    /// lines do: a run walks consecutive lines of its system's sample (so line prefixes and
    /// the order of events are real), and each slot value is, with probability `mutation`,
    /// swapped for another value seen in that slot, a third of those with digits redrawn.
    pub fn item(&self, index: u64) -> Item {
        let mut run = Rng::for_item(self.settings.seed ^ 0x5EED_0F20_25AA, index / RUN);
        let mut rng = Rng::for_item(self.settings.seed, index);
        let system_at = run.below(self.model.systems.len() as u64) as usize;
        let source_id =
            self.source_ids[system_at][run.below(self.settings.apps_per_system) as usize].clone();
        let instance_id = self.instance_ids[run.below(self.settings.instances) as usize].clone();
        if rng.unit() < self.settings.metrics_share {
            return Item::Metric(metric(&mut rng, source_id, instance_id));
        }
        let system = &self.model.systems[system_at];
        let first_row = run.below(system.rows.len() as u64);
        let row = &system.rows[((first_row + index % RUN) % system.rows.len() as u64) as usize];
        let template = &system.templates[row.template];
        let mut line = String::with_capacity(160);
        line.push_str(&system.prefixes[row.prefix]);
        for (slot, piece) in template.pieces.iter().enumerate() {
            line.push_str(piece);
            let (Some(own), Some(pool)) = (row.values.get(slot), template.slot_values.get(slot))
            else {
                continue;
            };
            if rng.unit() < self.settings.mutation {
                let value = &pool[rng.below(pool.len() as u64) as usize];
                if rng.below(3) == 0 {
                    redraw_digits(&mut rng, value, &mut line);
                } else {
                    line.push_str(value);
                }
            } else {
                line.push_str(own);
            }
        }
        Item::Log {
            source_id,
            instance_id,
            line,
            error: template.error,
        }
    }

    /// Envelope `index` of the run, stamped `timestamp`.
    pub fn envelope(&self, index: u64, timestamp: i64) -> Envelope {
        match self.item(index) {
            Item::Log {
                source_id,
                instance_id,
                line,
                error,
            } => Envelope {
                timestamp,
                source_id,
                instance_id,
                tags: HashMap::from([
                    ("source_type".to_owned(), "APP/PROC/WEB".to_owned()),
                    ("deployment".to_owned(), "bench".to_owned()),
                ]),
                message: Some(envelope::Message::Log(Log {
                    payload: line.into_bytes(),
                    r#type: if error { 1 } else { 0 },
                })),
                ..Default::default()
            },
            Item::Metric(mut envelope) => {
                envelope.timestamp = timestamp;
                if let Some(envelope::Message::Timer(timer)) = &mut envelope.message {
                    // The timer was made with start 0 and stop = its duration.
                    timer.start = timestamp - timer.stop;
                    timer.stop = timestamp;
                }
                envelope
            }
        }
    }
}

/// Copies `value`, drawing each digit anew (a leading digit stays non-zero).
fn redraw_digits(rng: &mut Rng, value: &str, out: &mut String) {
    let mut previous_digit = false;
    for c in value.chars() {
        if c.is_ascii_digit() {
            let digit = if previous_digit {
                rng.below(10)
            } else {
                1 + rng.below(9)
            };
            out.push(char::from(b'0' + digit as u8));
            previous_digit = true;
        } else {
            out.push(c);
            previous_digit = false;
        }
    }
}

fn metric(rng: &mut Rng, source_id: String, instance_id: String) -> Envelope {
    let message = match rng.below(3) {
        0 => envelope::Message::Counter(Counter {
            name: "requests".to_owned(),
            delta: 1 + rng.below(20),
            total: rng.below(1_000_000),
        }),
        1 => envelope::Message::Gauge(Gauge {
            metrics: HashMap::from([
                (
                    "cpu".to_owned(),
                    GaugeValue {
                        unit: "percentage".to_owned(),
                        value: (rng.unit() * 1000.0).round() / 10.0,
                    },
                ),
                (
                    "memory".to_owned(),
                    GaugeValue {
                        unit: "bytes".to_owned(),
                        value: (64 + rng.below(960)) as f64 * 1_048_576.0,
                    },
                ),
            ]),
        }),
        _ => {
            // Exponential durations whose mean depends on the source: p99 differs by source.
            let mean_ms = 5.0 + (source_id.len() as f64 * 7.0) % 60.0;
            let duration_ns = (-(1.0 - rng.unit()).ln() * mean_ms * 1e6) as i64;
            envelope::Message::Timer(Timer {
                name: "http".to_owned(),
                start: 0,
                stop: duration_ns,
            })
        }
    };
    Envelope {
        source_id,
        instance_id,
        message: Some(message),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrawn_digits_keep_the_shape() {
        let mut rng = Rng::for_item(1, 2);
        let mut out = String::new();
        redraw_digits(&mut rng, "blk_-1234 at 10.0.0.7:50010", &mut out);
        assert_eq!(out.len(), "blk_-1234 at 10.0.0.7:50010".len());
        assert!(out.starts_with("blk_-"));
        assert_ne!(&out[5..6], "0");
    }

    #[test]
    fn items_are_a_function_of_seed_and_index() {
        let mut a = Rng::for_item(7, 1000);
        let mut b = Rng::for_item(7, 1000);
        assert_eq!(a.next(), b.next());
        assert_ne!(Rng::for_item(7, 1001).next(), Rng::for_item(7, 1000).next());
    }
}
