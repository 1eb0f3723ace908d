//! The Parzen estimators of [`super::TpeSearch`] (mixtures of truncated normals, Optuna's
//! categorical kernel), the draws from them, and the normal distribution functions they need.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use drover_core::SplitMix64;

use super::{Dim, DimKind, PRIOR_WEIGHT, default_weights};

/// One dimension of a Parzen estimator; kernel `k` of a set of `n` trials is trial `k` for
/// `k < n` and the prior for `k == n`.
pub(super) enum Kernels {
    /// Truncated normals on `[low, high]`.
    Continuous {
        low: f64,
        high: f64,
        mu: Vec<f64>,
        sigma: Vec<f64>,
        inv_sigma: Vec<f64>,
        /// `-ln(sigma) - ln(sqrt(2 pi)) - ln(mass of [low, high])`.
        log_norm: Vec<f64>,
    },
    /// Normals on `[low - 0.5, high + 0.5]` rounded to integers.
    Discrete {
        low: f64,
        high: f64,
        mu: Vec<f64>,
        sigma: Vec<f64>,
        /// Distinct (mu, sigma) pairs: integer kernels repeat a lot.
        unique: Vec<(f64, f64)>,
        unique_of: Vec<u32>,
        /// ln(mass of [low - 0.5, high + 0.5]) per distinct pair.
        log_accept: Vec<f64>,
    },
    Categorical {
        choices: usize,
        /// The observed choice of each trial kernel.
        observed: Vec<u32>,
        /// Probability of a trial kernel's own choice, and of any other choice.
        p_same: f64,
        p_other: f64,
    },
}

pub(super) struct Parzen {
    /// Mixture weights, normalised, and their cumulative sums.
    pub(super) log_weights: Vec<f64>,
    pub(super) cumulative: Vec<f64>,
    pub(super) dims: Vec<Kernels>,
}

/// Optuna's bandwidths (`consider_endpoints=False`, magic clip) for kernels at `mus` on the
/// (already widened, for integers) bounds `[low, high]`.
pub(super) fn bandwidths(mus: &[f64], low: f64, high: f64) -> Vec<f64> {
    let n = mus.len();
    if n == 0 {
        return Vec::new();
    }
    // Sort (value, index) packed in one integer: ties go by trial order, and integer keys
    // sort several times faster than a comparison closure.
    let mut keys: Vec<u128> = mus.iter().enumerate().map(|(i, m)| (u128::from(order_key(*m)) << 32) | i as u128).collect();
    keys.sort_unstable();
    // The sorted values with the end points: `low`, the sorted mus, `high`.
    let mut sorted = Vec::with_capacity(n + 2);
    sorted.push(low);
    sorted.extend(keys.iter().map(|k| mus[*k as u32 as usize]));
    sorted.push(high);
    let range = high - low;
    let min_sigma = range / f64::min(100.0, 1.0 + (n + 1) as f64);
    let mut sigma = vec![0.0; n];
    for (i, k) in keys.iter().enumerate() {
        let s = if n >= 2 && i == 0 {
            sorted[2] - sorted[1]
        } else if n >= 2 && i == n - 1 {
            sorted[n] - sorted[n - 1]
        } else {
            f64::max(sorted[i + 1] - sorted[i], sorted[i + 2] - sorted[i + 1])
        };
        sigma[*k as u32 as usize] = s.max(min_sigma).min(range);
    }
    sigma
}

/// An integer key that sorts as `f64::total_cmp` does.
pub(super) fn order_key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
}

