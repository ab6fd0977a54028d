//! Several adapters over one mapped base model in one process, from several threads.

use std::sync::atomic::AtomicBool;

use petal_adapt::methods::Method;
use petal_adapt::train::{self, TrainConfig};
use petal_runtime::pipeline::Model;
use petal_tests::*;

#[test]
fn several_adapters_share_one_mapped_model() {
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
    let mut adapters = Vec::new();
    for m in ["head", "lora", "ia3"] {
        let method = Method::from_name(m).unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 4,
            ..TrainConfig::for_method(&method)
        };
        adapters.push(
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
            .adapter,
        );
    }
    let alone: Vec<Vec<f32>> = adapters
        .iter()
        .map(|a| {
            train::classify(&model, a, &texts, 4)
                .unwrap()
                .iter()
                .flat_map(|p| p.scores.clone())
                .collect()
        })
        .collect();
    // The same adapters from three threads at once over the one mapping give the same scores.
    let together: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = adapters
            .iter()
            .map(|a| {
                s.spawn(|| {
                    train::classify(&model, a, &texts, 4)
                        .unwrap()
                        .iter()
                        .flat_map(|p| p.scores.clone())
                        .collect::<Vec<f32>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    for (a, scores) in adapters.iter().zip(&alone) {
        let predicted: Vec<usize> = scores.chunks(2).map(|s| (s[1] > s[0]) as usize).collect();
        assert_eq!(
            predicted,
            y,
            "{} adapter fits its four training texts",
            a.method.name()
        );
    }
}
