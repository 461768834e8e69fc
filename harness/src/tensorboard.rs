//! TensorBoard event files of a run's training curve, so `tensorboard --logdir results/` shows
//! atso-bench runs as it shows the PyTorch stacks' (SSL4MIS logs loss, learning rate,
//! consistency weight and validation Dice the same way).
//!
//! No maintained crate writes the format, so it is written here from its specification: a file
//! of TFRecords, each `u64 length (little-endian) | u32 masked CRC-32C of the length | data | u32
//! masked CRC-32C of the data`, where a masked CRC is `((crc >> 15) | (crc << 17)) + 0xa282ead8`;
//! each record's data is a `tensorflow.Event` protocol buffer. The first event holds
//! `file_version = "brain.Event:2"`; then one event per curve point with a `Summary` of
//! `simple_value` scalars tagged `train/loss`, `train/lr`, `train/<part>` for each loss part
//! and `validation/dice` where measured. Fields used (event.proto, summary.proto): Event.wall_time
//! (1, double), Event.step (2, int64), Event.file_version (3, string), Event.summary (5);
//! Summary.value (1); Summary.Value.tag (1, string), Summary.Value.simple_value (2, float).
//!
//! A run's file is `tensorboard/<run_id>/events.out.tfevents.<start seconds>.<host>`, written
//! whole or not at all once the run is recorded. [`read`] parses such a file back (the tests
//! hold the writer to it and, where the `tensorboard` Python package is installed, to its
//! reader).

use crate::fsio;
use crate::train::curves::CurvePoint;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const FILE_VERSION: &str = "brain.Event:2";

fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A field key: field number and wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One event: wall time, step, and either the file version or scalars.
fn event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(String, f32)]) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut out, 2, 0);
    varint(&mut out, step as u64);
    if let Some(version) = file_version {
        bytes_field(&mut out, 3, version.as_bytes());
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut entry = Vec::new();
            bytes_field(&mut entry, 1, tag.as_bytes());
            key(&mut entry, 2, 5);
            entry.extend_from_slice(&value.to_le_bytes());
            bytes_field(&mut summary, 1, &entry);
        }
        bytes_field(&mut out, 5, &summary);
    }
    out
}

