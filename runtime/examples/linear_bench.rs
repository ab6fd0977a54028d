//! Times `kernels::linear` on MiniLM's shapes (Q8_0 weights, 128 tokens, one thread):
//! `cargo run --release -p petal-runtime --example linear_bench [ROWSxCOLS]`; `TYPE=q4_0` for
//! Q4_0 weights. For kernel work; the
//! product's figures come from `petal bench` and bench/peers.sh.

use std::time::Instant;

use petal_runtime::kernels;
use petal_runtime::quant::{self, TensorType};
use petal_runtime::weights::Matrix;

fn main() {
    kernels::set_threads(1).expect("first pool use");
    let n = 128;
    let mut seed = 1u64;
    let mut rand = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let ty = match std::env::var("TYPE").as_deref() {
        Ok("q4_0") => TensorType::Q4_0,
        _ => TensorType::Q8_0,
    };
    let mut total = 0.0;
    let shapes: Vec<(usize, usize)> = std::env::args().nth(1).map_or(vec![(384, 384), (1536, 384), (384, 1536)], |s| { let v: Vec<usize> = s.split("x").map(|p| p.parse().unwrap()).collect(); vec![(v[0], v[1])] });
    for (rows, cols) in shapes {
        let w: Vec<f32> = (0..rows * cols).map(|_| rand()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rand()).collect();
        let mut bytes = Vec::new();
        quant::quantize(&w, ty, &mut bytes).unwrap();
        let m = Matrix { ty, rows, cols, data: &bytes };
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
        println!("{rows}x{cols} x {n} tokens: median {med:.3} ms, {gmacs:.1} GMAC/s ({})", kernels::active().name);
        total += med * if rows == 384 && cols == 384 { 4.0 } else { 1.0 };
    }
    println!("one MiniLM layer's linears: {total:.2} ms; six layers {:.1} ms", 6.0 * total);
}