impl Parzen {
    pub(super) fn fit(dims: &[Dim], rows: &[&[f64]]) -> Parzen {
        let n = rows.len();
        let mut weights = default_weights(n);
        if n == 0 {
            weights = vec![1.0];
        } else {
            weights.push(PRIOR_WEIGHT);
        }
        let total: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        let log_weights = weights
            .iter()
            .map(|w| {
                let w = w / total;
                acc += w;
                cumulative.push(acc);
                w.ln()
            })
            .collect();
        let last = *cumulative.last().expect("the prior is always there");
        for c in &mut cumulative {
            *c /= last;
        }
        let kernels = dims
            .iter()
            .enumerate()
            .map(|(j, dim)| {
                let column = || rows.iter().map(|r| r[j]);
                match dim.kind {
                    DimKind::Float { low, high } => {
                        let mut mu: Vec<f64> = column().collect();
                        let mut sigma = bandwidths(&mu, low, high);
                        // Halves first: low + high overflows for a range near the largest double,
                        // and the result is the same bit for bit otherwise.
                        mu.push(0.5 * low + 0.5 * high);
                        sigma.push(high - low);
                        let inv_sigma = sigma.iter().map(|s| 1.0 / s).collect();
                        let log_norm = mu
                            .iter()
                            .zip(&sigma)
                            .map(|(m, s)| -s.ln() - LN_SQRT_2PI - log_gauss_mass((low - m) / s, (high - m) / s))
                            .collect();
                        Kernels::Continuous { low, high, mu, sigma, inv_sigma, log_norm }
                    }
                    DimKind::Int { low, high } => {
                        let (low, high) = (low as f64, high as f64);
                        let (wide_low, wide_high) = (low - 0.5, high + 0.5);
                        let mut mu: Vec<f64> = column().collect();
                        let mut sigma = bandwidths(&mu, wide_low, wide_high);
                        mu.push(0.5 * (wide_low + wide_high));
                        sigma.push(wide_high - wide_low);
                        let mut keyed: Vec<(u64, u64, u32)> =
                            mu.iter().zip(&sigma).enumerate().map(|(k, (m, s))| (order_key(*m), order_key(*s), k as u32)).collect();
                        keyed.sort_unstable();
                        let mut pairs: Vec<(f64, f64)> = Vec::new();
                        let mut unique_of = vec![0u32; mu.len()];
                        let mut previous = None;
                        for (m, s, k) in keyed {
                            if previous != Some((m, s)) {
                                pairs.push((mu[k as usize], sigma[k as usize]));
                                previous = Some((m, s));
                            }
                            unique_of[k as usize] = (pairs.len() - 1) as u32;
                        }
                        let log_accept = pairs.iter().map(|(m, s)| log_gauss_mass((wide_low - m) / s, (wide_high - m) / s)).collect();
                        Kernels::Discrete { low, high, mu, sigma, unique: pairs, unique_of, log_accept }
                    }
                    DimKind::Categorical { choices } => {
                        let observed: Vec<u32> = column().map(|v| v as u32).collect();
                        let base = PRIOR_WEIGHT / (n + 1) as f64;
                        let row_sum = 1.0 + choices as f64 * base;
                        Kernels::Categorical { choices, observed, p_same: (base + 1.0) / row_sum, p_other: base / row_sum }
                    }
                }
            })
            .collect();
        Parzen { log_weights, cumulative, dims: kernels }
    }

    /// `count` vectors drawn from the mixture, flat (`count` rows of one value per dimension).
    pub(super) fn sample(&self, draws: &mut Draws, count: usize) -> Vec<f64> {
        let d = self.dims.len();
        let last = self.cumulative.len() - 1;
        let mut out = Vec::with_capacity(count * d);
        for _ in 0..count {
            let u = draws.uniform();
            let k = self.cumulative.partition_point(|c| *c <= u).min(last);
            for kernels in &self.dims {
                let v = match kernels {
                    Kernels::Continuous { low, high, mu, sigma, .. } => draws.truncated_normal(mu[k], sigma[k], *low, *high),
                    Kernels::Discrete { low, high, mu, sigma, .. } => {
                        let s = draws.truncated_normal(mu[k], sigma[k], low - 0.5, high + 0.5);
                        (low + (s - low).round_ties_even()).clamp(*low, *high)
                    }
                    Kernels::Categorical { choices, observed, p_same, p_other } => {
                        let u = draws.uniform();
                        // Optuna: the number of cumulative probabilities below u.
                        let mut acc = 0.0;
                        let mut index = 0;
                        for c in 0..*choices {
                            if c + 1 == *choices {
                                break; // the last cumulative probability is 1
                            }
                            acc += if k == observed.len() {
                                1.0 / *choices as f64
                            } else if observed[k] as usize == c {
                                *p_same
                            } else {
                                *p_other
                            };
                            if acc < u {
                                index += 1;
                            } else {
                                break;
                            }
                        }
                        index as f64
                    }
                };
                out.push(v);
            }
        }
        out
    }

