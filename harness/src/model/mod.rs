//! The segmentation network.

pub mod unet;

pub use unet::{ModelSpec, UNet};
