//! ATSO, asynchronous teacher-student optimisation (Huo et al., CVPR 2021), and the staged
//! pseudo-labeling loop it shares with synchronous self-training.
//!
//! ```text
//! M0 <- train_supervised(L)                       (supervised_fraction of the budget)
//! split U into U[1..K] by case (seeded, disjoint)
//! Y[k] <- predict(M0, U[k]) for every k
//! for r in 1..R: for k in 1..K:
//!     S <- M (init = teacher) or M0 (init = base)
//!     S <- finetune(S, L + (U[k], Y[k]))           (labeled images in every batch)
//!     Y[k+1 mod K] <- predict(S, U[k+1 mod K])    (relabel a subset S did not just train on)
//!     M <- S
//! ```
//! With K = 1 the relabeled subset is the one just trained on: that is synchronous
//! self-training, which is how the baseline reuses this loop. Every stage records the
//! lazy-learning measures and the ledger of who labeled what.

use crate::config::{PseudoLabelSpec, PseudoLabels, StudentInit};
use crate::data::Case;
use crate::method::{score_case, train_supervised, Budget, MixedObjective, RunContext};
use crate::model::UNet;
use crate::records::{LedgerEntry, StageRecord};
use crate::rng;
use crate::train::batch::{self, Example, Target, IGNORE};
use crate::train::infer;
use crate::train::loss;
use crate::train::metrics::summarise;
use anyhow::{bail, Result};
use burn::module::Module;
use std::sync::Arc;

/// The ATSO method as configured in an experiment file.
#[derive(Debug, Clone)]
pub struct Atso {
    pub subsets: usize,
    pub rounds: usize,
    pub init: StudentInit,
    pub pseudo: PseudoLabelSpec,
}

impl crate::method::Method for Atso {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        let mut settings = staged_settings(&self.pseudo, budget, self.init, self.subsets * self.rounds);
        settings.insert("subsets".into(), self.subsets.into());
        settings.insert("rounds".into(), self.rounds.into());
        settings.into()
    }

    fn train(&self, ctx: &mut RunContext) -> Result<UNet> {
        let subsets = partition(&ctx.data.unlabeled, self.subsets, ctx.seed)?;
        run_staged(ctx, subsets, self.rounds, self.init, &self.pseudo)
    }
}

/// Splits unlabeled cases into `k` disjoint subsets covering all of them: cases are shuffled by
/// the run seed and dealt round-robin, so subset sizes differ by at most one. Subsets are named
/// U1..UK and list their cases in id order.
pub fn partition<'a>(cases: &[&'a Case], k: usize, seed: u64) -> Result<Vec<(String, Vec<&'a Case>)>> {
    if cases.len() < k {
        bail!(
            "ATSO needs at least {k} unlabeled cases for {k} subsets, the split has {}; lower the labeled ratio or the subsets",
            cases.len()
        );
    }
    let mut order: Vec<&Case> = cases.to_vec();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    rng::shuffle(&mut order, &mut rng::stream(seed, "atso-partition"));
    let mut subsets: Vec<(String, Vec<&Case>)> = (1..=k).map(|i| (format!("U{i}"), Vec::new())).collect();
    for (i, case) in order.into_iter().enumerate() {
        subsets[i % k].1.push(case);
    }
    for (_, members) in subsets.iter_mut() {
        members.sort_by(|a, b| a.id.cmp(&b.id));
    }
    Ok(subsets)
}

/// How the budget is divided: the supervised model, then equal stages (the first ones take the
/// remainder, one step each), summing exactly to `budget.iterations`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    pub supervised_steps: usize,
    pub stage_steps: Vec<usize>,
}

