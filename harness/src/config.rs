//! Experiment files: TOML, read with serde, unknown keys rejected.
//!
//! An experiment is datasets x methods x labeled ratios x seeds under one training budget. Every
//! error names the file and the key at fault.

use crate::data::splits::SplitSpec;
use crate::data::DatasetSpec;
use crate::evaluate::EvaluationSpec;
use crate::method::Budget;
use crate::model::ModelSpec;
// The staged loop's own settings live beside it; experiment files name them here.
use crate::staged::StagedSpec;
pub use crate::staged::{FinalModel, PseudoLabelSpec, PseudoLabels, Relabel, StudentInit};
use crate::train::augment::Augmentation;
use crate::train::OptimizerSpec;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Results go to `<results root>/<name>/`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub datasets: Vec<DatasetSpec>,
    pub methods: Vec<MethodSpec>,
    pub labeled_ratios: Vec<f64>,
    pub seeds: Vec<u64>,
    pub budget: Budget,
    #[serde(default)]
    pub model: ModelSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub splits: SplitSpec,
    /// Training-time augmentation, the same for every method.
    #[serde(default)]
    pub augmentation: Augmentation,
    /// How test cases are scored.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// What is written beside the records (does not change results; not hashed).
    #[serde(default)]
    pub output: OutputSpec,
    /// Checkpoints of long runs (do not change results; not hashed).
    #[serde(default)]
    pub checkpoint: crate::checkpoint::CheckpointSpec,
    /// What the report tests (does not change results; not hashed).
    #[serde(default)]
    pub report: ReportSpec,
}

pub use atso_schema::comparisons::ReportSpec;

/// `[output]` of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Write each test case's predicted label map as NIfTI on the case's native grid, with the
    /// image's geometry, to `predictions/<run_id>/<case>.nii.gz`.
    #[serde(default)]
    pub save_predictions: bool,
    /// Keep one slice of every test case, its truth and each run's prediction as small PNG files
    /// (`previews/`), which the report's qualitative figure draws (on by default).
    #[serde(default = "yes")]
    pub previews: bool,
    /// Write each run's training curve as a TensorBoard event file under
    /// `tensorboard/<run_id>/`, for `tensorboard --logdir results/` (off by default).
    #[serde(default)]
    pub tensorboard: bool,
}

fn yes() -> bool {
    true
}

impl Default for OutputSpec {
    fn default() -> Self {
        Self {
            save_predictions: false,
            previews: true,
            tensorboard: false,
        }
    }
}

/// How mean teacher's EMA decay relates to the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EmaScaling {
    /// The teacher averages over the same fraction of the run as in SSL4MIS (see baselines).
    #[default]
    Budget,
    /// `ema_decay` as given, per step.
    None,
}

fn default_warmup() -> f64 {
    0.4
}
fn default_pseudo() -> PseudoLabels {
    PseudoLabels::Hard
}

