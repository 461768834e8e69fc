//! The statistics a reviewer asks for.
//!
//! The unit of a comparison is the seed: one seed is one split and one trained model per method,
//! and its test cases share that model, so they are not independent replicates. A seed-level
//! comparison ([`seed_level`]) takes each seed's paired difference of the two methods' run
//! metrics and reports their mean with a Student t interval (only from 3 seeds on), an exact
//! sign-flip permutation p (Monte Carlo beyond 16 seeds), a two-level bootstrap interval
//! (resample seeds, then test cases within each) and the smallest difference a paired t-test over
//! that many seeds detects with 80 % power at the observed spread. Holm's step-down adjustment
//! ([`holm`]) corrects the p-values of one family of comparisons (one table's).
//!
//! Also: mean, sample standard deviation and a 95 % t interval over seeds; for paired per-case
//! results (a secondary view), a bootstrap interval of the mean difference and a
//! Wilcoxon signed-rank p-value computed as scipy.stats.wilcoxon (1.17) does by default: zero
//! differences dropped; above 50 pairs the normal approximation (with tie correction, no
//! continuity correction); up to 50 pairs the exact null distribution when there are no ties or
//! zeros, else an exact sign-flip permutation test up to 13 pairs and the normal approximation
//! beyond. Distributions come from statrs.

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean, spread and 95 % confidence interval of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one value.
    pub std: f64,
    /// Half-width of the two-sided 95 % Student t interval of the mean; NaN for one value.
    pub ci95: f64,
}

/// Summarises `values`; None when empty.
pub fn summarise(values: &[f64]) -> Option<Summary> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some(Summary {
            n,
            mean,
            std: 0.0,
            ci95: f64::NAN,
        });
    }
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).expect("n - 1 > 0 degrees of freedom");
    Some(Summary {
        n,
        mean,
        std,
        ci95: t.inverse_cdf(0.975) * std / (n as f64).sqrt(),
    })
}

/// A paired comparison of `a - b` over matched observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub mean_difference: f64,
    /// Percentile bootstrap 95 % interval of the mean difference.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided Wilcoxon signed-rank p-value (NaN when every difference is zero).
    pub p_value: f64,
}

/// Resamples of the bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Compares paired samples; None when there are no pairs. The bootstrap draws from a fixed
/// seed, so a report is reproducible.
pub fn paired(a: &[f64], b: &[f64]) -> Option<Paired> {
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = differences.len();
    if n == 0 {
        return None;
    }
    let mean_difference = differences.iter().sum::<f64>() / n as f64;
    let (ci_low, ci_high) = bootstrap_ci(&differences, BOOTSTRAP_RESAMPLES, 0x5eed);
    Some(Paired {
        n,
        mean_difference,
        ci_low,
        ci_high,
        p_value: wilcoxon(&differences),
    })
}

/// Percentile bootstrap 95 % interval of the mean of `values`.
pub fn bootstrap_ci(values: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    let n = values.len();
    let mut state = seed;
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = (0..n).map(|_| values[(splitmix(&mut state) % n as u64) as usize]).sum();
            sum / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    (quantile(&means, 0.025), quantile(&means, 0.975))
}

/// SplitMix64: a tiny, well-mixed generator for resampling indices (quality is ample here and
/// it keeps this crate free of a random-number dependency).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Linear-interpolation quantile of sorted values (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

/// Average ranks (1-based) of `values`, and whether any values tie.
fn average_ranks(values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut tie_sizes = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        tie_sizes.push(end - start);
        start = end;
    }
    (ranks, tie_sizes)
}

/// W+ (sum of ranks of |d| over positive d), zeros dropped.
fn w_plus(nonzero: &[f64]) -> f64 {
    let absolute: Vec<f64> = nonzero.iter().map(|d| d.abs()).collect();
    let (ranks, _) = average_ranks(&absolute);
    nonzero.iter().zip(&ranks).filter(|(d, _)| **d > 0.0).map(|(_, r)| r).sum()
}