    /// ln of the mixture density at each of the flat rows of `points`.
    pub(super) fn log_pdf(&self, points: &[f64], scratch: &mut Vec<f64>) -> Vec<f64> {
        let d = self.dims.len();
        let kernels = self.log_weights.len();
        let count = points.len().checked_div(d).unwrap_or(0);
        scratch.clear();
        for _ in 0..count {
            scratch.extend_from_slice(&self.log_weights);
        }
        for (j, dim) in self.dims.iter().enumerate() {
            match dim {
                Kernels::Continuous { mu, inv_sigma, log_norm, .. } => {
                    for c in 0..count {
                        let x = points[c * d + j];
                        let row = &mut scratch[c * kernels..(c + 1) * kernels];
                        // Zipped iterators: no bounds checks, so the loop vectorises.
                        for ((r, m), (inv, norm)) in row.iter_mut().zip(mu).zip(inv_sigma.iter().zip(log_norm)) {
                            let z = (x - m) * inv;
                            *r += norm - 0.5 * z * z;
                        }
                    }
                }
                Kernels::Discrete { unique, unique_of, log_accept, .. } => {
                    // The bin mass only depends on the value and the (mu, sigma) pair: compute
                    // it once per distinct value among the points and distinct pair.
                    let mut values: Vec<f64> = (0..count).map(|c| points[c * d + j]).collect();
                    values.sort_unstable_by(f64::total_cmp);
                    values.dedup();
                    let mut table = vec![0.0; values.len() * unique.len()];
                    for (v, x) in values.iter().enumerate() {
                        for (u, (m, s)) in unique.iter().enumerate() {
                            table[v * unique.len() + u] = log_gauss_mass((x - 0.5 - m) / s, (x + 0.5 - m) / s) - log_accept[u];
                        }
                    }
                    for c in 0..count {
                        let x = points[c * d + j];
                        let v = values.binary_search_by(|p| p.total_cmp(&x)).expect("value is there");
                        let t = &table[v * unique.len()..(v + 1) * unique.len()];
                        let row = &mut scratch[c * kernels..(c + 1) * kernels];
                        for (r, u) in row.iter_mut().zip(unique_of) {
                            *r += t[*u as usize];
                        }
                    }
                }
                Kernels::Categorical { choices, observed, p_same, p_other } => {
                    let (ln_same, ln_other, ln_prior) = (p_same.ln(), p_other.ln(), -(*choices as f64).ln());
                    for c in 0..count {
                        let x = points[c * d + j] as u32;
                        let row = &mut scratch[c * kernels..(c + 1) * kernels];
                        for (r, o) in row.iter_mut().zip(observed) {
                            *r += if *o == x { ln_same } else { ln_other };
                        }
                        row[kernels - 1] += ln_prior;
                    }
                }
            }
        }
        (0..count).map(|c| log_sum_exp(&scratch[c * kernels..(c + 1) * kernels])).collect()
    }
}

/// ln(sum(exp(row))), computed as Optuna does, relative to the largest term. Terms below e^-50
/// of the largest change the sum by less than its rounding (for fewer than ~10^5 kernels), so
/// they count as 0. Four independent lanes (a fixed summation order) and the branch-free
/// `exp_neg` let the compiler vectorise the loops.
pub(super) fn log_sum_exp(row: &[f64]) -> f64 {
    const LANES: usize = 4;
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lane_max = [f64::NEG_INFINITY; LANES];
    for chunk in chunks.clone() {
        for (m, x) in lane_max.iter_mut().zip(chunk) {
            *m = if *x > *m { *x } else { *m };
        }
    }
    let max = tail.iter().chain(&lane_max).copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let term = |l: f64| {
        let d = l - max;
        // Branch-free: e^d times 1 or 0.
        exp_neg(d) * f64::from(u8::from(d > -50.0))
    };
    let mut lane_sum = [0.0; LANES];
    for chunk in chunks {
        let chunk: &[f64; LANES] = chunk.try_into().expect("chunks_exact");
        for lane in 0..LANES {
            lane_sum[lane] += term(chunk[lane]);
        }
    }
    let sum = (lane_sum[0] + lane_sum[1]) + (lane_sum[2] + lane_sum[3]) + tail.iter().map(|x| term(*x)).sum::<f64>();
    sum.ln() + max
}

/// The random draws of one proposal: uniforms straight from the searcher's generator, and
/// normals by Marsaglia's polar method (the spare normal lives only during the proposal, so
/// the generator's state alone determines what comes next).
pub(super) struct Draws<'a> {
    pub(super) rng: &'a mut SplitMix64,
    pub(super) spare: Option<f64>,
}

