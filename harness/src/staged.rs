//! The staged pseudo-labeling loop shared by ATSO and synchronous self-training.
//!
//! ```text
//! M0 <- train_supervised(L)                        (supervised_fraction of the budget)
//! Y[k] <- predict(M0, U[k]) for every subset k
//! for each stage (rounds x K stages, k cycling through the subsets):
//!     S <- M0 (init = base) or the previous student (init = teacher)
//!     S <- finetune(S, L + (U[k], Y[k]))             (labeled images in every batch)
//!     j <- k+1 mod K (relabel = other: ATSO) or k (relabel = own: a control)
//!     Y[j] <- predict(S, U[j])
//! return the last student, or the mean of the last K students (final = ensemble)
//! ```
//! ATSO is this loop with K >= 2 subsets and `relabel = other`; synchronous self-training is
//! K = 1 (the model relabels the set it just trained on). Every phase runs its own learning-rate
//! schedule by default (see `train::schedule`), and the budget is split so the total step count
//! equals every other method's.
//!
//! Each stage records the lazy-learning measures: at the stage's real first training step (train
//! mode, the batch actually drawn), the loss on its pseudo-labeled images against the labels
//! trained on, against the student's own predictions ("self" labels) and against the latest
//! labels of those images made by a model that never trained on them ("cross" labels); the flip
//! rate over foreground pixels; pseudo-label Dice on the trained subset and on all of U. The
//! ledger records who labeled what and where each student started, so the lineage audit
//! ([`self_labeled_stages`]) can be checked on any run.

use crate::data::Case;
use crate::evaluate::{dice_of_labels, LabelDice};
use crate::method::{train_supervised, Budget, MixedObjective, ProbeTargets, RunContext, Trained};
use crate::model::UNet;
use crate::records::{LedgerEntry, LedgerEvent, StageRecord};
use crate::train::batch::{Example, Target, IGNORE};
use crate::train::infer;
use anyhow::{bail, Result};
use burn::module::Module;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// How labels of the unlabeled set are represented when trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PseudoLabels {
    /// Argmax class per pixel.
    Hard,
    /// The teacher's class distribution per pixel.
    Soft,
}

/// Where each stage's student starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentInit {
    /// Continue from the current model (the previous stage's student).
    Teacher,
    /// Restart from the supervised model M0 (ATSO's default: clause (i) of the paper).
    Base,
}

/// Which subset a stage's student relabels after fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Relabel {
    /// The next subset, one it did not just train on (ATSO's asynchrony).
    #[default]
    Other,
    /// The subset it just trained on (a control: asynchrony removed, the split of U kept).
    Own,
}

/// The model a staged method hands to evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FinalModel {
    /// The last student.
    #[default]
    Last,
    /// The mean softmax of the last K students (K = number of subsets).
    Ensemble,
}

/// Settings shared by the pseudo-labeling methods (ATSO and synchronous self-training), gathered
/// from their `[[methods]]` entry (the keys are written inline there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoLabelSpec {
    pub supervised_fraction: f64,
    pub pseudo_labels: PseudoLabels,
    pub confidence_threshold: f64,
    pub unlabeled_per_batch: Option<usize>,
}

/// How a staged method runs its stages.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedSpec {
    pub rounds: usize,
    pub init: StudentInit,
    pub relabel: Relabel,
    pub final_model: FinalModel,
    pub pseudo: PseudoLabelSpec,
}

/// How the budget is divided: the supervised model, then equal stages (the first ones take the
/// remainder, one step each), summing exactly to `budget.iterations`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    pub supervised_steps: usize,
    pub stage_steps: Vec<usize>,
}

/// Steps of the supervised model M0 when it gets `fraction` of a `total`-step budget (at least
/// one): also what supervised-only trains with `budget_fraction`, so the two are the same model.
pub fn supervised_steps(fraction: f64, total: usize) -> usize {
    ((fraction * total as f64).round() as usize).max(1)
}

