//! A tiny seedable generator whose whole state is one `u64`, so a searcher that owns one can be
//! serialised and restored and then draw exactly the numbers it would have drawn.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea, Flood 2014): good statistical quality for sampling hyperparameters,
/// and trivially snapshot-able.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [lo, hi], both inclusive.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (self.next_u64() as u128 % span) as i128) as i64
    }

    /// Uniform index in [0, n).
    pub fn index(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_restores_from_snapshot() {
        let mut a = SplitMix64::new(7);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let snapshot = serde_json::to_string(&a).unwrap();
        let mut b = SplitMix64::new(7);
        let again: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(first, again);
        let mut restored: SplitMix64 = serde_json::from_str(&snapshot).unwrap();
        assert_eq!(restored.next_u64(), a.next_u64());
    }

    #[test]
    fn ranges_stay_in_bounds_and_cover_them() {
        let mut r = SplitMix64::new(1);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.range_i64(-2, 2);
            assert!((-2..=2).contains(&v));
            seen[(v + 2) as usize] = true;
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn ranges_at_the_ends_of_i64_do_not_overflow() {
        let mut r = SplitMix64::new(9);
        let mut signs = [false; 2];
        for _ in 0..1000 {
            let v = r.range_i64(i64::MIN, i64::MAX);
            signs[usize::from(v >= 0)] = true;
            assert!((i64::MAX - 1..=i64::MAX).contains(&r.range_i64(i64::MAX - 1, i64::MAX)));
            assert!((i64::MIN..=i64::MIN + 1).contains(&r.range_i64(i64::MIN, i64::MIN + 1)));
            assert_eq!(r.range_i64(i64::MIN, i64::MIN), i64::MIN);
            assert_eq!(r.range_i64(i64::MAX, i64::MAX), i64::MAX);
        }
        assert_eq!(signs, [true, true], "the full range reaches both halves");
    }
}
