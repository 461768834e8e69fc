//! `atso data`: list, inspect, prepare and install datasets.

use crate::cli::DataCommand;
use crate::read_experiment;
use anyhow::Result;
use atso_harness::runner;
use std::path::PathBuf;

pub fn data(command: DataCommand) -> Result<()> {
    use atso_harness::data::dataset::Format;
    match command {
        DataCommand::List { data } => {
            println!("formats (`format = ...` in [[datasets]]):");
            for format in Format::all() {
                println!("  {:16} {}", format.name(), format.describe());
            }
            println!("\ninstallable by package name (`atso data install <name>`):");
            for (name, what) in atso_harness::data::install::INSTALLABLE {
                let here = data.join(name);
                let state = if atso_harness::data::inspect::detect(&here).is_some() {
                    "installed"
                } else {
                    "not installed"
                };
                println!("  {name:16} {state:13} {what}");
            }
            println!("\nin {}:", data.display());
            let mut found = false;
            if let Ok(entries) = std::fs::read_dir(&data) {
                let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
                paths.sort();
                for path in paths {
                    let generated = ["phantom.json", "driving.json"].iter().find(|m| path.join(m).is_file());
                    let kind = match (generated, atso_harness::data::inspect::detect(&path)) {
                        (Some(&"phantom.json"), _) => "phantom (generated)".to_string(),
                        (Some(_), _) => "driving-phantom (generated)".to_string(),
                        (None, Some(format)) => format.name().to_string(),
                        (None, None) => continue,
                    };
                    println!("  {:40} {kind}", path.display());
                    found = true;
                }
            }
            if !found {
                println!("  (no datasets)");
            }
        }
        DataCommand::Install { name, into } => {
            let folder = atso_harness::data::install::install(&name, &into)?;
            println!("{name} installed in {}", folder.display());
        }
        DataCommand::Inspect { path } => print!("{}", atso_harness::data::inspect::inspect(&path)?),
        DataCommand::Prepare { file, results, data_base } => {
            let (experiment, _) = read_experiment(&file)?;
            let dir = results.join(&experiment.name);
            for spec in &experiment.datasets {
                let (prepared, hash) =
                    runner::prepare_dataset(spec, experiment.budget.resolution, &data_base, &dir).map_err(anyhow::Error::msg)?;
                println!(
                    "{}: {} cases, classes {:?}, fingerprint {hash} -> {}",
                    spec.name,
                    prepared.cases.len(),
                    prepared.classes,
                    dir.join("datasets").join(format!("{}.json", spec.name)).display()
                );
            }
        }
    }
    Ok(())
}
