//! The service's counters, in Prometheus' text format (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size histogram's buckets (texts a pass).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A histogram: cumulative bucket counts, sum and count.
#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, &le) in self.buckets.iter_mut().zip(bounds) {
            if v <= le {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, o: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in bounds.iter().enumerate() {
            let n = self.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(o, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(o, "{name}_count{braces} {}", self.count);
    }
}

/// Every counter of the service.
#[derive(Default)]
pub struct Metrics {
    /// Requests by route.
    requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Error responses by status code.
    errors: Mutex<BTreeMap<u16, u64>>,
    /// Request latency by route.
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Texts a pass.
    batch_texts: Mutex<Histogram>,
    /// Time of each pass.
    inference: Mutex<Histogram>,
    /// Tokens through the encoder.
    tokens: AtomicU64,
    /// Requests waiting for or inside the encoder.
    pub queue: AtomicUsize,
}

impl Metrics {
    /// A finished request on `route`, answered with `status` after `took`.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        *lock(&self.requests).entry(route).or_default() += 1;
        if status >= 400 {
            *lock(&self.errors).entry(status).or_default() += 1;
        }
        lock(&self.latency)
            .entry(route)
            .or_default()
            .observe(&LATENCY_BUCKETS, took.as_secs_f64());
    }

    /// A pass of `texts` texts and `tokens` tokens.
    pub fn batch(&self, texts: usize, tokens: usize) {
        lock(&self.batch_texts).observe(&BATCH_BUCKETS, texts as f64);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// A pass's time.
    pub fn inference(&self, took: Duration) {
        lock(&self.inference).observe(&LATENCY_BUCKETS, took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o += "# HELP petal_requests_total Requests answered, by route.\n# TYPE petal_requests_total counter\n";
        for (route, n) in lock(&self.requests).iter() {
            let _ = writeln!(o, "petal_requests_total{{route=\"{route}\"}} {n}");
        }
        o += "# HELP petal_errors_total Error responses, by status code.\n# TYPE petal_errors_total counter\n";
        for (code, n) in lock(&self.errors).iter() {
            let _ = writeln!(o, "petal_errors_total{{code=\"{code}\"}} {n}");
        }
        o += "# HELP petal_queue_size Requests waiting for or inside the encoder.\n# TYPE petal_queue_size gauge\n";
        let _ = writeln!(o, "petal_queue_size {}", self.queue.load(Ordering::Relaxed));
        o += "# HELP petal_tokens_total Tokens through the encoder.\n# TYPE petal_tokens_total counter\n";
        let _ = writeln!(
            o,
            "petal_tokens_total {}",
            self.tokens.load(Ordering::Relaxed)
        );
        o += "# HELP petal_batch_size Texts in each encoder pass.\n# TYPE petal_batch_size histogram\n";
        lock(&self.batch_texts).write(&mut o, "petal_batch_size", "", &BATCH_BUCKETS);
        o += "# HELP petal_inference_duration_seconds Time of each encoder pass.\n# TYPE petal_inference_duration_seconds histogram\n";
        lock(&self.inference).write(
            &mut o,
            "petal_inference_duration_seconds",
            "",
            &LATENCY_BUCKETS,
        );
        o += "# HELP petal_request_duration_seconds Request latency, by route.\n# TYPE petal_request_duration_seconds histogram\n";
        for (route, h) in lock(&self.latency).iter() {
            h.write(
                &mut o,
                "petal_request_duration_seconds",
                &format!("route=\"{route}\""),
                &LATENCY_BUCKETS,
            );
        }
        o
    }
}

/// The lock, also after a panic elsewhere (the counters stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
