//! Concatenation and softmax along the channel axis of NCHW activations, image by image in
//! parallel.
//!
//! Why: flex concatenates on one thread, and takes a softmax over channels by transposing the
//! activation so that channels are last, running rows as short as the class count, and
//! transposing back. In an inference batch of the U-Net the two were about 4 % of the time and
//! among the parts one core ran alone. Here each image is one task, and the softmax runs across
//! positions with the channel axis where it lies. Values are flex's bit for bit: a concatenation
//! copies, and the softmax performs flex's row operations in their order: the maximum, then
//! `(x - max).exp()` with `f32::exp`, their sum from +0 in channel order, one reciprocal, a
//! product. Flex takes the maximum of a row at least one SIMD register long as a vector
//! reduction, here it is `>` from minus infinity: the two can differ only in the sign of a zero
//! maximum, which leaves `x - max` and so every output unchanged, or where a NaN makes every
//! output of the row NaN on both paths.

use super::output;

/// `a` (`[batch, channels_a, positions]`) and `b` (`[batch, channels_b, positions]`) as one
/// `[batch, channels_a + channels_b, positions]` activation. `a_len` and `b_len` are the
/// lengths of one image of each.
pub fn concat(a: &[f32], b: &[f32], batch: usize, [a_len, b_len]: [usize; 2]) -> Vec<f32> {
    assert!(a.len() == batch * a_len && b.len() == batch * b_len, "concat: input sizes");
    output::written(batch * (a_len + b_len), a_len + b_len, |image, out| {
        out.copy(&a[image * a_len..][..a_len]);
        out.copy(&b[image * b_len..][..b_len]);
    })
}

/// Softmax over the channels of `[batch, channels, positions]`.
pub fn softmax(x: &[f32], batch: usize, channels: usize, positions: usize) -> Vec<f32> {
    let image_len = channels * positions;
    assert_eq!(x.len(), batch * image_len, "softmax: input size");
    output::written_by_chunks(
        batch * image_len,
        image_len,
        || (Vec::new(), Vec::new(), Vec::new()),
        |(exps, scale, sums): &mut (Vec<f32>, Vec<f32>, Vec<f32>), image, out| {
            let planes = &x[image * image_len..][..image_len];
            // Per position: the maximum over channels, as `if x > max { max = x }` from -inf.
            scale.clear();
            scale.resize(positions, f32::NEG_INFINITY);
            for plane in planes.chunks(positions) {
                for (max, &v) in scale.iter_mut().zip(plane) {
                    *max = if v > *max { v } else { *max };
                }
            }
            // exp(x - max), and its sum in channel order (from +0).
            exps.clear();
            exps.extend(
                planes
                    .chunks(positions)
                    .flat_map(|plane| plane.iter().zip(scale.iter()).map(|(&v, &max)| (v - max).exp())),
            );
            sums.clear();
            sums.resize(positions, 0.0);
            for plane in exps.chunks(positions) {
                for (sum, &e) in sums.iter_mut().zip(plane) {
                    *sum += e;
                }
            }
            for (inverse, sum) in scale.iter_mut().zip(sums.iter()) {
                *inverse = 1.0 / sum;
            }
            for plane in exps.chunks(positions) {
                out.zip_map(plane, scale, |e, inverse| e * inverse);
            }
        },
    )
}
