//! Checkpoints of long runs, so a killed run resumes where it stopped and ends exactly as an
//! uninterrupted run would.
//!
//! A run is replayed, not re-entered: after a restart the method runs again from the top, but
//! every training phase (`Engine::train`) that had finished is skipped by loading its outcome
//! (model, loss log, the objective's state and the engine's random stream after it), and the
//! phase that was interrupted resumes from its last checkpoint (model, optimizer state, objective
//! state, random stream, step). Everything between phases (pseudo-labeling, validation) is
//! deterministic inference and simply runs again; the device's random stream is reseeded from the
//! run seed at every step, so it needs no saving. `[checkpoint] every = N` writes a checkpoint
//! every N steps (0, the default, writes none); files live in
//! `checkpoints/<config hash>/<commit>/` and are removed once the run is recorded. Only the commit
//! that wrote a checkpoint resumes from it: after a code change the saved state may not mean what
//! the new code expects, so a sweep at another commit starts the run over. Every file is written
//! whole or not at all.

use crate::fsio;
use crate::rng::SeededRng;
use anyhow::{bail, Context, Result};
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[checkpoint]` of an experiment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Steps between checkpoints; 0 writes none.
    #[serde(default)]
    pub every: usize,
}

/// The position of a ChaCha stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    seed: [u8; 32],
    stream: u64,
    word_pos: u128,
}

impl RngState {
    pub fn of(rng: &SeededRng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos(),
        }
    }

    pub fn restore(&self) -> SeededRng {
        let mut rng = SeededRng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

/// Where a checkpoint stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Position {
    /// Phase index of the run (1-based, in the order phases run).
    pub phase: usize,
    /// Steps of the phase already taken.
    pub local: usize,
    /// Steps of the run already taken.
    pub global: usize,
    pub rng: RngState,
    /// The phase's loss sums so far (for its log).
    pub loss_sum: f64,
    pub first_loss: f64,
    pub last_loss: f64,
    pub lr_first: f64,
    pub lr_last: f64,
    /// The run's training curve up to this point (checkpoints written before curves existed
    /// have none).
    #[serde(default)]
    pub curve: Vec<crate::curves::CurvePoint>,
}

/// What a checkpoint file holds: its position and opaque byte blobs.
pub struct Saved {
    pub position: Position,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub objective: Vec<u8>,
}

/// Concatenates byte parts with length prefixes.
pub fn pack(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend((part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The parts [`pack`] joined.
pub fn unpack(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut parts = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 8 {
            bail!("truncated checkpoint part");
        }
        let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        if bytes.len() < 8 + len {
            bail!("truncated checkpoint part");
        }
        parts.push(bytes[8..8 + len].to_vec());
        bytes = &bytes[8 + len..];
    }
    Ok(parts)
}

/// A run's checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// The run's folder (every commit's checkpoints of it).
    run_dir: PathBuf,
    /// This commit's checkpoints.
    dir: PathBuf,
    pub every: usize,
}

impl Checkpoints {
    /// Checkpoints of the run `config_hash`, written by `commit`, under `results/checkpoints/`.
    pub fn new(results: &Path, config_hash: &str, commit: &str, every: usize) -> Self {
        let run_dir = results.join("checkpoints").join(config_hash);
        let commit: String = commit.chars().filter(|c| c.is_ascii_alphanumeric()).take(40).collect();
        Self {
            dir: run_dir.join(if commit.is_empty() { "unknown".into() } else { commit }),
            run_dir,
            every,
        }
    }

    fn phase_file(&self, phase: usize) -> PathBuf {
        self.dir.join(format!("phase-{phase:03}.done"))
    }

    fn current_file(&self) -> PathBuf {
        self.dir.join("current.ckpt")
    }

    fn write(path: &Path, saved: &Saved) -> Result<()> {
        let position = serde_json::to_vec(&saved.position)?;
        fsio::write_atomic(path, &pack(&[&position, &saved.model, &saved.optimizer, &saved.objective]))
    }

    fn read(path: &Path) -> Result<Option<Saved>> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(None);
        };
        let parts = unpack(&bytes).with_context(|| format!("{}: not a checkpoint", path.display()))?;
        let [position, model, optimizer, objective]: [Vec<u8>; 4] = parts
            .try_into()
            .map_err(|_| anyhow::anyhow!("{}: not a checkpoint (expected 4 parts)", path.display()))?;
        Ok(Some(Saved {
            position: serde_json::from_slice(&position).with_context(|| format!("{}: bad checkpoint position", path.display()))?,
            model,
            optimizer,
            objective,
        }))
    }

    /// The outcome of a finished phase, if recorded.
    pub fn finished(&self, phase: usize) -> Result<Option<Saved>> {
        Self::read(&self.phase_file(phase))
    }

    /// The mid-phase checkpoint of `phase`, if the last one written is of that phase.
    pub fn current(&self, phase: usize) -> Result<Option<Saved>> {
        Ok(Self::read(&self.current_file())?.filter(|s| s.position.phase == phase))
    }

    /// Records a mid-phase checkpoint.
    pub fn save_current(&self, saved: &Saved) -> Result<()> {
        Self::write(&self.current_file(), saved)
    }

    /// Records a finished phase (and drops the mid-phase checkpoint it supersedes).
    pub fn save_finished(&self, saved: &Saved) -> Result<()> {
        Self::write(&self.phase_file(saved.position.phase), saved)?;
        let _ = std::fs::remove_file(self.current_file());
        Ok(())
    }

    /// Removes the run's checkpoints, every commit's (once it is recorded).
    pub fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn streams_resume_where_they_stopped() {
        let mut rng = crate::rng::stream(3, "t");
        rng.next_u64();
        let state = RngState::of(&rng);
        let expected = rng.next_u64();
        assert_eq!(state.restore().next_u64(), expected);
    }

    #[test]
    fn only_the_commit_that_wrote_a_checkpoint_resumes_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let saved = || Saved {
            position: Position {
                phase: 1,
                local: 5,
                global: 5,
                rng: RngState::of(&crate::rng::stream(1, "t")),
                loss_sum: 1.0,
                first_loss: 0.5,
                last_loss: 0.1,
                lr_first: 0.1,
                lr_last: 0.05,
                curve: vec![],
            },
            model: vec![1, 2, 3],
            optimizer: vec![4],
            objective: vec![],
        };
        let old = Checkpoints::new(dir.path(), "abc", "1111", 5);
        old.save_finished(&Saved {
            position: Position {
                phase: 0,
                ..saved().position
            },
            ..saved()
        })
        .unwrap();
        old.save_current(&saved()).unwrap();
        assert!(old.current(1).unwrap().is_some());
        let new = Checkpoints::new(dir.path(), "abc", "2222", 5);
        assert!(new.current(1).unwrap().is_none() && new.finished(0).unwrap().is_none());
        new.clear();
        assert!(
            old.finished(0).unwrap().is_none(),
            "recording the run clears every commit's checkpoints"
        );
    }

    #[test]
    fn parts_round_trip_and_truncation_is_an_error() {
        let packed = pack(&[b"abc", b"", b"0123456789"]);
        assert_eq!(unpack(&packed).unwrap(), [b"abc".to_vec(), vec![], b"0123456789".to_vec()]);
        assert!(unpack(&packed[..packed.len() - 1]).is_err());
    }
}
