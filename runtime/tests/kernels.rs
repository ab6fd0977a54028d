//! Every kernel variant this CPU runs against the scalar reference, on random shapes including
//! ragged row counts and single tokens.

use petal_runtime::kernels::{self, generic, pack, KernelSet, RowsMut};
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

/// Random cases a test draws: `n`, or a few under Miri (which runs the scalar references
/// alone, about a thousand times slower).
#[allow(non_snake_case)]
const fn MIRI_OR(n: usize) -> usize {
    if cfg!(miri) {
        4
    } else {
        n
    }
}

/// Every kernel set this CPU runs, after checking that it has each set `PETAL_EXPECT_KERNELS`
/// names (a comma-separated list; `scripts/test.sh` derives it from the CPU's flags, apart from
/// petal's own detection): a test that keeps the sets with some kernel must not pass over a set
/// this machine should have tested.
fn variants() -> Vec<KernelSet> {
    let sets = kernels::available();
    if let Ok(expected) = std::env::var("PETAL_EXPECT_KERNELS") {
        for name in expected.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            assert!(
                sets.iter().any(|k| k.name == name),
                "PETAL_EXPECT_KERNELS names {name:?}, which this CPU does not run (it runs {:?})",
                sets.iter().map(|k| k.name).collect::<Vec<_>>()
            );
        }
    }
    sets
}

/// Every set `PETAL_EXPECT_KERNELS` names is one this CPU runs (also checked by every test that
/// goes through [`variants`]); fails when the variable is unset under `scripts/test.sh`.
#[test]
fn expected_kernel_sets_are_available() {
    if std::env::var_os("PETAL_TEST_SCRIPT").is_some() {
        assert!(
            std::env::var_os("PETAL_EXPECT_KERNELS").is_some(),
            "scripts/test.sh must name the kernel sets this machine runs"
        );
    }
    let sets = variants();
    eprintln!(
        "kernel sets on this CPU: {:?}",
        sets.iter().map(|k| k.name).collect::<Vec<_>>()
    );
}

fn random_vec(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

/// `count` random weight rows of `blocks` blocks each, quantized to `ty`, each at its own scale.
fn random_rows(rng: &mut impl Rng, count: usize, blocks: usize, ty: TensorType) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let ws = rng.gen_range(0.01..4.0);
            let w = random_vec(rng, blocks * QK, ws);
            let mut wq = Vec::new();
            quant::quantize(&w, ty, &mut wq).unwrap();
            wq
        })
        .collect()
}

/// `ntok` random tokens of `cols` values for the tile packers: each token at its own magnitude
/// (packers reduce the tokens' maxima together), now and then one all zeros (scale 0).
fn tile_tokens(rng: &mut impl Rng, ntok: usize, cols: usize) -> Vec<f32> {
    let scale = rng.gen_range(0.01..8.0);
    let mut x = random_vec(rng, ntok * cols, scale);
    for row in x.chunks_exact_mut(cols) {
        let f = if rng.gen_bool(0.1) {
            0.0
        } else {
            rng.gen_range(0.05..20.0)
        };
        row.iter_mut().for_each(|v| *v *= f);
    }
    x
}

/// `count` random tokens of `blocks` activation blocks each, each at its own scale.
fn random_tokens(rng: &mut impl Rng, count: usize, blocks: usize) -> Vec<Vec<pack::ActBlock>> {
    (0..count)
        .map(|_| {
            let xs = rng.gen_range(0.01..8.0);
            let x = random_vec(rng, blocks * QK, xs);
            let mut xq = Vec::new();
            pack::quantize_activations(&x, &mut xq);
            xq
        })
        .collect()
}

#[test]
fn block_dots_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for k in variants() {
        for _ in 0..MIRI_OR(200) {
            let blocks = rng.gen_range(1..24);
            let (ws, xs) = (rng.gen_range(0.01..4.0), rng.gen_range(0.01..8.0));
            let w = random_vec(&mut rng, blocks * QK, ws);
            let x = random_vec(&mut rng, blocks * QK, xs);
            let mut xq = Vec::new();
            pack::quantize_activations(&x, &mut xq);
            for (ty, dot, reference) in [
                (
                    TensorType::Q8_0,
                    k.dot_q8_0,
                    generic::dot_q8_0 as fn(&[u8], &[pack::ActBlock]) -> f32,
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
            }
        }
    }
}

#[test]
fn q8_0_tiles_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    for k in variants() {
        eprintln!("2x4 tile: {}", k.name);
        for _ in 0..MIRI_OR(100) {
            let blocks = rng.gen_range(1..50);
            let rows = random_rows(&mut rng, 2, blocks, TensorType::Q8_0);
            let toks = random_tokens(&mut rng, 4, blocks);
            let w = [&rows[0][..], &rows[1][..]];
            let x = [&toks[0][..], &toks[1][..], &toks[2][..], &toks[3][..]];
            let got = (k.dot_q8_0_2x4)(w, x);
            for (i, g) in got.iter().enumerate() {
                let want = generic::dot_q8_0(w[i / 4], x[i % 4]);
                // The block sums' magnitudes bound the f32 rounding of any summation order.
                let scale: f32 = rows[i / 4]
                    .chunks_exact(pack::Q8_0_BLOCK_BYTES)
                    .zip(x[i % 4])
                    .map(|(wb, xb)| {
                        let s: i32 = wb[2..]
                            .iter()
                            .zip(&xb.qs)
                            .map(|(&a, &b)| (a as i8 as i32 * b as i32).abs())
                            .sum();
                        pack::block_scale(wb).abs() * xb.d * s as f32
                    })
                    .sum::<f32>()
                    + 1e-6;
                assert!(
                    (g - want).abs() <= QDOT_REL_TOL * scale,
                    "{} 2x4 [{i}]: {g} vs {want}",
                    k.name
                );
            }
        }
    }
}

/// Tolerance scale of a Q8_0 row against one token of 8-bit panels (`Panel8` or `OffsetPanel`,
/// by their values and scales): the sum of the absolute scaled products, plus a floor.
fn panel_abs_products<'a>(
    row: &[u8],
    panels: impl Iterator<Item = (&'a [[i8; 32]; QK / 4], &'a [f32; pack::PANEL_TOKENS])>,
    t: usize,
) -> f32 {
    row.chunks_exact(pack::Q8_0_BLOCK_BYTES)
        .zip(panels)
        .map(|(wb, (qs, d))| {
            let s: i32 = (0..QK)
                .map(|k| (wb[2 + k] as i8 as i32 * qs[k / 4][4 * t + k % 4] as i32).abs())
                .sum();
            pack::block_scale(wb).abs() * d[t] * s as f32
        })
        .sum::<f32>()
        + 1e-6
}

#[test]
fn q8_0_panels_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    for _ in 0..60 {
        let blocks = rng.gen_range(1..50);
        let ntok = rng.gen_range(1..=pack::PANEL_TOKENS);
        let rows = random_rows(&mut rng, 2, blocks, TensorType::Q8_0);
        let toks = random_tokens(&mut rng, ntok, blocks);
        let refs: Vec<&[pack::ActBlock]> = toks.iter().map(|t| &t[..]).collect();
        let mut panel = Vec::new();
        pack::pack_panel(&refs, blocks, &mut panel);
        let w = [&rows[0][..], &rows[1][..]];
        let want = generic::dot_q8_0_2x8(w, &panel);
        for r in 0..2 {
            for t in 0..pack::PANEL_TOKENS {
                let got = want[r * pack::PANEL_TOKENS + t];
                // The panel reference against the row reference, token by token; padding
                // tokens are zero.
                let exact = if t < ntok {
                    generic::dot_q8_0(w[r], refs[t])
                } else {
                    0.0
                };
                assert!(
                    (got - exact).abs()
                        <= QDOT_REL_TOL * (exact.abs() + got.abs() + 1e-3) * blocks as f32,
                    "panel reference [{r}, {t}]: {got} vs {exact}"
                );
            }
        }
        for k in variants() {
            let Some(f) = k.dot_q8_0_2x8 else { continue };
            let got = f(w, &panel);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let panels = panel.iter().map(|pb| (&pb.qs, &pb.d));
                let scale = panel_abs_products(
                    &rows[i / pack::PANEL_TOKENS],
                    panels,
                    i % pack::PANEL_TOKENS,
                );
                assert!(
                    (g - e).abs() <= QDOT_REL_TOL * scale,
                    "{} 2x8 [{i}]: {g} vs {e}",
                    k.name
                );
            }
        }
    }
}

