//! The U-Net's convolutions on the CPU, forward and both gradients, on plain `f32` slices in
//! NCHW order.
//!
//! Why not burn's generic path: flex runs the input gradient as a transposed convolution and the
//! weight gradient as a convolution whose kernel is the whole output image, at a fraction of the
//! machine's arithmetic rate. Why not im2col and a GEMM crate (this module's first version): at
//! the 16-channel layers, building the patch matrix and packing it for the GEMM cost as much as
//! the arithmetic. Here each image is copied once into zero-padded planes whose rows are
//! `width + padding` wide: `padding` zeros, then the row, the next row's zeros serving as this
//! one's right-hand padding. In that layout every kernel tap is a constant offset from the output
//! position, so the forward pass is a matrix product whose right operand is read straight from
//! the padded image (`microkernel::forward_tile`), and the weight gradient one whose sum runs
//! over positions (`microkernel::weight_tile`). In the padded layout each output row carries
//! `kernel - 1 - padding` junk columns (one for the U-Net's 3 x 3 kernels), and each image's
//! positions are rounded up to whole half-tiles (at 8 x 8, 72 as 80). The forward tiles skip
//! both where every output row is whole runs of 8 or 16 positions (all the U-Net's levels; on
//! AVX-512 rows of 8 go two to a register): they take the output row by row and write each run
//! straight to its place in the output (or the next convolution's padded copy), so nothing is
//! computed aside and copied out. The weight gradient chains over the output's rows too
//! (`microkernel::Positions`), its output gradient transposed without padding.
//!
//! Only what the U-Net needs is covered: stride 1, dilation 1, one group, the same padding on all
//! four sides. Every value is one sum in an order fixed by the shape alone: work is split across
//! images, never inside a sum, and per-image weight gradients are added in image order. So a
//! result depends neither on the thread count nor on the CPU (the micro-kernels' SIMD and plain
//! versions give the same bits).
//!
//! One file a job: `layout` the shape, the padded layout and the padded copies, `forward` the
//! forward pass (and the input gradient, which is one), `weight_grad` the weight and bias
//! gradients; this file names what the rest of the crate uses, and holds the tests.

mod forward;
mod layout;
mod weight_grad;

pub(crate) use layout::ConvInput;
pub use layout::ConvShape;

#[cfg(test)]
pub(crate) use forward::TWICE_CALLS;
pub(crate) use forward::{forward, forward_then, forward_twice_then, input_grad, RowFinish};
pub(crate) use weight_grad::{bias_grad, weight_and_bias_grad, weight_grad};

#[cfg(test)]
mod tests {
    use super::super::isa;
    use super::super::microkernel::{self, BLOCK, HALF_TILE, LANES, TILE};
    use super::forward::{channel_blocks, even_tiles};
    use super::layout::*;
    use super::weight_grad::transposed_output;
    use super::*;
    use crate::elementwise;

