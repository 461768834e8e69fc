//! A small NIfTI-1 reader and writer (`.nii` and `.nii.gz`).
//!
//! Written here rather than taken from the `nifti` crate because that crate (0.18) ignores
//! `vox_offset` when a header has no extensions, silently corrupting files whose voxels start
//! after byte 352. This reader honours `vox_offset`, `scl_slope`/`scl_inter`, the datatype and the
//! byte order, and names the file in every error.

use super::volume::Volume;
use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a NIfTI file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a NIfTI-1 file: {why}")]
    Format { path: PathBuf, why: String },
}

/// Element types this reader understands (NIfTI `datatype` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    U8 = 2,
    I16 = 4,
    I32 = 8,
    F32 = 16,
    F64 = 64,
    I8 = 256,
    U16 = 512,
    U32 = 768,
}

impl Datatype {
    fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            2 => Self::U8,
            4 => Self::I16,
            8 => Self::I32,
            16 => Self::F32,
            64 => Self::F64,
            256 => Self::I8,
            512 => Self::U16,
            768 => Self::U32,
            _ => return None,
        })
    }

    fn bytes(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

const HEADER_SIZE: usize = 348;
const DEFAULT_VOX_OFFSET: usize = 352;

/// Largest volume this reader will inflate, and largest it will expand to float32: a corrupt or
/// hostile header or gzip stream (a few MB of gzip can claim gigabytes of one-byte voxels) is
/// refused with an error before anything is allocated, so reading one file never needs more than
/// twice this. 4 GiB holds a 1024^3 float32 volume.
pub const MAX_VOLUME_BYTES: u64 = 4 << 30;

/// Bytes a compressed file may hold after its voxel data: inflated to nowhere only to reach and
/// check the gzip trailer, so the time a bomb costs is bounded like a volume's.
const MAX_TRAILING_BYTES: u64 = MAX_VOLUME_BYTES;

/// A file's 348-byte header as read, kept so predictions can be written on the image's exact
/// geometry (qform, sform, pixdim, units) for outside tools to compare against.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    bytes: Vec<u8>,
    little: bool,
}

impl Header {
    /// The sform rows (srow_x, srow_y, srow_z): voxel to world coordinates.
    pub fn sform(&self) -> [[f32; 4]; 3] {
        let r = Reader {
            bytes: &self.bytes,
            little: self.little,
        };
        [280, 296, 312].map(|at| [0, 4, 8, 12].map(|i| r.f32(at + i)))
    }

