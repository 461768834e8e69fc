//! Data the project generates (the CT phantom, the driving scenes) appears whole or not at all.
//!
//! A generator writes into a staging folder beside the target, under a name unique to this
//! process, and the folder is renamed into place; a marker file holding the generator's settings
//! is written last. A killed generation leaves no half-written dataset, and concurrent sweeps
//! (parallel jobs, array tasks) that both generate it never see each other's partial files: the
//! first rename wins, the others discard their copy.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::path::Path;

/// Makes sure `root` holds what `generate` writes for `spec`, identified by `marker` (a JSON file
/// of the spec inside `root`). A folder with a marker for another spec, or a non-empty folder
/// without a marker, is an error: nothing the user put there is overwritten.
pub fn ensure<S>(root: &Path, marker: &str, spec: &S, generate: impl FnOnce(&Path) -> Result<()>) -> Result<()>
where
    S: Serialize + DeserializeOwned + PartialEq + Debug,
{
    // What a killed generation of this data left beside it goes first, even when another
    // process has since finished the data.
    crate::leftovers::clear_beside(root);
    if matches_spec(root, marker, spec)? {
        return Ok(());
    }
    let occupied = std::fs::read_dir(root).map(|mut entries| entries.next().is_some()).unwrap_or(false);
    if occupied {
        anyhow::bail!(
            "{} is not empty but holds no {marker}: not a folder this generator made; refusing to overwrite it",
            root.display()
        );
    }
    let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = root.file_name().and_then(|n| n.to_str()).unwrap_or("generated");
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.{}.", crate::leftovers::owner_tag()))
        .suffix(".staging")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging folder in {}", parent.display()))?;
    tracing::info!(path = %root.display(), "generating {name}");
    // A temporary folder is its owner's alone; the data gets a plain folder's mode.
    crate::fsio::set_created_dir_mode(staging.path())?;
    generate(staging.path())?;
    crate::fsio::write_atomic(&staging.path().join(marker), serde_json::to_string_pretty(spec)?.as_bytes())?;
    let staged = staging.keep();
    match std::fs::rename(&staged, root) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staged);
            if matches_spec(root, marker, spec)? {
                Ok(()) // another process finished first
            } else {
                Err(error).with_context(|| format!("moving the generated data into {}", root.display()))
            }
        }
    }
}

/// Whether `root` holds complete data made from `spec`; an error if it holds other data.
fn matches_spec<S>(root: &Path, marker: &str, spec: &S) -> Result<bool>
where
    S: DeserializeOwned + PartialEq + Debug,
{
    let path = root.join(marker);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let existing: S = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    if &existing == spec {
        return Ok(true);
    }
    anyhow::bail!(
        "{} holds data generated with {existing:?}, but the experiment asks for {spec:?}; \
         remove the folder or point the dataset at another path",
        root.display()
    )
}
