use super::procfs::{
    CpuTimes, cpu_percent, memory_gauges, parse_diskstats, parse_loadavg, parse_meminfo,
    parse_net_dev, parse_stat, rates,
};

#[test]
fn cpu_load_and_memory() {
    let stat = "cpu  100 10 50 800 20 5 5 10 0 0\ncpu0 50 5 25 400 10 2 3 5 0 0\ncpu1 50 5 25 400 10 3 2 5 0 0\nintr 1 2 3\n";
    let (before, count) = parse_stat(stat).expect("cpu line");
    assert_eq!(count, 2);
    assert_eq!(
        before,
        CpuTimes {
            user: 110,
            system: 60,
            idle: 800,
            iowait: 20,
            steal: 10
        }
    );
    let after = CpuTimes {
        user: 140,
        system: 70,
        idle: 850,
        iowait: 30,
        steal: 10,
    };
    let percent = cpu_percent(before, after);
    assert_eq!(percent[0], ("cpu.user", 30.0));
    assert_eq!(percent[2], ("cpu.idle", 50.0));
    let total: f64 = percent.iter().map(|(_, value)| value).sum();
    assert!((total - 100.0).abs() < 1e-9);
    assert!(cpu_percent(before, before).is_empty(), "no time passed");

    assert_eq!(
        parse_loadavg("0.52 0.58 0.59 2/815 12345\n"),
        Some((0.52, 0.58, 0.59))
    );
    let memory = memory_gauges(&parse_meminfo(
        "MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
    ));
    assert!(memory.contains(&("memory.total", "bytes", 1_024_000.0)));
    assert!(memory.contains(&("memory.used", "bytes", 768_000.0)));
    assert!(memory.contains(&("memory.used_percent", "percent", 75.0)));
    assert!(memory.contains(&("swap.used", "bytes", 0.0)));
}

#[test]
fn network_and_disk_rates() {
    let net = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 999 9 0 0 0 0 0 0 999 9 0 0 0 0 0 0\n  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n";
    let before = parse_net_dev(net);
    assert_eq!(before.len(), 1, "loopback left out");
    let after = parse_net_dev(&net.replace("eth0: 1000 10", "eth0: 3000 30"));
    let per_second = rates(&before["eth0"], &after["eth0"], 2.0);
    assert!(per_second.contains(&("network.rx_bytes", "bytes/s", 1000.0)));
    assert!(per_second.contains(&("network.rx_packets", "1/s", 10.0)));
    assert!(per_second.contains(&("network.tx_bytes", "bytes/s", 0.0)));

    let disks = "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0\n   8       0 sda 100 0 800 50 200 0 1600 80 0 500 130\n";
    let before = parse_diskstats(disks);
    assert_eq!(before.keys().collect::<Vec<_>>(), ["sda"]);
    let after = parse_diskstats(&disks.replace(
        "sda 100 0 800 50 200 0 1600 80 0 500",
        "sda 110 0 1000 50 220 0 2000 80 0 1000",
    ));
    let per_second = rates(&before["sda"], &after["sda"], 1.0);
    assert!(per_second.contains(&("disk.reads", "1/s", 10.0)));
    assert!(per_second.contains(&("disk.read_bytes", "bytes/s", 102_400.0)));
    assert!(per_second.contains(&("disk.write_bytes", "bytes/s", 204_800.0)));
    assert!(per_second.contains(&("disk.busy_percent", "percent", 50.0)));
    // A counter that went backwards (a reset) is left out.
    assert!(rates(&after["sda"], &before["sda"], 1.0).is_empty());
}

#[test]
fn this_machine_has_every_file_the_source_reads() {
    let read = |path: &str| std::fs::read_to_string(path).expect(path);
    assert!(parse_stat(&read("/proc/stat")).is_some());
    assert!(parse_loadavg(&read("/proc/loadavg")).is_some());
    assert!(!memory_gauges(&parse_meminfo(&read("/proc/meminfo"))).is_empty());
    let _ = parse_net_dev(&read("/proc/net/dev"));
    let _ = parse_diskstats(&read("/proc/diskstats"));
}