    /// The header of a sub-volume: `count` slices from `start` along `axis`, with dims and both
    /// transforms (qform offset, sform translation) moved so voxels keep their world positions.
    pub fn cropped(&self, axis: usize, start: usize, count: usize) -> Header {
        let mut out = self.clone();
        let little = self.little;
        let r = Reader {
            bytes: &self.bytes,
            little,
        };
        let put16 =
            |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
        let put32 =
            |h: &mut Vec<u8>, at: usize, v: f32| h[at..at + 4].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
        put16(&mut out.bytes, 42 + 2 * axis, count as i16);
        let shift = start as f32;
        // sform: world = srow . (i, j, k, 1): moving the first index by `start` adds srow[axis].
        for row in [280, 296, 312] {
            let moved = r.f32(row + 12) + r.f32(row + 4 * axis) * shift;
            put32(&mut out.bytes, row + 12, moved);
        }
        // qform: world = R (i dx, j dy, qfac k dz) + qoffset, R from the quaternion (b, c, d).
        let (b, c, d) = (r.f32(256) as f64, r.f32(260) as f64, r.f32(264) as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let rotation = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let qfac = if r.f32(76) < 0.0 { -1.0 } else { 1.0 };
        let step = r.f32(80 + 4 * axis) as f64 * if axis == 2 { qfac } else { 1.0 } * start as f64;
        for (i, at) in [268, 272, 276].into_iter().enumerate() {
            let moved = r.f32(at) as f64 + rotation[i][axis] * step;
            put32(&mut out.bytes, at, moved as f32);
        }
        out
    }

    /// The stored datatype (as the header names it), e.g. `uint8`, `int16`, `float32`.
    pub fn datatype_name(&self) -> String {
        let r = Reader {
            bytes: &self.bytes,
            little: self.little,
        };
        let code = r.i16(70);
        match Datatype::from_code(code) {
            Some(Datatype::U8) => "uint8".into(),
            Some(Datatype::I8) => "int8".into(),
            Some(Datatype::I16) => "int16".into(),
            Some(Datatype::U16) => "uint16".into(),
            Some(Datatype::I32) => "int32".into(),
            Some(Datatype::U32) => "uint32".into(),
            Some(Datatype::F32) => "float32".into(),
            Some(Datatype::F64) => "float64".into(),
            None => format!("code {code}"),
        }
    }

    /// The qform and sform codes (which of the two transforms are valid).
    pub fn transform_codes(&self) -> (i16, i16) {
        let r = Reader {
            bytes: &self.bytes,
            little: self.little,
        };
        (r.i16(252), r.i16(254))
    }
}

/// Reads a `.nii` or `.nii.gz` file (chosen by the gzip magic bytes, not the name).
pub fn read(path: &Path) -> Result<Volume, NiftiError> {
    read_with_header(path).map(|(volume, _)| volume)
}

/// Reads a file and keeps its header.
pub fn read_with_header(path: &Path) -> Result<(Volume, Header), NiftiError> {
    let io = |source| NiftiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |why: String| NiftiError::Format {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_file() && path.exists() {
        return Err(format("not a regular file (a FIFO, device or socket); refusing to open it".into()));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 2];
    let gzipped = file.read(&mut magic).map_err(io)? == 2 && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(path).map_err(io)?;
    let mut stream: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    // The header says how many bytes follow; nothing past that (or past the limit) is inflated.
    let mut bytes = Vec::with_capacity(HEADER_SIZE);
    (&mut stream).take(HEADER_SIZE as u64).read_to_end(&mut bytes).map_err(io)?;
    let layout = layout(&bytes).map_err(format)?;
    let needed = layout.end().ok_or_else(|| format(OVERFLOW.into()))?;
    if needed > MAX_VOLUME_BYTES {
        return Err(format(format!(
            "the header describes {needed} bytes of data, more than the {MAX_VOLUME_BYTES}-byte limit"
        )));
    }
    let as_float = layout
        .voxels()
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| format(OVERFLOW.into()))?;
    if as_float > MAX_VOLUME_BYTES {
        return Err(format(format!(
            "the header describes {} voxels, {as_float} bytes as float32, more than the {MAX_VOLUME_BYTES}-byte limit",
            as_float / 4
        )));
    }
    let rest = needed.saturating_sub(bytes.len() as u64);
    (&mut stream).take(rest).read_to_end(&mut bytes).map_err(io)?;
    if gzipped {
        // The gzip member's CRC-32 and length sit after the data: a corrupted deflate stream can
        // still inflate to the right number of bytes with voxels changed, and only reading to
        // the member's end checks it. What follows the voxels is inflated into nothing, and only
        // up to a limit.
        let trailing = std::io::copy(&mut (&mut stream).take(MAX_TRAILING_BYTES + 1), &mut std::io::sink())
            .map_err(|e| format(format!("its gzip stream does not check out (CRC-32 or length): {e}")))?;
        if trailing > MAX_TRAILING_BYTES {
            return Err(format(format!(
                "more than {MAX_TRAILING_BYTES} bytes follow the voxel data the header describes"
            )));
        }
    }
    let volume = parse(&bytes).map_err(format)?;
    let little = is_little(&bytes).map_err(format)?;
    bytes.truncate(HEADER_SIZE);
    Ok((volume, Header { bytes, little }))
}

const OVERFLOW: &str = "dimensions overflow: the data size does not fit in 64 bits";

fn is_little(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < HEADER_SIZE {
        return Err(format!("truncated: {} bytes, shorter than the 348-byte header", bytes.len()));
    }
    let le = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let be = i32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    match (le == 348, be == 348) {
        (true, _) => Ok(true),
        (_, true) => Ok(false),
        _ => Err("sizeof_hdr is not 348 in either byte order".into()),
    }
}

/// The voxel layout a header describes.
struct Layout {
    dims: [usize; 3],
    datatype: Datatype,
    offset: usize,
}

impl Layout {
    /// Voxels of the volume, with overflow checked.
    fn voxels(&self) -> Option<u64> {
        (self.dims[0] as u64)
            .checked_mul(self.dims[1] as u64)?
            .checked_mul(self.dims[2] as u64)
    }

