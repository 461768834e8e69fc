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
        "cuda" => Device::cuda(0),
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

/// A label for results rows: the backend plus CPU features that change its speed.
pub fn label(name: &str) -> String {
    if name == "flex" && cfg!(feature = "x86-v4") {
        "flex+x86-v4".into()
    } else {
        name.into()
    }
}
