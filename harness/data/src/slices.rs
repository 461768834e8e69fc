//! Preprocessing from volumes to training slices: HU windowing to [0, 1], slicing along one
//! axis, and resizing each slice to the configured square resolution.

use super::native::NativeSource;
use super::volume::Volume;

/// One 2D slice at the training resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Normalised intensities, row-major `resolution x resolution`.
    pub image: Vec<f32>,
    /// Class per pixel, same layout.
    pub label: Vec<u8>,
}

/// A case (one 3D volume) as its ordered slices; metrics are computed per case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    pub slices: Vec<Slice>,
    /// The files it came from, for scoring on the native grid (None: score at the training
    /// resolution only).
    pub native: Option<NativeSource>,
}

/// How volumes become slices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlicePlan {
    /// Intensity window [low, high] mapped to [0, 1] (values outside are clamped).
    pub window: [f32; 2],
    /// Axis the volume is sliced along (2 = axial for CT).
    pub axis: usize,
    /// Output width and height.
    pub resolution: usize,
}

impl SlicePlan {
    /// Turns an (image, label) pair into a case.
    pub fn case(&self, id: &str, image: &Volume, label: &Volume) -> Case {
        let count = image.dims[self.axis];
        let slices = (0..count)
            .map(|at| {
                let (w, h, pixels) = image.plane(self.axis, at);
                let (_, _, classes) = label.plane(self.axis, at);
                let [low, high] = self.window;
                let windowed: Vec<f32> = pixels.iter().map(|&v| ((v - low) / (high - low)).clamp(0.0, 1.0)).collect();
                Slice {
                    image: resize_bilinear(&windowed, w, h, self.resolution),
                    label: resize_nearest(&classes, w, h, self.resolution)
                        .into_iter()
                        .map(|v| v as u8)
                        .collect(),
                }
            })
            .collect();
        Case {
            id: id.to_string(),
            slices,
            native: None,
        }
    }
}

/// Bilinear resize of a `w x h` image to `size x size` (pixel centres aligned).
pub fn resize_bilinear(pixels: &[f32], w: usize, h: usize, size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(size * size);
    let source = |o: usize, n: usize| ((o as f32 + 0.5) * n as f32 / size as f32 - 0.5).clamp(0.0, (n - 1) as f32);
    for oy in 0..size {
        let sy = source(oy, h);
        let (y0, fy) = (sy.floor() as usize, sy.fract());
        let y1 = (y0 + 1).min(h - 1);
        for ox in 0..size {
            let sx = source(ox, w);
            let (x0, fx) = (sx.floor() as usize, sx.fract());
            let x1 = (x0 + 1).min(w - 1);
            let top = pixels[y0 * w + x0] * (1.0 - fx) + pixels[y0 * w + x1] * fx;
            let bottom = pixels[y1 * w + x0] * (1.0 - fx) + pixels[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// Nearest-neighbour resize to `size x size` (for label maps, where interpolation would invent
/// classes).
pub fn resize_nearest(pixels: &[f32], w: usize, h: usize, size: usize) -> Vec<f32> {
    resize_nearest_to(pixels, w, h, size, size)
}

/// Nearest-neighbour resize of a `w x h` map to `out_w x out_h` (pixel centres aligned).
pub fn resize_nearest_to(pixels: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(out_w * out_h);
    for oy in 0..out_h {
        let sy = (((oy as f32 + 0.5) * h as f32 / out_h as f32) as usize).min(h - 1);
        for ox in 0..out_w {
            let sx = (((ox as f32 + 0.5) * w as f32 / out_w as f32) as usize).min(w - 1);
            out.push(pixels[sy * w + sx]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_keeps_values() {
        let pixels: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&pixels, 4, 4, 4), pixels);
        assert_eq!(resize_nearest(&pixels, 4, 4, 4), pixels);
    }

    #[test]
    fn nearest_downsample_only_uses_existing_labels() {
        let labels: Vec<f32> = (0..64).map(|v| (v % 3) as f32).collect();
        assert!(resize_nearest(&labels, 8, 8, 3).iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
    }

    #[test]
    fn window_maps_to_unit_range() {
        let image = Volume {
            dims: [2, 1, 1],
            spacing: [1.0; 3],
            data: vec![-1000.0, 1000.0],
        };
        let label = Volume {
            dims: [2, 1, 1],
            spacing: [1.0; 3],
            data: vec![0.0, 1.0],
        };
        let plan = SlicePlan {
            window: [-100.0, 100.0],
            axis: 2,
            resolution: 2,
        };
        let case = plan.case("a", &image, &label);
        assert_eq!(case.slices.len(), 1);
        assert_eq!(case.slices[0].image[0], 0.0);
        assert_eq!(case.slices[0].image[1], 1.0);
    }
}