impl StagePlan {
    pub fn new(pseudo: &PseudoLabelSpec, budget: &Budget, stages: usize) -> Result<Self> {
        let total = budget.iterations;
        let supervised_steps = ((pseudo.supervised_fraction * total as f64).round() as usize).max(1);
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

/// The settings every staged method records: init, pseudo-label form and threshold, batch mix and
/// how the budget is divided (absent where the budget is too small; the run then fails saying so).
pub fn staged_settings(
    pseudo: &PseudoLabelSpec,
    budget: &Budget,
    init: StudentInit,
    stages: usize,
) -> serde_json::Map<String, serde_json::Value> {
    let plan = StagePlan::new(pseudo, budget, stages).ok();
    let json = serde_json::json!({
        "init": init,
        "pseudo_labels": pseudo.pseudo_labels,
        "confidence_threshold": pseudo.confidence_threshold,
        "unlabeled_per_batch": unlabeled_per_batch(pseudo, budget),
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
struct SubsetLabels {
    examples: Vec<Example>,
    hard: Vec<Vec<Vec<u8>>>,
    from_stage: usize,
}

/// The staged loop shared by ATSO (K >= 2 subsets) and synchronous self-training (one subset).
pub fn run_staged(
    ctx: &mut RunContext,
    subsets: Vec<(String, Vec<&Case>)>,
    rounds: usize,
    init: StudentInit,
    pseudo: &PseudoLabelSpec,
) -> Result<UNet> {
    let plan = StagePlan::new(pseudo, &ctx.budget, subsets.len() * rounds)?;
    let labeled_cases = ctx.data.labeled.clone();
    let (base, _) = train_supervised(ctx, &labeled_cases, plan.supervised_steps);
    let mut labels: Vec<SubsetLabels> = subsets
        .iter()
        .map(|(_, cases)| pseudo_label(ctx, &base, cases, pseudo, 0))
        .collect();
    for (name, cases) in &subsets {
        ctx.ledger.push(LedgerEntry {
            stage: 0,
            event: "label".into(),
            subset: name.clone(),
            labels_from_stage: 0,
            init_from_stage: None,
            cases: ids(cases),
        });
    }
    let mut current = base.valid().train();
    let mut current_stage = 0;
    let n_unlabeled = unlabeled_per_batch(pseudo, &ctx.budget);
    let labeled_examples = RunContext::true_examples(&labeled_cases);
    for (index, &steps) in plan.stage_steps.iter().enumerate() {
        let stage = index + 1;
        let k = index % subsets.len();
        let (name, cases) = &subsets[k];
        let (student, init_from) = match init {
            StudentInit::Teacher => (current, current_stage),
            // A deep copy: BN running statistics are shared between clones.
            StudentInit::Base => (base.valid().train(), 0),
        };
        ctx.ledger.push(LedgerEntry {
            stage,
            event: "train".into(),
            subset: name.clone(),
            labels_from_stage: labels[k].from_stage,
            init_from_stage: Some(init_from),
            cases: ids(cases),
        });
        let first_step_pseudo_loss = pseudo_loss(ctx, &student, &labels[k].examples);
        // When the student starts from the model that made this subset's labels, its predictions
        // are those labels' argmax: no second inference pass.
        let before: Vec<Vec<u8>> = if init_from == labels[k].from_stage {
            labels[k].hard.iter().flatten().cloned().collect()
        } else {
            hard_predictions(ctx, &student, cases)
        };
        let labeled_pool = ctx.pool(labeled_examples.clone(), &format!("stage-{stage}-labeled"));
        let pseudo_pool = ctx.pool(labels[k].examples.clone(), &format!("stage-{stage}-pseudo"));
        let mut objective = MixedObjective::new(
            ctx,
            vec![(labeled_pool, ctx.budget.batch_size - n_unlabeled), (pseudo_pool, n_unlabeled)],
        );
        let (student, _) = ctx.fit(student, steps, &mut objective);
        let after = hard_predictions(ctx, &student, cases);
        let pseudo_label_dice = summarise(
            &cases
                .iter()
                .zip(&labels[k].hard)
                .map(|(case, hard)| score_case(case, hard, ctx.classes()))
                .collect::<Vec<_>>(),
        )
        .dice_mean;
        let validation_dice = ctx.evaluate(&student, &ctx.data.validation).1.dice_mean;
        ctx.stages.push(StageRecord {
            stage,
            trained_subset: name.clone(),
            labels_from_stage: labels[k].from_stage,
            first_step_pseudo_loss,
            flip_rate: flip_rate(&before, &after),
            pseudo_label_dice,
            validation_dice,
            steps,
        });
        let next = (k + 1) % subsets.len();
        labels[next] = pseudo_label(ctx, &student, &subsets[next].1, pseudo, stage);
        ctx.ledger.push(LedgerEntry {
            stage,
            event: "label".into(),
            subset: subsets[next].0.clone(),
            labels_from_stage: stage,
            init_from_stage: None,
            cases: ids(&subsets[next].1),
        });
        current = student;
        current_stage = stage;
    }
    Ok(current)
}

fn ids(cases: &[&Case]) -> Vec<String> {
    cases.iter().map(|c| c.id.clone()).collect()
}

/// Pseudo labels of `cases` by `model`: hard (argmax) or soft (probabilities), with pixels below
/// the confidence threshold ignored.
fn pseudo_label(ctx: &RunContext, model: &UNet, cases: &[&Case], spec: &PseudoLabelSpec, stage: usize) -> SubsetLabels {
    let classes = ctx.classes();
    let predictions = ctx.predict(model, cases);
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

/// Mean loss of `model` (evaluation mode) on pseudo-labeled examples: how much there is to
/// learn from them before a stage starts. Near zero means lazy learning.
fn pseudo_loss(ctx: &RunContext, model: &UNet, examples: &[Example]) -> f64 {
    let eval_model = model.valid();
    let mut total = 0.0;
    for chunk in examples.chunks(ctx.budget.eval_batch_size.max(1)) {
        let batch = batch::assemble(chunk, ctx.classes(), ctx.size(), false, &mut rng::stream(0, "unused"), &ctx.device);
        let value: f32 = loss::segmentation(eval_model.forward(batch.images), batch.targets, batch.weights).into_scalar();
        total += value as f64 * chunk.len() as f64;
    }
    total / examples.len().max(1) as f64
}

fn hard_predictions(ctx: &RunContext, model: &UNet, cases: &[&Case]) -> Vec<Vec<u8>> {
    ctx.predict(model, cases)
        .into_iter()
        .flatten()
        .map(|p| infer::argmax(&p, ctx.classes()))
        .collect()
}

/// Fraction of pixels whose predicted class differs between two prediction sets.
pub fn flip_rate(before: &[Vec<u8>], after: &[Vec<u8>]) -> f64 {
    let (mut changed, mut total) = (0usize, 0usize);
    for (a, b) in before.iter().zip(after) {
        changed += a.iter().zip(b).filter(|(x, y)| x != y).count();
        total += a.len();
    }
    changed as f64 / total.max(1) as f64
}

/// Stages that trained on labels made by a model that had just been fine-tuned on that same
/// subset: the self-labeling that ATSO is designed to avoid and synchronous self-training does.
pub fn self_labeled_stages(ledger: &[LedgerEntry]) -> Vec<usize> {
    let trained_subset = |stage: usize| {
        ledger
            .iter()
            .find(|e| e.event == "train" && e.stage == stage)
            .map(|e| e.subset.as_str())
    };
    ledger
        .iter()
        .filter(|e| e.event == "train" && e.labels_from_stage > 0 && trained_subset(e.labels_from_stage) == Some(e.subset.as_str()))
        .map(|e| e.stage)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Slice;

    fn cases(n: usize) -> Vec<Case> {
        (0..n)
            .map(|i| Case {
                id: format!("c{i:02}"),
                slices: vec![Slice {
                    image: vec![0.0; 4],
                    label: vec![0; 4],
                }],
            })
            .collect()
    }

    #[test]
    fn partition_is_disjoint_covering_and_seeded() {
        let owned = cases(11);
        let refs: Vec<&Case> = owned.iter().collect();
        let parts = partition(&refs, 3, 5).unwrap();
        let mut ids: Vec<&str> = parts.iter().flat_map(|(_, c)| c.iter().map(|c| c.id.as_str())).collect();
        ids.sort();
        assert_eq!(ids, owned.iter().map(|c| c.id.as_str()).collect::<Vec<_>>());
        assert!(parts.iter().all(|(_, c)| c.len() == 3 || c.len() == 4));
        let again = partition(&refs, 3, 5).unwrap();
        let names = |p: &Vec<(String, Vec<&Case>)>| {
            p.iter()
                .map(|(n, c)| (n.clone(), c.iter().map(|c| c.id.clone()).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&parts), names(&again));
        assert_ne!(names(&parts), names(&partition(&refs, 3, 6).unwrap()));
        assert!(partition(&refs[..2], 3, 5).is_err());
    }

    #[test]
    fn stage_plan_spends_exactly_the_budget() {
        let budget = Budget {
            iterations: 103,
            batch_size: 4,
            resolution: 16,
            eval_batch_size: 4,
            augment: false,
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
    fn flip_rate_counts_changed_pixels() {
        assert_eq!(flip_rate(&[vec![0, 1, 2, 3]], &[vec![0, 1, 0, 0]]), 0.5);
    }
}
