//! Compute backend selection. The model and engine are written once against burn's `Device`;
//! this module maps a `--backend` to a device among those compiled in.

use anyhow::{bail, Result};
use burn::tensor::Device;

/// A compute backend, as `--backend` names it; which ones a build can run depends on its
/// features ([`available`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's pure-Rust CPU backend, with the project's kernels.
    Flex,
    /// NVIDIA GPUs through burn-cuda (`--features cuda`).
    Cuda,
    /// GPUs through burn-wgpu on Vulkan (`--features vulkan`).
    Vulkan,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Flex, Backend::Cuda, Backend::Vulkan];

    /// Its name on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Cuda => "cuda",
            Backend::Vulkan => "vulkan",
        }
    }

    /// Whether this build has it.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Flex => true,
            Backend::Cuda => cfg!(feature = "cuda"),
            Backend::Vulkan => cfg!(feature = "vulkan"),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        Backend::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
            format!("unknown backend '{name}'; known: {}", known.join(", "))
        })
    }
}

/// Backends this build can run on.
pub fn available() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.compiled()).collect()
}

/// The plain (non-autodiff) device for `backend`, seeded with `seed`.
pub fn device(backend: Backend, seed: u64) -> Result<Device> {
    let device = match backend {
        Backend::Flex => Device::flex(),
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            // Without a driver burn-cuda's device thread dies and the caller only sees
            // "RecvError"; say what is missing instead.
            if let Some(missing) = missing_nvidia_driver() {
                bail!("backend 'cuda': no NVIDIA driver found ({missing}); cuda needs an NVIDIA GPU and its driver");
            }
            Device::cuda(0)
        }
        // The best adapter Vulkan offers (a discrete GPU first; CUBECL_WGPU_DEFAULT_DEVICE picks
        // another, e.g. Cpu for a software renderer such as lavapipe).
        #[cfg(feature = "vulkan")]
        Backend::Vulkan => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        #[allow(unreachable_patterns)] // with every backend compiled in
        other => bail!(
            "backend '{other}' is not compiled into this build; available: {}",
            available().iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
        ),
    };
    device.seed(seed);
    Ok(device)
}

/// Why this machine has no NVIDIA driver, or None if it may have one. On Linux the kernel
/// module publishes `/proc/driver/nvidia/version`; elsewhere nothing is checked.
pub fn missing_nvidia_driver() -> Option<String> {
    missing_driver_file(std::path::Path::new("/proc/driver/nvidia/version"))
}

fn missing_driver_file(version: &std::path::Path) -> Option<String> {
    (cfg!(target_os = "linux") && !version.exists()).then(|| format!("{} is missing", version.display()))
}

/// A label for results rows: the backend plus CPU features that change its speed.
pub fn label(backend: Backend) -> String {
    if backend == Backend::Flex && cfg!(feature = "x86-v4") {
        "flex+x86-v4".into()
    } else {
        backend.name().into()
    }
}

/// What a run's `simd` column records: the CPU kernels' SIMD levels (`cpu_simd`) for flex, the
/// GPU backend otherwise. A GPU run's numbers come from the GPU's kernels, so `atso check`
/// expectations tied to a CPU's SIMD level must not apply to it.
pub fn kernels_description(backend: Backend, cpu_simd: &str) -> String {
    if backend == Backend::Flex {
        cpu_simd.into()
    } else {
        format!("{backend} GPU kernels")
    }
}

/// The CPU backend keeps one random stream per process: tests that draw from it (seeding a
/// device, dropout masks, random tensors) hold this so concurrently running tests do not draw
/// from each other's stream.
#[cfg(test)]
pub(crate) fn serial_random_stream() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_driver_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let version = dir.path().join("version");
        if cfg!(target_os = "linux") {
            let why = missing_driver_file(&version).unwrap();
            assert!(why.contains("version is missing"), "{why}");
        }
        std::fs::write(&version, "NVRM version: 580.159.04").unwrap();
        assert_eq!(missing_driver_file(&version), None);
    }

    #[test]
    fn gpu_runs_do_not_claim_the_cpus_simd_level() {
        let cpu = "conv avx2+fma, elementwise x86-64-v4 (cpu x86-64-v4)";
        assert_eq!(kernels_description(Backend::Flex, cpu), cpu);
        let gpu = kernels_description(Backend::Vulkan, cpu);
        assert!(!gpu.contains("x86-64") && gpu.contains("vulkan"), "{gpu}");
    }

    #[test]
    fn backends_read_and_write_their_command_line_names() {
        for backend in Backend::ALL {
            assert_eq!(backend.name().parse::<Backend>(), Ok(backend));
        }
        assert_eq!(
            "flex".parse::<Backend>().map(label).as_deref(),
            Ok(if cfg!(feature = "x86-v4") { "flex+x86-v4" } else { "flex" })
        );
        let unknown = "tpu".parse::<Backend>().unwrap_err();
        assert!(
            unknown.contains("unknown backend 'tpu'") && unknown.contains("flex, cuda, vulkan"),
            "{unknown}"
        );
        assert!(available().contains(&Backend::Flex));
    }
}