/// Two-sided Wilcoxon signed-rank p-value of the differences `d`, as scipy 1.17's default.
pub fn wilcoxon(d: &[f64]) -> f64 {
    let zeros = d.iter().filter(|v| **v == 0.0).count();
    let nonzero: Vec<f64> = d.iter().copied().filter(|v| *v != 0.0).collect();
    let n = nonzero.len();
    if n == 0 {
        return f64::NAN;
    }
    let absolute: Vec<f64> = nonzero.iter().map(|v| v.abs()).collect();
    let (_, ties) = average_ranks(&absolute);
    let has_ties = ties.iter().any(|&t| t > 1);
    let observed = w_plus(&nonzero);
    if d.len() <= 50 {
        if !has_ties && zeros == 0 {
            return exact_p(observed, n);
        }
        if d.len() <= 13 {
            return permutation_p(d, observed);
        }
    }
    let count = n as f64;
    let mean = count * (count + 1.0) / 4.0;
    let tie_correction: f64 = ties.iter().map(|&t| (t * t * t - t) as f64).sum();
    let se = ((count * (count + 1.0) * (2.0 * count + 1.0) - tie_correction / 2.0) / 24.0).sqrt();
    let z = (observed - mean) / se;
    let normal = Normal::new(0.0, 1.0).expect("standard normal");
    (2.0 * normal.sf(z.abs())).min(1.0)
}

/// Exact p-value from the null distribution of W+ for n untied, nonzero differences.
fn exact_p(observed: f64, n: usize) -> f64 {
    let max = n * (n + 1) / 2;
    // counts[k]: subsets of {1..n} whose ranks sum to k, as probabilities (divided as we go).
    let mut counts = vec![0.0f64; max + 1];
    counts[0] = 1.0;
    for rank in 1..=n {
        for k in (rank..=max).rev() {
            counts[k] = (counts[k] + counts[k - rank]) * 0.5;
        }
        for value in counts.iter_mut().take(rank) {
            *value *= 0.5;
        }
    }
    let cdf = |k: f64| counts[..=(k as usize).min(max)].iter().sum::<f64>();
    let sf = |k: f64| counts[(k.max(0.0) as usize).min(max + 1)..].iter().sum::<f64>();
    (2.0 * sf(observed.floor()).min(cdf(observed.ceil()))).clamp(0.0, 1.0)
}

/// scipy's exact sign-flip permutation test of W+ (used with ties or zeros and n <= 13).
fn permutation_p(d: &[f64], observed: f64) -> f64 {
    let n = d.len();
    let total = 1usize << n;
    let gamma = (1e-14 * observed).abs();
    let (mut less, mut greater) = (0usize, 0usize);
    let mut flipped = vec![0.0; n];
    for mask in 0..total {
        for (i, value) in flipped.iter_mut().enumerate() {
            *value = if mask & (1 << i) != 0 { -d[i] } else { d[i] };
        }
        let nonzero: Vec<f64> = flipped.iter().copied().filter(|v| *v != 0.0).collect();
        let statistic = w_plus(&nonzero);
        less += usize::from(statistic <= observed + gamma);
        greater += usize::from(statistic >= observed - gamma);
    }
    (2.0 * (less.min(greater) as f64) / total as f64).min(1.0)
}

/// Seeds up to which the sign-flip permutation test enumerates all 2^n sign patterns.
pub const EXACT_SIGN_FLIP_MAX: usize = 16;

/// Random sign patterns of the permutation test beyond [`EXACT_SIGN_FLIP_MAX`] seeds.
pub const SIGN_FLIP_RESAMPLES: usize = 100_000;

