//! `atso sweep --emit slurm`: an sbatch array script whose tasks each run one shard of the sweep
//! into the same results folder, which the claims and folder lock make safe; `atso report` then
//! reads the merged folder like any other. `--submit` hands the script to sbatch.

use anyhow::{bail, Context, Result};
use atso_harness::fsio;
use std::path::{Path, PathBuf};

/// Cluster settings of the array job.
#[derive(Debug, Clone, Default)]
pub struct SlurmSpec {
    pub tasks: usize,
    pub partition: Option<String>,
    pub gpus_per_task: Option<usize>,
    pub cpus_per_task: usize,
    pub time: Option<String>,
}

/// The script text. `sweep_args` are the sweep's arguments as the tasks should repeat them
/// (experiment file, results folder, backend...), already absolute where they are paths.
pub fn script(spec: &SlurmSpec, job_name: &str, exe: &Path, workdir: &Path, sweep_args: &[String], log_dir: &Path) -> String {
    let mut out = String::from("#!/bin/bash\n");
    out.push_str(&format!("#SBATCH --job-name={job_name}\n"));
    out.push_str(&format!("#SBATCH --array=1-{}\n", spec.tasks));
    out.push_str("#SBATCH --ntasks=1\n");
    out.push_str(&format!("#SBATCH --cpus-per-task={}\n", spec.cpus_per_task));
    if let Some(p) = &spec.partition {
        out.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(g) = spec.gpus_per_task {
        out.push_str(&format!("#SBATCH --gpus-per-task={g}\n"));
    }
    if let Some(t) = &spec.time {
        out.push_str(&format!("#SBATCH --time={t}\n"));
    }
    out.push_str(&format!("#SBATCH --output={}/%A_%a.out\n", log_dir.display()));
    out.push_str(&format!("#SBATCH --chdir={}\n", workdir.display()));
    out.push_str("set -u\n");
    out.push_str("# One shard per array task; runs claimed by another task are skipped, so tasks may overlap safely.\n");
    out.push_str("# One run at a time per task, on all of the task's CPUs (Slurm already sized the task).\n");
    let quoted: Vec<String> = sweep_args.iter().map(|a| shell_quote(a)).collect();
    out.push_str(&format!(
        "exec {} sweep {} --shard \"${{SLURM_ARRAY_TASK_ID}}/{}\" --jobs 1 --threads \"${{SLURM_CPUS_PER_TASK:-{}}}\"\n",
        shell_quote(&exe.display().to_string()),
        quoted.join(" "),
        spec.tasks,
        spec.cpus_per_task
    ));
    out
}

fn shell_quote(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Writes the script to `<results dir>/slurm/<job>.sbatch` and returns its path.
pub fn write(results_dir: &Path, job_name: &str, text: &str) -> Result<PathBuf> {
    let path = results_dir.join("slurm").join(format!("{job_name}.sbatch"));
    fsio::write_atomic(&path, text.as_bytes())?;
    std::fs::create_dir_all(results_dir.join("slurm").join("logs"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Executable, readable as the umask allows (0755 under 022, 0775 under 002).
        let mode = 0o777 & !atso_harness::fsio::umask();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(path)
}

/// Runs `sbatch --parsable <script>` and returns the job id.
pub fn submit(script: &Path) -> Result<String> {
    let output = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(script)
        .output()
        .context("running sbatch (is Slurm installed and on PATH?)")?;
    if !output.status.success() {
        bail!("sbatch failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let id = String::from_utf8_lossy(&output.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    if id.is_empty() {
        bail!("sbatch printed no job id");
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_has_one_array_task_per_shard_and_quotes_paths() {
        let spec = SlurmSpec {
            tasks: 4,
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            cpus_per_task: 8,
            time: Some("2-00:00:00".into()),
        };
        let text = script(
            &spec,
            "atso-q",
            Path::new("/opt/atso bench/atso"),
            Path::new("/work"),
            &["/work/exp.toml".into(), "--results".into(), "/work/results".into()],
            Path::new("/work/results/q/slurm/logs"),
        );
        assert!(text.contains("#SBATCH --array=1-4"), "{text}");
        assert!(text.contains("#SBATCH --gpus-per-task=1") && text.contains("#SBATCH --partition=gpu"));
        assert!(
            text.contains("'/opt/atso bench/atso' sweep /work/exp.toml --results /work/results --shard \"${SLURM_ARRAY_TASK_ID}/4\""),
            "{text}"
        );
        // One run at a time per task: the task's CPUs go to that run's threads, never C x C.
        assert!(text.contains("--jobs 1 --threads \"${SLURM_CPUS_PER_TASK:-"), "{text}");
    }
}
