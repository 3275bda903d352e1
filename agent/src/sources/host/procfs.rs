//! The host's counters as Linux's `/proc` shows them, and the gauges made from two samples.
//!
//! | gauge (unit) | from |
//! |---|---|
//! | `cpu.user`, `cpu.system`, `cpu.idle`, `cpu.iowait`, `cpu.steal` (percent of all CPUs' time since the previous sample; `user` includes `nice`, `system` includes `irq` and `softirq`) | `/proc/stat` |
//! | `cpu.count` | `/proc/stat` (`cpuN` lines) |
//! | `load.1m`, `load.5m`, `load.15m` | `/proc/loadavg` |
//! | `memory.total`, `memory.available`, `memory.used` (bytes), `memory.used_percent`; `swap.total`, `swap.used` (bytes) | `/proc/meminfo` |
//! | per interface (tag `interface`, loopback left out): `network.rx_bytes`, `network.tx_bytes`, `network.rx_packets`, `network.tx_packets`, `network.rx_errors`, `network.tx_errors`, `network.rx_dropped`, `network.tx_dropped` (per second) | `/proc/net/dev` |
//! | per block device (tag `device`; `loop` and `ram` devices left out): `disk.read_bytes`, `disk.write_bytes`, `disk.reads`, `disk.writes` (per second), `disk.busy_percent` | `/proc/diskstats` |
//!
//! Rates need two samples, so the first interval reports only the instantaneous gauges.

use std::collections::BTreeMap;

/// Jiffies per CPU state from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub steal: u64,
}

impl CpuTimes {
    fn total(self) -> u64 {
        self.user + self.system + self.idle + self.iowait + self.steal
    }
}

/// The summed `cpu` line and the number of `cpuN` lines.
pub fn parse_stat(text: &str) -> Option<(CpuTimes, usize)> {
    let mut times = None;
    let mut count = 0;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => {
                let values: Vec<u64> = fields.filter_map(|field| field.parse().ok()).collect();
                let at = |index: usize| values.get(index).copied().unwrap_or(0);
                times = Some(CpuTimes {
                    user: at(0) + at(1),
                    system: at(2) + at(5) + at(6),
                    idle: at(3),
                    iowait: at(4),
                    steal: at(7),
                });
            }
            Some(name) if name.starts_with("cpu") => count += 1,
            _ => {}
        }
    }
    times.map(|times| (times, count))
}

/// Percent of time per state between two samples.
pub fn cpu_percent(before: CpuTimes, after: CpuTimes) -> Vec<(&'static str, f64)> {
    let total = after.total().saturating_sub(before.total());
    if total == 0 {
        return Vec::new();
    }
    let share =
        |after: u64, before: u64| after.saturating_sub(before) as f64 * 100.0 / total as f64;
    vec![
        ("cpu.user", share(after.user, before.user)),
        ("cpu.system", share(after.system, before.system)),
        ("cpu.idle", share(after.idle, before.idle)),
        ("cpu.iowait", share(after.iowait, before.iowait)),
        ("cpu.steal", share(after.steal, before.steal)),
    ]
}

/// `(1m, 5m, 15m)` from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut fields = text.split_ascii_whitespace();
    Some((
        fields.next()?.parse().ok()?,
        fields.next()?.parse().ok()?,
        fields.next()?.parse().ok()?,
    ))
}

/// `/proc/meminfo` in bytes, by key.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut fields = rest.split_ascii_whitespace();
            let value: u64 = fields.next()?.parse().ok()?;
            let scale = if fields.next() == Some("kB") { 1024 } else { 1 };
            Some((key.to_owned(), value * scale))
        })
        .collect()
}

/// The memory gauges: `(name, unit, value)`.
pub fn memory_gauges(meminfo: &BTreeMap<String, u64>) -> Vec<(&'static str, &'static str, f64)> {
    let get = |key: &str| meminfo.get(key).copied();
    let mut gauges = Vec::new();
    if let (Some(total), Some(available)) = (get("MemTotal"), get("MemAvailable")) {
        let used = total.saturating_sub(available);
        gauges.push(("memory.total", "bytes", total as f64));
        gauges.push(("memory.available", "bytes", available as f64));
        gauges.push(("memory.used", "bytes", used as f64));
        if total > 0 {
            gauges.push((
                "memory.used_percent",
                "percent",
                used as f64 * 100.0 / total as f64,
            ));
        }
    }
    if let (Some(total), Some(free)) = (get("SwapTotal"), get("SwapFree")) {
        gauges.push(("swap.total", "bytes", total as f64));
        gauges.push(("swap.used", "bytes", total.saturating_sub(free) as f64));
    }
    gauges
}

/// Cumulative counters of one interface or device, in a fixed order of names.
pub type Counters = Vec<(&'static str, u64)>;

/// Per interface from `/proc/net/dev` (loopback left out).
pub fn parse_net_dev(text: &str) -> BTreeMap<String, Counters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let values: Vec<u64> = rest
                .split_ascii_whitespace()
                .filter_map(|field| field.parse().ok())
                .collect();
            if values.len() < 16 {
                return None;
            }
            Some((
                name.to_owned(),
                vec![
                    ("network.rx_bytes", values[0]),
                    ("network.rx_packets", values[1]),
                    ("network.rx_errors", values[2]),
                    ("network.rx_dropped", values[3]),
                    ("network.tx_bytes", values[8]),
                    ("network.tx_packets", values[9]),
                    ("network.tx_errors", values[10]),
                    ("network.tx_dropped", values[11]),
                ],
            ))
        })
        .collect()
}

/// Per block device from `/proc/diskstats` (`loop` and `ram` devices left out). Sectors are
/// 512 bytes whatever the device's own sector size.
pub fn parse_diskstats(text: &str) -> BTreeMap<String, Counters> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let name = *fields.get(2)?;
            if name.starts_with("loop") || name.starts_with("ram") {
                return None;
            }
            let at = |index: usize| {
                fields
                    .get(index)
                    .and_then(|value| value.parse::<u64>().ok())
            };
            Some((
                name.to_owned(),
                vec![
                    ("disk.reads", at(3)?),
                    ("disk.read_bytes", at(5)? * 512),
                    ("disk.writes", at(7)?),
                    ("disk.write_bytes", at(9)? * 512),
                    ("disk.busy_ms", at(12)?),
                ],
            ))
        })
        .collect()
}

/// Per-second rates between two samples of the same counters taken `seconds` apart; a counter
/// that went backwards (a reset) is left out. `disk.busy_ms` becomes `disk.busy_percent`.
pub fn rates(
    before: &Counters,
    after: &Counters,
    seconds: f64,
) -> Vec<(&'static str, &'static str, f64)> {
    if seconds <= 0.0 {
        return Vec::new();
    }
    before
        .iter()
        .zip(after)
        .filter(|((name, _), (other, _))| name == other)
        .filter_map(|((name, old), (_, new))| {
            let delta = new.checked_sub(*old)? as f64;
            Some(if *name == "disk.busy_ms" {
                (
                    "disk.busy_percent",
                    "percent",
                    (delta / 10.0 / seconds).min(100.0),
                )
            } else {
                let unit = if name.ends_with("bytes") {
                    "bytes/s"
                } else {
                    "1/s"
                };
                (*name, unit, delta / seconds)
            })
        })
        .collect()
}