/// Two-sided sign-flip permutation p-value of the mean of paired differences `d`, as
/// `scipy.stats.permutation_test(..., permutation_type='samples', alternative='two-sided')`
/// defines it: twice the smaller one-sided tail of the mean over all 2^n sign patterns (each
/// difference kept or negated), capped at 1. Exact up to [`EXACT_SIGN_FLIP_MAX`] differences;
/// beyond, [`SIGN_FLIP_RESAMPLES`] random patterns from a fixed seed, counted as scipy does
/// ((k + 1) / (R + 1)). Returns (p, exact); NaN for no data.
///
/// Ties: patterns whose mean equals the observed one in exact arithmetic often differ from it
/// by rounding. scipy counts values within 100 machine epsilons of the observed mean as equal;
/// this uses 1e-12 of the mean absolute difference instead, which no rounding of n <= 10^3 sums
/// exceeds and no real difference between two such means falls under, so the count is the
/// exact one (the tests check a case where the two tolerances part).
pub fn sign_flip_p(d: &[f64]) -> (f64, bool) {
    let n = d.len();
    if n == 0 {
        return (f64::NAN, true);
    }
    let observed = d.iter().sum::<f64>() / n as f64;
    let gamma = 1e-12 * d.iter().map(|v| v.abs()).sum::<f64>() / n as f64;
    let (mut less, mut greater) = (0usize, 0usize);
    let mut tally = |statistic: f64| {
        less += usize::from(statistic <= observed + gamma);
        greater += usize::from(statistic >= observed - gamma);
    };
    let mean_with = |signs: &dyn Fn(usize) -> bool| -> f64 {
        d.iter().enumerate().map(|(i, &v)| if signs(i) { -v } else { v }).sum::<f64>() / n as f64
    };
    if n <= EXACT_SIGN_FLIP_MAX {
        let patterns = 1usize << n;
        for mask in 0..patterns {
            tally(mean_with(&|i| mask & (1 << i) != 0));
        }
        return ((2.0 * less.min(greater) as f64 / patterns as f64).min(1.0), true);
    }
    let mut state = 0x5f11_f1a5_u64;
    for _ in 0..SIGN_FLIP_RESAMPLES {
        let bits: Vec<bool> = (0..n).map(|_| splitmix(&mut state) & 1 == 1).collect();
        tally(mean_with(&|i| bits[i]));
    }
    let resamples = SIGN_FLIP_RESAMPLES as f64;
    let p = 2.0 * ((less.min(greater) as f64 + 1.0) / (resamples + 1.0));
    (p.min(1.0), false)
}