    /// Bytes from the start of the file to the end of the voxel data, with overflow checked.
    fn end(&self) -> Option<u64> {
        self.voxels()?
            .checked_mul(self.datatype.bytes() as u64)?
            .checked_add(self.offset as u64)
    }
}

fn layout(bytes: &[u8]) -> Result<Layout, String> {
    let little = is_little(bytes)?;
    let magic = &bytes[344..348];
    if magic != b"n+1\0" && magic != b"ni1\0" {
        return Err(format!("magic {magic:?} is neither \"n+1\" nor \"ni1\""));
    }
    let r = Reader { bytes, little };
    let rank = r.i16(40);
    if !(1..=7).contains(&rank) {
        return Err(format!("dim[0] = {rank}, expected 1..7"));
    }
    let mut dims = [1usize; 3];
    for (axis, dim) in dims.iter_mut().enumerate() {
        if (axis as i16) < rank {
            let value = r.i16(42 + 2 * axis);
            if value < 1 {
                return Err(format!("dim[{}] = {value}, expected >= 1", axis + 1));
            }
            *dim = value as usize;
        }
    }
    for axis in 3..rank as usize {
        let value = r.i16(42 + 2 * axis);
        if value > 1 {
            return Err(format!("dim[{}] = {value}: only 3D volumes are supported", axis + 1));
        }
    }
    let code = r.i16(70);
    let datatype = Datatype::from_code(code).ok_or_else(|| format!("unsupported datatype code {code}"))?;
    let vox_offset = r.f32(108);
    if !(vox_offset.is_finite() && vox_offset >= 0.0 && (vox_offset as f64) < MAX_VOLUME_BYTES as f64) {
        return Err(format!("vox_offset = {vox_offset} is not a valid byte offset"));
    }
    // Single-file NIfTI keeps data at or after byte 352 even when vox_offset says less.
    let offset = (vox_offset as usize).max(DEFAULT_VOX_OFFSET);
    Ok(Layout { dims, datatype, offset })
}

fn parse(bytes: &[u8]) -> Result<Volume, String> {
    let little = is_little(bytes)?;
    let layout = layout(bytes)?;
    let needed = layout.end().ok_or_else(|| OVERFLOW.to_string())?;
    if (bytes.len() as u64) < needed {
        return Err(format!(
            "truncated: voxel data ends at byte {} but {needed} bytes are needed (vox_offset {})",
            bytes.len(),
            layout.offset
        ));
    }
    let Layout { dims, datatype, offset } = layout;
    let r = Reader { bytes, little };
    let spacing = [r.f32(80).abs(), r.f32(84).abs(), r.f32(88).abs()];
    let (slope, inter) = (r.f32(112), r.f32(116));
    let (slope, inter) = if slope == 0.0 || !slope.is_finite() {
        (1.0, 0.0)
    } else {
        (slope, if inter.is_finite() { inter } else { 0.0 })
    };
    let count = dims[0] * dims[1] * dims[2];
    let body = Reader {
        bytes: &bytes[offset..],
        little,
    };
    let data: Vec<f32> = (0..count).map(|i| body.element(datatype, i) * slope + inter).collect();
    if let Some(at) = data.iter().position(|v| !v.is_finite()) {
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        return Err(format!(
            "{bad} voxel value(s) are NaN or infinite (the first at voxel {at}); images must hold finite numbers"
        ));
    }
    Ok(Volume {
        dims,
        spacing: spacing.map(|s| if s.is_finite() && s > 0.0 { s } else { 1.0 }),
        data,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out: [u8; N] = self.bytes[at..at + N].try_into().unwrap();
        if !self.little {
            out.reverse();
        }
        out
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.array(at))
    }
    fn f32(&self, at: usize) -> f32 {
        f32::from_le_bytes(self.array(at))
    }
    fn element(&self, datatype: Datatype, i: usize) -> f32 {
        let at = i * datatype.bytes();
        match datatype {
            Datatype::U8 => self.bytes[at] as f32,
            Datatype::I8 => self.bytes[at] as i8 as f32,
            Datatype::I16 => i16::from_le_bytes(self.array(at)) as f32,
            Datatype::U16 => u16::from_le_bytes(self.array(at)) as f32,
            Datatype::I32 => i32::from_le_bytes(self.array(at)) as f32,
            Datatype::U32 => u32::from_le_bytes(self.array(at)) as f32,
            Datatype::F32 => f32::from_le_bytes(self.array(at)),
            Datatype::F64 => f64::from_le_bytes(self.array(at)) as f32,
        }
    }
}

/// Writes `volume` as a gzip-compressed little-endian NIfTI-1 file, rounding values to
/// `datatype` (U8 for label maps, I16 for CT in Hounsfield units). `vox_offset` lets tests write
/// files whose voxels start past the default 352 bytes, as some real files do.
pub fn write(path: &Path, volume: &Volume, datatype: Datatype, vox_offset: usize) -> Result<(), NiftiError> {
    if let Some(d) = volume.dims.iter().find(|&&d| d == 0 || d > i16::MAX as usize) {
        return Err(NiftiError::Format {
            path: path.to_path_buf(),
            why: format!("dimension {d} cannot be stored (NIfTI-1 dims are 1..32767)"),
        });
    }
    let vox_offset = vox_offset.max(DEFAULT_VOX_OFFSET);
    let mut header = vec![0u8; vox_offset];
    let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
    put(&mut header, 0, &348i32.to_le_bytes());
    let dims = [
        3i16,
        volume.dims[0] as i16,
        volume.dims[1] as i16,
        volume.dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dims.iter().enumerate() {
        put(&mut header, 40 + 2 * i, &d.to_le_bytes());
    }
    put(&mut header, 70, &(datatype as i16).to_le_bytes());
    put(&mut header, 72, &((datatype.bytes() * 8) as i16).to_le_bytes());
    let pixdim = [1.0f32, volume.spacing[0], volume.spacing[1], volume.spacing[2], 0.0, 0.0, 0.0, 0.0];
    for (i, p) in pixdim.iter().enumerate() {
        put(&mut header, 76 + 4 * i, &p.to_le_bytes());
    }
    put(&mut header, 108, &(vox_offset as f32).to_le_bytes());
    put(&mut header, 112, &1.0f32.to_le_bytes());
    put(&mut header, 123, &[2u8]); // xyzt_units: millimetres
    put(&mut header, 254, &1i16.to_le_bytes()); // sform_code: scanner
    for (row, at) in [280usize, 296, 312].iter().enumerate() {
        let mut srow = [0f32; 4];
        srow[row] = volume.spacing[row];
        for (i, v) in srow.iter().enumerate() {
            put(&mut header, at + 4 * i, &v.to_le_bytes());
        }
    }
    put(&mut header, 344, b"n+1\0");
    let body = encode(volume, datatype);
    write_gz(path, &[&header, &body])
}

/// Writes a label map on the grid of the image whose header is `like`: every geometry field
/// (dims, pixdim, qform, sform, units) is copied; only the data type (uint8), scaling and data
/// offset change. Outside tools (nibabel, MONAI, medpy) read it as aligned with the image.
pub fn write_labels_like(path: &Path, like: &Header, labels: &Volume) -> Result<(), NiftiError> {
    let mut header = like.bytes.clone();
    let little = like.little;
    let put16 = |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
    let put32 = |h: &mut Vec<u8>, at: usize, v: f32| h[at..at + 4].copy_from_slice(&if little { v.to_le_bytes() } else { v.to_be_bytes() });
    let reader = Reader { bytes: &header, little };
    let dims: Vec<usize> = (0..3).map(|axis| reader.i16(42 + 2 * axis).max(1) as usize).collect();
    if dims != labels.dims {
        return Err(NiftiError::Format {
            path: path.to_path_buf(),
            why: format!("label map {:?} does not match the image grid {dims:?}", labels.dims),
        });
    }
    put16(&mut header, 70, Datatype::U8 as i16);
    put16(&mut header, 72, 8);
    put32(&mut header, 108, DEFAULT_VOX_OFFSET as f32);
    put32(&mut header, 112, 1.0);
    put32(&mut header, 116, 0.0);
    put32(&mut header, 124, 0.0); // cal_max
    put32(&mut header, 128, 0.0); // cal_min
    header[344..348].copy_from_slice(b"n+1\0");
    header.extend([0u8; 4]); // no extensions
    write_gz(path, &[&header, &encode(labels, Datatype::U8)])
}

fn encode(volume: &Volume, datatype: Datatype) -> Vec<u8> {
    let mut body = Vec::with_capacity(volume.data.len() * datatype.bytes());
    for &v in &volume.data {
        let v = v.round();
        match datatype {
            Datatype::U8 => body.push(v.clamp(0.0, 255.0) as u8),
            Datatype::I8 => body.push(v.clamp(-128.0, 127.0) as i8 as u8),
            Datatype::I16 => body.extend((v.clamp(i16::MIN as f32, i16::MAX as f32) as i16).to_le_bytes()),
            Datatype::U16 => body.extend((v.clamp(0.0, u16::MAX as f32) as u16).to_le_bytes()),
            Datatype::I32 => body.extend((v as i32).to_le_bytes()),
            Datatype::U32 => body.extend((v.max(0.0) as u32).to_le_bytes()),
            Datatype::F32 => body.extend(v.to_le_bytes()),
            Datatype::F64 => body.extend((v as f64).to_le_bytes()),
        }
    }
    body
}

/// Gzips `parts` into `path`, atomically (see `fsio`).
fn write_gz(path: &Path, parts: &[&[u8]]) -> Result<(), NiftiError> {
    crate::fsio::write_atomic_with(path, crate::fsio::Replace::Yes, |file| {
        let mut encoder = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
        for part in parts {
            encoder.write_all(part)?;
        }
        encoder.finish()?.flush()?;
        Ok(())
    })
    .map_err(|e| NiftiError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("{e:#}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Volume {
        let dims = [5, 4, 3];
        let data = (0..60).map(|i| (i as f32) * 7.0 - 200.0).collect();
        Volume {
            dims,
            spacing: [0.8, 0.8, 2.5],
            data,
        }
    }

    #[test]
    fn round_trip_i16() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ct.nii.gz");
        write(&path, &sample(), Datatype::I16, 352).unwrap();
        assert_eq!(read(&path).unwrap(), sample());
    }

    #[test]
    fn honours_vox_offset_past_352() {
        // Regression for the nifti-crate pitfall: voxels starting after byte 352.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset.nii.gz");
        write(&path, &sample(), Datatype::I16, 32976).unwrap();
        assert_eq!(read(&path).unwrap().data, sample().data);
    }

    #[test]
    fn applies_slope_and_intercept() {
        let mut bytes = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.nii.gz");
        write(&path, &sample(), Datatype::I16, 352).unwrap();
        GzDecoder::new(&std::fs::read(&path).unwrap()[..]).read_to_end(&mut bytes).unwrap();
        bytes[112..116].copy_from_slice(&2.0f32.to_le_bytes());
        bytes[116..120].copy_from_slice(&(-1024.0f32).to_le_bytes());
        let volume = parse(&bytes).unwrap();
        assert_eq!(volume.data[0], -200.0 * 2.0 - 1024.0);
    }

    /// A flipped bit in a .nii.gz never gives changed voxels: wherever it lands in the deflate
    /// stream or the gzip trailer, reading fails with an error naming the file, or (a bit of a
    /// Huffman table no code uses) inflates to the very same bytes. The reader had stopped once
    /// it had the header's byte count, so a flip could change voxels unnoticed.
    #[test]
    fn a_corrupted_gzip_stream_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ct.nii.gz");
        write(&path, &sample(), Datatype::I16, 352).unwrap();
        let good = std::fs::read(&path).unwrap();
        let (mut caught, mut harmless) = (0, 0);
        // Every bit of the compressed body (after the 10-byte gzip header) and of the trailer.
        for byte in 10..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                std::fs::write(&path, &bad).unwrap();
                match read(&path) {
                    Err(e) => {
                        assert!(e.to_string().contains("ct.nii.gz"), "{e}");
                        caught += 1;
                    }
                    Ok(volume) => {
                        assert_eq!(volume, sample(), "byte {byte} bit {bit} flipped: read with other voxels");
                        harmless += 1;
                    }
                }
            }
        }
        assert!(caught > 10 * harmless, "{caught} caught, {harmless} harmless");
        let mut crc = good.clone();
        let at = good.len() - 8;
        crc[at] ^= 1;
        std::fs::write(&path, &crc).unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("gzip stream does not check out"), "{message}");
    }

    #[test]
    fn truncated_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.nii");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let message = read(&path).unwrap_err().to_string();
        assert!(message.contains("short.nii") && message.contains("348"), "{message}");
    }
}