impl Draws<'_> {
    pub(super) fn uniform(&mut self) -> f64 {
        self.rng.next_f64()
    }

    pub(super) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let f = (-2.0 * s.ln() / s).sqrt();
                self.spare = Some(v * f);
                return u * f;
            }
        }
    }

    /// A normal `N(mu, sigma)` conditioned on `[low, high]`, by rejection. Every kernel centre
    /// lies in the bounds and `sigma <= high - low`, so at least a third of the draws land
    /// inside; 10,000 misses in a row (probability below 1e-1700) would return the centre.
    pub(super) fn truncated_normal(&mut self, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
        for _ in 0..10_000 {
            let v = mu + sigma * self.normal();
            if (low..=high).contains(&v) {
                return v;
            }
        }
        mu.clamp(low, high)
    }
}

// ---------------------------------------------------------------------------------------------
// Normal distribution functions

pub(super) const LN_SQRT_2PI: f64 = 0.918_938_533_204_672_8; // ln(sqrt(2 pi))

/// e^x for x in [-60, 0] (others are clamped to it), within 2 ulp of `f64::exp`: x = k ln 2 + r
/// with |r| <= ln 2 / 2, e^r by its Taylor series to degree 13 (truncation below 1e-17), and
/// 2^k put in the exponent bits. Plain arithmetic, so loops over it vectorise.
// Not `clamp`: a NaN must come out as -60, as it always has, not stay NaN.
#[allow(clippy::excessive_precision, clippy::manual_clamp)]
#[inline(always)]
pub(super) fn exp_neg(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    const SHIFTER: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer
    let x = x.max(-60.0).min(0.0);
    let t = x * std::f64::consts::LOG2_E + SHIFTER;
    let k = t - SHIFTER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for d in [479_001_600.0, 39_916_800.0, 3_628_800.0, 362_880.0, 40_320.0, 5_040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p * r + 1.0 / d;
    }
    // k is the low bits of t (an integer in [-87, 0]); 2^k is (k + 1023) << 52.
    let k_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    let scale = f64::from_bits(k_bits.wrapping_add(1023) << 52);
    p * scale
}

/// Standard normal CDF.
pub(super) fn ndtr(z: f64) -> f64 {
    if z < 0.0 { 0.5 * erfc(-z * FRAC_1_SQRT_2) } else { 1.0 - 0.5 * erfc(z * FRAC_1_SQRT_2) }
}

/// ln of the standard normal CDF, accurate far into the left tail (Optuna's `_log_ndtr`).
pub(super) fn log_ndtr(z: f64) -> f64 {
    if z > 6.0 {
        return -ndtr(-z);
    }
    let x = -z * FRAC_1_SQRT_2;
    if x < 1.25 {
        return ndtr(z).ln();
    }
    if x < 26.0 {
        // erfc is accurate relative to its size here and stays above f64's smallest normal.
        return (0.5 * erfc(x)).ln();
    }
    // Asymptotic series: Phi(z) ~ phi(z)/(-z) * (1 - 1/z^2 + 3/z^4 - 15/z^6 + ...).
    let lead = -0.5 * z * z - (-z).ln() - 0.5 * (2.0 * PI).ln();
    let inv_z2 = 1.0 / (z * z);
    let (mut total, mut term) = (1.0, 1.0);
    for i in 1..40 {
        let next = -term * (2 * i - 1) as f64 * inv_z2;
        if (total + next) == total {
            break;
        }
        term = next;
        total += term;
    }
    lead + total.ln()
}

/// ln of the standard normal mass on `[a, b]` (Optuna's `_log_gauss_mass`).
pub(super) fn log_gauss_mass(a: f64, b: f64) -> f64 {
    let log_diff = |lp: f64, lq: f64| lp + (-(lq - lp).exp()).ln_1p();
    if b <= 0.0 || a > 0.0 {
        // One side of 0: mirror it to the upper tail, [lo, hi] with 0 <= lo < hi.
        let (lo, hi) = if b <= 0.0 { (-b, -a) } else { (a, b) };
        if lo < 8.0 {
            // Mass above 6e-16: a difference of upper tails is as accurate as Optuna's
            // difference of log-CDFs, at half the cost.
            return (0.5 * (erfc(lo * FRAC_1_SQRT_2) - erfc(hi * FRAC_1_SQRT_2))).ln();
        }
        log_diff(log_ndtr(-lo), log_ndtr(-hi))
    } else {
        // Central case. Below z = -8.5 a tail holds less than 1e-17 and changes the result by
        // less than that: skip its erfc, which most kernels of a large set have on both sides.
        let tail = |z: f64| if z < -8.5 { 0.0 } else { ndtr(z) };
        (-tail(a) - tail(-b)).ln_1p()
    }
}

/// The complementary error function, from the `libm` crate (accurate to about one ulp).
pub(super) fn erfc(x: f64) -> f64 {
    libm::erfc(x)
}
