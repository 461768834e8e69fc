//! Compute backend selection. The model and engine are written once against burn's `Device`;
//! this module maps a `--backend` name to a device among those compiled in.

use anyhow::{bail, Result};
use burn::tensor::Device;

/// Backends this build can run on.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["flex"];
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    names
}

/// The plain (non-autodiff) device for `name`, seeded with `seed`.
pub fn device(name: &str, seed: u64) -> Result<Device> {
    let device = match name {
        "flex" => Device::flex(),
        #[cfg(feature = "cuda")]
        "cuda" => {
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
        "vulkan" => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
        other => bail!(
            "backend '{other}' is not compiled into this build; available: {}",
            available().join(", ")
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
pub fn label(name: &str) -> String {
    if name == "flex" && cfg!(feature = "x86-v4") {
        "flex+x86-v4".into()
    } else {
        name.into()
    }
}

/// What a run's `simd` column records: the CPU kernels' SIMD levels (`cpu_simd`) for flex, the
/// GPU backend otherwise. A GPU run's numbers come from the GPU's kernels, so `atso check`
/// expectations tied to a CPU's SIMD level must not apply to it.
pub fn kernels_description(name: &str, cpu_simd: &str) -> String {
    if name == "flex" {
        cpu_simd.into()
    } else {
        format!("{name} GPU kernels")
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
        assert_eq!(kernels_description("flex", cpu), cpu);
        let gpu = kernels_description("vulkan", cpu);
        assert!(!gpu.contains("x86-64") && gpu.contains("vulkan"), "{gpu}");
    }
}