/// One `[[methods]]` entry; `kind` picks the implementation, `label` names it in results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MethodSpec {
    /// Labeled data only (lower bound).
    Supervised {
        #[serde(default)]
        label: Option<String>,
        /// Train for this fraction of the budget only. With a staged method's
        /// `supervised_fraction` it is that method's M0, step for step (same seed, pool and
        /// schedule): a control that spends fewer steps than the compared methods, as the runs
        /// table's `iterations_used` says. Absent: the whole budget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_fraction: Option<f64>,
    },
    /// True labels on every training case, labeled and unlabeled (upper bound).
    FullySupervised {
        #[serde(default)]
        label: Option<String>,
    },
    /// Asynchronous teacher-student optimisation.
    Atso {
        #[serde(default)]
        label: Option<String>,
        /// Number of unlabeled subsets K.
        #[serde(default = "default_subsets")]
        subsets: usize,
        /// Passes over all K subsets.
        #[serde(default = "default_rounds")]
        rounds: usize,
        #[serde(default = "default_atso_init")]
        init: StudentInit,
        /// Which subset each student relabels (other: ATSO; own: the asynchrony-removed control).
        #[serde(default)]
        relabel: Relabel,
        #[serde(default, rename = "final")]
        final_model: FinalModel,
        /// Fraction of the budget spent training the supervised model M0 that makes the first labels.
        #[serde(default = "default_warmup")]
        supervised_fraction: f64,
        #[serde(default = "default_pseudo")]
        pseudo_labels: PseudoLabels,
        /// Pixels whose teacher confidence is below this are ignored (0 keeps every pixel).
        #[serde(default)]
        confidence_threshold: f64,
        /// Pseudo-labeled images per batch (default: half the batch); the rest are labeled.
        #[serde(default)]
        unlabeled_per_batch: Option<usize>,
    },
    /// Naive synchronous self-training: the current model relabels all unlabeled data at once.
    SelfTraining {
        #[serde(default)]
        label: Option<String>,
        /// Generations; default matches ATSO's default stages (subsets x rounds = 4).
        #[serde(default = "default_generations")]
        generations: usize,
        #[serde(default = "default_self_training_init")]
        init: StudentInit,
        #[serde(default, rename = "final")]
        final_model: FinalModel,
        /// Fraction of the budget spent training the supervised model M0 that makes the first labels.
        #[serde(default = "default_warmup")]
        supervised_fraction: f64,
        #[serde(default = "default_pseudo")]
        pseudo_labels: PseudoLabels,
        /// Pixels whose teacher confidence is below this are ignored (0 keeps every pixel).
        #[serde(default)]
        confidence_threshold: f64,
        /// Pseudo-labeled images per batch (default: half the batch); the rest are labeled.
        #[serde(default)]
        unlabeled_per_batch: Option<usize>,
    },
    /// Mean teacher (SSL4MIS recipe), constants scaled to the budget.
    MeanTeacher {
        #[serde(default)]
        label: Option<String>,
        #[serde(default = "default_ema")]
        ema_decay: f64,
        #[serde(default = "default_consistency")]
        consistency: f64,
        #[serde(default)]
        ema_scaling: EmaScaling,
    },
}

fn default_subsets() -> usize {
    2
}
fn default_rounds() -> usize {
    2
}
fn default_generations() -> usize {
    4
}
fn default_atso_init() -> StudentInit {
    StudentInit::Base
}
fn default_self_training_init() -> StudentInit {
    StudentInit::Teacher
}
fn default_ema() -> f64 {
    0.99
}
fn default_consistency() -> f64 {
    0.1
}

