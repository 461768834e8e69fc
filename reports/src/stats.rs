//! The statistics a reviewer asks for: mean, sample standard deviation and a 95 % t interval
//! over seeds; for paired per-case results, a bootstrap interval of the mean difference and a
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

    #[test]
    fn ranks_average_ties() {
        let (ranks, ties) = average_ranks(&[3.0, 1.0, 3.0, 2.0]);
        assert_eq!(ranks, [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(ties, [1, 1, 2]);
    }
}
