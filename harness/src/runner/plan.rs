//! From an experiment file to the list of runs, each with the hash that identifies its result.
//!
//! What the configuration hash covers (a run is "the same run" exactly when all of these agree):
//! the experiment name; the dataset entry (name, format, path, intensity window, slicing axis,
//! generator settings, preset); the method entry (kind, label and every setting); the labeled
//! ratio; the seed; `[budget]`, `[model]`, `[optimizer]` (schedule included), `[splits]`,
//! `[augmentation]` and `[evaluation]`; the fingerprint of the prepared dataset (so changed data
//! files make new runs); and the compute backend (with its kernel features).
//!
//! Not covered, and recorded instead: the git commit (an ok row recorded at another commit is
//! reused but reported as stale; `--rerun-stale` runs it again), the machine and thread count
//! (which can change the last digits of CPU results: docs/methods.md), `[output]` (saving
//! predictions does not change results) and the description text.
//!
//! The cell hash is the same hash without the seed: the runs of one table cell share it.

use crate::config::{Experiment, MethodSpec};
use crate::data::splits::SplitSpec;
use crate::data::DatasetSpec;
use crate::evaluate::EvaluationSpec;
use crate::method::Budget;
use crate::model::ModelSpec;
use crate::train::augment::Augmentation;
use crate::train::OptimizerSpec;
use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One expanded run: everything in the experiment file that determines its result.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub experiment: String,
    pub dataset: DatasetSpec,
    /// The transfer setting's reference dataset (unlabeled, validation and test cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<DatasetSpec>,
    pub method: MethodSpec,
    pub labeled_ratio: f64,
    pub seed: u64,
    pub budget: Budget,
    pub model: ModelSpec,
    pub optimizer: OptimizerSpec,
    pub splits: SplitSpec,
    pub augmentation: Augmentation,
    pub evaluation: EvaluationSpec,
}

/// The hash input: the run spec, the data it ran on, and the backend.
#[derive(Serialize)]
struct HashInput<'a> {
    run: &'a RunSpec,
    data_fingerprint: &'a str,
    backend: &'a str,
}

/// First 16 hex digits of the SHA-256 of `value`'s JSON form.
pub fn short_hash(value: &impl Serialize) -> String {
    let json = serde_json::to_string(value).expect("hash inputs serialise");
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl RunSpec {
    /// The run's identity (see the module doc).
    pub fn config_hash(&self, data_fingerprint: &str, backend: &str) -> String {
        short_hash(&HashInput {
            run: self,
            data_fingerprint,
            backend,
        })
    }

    /// The identity of the run's table cell: the config hash with the seed left out.
    pub fn cell_hash(&self, data_fingerprint: &str, backend: &str) -> String {
        let mut cell = self.clone();
        cell.seed = 0;
        short_hash(&(
            HashInput {
                run: &cell,
                data_fingerprint,
                backend,
            },
            "cell",
        ))
    }

    /// The identity of the run's table row (a series over labeled ratios): the config hash
    /// with the seed and the labeled ratio left out. Reports label configurations of one method
    /// by it, so one configuration keeps one row label at every ratio.
    pub fn series_hash(&self, data_fingerprint: &str, backend: &str) -> String {
        let mut series = self.clone();
        series.seed = 0;
        series.labeled_ratio = 0.0;
        short_hash(&(
            HashInput {
                run: &series,
                data_fingerprint,
                backend,
            },
            "series",
        ))
    }

    /// Short human-readable name: dataset/method/ratio/seed.
    pub fn name(&self) -> String {
        format!(
            "{}_{}_r{}_s{}",
            self.dataset.name,
            self.method.label(),
            self.labeled_ratio,
            self.seed
        )
    }
}

/// Datasets x methods x ratios x seeds, in that nesting order (datasets used only as another's
/// reference get no runs of their own).
pub fn expand(experiment: &Experiment) -> Vec<RunSpec> {
    let mut runs = Vec::new();
    for dataset in experiment.datasets.iter().filter(|d| !d.reference_only) {
        let reference = dataset
            .reference_dataset
            .as_ref()
            .and_then(|name| experiment.datasets.iter().find(|d| &d.name == name).cloned());
        for method in &experiment.methods {
            for &labeled_ratio in &experiment.labeled_ratios {
                for &seed in &experiment.seeds {
                    runs.push(RunSpec {
                        experiment: experiment.name.clone(),
                        dataset: dataset.clone(),
                        reference: reference.clone(),
                        method: method.clone(),
                        labeled_ratio,
                        seed,
                        budget: experiment.budget.clone(),
                        model: experiment.model.clone(),
                        optimizer: experiment.optimizer.clone(),
                        splits: experiment.splits.clone(),
                        augmentation: experiment.augmentation.clone(),
                        evaluation: experiment.evaluation.clone(),
                    });
                }
            }
        }
    }
    runs
}

/// The i-th of n disjoint parts of a run list (1-based `index`), for `--shard i/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses "i/n" with 1 <= i <= n.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((index, count)) if count >= 1 && (1..=count).contains(&index) => Ok(Self { index, count }),
            _ => bail!("--shard '{text}': expected i/n with 1 <= i <= n, e.g. 2/8"),
        }
    }

    /// Whether the run at `position` of the expanded list belongs to this shard (round-robin, so
    /// every shard gets a mix of methods and seeds).
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }
}

/// The data fingerprint a run's hashes cover: its dataset's, or, in the transfer setting, one
/// hash of its dataset's and its reference dataset's. `sweep` and `status` both use it, so they
/// agree on every run's identity.
pub fn combined_fingerprint(mut fingerprints: Vec<String>) -> String {
    if fingerprints.len() == 1 {
        fingerprints.remove(0)
    } else {
        short_hash(&fingerprints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_runs() {
        let shards: Vec<Shard> = (1..=3).map(|i| Shard::parse(&format!("{i}/3")).unwrap()).collect();
        for position in 0..20 {
            assert_eq!(shards.iter().filter(|s| s.contains(position)).count(), 1);
        }
        for bad in ["0/3", "4/3", "1/0", "x", "1-3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
