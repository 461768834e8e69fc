//! An in-memory 3D volume: the common currency between file readers and preprocessing.

pub use atso_schema::overlap::IGNORE;

/// A 3D array stored x-fastest (`index = x + nx * (y + ny * z)`), as NIfTI stores voxels.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Size along x, y, z.
    pub dims: [usize; 3],
    /// Voxel size in millimetres along x, y, z.
    pub spacing: [f32; 3],
    /// Voxel values (already scaled by any slope/intercept of the file).
    pub data: Vec<f32>,
}

impl Volume {
    /// Checks that `label` (read from `label_path`) lies on this image's grid; the error names
    /// the label file and `image_source`.
    pub fn ensure_label_fits(&self, label: &Volume, label_path: &std::path::Path, image_source: &str) -> anyhow::Result<()> {
        if self.dims != label.dims {
            anyhow::bail!(
                "{}: label shape {:?} differs from image shape {:?} ({image_source})",
                label_path.display(),
                label.dims,
                self.dims
            );
        }
        Ok(())
    }

    /// The slab of `count` planes from `start` along `axis`, as its own volume.
    pub fn crop(&self, axis: usize, (start, count): (usize, usize)) -> Volume {
        let mut dims = self.dims;
        dims[axis] = count;
        let mut out = Volume::filled(dims, self.spacing, 0.0);
        for i in 0..count {
            out.set_plane(axis, i, &self.plane(axis, start + i).2);
        }
        out
    }

    /// A volume filled with `value`.
    pub fn filled(dims: [usize; 3], spacing: [f32; 3], value: f32) -> Self {
        Self {
            dims,
            spacing,
            data: vec![value; dims[0] * dims[1] * dims[2]],
        }
    }

    /// Flat index of voxel (x, y, z).
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    /// Value at voxel (x, y, z).
    pub fn get(&self, x: usize, y: usize, z: usize) -> f32 {
        self.data[self.index(x, y, z)]
    }

    /// The 2D plane at position `at` along `axis`, as (width, height, row-major values).
    /// The two remaining axes keep their order: the lower-numbered one varies fastest.
    pub fn plane(&self, axis: usize, at: usize) -> (usize, usize, Vec<f32>) {
        let [nx, ny, nz] = self.dims;
        match axis {
            0 => {
                let mut out = Vec::with_capacity(ny * nz);
                for z in 0..nz {
                    for y in 0..ny {
                        out.push(self.get(at, y, z));
                    }
                }
                (ny, nz, out)
            }
            1 => {
                let mut out = Vec::with_capacity(nx * nz);
                for z in 0..nz {
                    for x in 0..nx {
                        out.push(self.get(x, at, z));
                    }
                }
                (nx, nz, out)
            }
            _ => {
                let start = self.index(0, 0, at);
                (nx, ny, self.data[start..start + nx * ny].to_vec())
            }
        }
    }

    /// Writes `values` (laid out as [`Volume::plane`] returns them) into the plane at `at` along
    /// `axis`: the inverse of `plane`.
    pub fn set_plane(&mut self, axis: usize, at: usize, values: &[f32]) {
        let [nx, ny, nz] = self.dims;
        let mut values = values.iter().copied();
        match axis {
            0 => {
                for z in 0..nz {
                    for y in 0..ny {
                        let i = self.index(at, y, z);
                        self.data[i] = values.next().expect("plane size");
                    }
                }
            }
            1 => {
                for z in 0..nz {
                    for x in 0..nx {
                        let i = self.index(x, at, z);
                        self.data[i] = values.next().expect("plane size");
                    }
                }
            }
            _ => {
                let start = self.index(0, 0, at);
                for (slot, v) in self.data[start..start + nx * ny].iter_mut().zip(values) {
                    *slot = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_plane_inverts_plane_on_every_axis() {
        let source = Volume {
            dims: [3, 4, 5],
            spacing: [1.0; 3],
            data: (0..60).map(|v| v as f32).collect(),
        };
        for axis in 0..3 {
            let mut copy = Volume::filled(source.dims, source.spacing, -1.0);
            for at in 0..source.dims[axis] {
                copy.set_plane(axis, at, &source.plane(axis, at).2);
            }
            assert_eq!(copy, source, "axis {axis}");
        }
    }
}
