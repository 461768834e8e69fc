//! Surface distances between binary masks in millimetres, and the metrics read from them as
//! medpy defines them (which SSL4MIS and most medical SSL papers report): the 95th-percentile
//! Hausdorff distance (HD95) and the average surface distance (ASD).
//!
//! A mask's surface is its voxels that have a 6-connected neighbour outside it (voxels on the
//! volume's border count as surface, as with scipy's erosion and its zero border). For every
//! surface voxel of one mask, the distance to the nearest surface voxel of the other is read
//! from a Euclidean distance transform with the voxel spacing; HD95 is the 95th percentile
//! (linear interpolation, numpy's default) of both directions' distances pooled. No maintained
//! crate computes an anisotropic exact EDT, so the separable algorithm of Felzenszwalb and
//! Huttenlocher (2012) is implemented here.

/// A binary mask on a 3D grid stored x-fastest, with voxel spacing in millimetres.
pub struct Mask<'a> {
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
    pub voxels: &'a [bool],
}

/// The distances (mm) from each mask's surface voxels to the other mask's surface, computed once
/// per class and case; every surface metric of the registry (`metric_registry`) reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct SurfaceDistances {
    /// From each surface voxel of the prediction to the truth's surface, in voxel order.
    pub predicted_to_truth: Vec<f64>,
    /// From each surface voxel of the truth to the prediction's surface, in voxel order.
    pub truth_to_predicted: Vec<f64>,
}

impl SurfaceDistances {
    /// The 95th percentile of both directions pooled: medpy's `hd95`.
    pub fn hd95(&self) -> f64 {
        let mut pooled: Vec<f64> = self.predicted_to_truth.iter().chain(&self.truth_to_predicted).copied().collect();
        percentile(&mut pooled, 95.0)
    }

    /// The mean distance from the prediction's surface to the truth's: medpy's
    /// `asd(result, reference)` (one direction), SSL4MIS's ASD.
    pub fn asd(&self) -> f64 {
        self.predicted_to_truth.iter().sum::<f64>() / self.predicted_to_truth.len() as f64
    }
}

/// Surface distances between a predicted and a true mask on the same grid; `None` when either
/// is empty (no surface to measure from).
pub fn distances(predicted: &Mask, truth: &Mask) -> Option<SurfaceDistances> {
    assert_eq!(predicted.dims, truth.dims, "masks must share a grid");
    let surface_predicted = surface(predicted);
    let surface_truth = surface(truth);
    if !surface_predicted.iter().any(|&s| s) || !surface_truth.iter().any(|&s| s) {
        return None;
    }
    let on_surface =
        |surface: &[bool], distance: &[f64]| -> Vec<f64> { surface.iter().zip(distance).filter(|(s, _)| **s).map(|(_, d)| *d).collect() };
    let to_truth = distance_to(&surface_truth, predicted.dims, predicted.spacing);
    let to_predicted = distance_to(&surface_predicted, predicted.dims, predicted.spacing);
    Some(SurfaceDistances {
        predicted_to_truth: on_surface(&surface_predicted, &to_truth),
        truth_to_predicted: on_surface(&surface_truth, &to_predicted),
    })
}

/// HD95 between two masks on the same grid; `None` when either is empty (undefined).
pub fn hd95(a: &Mask, b: &Mask) -> Option<f64> {
    distances(a, b).map(|d| d.hd95())
}

/// Voxels of `mask` with a 6-neighbour outside the mask or outside the volume.
fn surface(mask: &Mask) -> Vec<bool> {
    let [nx, ny, nz] = mask.dims;
    let at = |x: usize, y: usize, z: usize| mask.voxels[x + nx * (y + ny * z)];
    let mut out = vec![false; mask.voxels.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if !at(x, y, z) {
                    continue;
                }
                let interior = x > 0
                    && x + 1 < nx
                    && y > 0
                    && y + 1 < ny
                    && z > 0
                    && z + 1 < nz
                    && at(x - 1, y, z)
                    && at(x + 1, y, z)
                    && at(x, y - 1, z)
                    && at(x, y + 1, z)
                    && at(x, y, z - 1)
                    && at(x, y, z + 1);
                // A volume one voxel thick along an axis has no interior along it: every voxel is
                // surface, as scipy's erosion with a zero border gives.
                out[x + nx * (y + ny * z)] = !interior;
            }
        }
    }
    out
}

/// Euclidean distance (mm) from every voxel to the nearest `true` voxel of `targets`.
fn distance_to(targets: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut squared: Vec<f64> = targets.iter().map(|&t| if t { 0.0 } else { f64::INFINITY }).collect();
    let strides = [1, dims[0], dims[0] * dims[1]];
    for axis in 0..3 {
        let n = dims[axis];
        let weight = spacing[axis] * spacing[axis];
        let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
        let mut line = vec![0.0; n];
        let mut result = vec![0.0; n];
        for i in 0..dims[others[0]] {
            for j in 0..dims[others[1]] {
                let start = i * strides[others[0]] + j * strides[others[1]];
                for (k, value) in line.iter_mut().enumerate() {
                    *value = squared[start + k * strides[axis]];
                }
                lower_envelope(&line, weight, &mut result);
                for (k, value) in result.iter().enumerate() {
                    squared[start + k * strides[axis]] = *value;
                }
            }
        }
    }
    squared.into_iter().map(f64::sqrt).collect()
}

