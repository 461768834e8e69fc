//! The family of comparisons an experiment file declares before anything runs (`[report]`): the
//! harness checks the labels when it reads the file, the report tests exactly these pairs and
//! adjusts their p-values together (Holm).

use serde::{Deserialize, Serialize};

/// `[report]` of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// The family of comparisons, declared before anything runs: each `[method, against]` pair
    /// of method labels is compared (method − against) at every labeled ratio where both ran,
    /// and Holm's adjustment runs over exactly these. Empty: every method against supervised-only
    /// and against ATSO.
    #[serde(default)]
    pub comparisons: Vec<[String; 2]>,
}

/// The `[report]` table of an experiment file's text, every other table left unread (the file
/// was checked whole when it ran; a report reads the copy kept in the results folder).
pub fn declared_in(experiment_toml: &str) -> anyhow::Result<ReportSpec> {
    #[derive(Deserialize)]
    struct ReportOnly {
        #[serde(default)]
        report: ReportSpec,
    }
    Ok(toml::from_str::<ReportOnly>(experiment_toml)?.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_report_table_is_read() {
        let text = "name = \"x\"\n[budget]\nanything = 1\n[report]\ncomparisons = [[\"atso\", \"supervised\"]]\n";
        assert_eq!(
            declared_in(text).unwrap().comparisons,
            [["atso".to_string(), "supervised".to_string()]]
        );
        assert!(declared_in("name = \"x\"\n").unwrap().comparisons.is_empty());
        assert!(declared_in("[report]\ncomparisons = 3\n").is_err());
        assert!(
            declared_in("[report]\ncompare = []\n").is_err(),
            "unknown keys inside [report] are refused"
        );
    }
}
