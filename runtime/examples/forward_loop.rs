//! Runs the encoder on one batch shape in a loop, for profilers (`perf record`):
//! `cargo run --release -p petal-runtime --example forward_loop MODEL [SEQ] [BATCH] [RUNS]`
//! (defaults 128, 1, 200), with `THREADS=N`. Prints the median; the product's figures come from
//! `petal bench` and bench/peers.sh.

use std::time::Instant;

use petal_runtime::bert::Input;
use petal_runtime::kernels;
use petal_runtime::pipeline::Model;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: forward_loop MODEL [SEQ] [BATCH] [RUNS]");
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |v| v.parse().expect("a number"));
    let (seq, batch, runs) = (arg(2, 128), arg(3, 1), arg(4, 200));
    let threads = std::env::var("THREADS").map_or(1, |t| t.parse().expect("THREADS is a number"));
    kernels::set_threads(threads).expect("first pool use");
    let mut model = Model::open(std::path::Path::new(path)).expect("model opens");
    model.set_max_length(seq);
    let text = "the quick brown fox jumps over the lazy dog ".repeat(seq);
    let (ids, _) = model.tokenize(&text).expect("tokenizes");
    let ids: Vec<u32> = ids[..seq]
        .iter()
        .copied()
        .cycle()
        .take(seq * batch)
        .collect();
    let lens = vec![seq; batch];
    let input = Input {
        ids: &ids,
        type_ids: None,
        lens: &lens,
    };
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        std::hint::black_box(model.encoder().infer(&input).expect("forward"));
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    println!(
        "{batch} x {seq}, {threads} thread(s), {}: median {:.2} ms over {runs} runs",
        kernels::active().name,
        t[runs / 2]
    );
}
