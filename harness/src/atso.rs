//! ATSO, asynchronous teacher-student optimisation (Huo et al., CVPR 2021).
//!
//! The paper fixes that the unlabeled set U is partitioned, that the model is fine-tuned on one
//! subset and then updates the pseudo labels of the other, and that this "breaks up continual
//! learning from teacher to student". Here: U is split by case into K seeded subsets and the
//! staged loop (`staged`) runs with `relabel = other`; each student restarts from the supervised
//! model M0 by default (`init = base`, clause (i)); `init = teacher` and `relabel = own` are the
//! ablations that put back lazy learning or remove the asynchrony.

use crate::data::Case;
use crate::method::{Budget, RunContext, Trained};
use crate::rng;
use crate::staged::{run_staged, staged_settings, StagedSpec};
use anyhow::{bail, Result};

/// The ATSO method as configured in an experiment file.
#[derive(Debug, Clone)]
pub struct Atso {
    pub subsets: usize,
    pub staged: StagedSpec,
}

impl crate::method::Method for Atso {
    fn settings(&self, budget: &Budget) -> serde_json::Value {
        let mut settings = staged_settings(&self.staged, self.subsets, budget);
        settings.insert("subsets".into(), self.subsets.into());
        settings.insert("rounds".into(), self.staged.rounds.into());
        settings.into()
    }

    fn train(&self, ctx: &mut RunContext) -> Result<Trained> {
        let subsets = partition(&ctx.data.unlabeled, self.subsets, ctx.seed)?;
        run_staged(ctx, subsets, &self.staged)
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
                native: None,
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
}