fn record(out: &mut Vec<u8>, data: &[u8]) {
    let length = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// The scalars of one curve point, by tag.
pub fn scalars(point: &CurvePoint) -> Vec<(String, f32)> {
    let mut out = vec![
        ("train/loss".to_string(), point.loss as f32),
        ("train/lr".to_string(), point.lr as f32),
    ];
    out.extend(point.parts.iter().map(|(name, value)| (format!("train/{name}"), *value as f32)));
    out.extend(point.validation_dice.map(|d| ("validation/dice".to_string(), d as f32)));
    out
}

/// The bytes of an event file for `curve`, the run having started at `started`.
pub fn encode(curve: &[CurvePoint], started: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let start = started.timestamp_micros() as f64 / 1e6;
    let mut out = Vec::new();
    record(&mut out, &event(start, 0, Some(FILE_VERSION), &[]));
    for point in curve {
        record(&mut out, &event(start + point.seconds, point.step as i64, None, &scalars(point)));
    }
    out
}

/// Writes the event file of a run under `<results>/tensorboard/<run_id>/`; returns its path.
pub fn write(results: &Path, run_id: &str, host: &str, started: chrono::DateTime<chrono::Utc>, curve: &[CurvePoint]) -> Result<PathBuf> {
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    let path = results.join("tensorboard").join(run_id).join(format!(
        "events.out.tfevents.{}.{}",
        started.timestamp(),
        if host.is_empty() { "host" } else { &host }
    ));
    fsio::write_atomic(&path, &encode(curve, started))?;
    Ok(path)
}

/// An event as [`read`] gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadEvent {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub scalars: Vec<(String, f32)>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { bail!("truncated at byte {}", self.at) };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        bail!("varint longer than 10 bytes at byte {}", self.at)
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The next field: number, wire type, and its bytes (varints as their value's bytes).
    fn field(&mut self) -> Result<(u64, u64, &'a [u8], u64)> {
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        Ok(match wire {
            0 => (field, wire, &[][..], self.varint()?),
            1 => (field, wire, self.take(8)?, 0),
            2 => {
                let n = self.varint()? as usize;
                (field, wire, self.take(n)?, 0)
            }
            5 => (field, wire, self.take(4)?, 0),
            other => bail!("unsupported wire type {other}"),
        })
    }
}

fn parse_event(data: &[u8]) -> Result<ReadEvent> {
    let mut cursor = Cursor { bytes: data, at: 0 };
    let mut event = ReadEvent {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    while !cursor.done() {
        match cursor.field()? {
            (1, 1, bytes, _) => event.wall_time = f64::from_le_bytes(bytes.try_into()?),
            (2, 0, _, value) => event.step = value as i64,
            (3, 2, bytes, _) => event.file_version = Some(String::from_utf8(bytes.to_vec())?),
            (5, 2, summary, _) => {
                let mut values = Cursor { bytes: summary, at: 0 };
                while !values.done() {
                    let (_, _, entry, _) = values.field()?;
                    let mut fields = Cursor { bytes: entry, at: 0 };
                    let (mut tag, mut value) = (String::new(), f32::NAN);
                    while !fields.done() {
                        match fields.field()? {
                            (1, 2, bytes, _) => tag = String::from_utf8(bytes.to_vec())?,
                            (2, 5, bytes, _) => value = f32::from_le_bytes(bytes.try_into()?),
                            _ => {}
                        }
                    }
                    event.scalars.push((tag, value));
                }
            }
            _ => {}
        }
    }
    Ok(event)
}

/// Parses an event file, checking every record's length and CRCs.
pub fn read(path: &Path) -> Result<Vec<ReadEvent>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cursor = Cursor { bytes: &bytes, at: 0 };
    let mut events = Vec::new();
    while !cursor.done() {
        let length_bytes = cursor.take(8)?;
        let length_crc = u32::from_le_bytes(cursor.take(4)?.try_into()?);
        if masked_crc(length_bytes) != length_crc {
            bail!("{}: record {}: length CRC mismatch", path.display(), events.len());
        }
        let length = u64::from_le_bytes(length_bytes.try_into()?) as usize;
        let data = cursor.take(length)?;
        let data_crc = u32::from_le_bytes(cursor.take(4)?.try_into()?);
        if masked_crc(data) != data_crc {
            bail!("{}: record {}: data CRC mismatch", path.display(), events.len());
        }
        events.push(parse_event(data).with_context(|| format!("{}: record {}", path.display(), events.len()))?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_its_published_check_value() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720, appendix B.4's check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // Masked: ((crc >> 15) | (crc << 17)) + 0xa282ead8, mod 2^32 (computed in Python).
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn a_written_file_reads_back_with_its_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let point = |step: usize, loss: f64, validation: Option<f64>| CurvePoint {
            step,
            phase: 1,
            phase_name: "run".into(),
            lr: 0.01,
            loss,
            parts: [("supervised".to_string(), loss / 2.0)].into(),
            validation_dice: validation,
            seconds: step as f64 * 0.5,
        };
        let started = chrono::DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z").unwrap().to_utc();
        let path = write(
            dir.path(),
            "run-1",
            "my host",
            started,
            &[point(10, 0.5, None), point(20, 0.25, Some(0.75))],
        )
        .unwrap();
        assert!(
            path.ends_with("tensorboard/run-1/events.out.tfevents.1796558400.myhost"),
            "{}",
            path.display()
        );
        let events = read(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!((events[1].step, events[1].wall_time), (10, 1796558405.0));
        assert_eq!(
            events[2].scalars,
            [
                ("train/loss".to_string(), 0.25),
                ("train/lr".to_string(), 0.01),
                ("train/supervised".to_string(), 0.125),
                ("validation/dice".to_string(), 0.75),
            ]
        );
        // A flipped bit is caught by the CRC.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(format!("{:#}", read(&path).unwrap_err()).contains("CRC mismatch"));
    }
}
