//! The agent's identity: a random id kept in the state directory, plus the start time and a
//! random nonce.
//!
//! Batch sequence numbers restart at 1 with every start, so the incarnation (id, start time,
//! nonce) and the sequence name one batch uniquely and forever. The nonce keeps two agents
//! apart that share a state directory (or a disk image holding one) and start in the same
//! millisecond: with equal ids their batches would pass for copies of each other, and the
//! consumers would drop one of each pair as a duplicate.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;

use sluice_common::SluiceError;

/// `<stable id>-<start time in ms>-<nonce>`, creating the stable id on first use.
pub fn agent_id(state_dir: &Path) -> Result<String, SluiceError> {
    let path = state_dir.join("agent-id");
    let stable = match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_owned(),
        Ok(_) | Err(_) => {
            let fresh = random_hex();
            std::fs::create_dir_all(state_dir)
                .and_then(|()| std::fs::write(&path, &fresh))
                .map_err(|error| {
                    SluiceError::internal(format!("failed to write {}: {error}", path.display()))
                })?;
            fresh
        }
    };
    let started_ms = sluice_common::time::now_nanos() / 1_000_000;
    let nonce = RandomState::new().hash_one(sluice_common::time::now_nanos()) as u32;
    Ok(format!("{stable}-{started_ms}-{nonce:08x}"))
}

/// 128 random bits as hex, from the standard library's randomly seeded hasher.
fn random_hex() -> String {
    let high = RandomState::new().hash_one(std::process::id());
    let low = RandomState::new().hash_one(sluice_common::time::now_nanos());
    format!("{high:016x}{low:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_part_survives_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = agent_id(dir.path()).expect("id");
        let second = agent_id(dir.path()).expect("id");
        let stable = |id: &str| id.split_once('-').map(|(stable, _)| stable.to_owned());
        assert_eq!(stable(&first), stable(&second));
        assert_eq!(stable(&first).map(|stable| stable.len()), Some(32));
        // Started from one directory in the same millisecond, two incarnations still differ.
        assert_ne!(first, second);
    }
}