/// Offset panels hold the tokens' 8-bit blocks (as `quantize_activations` makes them) and the
/// offset's correction; the offset panel kernels (VNNI) match their reference, and the
/// reference matches the per-token row reference.
#[test]
fn q8_0_offset_panels_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    for _ in 0..60 {
        let blocks = rng.gen_range(1..50);
        let ntok = rng.gen_range(1..=pack::PANEL_TOKENS);
        let cols = blocks * QK;
        let rows = random_rows(&mut rng, 2, blocks, TensorType::Q8_0);
        let mut x = Vec::new();
        for _ in 0..ntok {
            let xs = rng.gen_range(0.01..8.0);
            x.extend(random_vec(&mut rng, cols, xs));
        }
        let mut panel = Vec::new();
        pack::pack_offset_panel(&x, cols, &mut panel);
        assert_eq!(panel.len(), blocks);
        let mut toks = Vec::new();
        pack::quantize_activations(&x, &mut toks);
        for (b, p) in panel.iter().enumerate() {
            for t in 0..pack::PANEL_TOKENS {
                let (d, qs): (f32, Vec<i8>) = match toks.get(t * blocks + b) {
                    Some(blk) if t < ntok => (blk.d, blk.qs.to_vec()),
                    _ => (0.0, vec![0; QK]),
                };
                let got: Vec<i8> = (0..QK).map(|k| p.qs[k / 4][4 * t + k % 4]).collect();
                assert_eq!((p.d[t], &got), (d, &qs), "offset panel [{b}, {t}]");
                let sum: i32 = qs.iter().map(|&v| v as i32).sum();
                assert_eq!(p.corr[t], 128 * sum, "offset panel [{b}, {t}] correction");
            }
        }
        let w = [&rows[0][..], &rows[1][..]];
        let want = generic::dot_q8_0_2x8_offset(w, &panel);
        for r in 0..2 {
            for t in 0..pack::PANEL_TOKENS {
                let got = want[r * pack::PANEL_TOKENS + t];
                let exact = if t < ntok {
                    generic::dot_q8_0(w[r], &toks[t * blocks..(t + 1) * blocks])
                } else {
                    0.0
                };
                assert!(
                    (got - exact).abs()
                        <= QDOT_REL_TOL * (exact.abs() + got.abs() + 1e-3) * blocks as f32,
                    "offset panel reference [{r}, {t}]: {got} vs {exact}"
                );
            }
        }
        for k in variants() {
            let mut packed = Vec::new();
            (k.pack_offset)(&x, cols, &mut packed);
            assert_eq!(packed, panel, "{} offset panels", k.name);
            let Some(f) = k.dot_q8_0_2x8_offset else {
                continue;
            };
            let got = f(w, &panel);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                let t = i % pack::PANEL_TOKENS;
                let panels = panel.iter().map(|pb| (&pb.qs, &pb.d));
                let scale = panel_abs_products(&rows[i / pack::PANEL_TOKENS], panels, t);
                assert!(
                    (g - e).abs() <= QDOT_REL_TOL * scale,
                    "{} offset 2x8 [{i}]: {g} vs {e}",
                    k.name
                );
            }
        }
    }
}

/// Tile panels (sixteen tokens) hold the offset panels' quantized values and scales, token by
/// token; every set's packer matches the reference bit for bit, on random widths and partly
/// filled (or empty) tiles.
#[test]
fn tile_panels_pack_as_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    for _ in 0..30 {
        let blocks = rng.gen_range(1..20);
        let cols = blocks * QK;
        let ntok = rng.gen_range(0..=pack::TILE_PANEL_TOKENS);
        let x = tile_tokens(&mut rng, ntok, cols);
        let mut want = vec![pack::ZERO_TILE_PANEL; blocks];
        pack::pack_tile_panel(&x, cols, &mut want);
        assert_eq!(want.len(), blocks);
        let mut offset = Vec::new();
        for chunk in x.chunks(pack::PANEL_TOKENS * cols) {
            pack::pack_offset_panel(chunk, cols, &mut offset);
        }
        for (b, tile) in want.iter().enumerate() {
            for t in 0..pack::TILE_PANEL_TOKENS {
                let (g, i) = (t / pack::PANEL_TOKENS, t % pack::PANEL_TOKENS);
                let (d, qs) = match offset.get(g * blocks + b) {
                    Some(p) if t < ntok => (
                        p.d[i],
                        p.qs.map(|q| [q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]),
                    ),
                    _ => (0.0, [[0; 4]; QK / 4]),
                };
                assert_eq!(tile.d[t], d, "block {b} token {t} scale");
                for (four, q) in qs.iter().enumerate() {
                    assert_eq!(
                        &tile.qs[four][4 * t..4 * t + 4],
                        q,
                        "block {b} token {t} values"
                    );
                }
            }
        }
        for k in variants() {
            // Over panels holding other values: every byte is rewritten.
            let mut got = vec![want[0]; blocks];
            got.iter_mut().for_each(|p| p.qs[0][0] = 99);
            (k.pack_tile)(&x, cols, &mut got);
            assert_eq!(got, want, "{} tile panels, {ntok} tokens", k.name);
        }
    }
}

/// The 16-bit tile panels (Q4_0's tile kernel) hold the 16-bit panels' values split into high
/// and low bytes, and every set's packer packs them bit for bit as the reference.
#[test]
fn tile_panels16_pack_as_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    for _ in 0..30 {
        let blocks = rng.gen_range(1..20);
        let cols = blocks * QK;
        let ntok = rng.gen_range(0..=pack::TILE_PANEL_TOKENS);
        let x = tile_tokens(&mut rng, ntok, cols);
        let mut want = vec![pack::ZERO_TILE_PANEL; 2 * blocks];
        pack::pack_tile_panel16(&x, cols, &mut want);
        let mut sixteen = Vec::new();
        for chunk in x.chunks(pack::PANEL_TOKENS * cols) {
            pack::pack_panel16(chunk, cols, &mut sixteen);
        }
        for b in 0..blocks {
            let (high, low) = (&want[2 * b], &want[2 * b + 1]);
            for t in 0..pack::TILE_PANEL_TOKENS {
                let (g, i) = (t / pack::PANEL_TOKENS, t % pack::PANEL_TOKENS);
                let p = sixteen.get(g * blocks + b).filter(|_| t < ntok);
                let d = p.map_or(0.0, |p| p.d[i]);
                assert_eq!((high.d[t], low.d[t]), (d, d), "block {b} token {t} scale");
                for v in 0..QK {
                    let q = p.map_or(0, |p| p.qs[v / 2][2 * i + v % 2] as i32);
                    let at = 4 * t + v % 4;
                    let (h, l) = (high.qs[v / 4][at] as i32, low.qs[v / 4][at] as u8 as i32);
                    assert_eq!(256 * h + l, q, "block {b} token {t} value {v}");
                }
            }
        }
        for k in variants() {
            // Over panels holding other values: every byte is rewritten.
            let mut got = vec![want[0]; 2 * blocks];
            got.iter_mut().for_each(|p| p.qs[0][0] = 99);
            (k.pack_tile16)(&x, cols, &mut got);
            assert_eq!(got, want, "{} 16-bit tile panels, {ntok} tokens", k.name);
        }
    }
}

