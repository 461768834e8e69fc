//! Paper-style Markdown: per dataset, methods as rows and labeled ratios as columns, each cell
//! "mean ± std" of test Dice (%) over seeds with the number of seeds.

use crate::aggregate::{self, Group, RunRow};
use crate::stages::StageMean;
use std::fmt::Write;

/// The whole report as Markdown.
pub fn markdown(runs: &[RunRow], groups: &[Group]) -> String {
    let mut out = String::new();
    let commits: Vec<&str> = {
        let mut c: Vec<&str> = runs.iter().map(|r| r.git_commit.as_str()).collect();
        c.sort();
        c.dedup();
        c
    };
    let _ = writeln!(out, "# Results\n");
    let _ = writeln!(
        out,
        "Test Dice (%, foreground classes, per case then averaged), mean ± sample std over seeds; `n` = successful seeds.\n"
    );
    let _ = writeln!(
        out,
        "Runs: {} ({} failed). Commits: {}.\n",
        runs.len(),
        runs.iter().filter(|r| !r.ok).count(),
        commits
            .iter()
            .map(|c| format!("`{}`", &c[..c.len().min(10)]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for dataset in aggregate::datasets(groups) {
        let _ = writeln!(out, "## {dataset}\n");
        let selected: Vec<Group> = groups.iter().filter(|g| g.dataset == dataset).cloned().collect();
        comparison_table(&mut out, &selected);
        let dataset_runs: Vec<RunRow> = runs.iter().filter(|r| r.dataset == dataset).cloned().collect();
        for class in aggregate::class_names(&dataset_runs) {
            let _ = writeln!(out, "### Dice: {class}\n");
            comparison_table(&mut out, &aggregate::group_by(&dataset_runs, &|r| r.class_dice(&class)));
        }
    }
    let failed: Vec<&RunRow> = runs.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "## Failed runs\n");
        for run in failed {
            let _ = writeln!(
                out,
                "- `{}`: {}",
                run.run_id,
                run.error.as_deref().unwrap_or("no error recorded").lines().next().unwrap_or("")
            );
        }
    }
    out
}

/// Methods as rows, labeled ratios as columns, "mean ± std (n)" cells in percent.
fn comparison_table(out: &mut String, groups: &[Group]) {
    let ratios = aggregate::ratios(groups);
    let _ = write!(out, "| method |");
    for r in &ratios {
        let _ = write!(out, " {}% labeled |", format_ratio(*r));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---|".repeat(ratios.len()));
    for method in aggregate::methods(groups) {
        let _ = write!(out, "| {method} |");
        for r in &ratios {
            let text = groups
                .iter()
                .find(|g| g.method == method && g.labeled_ratio == *r)
                .map(cell)
                .unwrap_or_else(|| "–".into());
            let _ = write!(out, " {text} |");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
}

/// The lazy-learning section: per dataset, method and stage, the mean first-step loss on the
/// stage's pseudo labels, flip rate and pseudo-label Dice.
pub fn stages_markdown(means: &[StageMean]) -> String {
    if means.is_empty() {
        return String::new();
    }
    let mut out = String::from("## Lazy learning per stage\n\n");
    out.push_str(
        "Mean over runs. A first-step loss near zero and a low flip rate mean the student has little to learn from its pseudo labels.\n\n",
    );
    out.push_str("| dataset | method | stage | first-step pseudo loss | flip rate (%) | pseudo-label Dice (%) | runs |\n|---|---|---|---|---|---|---|\n");
    for m in means {
        let dice = m.pseudo_label_dice.map_or("–".to_string(), |d| format!("{:.1}", 100.0 * d));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.4} | {:.2} | {dice} | {} |",
            m.dataset,
            m.method,
            m.stage,
            m.first_step_pseudo_loss,
            100.0 * m.flip_rate,
            m.runs
        );
    }
    out.push('\n');
    out
}

fn format_ratio(r: f64) -> String {
    let pct = r * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{}", pct.round() as i64)
    } else {
        format!("{pct:.1}")
    }
}

fn cell(group: &Group) -> String {
    let failed = if group.failed > 0 {
        format!(", {} failed", group.failed)
    } else {
        String::new()
    };
    match (group.mean(), group.std()) {
        (Some(m), Some(s)) => format!("{:.1} ± {:.1} (n={}{failed})", 100.0 * m, 100.0 * s, group.values.len()),
        _ => format!("– (n=0{failed})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_one_row_per_method_and_percent_cells() {
        let group = |m: &str, r: f64, v: Vec<f64>| Group {
            dataset: "d".into(),
            method: m.into(),
            labeled_ratio: r,
            values: v,
            failed: 0,
        };
        let groups = vec![
            group("sup", 0.1, vec![0.5, 0.7]),
            group("sup", 0.5, vec![0.8]),
            group("atso", 0.1, vec![0.65]),
        ];
        let text = markdown(&[], &groups);
        assert!(text.contains("| method | 10% labeled | 50% labeled |"), "{text}");
        assert!(text.contains("| sup | 60.0 ± 14.1 (n=2) | 80.0 ± 0.0 (n=1) |"), "{text}");
        assert!(text.contains("| atso | 65.0 ± 0.0 (n=1) | – |"), "{text}");
    }
}