/// Holm's step-down adjustment of a family of p-values, in their given order: the i-th smallest
/// of m becomes max over j <= i of min(1, (m - j + 1) p_(j)). NaN entries (no test) stay NaN and
/// do not count in m.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_finite()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = order.len();
    let mut adjusted = vec![f64::NAN; p.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// Percentile interval (2.5 %, 97.5 %) of a two-level bootstrap of the mean of paired per-case
/// differences grouped by seed: each resample draws as many seeds as there are, with
/// replacement, and within each drawn seed as many of its cases as it has, with replacement;
/// its statistic is the mean over the drawn seeds of their drawn cases' mean. Variation between
/// seeds and between cases both widen it. Draws come from a fixed seed (reproducible reports).
pub fn two_level_bootstrap_ci(groups: &[Vec<f64>], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    let groups: Vec<&Vec<f64>> = groups.iter().filter(|g| !g.is_empty()).collect();
    let seeds = groups.len();
    if seeds == 0 || resamples == 0 {
        return None;
    }
    let mut state = seed;
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let mut total = 0.0;
            for _ in 0..seeds {
                let cases = groups[(splitmix(&mut state) % seeds as u64) as usize];
                let m = cases.len();
                let mut sum = 0.0;
                for _ in 0..m {
                    sum += cases[(splitmix(&mut state) % m as u64) as usize];
                }
                total += sum / m as f64;
            }
            total / seeds as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Some((quantile(&means, 0.025), quantile(&means, 0.975)))
}

/// Nodes of the chi-square quadrature behind [`paired_t_power`].
const POWER_NODES: usize = 4000;

/// Power of a two-sided paired t-test at level `alpha` over `n` pairs when the true mean
/// difference is `effect` standard deviations of the differences: P(|T'| > t_crit) for T'
/// noncentral t with n - 1 degrees of freedom and noncentrality effect x sqrt(n). T' is
/// (Z + lambda) / sqrt(V / df) with V chi-square, so the power is the mean over V of two normal
/// tails, computed at POWER_NODES midpoints of V's quantile scale (statsmodels' TTestPower and
/// scipy's nct give the same numbers; see the tests). None for fewer than 2 pairs.
pub fn paired_t_power(effect: f64, n: usize, alpha: f64) -> Option<f64> {
    let nodes = PowerNodes::new(n, alpha)?;
    Some(nodes.power(effect * (n as f64).sqrt()))
}

/// The chi-square quantile nodes and critical value of one (n, alpha), shared by the
/// evaluations of a power search.
struct PowerNodes {
    /// t_crit x sqrt(V / df) at each node.
    scaled: Vec<f64>,
}

impl PowerNodes {
    fn new(n: usize, alpha: f64) -> Option<Self> {
        use statrs::distribution::ChiSquared;
        if n < 2 || !(alpha > 0.0 && alpha < 1.0) {
            return None;
        }
        let df = (n - 1) as f64;
        let critical = StudentsT::new(0.0, 1.0, df).ok()?.inverse_cdf(1.0 - alpha / 2.0);
        let chi = ChiSquared::new(df).ok()?;
        let scaled = (0..POWER_NODES)
            .map(|i| {
                let u = (i as f64 + 0.5) / POWER_NODES as f64;
                critical * (chi.inverse_cdf(u) / df).sqrt()
            })
            .collect();
        Some(Self { scaled })
    }

    fn power(&self, noncentrality: f64) -> f64 {
        let normal = Normal::new(0.0, 1.0).expect("standard normal");
        let sum: f64 = self
            .scaled
            .iter()
            .map(|&c| normal.cdf(noncentrality - c) + normal.cdf(-c - noncentrality))
            .sum();
        sum / self.scaled.len() as f64
    }
}

/// The smallest mean difference a two-sided paired t-test at level 0.05 over `n` seeds detects
/// with 80 % power, given the differences' standard deviation `sd`: effect x sd where effect
/// solves [`paired_t_power`] = 0.8 (bisection). None for fewer than 2 seeds or no spread.
pub fn minimal_detectable_difference(n: usize, sd: f64) -> Option<f64> {
    if !(sd.is_finite() && sd > 0.0) {
        return None;
    }
    let nodes = PowerNodes::new(n, 0.05)?;
    let (mut low, mut high) = (0.0f64, 1.0f64);
    while nodes.power(high) < 0.8 {
        high *= 2.0;
        if high > 1e6 {
            return None;
        }
    }
    for _ in 0..100 {
        let mid = 0.5 * (low + high);
        if nodes.power(mid) < 0.8 {
            low = mid;
        } else {
            high = mid;
        }
    }
    Some(high / (n as f64).sqrt() * sd)
}

/// Fewest seeds for which a t interval is printed: with two, its 12.7 x sd / sqrt(2) half-width
/// says nothing a reader can use.
pub const MIN_SEEDS_FOR_T_INTERVAL: usize = 3;

/// A comparison of two methods with the seed as the unit.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedLevel {
    /// The seeds both methods have, ascending, and each seed's difference a - b.
    pub seeds: Vec<u64>,
    pub differences: Vec<f64>,
    pub mean: f64,
    /// Sample standard deviation of the differences (NaN below two seeds).
    pub sd: f64,
    /// 95 % Student t interval of the mean difference, clipped to the range a difference can
    /// take; None below [`MIN_SEEDS_FOR_T_INTERVAL`] seeds.
    pub t_interval: Option<(f64, f64)>,
    /// Sign-flip permutation p (two-sided) and whether it was enumerated exactly.
    pub p: f64,
    pub exact: bool,
    /// Two-level bootstrap 95 % interval of the mean per-case difference, clipped likewise
    /// (None without per-case values).
    pub bootstrap: Option<(f64, f64)>,
    /// The smallest difference a paired t-test over these seeds detects with 80 % power at
    /// this spread (None below two seeds or without spread).
    pub minimal_detectable: Option<f64>,
}

