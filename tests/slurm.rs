//! A real Slurm: a one-node cluster on localhost (slurmctld + slurmd with a configuration this
//! test writes, munge for authentication), the array job `atso sweep --emit slurm --submit`
//! writes and submits, and the merged table compared with a one-process sweep of the same
//! experiment. Debian's slurm-wlm and munge are installed when absent (as root, with apt-get);
//! without them and without apt the test says why and passes without running, except in CI,
//! where `.ci/run` sets ATSO_REQUIRE_SLURM=1 once they are installed and a skip is a failure.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXPERIMENT: &str = r#"
name = "array"
labeled_ratios = [0.4]
seeds = [0, 1]

[budget]
iterations = 30
batch_size = 4
resolution = 32
eval_batch_size = 16

[optimizer]
lr = 0.05

[model]
channels = [4, 8]
dropout = [0.0, 0.1]

[[datasets]]
name = "phantom"
format = "phantom"
path = "data/phantom"
phantom = { cases = 8, size = 32, slices = 6, seed = 3 }

[[methods]]
kind = "supervised"

[[methods]]
kind = "atso"
"#;

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure slurm and munge are installed; Err(reason) when they cannot be.
fn install() -> Result<(), String> {
    if have("slurmctld") && have("slurmd") && have("sbatch") && have("munged") {
        return Ok(());
    }
    if !have("apt-get") {
        return Err("Slurm is not installed and apt-get is unavailable to install slurm-wlm and munge".into());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        return Err("Slurm is not installed and installing slurm-wlm and munge needs root".into());
    }
    let install = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
        ])
        .status()
        .map_err(|e| e.to_string())?;
    if !install.success() {
        return Err("apt-get could not install slurm-wlm and munge".into());
    }
    Ok(())
}

/// Starts munged unless one is running.
fn start_munge() -> Result<(), String> {
    if run("pgrep", &["-x", "munged"]) {
        return Ok(());
    }
    if !Path::new("/etc/munge/munge.key").exists() && !run("mungekey", &["--create"]) {
        return Err("no munge key and mungekey could not create one".into());
    }
    let _ = std::fs::create_dir_all("/run/munge");
    let _ = run("chown", &["munge:munge", "/run/munge"]);
    if !run("runuser", &["-u", "munge", "--", "/usr/sbin/munged"]) && !run("/usr/sbin/munged", &["--force"]) {
        return Err("munged did not start".into());
    }
    Ok(())
}

/// The daemons of the one-node cluster; stopped on drop.
struct Cluster {
    conf: std::path::PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Result<Self, String> {
        let host = String::from_utf8_lossy(&Command::new("hostname").output().map_err(|e| e.to_string())?.stdout)
            .trim()
            .to_string();
        // Ports of this test's own cluster, away from a system Slurm's 6817/6818.
        let base = 20000 + (std::process::id() % 20000) as u16;
        let state = dir.join("state");
        let spool = dir.join("spool");
        std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&spool).map_err(|e| e.to_string())?;
        let d = dir.display();
        let conf = format!(
            "ClusterName=atsotest\nSlurmctldHost={host}\nSlurmctldPort={base}\nSlurmdPort={}\nAuthType=auth/munge\nCredType=cred/munge\n\
             SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={}\nSlurmdSpoolDir={}\nSlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\nSchedulerType=sched/builtin\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nJobCompType=jobcomp/none\n\
             AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n\
             NodeName={host} CPUs=2 RealMemory=1000 State=UNKNOWN\n\
             PartitionName=atso Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n",
            base + 1,
            state.display(),
            spool.display()
        );
        let path = dir.join("slurm.conf");
        std::fs::write(&path, conf).map_err(|e| e.to_string())?;
        let cluster = Cluster { conf: path.clone() };
        let conf_arg = path.display().to_string();
        if !run("slurmctld", &["-f", &conf_arg, "-i"]) || !run("slurmd", &["-f", &conf_arg]) {
            return Err(format!("the Slurm daemons did not start (logs in {d})"));
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let sinfo = Command::new("sinfo").args(["-h", "-o", "%t"]).env("SLURM_CONF", &path).output();
            if sinfo.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("idle")) {
                return Ok(cluster);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(format!("the node never became idle (logs in {d})"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("scontrol").arg("shutdown").env("SLURM_CONF", &self.conf).status();
    }
}

#[test]
fn an_emitted_array_job_fills_one_table_equal_to_a_one_process_sweep() {
    if let Err(reason) = install().and_then(|_| start_munge()) {
        common::skip_unless_required("ATSO_REQUIRE_SLURM", &format!("Slurm unavailable: {reason}"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("array.toml"), EXPERIMENT).unwrap();
    let cluster = Cluster::start(dir.path()).unwrap_or_else(|reason| panic!("{reason}"));
    let atso = env!("CARGO_BIN_EXE_atso");
    let submit = Command::new(atso)
        .args([
            "sweep",
            "array.toml",
            "--results",
            "cluster",
            "--emit",
            "slurm",
            "--tasks",
            "2",
            "--cpus-per-task",
            "1",
            "--submit",
        ])
        .current_dir(dir.path())
        .env("SLURM_CONF", &cluster.conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&submit.stdout).to_string();
    assert!(submit.status.success(), "{stdout}{}", String::from_utf8_lossy(&submit.stderr));
    let job = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .unwrap_or_else(|| panic!("no job id in: {stdout}"))
        .trim()
        .to_string();
    let start = Instant::now();
    loop {
        let queue = Command::new("squeue")
            .args(["-h", "-j", &job])
            .env("SLURM_CONF", &cluster.conf)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&queue.stdout).trim().is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "job {job} did not finish in 10 minutes");
        std::thread::sleep(Duration::from_millis(500));
    }
    let local = Command::new(atso)
        .args(["sweep", "array.toml", "--results", "local", "--jobs", "1", "--threads", "1"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let summary = |folder: &str| -> Vec<(String, u64, Option<f64>)> {
        let mut rows: Vec<(String, u64, Option<f64>)> = atso_harness::records::load_all(&dir.path().join(folder).join("array"))
            .unwrap()
            .into_iter()
            .map(|r| {
                assert_eq!(r.status, atso_harness::records::Status::Ok, "{}: {:?}", r.run_id, r.error);
                (r.method, r.seed, r.metrics.mean(&atso_harness::metric_registry::DICE))
            })
            .collect();
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        rows
    };
    let logs = dir.path().join("cluster/array/slurm/logs");
    let cluster_rows = summary("cluster");
    assert_eq!(
        cluster_rows.len(),
        4,
        "every run once; task logs in {}: {:?}",
        logs.display(),
        std::fs::read_dir(&logs).map(|d| d.count())
    );
    assert_eq!(cluster_rows, summary("local"), "the array job's table equals a one-process sweep's");
    assert!(dir.path().join("cluster/array/runs.parquet").is_file());
}
