//! Training-time augmentation, as SSL4MIS's `RandomGenerator` does it, for every method alike.
//!
//! Per image: with probability 1/2 a random rot90 (k in 0..4) followed by a flip along a random
//! axis; otherwise, with probability 1/2, a rotation by an integer angle drawn from
//! [-max, max) degrees, nearest-neighbour, about the image centre, zero outside. Each part can
//! be switched off (`[augmentation]` in an experiment file); the probabilities of the branches
//! stay SSL4MIS's, so switching one part off never changes how often the other is applied. A
//! transform is a pixel map applied identically to an image and its target.

use crate::rng::SeededRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// `[augmentation]` of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augmentation {
    /// Random multiples of 90 degrees (SSL4MIS `random_rot_flip`).
    #[serde(default = "yes")]
    pub rot90: bool,
    /// Random flip along one axis (SSL4MIS `random_rot_flip`).
    #[serde(default = "yes")]
    pub flip: bool,
    /// Largest small rotation in degrees (SSL4MIS `random_rotate`: 20); 0 switches it off.
    #[serde(default = "default_degrees")]
    pub rotate_degrees: u32,
}

fn yes() -> bool {
    true
}
fn default_degrees() -> u32 {
    20
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            rot90: true,
            flip: true,
            rotate_degrees: default_degrees(),
        }
    }
}

impl Augmentation {
    /// No augmentation at all (inference, diagnostics).
    pub fn none() -> Self {
        Self {
            rot90: false,
            flip: false,
            rotate_degrees: 0,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.rotate_degrees > 180 {
            anyhow::bail!("augmentation.rotate_degrees must be at most 180, got {}", self.rotate_degrees);
        }
        Ok(())
    }

    fn is_off(&self) -> bool {
        !self.rot90 && !self.flip && self.rotate_degrees == 0
    }

    /// Draws the transform of one image. Draws nothing from `rng` when every part is off, so
    /// switching augmentation off does not shift other random draws of the step; with only some
    /// parts off it draws exactly what the default would, so the parts left on apply to the
    /// same images as with every part on.
    pub fn draw(&self, rng: &mut SeededRng) -> Transform {
        if self.is_off() {
            return Transform::Identity;
        }
        if rng.random::<f64>() > 0.5 {
            let quarter_turns = rng.random_range(0..4u8);
            let flip_rows = rng.random_range(0..2u8) == 0;
            return Transform::RotFlip {
                quarter_turns: if self.rot90 { quarter_turns } else { 0 },
                flip: self.flip.then_some(flip_rows),
            };
        }
        if rng.random::<f64>() > 0.5 {
            if self.rotate_degrees > 0 {
                let max = self.rotate_degrees as i32;
                return Transform::Rotate {
                    degrees: rng.random_range(-max..max),
                };
            }
            // Switched off: draw what the default rotation would have, so the rest of the stream
            // (and with it every other part's draws) is the same as with rotation on.
            let _ = rng.random_range(-(default_degrees() as i32)..default_degrees() as i32);
        }
        Transform::Identity
    }
}

/// A geometric transform of a square image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Identity,
    /// `quarter_turns` x 90 degrees, then a flip of rows (`Some(true)`) or columns (`Some(false)`).
    RotFlip {
        quarter_turns: u8,
        flip: Option<bool>,
    },
    /// Rotation by `degrees` about the centre, nearest neighbour, zero outside.
    Rotate {
        degrees: i32,
    },
}

