//! `atso data install <name>`: real data that installs by package name, fetched through the
//! system's own package clients (apt-get, pip) into a data folder. Nothing is downloaded from
//! anywhere else, and nothing installed is committed to the repository.

use super::brain::{COLIN27_FILES, MNI152_FILES};
use crate::fsio;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Datasets `install` knows.
pub const INSTALLABLE: [(&str, &str); 2] = [
    (
        "colin27",
        "Colin27 T1 (ch2bet) + AAL parcellation, Debian package mricron-data (BSD-3; templates keep their MNI / GIN Caen attribution)",
    ),
    (
        "mni152",
        "MNI152 2009 T1 + grey/white-matter maps from the nilearn 0.14.1 wheel on PyPI (MNI notice; cite Fonov et al. 2011)",
    ),
];

const MRICRON_TEMPLATES: &str = "/usr/share/mricron/templates";
const NILEARN: &str = "nilearn==0.14.1";

/// Installs `name` into `<into>/<name>/` and returns that folder.
pub fn install(name: &str, into: &Path) -> Result<PathBuf> {
    let target = into.join(name);
    match name {
        "colin27" => colin27(&target)?,
        "mni152" => mni152(&target)?,
        other => bail!(
            "unknown dataset '{other}'; installable: {}",
            INSTALLABLE.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
    }
    Ok(target)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn copy_into(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    fsio::write_atomic(to, &bytes)
}

fn colin27(target: &Path) -> Result<()> {
    let source = Path::new(MRICRON_TEMPLATES);
    if !source.join("aal.nii.gz").is_file() {
        if !have("apt-get") {
            bail!("the Colin27 templates come from Debian's mricron-data package, and apt-get is not available here; on a Debian or Ubuntu machine run `sudo apt-get install mricron-data`, or copy ch2bet.nii.gz, aal.nii.gz and aal.nii.txt from its {MRICRON_TEMPLATES} into {}", target.display());
        }
        if !is_root() {
            bail!("mricron-data is not installed; run `sudo apt-get install mricron-data`, then this command again");
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "mricron-data"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("`apt-get install mricron-data` failed (try `apt-get update` first)");
        }
    }
    for file in COLIN27_FILES {
        copy_into(&source.join(file), &target.join(file))?;
    }
    fsio::write_atomic(
        &target.join("NOTICE.txt"),
        b"Colin27 (ch2bet) and AAL templates from Debian's mricron-data package (package licence BSD-3).\n\
          The templates keep their upstream attribution: Colin27, Montreal Neurological Institute;\n\
          AAL, Tzourio-Mazoyer et al. 2002 (GIN, Caen). Installed by `atso data install colin27`; not\n\
          part of atso-bench and not to be committed.\n",
    )
}

fn mni152(target: &Path) -> Result<()> {
    if !have("python3") {
        bail!("the MNI152 maps come from the nilearn wheel on PyPI and python3 (with pip) is not available; install python3 and pip, or run `pip download --no-deps {NILEARN}` elsewhere and unzip nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz into {}", target.display());
    }
    let download = tempfile::tempdir().context("creating a download folder")?;
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", NILEARN, "-d"])
        .arg(download.path())
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("`python3 -m pip download --no-deps {NILEARN}` failed (is pip installed and the package index reachable?)");
    }
    let wheel = std::fs::read_dir(download.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    std::fs::create_dir_all(target)?;
    // The wheel is a zip archive; Python's zipfile (beside pip) extracts the three maps.
    let script = format!(
        "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor name in {:?}:\n    open(sys.argv[2] + '/.' + name + '.part', 'wb').write(z.read('nilearn/datasets/data/' + name))\n",
        MNI152_FILES
    );
    let status = Command::new("python3").args(["-c", &script]).arg(&wheel).arg(target).status()?;
    if !status.success() {
        bail!("{}: the wheel does not hold the MNI152 maps", wheel.display());
    }
    for file in MNI152_FILES {
        let part = target.join(format!(".{file}.part"));
        std::fs::rename(&part, target.join(file)).with_context(|| format!("moving {}", part.display()))?;
    }
    fsio::write_atomic(
        &target.join("NOTICE.txt"),
        b"MNI ICBM152 2009 nonlinear symmetric templates (T1, grey and white matter), from the nilearn\n\
          0.14.1 wheel. Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal\n\
          Neurological Institute, McGill University; cite Fonov et al., NeuroImage 2011. Installed by\n\
          `atso data install mni152`; not part of atso-bench and not to be committed.\n",
    )
}
