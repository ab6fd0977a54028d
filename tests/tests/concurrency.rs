//! One `Model` shared by eight threads, each embedding or classifying its own texts, gives
//! results bit-identical to a serial run; so do several adapters over one mapped base used
//! from eight threads at once.

use std::sync::atomic::AtomicBool;

use petal_adapt::methods::Method;
use petal_adapt::train::{self, TrainConfig};
use petal_runtime::pipeline::Model;
use petal_runtime::quant::TensorType;
use petal_tests::*;

const THREADS: usize = 8;

/// Thread `i`'s texts: different lengths and words per thread (some long enough to take the
/// encoder's batched paths, one empty), the same on every run.
fn texts_of(i: usize) -> Vec<String> {
    let words = [
        "the", "board", "reads", "a", "line", "from", "its", "serial", "port", "and", "lights",
        "one", "lamp", "per", "label", "quickly",
    ];
    (0..5)
        .map(|j| {
            let n = (i * 7 + j * 13) % 40;
            if i == 3 && j == 2 {
                return String::new();
            }
            (0..n)
                .map(|k| words[(i + j * 3 + k * 5) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Runs `work(i)` for every thread index serially, then on eight threads at once over the same
/// shared state, and checks the results are bit-identical.
fn serial_equals_parallel<T: PartialEq + std::fmt::Debug + Send>(work: impl Fn(usize) -> T + Sync) {
    let serial: Vec<T> = (0..THREADS).map(&work).collect();
    // Twice, so threads start in different orders.
    for _ in 0..2 {
        let parallel: Vec<T> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    s.spawn({
                        let work = &work;
                        move || work(i)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            serial == parallel,
            "eight threads gave other results than a serial run"
        );
    }
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|e| e.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn one_model_embeds_on_eight_threads_as_serially() {
    let model = Model::open(asset("models/minilm-q8_0.gguf")).unwrap();
    serial_equals_parallel(|i| {
        let texts = texts_of(i);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        bits(&model.embed(&refs).unwrap())
    });
}

#[test]
fn one_classifier_classifies_on_eight_threads_as_serially() {
    let dir = tempfile::tempdir().unwrap();
    let path = convert_to(&golden("tiny-bert"), TensorType::Q8_0, dir.path());
    let model = Model::open(&path).unwrap();
    serial_equals_parallel(|i| {
        let texts = texts_of(i);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        model
            .classify(&refs)
            .unwrap()
            .into_iter()
            .map(|p| {
                (
                    p.label,
                    p.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    });
}

#[test]
fn adapters_over_one_base_on_eight_threads_as_serially() {
    let model = Model::open(asset("models/minilm-q8_0.gguf")).unwrap();
    let texts = [
        "free entry in a weekly competition, text WIN now",
        "see you at lunch",
        "you won a prize! call now",
        "running late, sorry",
    ];
    let y = [1, 0, 1, 0];
    let labels = vec!["ham".to_string(), "spam".into()];
    let stop = AtomicBool::new(false);
    let adapters: Vec<_> = ["head", "lora", "houlsby", "prefix"]
        .iter()
        .map(|m| {
            let method = Method::from_name(m).unwrap();
            let cfg = TrainConfig {
                epochs: 1,
                batch_size: 4,
                ..TrainConfig::for_method(&method)
            };
            train::train(
                &model,
                &texts,
                &y,
                &labels,
                &method,
                &cfg,
                &stop,
                &mut |_| {},
            )
            .unwrap()
            .adapter
        })
        .collect();
    serial_equals_parallel(|i| {
        let texts = texts_of(i);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        train::classify(&model, &adapters[i % adapters.len()], &refs, 4)
            .unwrap()
            .into_iter()
            .map(|p| p.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    });
}