impl StagePlan {
    pub fn new(pseudo: &PseudoLabelSpec, budget: &Budget, stages: usize) -> Result<Self> {
        let total = budget.iterations;
        let supervised_steps = supervised_steps(pseudo.supervised_fraction, total);
        let left = total.saturating_sub(supervised_steps);
        if left < stages {
            bail!("budget.iterations = {total} leaves {left} steps after the supervised model: too few for {stages} stages");
        }
        let stage_steps = (0..stages).map(|i| left / stages + usize::from(i < left % stages)).collect();
        Ok(Self {
            supervised_steps,
            stage_steps,
        })
    }
}

/// The settings every staged method records: init, relabeling, final model, pseudo-label form
/// and threshold, batch mix and how the budget is divided (absent where the budget is too small;
/// the run then fails saying so).
pub fn staged_settings(spec: &StagedSpec, subsets: usize, budget: &Budget) -> serde_json::Map<String, serde_json::Value> {
    let stages = subsets * spec.rounds;
    let plan = StagePlan::new(&spec.pseudo, budget, stages).ok();
    let json = serde_json::json!({
        "init": spec.init,
        "relabel": spec.relabel,
        "final": spec.final_model,
        "ensemble_members": match spec.final_model { FinalModel::Last => 1, FinalModel::Ensemble => subsets },
        "pseudo_labels": spec.pseudo.pseudo_labels,
        "confidence_threshold": spec.pseudo.confidence_threshold,
        "unlabeled_per_batch": unlabeled_per_batch(&spec.pseudo, budget),
        "supervised_steps": plan.as_ref().map(|p| p.supervised_steps),
        "stage_steps": plan.map(|p| p.stage_steps),
    });
    match json {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

/// Pseudo-labeled images per batch (default: half the batch, at least one labeled image left).
pub fn unlabeled_per_batch(pseudo: &PseudoLabelSpec, budget: &Budget) -> usize {
    pseudo
        .unlabeled_per_batch
        .unwrap_or(budget.batch_size / 2)
        .min(budget.batch_size - 1)
}

/// Labels of one subset: the training targets, the hard labels they imply (for diagnostics) and
/// the stage whose model produced them.
#[derive(Clone)]
struct SubsetLabels {
    examples: Vec<Example>,
    hard: Vec<Vec<Vec<u8>>>,
    from_stage: usize,
}

/// Runs the staged loop over `subsets` (name, cases).
pub fn run_staged(ctx: &mut RunContext, subsets: Vec<(String, Vec<&Case>)>, spec: &StagedSpec) -> Result<Trained> {
    let k_count = subsets.len();
    let plan = StagePlan::new(&spec.pseudo, &ctx.budget, k_count * spec.rounds)?;
    let labeled_cases = ctx.data.labeled.clone();
    let (base, _) = train_supervised(ctx, &labeled_cases, plan.supervised_steps, "M0")?;
    let mut labels: Vec<SubsetLabels> = subsets
        .iter()
        .map(|(_, cases)| pseudo_label(ctx, &base, cases, &spec.pseudo, 0))
        .collect();
    // The latest labels of each subset made by a model whose lineage never trained on it.
    let mut cross: Vec<SubsetLabels> = labels.clone();
    for (name, cases) in &subsets {
        ctx.ledger.push(LedgerEntry::label(0, name, 0, case_ids(cases)));
    }
    // exposure[s]: subsets the model after stage s (and its ancestors) trained on.
    let mut exposure: Vec<BTreeSet<usize>> = vec![BTreeSet::new()];
    let mut current = base.valid().train();
    let mut current_stage = 0;
    let mut students: Vec<UNet> = Vec::new();
    let n_unlabeled = unlabeled_per_batch(&spec.pseudo, &ctx.budget);
    let labeled_examples = RunContext::true_examples(&labeled_cases);
    let class_names = ctx.scored_class_names();
    for (index, &steps) in plan.stage_steps.iter().enumerate() {
        let stage = index + 1;
        let k = index % k_count;
        let (name, cases) = &subsets[k];
        let (student, init_from) = match spec.init {
            StudentInit::Teacher => (current, current_stage),
            // A deep copy: BN running statistics are shared between clones.
            StudentInit::Base => (base.valid().train(), 0),
        };
        ctx.ledger
            .push(LedgerEntry::train(stage, name, labels[k].from_stage, init_from, case_ids(cases)));
        // The student's own predictions before the stage: its "self" labels, and the reference
        // for the flip rate.
        let before = ctx.hard_predictions(&student, cases);
        let self_targets: Vec<Arc<Target>> = before.iter().map(|l| Arc::new(Target::Hard(l.clone()))).collect();
        let cross_targets: Vec<Arc<Target>> = cross[k].examples.iter().map(|e| e.target.clone()).collect();
        let pseudo_label_dice = labels_dice(ctx, cases, &labels[k].hard);
        let all_cases: Vec<&Case> = subsets.iter().flat_map(|(_, c)| c.iter().copied()).collect();
        let all_labels: Vec<Vec<Vec<u8>>> = labels.iter().flat_map(|l| l.hard.iter().cloned()).collect();
        let pseudo_label_dice_all = labels_dice(ctx, &all_cases, &all_labels).mean;
        let labeled_pool = ctx.pool(labeled_examples.clone(), &format!("stage-{stage}-labeled"));
        let pseudo_pool = ctx.pool(labels[k].examples.clone(), &format!("stage-{stage}-pseudo"));
        let mut objective = MixedObjective::new(
            ctx,
            vec![
                ("supervised", labeled_pool, ctx.budget.batch_size - n_unlabeled),
                ("pseudo_label", pseudo_pool, n_unlabeled),
            ],
        )
        .with_first_step_probe(
            1,
            vec![(ProbeTargets::OwnPredictions, self_targets), (ProbeTargets::Cross, cross_targets)],
        );
        let (student, log) = ctx.fit(student, steps, &mut objective, &format!("stage {stage}"))?;
        let probe = objective.probe_losses()?;
        let after = ctx.hard_predictions(&student, cases);
        let validation_dice = ctx.validation_dice(&student);
        let mut exposed = exposure[init_from].clone();
        exposed.insert(k);
        let relabeled = match spec.relabel {
            Relabel::Other => (k + 1) % k_count,
            Relabel::Own => k,
        };
        let labels_self_made = exposure[labels[k].from_stage].contains(&k);
        let student_exposed = exposure[init_from].contains(&k);
        exposure.push(exposed);
        ctx.stages.push(StageRecord {
            stage,
            trained_subset: name.clone(),
            labels_from_stage: labels[k].from_stage,
            init_from_stage: init_from,
            labels_self_made,
            student_exposed,
            first_step_pseudo_loss: probe.get(&ProbeTargets::Trained).copied().unwrap_or(f64::NAN),
            first_step_loss_self: probe.get(&ProbeTargets::OwnPredictions).copied().unwrap_or(f64::NAN),
            first_step_loss_cross: probe.get(&ProbeTargets::Cross).copied().unwrap_or(f64::NAN),
            flip_rate: flip_rate(&before, &after, ctx.data.first_class as u8),
            flip_rate_all_pixels: flip_rate(&before, &after, 0),
            pseudo_label_dice: pseudo_label_dice.mean,
            pseudo_label_class_dice: by_class_name(&class_names, &pseudo_label_dice),
            pseudo_label_dice_all,
            validation_dice: validation_dice.mean,
            validation_class_dice: by_class_name(&class_names, &validation_dice),
            steps,
            lr_first: log.lr_first,
            lr_last: log.lr_last,
        });
        labels[relabeled] = pseudo_label(ctx, &student, &subsets[relabeled].1, &spec.pseudo, stage);
        if !exposure[stage].contains(&relabeled) {
            cross[relabeled] = labels[relabeled].clone();
        }
        ctx.ledger.push(LedgerEntry::label(
            stage,
            &subsets[relabeled].0,
            stage,
            case_ids(&subsets[relabeled].1),
        ));
        students.push(student.clone());
        current = student;
        current_stage = stage;
    }
    Ok(match spec.final_model {
        FinalModel::Last => current.into(),
        FinalModel::Ensemble => Trained {
            members: students.split_off(students.len().saturating_sub(k_count)),
        },
    })
}

/// Dice of label slices against the cases' true labels (a diagnostic: methods never see these
/// labels).
fn labels_dice(ctx: &RunContext, cases: &[&Case], labels: &[Vec<Vec<u8>>]) -> LabelDice {
    dice_of_labels(cases, labels, &ctx.scoring())
}

/// Per-class scores by class name, as records store them.
fn by_class_name(class_names: &[String], dice: &LabelDice) -> Vec<(String, Option<f64>)> {
    debug_assert_eq!(class_names.len(), dice.per_class.len(), "one score per scored class");
    class_names.iter().cloned().zip(dice.per_class.iter().copied()).collect()
}

/// Pseudo labels of `cases` by `model`: hard (argmax) or soft (probabilities), with pixels below
/// the confidence threshold ignored.
fn pseudo_label(ctx: &RunContext, model: &UNet, cases: &[&Case], spec: &PseudoLabelSpec, stage: usize) -> SubsetLabels {
    let classes = ctx.classes();
    let predictions = ctx.predict(std::slice::from_ref(model), cases);
    let mut examples = Vec::new();
    let mut hard = Vec::new();
    for (case, probs) in cases.iter().zip(predictions) {
        let mut case_hard = Vec::new();
        for (slice, p) in case.slices.iter().zip(probs) {
            let argmax = infer::argmax(&p, classes);
            let pixels = argmax.len();
            let confident: Vec<bool> = (0..pixels)
                .map(|i| p[argmax[i] as usize * pixels + i] as f64 >= spec.confidence_threshold)
                .collect();
            let target = match spec.pseudo_labels {
                PseudoLabels::Hard => Target::Hard(argmax.iter().zip(&confident).map(|(&c, &ok)| if ok { c } else { IGNORE }).collect()),
                PseudoLabels::Soft => Target::Soft {
                    weight: confident.iter().map(|&ok| f32::from(u8::from(ok))).collect(),
                    probs: p,
                },
            };
            examples.push(Example {
                image: Arc::new(slice.image.clone()),
                target: Arc::new(target),
            });
            case_hard.push(argmax);
        }
        hard.push(case_hard);
    }
    SubsetLabels {
        examples,
        hard,
        from_stage: stage,
    }
}

/// Fraction of pixels whose predicted class changed, among the pixels predicted as a class
/// `>= first_class` before or after (the union of foreground). With `first_class = 0` every
/// pixel counts. Over all pixels, air and background dominate and hide the change.
pub fn flip_rate(before: &[Vec<u8>], after: &[Vec<u8>], first_class: u8) -> f64 {
    let (mut changed, mut counted) = (0usize, 0usize);
    for (a, b) in before.iter().zip(after) {
        for (x, y) in a.iter().zip(b) {
            if *x >= first_class || *y >= first_class {
                counted += 1;
                changed += usize::from(x != y);
            }
        }
    }
    changed as f64 / counted.max(1) as f64
}

/// Stages whose training was self-referential over the whole lineage: the labels trained on
/// were made by a model whose lineage (itself and the models it was fine-tuned from) had already
/// trained on that subset, or the student started from such a model. This is what ATSO's
/// asynchrony with `init = base` avoids, what `init = teacher` reintroduces from the second round
/// on, and what synchronous self-training does from its second generation.
pub fn self_labeled_stages(ledger: &[LedgerEntry]) -> Vec<usize> {
    let trains: HashMap<usize, &LedgerEntry> = ledger
        .iter()
        .filter(|e| e.event == LedgerEvent::Train)
        .map(|e| (e.stage, e))
        .collect();
    // Subsets the model after `stage` and its ancestors trained on.
    fn exposure<'a>(stage: usize, trains: &HashMap<usize, &'a LedgerEntry>) -> BTreeSet<&'a str> {
        let mut out = BTreeSet::new();
        let mut at = stage;
        while let Some(entry) = trains.get(&at) {
            out.insert(entry.subset.as_str());
            match entry.init_from_stage {
                Some(parent) if parent < at => at = parent,
                _ => break,
            }
        }
        out
    }
    let mut stages: Vec<usize> = trains
        .values()
        .filter(|e| {
            let subset = e.subset.as_str();
            exposure(e.labels_from_stage, &trains).contains(subset)
                || e.init_from_stage.is_some_and(|init| exposure(init, &trains).contains(subset))
        })
        .map(|e| e.stage)
        .collect();
    stages.sort_unstable();
    stages
}