/// The sixteen-row tile kernels (AMX) against the two-row panel references (Q8_0: offset
/// panels; Q4_0: 16-bit panels), row pair by row pair, on random block counts, row groups per
/// call, biases, and one to three token tiles per call (the last partly filled).
#[test]
fn sixteen_row_tiles_match_the_reference() {
    for ty in [TensorType::Q8_0, TensorType::Q4_0] {
        check_tile_product(ty);
    }
}

/// [`sixteen_row_tiles_match_the_reference`] for weights of type `ty`.
fn check_tile_product(ty: TensorType) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let q4 = ty == TensorType::Q4_0;
    let product = |k: &KernelSet| {
        if q4 {
            k.dot_q4_0_16x16
        } else {
            k.dot_q8_0_16x16
        }
    };
    let sets: Vec<KernelSet> = variants()
        .into_iter()
        .filter(|k| product(k).is_some())
        .collect();
    eprintln!(
        "{ty} sixteen-row tile kernels: {:?}",
        sets.iter().map(|k| k.name).collect::<Vec<_>>()
    );
    let block_bytes = if q4 {
        pack::Q4_0_BLOCK_BYTES
    } else {
        pack::Q8_0_BLOCK_BYTES
    };
    for _ in 0..40 {
        // Now and then the deepest rows the kernel takes.
        let blocks = if rng.gen_bool(0.1) {
            pack::TILE_MAX_BLOCKS
        } else {
            rng.gen_range(1..50)
        };
        // Up to three tiles of sixteen tokens, the last partly filled.
        let ntok = rng.gen_range(1..=3 * pack::TILE_PANEL_TOKENS);
        let groups = rng.gen_range(1..=kernels::AMX_ROW_GROUPS);
        let cols = blocks * QK;
        // Rows padded by up to three blocks: the kernel reads `row_bytes` apart.
        let pad = rng.gen_range(0..4) * block_bytes;
        let rows = random_rows(&mut rng, 16 * groups, blocks, ty);
        let row_bytes = blocks * block_bytes + pad;
        let mut w = Vec::new();
        for r in &rows {
            w.extend_from_slice(r);
            w.extend(std::iter::repeat_n(0x55u8, pad));
        }
        let bias = if rng.gen_bool(0.5) {
            random_vec(&mut rng, 16 * groups, 2.0)
        } else {
            Vec::new()
        };
        let x: Vec<f32> = (0..ntok)
            .flat_map(|_| {
                let xs = rng.gen_range(0.01..8.0);
                random_vec(&mut rng, cols, xs)
            })
            .collect();
        // The tokens as panels of eight (the last partly filled), paired into tiles (the last
        // tile's second panel possibly empty).
        let (mut offset, mut sixteen, mut tiles) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in x.chunks(pack::PANEL_TOKENS * cols) {
            if q4 {
                pack::pack_panel16(chunk, cols, &mut sixteen);
            } else {
                pack::pack_offset_panel(chunk, cols, &mut offset);
            }
        }
        if q4 {
            pack::pack_tile_panels16(&sixteen, blocks, &mut tiles);
        } else {
            pack::pack_tile_panels(&offset, blocks, &mut tiles);
        }
        let per = if q4 { 2 } else { 1 };
        assert_eq!(
            tiles.len(),
            per * blocks * ntok.div_ceil(pack::TILE_PANEL_TOKENS)
        );
        // Panel group g's rows r, r + 1 against the reference, and the tolerance's scale (the
        // sum of absolute scaled products) for row r + i and token t.
        let reference = |g: usize, r: usize| -> [f32; 16] {
            let pair = [&rows[r][..], &rows[r + 1][..]];
            if q4 {
                generic::dot_q4_0_2x8(pair, &sixteen[g * blocks..(g + 1) * blocks])
            } else {
                generic::dot_q8_0_2x8_offset(pair, &offset[g * blocks..(g + 1) * blocks])
            }
        };
        let abs_products = |g: usize, row: usize, t: usize| -> f32 {
            if !q4 {
                let panels = offset[g * blocks..(g + 1) * blocks].iter();
                return panel_abs_products(&rows[row], panels.map(|pb| (&pb.qs, &pb.d)), t);
            }
            let mut wf = Vec::new();
            quant::dequantize(&rows[row], ty, cols, &mut wf).unwrap();
            let panels = &sixteen[g * blocks..(g + 1) * blocks];
            (0..cols)
                .map(|k| {
                    let p = &panels[k / QK];
                    (wf[k] * p.d[t] * p.qs[k % QK / 2][2 * t + k % 2] as f32).abs()
                })
                .sum::<f32>()
                + 1e-6
        };
        // With GELU applied as the results are stored, a third of the time.
        let gelu = rng.gen_bool(0.3);
        for k in &sets {
            // Rows of the output padded by a few columns, and two rows past the tokens: the
            // kernel writes only the first `ntok` rows' first `16 * groups` columns.
            let ld = 16 * groups + rng.gen_range(0..5);
            let mut y = vec![f32::NAN; (ntok + 2) * ld];
            let f = product(k).unwrap();
            let mut rows_mut = kernels::RowsMut::new(&mut y, ld);
            f(
                &kernels::TileOperands {
                    w: &w,
                    row_bytes,
                    nb: blocks,
                    panels: &tiles,
                    bias: &bias,
                    groups,
                    ntok,
                    gelu,
                },
                &mut rows_mut,
            );
            for (i, v) in y.iter().enumerate() {
                let written = i / ld < ntok && i % ld < 16 * groups;
                assert_eq!(
                    v.is_nan(),
                    !written,
                    "{} {ty} 16x16 value {i} of rows of {ld}",
                    k.name
                );
            }
            let got = |group: usize, t: usize, r: usize| y[t * ld + 16 * group + r];
            for g in 0..ntok.div_ceil(pack::PANEL_TOKENS) {
                for r in (0..16 * groups).step_by(2) {
                    for (i, e) in reference(g, r).iter().enumerate() {
                        let (row, t) = (r + i / pack::PANEL_TOKENS, i % pack::PANEL_TOKENS);
                        if g * pack::PANEL_TOKENS + t >= ntok {
                            continue;
                        }
                        let e = e + bias.get(row).copied().unwrap_or(0.0);
                        let scale =
                            abs_products(g, row, t) + bias.get(row).map_or(0.0, |b| b.abs());
                        let v = got(row / 16, g * pack::PANEL_TOKENS + t, row % 16);
                        // GELU's slope is at most 1.13: the products' error carries over.
                        let (e, tol) = if gelu {
                            let mut g = [e];
                            generic::gelu(&mut g);
                            (
                                g[0],
                                1.13 * QDOT_REL_TOL * scale + GELU_ABS_TOL * e.abs().max(1.0),
                            )
                        } else {
                            (e, QDOT_REL_TOL * scale)
                        };
                        assert!(
                            (v - e).abs() <= tol,
                            "{} {ty} 16x16 row group {} token {} row {}: {v} vs {e}",
                            k.name,
                            row / 16,
                            g * pack::PANEL_TOKENS + t,
                            row % 16
                        );
                    }
                }
            }
        }
    }
}

/// The bf16 product against its reference (both in f32 over the same bf16 values; the tile
/// unit sums in its own order), relative to the sum of absolute products.
const BF16_GEMM_REL_TOL: f32 = 1e-5;