/// Compares methods a and b with the seed as the unit. `a` and `b`: (seed, run metric); `cases`:
/// each seed's per-case paired differences a - b (for the two-level bootstrap; may be empty).
/// `range`: the interval a difference of this metric can take ((-1, 1) for Dice fractions),
/// intervals are clipped to it. None when the two share no seed.
pub fn seed_level(a: &[(u64, f64)], b: &[(u64, f64)], cases: &[(u64, Vec<f64>)], range: (f64, f64)) -> Option<SeedLevel> {
    let mut pairs: Vec<(u64, f64)> = a
        .iter()
        .filter_map(|(seed, x)| b.iter().find(|(s, _)| s == seed).map(|(_, y)| (*seed, x - y)))
        .filter(|(_, d)| d.is_finite())
        .collect();
    pairs.sort_by_key(|(seed, _)| *seed);
    if pairs.is_empty() {
        return None;
    }
    let seeds: Vec<u64> = pairs.iter().map(|(s, _)| *s).collect();
    let differences: Vec<f64> = pairs.iter().map(|(_, d)| *d).collect();
    let summary = summarise(&differences)?;
    let clip = |(low, high): (f64, f64)| (low.max(range.0), high.min(range.1));
    let sd = if summary.n >= 2 { summary.std } else { f64::NAN };
    let (p, exact) = sign_flip_p(&differences);
    let groups: Vec<Vec<f64>> = seeds
        .iter()
        .filter_map(|seed| cases.iter().find(|(s, _)| s == seed).map(|(_, d)| d.clone()))
        .collect();
    Some(SeedLevel {
        t_interval: (summary.n >= MIN_SEEDS_FOR_T_INTERVAL).then(|| clip((summary.mean - summary.ci95, summary.mean + summary.ci95))),
        bootstrap: two_level_bootstrap_ci(&groups, BOOTSTRAP_RESAMPLES, 0x5eed).map(clip),
        minimal_detectable: minimal_detectable_difference(summary.n, sd),
        mean: summary.mean,
        sd,
        p,
        exact,
        seeds,
        differences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_interval_of_known_sample() {
        // mean 2, sd 1, n 3: t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt(3)
        let s = summarise(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.mean, s.std), (3, 2.0, 1.0));
        assert!((s.ci95 - 4.302_652_729_911_275 / 3f64.sqrt()).abs() < 1e-9, "{}", s.ci95);
        assert!(summarise(&[0.5]).unwrap().ci95.is_nan());
        assert!(summarise(&[]).is_none());
    }

    // Reference values below were computed with numpy 2.4.6, scipy 1.17.1 and statsmodels 0.15.0
    // (a script run for this purpose, 2026-12-06): scipy.stats.permutation_test((d,), np.mean,
    // permutation_type='samples', n_resamples=np.inf, alternative='two-sided');
    // statsmodels.stats.multitest.multipletests(p, method='holm'); statsmodels'
    // TTestPower().power / solve_power (two-sided, alpha 0.05), cross-checked with scipy.stats.nct;
    // scipy.stats.t.ppf; and the two-level bootstrap written out in plain Python with the same
    // SplitMix64 draws in the same order.

    #[test]
    fn sign_flip_p_matches_scipys_exact_permutation_test() {
        let cases: [(&[f64], f64); 5] = [
            (&[2.1, -0.4, 3.3], 0.5),
            (&[1.2, -0.3, 2.5, 0.7, 1.1, 0.9, -0.2, 1.8, 0.4, 1.5], 0.009765625),
            (&[0.5, -0.5, 0.5, -0.5], 1.0),
            // 16 values: many sign patterns tie with the observed mean only up to rounding; the
            // exact count is 2860 of 65536 (2780 if rounding were allowed to break the ties).
            (
                &[
                    0.8, -1.1, 0.3, 1.9, 0.2, -0.4, 1.3, 0.6, -0.7, 1.0, 0.05, 0.9, -0.2, 1.4, 0.35, 0.75,
                ],
                0.04364013671875,
            ),
            (&[-3.0, -1.0, -2.0, -4.0, -0.5], 0.0625),
        ];
        for (d, expected) in cases {
            let (p, exact) = sign_flip_p(d);
            assert!(exact, "{d:?}");
            assert_eq!(p, expected, "{d:?}");
        }
        // Three seeds can never give p below 2 / 8.
        assert_eq!(sign_flip_p(&[5.0, 6.0, 7.0]).0, 0.25);
        assert!(sign_flip_p(&[]).0.is_nan());
    }

    #[test]
    fn sign_flip_p_beyond_sixteen_seeds_is_a_close_monte_carlo_estimate() {
        // 20 values; the exact p over all 2^20 patterns is 0.06172370910644531 (scipy; its Monte
        // Carlo estimate with 200000 resamples and random_state=1 was 0.0597597).
        let d: Vec<f64> = (0..20).map(|i| 0.3 * (i % 5) as f64 - 0.4).collect();
        let (p, exact) = sign_flip_p(&d);
        assert!(!exact);
        assert!((p - 0.06172370910644531).abs() < 0.005, "{p}");
        assert_eq!(sign_flip_p(&d).0, p, "fixed seed: the same estimate every time");
    }

    #[test]
    fn holm_matches_statsmodels() {
        let close = |got: Vec<f64>, expected: &[f64]| {
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(expected) {
                assert!((g - e).abs() < 1e-12, "{got:?} vs {expected:?}");
            }
        };
        close(holm(&[0.01, 0.04, 0.03, 0.2]), &[0.04, 0.09, 0.09, 0.2]);
        close(
            holm(&[0.048, 0.017, 0.3, 0.6, 0.002, 0.049, 0.9, 0.12, 0.25]),
            &[0.336, 0.136, 1.0, 1.0, 0.018, 0.336, 1.0, 0.6, 1.0],
        );
        close(holm(&[0.5]), &[0.5]);
        // A comparison without a test is not counted in the family.
        let with_gap = holm(&[0.01, f64::NAN, 0.04]);
        assert!(with_gap[1].is_nan());
        close(vec![with_gap[0], with_gap[2]], &[0.02, 0.04]);
    }

    #[test]
    fn paired_t_power_matches_statsmodels_and_scipys_noncentral_t() {
        for (effect, n, expected) in [
            (1.0, 10, 0.8030968566327218),
            (2.0, 3, 0.4707494312784346),
            (0.5, 30, 0.75396471574379),
            (1.5, 5, 0.7107026739256754),
        ] {
            let power = paired_t_power(effect, n, 0.05).unwrap();
            assert!((power - expected).abs() < 1e-4, "effect {effect}, n {n}: {power} vs {expected}");
        }
        assert_eq!(paired_t_power(1.0, 1, 0.05), None);
    }

    #[test]
    fn minimal_detectable_difference_matches_statsmodels_solve_power() {
        for (n, effect) in [
            (3, 3.264043552819638),
            (5, 1.6819970833232674),
            (10, 0.9960019107624178),
            (16, 0.7494652785178323),
            (30, 0.5292357045238948),
        ] {
            // In units of the differences' standard deviation, then scaled by it.
            let unit = minimal_detectable_difference(n, 1.0).unwrap();
            assert!((unit - effect).abs() < 1e-3 * effect, "n {n}: {unit} vs {effect}");
            let scaled = minimal_detectable_difference(n, 4.0).unwrap();
            assert!((scaled - 4.0 * unit).abs() < 1e-9, "{scaled}");
        }
        assert_eq!(minimal_detectable_difference(1, 1.0), None);
        assert_eq!(minimal_detectable_difference(5, 0.0), None);
    }

    #[test]
    fn two_level_bootstrap_matches_an_independent_implementation() {
        let groups = vec![vec![0.1, 0.3, -0.2, 0.5], vec![0.4, 0.2, 0.6], vec![-0.1, 0.0, 0.2, 0.1, 0.3]];
        assert_eq!(
            two_level_bootstrap_ci(&groups, 10_000, 0x5eed),
            Some((0.05333333333333334, 0.4138888888888888))
        );
        let groups2 = vec![vec![1.0, 1.2], vec![0.0, -0.2, 0.1], vec![2.0, 2.5, 1.5, 1.8]];
        assert_eq!(
            two_level_bootstrap_ci(&groups2, 10_000, 0x5eed),
            Some((-0.011111111111111112, 1.9083333333333332))
        );
        assert_eq!(two_level_bootstrap_ci(&[], 100, 1), None);
    }

    #[test]
    fn t_quantiles_match_scipy() {
        for (n, q) in [
            (3, 4.302652729749462),
            (5, 2.7764451051977934),
            (10, 2.262157162798205),
            (16, 2.131449545559776),
        ] {
            let values: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let s = summarise(&values).unwrap();
            let expected = q * s.std / (n as f64).sqrt();
            assert!((s.ci95 - expected).abs() < 1e-9 * expected, "n {n}: {} vs {expected}", s.ci95);
        }
    }

    #[test]
    fn seed_level_pairs_seeds_clips_intervals_and_withholds_t_below_three_seeds() {
        let a = [(0, 0.95), (1, 0.99), (2, 0.7), (3, 0.7)];
        let b = [(1, 0.04), (0, 0.05), (2, 0.1), (9, 0.5)];
        let cases = [(0, vec![0.7, 0.7]), (1, vec![0.6, 0.8]), (2, vec![0.9, 0.7])];
        let s = seed_level(&a, &b, &cases, (-1.0, 1.0)).unwrap();
        assert_eq!(s.seeds, [0, 1, 2], "only seeds both methods have, in order");
        assert_eq!(s.differences.len(), 3);
        // Differences 0.9, 0.95, 0.6: mean 0.8167, t interval [0.35, 1.28] before clipping.
        assert!((s.mean - 0.8166666666666667).abs() < 1e-12);
        let (low, high) = s.t_interval.unwrap();
        assert!(low < s.mean && high == 1.0, "clipped to the range: {low}, {high}");
        assert_eq!(s.p, 0.25, "exact sign-flip p of three positive differences");
        assert!(s.exact);
        let (blow, bhigh) = s.bootstrap.unwrap();
        assert!(blow <= 0.7 && (0.75..=1.0).contains(&bhigh), "{blow}, {bhigh}");
        assert!(s.minimal_detectable.unwrap() > 0.0);
        let two = seed_level(&a[..2], &b, &[], (-1.0, 1.0)).unwrap();
        assert_eq!(two.t_interval, None, "n too small");
        assert_eq!(two.bootstrap, None);
        assert!(seed_level(&a, &[(7, 0.1)], &[], (-1.0, 1.0)).is_none());
    }

    #[test]
    fn ranks_average_ties() {
        let (ranks, ties) = average_ranks(&[3.0, 1.0, 3.0, 2.0]);
        assert_eq!(ranks, [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(ties, [1, 1, 2]);
    }
}