/// The ids of `cases`, as the ledger names them.
fn case_ids(cases: &[&Case]) -> Vec<String> {
    cases.iter().map(|c| c.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_plan_spends_exactly_the_budget() {
        let budget = Budget {
            iterations: 103,
            batch_size: 4,
            resolution: 16,
            eval_batch_size: 4,
        };
        let spec = PseudoLabelSpec {
            supervised_fraction: 0.4,
            pseudo_labels: PseudoLabels::Hard,
            confidence_threshold: 0.0,
            unlabeled_per_batch: None,
        };
        let plan = StagePlan::new(&spec, &budget, 4).unwrap();
        assert_eq!(plan.supervised_steps, 41);
        assert_eq!(plan.supervised_steps + plan.stage_steps.iter().sum::<usize>(), 103);
        assert_eq!(plan.stage_steps, [16, 16, 15, 15]);
        let tiny = Budget { iterations: 4, ..budget };
        assert!(StagePlan::new(&spec, &tiny, 4).is_err());
    }

    #[test]
    fn flip_rate_counts_changes_over_the_foreground_union() {
        // 8 pixels; 4 background in both; of the 4 others, 2 changed.
        let before = vec![vec![0, 0, 0, 0, 1, 1, 2, 0]];
        let after = vec![vec![0, 0, 0, 0, 1, 2, 2, 1]];
        assert_eq!(flip_rate(&before, &after, 1), 0.5);
        assert_eq!(flip_rate(&before, &after, 0), 0.25);
    }

    fn ledger(init: &[(usize, &str, usize, usize)]) -> Vec<LedgerEntry> {
        init.iter()
            .map(|&(stage, subset, labels_from, init_from)| LedgerEntry {
                stage,
                event: LedgerEvent::Train,
                subset: subset.into(),
                labels_from_stage: labels_from,
                init_from_stage: Some(init_from),
                cases: vec![],
            })
            .collect()
    }

    #[test]
    fn lineage_audit_of_the_four_schedules() {
        // ATSO, K = 2, two rounds, init = base: labels always come from a model trained only on
        // the other subset.
        let base = ledger(&[(1, "U1", 0, 0), (2, "U2", 1, 0), (3, "U1", 2, 0), (4, "U2", 3, 0)]);
        assert_eq!(self_labeled_stages(&base), Vec::<usize>::new());
        // init = teacher: from round 2 the lineage has already fitted U_k's older labels.
        let teacher = ledger(&[(1, "U1", 0, 0), (2, "U2", 1, 1), (3, "U1", 2, 2), (4, "U2", 3, 3)]);
        assert_eq!(self_labeled_stages(&teacher), [3, 4]);
        // Synchronous self-training (init = teacher or base): labels from the model that just
        // trained on all of U.
        let sync = ledger(&[(1, "all", 0, 0), (2, "all", 1, 1), (3, "all", 2, 2), (4, "all", 3, 3)]);
        assert_eq!(self_labeled_stages(&sync), [2, 3, 4]);
        let sync_base = ledger(&[(1, "all", 0, 0), (2, "all", 1, 0), (3, "all", 2, 0), (4, "all", 3, 0)]);
        assert_eq!(self_labeled_stages(&sync_base), [2, 3, 4]);
        // ATSO relabeling its own subset (asynchrony removed): round 2 trains on self-made labels.
        let own = ledger(&[(1, "U1", 0, 0), (2, "U2", 0, 0), (3, "U1", 1, 0), (4, "U2", 2, 0)]);
        assert_eq!(self_labeled_stages(&own), [3, 4]);
    }
}
