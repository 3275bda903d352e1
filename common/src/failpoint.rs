//! Crash points for tests: `SLUICE_FAILPOINTS=name[,name…]` in the environment makes the
//! process abort (as `kill -9` would, with nothing flushed or cleaned up) the first time it
//! reaches a point of that name. Tests use it to crash at exactly the step they mean, where
//! a timed kill would land anywhere. Unset, a point costs one check of a value read once.

use std::sync::OnceLock;

/// The points named in `SLUICE_FAILPOINTS`.
fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("SLUICE_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Aborts the process here if `name` is armed.
pub fn hit(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}
