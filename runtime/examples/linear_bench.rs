//! Times `kernels::linear` on MiniLM's shapes (Q8_0 weights, 128 tokens, one thread by
//! default): `cargo run --release -p petal-runtime --example linear_bench [ROWSxCOLS]`, with
//! `TYPE=q4_0` for Q4_0 weights, `THREADS=N` threads and `N=T` tokens; `linear_bench panels`
//! times the panel kernels alone, `linear_bench tiles` the sixteen-row tile kernel alone
//! (`COLS`, `N`), `linear_bench bf16` the bf16 strip product alone (`COLS`, `N`). For kernel
//! work; the product's figures come from `petal bench` and bench/peers.sh.

use std::time::Instant;

use petal_runtime::kernels;
use petal_runtime::quant::{self, TensorType};
use petal_runtime::weights::Matrix;

fn main() {
    let threads = std::env::var("THREADS").map_or(1, |t| t.parse().expect("THREADS is a number"));
    kernels::set_threads(threads).expect("first pool use");
    if std::env::args().nth(1).as_deref() == Some("panels") {
        return panels();
    }
    if std::env::args().nth(1).as_deref() == Some("tiles") {
        return tiles();
    }
    if std::env::args().nth(1).as_deref() == Some("bf16") {
        return bf16();
    }
    let n = std::env::var("N").map_or(128, |v| v.parse().expect("N is a number"));
    let mut seed = 1u64;
    let mut rand = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let ty = match std::env::var("TYPE").as_deref() {
        Ok("q4_0") => TensorType::Q4_0,
        _ => TensorType::Q8_0,
    };
    let mut total = 0.0;
    let shapes: Vec<(usize, usize)> =
        std::env::args()
            .nth(1)
            .map_or(vec![(384, 384), (1536, 384), (384, 1536)], |s| {
                let v: Vec<usize> = s.split("x").map(|p| p.parse().unwrap()).collect();
                vec![(v[0], v[1])]
            });
    for (rows, cols) in shapes {
        let w: Vec<f32> = (0..rows * cols).map(|_| rand()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rand()).collect();
        let mut bytes = Vec::new();
        quant::quantize(&w, ty, &mut bytes).unwrap();
        let m = Matrix {
            ty,
            rows,
            cols,
            data: &bytes,
        };
        let mut y = vec![0f32; n * rows];
        let mut times = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            kernels::linear(&x, n, &m, &[], &mut y);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let gmacs = (rows * cols * n) as f64 / med / 1e6;
        println!(
            "{rows}x{cols} x {n} tokens: median {med:.3} ms, {gmacs:.1} GMAC/s ({})",
            kernels::active().name
        );
        total += med * if rows == 384 && cols == 384 { 4.0 } else { 1.0 };
    }
    println!(
        "one MiniLM layer's linears: {total:.2} ms; six layers {:.1} ms",
        6.0 * total
    );
}

