//! `atso report`: tables and plots from one or several results folders.

use anyhow::Result;
use std::path::{Path, PathBuf};

pub fn report(folders: &[PathBuf], out: &Path, allow_mixed: bool) -> Result<()> {
    // Tables are derived from the per-run records: rebuilding them first keeps a results folder
    // written by an older version readable with this one.
    let mut unreadable = 0;
    for folder in folders {
        if atso_harness::records::records_dir(folder).is_dir() {
            let loaded = atso_harness::runner::rebuild_tables(folder)?;
            for skipped in &loaded.skipped {
                eprintln!("warning: skipped {}: {}", skipped.path.display(), skipped.reason);
            }
            unreadable += loaded.skipped.len();
        }
    }
    let options = atso_reports::ReportOptions {
        allow_mixed,
        unreadable_records: unreadable,
    };
    let files = atso_reports::render(folders, out, &options)?;
    println!("report: {}", files.markdown.display());
    println!("        {}", files.html.display());
    println!("        {}", files.csv.display());
    println!(
        "        {} LaTeX tables in {}",
        files.latex.len().saturating_sub(1),
        out.join("latex").display()
    );
    for plot in files.plots {
        println!("plot:   {}", plot.display());
    }
    Ok(())
}
