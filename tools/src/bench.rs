//! `petal bench`: latency, throughput, cold start and memory of one model file, measured here.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use petal_runtime::bert::Input;
use petal_runtime::pipeline::Model;
use serde::Serialize;

/// Sequence lengths of the batch-1 latency runs.
pub const SEQ_LENS: [usize; 3] = [16, 64, 128];
/// Sequences in the throughput batch, each `THROUGHPUT_SEQ` tokens.
pub const THROUGHPUT_BATCH: usize = 8;
pub const THROUGHPUT_SEQ: usize = 128;
/// Cold-start runs (whole processes).
const COLD_RUNS: usize = 5;

#[derive(Debug, Serialize)]
pub struct Latency {
    pub batch: usize,
    pub seq: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub runs: usize,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub kernels: &'static str,
    pub threads: usize,
    pub latency: Vec<Latency>,
    pub throughput_seq_per_s: f64,
    pub cold_start_median_ms: f64,
    pub open_ms: f64,
    pub peak_rss_kb: u64,
    pub private_growth_kb_embed_128: u64,
}

fn proc_kb(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Token ids of exactly `n` tokens: a long text's tokens cut to `n - 1`, then its last token.
fn ids_of_len(model: &Model, n: usize) -> Result<Vec<u32>> {
    let text = "the quick brown fox jumps over the lazy dog while petal runs a small language model on a board ".repeat(16);
    let (ids, _) = model.tokenize(&text)?;
    anyhow::ensure!(
        ids.len() >= n,
        "the model's maximum length {} is below {n}",
        model.max_length()
    );
    let mut v = ids[..n - 1].to_vec();
    v.push(*ids.last().expect("non-empty"));
    Ok(v)
}

fn time_forward(model: &Model, ids: &[u32], lens: &[usize], runs: usize) -> Result<Vec<f64>> {
    let input = Input {
        ids,
        type_ids: None,
        lens,
    };
    for _ in 0..3 {
        model.encoder().infer(&input)?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        let h = model.encoder().infer(&input)?;
        std::hint::black_box(model.encoder().pool(&h));
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t)
}

pub fn bench(path: &Path, runs: usize, threads: usize) -> Result<BenchReport> {
    let anon0 = proc_kb("/proc/self/smaps_rollup", "Anonymous:");
    let s = Instant::now();
    let mut model = Model::open(path)?;
    let open_ms = s.elapsed().as_secs_f64() * 1e3;
    model.set_max_length(THROUGHPUT_SEQ.max(*SEQ_LENS.iter().max().unwrap_or(&128)));
    let ids128 = ids_of_len(&model, 128)?;
    model.embed(&["warm up the tokenizer"])?;
    let _ = time_forward(&model, &ids128, &[128], 1)?;
    let private_growth_kb_embed_128 =
        proc_kb("/proc/self/smaps_rollup", "Anonymous:").saturating_sub(anon0);

    let mut latency = Vec::new();
    for &n in &SEQ_LENS {
        let ids = ids_of_len(&model, n)?;
        let t = time_forward(&model, &ids, &[n], runs)?;
        latency.push(Latency {
            batch: 1,
            seq: n,
            median_ms: percentile(&t, 0.5),
            p95_ms: percentile(&t, 0.95),
            runs,
        });
    }
    let ids = ids_of_len(&model, THROUGHPUT_SEQ)?;
    let batch_ids: Vec<u32> = ids
        .iter()
        .copied()
        .cycle()
        .take(ids.len() * THROUGHPUT_BATCH)
        .collect();
    let t = time_forward(
        &model,
        &batch_ids,
        &[THROUGHPUT_SEQ; THROUGHPUT_BATCH],
        (runs / 4).max(3),
    )?;
    let median = percentile(&t, 0.5);
    latency.push(Latency {
        batch: THROUGHPUT_BATCH,
        seq: THROUGHPUT_SEQ,
        median_ms: median,
        p95_ms: percentile(&t, 0.95),
        runs: t.len(),
    });

    let exe = std::env::current_exe().context("cannot find the petal executable")?;
    let mut cold = Vec::new();
    for _ in 0..COLD_RUNS {
        let s = Instant::now();
        let out = std::process::Command::new(&exe)
            .args(["--threads", &threads.to_string(), "-q", "embed"])
            .arg(path)
            .arg("hello world")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cold-start run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cold.push(s.elapsed().as_secs_f64() * 1e3);
    }
    cold.sort_by(f64::total_cmp);

    Ok(BenchReport {
        model: path.display().to_string(),
        kernels: petal_runtime::kernels::active().name,
        threads,
        latency,
        throughput_seq_per_s: THROUGHPUT_BATCH as f64 / (median / 1e3),
        cold_start_median_ms: percentile(&cold, 0.5),
        open_ms,
        peak_rss_kb: proc_kb("/proc/self/status", "VmHWM:"),
        private_growth_kb_embed_128,
    })
}

pub fn format(r: &BenchReport) -> String {
    let mut s = format!(
        "{} ({} kernels, {} threads)\n",
        r.model, r.kernels, r.threads
    );
    s += "batch  seq  median ms    p95 ms  runs\n";
    for l in &r.latency {
        s += &format!(
            "{:>5} {:>4} {:>10.2} {:>9.2} {:>5}\n",
            l.batch, l.seq, l.median_ms, l.p95_ms, l.runs
        );
    }
    s += &format!(
        "throughput {:.1} sequences/s (batch {} x {})\ncold start (process start to first embedding, median of {}) {:.1} ms; open {:.2} ms\npeak RSS {} kB; private memory growth after a 128-token embedding {} kB\n",
        r.throughput_seq_per_s, THROUGHPUT_BATCH, THROUGHPUT_SEQ, COLD_RUNS, r.cold_start_median_ms, r.open_ms, r.peak_rss_kb, r.private_growth_kb_embed_128
    );
    s
}