/// `linear_bench panels`: the active set's panel kernels alone (Q8_0 against 8-bit panels or
/// offset panels, Q4_0 against 16-bit panels), one weight-row pair against one panel of eight
/// tokens (all in L1), best of many calls.
fn panels() {
    use petal_runtime::kernels::pack;
    let k = kernels::active();
    let cols = 384;
    let bpr = cols / 32;
    let w: Vec<f32> = (0..2 * cols)
        .map(|i| ((i * 7919 % 255) as f32 - 127.0) / 300.0)
        .collect();
    let x: Vec<f32> = (0..8 * cols)
        .map(|i| ((i * 104729 % 251) as f32 - 125.0) / 100.0)
        .collect();
    let rows = |ty| {
        let mut bytes = Vec::new();
        quant::quantize(&w, ty, &mut bytes).unwrap();
        bytes
    };
    let (w8, w4) = (rows(TensorType::Q8_0), rows(TensorType::Q4_0));
    let (r8, r4) = (w8.split_at(w8.len() / 2), w4.split_at(w4.len() / 2));
    let (r8, r4) = ([r8.0, r8.1], [r4.0, r4.1]);
    let mut blocks = Vec::new();
    pack::quantize_activations(&x, &mut blocks);
    let toks: Vec<&[pack::ActBlock]> = blocks.chunks_exact(bpr).collect();
    let (mut p8, mut p16, mut po) = (Vec::new(), Vec::new(), Vec::new());
    pack::pack_panel(&toks, bpr, &mut p8);
    pack::pack_panel16(&x, cols, &mut p16);
    pack::pack_offset_panel(&x, cols, &mut po);
    type Run<'a> = Box<dyn Fn() -> f32 + 'a>;
    let mut kernels: Vec<(&str, Run<'_>)> = Vec::new();
    if let Some(f) = k.dot_q8_0_2x8 {
        kernels.push((
            "Q8_0 2 x 8",
            Box::new(move || f(r8, std::hint::black_box(&p8))[0]),
        ));
    }
    if let Some(f) = k.dot_q8_0_2x8_offset {
        kernels.push((
            "Q8_0 2 x 8 offset",
            Box::new(move || f(r8, std::hint::black_box(&po))[0]),
        ));
    }
    if let Some(f) = k.dot_q4_0_2x8 {
        kernels.push((
            "Q4_0 2 x 8",
            Box::new(move || f(r4, std::hint::black_box(&p16))[0]),
        ));
    }
    if kernels.is_empty() {
        println!("{} has no panel kernels", k.name);
    }
    let reps = 20_000;
    let macs = (2 * cols * 8 * reps) as f64;
    let mut best = vec![f64::MAX; kernels.len()];
    let mut sink = 0f32;
    for _ in 0..20 {
        for ((_, f), best) in kernels.iter().zip(&mut best) {
            let t = Instant::now();
            for _ in 0..reps {
                sink += f();
            }
            *best = best.min(t.elapsed().as_secs_f64());
        }
    }
    for ((name, _), best) in kernels.iter().zip(&best) {
        println!("{name}: {:.1} GMAC/s ({})", macs / best / 1e9, k.name);
    }
    std::hint::black_box(sink);
}

/// `linear_bench tiles`: the active set's sixteen-row tile kernel alone (AMX), eight groups of
/// sixteen Q8_0 rows of 384 (K=1536 with `COLS=1536`) against sixteen tokens, all in cache,
/// best of many calls.
fn tiles() {
    use petal_runtime::kernels::pack;
    let k = kernels::active();
    let Some(f) = k.dot_q8_0_16x16 else {
        return println!("{} has no tile kernel", k.name);
    };
    let cols: usize = std::env::var("COLS").map_or(384, |v| v.parse().expect("COLS is a number"));
    let (bpr, rows, ntok) = (
        cols / 32,
        16 * kernels::AMX_ROW_GROUPS,
        std::env::var("N").map_or(pack::TILE_PANEL_TOKENS, |v| {
            v.parse().expect("N is a number")
        }),
    );
    let tiles = ntok.div_ceil(pack::TILE_PANEL_TOKENS);
    let val = |i: usize| ((i * 104729 % 251) as f32 - 125.0) / 100.0;
    let w: Vec<f32> = (0..rows * cols).map(val).collect();
    let x: Vec<f32> = (0..ntok * cols).map(|i| val(i + 7)).collect();
    let mut bytes = Vec::new();
    quant::quantize(&w, TensorType::Q8_0, &mut bytes).unwrap();
    let mut tp = vec![pack::ZERO_TILE_PANEL; bpr * tiles];
    for (x, tp) in x
        .chunks(pack::TILE_PANEL_TOKENS * cols)
        .zip(tp.chunks_mut(bpr))
    {
        (k.pack_tile)(x, cols, tp);
    }
    let mut out = vec![0f32; ntok * rows];
    let reps = 2_000;
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        for _ in 0..reps {
            let op = kernels::TileOperands {
                w: &bytes,
                row_bytes: bytes.len() / rows,
                nb: bpr,
                panels: std::hint::black_box(&tp),
                bias: &[],
                groups: kernels::AMX_ROW_GROUPS,
                ntok,
                gelu: false,
            };
            f(&op, &mut kernels::RowsMut::new(&mut out, rows));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let calls = reps as f64;
    println!(
        "Q8_0 tiles {rows} x {cols} x {ntok}: {:.1} GMAC/s, {:.1} ns per block of 16 rows x 16 tokens ({})",
        (rows * cols * ntok) as f64 * calls / best / 1e9,
        best / calls / (kernels::AMX_ROW_GROUPS * bpr * tiles) as f64 * 1e9,
        k.name
    );
    std::hint::black_box(&out);
}

/// The bf16 strip product alone (32 rows, `COLS` deep, `N` tokens), its data in cache.
fn bf16() {
    let k = kernels::active();
    let Some(bk) = k.bf16 else {
        return println!("{} has no bf16 kernels", k.name);
    };
    let cols: usize = std::env::var("COLS").map_or(384, |v| v.parse().expect("COLS is a number"));
    let n: usize = std::env::var("N").map_or(128, |v| v.parse().expect("N is a number"));
    let nt = n.div_ceil(16);
    let a: Vec<u16> = (0..32 * cols).map(|i| 0x3f80 + (i % 7) as u16).collect();
    let b: Vec<u16> = (0..nt * 16 * cols)
        .map(|i| 0x3f80 + (i % 5) as u16)
        .collect();
    let mut out = vec![0f32; n * 32];
    let bias = [0f32; 32];
    let reps = 2_000;
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        for _ in 0..reps {
            let strip = kernels::Bf16Strip {
                a: std::hint::black_box(&a),
                k: cols,
                b: &b,
                nt,
                bias: &bias,
                nr: 32,
                ntok: n,
                gelu: false,
                next: &[],
            };
            (bk.gemm)(&strip, &mut kernels::RowsMut::new(&mut out, 32));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let products = (2 * nt * cols / 32) as f64;
    println!(
        "bf16 strip 32 x {cols} x {n}: {:.1} GMAC/s, {:.1} ns per 16 x 16 x 32 product ({})",
        (32 * cols * n) as f64 * reps as f64 / best / 1e9,
        best / reps as f64 / products * 1e9,
        k.name
    );
    std::hint::black_box(&out);
}