    /// The definition, written out: a loop per output value.
    fn naive_forward(x: &[f32], w: &[f32], bias: &[f32], s: &ConvShape) -> Vec<f32> {
        let (oh, ow) = (s.out_height(), s.out_width());
        let mut y = vec![0.0; s.batch * s.channels_out * oh * ow];
        for b in 0..s.batch {
            for co in 0..s.channels_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[co] as f64;
                        for ci in 0..s.channels_in {
                            for ky in 0..s.kernel[0] {
                                for kx in 0..s.kernel[1] {
                                    let (iy, ix) = ((oy + ky) as isize - s.padding as isize, (ox + kx) as isize - s.padding as isize);
                                    if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                                        continue;
                                    }
                                    let xv = x[((b * s.channels_in + ci) * s.height + iy as usize) * s.width + ix as usize];
                                    let wv = w[((co * s.channels_in + ci) * s.kernel[0] + ky) * s.kernel[1] + kx];
                                    acc += (xv * wv) as f64;
                                }
                            }
                        }
                        y[((b * s.channels_out + co) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn shapes_outside_the_kernels_are_refused() {
        let base = shapes()[0];
        assert!(base.is_valid());
        assert!(!ConvShape { kernel: [3, 1], ..base }.is_valid());
        assert!(!ConvShape { padding: 3, ..base }.is_valid());
        assert!(!ConvShape { channels_in: 0, ..base }.is_valid());
        assert!(!ConvShape { width: 0, ..base }.is_valid());
        // Counts that would overflow (and wrap in a release build) are refused, not computed.
        assert!(!ConvShape {
            batch: usize::MAX / 2,
            ..base
        }
        .is_valid());
        assert!(!ConvShape {
            height: usize::MAX - 1,
            ..base
        }
        .is_valid());
        assert!(!ConvShape {
            height: 1,
            padding: 0,
            ..base
        }
        .is_valid());
    }

    /// A 5 x 5 kernel with padding 2 on a one-pixel-wide image: most kernel columns see only
    /// padding. Still the definition's values, and its gradients are still adjoint.
    #[test]
    fn narrow_images_with_wide_kernels() {
        let s = ConvShape {
            batch: 2,
            channels_in: 2,
            channels_out: 3,
            height: 4,
            width: 1,
            kernel: [5, 5],
            padding: 2,
        };
        assert!(s.is_valid());
        let (x, w, b) = (
            values(s.batch * s.input_len(), 10),
            values(s.channels_out * s.patch_len(), 11),
            values(3, 12),
        );
        close(&forward(&x, &w, &b, &s), &naive_forward(&x, &w, &b, &s));
        let dy = values(s.batch * s.output_len(), 13);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let reference = dot(&forward(&x, &w, &[0.0; 3], &s), &dy);
        assert!((reference - dot(&x, &input_grad(&w, &dy, &s))).abs() < 1e-3 * (1.0 + reference.abs()));
        assert!((reference - dot(&w, &weight_grad(&x, &dy, &s))).abs() < 1e-3 * (1.0 + reference.abs()));
    }

    #[test]
    #[should_panic(expected = "conv weight")]
    fn a_weight_of_the_wrong_size_is_refused() {
        let s = shapes()[0];
        let x = values(s.batch * s.input_len(), 1);
        forward(&x, &values(5, 2), &values(s.channels_out, 3), &s);
    }

    #[test]
    #[should_panic(expected = "outside what these kernels compute")]
    fn a_shape_outside_the_kernels_is_refused_by_every_entry() {
        let s = ConvShape { width: 0, ..shapes()[0] };
        weight_grad(&[], &[], &s);
    }

    #[test]
    #[should_panic(expected = "conv output gradient")]
    fn a_short_output_gradient_is_refused_by_the_bias_gradient() {
        let s = shapes()[0];
        bias_grad(&values(3, 1), &s);
    }

    /// Forward bands are whole half-tiles, at least a row's worth (or the whole image), cover an
    /// image's positions, and every band's reads stay inside the padded copy; some shapes have
    /// band boundaries inside rows.
    #[test]
    fn bands_cover_the_positions_within_bounds() {
        let mut cut_rows = false;
        for s in shapes() {
            let band = s.band_positions();
            assert!(band % TILE == 0 && (TILE..=MAX_BAND).contains(&band), "{s:?}: {band}");
            let (positions, band) = (s.padded_positions(), s.forward_band());
            assert!(
                band % HALF_TILE == 0 && band <= positions && band >= s.padded_width().min(positions),
                "{s:?}"
            );
            cut_rows |= positions > band && band % s.padded_width() != 0;
            let max_offset = s.tap_offsets().last().copied().unwrap_or(0);
            for start in (0..positions).step_by(band) {
                let len = band.min(positions - start);
                assert!(len % HALF_TILE == 0 && start + len + max_offset <= s.padded_len(), "{s:?}");
            }
        }
        assert!(cut_rows, "no shape has a band boundary inside a row");
        // Where the tiles take rows in runs, bands of output positions: whole half-tiles, at
        // least a row's worth (or the image), some cut inside rows. The shapes cover all three
        // layouts: runs of 16 and of 8, runs of 8 only, bands of the padded layout.
        let (mut cut_rows, mut layouts) = (false, std::collections::BTreeSet::new());
        for s in shapes() {
            layouts.insert((s.rows_in_runs(16), s.rows_in_runs(8)));
            if s.rows_in_runs(8) {
                let (positions, band, row) = (s.positions(), s.row_band(), s.out_width());
                assert!(band % HALF_TILE == 0 && band <= positions && band >= row.min(positions), "{s:?}");
                cut_rows |= positions > band && band % row != 0;
            }
        }
        assert!(cut_rows, "no shape has a band of rows in runs cut inside a row");
        assert_eq!(layouts.len(), 3, "{layouts:?}");
    }

    /// Forward blocks cover the output channels once, in order, as few as the block allows, their
    /// sizes at most one apart: 16 channels in blocks of 6 are 6 + 5 + 5, not 6 + 6 + 4.
    #[test]
    fn forward_blocks_are_few_and_even() {
        for block in [BLOCK, microkernel::MAX_BLOCK] {
            for channels in 1..=300 {
                let blocks = channel_blocks(channels, block);
                assert_eq!(blocks.len(), channels.div_ceil(block), "{channels} in blocks of {block}");
                let mut next = 0;
                for &(first, count) in &blocks {
                    assert!(first == next && (1..=block).contains(&count), "{channels}: {blocks:?}");
                    next += count;
                }
                assert_eq!(next, channels);
                let sizes = blocks.iter().map(|&(_, count)| count);
                assert!(sizes.clone().max().unwrap() - sizes.min().unwrap() <= 1, "{channels}: {blocks:?}");
            }
        }
        assert_eq!(channel_blocks(16, BLOCK), [(0, 6), (6, 5), (11, 5)]);
    }

    /// A band's runs go to tiles in order, each whole half-tiles and at most a tile, as few tiles
    /// as that allows, their sizes at most a half-tile apart: an 8 x 8 image on AVX-512 is two
    /// tiles of 32 positions, not 48 + 16.
    #[test]
    fn forward_tiles_are_few_and_even() {
        for (run, tile) in [(8, TILE), (8, microkernel::MAX_TILE), (HALF_TILE, microkernel::MAX_TILE)] {
            for halves in 0..=40 {
                let runs: Vec<microkernel::Run> = (0..halves * HALF_TILE / run).map(|k| microkernel::Run { src: k, out: k }).collect();
                let tiles: Vec<&[microkernel::Run]> = even_tiles(&runs, run, tile).collect();
                assert_eq!(
                    tiles.len(),
                    (halves * HALF_TILE).div_ceil(tile),
                    "{halves} half-tiles of runs of {run}"
                );
                assert_eq!(tiles.concat(), runs, "the tiles cover the runs once, in order");
                let sizes: Vec<usize> = tiles.iter().map(|t| t.len() * run).collect();
                assert!(sizes.iter().all(|&p| p > 0 && p <= tile && p % HALF_TILE == 0), "{sizes:?}");
                assert!(
                    sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= HALF_TILE,
                    "{sizes:?}"
                );
            }
        }
        let image_of_8x8: Vec<microkernel::Run> = (0..8).map(|k| microkernel::Run { src: k, out: k }).collect();
        let sizes: Vec<usize> = even_tiles(&image_of_8x8, 8, microkernel::MAX_TILE).map(|t| t.len() * 8).collect();
        assert_eq!(sizes, [32, 32]);
    }

    /// 1 x 1 kernels without padding read their input in place where it covers whole half-tiles
    /// (both kinds are among `shapes`, which every test of values runs).
    #[test]
    fn one_by_one_kernels_read_whole_half_tiles_in_place() {
        let in_place: Vec<bool> = shapes().iter().map(ConvShape::reads_input_in_place).collect();
        assert!(in_place[1] && in_place[8] && !in_place[7], "{in_place:?}");
        assert_eq!(in_place.iter().filter(|&&b| b).count(), 3, "3 x 3 kernels always copy");
    }

    /// The two padded layouts put each value where the tiles look for it, and zeros elsewhere.
    #[test]
    fn padded_layouts_hold_each_value_once() {
        for s in shapes() {
            let dense = values(s.output_len(), 3);
            let lanes = s.channels_out.next_multiple_of(LANES);
            let dyt = transposed_output(&dense, &s);
            assert_eq!(dyt.len(), s.positions() * lanes);
            for (i, &value) in dense.iter().enumerate() {
                let (c, position) = (i / s.positions(), i % s.positions());
                assert_eq!(dyt[position * lanes + c], value, "{s:?}");
            }
            let total = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
            assert_eq!(total(&dyt), total(&dense), "{s:?}: values outside their places");
            let image = values(s.input_len(), 4);
            // A reused buffer with other values in it: every border is written again.
            let mut src = vec![7.0; s.padded_len() + 5];
            pad_into(&image, &s, &mut src);
            assert_eq!(src.len(), s.padded_len(), "{s:?}");
            assert_eq!(total(&src), total(&image), "{s:?}: input values outside their places");
            assert_eq!(padded_image(&image, &s), src, "{s:?}: a fresh buffer and a reused one differ");
        }
    }

    /// The output gradient laid out for the weight-gradient tile holds each value at its place
    /// and zeros elsewhere on every instruction set, where 8 x 8 blocks are turned around in
    /// registers and where channels or columns are left over.
    #[test]
    fn transposed_output_gradients_hold_each_value_at_its_place() {
        for isa in crate::isa::compared_in("the transposed output gradient") {
            let _forced = crate::isa::force(isa);
            for (channels_out, width) in [(16, 16), (13, 19), (8, 8), (24, 7), (5, 40), (32, 128)] {
                let s = ConvShape {
                    batch: 1,
                    channels_in: 2,
                    channels_out,
                    height: 3,
                    width,
                    kernel: [3, 3],
                    padding: 1,
                };
                // Every value distinct, so a value in another's place cannot go unseen.
                let dense: Vec<f32> = (0..s.output_len()).map(|i| i as f32 + 0.5).collect();
                let dyt = transposed_output(&dense, &s);
                let lanes = channels_out.next_multiple_of(LANES);
                let mut expected = vec![0.0f32; s.positions() * lanes];
                for (i, &value) in dense.iter().enumerate() {
                    let (c, position) = (i / s.positions(), i % s.positions());
                    expected[position * lanes + c] = value;
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dyt), bits(&expected), "{isa:?}, {channels_out} channels, width {width}");
            }
        }
    }

    /// A shape from its seven numbers, in `ConvShape`'s field order.
    fn test_shape(
        batch: usize,
        channels_in: usize,
        channels_out: usize,
        height: usize,
        width: usize,
        kernel: [usize; 2],
        padding: usize,
    ) -> ConvShape {
        ConvShape {
            batch,
            channels_in,
            channels_out,
            height,
            width,
            kernel,
            padding,
        }
    }

    /// Shapes for each way the weight gradient splits its work, with whether it splits them by
    /// image: by image (135 x 16 sums against 3 360 padded values and 192 positions of 16
    /// gradients: on 1 thread a task an image, on 3 groups of 48, 48 and 39 taps of an image),
    /// then by taps (288 x 40 sums against 1 152 + 24 x 40), then by image in bands of 3 rows
    /// (16 Ki values of 32 lanes over rows of 130): 3 + 2.
    fn weight_gradient_splits() -> [(ConvShape, bool); 3] {
        let shape =
            |batch, channels_in, channels_out, height, width| test_shape(batch, channels_in, channels_out, height, width, [3, 3], 1);
        [
            (shape(4, 15, 16, 12, 14), true),
            (shape(3, 32, 40, 4, 4), false),
            (shape(1, 2, 32, 5, 130), true),
        ]
    }

    fn shapes() -> Vec<ConvShape> {
        let shape = test_shape;
        vec![
            shape(2, 3, 4, 5, 7, [3, 3], 1),
            shape(3, 2, 5, 4, 4, [1, 1], 0),
            shape(1, 2, 3, 6, 5, [3, 3], 0),
            shape(2, 1, 2, 3, 4, [5, 5], 2),
            // Wide enough for several bands, the last one partial; 576-long sums.
            shape(2, 64, 2, 10, 64, [3, 3], 1),
            // Rows wider than a band: bands of one row; 9 output channels (two weight-gradient
            // channel blocks).
            shape(1, 256, 9, 3, 130, [3, 3], 1),
            // 16 output channels: two whole forward blocks of 8 on AVX-512.
            shape(2, 3, 16, 6, 9, [3, 3], 1),
            // A 1 x 1 kernel over 15 positions: copied, where 16 are read in place.
            shape(2, 3, 2, 5, 3, [1, 1], 0),
            // Read in place by the weight gradient's tasks of taps over every image.
            shape(1, 64, 8, 4, 4, [1, 1], 0),
            // Rows in runs on every path, bands cut inside rows (512 positions, rows of 48); 9
            // output channels (blocks of 5 and 4).
            shape(2, 4, 9, 20, 48, [3, 3], 1),
            // Rows in runs of 8, not of 16 (AVX-512 joins two to a register); two tap chunks (40 x
            // 9 taps), so later chunks add into the output in place.
            shape(2, 40, 7, 8, 8, [3, 3], 1),
            // Rows in runs without padding: the source rows are wider than the output's.
            shape(1, 5, 3, 6, 18, [3, 3], 0),
            // A 1 x 1 kernel read in place, its rows in runs (the decoder's reductions, the head).
            shape(2, 3, 4, 4, 16, [1, 1], 0),
        ]
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "value {i}: {x} vs {y}");
        }
    }