/// Property tests: whatever bytes a file holds, reading it returns an error or a volume, never a
/// panic, and never allocates past what the header (within the limit) claims. The cases are
/// drawn from a seeded stream (thousands per run), not from a fuzzing crate, so the test build
/// adds no dependency features the release build lacks.
#[cfg(test)]
mod properties {
    use super::*;
    use rand::Rng;

    fn valid_file() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nii");
        let volume = Volume {
            dims: [4, 3, 2],
            spacing: [1.0, 1.0, 2.0],
            data: (0..24).map(|v| v as f32).collect(),
        };
        write(&path, &volume, Datatype::I16, 352).unwrap();
        let mut raw = Vec::new();
        GzDecoder::new(&std::fs::read(&path).unwrap()[..]).read_to_end(&mut raw).unwrap();
        raw
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn read_bytes(bytes: &[u8]) -> Result<Volume, NiftiError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.nii.gz");
        std::fs::write(&path, bytes).unwrap();
        read(&path)
    }

    #[test]
    fn random_truncated_and_mutated_files_give_errors_not_panics() {
        let mut rng = crate::rng::stream(7, "nifti-properties");
        let valid = valid_file();
        for _ in 0..1500 {
            let case: u8 = rng.random_range(0..5);
            let bytes = match case {
                // Random bytes, plain or gzipped.
                0 => (0..rng.random_range(0..1200)).map(|_| rng.random::<u8>()).collect::<Vec<_>>(),
                1 => gzip(&(0..rng.random_range(0..1200)).map(|_| rng.random::<u8>()).collect::<Vec<_>>()),
                // A valid file cut anywhere (plain and compressed).
                2 => valid[..rng.random_range(0..valid.len())].to_vec(),
                3 => {
                    let zipped = gzip(&valid);
                    zipped[..rng.random_range(0..zipped.len())].to_vec()
                }
                // A valid header with random fields overwritten (dims, datatype, offset, ...).
                _ => {
                    let mut mutated = valid.clone();
                    for _ in 0..rng.random_range(1..6) {
                        let at = rng.random_range(0..HEADER_SIZE);
                        mutated[at] = rng.random();
                    }
                    gzip(&mutated)
                }
            };
            let outcome = std::panic::catch_unwind(|| read_bytes(&bytes));
            assert!(outcome.is_ok(), "the reader panicked on {} bytes (case {case})", bytes.len());
        }
    }

    #[test]
    fn huge_header_fields_are_refused_before_reading_data() {
        let mut header = valid_file();
        for (at, value) in [(42, i16::MAX), (44, i16::MAX), (46, i16::MAX)] {
            header[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        header[70..72].copy_from_slice(&(Datatype::F64 as i16).to_le_bytes());
        let message = read_bytes(&gzip(&header)).unwrap_err().to_string();
        assert!(message.contains("limit"), "{message}");
        let mut offset = valid_file();
        offset[108..112].copy_from_slice(&3.0e38f32.to_le_bytes());
        let message = read_bytes(&gzip(&offset)).unwrap_err().to_string();
        assert!(message.contains("vox_offset"), "{message}");
        let mut negative = valid_file();
        negative[42..44].copy_from_slice(&(-5i16).to_le_bytes());
        assert!(read_bytes(&gzip(&negative)).unwrap_err().to_string().contains("dim[1] = -5"));
    }

    #[test]
    fn one_byte_voxels_that_would_not_fit_as_float32_are_refused_before_reading() {
        // 2^31 uint8 voxels: 2 GiB stored (under the limit) but 8 GiB as float32.
        let mut header = valid_file();
        for (at, value) in [(42, 1024i16), (44, 1024), (46, 2048)] {
            header[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        header[70..72].copy_from_slice(&(Datatype::U8 as i16).to_le_bytes());
        let message = read_bytes(&gzip(&header)).unwrap_err().to_string();
        assert!(message.contains("as float32") && message.contains("limit"), "{message}");
    }

    #[test]
    fn a_gzip_bomb_behind_a_small_header_is_not_inflated() {
        // A valid 24-voxel header followed by 64 MiB of zeros that compress to almost nothing:
        // the reader keeps only the bytes the header describes (the rest is inflated into
        // nothing, to check the gzip trailer, up to a limit).
        let mut bytes = valid_file();
        bytes.resize(bytes.len() + (64 << 20), 0);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(&bytes).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 120_000, "{} bytes", bomb.len());
        let volume = read_bytes(&bomb).unwrap();
        assert_eq!(volume.dims, [4, 3, 2]);
    }
}
