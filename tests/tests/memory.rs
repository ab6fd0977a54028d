//! Opening a model maps it: the weights stay file-backed, and the process's private
//! (anonymous) memory barely grows. Alone in its test binary, so no other test allocates
//! meanwhile.

use petal_runtime::pipeline::Model;
use petal_tests::asset;

/// Largest growth of anonymous memory allowed by `Model::open` (the q8_0 MiniLM is 25 MB).
const OPEN_MAX_ANON_GROWTH_KB: u64 = 2 * 1024;

fn smaps_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").expect("/proc/self/smaps_rollup");
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup"))
}

#[test]
fn open_q8_0_minilm_keeps_weights_file_backed() {
    let path = asset("models/minilm-q8_0.gguf");
    let before = smaps_kb("Anonymous:");
    let model = Model::open(&path).unwrap();
    let after = smaps_kb("Anonymous:");
    let growth = after.saturating_sub(before);
    eprintln!("anonymous memory: {before} kB before open, {after} kB after (+{growth} kB)");
    assert!(
        growth < OPEN_MAX_ANON_GROWTH_KB,
        "Model::open grew anonymous memory by {growth} kB"
    );
    // The encoder really reads from the mapping: a forward pass works and memory stays modest.
    let e = model.embed(&["the weights are read in place"]).unwrap();
    assert_eq!(e[0].len(), 384);
    let used = smaps_kb("Anonymous:").saturating_sub(before);
    eprintln!("after the first embedding (tokenizer built): +{used} kB");
    drop(model);
}