/// Every set with bf16 kernels: rows decoded and activations packed bit for bit as the
/// references, and the strip product against the reference on random depths, odd and even
/// numbers of token tiles, partly filled tiles, and values that round across bf16 boundaries.
#[test]
fn bf16_kernels_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let sets: Vec<KernelSet> = variants()
        .into_iter()
        .filter(|k| k.bf16.is_some())
        .collect();
    for _ in 0..30 {
        let blocks = rng.gen_range(1..50);
        let cols = blocks * QK;
        for ty in [TensorType::Q8_0, TensorType::Q4_0] {
            // A full strip or a partial one (the rows past `nr` are zeros).
            let nr = if rng.gen_bool(0.5) {
                32
            } else {
                rng.gen_range(1..=32)
            };
            let rows = random_rows(&mut rng, nr, blocks, ty);
            let data: Vec<u8> = rows.concat();
            let mut by_row = vec![0u16; nr * cols];
            for (r, o) in rows.iter().zip(by_row.chunks_exact_mut(cols)) {
                pack::dequantize_row_bf16(ty, r, o);
            }
            let mut want = vec![0x7fc1u16; 32 * cols];
            pack::dequantize_strip_bf16(ty, &data, nr, cols, &mut want);
            for r in 0..32 {
                for i in 0..cols {
                    let v = if r < nr { by_row[r * cols + i] } else { 0 };
                    assert_eq!(
                        want[pack::strip_index(r, i, cols)],
                        v,
                        "reference strip [{r}, {i}]"
                    );
                }
            }
            let ntok = rng.gen_range(1..=5 * pack::BF16_TILE_TOKENS);
            let mut x = Vec::new();
            for _ in 0..ntok {
                let xs = rng.gen_range(0.01..8.0);
                x.extend(random_vec(&mut rng, cols, xs));
            }
            // Ties, subnormals and extremes among the values.
            for (i, v) in [
                1.0 + 1.0 / 256.0,
                -3.0 * f32::MIN_POSITIVE / 4.0,
                3.0e38,
                -1.0e-38,
                0.0,
            ]
            .into_iter()
            .enumerate()
            {
                let at = rng.gen_range(0..x.len());
                x[at] = if i == 2 { v / 16.0 } else { v };
            }
            let mut packed = pack::Bf16Buf::new();
            pack::pack_bf16_tiles_with(pack::pack_bf16_tile, &x, cols, &mut packed);
            let packed = packed.as_slice().to_vec();
            let nt = ntok.div_ceil(pack::BF16_TILE_TOKENS);
            let bias: [f32; 32] = std::array::from_fn(|_| rng.gen_range(-1.0..1.0));
            // Rows and tokens stored: a partial strip and partial last tile at times, into
            // rows of `ld` (others keep the sentinel).
            let ld = nr + rng.gen_range(0..3);
            const SENTINEL: f32 = -7.0e30;
            let mut reference = vec![SENTINEL; ntok * ld];
            generic::gemm_bf16_32xn(
                &kernels::Bf16Strip {
                    a: &want,
                    k: cols,
                    b: &packed,
                    nt,
                    bias: &bias,
                    nr,
                    ntok,
                    gelu: false,
                    next: &[],
                },
                &mut RowsMut::new(&mut reference, ld).window(0, 0, nr),
            );
            for k in &sets {
                let bk = k.bf16.unwrap();
                let mut got = vec![0x7fc1u16; 32 * cols];
                (bk.dequantize)(ty, &data, nr, cols, &mut got);
                assert!(got == want, "{} {ty} strip of {nr} rows in bf16", k.name);
                // Over stale values: the packing writes every value of its tile.
                let mut got = pack::Bf16Buf::zeros(5);
                got.as_mut_slice().fill(0x7fc1);
                pack::pack_bf16_tiles_with(bk.pack, &x, cols, &mut got);
                assert!(
                    got.as_slice()[5..] == packed[..],
                    "{} activations in bf16",
                    k.name
                );
                assert!(
                    got.as_slice()[..5].iter().all(|&v| v == 0x7fc1),
                    "{} kept the values before",
                    k.name
                );
                let few = &x[..cols * ntok.min(3)];
                let mut tile = vec![0x7fc1u16; cols * pack::BF16_TILE_TOKENS];
                let mut want_tile = vec![0x7fc1u16; tile.len()];
                (bk.pack)(few, cols, &mut tile);
                pack::pack_bf16_tile(few, cols, &mut want_tile);
                assert!(
                    tile == want_tile,
                    "{} a short tile over stale values",
                    k.name
                );
                // Rows of any length (vector tails).
                let odd = 1 + cols % 37;
                let few = &x[..odd * ntok.min(16)];
                let (mut tile, mut want_tile) =
                    (vec![0x7fc1u16; odd * 16], vec![0x7fc1u16; odd * 16]);
                (bk.pack)(few, odd, &mut tile);
                pack::pack_bf16_tile(few, odd, &mut want_tile);
                assert!(tile == want_tile, "{} a tile of rows of {odd}", k.name);
                // f32 rows as a strip (attention's keys and values), from 1 to 32 rows.
                let few = &x[..cols * ntok.min(32)];
                let mut strip = vec![0x7fc1u16; 32 * cols];
                let mut strip_ref = vec![0x7fc1u16; 32 * cols];
                (bk.strip)(few, cols, &mut strip);
                pack::pack_bf16_strip(few, cols, &mut strip_ref);
                assert!(strip == strip_ref, "{} f32 rows as a bf16 strip", k.name);
                // 32 columns of rows of `ld`, fewer rows than the depth at times.
                let (row_len, depth) = (32 + cols % 7, ntok.next_multiple_of(32));
                let rows_n = ntok.min(x.len().saturating_sub(32) / row_len + 1);
                let (mut got_c, mut want_c) =
                    (vec![0x7fc1u16; 32 * depth], vec![0x7fc1u16; 32 * depth]);
                (bk.columns)(&x, row_len, rows_n, depth, &mut got_c);
                pack::pack_bf16_columns(&x, row_len, rows_n, depth, &mut want_c);
                assert!(
                    got_c == want_c,
                    "{} {rows_n} rows' columns as a bf16 strip",
                    k.name
                );
                let mut out = vec![SENTINEL; ntok * ld];
                (bk.gemm)(
                    &kernels::Bf16Strip {
                        a: &want,
                        k: cols,
                        b: &packed,
                        nt,
                        bias: &bias,
                        nr,
                        ntok,
                        gelu: false,
                        next: &data,
                    },
                    &mut RowsMut::new(&mut out, ld).window(0, 0, nr),
                );
                // With GELU as the outputs are stored.
                let mut out_gelu = vec![SENTINEL; ntok * ld];
                (bk.gemm)(
                    &kernels::Bf16Strip {
                        a: &want,
                        k: cols,
                        b: &packed,
                        nt,
                        bias: &bias,
                        nr,
                        ntok,
                        gelu: true,
                        next: &[],
                    },
                    &mut RowsMut::new(&mut out_gelu, ld).window(0, 0, nr),
                );
                let mut reference_gelu = vec![SENTINEL; ntok * ld];
                generic::gemm_bf16_32xn(
                    &kernels::Bf16Strip {
                        a: &want,
                        k: cols,
                        b: &packed,
                        nt,
                        bias: &bias,
                        nr,
                        ntok,
                        gelu: true,
                        next: &[],
                    },
                    &mut RowsMut::new(&mut reference_gelu, ld).window(0, 0, nr),
                );
                let untouched = |v: &Vec<f32>| {
                    (0..ntok * ld)
                        .filter(|i| i % ld >= nr)
                        .all(|i| v[i] == SENTINEL)
                };
                assert!(
                    untouched(&out) && untouched(&reference),
                    "{} wrote past row {nr}",
                    k.name
                );
                assert!(
                    untouched(&out_gelu),
                    "{} wrote past row {nr} with GELU",
                    k.name
                );
                for t in 0..ntok {
                    for r in 0..nr {
                        let scale: f32 = (0..cols)
                            .map(|i| {
                                let (wv, xv) =
                                    (want[pack::strip_index(r, i, cols)], packed[t * cols + i]);
                                (pack::bf16_value(wv) * pack::bf16_value(xv)).abs()
                            })
                            .sum::<f32>()
                            + bias[r].abs();
                        let (v, e) = (out[t * ld + r], reference[t * ld + r]);
                        assert!(
                            (v - e).abs() <= BF16_GEMM_REL_TOL * scale,
                            "{} {ty} k={cols} [{t}, {r}]: {v} vs {e}",
                            k.name
                        );
                        // GELU's slope is at most 1.13: the sums' difference, plus GELU's own.
                        let (v, e) = (out_gelu[t * ld + r], reference_gelu[t * ld + r]);
                        assert!(
                            (v - e).abs()
                                <= 1.13 * BF16_GEMM_REL_TOL * scale
                                    + GELU_ABS_TOL * e.abs().max(1.0),
                            "{} {ty} k={cols} [{t}, {r}] with GELU: {v} vs {e}",
                            k.name
                        );
                    }
                }
            }
        }
    }
}

