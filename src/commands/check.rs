//! `atso check` and `compare`'s commit lookup: results held to a reference file.

use crate::Outcome;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn check(
    folders: &[PathBuf],
    reference_path: &Path,
    update: bool,
    metrics: &[String],
    tolerance: f64,
    allow_mixed: bool,
) -> Result<Outcome> {
    use atso_reports::check::{self, Reference};
    for folder in folders {
        if atso_harness::records::records_dir(folder).is_dir() {
            atso_harness::runner::rebuild_tables(folder)?;
        }
    }
    if update {
        let reference = if reference_path.exists() {
            Reference::read(reference_path)?
        } else {
            Reference::default()
        };
        let updated = check::update(folders, &reference, metrics, tolerance, allow_mixed)?;
        check::write_reference(reference_path, &updated)?;
        println!(
            "{}: {} expected values written from commit(s) {}",
            reference_path.display(),
            updated.values.len(),
            updated.commit
        );
        return Ok(Outcome::AllOk);
    }
    let reference = Reference::read(reference_path)?;
    let outcome = check::check(folders, &reference, allow_mixed)?;
    print!("{}", outcome.table());
    let failed = outcome.lines.iter().filter(|l| !l.pass).count();
    if failed == 0 {
        println!("all {} checks pass ({})", outcome.lines.len(), reference_path.display());
        Ok(Outcome::AllOk)
    } else {
        println!("{failed} of {} checks FAILED ({})", outcome.lines.len(), reference_path.display());
        Ok(Outcome::CheckFailed)
    }
}

/// The full commit id of a git revision in the repository around the working directory.
pub fn resolve_commit(revision: &str) -> Result<String> {
    let repo = git2::Repository::discover(".").context("compare needs a git repository to resolve revisions")?;
    let object = repo
        .revparse_single(revision)
        .with_context(|| format!("'{revision}' is not a revision of {}", repo.path().display()))?;
    let commit = object
        .peel_to_commit()
        .with_context(|| format!("'{revision}' does not name a commit"))?;
    Ok(commit.id().to_string())
}
