//! Agent sources, one folder each with the same shape: `mod.rs` (declarations only),
//! `source.rs` (the server or reader), `tests.rs`.

pub(crate) mod auth;
pub mod elasticsearch;
pub mod files;
pub mod host;
pub mod loggregator;
pub mod otlp;
pub mod prometheus;
pub mod syslog;

/// Deterministic mutation of sample inputs, for the parsers' no-panic tests (the fuzz targets
/// in `fuzz/` do the same at length with libFuzzer).
#[cfg(test)]
pub(crate) fn mutated_inputs(
    seeds: &[&[u8]],
    alphabet: &[u8],
    rounds: usize,
    mut check: impl FnMut(&[u8]),
) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..rounds {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..(next() % 6) {
            let position = (next() as usize) % (input.len() + 1);
            match next() % 3 {
                0 if position < input.len() => input[position] = next() as u8,
                1 => input.insert(position, alphabet[(next() as usize) % alphabet.len()]),
                _ => input.truncate(position),
            }
        }
        check(&input);
    }
}