/// Attention in bf16 against the same steps on the scalar references (the order of the sums
/// differs), relative to the largest output magnitude.
const BF16_ATTENTION_REL_TOL: f32 = 1e-5;
/// Attention in bf16 against f64 arithmetic on the unrounded values: bf16 keeps 8 bits, so
/// each output moves by about 2^-9 of the values it averages.
const BF16_ATTENTION_F64_TOL: f64 = 1e-2;

/// One head's attention on each set with bf16 kernels: ragged token counts (keys padded to a
/// strip), head widths of 32 and 64, head columns inside wider rows.
#[test]
fn bf16_attention_matches_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let sets: Vec<KernelSet> = variants()
        .into_iter()
        .filter(|k| k.bf16.is_some())
        .collect();
    // Working memory kept across heads of other shapes, and of the same shape again.
    let mut scratch: Vec<kernels::AttentionScratch> =
        (0..=sets.len()).map(|_| Default::default()).collect();
    for (n, dh) in [
        (32, 32),
        (45, 32),
        (128, 32),
        (70, 64),
        (33, 64),
        (45, 32),
        (45, 32),
    ] {
        let ld = dh * 3;
        let (q, k, v) = (
            random_vec(&mut rng, n * ld, 1.0),
            random_vec(&mut rng, n * ld, 1.0),
            random_vec(&mut rng, n * ld, 1.0),
        );
        let scale = 1.0 / (dh as f32).sqrt();
        let col = dh;
        let at = |x: &[f32], i: usize, d: usize| x[i * ld + col + d] as f64;
        // f64 reference on the unrounded values.
        let mut exact = vec![0f64; n * dh];
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| (0..dh).map(|d| at(&q, i, d) * at(&k, j, d)).sum::<f64>() * scale as f64)
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..dh {
                exact[i * dh + d] = (0..n).map(|j| e[j] / sum * at(&v, j, d)).sum();
            }
        }
        let reference = kernels::attention_bf16_with(
            kernels::BF16_REFERENCE,
            &kernels::Head {
                q: &q[col..],
                k: &k[col..],
                v: &v[col..],
                ld,
                n,
                dh,
                scale,
            },
            &mut scratch[0],
        );
        let big = exact.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (r, e) in reference.iter().zip(&exact) {
            assert!(
                (*r as f64 - e).abs() <= BF16_ATTENTION_F64_TOL * big,
                "reference n={n} dh={dh}: {r} vs {e}"
            );
        }
        for (set, scratch) in sets.iter().zip(&mut scratch[1..]) {
            let got = kernels::attention_bf16_with(
                set.bf16.unwrap(),
                &kernels::Head {
                    q: &q[col..],
                    k: &k[col..],
                    v: &v[col..],
                    ld,
                    n,
                    dh,
                    scale,
                },
                scratch,
            );
            for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
                assert!(
                    (g - r).abs() <= BF16_ATTENTION_REL_TOL * big as f32,
                    "{} n={n} dh={dh} [{}, {}]: {g} vs {r}",
                    set.name,
                    i / dh,
                    i % dh
                );
            }
        }
    }
}

/// The rounding to bf16: to nearest, ties to even; subnormals to signed zero; NaN stays NaN.
#[test]
fn bf16_rounding_is_to_nearest_even() {
    let cases = [
        (1.0f32, 0x3f80u16),
        (1.0 + 1.0 / 256.0, 0x3f80),
        (1.0 + 3.0 / 256.0, 0x3f82),
        (1.0 + 1.0 / 128.0 + 1.0 / 65536.0, 0x3f81),
        (-2.5, 0xc020),
        (f32::MAX, 0x7f80),
        (-f32::MIN_POSITIVE / 2.0, 0x8000),
        (f32::MIN_POSITIVE, 0x0080),
    ];
    for (x, want) in cases {
        assert_eq!(pack::bf16_bits(x), want, "{x:e}");
    }
    assert!(pack::bf16_value(pack::bf16_bits(f32::NAN)).is_nan());
}

/// Softmax with a polynomial `exp`, relative to each probability (plus a floor for the tiny
/// ones).
const SOFTMAX_REL_TOL: f32 = 2e-6;
const SOFTMAX_ABS_FLOOR: f32 = 1e-30;
/// GELU with Abramowitz and Stegun's `erfc` (absolute error 1.5e-7 on Phi), scaled by `max(1, |x|)`.
const GELU_ABS_TOL: f32 = 5e-7;

/// LayerNorm in f32 against the f64 reference, relative to `|w| + |b|` of the element.
const LAYER_NORM_REL_TOL: f32 = 1e-5;