/// One pass of the separable squared EDT along a line: `out[q] = min_p f[p] + w (q - p)^2`.
fn lower_envelope(f: &[f64], weight: f64, out: &mut [f64]) {
    let n = f.len();
    let finite: Vec<usize> = (0..n).filter(|&p| f[p].is_finite()).collect();
    if finite.is_empty() {
        out.fill(f64::INFINITY);
        return;
    }
    // Parabola vertices and the left boundary of each one's segment of the envelope.
    let intersect = |p: usize, q: usize| -> f64 {
        let (p_f, q_f) = (p as f64, q as f64);
        ((f[q] / weight + q_f * q_f) - (f[p] / weight + p_f * p_f)) / (2.0 * (q_f - p_f))
    };
    let mut vertices: Vec<usize> = vec![finite[0]];
    let mut bounds: Vec<f64> = vec![f64::NEG_INFINITY];
    for &q in &finite[1..] {
        loop {
            let s = intersect(*vertices.last().expect("the first vertex is never removed"), q);
            // The first bound is -inf, so the first vertex is never popped.
            if s <= *bounds.last().expect("one bound per vertex") {
                vertices.pop();
                bounds.pop();
            } else {
                vertices.push(q);
                bounds.push(s);
                break;
            }
        }
    }
    bounds.push(f64::INFINITY);
    let mut k = 0;
    for (q, value) in out.iter_mut().enumerate() {
        while bounds[k + 1] < q as f64 {
            k += 1;
        }
        let p = vertices[k];
        let d = q as f64 - p as f64;
        *value = f[p] + weight * d * d;
    }
}

/// numpy's default percentile (linear interpolation between closest ranks).
fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let position = q / 100.0 * (values.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    values[low] + (values[high] - values[low]) * (position - low as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(targets: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
        let coords = |i: usize| [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
        (0..targets.len())
            .map(|i| {
                let a = coords(i);
                targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| **t)
                    .map(|(j, _)| {
                        let b = coords(j);
                        (0..3)
                            .map(|k| ((a[k] as f64 - b[k] as f64) * spacing[k]).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn distance_transform_matches_brute_force_with_anisotropic_spacing() {
        let dims = [7, 5, 4];
        let spacing = [0.7, 1.3, 2.5];
        let targets: Vec<bool> = (0..140).map(|i| (i * 37 + 11) % 23 == 0).collect();
        let fast = distance_to(&targets, dims, spacing);
        let slow = brute_force(&targets, dims, spacing);
        for (f, s) in fast.iter().zip(&slow) {
            assert!((f - s).abs() < 1e-9, "{f} vs {s}");
        }
    }

    #[test]
    fn identical_masks_have_zero_hd95_and_shifted_ones_the_shift() {
        let dims = [12, 12, 3];
        let cube = |offset: usize| -> Vec<bool> {
            (0..dims.iter().product::<usize>())
                .map(|i| {
                    let (x, y) = (i % 12, (i / 12) % 12);
                    (2 + offset..7 + offset).contains(&x) && (3..8).contains(&y)
                })
                .collect()
        };
        let (a, b) = (cube(0), cube(2));
        fn mask(v: &[bool]) -> Mask<'_> {
            Mask {
                dims: [12, 12, 3],
                spacing: [0.5, 0.5, 3.0],
                voxels: v,
            }
        }
        assert_eq!(hd95(&mask(&a), &mask(&a)), Some(0.0));
        // Shifted by 2 voxels of 0.5 mm along x: every distance is 0 or 1 mm.
        let h = hd95(&mask(&a), &mask(&b)).unwrap();
        assert!((0.0..=1.0).contains(&h) && h > 0.0, "{h}");
        let empty = vec![false; a.len()];
        assert_eq!(hd95(&mask(&a), &mask(&empty)), None);
    }

    #[test]
    fn asd_is_the_mean_distance_from_the_predicted_surface_to_the_true_one() {
        // One voxel thick: every voxel is surface. Prediction at x = 0 and 1, truth at x = 3.
        let dims = [5, 1, 1];
        let mask = |v: &'static [bool]| Mask {
            dims,
            spacing: [1.0, 1.0, 1.0],
            voxels: v,
        };
        let (predicted, truth) = (mask(&[true, true, false, false, false]), mask(&[false, false, false, true, false]));
        let d = distances(&predicted, &truth).unwrap();
        assert_eq!(d.asd(), 2.5); // (3 + 2) / 2, one direction only
        assert!((d.hd95() - 2.9).abs() < 1e-12); // numpy.percentile([3, 2, 2], 95)
                                                 // Against brute force on an irregular pair with anisotropic spacing.
        let dims = [9, 7, 4];
        let spacing = [0.6, 1.1, 2.5];
        let a: Vec<bool> = (0..252).map(|i| (i * 7 + 3) % 5 < 3 && i % 9 > 1).collect();
        let b: Vec<bool> = (0..252).map(|i| (i * 11 + 1) % 6 < 2 || i % 9 == 4).collect();
        let (ma, mb) = (Mask { dims, spacing, voxels: &a }, Mask { dims, spacing, voxels: &b });
        let (sa, sb) = (surface(&ma), surface(&mb));
        let to_b = brute_force(&sb, dims, spacing);
        let on_a: Vec<f64> = sa.iter().zip(&to_b).filter(|(s, _)| **s).map(|(_, d)| *d).collect();
        let expected = on_a.iter().sum::<f64>() / on_a.len() as f64;
        assert!((distances(&ma, &mb).unwrap().asd() - expected).abs() < 1e-9);
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], 95) == 8.8
        assert!((percentile(&mut [10.0, 1.0, 2.0, 3.0, 4.0], 95.0) - 8.8).abs() < 1e-12);
    }
}
