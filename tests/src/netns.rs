//! Network namespaces and the links between them, for fault tests on a real network: each
//! piece of Sluice runs in a namespace of its own, joined to the test's namespace by veth
//! pairs, and a test cuts a link by making it drop every packet (the `blackhole` queueing
//! discipline on both ends: the peers see silence, not a refusal, as with a pulled cable or a
//! partition).
//!
//! Needs root and iproute2 (`ip`, `tc`); CI runs `scripts/test` as root.

use std::process::Command;

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("failed to run {program}: {error}; the network fault tests need iproute2 (`apt-get install iproute2`)")
        });
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}; the network fault tests need root (CI runs `scripts/test` as root)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    /// Its name, for `ip netns exec`.
    pub name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        run("ip", &["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_owned(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between the test's namespace (`host_ip`) and `netns` (`ns_ip`), on a /24 of
/// its own; removed when dropped.
pub struct Link {
    host_if: String,
    ns_if: String,
    netns: String,
    /// The address on the test's side.
    pub host_ip: String,
    /// The address inside the namespace.
    pub ns_ip: String,
}

impl Link {
    /// Joins `netns` to the test's namespace over the subnet `10.201.<subnet>.0/24`: `.1` on
    /// the test's side, `.2` inside. `name` (at most 10 characters) names the interfaces.
    pub fn new(netns: &Netns, name: &str, subnet: u8) -> Link {
        let host_if = format!("{name}h");
        let ns_if = format!("{name}n");
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let host_ip = format!("10.201.{subnet}.1");
        let ns_ip = format!("10.201.{subnet}.2");
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        run("ip", &["link", "set", &ns_if, "netns", &netns.name]);
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &host_if],
        );
        run("ip", &["link", "set", &host_if, "up"]);
        run(
            "ip",
            &[
                "-n",
                &netns.name,
                "addr",
                "add",
                &format!("{ns_ip}/24"),
                "dev",
                &ns_if,
            ],
        );
        run("ip", &["-n", &netns.name, "link", "set", &ns_if, "up"]);
        Link {
            host_if,
            ns_if,
            netns: netns.name.clone(),
            host_ip,
            ns_ip,
        }
    }

    /// Runs `tc qdisc <action> dev <interface> root [<qdisc>]` on both ends of the link.
    fn qdisc_on_both_ends(&self, action: &str, qdisc: Option<&str>) {
        let mut host = vec!["qdisc", action, "dev", &self.host_if, "root"];
        let mut inside = vec![
            "netns",
            "exec",
            &self.netns,
            "tc",
            "qdisc",
            action,
            "dev",
            &self.ns_if,
            "root",
        ];
        host.extend(qdisc);
        inside.extend(qdisc);
        run("tc", &host);
        run("ip", &inside);
    }

    /// Drops every packet both ways, until [`Link::heal`].
    pub fn cut(&self) {
        self.qdisc_on_both_ends("add", Some("blackhole"));
    }

    /// Carries packets again.
    pub fn heal(&self) {
        self.qdisc_on_both_ends("del", None);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    crate::proc_status_bytes(pid, "VmHWM")
}