impl MethodSpec {
    /// The implementation name (`kind` in the file).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Supervised { .. } => "supervised",
            Self::FullySupervised { .. } => "fully-supervised",
            Self::Atso { .. } => "atso",
            Self::SelfTraining { .. } => "self-training",
            Self::MeanTeacher { .. } => "mean-teacher",
        }
    }

    /// The name used in results: `label`, or the kind.
    pub fn label(&self) -> String {
        let label = match self {
            Self::Supervised { label, .. } | Self::FullySupervised { label } => label,
            Self::Atso { label, .. } | Self::SelfTraining { label, .. } | Self::MeanTeacher { label, .. } => label,
        };
        label.clone().unwrap_or_else(|| self.kind().to_string())
    }

    /// The pseudo-label settings of ATSO and self-training entries.
    pub fn pseudo(&self) -> Option<PseudoLabelSpec> {
        match self {
            Self::Atso {
                supervised_fraction,
                pseudo_labels,
                confidence_threshold,
                unlabeled_per_batch,
                ..
            }
            | Self::SelfTraining {
                supervised_fraction,
                pseudo_labels,
                confidence_threshold,
                unlabeled_per_batch,
                ..
            } => Some(PseudoLabelSpec {
                supervised_fraction: *supervised_fraction,
                pseudo_labels: *pseudo_labels,
                confidence_threshold: *confidence_threshold,
                unlabeled_per_batch: *unlabeled_per_batch,
            }),
            _ => None,
        }
    }

    /// The staged-loop settings of ATSO and self-training entries (self-training is one subset
    /// relabeled by the model that trained on it).
    pub fn staged(&self) -> Option<StagedSpec> {
        let pseudo = self.pseudo()?;
        match self {
            Self::Atso {
                rounds,
                init,
                relabel,
                final_model,
                ..
            } => Some(StagedSpec {
                rounds: *rounds,
                init: *init,
                relabel: *relabel,
                final_model: *final_model,
                pseudo,
            }),
            Self::SelfTraining {
                generations,
                init,
                final_model,
                ..
            } => Some(StagedSpec {
                rounds: *generations,
                init: *init,
                relabel: Relabel::Own,
                final_model: *final_model,
                pseudo,
            }),
            _ => None,
        }
    }

    fn validate(&self) -> Result<()> {
        validate_name("methods", "label", &self.label())?;
        let check_pseudo = |p: &PseudoLabelSpec| -> Result<()> {
            if !(p.supervised_fraction > 0.0 && p.supervised_fraction < 1.0) {
                bail!(
                    "methods '{}': supervised_fraction must be in (0, 1), got {}",
                    self.label(),
                    p.supervised_fraction
                );
            }
            if !(0.0..1.0).contains(&p.confidence_threshold) {
                bail!(
                    "methods '{}': confidence_threshold must be in [0, 1), got {}",
                    self.label(),
                    p.confidence_threshold
                );
            }
            Ok(())
        };
        match self {
            Self::Atso { subsets, rounds, .. } => {
                if *subsets < 2 {
                    bail!(
                        "methods '{}': subsets must be at least 2, got {subsets} (ATSO relabels a subset the \
                         student did not train on; with one subset it is synchronous self-training: kind = \"self-training\")",
                        self.label()
                    );
                }
                if *rounds < 1 {
                    bail!("methods '{}': rounds must be at least 1", self.label());
                }
                check_pseudo(&self.pseudo().expect("atso has pseudo settings"))
            }
            Self::SelfTraining { generations, .. } => {
                if *generations < 1 {
                    bail!("methods '{}': generations must be at least 1", self.label());
                }
                check_pseudo(&self.pseudo().expect("self-training has pseudo settings"))
            }
            Self::Supervised {
                budget_fraction: Some(fraction),
                ..
            } if !(*fraction > 0.0 && *fraction <= 1.0) => {
                bail!("methods '{}': budget_fraction must be in (0, 1], got {fraction}", self.label())
            }
            Self::MeanTeacher {
                ema_decay, consistency, ..
            } => {
                if !(0.0..1.0).contains(ema_decay) || *consistency < 0.0 {
                    bail!("methods '{}': ema_decay must be in [0, 1) and consistency >= 0", self.label());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Experiment {
    /// Parses and validates experiment TOML.
    pub fn from_toml(text: &str) -> Result<Self> {
        let experiment: Experiment = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        experiment.validate()?;
        Ok(experiment)
    }

    /// Checks what serde cannot: ranges, emptiness, uniqueness.
    pub fn validate(&self) -> Result<()> {
        validate_name("name", "experiment name", &self.name)?;
        if self.datasets.is_empty() {
            bail!("datasets: at least one [[datasets]] entry is required");
        }
        if self.methods.is_empty() {
            bail!("methods: at least one [[methods]] entry is required");
        }
        if self.labeled_ratios.is_empty() {
            bail!("labeled_ratios: at least one ratio is required");
        }
        if let Some(r) = self.labeled_ratios.iter().find(|r| !(**r > 0.0 && **r <= 1.0)) {
            bail!("labeled_ratios: {r} is outside (0, 1]");
        }
        if self.seeds.is_empty() {
            bail!("seeds: at least one seed is required");
        }
        unique("labeled_ratios", self.labeled_ratios.iter().map(|r| r.to_string()))?;
        unique("seeds", self.seeds.iter().map(|s| s.to_string()))?;
        unique("datasets", self.datasets.iter().map(|d| d.name.clone()))?;
        unique("methods", self.methods.iter().map(MethodSpec::label))?;
        for dataset in &self.datasets {
            dataset.validate()?;
            if let Some(reference) = &dataset.reference_dataset {
                let Some(target) = self.datasets.iter().find(|d| &d.name == reference) else {
                    bail!(
                        "datasets '{}': reference_dataset '{reference}' is not a [[datasets]] entry",
                        dataset.name
                    );
                };
                if target.reference_dataset.is_some() {
                    bail!("datasets '{reference}': a reference dataset cannot have a reference of its own");
                }
            }
        }
        if self.datasets.iter().all(|d| d.reference_only) {
            bail!("datasets: every entry is reference_only, so nothing would run");
        }
        for method in &self.methods {
            method.validate()?;
        }
        let labels: Vec<String> = self.methods.iter().map(MethodSpec::label).collect();
        for [method, against] in &self.report.comparisons {
            for label in [method, against] {
                if !labels.contains(label) {
                    bail!(
                        "report.comparisons: '{label}' is not the label of a [[methods]] entry ({})",
                        labels.join(", ")
                    );
                }
            }
            if method == against {
                bail!("report.comparisons: '{method}' is compared with itself");
            }
        }
        unique(
            "report.comparisons",
            self.report.comparisons.iter().map(|[a, b]| format!("{a} − {b}")),
        )?;
        if self.evaluation.validation_every == Some(0) {
            bail!("evaluation.validation_every must be at least 1 (leave it out to score validation only at the end)");
        }
        let b = &self.budget;
        if b.iterations == 0 {
            bail!("budget.iterations must be at least 1");
        }
        if b.batch_size < 2 {
            bail!(
                "budget.batch_size must be at least 2 (batch normalisation needs a batch), got {}",
                b.batch_size
            );
        }
        if b.eval_batch_size == 0 {
            bail!("budget.eval_batch_size must be at least 1");
        }
        self.model.validate(b.resolution)?;
        self.optimizer.validate()?;
        self.splits.validate()?;
        self.augmentation.validate()?;
        Ok(())
    }
}

pub use atso_schema::records::validate_name;

fn unique(key: &str, names: impl Iterator<Item = String>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name.clone()) {
            bail!("{key}: '{name}' appears twice; give each entry a distinct name/label");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
labeled_ratios = [0.5]
seeds = [0]
[budget]
iterations = 2
batch_size = 2
resolution = 16
[model]
channels = [4, 8]
dropout = [0.0, 0.0]
[[datasets]]
name = "p"
format = "phantom"
path = "data/p"
[[methods]]
kind = "supervised"
[[methods]]
kind = "atso"
subsets = 3
pseudo_labels = "soft"
"#;

    fn error_of(text: &str) -> String {
        format!("{:#}", Experiment::from_toml(text).unwrap_err())
    }

    #[test]
    fn minimal_file_parses_with_defaults() {
        let e = Experiment::from_toml(MINIMAL).unwrap();
        assert_eq!(e.methods[1].label(), "atso");
        match &e.methods[1] {
            MethodSpec::Atso {
                subsets,
                rounds,
                pseudo_labels,
                ..
            } => {
                assert_eq!((*subsets, *rounds), (3, 2));
                assert_eq!(*pseudo_labels, PseudoLabels::Soft);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn declared_comparisons_name_existing_methods_once() {
        let with = |pairs: &str| format!("{MINIMAL}\n[report]\ncomparisons = {pairs}\n");
        let e = Experiment::from_toml(&with(r#"[["atso", "supervised"]]"#)).unwrap();
        assert_eq!(e.report.comparisons, [["atso".to_string(), "supervised".to_string()]]);
        let unknown = error_of(&with(r#"[["atso", "mean-teacher"]]"#));
        assert!(
            unknown.contains("report.comparisons") && unknown.contains("'mean-teacher'"),
            "{unknown}"
        );
        let itself = error_of(&with(r#"[["atso", "atso"]]"#));
        assert!(itself.contains("compared with itself"), "{itself}");
        let twice = error_of(&with(r#"[["atso", "supervised"], ["atso", "supervised"]]"#));
        assert!(twice.contains("appears twice"), "{twice}");
        let budget_fraction = error_of(&MINIMAL.replace("kind = \"supervised\"", "kind = \"supervised\"\nbudget_fraction = 1.5"));
        assert!(budget_fraction.contains("budget_fraction"), "{budget_fraction}");
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let message = error_of(&MINIMAL.replace("seeds = [0]", "seeds = [0]\nsedes = [1]"));
        assert!(message.contains("sedes"), "{message}");
    }

    #[test]
    fn unknown_method_key_is_named() {
        let message = error_of(&MINIMAL.replace("subsets = 3", "subsets = 3\nsubset_count = 2"));
        assert!(message.contains("subset_count"), "{message}");
    }

    #[test]
    fn ratio_outside_unit_interval_is_rejected() {
        let message = error_of(&MINIMAL.replace("[0.5]", "[0.5, 1.5]"));
        assert!(message.contains("labeled_ratios") && message.contains("1.5"), "{message}");
        assert!(error_of(&MINIMAL.replace("[0.5]", "[0.0]")).contains("outside (0, 1]"));
    }

    #[test]
    fn atso_with_one_subset_is_rejected_as_self_training_in_disguise() {
        let message = error_of(&MINIMAL.replace("subsets = 3", "subsets = 1"));
        assert!(
            message.contains("subsets must be at least 2") && message.contains("self-training"),
            "{message}"
        );
    }

    #[test]
    fn missing_datasets_is_rejected() {
        let without = MINIMAL.replace("[[datasets]]\nname = \"p\"\nformat = \"phantom\"\npath = \"data/p\"\n", "");
        let message = error_of(&without);
        assert!(message.contains("datasets"), "{message}");
    }
}