impl Transform {
    /// For each output pixel of a `size x size` image (row-major), the source pixel it takes, or
    /// `None` where the output lies outside the source (filled with zero / background).
    pub fn source_map(&self, size: usize) -> Vec<Option<usize>> {
        let n = size as i64;
        let mut map = Vec::with_capacity(size * size);
        for y in 0..n {
            for x in 0..n {
                let source = match *self {
                    Transform::Identity => Some((x, y)),
                    Transform::RotFlip { quarter_turns, flip } => {
                        // Undo the flip, then the rotation (output -> source).
                        let (mut sx, mut sy) = match flip {
                            Some(true) => (x, n - 1 - y),
                            Some(false) => (n - 1 - x, y),
                            None => (x, y),
                        };
                        for _ in 0..quarter_turns {
                            (sx, sy) = (n - 1 - sy, sx);
                        }
                        Some((sx, sy))
                    }
                    Transform::Rotate { degrees } => {
                        let (sin, cos) = (degrees as f64).to_radians().sin_cos();
                        let centre = (n - 1) as f64 / 2.0;
                        let (dx, dy) = (x as f64 - centre, y as f64 - centre);
                        let sx = (cos * dx + sin * dy + centre).round() as i64;
                        let sy = (-sin * dx + cos * dy + centre).round() as i64;
                        ((0..n).contains(&sx) && (0..n).contains(&sy)).then_some((sx, sy))
                    }
                };
                map.push(source.map(|(sx, sy)| (sy * n + sx) as usize));
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn apply(t: Transform, image: &[u32], size: usize) -> Vec<u32> {
        t.source_map(size).iter().map(|s| s.map_or(0, |i| image[i])).collect()
    }

    #[test]
    fn rot_flip_maps_are_permutations_and_four_turns_are_identity() {
        let image: Vec<u32> = (1..=16).collect();
        for turns in 0..4 {
            for flip in [None, Some(true), Some(false)] {
                let mut out = apply(
                    Transform::RotFlip {
                        quarter_turns: turns,
                        flip,
                    },
                    &image,
                    4,
                );
                out.sort();
                assert_eq!(out, image);
            }
        }
        let once = Transform::RotFlip {
            quarter_turns: 1,
            flip: None,
        };
        let mut x = image.clone();
        for _ in 0..4 {
            x = apply(once, &x, 4);
        }
        assert_eq!(x, image);
        assert_ne!(apply(once, &image, 4), image);
    }

    #[test]
    fn small_rotation_keeps_the_centre_and_zeroes_corners() {
        let size = 9;
        let image: Vec<u32> = (1..=81).collect();
        let out = apply(Transform::Rotate { degrees: 19 }, &image, size);
        assert_eq!(out[4 * size + 4], image[4 * size + 4]);
        assert_eq!(out[0], 0, "a corner rotates in from outside the image");
        assert_eq!(apply(Transform::Rotate { degrees: 0 }, &image, size), image);
    }

    #[test]
    fn branch_frequencies_follow_ssl4mis() {
        let mut rng = rng::stream(0, "t");
        let spec = Augmentation::default();
        let (mut rot_flip, mut rotate, mut identity) = (0, 0, 0);
        for _ in 0..8000 {
            match spec.draw(&mut rng) {
                Transform::RotFlip { .. } => rot_flip += 1,
                Transform::Rotate { degrees } => {
                    assert!((-20..20).contains(&degrees));
                    rotate += 1
                }
                Transform::Identity => identity += 1,
            }
        }
        // 1/2, 1/4, 1/4
        assert!((3800..4200).contains(&rot_flip), "{rot_flip}");
        assert!((1800..2200).contains(&rotate), "{rotate}");
        assert!((1800..2200).contains(&identity), "{identity}");
        assert_eq!(Augmentation::none().draw(&mut rng), Transform::Identity);
    }

    #[test]
    fn each_switch_turns_off_its_part_only_and_keeps_the_others_frequencies() {
        let count = |spec: Augmentation| {
            let mut rng = rng::stream(0, "t");
            let (mut turned, mut flipped, mut rotated, mut identity) = (0, 0, 0, 0);
            for _ in 0..8000 {
                match spec.draw(&mut rng) {
                    Transform::RotFlip { quarter_turns, flip } => {
                        turned += usize::from(quarter_turns != 0);
                        flipped += usize::from(flip.is_some());
                        identity += usize::from(quarter_turns == 0 && flip.is_none());
                    }
                    Transform::Rotate { .. } => rotated += 1,
                    Transform::Identity => identity += 1,
                }
            }
            (turned, flipped, rotated, identity)
        };
        let all = count(Augmentation::default());
        let no_rot90 = count(Augmentation {
            rot90: false,
            ..Augmentation::default()
        });
        assert_eq!(no_rot90.0, 0, "no quarter turns");
        assert_eq!((no_rot90.1, no_rot90.2), (all.1, all.2), "flips and rotations as often as before");
        let no_flip = count(Augmentation {
            flip: false,
            ..Augmentation::default()
        });
        assert_eq!(no_flip.1, 0, "no flips");
        assert_eq!((no_flip.0, no_flip.2), (all.0, all.2));
        let no_rotation = count(Augmentation {
            rotate_degrees: 0,
            ..Augmentation::default()
        });
        assert_eq!(no_rotation.2, 0, "no small rotations");
        assert_eq!((no_rotation.0, no_rotation.1), (all.0, all.1));
    }
}