    #[test]
    fn forward_matches_the_definition() {
        for s in shapes() {
            let x = values(s.batch * s.input_len(), 1);
            let w = values(s.channels_out * s.patch_len(), 2);
            let bias = values(s.channels_out, 3);
            close(&forward(&x, &w, &bias, &s), &naive_forward(&x, &w, &bias, &s));
        }
    }

    /// Bit for bit, each output is its bias followed by one fused multiply-add per tap in
    /// `(ci, ky, kx)` order, read from the zero-padded image: whatever band, tile or tap chunk
    /// computed it, and on every instruction set this CPU has.
    #[test]
    fn forward_gives_the_tap_order_chain_bit_for_bit() {
        for s in shapes() {
            let x = values(s.batch * s.input_len(), 5);
            let w = values(s.channels_out * s.patch_len(), 6);
            let bias = values(s.channels_out, 7);
            let (pw, ow, taps) = (s.padded_width(), s.out_width(), s.patch_len());
            let offsets = s.tap_offsets();
            let mut expected = Vec::with_capacity(s.batch * s.output_len());
            for b in 0..s.batch {
                let padded = padded_image(image(&x, b, s.input_len()), &s);
                for co in 0..s.channels_out {
                    for position in 0..s.positions() {
                        let at = position / ow * pw + position % ow;
                        let chain = (0..taps).fold(bias[co], |sum, k| w[co * taps + k].mul_add(padded[at + offsets[k]], sum));
                        expected.push(chain);
                    }
                }
            }
            for isa in crate::isa::compared_in("the forward pass's chains") {
                let _forced = crate::isa::force(isa);
                let got = forward(&x, &w, &bias, &s);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expected), "{s:?}, {isa:?}");
            }
        }
    }

    /// Two convolutions in a row give, bit for bit, the second convolution of the first one's
    /// output passed through `between`, on every instruction set: for 3 x 3 pairs over several
    /// bands (band boundaries inside rows), a 1 x 1 kernel first (read in place) and a 5 x 5
    /// second one (padding 2), a 3 x 3 kernel without padding (bands starting in junk columns)
    /// before a 1 x 1 one (a copy without padding), and pairs whose rows the tiles take in runs.
    #[test]
    fn two_convolutions_in_a_row_give_each_ones_bits() {
        let between = |c: usize, v: f32| elementwise::leaky((v - 0.1 * c as f32) / 1.3, 0.01);
        for (a, b) in [
            (test_shape(2, 3, 16, 12, 70, [3, 3], 1), test_shape(2, 16, 5, 12, 70, [3, 3], 1)),
            (test_shape(3, 2, 9, 4, 4, [1, 1], 0), test_shape(3, 9, 4, 4, 4, [5, 5], 2)),
            (test_shape(1, 64, 4, 6, 7, [3, 3], 1), test_shape(1, 4, 64, 6, 7, [3, 3], 1)),
            (test_shape(1, 64, 4, 9, 40, [3, 3], 0), test_shape(1, 4, 5, 7, 38, [1, 1], 0)),
            // Rows in runs on every path (the first writes into the second's padded copy), in
            // two tap chunks; rows in runs of 8 but not of 16 (AVX-512 joins two to a register).
            (test_shape(2, 40, 16, 6, 16, [3, 3], 1), test_shape(2, 16, 5, 6, 16, [3, 3], 1)),
            (test_shape(1, 3, 12, 8, 8, [3, 3], 1), test_shape(1, 12, 6, 8, 8, [3, 3], 1)),
            // Rows in runs with bands cut inside rows (both finishes see split rows), and a 1 x 1
            // kernel read in place, its rows in runs.
            (test_shape(2, 4, 9, 20, 48, [3, 3], 1), test_shape(2, 9, 5, 20, 48, [3, 3], 1)),
            (test_shape(1, 3, 8, 4, 16, [1, 1], 0), test_shape(1, 8, 4, 4, 16, [3, 3], 1)),
        ] {
            let x = values(a.batch * a.input_len(), 11);
            let (wa, ba) = (values(a.channels_out * a.patch_len(), 12), values(a.channels_out, 13));
            let (wb, bb) = (values(b.channels_out * b.patch_len(), 14), values(b.channels_out, 15));
            let finish = |c: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v = *v * 0.5 + c as f32);
            let between = |c: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v = between(c, *v));
            for isa in crate::isa::compared_in("two convolutions in a row") {
                let _forced = crate::isa::force(isa);
                let middle = forward_then(&x, &wa, &ba, &a, &between);
                let expected = forward_then(&middle, &wb, &bb, &b, &finish);
                let got = forward_twice_then(ConvInput::One(&x), [(&wa, &ba, &a), (&wb, &bb, &b)], &between, &finish);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expected), "{a:?} then {b:?}, {isa:?}");
            }
        }
    }

    /// Both gradients are the adjoints of the forward map: <conv(x, w), dy> = <x, input_grad(dy)>
    /// = <w, weight_grad(x, dy)> for any x, w, dy (bias zero), which pins them down exactly.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward_pass() {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        for s in shapes() {
            let x = values(s.batch * s.input_len(), 4);
            let w = values(s.channels_out * s.patch_len(), 5);
            let dy = values(s.batch * s.output_len(), 6);
            let y = forward(&x, &w, &vec![0.0; s.channels_out], &s);
            let reference = dot(&y, &dy);
            let via_input = dot(&x, &input_grad(&w, &dy, &s));
            let via_weight = dot(&w, &weight_grad(&x, &dy, &s));
            assert!(
                (reference - via_input).abs() < 1e-3 * (1.0 + reference.abs()),
                "{s:?}: {reference} vs {via_input}"
            );
            assert!(
                (reference - via_weight).abs() < 1e-3 * (1.0 + reference.abs()),
                "{s:?}: {reference} vs {via_weight}"
            );
            let db = bias_grad(&dy, &s);
            let per_channel: Vec<f32> = (0..s.channels_out)
                .map(|co| {
                    (0..s.batch)
                        .flat_map(|b| dy[(b * s.channels_out + co) * s.positions()..][..s.positions()].iter())
                        .sum()
                })
                .collect();
            close(&db, &per_channel);
        }
    }

    /// The weight gradient is, for every tap and output channel, each image's `mul_add` chain over
    /// its output positions in order, the images' sums added in image order: bit for bit, on
    /// every instruction set and 1 and 3 threads, for shapes that split the work by image (the
    /// shallow levels; whole images or groups of an image's taps) and by taps (a deep, small
    /// level, whose sums outweigh its images), and an image whose weight-gradient bands hold a few
    /// rows each. The same bits as the chain over the padded layout with zero gradients in its
    /// junk columns and past its last row (what the tiles computed before they skipped them): a
    /// finite `x * 0` changes a chain only from -0 to +0, and a chain from +0 holds -0 only after
    /// an underflowing product; the images' totals (from +0) absorb even that.
    #[test]
    fn weight_gradient_is_the_image_order_chain_bit_for_bit() {
        for (s, expected_by_image) in weight_gradient_splits() {
            let lanes = s.channels_out.next_multiple_of(LANES);
            let by_image = s.patch_len() * lanes < s.padded_len() + s.positions() * lanes;
            assert_eq!(by_image, expected_by_image, "{s:?}: the split this shape is here for");
            let x = values(s.batch * s.input_len(), 21);
            let dy = values(s.batch * s.output_len(), 22);
            let offsets = s.tap_offsets();
            let mut total = vec![0.0f32; s.channels_out * s.patch_len()];
            for b in 0..s.batch {
                let padded = padded_image(image(&x, b, s.input_len()), &s);
                let dyt = transposed_output(image(&dy, b, s.output_len()), &s);
                let (pw, ow) = (s.padded_width(), s.out_width());
                for (c, row) in total.chunks_mut(s.patch_len()).enumerate() {
                    for (t, &offset) in row.iter_mut().zip(&offsets) {
                        let chain = (0..s.positions()).fold(0.0f32, |sum, p| {
                            padded[offset + p / ow * pw + p % ow].mul_add(dyt[p * lanes + c], sum)
                        });
                        let gradient_at = |p: usize| match p % pw < ow && p < s.out_height() * pw {
                            true => dyt[(p / pw * ow + p % pw) * lanes + c],
                            false => 0.0,
                        };
                        let with_junk = (0..s.padded_positions()).fold(0.0f32, |sum, p| padded[offset + p].mul_add(gradient_at(p), sum));
                        assert_eq!(chain.to_bits(), with_junk.to_bits(), "{s:?}: the junk columns changed a chain");
                        *t += chain;
                    }
                }
            }
            for (isa, threads) in isa::compared_in("the weight gradient's chains")
                .into_iter()
                .flat_map(|isa| [(isa, 1), (isa, 3)])
            {
                let _forced = isa::force(isa);
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| weight_grad(&x, &dy, &s));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&total),
                    "{s:?}, split by image: {by_image}, {isa:?}, {threads} threads"
                );
            }
        }
    }

    /// The bias gradient, alone or taken while the weight gradient turns the output gradient
    /// around, is per channel each image's `LANES` running sums (position `p` into lane
    /// `p % LANES`, positions in order) added first to last, the images' sums in image order: bit
    /// for bit, on every instruction set and 1 and 3 threads, for every test shape and the three
    /// ways the weight gradient splits its work (rows 14 and 130 wide are not whole lanes, so a
    /// row's first position falls on every lane). The weight gradient beside it keeps its bits.
    #[test]
    fn the_bias_gradient_is_the_lanes_chain_bit_for_bit_alone_or_with_the_weights() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for s in shapes().into_iter().chain(weight_gradient_splits().map(|(s, _)| s)) {
            let x = values(s.batch * s.input_len(), 31);
            let dy = values(s.batch * s.output_len(), 32);
            let definition: Vec<f32> = (0..s.channels_out)
                .map(|c| {
                    let mut g = 0.0f32;
                    for b in 0..s.batch {
                        let mut lanes = [0.0f32; LANES];
                        for (p, value) in image(&dy, b, s.output_len())[c * s.positions()..][..s.positions()]
                            .iter()
                            .enumerate()
                        {
                            lanes[p % LANES] += value;
                        }
                        g += lanes.iter().sum::<f32>();
                    }
                    g
                })
                .collect();
            for (isa, threads) in isa::compared_in("the bias gradient's chains")
                .into_iter()
                .flat_map(|isa| [(isa, 1), (isa, 3)])
            {
                let _forced = isa::force(isa);
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (alone, (weights, with_weights), weights_alone) = pool.install(|| {
                    (
                        bias_grad(&dy, &s),
                        weight_and_bias_grad(&x, &dy, &s, true),
                        weight_grad(&x, &dy, &s),
                    )
                });
                let context = format!("{s:?}, {isa:?}, {threads} threads");
                assert_eq!(bits(&alone), bits(&definition), "alone: {context}");
                assert_eq!(bits(&with_weights.unwrap()), bits(&definition), "with the weights: {context}");
                assert_eq!(bits(&weights), bits(&weights_alone), "the weights beside it: {context}");
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let s = ConvShape {
            batch: 5,
            channels_in: 3,
            channels_out: 4,
            height: 9,
            width: 8,
            kernel: [3, 3],
            padding: 1,
        };
        let x = values(s.batch * s.input_len(), 7);
        let w = values(s.channels_out * s.patch_len(), 8);
        let dy = values(s.batch * s.output_len(), 9);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (forward(&x, &w, &[0.5; 4], &s), input_grad(&w, &dy, &s), weight_grad(&x, &dy, &s)))
        };
        assert_eq!(run(1), run(3));
    }
}
