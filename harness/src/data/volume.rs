//! An in-memory 3D volume: the common currency between file readers and preprocessing.

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
}