#[test]
fn layer_norm_matches_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    for k in variants() {
        for h in [1, 5, 8, 13, 32, 64, 100, 384, 391] {
            for (rows, spread, offset) in [(1, 1.0f32, 0.0f32), (3, 0.01, 5.0), (7, 30.0, -100.0)] {
                let mut x = random_vec(&mut rng, rows * h, spread);
                x.iter_mut().for_each(|v| *v += offset);
                let w = random_vec(&mut rng, h, 2.0);
                let b = random_vec(&mut rng, h, 1.0);
                let (mut got, mut want) = (x.clone(), x.clone());
                (k.layer_norm)(&mut got, &w, &b, 1e-12);
                generic::layer_norm(&mut want, &w, &b, 1e-12);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    let scale = w[i % h].abs() + b[i % h].abs();
                    assert!(
                        (g - e).abs() <= LAYER_NORM_REL_TOL * scale.max(1e-3),
                        "{} layer_norm h={h} rows={rows} spread={spread} at {i}: {g} vs {e}",
                        k.name
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_gelu_and_quantization_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    for k in variants() {
        for n in [1, 3, 7, 8, 9, 16, 31, 32, 33, 48, 64, 128, 135, 300] {
            for spread in [0.1f32, 5.0, 40.0, 200.0] {
                let x = random_vec(&mut rng, n, spread);
                let (mut got, mut want) = (x.clone(), x.clone());
                (k.softmax)(&mut got);
                generic::softmax(&mut want);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= SOFTMAX_REL_TOL * w + SOFTMAX_ABS_FLOOR,
                        "{} softmax n={n} spread={spread}: {g} vs {w}",
                        k.name
                    );
                }
                if let Some(bk) = k.bf16 {
                    // The exponentials and their sum (the attention divides later).
                    let (mut got, mut want) = (x.clone(), x.clone());
                    let (gs, ws) = ((bk.exp_sum)(&mut got), generic::exp_sum(&mut want));
                    assert!(
                        (gs - ws).abs() <= SOFTMAX_REL_TOL * ws,
                        "{} exp_sum n={n}: {gs} vs {ws}",
                        k.name
                    );
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= SOFTMAX_REL_TOL * w + SOFTMAX_ABS_FLOOR,
                            "{} exp_sum n={n} spread={spread}: {g} vs {w}",
                            k.name
                        );
                    }
                }
                let (mut got, mut want) = (x.clone(), x.clone());
                (k.gelu)(&mut got);
                generic::gelu(&mut want);
                for ((g, w), v) in got.iter().zip(&want).zip(&x) {
                    assert!(
                        (g - w).abs() <= GELU_ABS_TOL * v.abs().max(1.0),
                        "{} gelu({v}): {g} vs {w}",
                        k.name
                    );
                }
            }
        }
        for blocks in [1, 2, 12, 48] {
            let mut x = random_vec(&mut rng, blocks * QK, 6.0);
            // Exact halves, zeros and an all-zero block exercise rounding and the zero scale.
            x[0] = 0.0;
            x[1] = -0.0;
            if blocks > 1 {
                x[QK..2 * QK].iter_mut().for_each(|v| *v = 0.0);
            }
            let (mut got, mut want) = (Vec::new(), Vec::new());
            (k.quantize)(&x, &mut got);
            pack::quantize_activations(&x, &mut want);
            assert_eq!(got, want, "{} quantize {blocks} blocks", k.name);
            // 16-bit panels of one to eight tokens of these blocks.
            let cols = QK * blocks.min(4);
            for ntok in [1, 3, 8] {
                let xs = &x[..(ntok * cols).min(x.len()) / cols * cols];
                let (mut got, mut want) = (Vec::new(), Vec::new());
                (k.pack_panel16)(xs, cols, &mut got);
                pack::pack_panel16(xs, cols, &mut want);
                assert_eq!(got, want, "{} 16-bit panels of {ntok} x {cols}", k.name);
            }
        }
    }
}

/// Linear layers' `(rows, cols, tokens)` that take each of the frame's paths: one thread,
/// tokens split across threads, rows split across threads; odd rows, ragged token tiles,
/// panels, tiles and strips; enough tokens for Q8_0's bf16 kernels, split by tokens and by
/// rows (the last two).
const LINEAR_SHAPES: [(usize, usize, usize); 9] = [
    (3, 32, 5),
    (37, 384, 41),
    (130, 1536, 2),
    (64, 96, 128),
    (7, 64, 1),
    (100, 64, 45),
    (60, 1536, 8),
    (40, 64, 300),
    (96, 64, 260),
];

