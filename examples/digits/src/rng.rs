//! A small seeded PRNG. candle's CPU RNG cannot be seeded, so weights and shuffles come from
//! here to make a trial reproducible from its seed.

/// SplitMix64: tiny, fast, and statistically fine for initialisation and shuffling.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// An independent generator for one purpose (`stream`) under `seed`, so that e.g. the
    /// shuffle of epoch 7 does not depend on how many numbers earlier epochs drew: a resumed
    /// trial shuffles exactly like one that never stopped.
    pub fn derived(seed: u64, stream: u64) -> SplitMix64 {
        let mut mixer = SplitMix64(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        SplitMix64(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); the bias of the multiply-shift is below 2^-50 for these sizes.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = SplitMix64::new(42);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = SplitMix64::new(42);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(SplitMix64::derived(42, 1).next_u64(), SplitMix64::derived(42, 2).next_u64());
        assert_ne!(SplitMix64::derived(1, 7).next_u64(), SplitMix64::derived(2, 7).next_u64());
    }

    #[test]
    fn shuffle_is_a_permutation_and_uniform_enough() {
        let mut rng = SplitMix64::new(7);
        let mut first_counts = [0u32; 4];
        for _ in 0..4000 {
            let mut items = [0, 1, 2, 3];
            rng.shuffle(&mut items);
            let mut sorted = items;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
            first_counts[items[0]] += 1;
        }
        for count in first_counts {
            assert!((850..1150).contains(&count), "{first_counts:?}");
        }
        let mean = (0..10_000).map(|_| rng.next_f64()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
