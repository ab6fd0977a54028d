//! Every kernel variant this CPU runs against the scalar reference, on random shapes including
//! ragged row counts and single tokens.

use petal_runtime::kernels::{self, generic, qdot, KernelSet};
use petal_runtime::quant::{self, TensorType, QK};
use petal_runtime::weights::Matrix;
use rand::{Rng, SeedableRng};

/// Block dot products: integer sums are exact, so variants differ from the reference only by
/// f32 summation order; relative to the sum of absolute block contributions.
const QDOT_REL_TOL: f32 = 1e-5;
/// f32 dot products, relative to the sum of absolute products.
const FDOT_REL_TOL: f32 = 1e-5;
/// A quantized linear layer (activations quantized per 32 values) against the f32 reference
/// over the same weights: least cosine of the outputs.
const LINEAR_ACT_QUANT_MIN_COS: f64 = 0.9995;

fn variants() -> Vec<KernelSet> {
    #[allow(unused_mut)] // targets without variants (armv7) keep the reference alone
    let mut v = vec![kernels::GENERIC];
    #[cfg(target_arch = "x86_64")]
    v.extend(kernels::avx2());
    #[cfg(target_arch = "aarch64")]
    v.extend(kernels::neon());
    v
}

fn random_vec(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

#[test]
fn block_dots_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for k in variants() {
        for _ in 0..200 {
            let blocks = rng.gen_range(1..24);
            let (ws, xs) = (rng.gen_range(0.01..4.0), rng.gen_range(0.01..8.0));
            let w = random_vec(&mut rng, blocks * QK, ws);
            let x = random_vec(&mut rng, blocks * QK, xs);
            let mut xq = Vec::new();
            qdot::quantize_activations(&x, &mut xq);
            for (ty, dot, reference) in [
                (
                    TensorType::Q8_0,
                    k.dot_q8_0,
                    generic::dot_q8_0 as fn(&[u8], &[qdot::ActBlock]) -> f32,
                ),
                (TensorType::Q4_0, k.dot_q4_0, generic::dot_q4_0),
            ] {
                let mut wq = Vec::new();
                quant::quantize(&w, ty, &mut wq).unwrap();
                let (got, want) = (dot(&wq, &xq), reference(&wq, &xq));
                let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum::<f32>() + 1e-6;
                assert!(
                    (got - want).abs() <= QDOT_REL_TOL * scale,
                    "{} {ty}: {got} vs {want}",
                    k.name
                );
                if ty == TensorType::Q8_0 {
                    let four = (k.dot_q8_0_x4)(&wq, [&xq, &xq, &xq, &xq]);
                    for g in four {
                        assert!(
                            (g - want).abs() <= QDOT_REL_TOL * scale,
                            "{} x4: {g} vs {want}",
                            k.name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f32_dots_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    for k in variants() {
        for n in [0, 1, 7, 8, 15, 16, 17, 31, 384, 1536, 1000] {
            let (a, b) = (random_vec(&mut rng, n, 3.0), random_vec(&mut rng, n, 3.0));
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
            let (got, want) = ((k.dot_f32)(&a, &b), generic::dot(&a, &b));
            assert!(
                (got - want).abs() <= FDOT_REL_TOL * scale,
                "{} n={n}: {got} vs {want}",
                k.name
            );
        }
    }
}

#[test]
fn quantized_linear_matches_f32_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for (rows, cols, n) in [
        (1, 32, 1),
        (5, 64, 3),
        (37, 96, 17),
        (384, 384, 9),
        (130, 1536, 2),
    ] {
        let w = random_vec(&mut rng, rows * cols, 0.5);
        let x = random_vec(&mut rng, n * cols, 2.0);
        let bias = random_vec(&mut rng, rows, 0.1);
        for ty in TensorType::ALL {
            let mut bytes = Vec::new();
            quant::quantize(&w, ty, &mut bytes).unwrap();
            let m = Matrix {
                ty,
                rows,
                cols,
                data: &bytes,
            };
            let (mut got, mut want) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            kernels::linear(&x, n, &m, &bias, &mut got);
            generic::linear(&x, n, &m, &bias, &mut want);
            let dot: f64 = got
                .iter()
                .zip(&want)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let na: f64 = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let cos = dot / (na * nb);
            assert!(
                cos >= LINEAR_ACT_QUANT_MIN_COS,
                "{ty} {rows}x{cols} n={n}: cosine {cos}"
            );
        }
    }
}