/// Every position of a Q8_0 or Q4_0 linear layer equals the block dot products of its weight row
/// and the token's quantized activations (16-bit panels or both 8-bit levels for Q4_0; bf16
/// weights and activations where the set has bf16 kernels), on shapes that take each of the
/// frame's paths (one thread, tokens split across threads, rows split across threads; odd rows,
/// ragged token tiles, panels and strips).
#[test]
fn quantized_linear_matches_block_dots_at_every_position() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    for (rows, cols, n) in LINEAR_SHAPES {
        let w = random_vec(&mut rng, rows * cols, 0.5);
        let x = random_vec(&mut rng, n * cols, 2.0);
        let bias = random_vec(&mut rng, rows, 0.1);
        for ty in [TensorType::Q8_0, TensorType::Q4_0] {
            let mut bytes = Vec::new();
            quant::quantize(&w, ty, &mut bytes).unwrap();
            let m = Matrix {
                ty,
                rows,
                cols,
                data: &bytes,
            };
            // NaN before: the layer writes every output (the encoder hands it reused buffers).
            let mut got = vec![f32::NAN; n * rows];
            kernels::linear(&x, n, &m, &bias, &mut got);
            // The layer with GELU (fused into the bf16 kernels' stores) is GELU of the layer.
            let mut fused = vec![f32::NAN; n * rows];
            kernels::linear_gelu_with(&mut kernels::Activations::new(&x, n), &m, &bias, &mut fused);
            let mut want_gelu = got.clone();
            generic::gelu(&mut want_gelu);
            for (i, (f, w)) in fused.iter().zip(&want_gelu).enumerate() {
                assert!(
                    (f - w).abs() <= 2.0 * GELU_ABS_TOL * got[i].abs().max(1.0),
                    "{ty} {rows}x{cols}, {n} tokens, GELU at {i}: {f} vs {w}"
                );
            }
            // Sets with bf16 kernels take the weights and activations in bf16 (from
            // `bf16_min_tokens` tokens).
            let bf16 = kernels::active().bf16.is_some()
                && n >= kernels::bf16_min_tokens(&kernels::active(), ty);
            let bf16_dot = |o: usize, t: usize| {
                let mut wr = vec![0u16; cols];
                pack::dequantize_row_bf16(ty, m.row(o), &mut wr);
                let xs = &x[t * cols..(t + 1) * cols];
                wr.iter()
                    .zip(xs)
                    .map(|(&w, &v)| pack::bf16_value(w) * pack::bf16_value(pack::bf16_bits(v)))
                    .sum::<f32>()
            };
            let (mut xq, mut xr, mut x16) = (Vec::new(), Vec::new(), Vec::new());
            // Q4_0 meets 16-bit activations where the set has a panel kernel for them.
            let active = kernels::active();
            let q4_16 = active.dot_q4_0_2x8.is_some() || active.dot_q4_0_2x8_split.is_some();
            if ty == TensorType::Q8_0 {
                pack::quantize_activations(&x, &mut xq);
            } else if q4_16 {
                for group in x.chunks(pack::PANEL_TOKENS * cols) {
                    pack::pack_panel16(group, cols, &mut x16);
                }
            } else {
                pack::quantize_activations_two_level(&x, &mut xq, &mut xr);
            }
            let bpr = cols / QK;
            for t in 0..n {
                for o in 0..rows {
                    let blocks = t * bpr..(t + 1) * bpr;
                    let want = bias[o]
                        + if bf16 {
                            bf16_dot(o, t)
                        } else if ty == TensorType::Q8_0 {
                            generic::dot_q8_0(m.row(o), &xq[blocks])
                        } else if q4_16 {
                            let g = t / pack::PANEL_TOKENS;
                            let panels = &x16[g * bpr..(g + 1) * bpr];
                            generic::dot_q4_0_2x8([m.row(o); 2], panels)[t % pack::PANEL_TOKENS]
                        } else {
                            generic::dot_q4_0(m.row(o), &xq[blocks.clone()])
                                + generic::dot_q4_0(m.row(o), &xr[blocks])
                        };
                    let scale: f32 = (0..cols)
                        .map(|i| (w[o * cols + i] * x[t * cols + i]).abs())
                        .sum::<f32>()
                        + 1e-3;
                    let g = got[t * rows + o];
                    assert!(
                        (g - want).abs() <= QDOT_REL_TOL * scale,
                        "{ty} {rows}x{cols} n={n} [{t}, {o}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}

/// F32 weights go through the f32 GEMM in place: every position against the scalar reference.
#[test]
fn f32_linear_matches_the_reference_at_every_position() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    for (rows, cols, n) in LINEAR_SHAPES {
        let w = random_vec(&mut rng, rows * cols, 0.5);
        let x = random_vec(&mut rng, n * cols, 2.0);
        let bias = random_vec(&mut rng, rows, 0.1);
        let mut bytes = Vec::new();
        quant::quantize(&w, TensorType::F32, &mut bytes).unwrap();
        let m = Matrix {
            ty: TensorType::F32,
            rows,
            cols,
            data: &bytes,
        };
        let (mut got, mut want) = (vec![f32::NAN; n * rows], vec![0f32; n * rows]);
        kernels::linear(&x, n, &m, &bias, &mut got);
        generic::linear(&x, n, &m, &bias, &mut want);
        for t in 0..n {
            for o in 0..rows {
                let scale: f32 = (0..cols)
                    .map(|i| (w[o * cols + i] * x[t * cols + i]).abs())
                    .sum::<f32>()
                    + 1e-3;
                let (g, e) = (got[t * rows + o], want[t * rows + o]);
                assert!(
                    (g - e).abs() <= FDOT_REL_TOL * scale,
                    "{rows}x{cols} n={n} [{t}, {o}]: {g} vs {e}"
                );
            }
        }
    }
}

/// 16-bit activation quantization: each value within half a step (`d / 2`) of its input, plus
/// f32 rounding (an ulp of a value near 32767 steps is 1/256 of a step).
const Q16_STEP_TOL: f32 = 0.51;

#[test]
fn q4_0_panels_match_the_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    for _ in 0..40 {
        let blocks = rng.gen_range(1..50);
        let ntok = rng.gen_range(1..=pack::PANEL_TOKENS);
        let rows = random_rows(&mut rng, 2, blocks, TensorType::Q4_0);
        let cols = blocks * QK;
        let mut x = Vec::new();
        for _ in 0..ntok {
            let xs = rng.gen_range(0.01..8.0);
            x.extend(random_vec(&mut rng, cols, xs));
        }
        let mut panel = Vec::new();
        pack::pack_panel16(&x, cols, &mut panel);
        assert_eq!(panel.len(), blocks);
        // The panels hold the inputs to within half a quantization step; padding is zero.
        for (b, p) in panel.iter().enumerate() {
            for t in 0..pack::PANEL_TOKENS {
                for j in 0..QK {
                    let q = p.qs[j / 2][2 * t + j % 2];
                    if t >= ntok {
                        assert_eq!((q, p.d[t]), (0, 0.0));
                        continue;
                    }
                    let v = x[t * cols + b * QK + j];
                    assert!(
                        (q as f32 * p.d[t] - v).abs() <= Q16_STEP_TOL * p.d[t],
                        "16-bit panel [{b}, {t}, {j}]: {q} x {} vs {v}",
                        p.d[t]
                    );
                }
            }
        }
        // The split panels hold the same values, and their reference gives the same sums.
        let split: Vec<pack::Panel8> = panel.iter().flat_map(pack::split_panel16).collect();
        for (p, halves) in panel.iter().zip(split.chunks_exact(2)) {
            for t in 0..pack::PANEL_TOKENS {
                for j in 0..QK {
                    let (hi, lo) = (
                        halves[0].qs[j / 4][4 * t + j % 4],
                        halves[1].qs[j / 4][4 * t + j % 4],
                    );
                    assert_eq!(
                        256 * hi as i32 + lo as i32 + 128,
                        p.qs[j / 2][2 * t + j % 2] as i32
                    );
                    assert_eq!(halves[0].abs[j / 4][4 * t + j % 4], hi.unsigned_abs());
                }
                assert_eq!((halves[0].d[t], halves[1].d[t]), (p.d[t], p.d[t]));
            }
        }
        let w = [&rows[0][..], &rows[1][..]];
        let want = generic::dot_q4_0_2x8(w, &panel);
        assert_eq!(generic::dot_q4_0_2x8_split(w, &split), want);
        // Every set's panel kernels, each called once.
        let mut outputs = Vec::new();
        for k in variants() {
            if let Some(f) = k.dot_q4_0_2x8 {
                outputs.push((k.name, "2x8", f(w, &panel)));
            }
            if let Some(f) = k.dot_q4_0_2x8_split {
                outputs.push((k.name, "2x8 split", f(w, &split)));
            }
        }
        for r in 0..2 {
            let mut dq = Vec::new();
            quant::dequantize(w[r], TensorType::Q4_0, cols, &mut dq).unwrap();
            for t in 0..pack::PANEL_TOKENS {
                let got = want[r * pack::PANEL_TOKENS + t];
                // The panel reference against the dequantized weights and activations in f64.
                let (mut exact, mut scale) = (0f64, 1e-6f64);
                for b in 0..blocks {
                    let d = panel[b].d[t] as f64;
                    for j in 0..QK {
                        let xv = panel[b].qs[j / 2][2 * t + j % 2] as f64 * d;
                        exact += dq[b * QK + j] as f64 * xv;
                        scale += (dq[b * QK + j] as f64 * xv).abs();
                    }
                }
                assert!(
                    (got as f64 - exact).abs() <= QDOT_REL_TOL as f64 * scale,
                    "q4 panel reference [{r}, {t}]: {got} vs {exact}"
                );
                for (name, kind, out) in &outputs {
                    let g = out[r * pack::PANEL_TOKENS + t];
                    assert!(
                        (g - got).abs() as f64 <= QDOT_REL_TOL as f64 * scale,
                        "{name} q4 {kind} [{r}, {t}]: {g} vs {got}"
                    );
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
        // Few rows: split by rows (whole tiles) for few tokens, by tokens (whole token
        // tiles) for more.
        (48, 512, 3),
        (48, 256, 20),
        // Enough tokens for the bf16 strips, ragged rows.
        (40, 96, kernels::BF16_MIN_TOKENS + 3),
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
            let (mut got, mut want) = (vec![f32::NAN; n * rows], vec![0f32; n * rows]);
            kernels::linear(&x, n, &m, &bias, &mut got);
            generic::linear(&x, n, &m, &bias, &mut want);
            let cos = cosine(&got, &want);
            assert!(
                cos >= LINEAR_ACT_QUANT_MIN_COS,
                "{ty} {rows}x{cols} n={n}: cosine {cos}"
            );
            // Every path, on every set this CPU runs and on sets of the references that take
            // each path, whichever set is active.
            for k in variants().into_iter().chain(reference_path_sets()) {
                let path = kernels::LinearPath::choose(&k, ty, cols, n).name();
                let mut got = vec![f32::NAN; n * rows];
                let mut act = kernels::Activations::new(&x, n);
                kernels::linear_with_set(k, &mut act, &m, &bias, &mut got);
                let cos = cosine(&got, &want);
                assert!(
                    cos >= LINEAR_ACT_QUANT_MIN_COS,
                    "{ty} {rows}x{cols} n={n} on {} ({path}): cosine {cos}",
                    k.name
                );
            }
        }
    }
}

/// Cosine of two outputs, in f64.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(a, b)| *a as f64 * *b as f64).sum();
    let na: f64 = a.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Sets of the scalar references that each take one linear path ([`kernels::LinearPath`]):
/// 8-bit, offset, split and 16-bit panels, and the bf16 strips.
fn reference_path_sets() -> Vec<KernelSet> {
    let g = kernels::GENERIC;
    vec![
        KernelSet {
            name: "reference panels",
            dot_q8_0_2x8: Some(generic::dot_q8_0_2x8),
            dot_q4_0_2x8: Some(generic::dot_q4_0_2x8),
            ..g
        },
        KernelSet {
            name: "reference offset and split panels",
            dot_q8_0_2x8_offset: Some(generic::dot_q8_0_2x8_offset),
            dot_q4_0_2x8_split: Some(generic::dot_q4_0_2x8_split),
            ..g
        },
        KernelSet {
            name: "reference bf16",
            dot_q8_0_2x8_offset: Some(generic::dot_q8_0_2x8_offset),
            dot_q4_0_2x8: Some(generic::dot_q4_0_2x8),
            bf16: Some(kernels::BF16_REFERENCE),
            ..g
        },
    ]
}

/// The f32 GEMM (matrixmultiply's SIMD micro-kernels) against a float64 scalar product, relative
/// to the sum of absolute products of each output.
const GEMM_REL_TOL: f32 = 1e-5;

#[test]
fn gemm_matches_the_reference_on_ragged_and_strided_shapes() {
    use kernels::gemm::{gemm, gemm_reference, Strides, View, ViewMut};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..60 {
        let (m, k, n) = (
            rng.gen_range(1..70),
            rng.gen_range(1..90),
            rng.gen_range(1..70),
        );
        let a = random_vec(&mut rng, m * k, 2.0);
        let b = random_vec(&mut rng, k * n, 2.0);
        let c0 = random_vec(&mut rng, m * n, 1.0);
        let beta = if rng.gen_bool(0.5) { 0.0 } else { 1.0 };
        // Row-major or transposed views of the same data.
        let sa = if rng.gen_bool(0.5) {
            Strides::rows(k)
        } else {
            Strides::transposed(m)
        };
        let sb = if rng.gen_bool(0.5) {
            Strides::rows(n)
        } else {
            Strides::transposed(k)
        };
        let (mut got, mut want) = (c0.clone(), c0.clone());
        gemm(
            m,
            k,
            n,
            View::new(&a, sa),
            View::new(&b, sb),
            beta,
            ViewMut::new(&mut got, Strides::rows(n)),
        );
        gemm_reference(
            m,
            k,
            n,
            View::new(&a, sa),
            View::new(&b, sb),
            beta,
            ViewMut::new(&mut want, Strides::rows(n)),
        );
        for i in 0..m {
            for j in 0..n {
                let scale: f32 = (0..k)
                    .map(|p| (a[i * sa.row + p * sa.col] * b[p * sb.row + j * sb.col]).abs())
                    .sum::<f32>()
                    + c0[i * n + j].abs()
                    + 1e-6;
                let (g, w) = (got[i * n + j], want[i * n + j]);
                assert!(
                    (g - w).abs() <= GEMM_REL_TOL * scale,
                    "{m}x{k}x{n} at ({i},{j}): {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn linear_backward_input_matches_the_reference_for_every_type() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for ty in [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q8_0,
        TensorType::Q4_0,
    ] {
        for _ in 0..20 {
            let (rows, cols, n) = (
                rng.gen_range(1..90),
                QK * rng.gen_range(1..5),
                rng.gen_range(1..40),
            );
            let w = random_vec(&mut rng, rows * cols, 1.0);
            let mut data = Vec::new();
            quant::quantize(&w, ty, &mut data).unwrap();
            let m = Matrix {
                ty,
                rows,
                cols,
                data: &data,
            };
            let wf = m.to_f32();
            let dy = random_vec(&mut rng, n * rows, 1.0);
            let dx0 = random_vec(&mut rng, n * cols, 1.0);
            let mut got = dx0.clone();
            kernels::linear_backward_input(&dy, n, &m, &mut got);
            for t in 0..n {
                for i in 0..cols {
                    let want: f64 = dx0[t * cols + i] as f64
                        + (0..rows)
                            .map(|o| dy[t * rows + o] as f64 * wf[o * cols + i] as f64)
                            .sum::<f64>();
                    let scale: f64 = (0..rows)
                        .map(|o| (dy[t * rows + o] * wf[o * cols + i]).abs() as f64)
                        .sum::<f64>()
                        + 1.0;
                    let g = got[t * cols + i] as f64;
                    assert!(
                        (g - want).abs() <= GEMM_REL_TOL as f64 * scale,
                        "{ty} {rows}x{cols} n {n}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

/// The armv7 suite runs on CPUs with NEON (QEMU's default), so the NEON set must be found there
/// and its kernels are the ones the tests above compare with the references.
#[cfg(target_arch = "arm")]
#[test]
fn armv7_neon_is_detected() {
    let k = kernels::arm_neon().expect("NEON in AT_HWCAP of /proc/self/auxv");
    assert_eq!(kernels::active().name, k.name);
}

/// The sets this CPU runs have distinct names (`PETAL_KERNELS` picks one by name), start with
/// the scalar references, and the active set is the last, best one unless the environment
/// names another.
#[test]
fn kernel_sets_are_named_and_the_best_is_active() {
    let sets = kernels::available();
    assert_eq!(sets[0].name, kernels::GENERIC.name);
    let mut names: Vec<&str> = sets.iter().map(|k| k.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), sets.len(), "duplicate kernel set names");
    let want = match std::env::var("PETAL_KERNELS") {
        Ok(name) if sets.iter().any(|k| k.name == name) => name,
        _ => sets.last().unwrap().name.to_string(),
    };
    assert_eq!(kernels::active().name, want);
}

/// The aligned bf16 buffer: values on a 64-byte boundary, kept as it grows (storage moving),
/// zeros where it grows, and appends after a shrink.
#[test]
fn bf16_buffers_are_aligned_and_keep_their_values() {
    let mut b = pack::Bf16Buf::new();
    let mut want: Vec<u16> = Vec::new();
    for (i, len) in [5usize, 3, 700, 40_000, 12, 90_001].into_iter().enumerate() {
        b.resize(len);
        want.resize(len, 0);
        assert_eq!(b.as_slice(), &want[..], "resize {i} to {len}");
        assert_eq!(
            b.as_slice().as_ptr() as usize % 64,
            0,
            "resize {i} to {len}"
        );
        for (j, (v, w)) in b.as_mut_slice().iter_mut().zip(want.iter_mut()).enumerate() {
            *v = (i * 7 + j) as u16;
            *w = *v;
        }
    }
    b.clear();
    assert!(b.as_slice().is_empty());
}

/// Rows written through windows: each value lands at its row and column, and values outside
/// the holder's columns or the buffer are refused.
#[test]
fn rows_write_only_their_columns() {
    let mut buf = vec![0f32; 5 * 7 - 2];
    let mut rows = RowsMut::new(&mut buf, 7);
    {
        let mut w = rows.window(1, 2, 3);
        assert_eq!((w.width(), w.ld()), (3, 7));
        w.set(0, 0, 1.0);
        w.set(3, 2, 2.0);
        let outside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.set(0, 3, 9.0)));
        assert!(outside.is_err(), "a column past the window");
        let past_end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.set(4, 2, 9.0)));
        assert!(past_end.is_err(), "a row past the buffer");
    }
    let wide = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rows.window(0, 5, 3);
    }));
    assert!(wide.is_err(), "a window wider than the rows");
    // Index arithmetic that would wrap is refused, not wrapped into the buffer.
    for (t, c) in [
        (usize::MAX / 7 + 1, 0),
        (0, usize::MAX),
        (usize::MAX / 7, 6),
    ] {
        let wrap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rows.set(t, c, 9.0)));
        assert!(wrap.is_err(), "set({t}, {c})");
    }
    let wrap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rows.window(usize::MAX / 7 + 1, 0, 1);
    }));
    assert!(wrap.is_err(), "a window whose start wraps");
    let wrap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rows.window(0, 1, usize::MAX);
    }));
    assert!(wrap.is_err(), "a window whose width wraps");
    let wrap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rows.slice_at(8, usize::MAX);
    }));
    assert!(wrap.is_err(), "a slice whose end wraps");
    assert_eq!(buf[7 + 2], 1.0);
    assert_eq!(buf[4 * 7 + 4], 2.0);
    assert_eq!(buf.iter().filter(|&&v| v != 0.0).count(), 2);
}
