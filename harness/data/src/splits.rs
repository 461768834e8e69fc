//! Case-level splits: labeled / unlabeled / validation / test.
//!
//! Validation and test cases are held out by the split seed alone, so every method, ratio and run
//! seed is evaluated on the same cases. The labeled cases are the first `n` of a permutation drawn
//! from the run seed, so for one seed the labeled set of a smaller ratio is contained in that of a
//! larger one. Splits are written to files so any run can be re-created.

use crate::rng;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[splits]` of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Fraction of cases held out for validation (at least one case).
    #[serde(default = "default_val")]
    pub validation_fraction: f64,
    /// Fraction of cases held out for testing (at least one case).
    #[serde(default = "default_test")]
    pub test_fraction: f64,
    /// Seed of the hold-out draw; fixed across run seeds.
    #[serde(default)]
    pub seed: u64,
    /// With a dataset that defines cross-validation folds (preset nih-pancreas): the fold (1..)
    /// whose cases are the test set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fold: Option<usize>,
}

fn default_val() -> f64 {
    0.15
}
fn default_test() -> f64 {
    0.25
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            validation_fraction: default_val(),
            test_fraction: default_test(),
            seed: 0,
            test_fold: None,
        }
    }
}

/// The case ids of one run's split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub dataset: String,
    pub labeled_ratio: f64,
    pub seed: u64,
    pub labeled: Vec<String>,
    pub unlabeled: Vec<String>,
    pub validation: Vec<String>,
    pub test: Vec<String>,
    /// The transfer setting: the dataset the unlabeled, validation and test cases come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_dataset: Option<String>,
}

impl SplitSpec {
    /// Checks the fractions leave room for training cases.
    pub fn validate(&self) -> Result<()> {
        let ok = |f: f64| f > 0.0 && f < 1.0;
        if self.test_fold == Some(0) {
            bail!("splits: test_fold counts from 1");
        }
        if !ok(self.validation_fraction) || !ok(self.test_fraction) || self.validation_fraction + self.test_fraction >= 1.0 {
            bail!(
                "splits: validation_fraction ({}) and test_fraction ({}) must each be in (0, 1) and sum to less than 1",
                self.validation_fraction,
                self.test_fraction
            );
        }
        Ok(())
    }

    /// Splits `case_ids` for one (dataset, labeled ratio, run seed). The test cases are drawn
    /// by the split seed unless `fixed_test` gives them (a dataset's own test folder or fold).
    pub fn split(&self, dataset: &str, case_ids: &[String], fixed_test: Option<&[String]>, labeled_ratio: f64, seed: u64) -> Result<Split> {
        self.validate()?;
        let mut ids = case_ids.to_vec();
        ids.sort();
        let n = ids.len();
        let count = |f: f64| ((f * n as f64).round() as usize).max(1);
        let n_val = count(self.validation_fraction);
        // One shuffle by the split seed orders the hold-out: test cases first (unless fixed),
        // then validation cases.
        rng::shuffle(&mut ids, &mut rng::stream(self.seed, &format!("holdout:{dataset}")));
        let (test, rest): (Vec<String>, Vec<String>) = match fixed_test {
            Some(fixed) => {
                if let Some(unknown) = fixed.iter().find(|id| !ids.contains(id)) {
                    bail!("dataset '{dataset}': test case '{unknown}' is not one of its cases");
                }
                ids.iter().cloned().partition(|id| fixed.contains(id))
            }
            None => {
                let n_test = count(self.test_fraction).min(n);
                (ids[..n_test].to_vec(), ids[n_test..].to_vec())
            }
        };
        if test.is_empty() || rest.len() < n_val + 1 {
            bail!(
                "dataset '{dataset}': {n} cases are too few for {} test + {n_val} validation + 1 training case",
                test.len()
            );
        }
        let test = sorted(&test);
        let validation = sorted(&rest[..n_val]);
        let mut pool = sorted(&rest[n_val..]);
        rng::shuffle(&mut pool, &mut rng::stream(seed, &format!("labeled:{dataset}")));
        let n_labeled = ((labeled_ratio * pool.len() as f64).round() as usize).clamp(1, pool.len());
        Ok(Split {
            dataset: dataset.to_string(),
            labeled_ratio,
            seed,
            labeled: sorted(&pool[..n_labeled]),
            unlabeled: sorted(&pool[n_labeled..]),
            validation,
            test,
            reference_dataset: None,
        })
    }
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut out = ids.to_vec();
    out.sort();
    out
}

impl Split {
    /// Writes the split as JSON; an existing file must hold the same split (never overwritten
    /// with a different one).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        if let Ok(existing) = std::fs::read_to_string(path) {
            if existing == text {
                return Ok(());
            }
            bail!("{}: already holds a different split; refusing to overwrite it", path.display());
        }
        crate::fsio::write_atomic(path, text.as_bytes())
    }

    /// Reads a split written by [`Split::write`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a split file", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i}")).collect()
    }

    #[test]
    fn split_is_a_partition_and_reproducible() {
        let spec = SplitSpec::default();
        let split = spec.split("d", &ids(20), None, 0.25, 3).unwrap();
        let mut all: Vec<String> = [&split.labeled, &split.unlabeled, &split.validation, &split.test]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        all.sort();
        let mut expected = ids(20);
        expected.sort();
        assert_eq!(all, expected);
        assert_eq!(split, spec.split("d", &ids(20), None, 0.25, 3).unwrap());
    }

    #[test]
    fn holdout_fixed_across_seeds_and_labeled_sets_nested() {
        let spec = SplitSpec::default();
        let small = spec.split("d", &ids(20), None, 0.2, 1).unwrap();
        let large = spec.split("d", &ids(20), None, 0.6, 1).unwrap();
        let other_seed = spec.split("d", &ids(20), None, 0.2, 2).unwrap();
        assert_eq!(small.test, other_seed.test);
        assert_eq!(small.validation, other_seed.validation);
        assert!(small.labeled.iter().all(|id| large.labeled.contains(id)));
    }

    #[test]
    fn a_fixed_test_set_is_kept_and_the_rest_split() {
        let spec = SplitSpec::default();
        let test: Vec<String> = ids(20)[..5].to_vec();
        let split = spec.split("d", &ids(20), Some(&test), 0.5, 1).unwrap();
        let mut got = split.test.clone();
        got.sort();
        let mut want = test.clone();
        want.sort();
        assert_eq!(got, want);
        assert!(split.validation.iter().all(|id| !test.contains(id)));
        assert_eq!(split.validation.len(), 3, "15 % of all 20 cases");
        let message = format!("{:#}", spec.split("d", &ids(20), Some(&["nope".to_string()]), 0.5, 1).unwrap_err());
        assert!(message.contains("nope"), "{message}");
    }

    #[test]
    fn refuses_to_overwrite_a_different_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.json");
        let spec = SplitSpec::default();
        let split = spec.split("d", &ids(10), None, 0.5, 1).unwrap();
        split.write(&path).unwrap();
        split.write(&path).unwrap();
        assert_eq!(Split::read(&path).unwrap(), split);
        assert!(spec.split("d", &ids(10), None, 0.5, 2).unwrap().write(&path).is_err());
    }
}
