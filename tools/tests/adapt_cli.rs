//! `petal adapt`, `petal classify --adapter` and `petal eval` end to end on the real MiniLM
//! (q8_0, from scripts/setup.sh) and a few-shot split, plus every kind of bad training data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn minilm() -> PathBuf {
    let root = std::env::var_os("PETAL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"));
    let p = root.join("models/minilm-q8_0.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

fn fewshot(dataset: &str, file: &str) -> PathBuf {
    workspace()
        .join("bench/data/fewshot")
        .join(dataset)
        .join(file)
}

fn petal(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_petal"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn adapt_then_classify_and_eval_on_sms_spam() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("spam.safetensors");
    let m = minilm();
    let train = fewshot("sms-spam", "train-k8-s0.jsonl");
    let out = petal(&[
        os("adapt"),
        m.as_os_str(),
        os("--train"),
        train.as_os_str(),
        os("-o"),
        adapter.as_os_str(),
        os("--method"),
        os("head"),
        os("--json"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["examples"], 16);
    assert_eq!(s["labels"], serde_json::json!(["ham", "spam"]));
    assert!(
        std::fs::metadata(&adapter).unwrap().len() < 8 * 1024,
        "adapter should be small"
    );

    // Same data, same settings: the same adapter bytes.
    let again = dir.path().join("again.safetensors");
    let out = petal(&[
        os("adapt"),
        m.as_os_str(),
        os("--train"),
        train.as_os_str(),
        os("-o"),
        again.as_os_str(),
        os("--method"),
        os("head"),
    ]);
    assert!(out.status.success());
    assert!(
        std::fs::read(&adapter).unwrap() == std::fs::read(&again).unwrap(),
        "adapter bytes differ between runs"
    );

    let out = petal(&[
        os("classify"),
        m.as_os_str(),
        os("--adapter"),
        adapter.as_os_str(),
        os("WINNER!! Claim your free prize now, text WIN to 80086"),
        os("are we still on for dinner tonight?"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let labels: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(labels, ["spam", "ham"]);

    let test = fewshot("sms-spam", "test.jsonl");
    let out = petal(&[
        os("eval"),
        m.as_os_str(),
        os("--adapter"),
        adapter.as_os_str(),
        os("--test"),
        test.as_os_str(),
        os("--json"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["n"], 1000);
    let acc = r["accuracy"].as_f64().unwrap();
    assert!(acc > 0.75, "sms-spam K=8 head accuracy {acc}");
    let confusion: u64 = r["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(confusion, 1000);
}

#[test]
fn adapter_of_another_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Train on a tiny model, then use the adapter with MiniLM.
    let tiny = dir.path().join("tiny.gguf");
    let src = workspace().join("testdata/golden/tiny-bert");
    assert!(
        petal(&[os("convert"), src.as_os_str(), os("-o"), tiny.as_os_str()])
            .status
            .success()
    );
    let adapter = dir.path().join("a.safetensors");
    let train = fewshot("sms-spam", "train-k8-s0.jsonl");
    let out = petal(&[
        os("adapt"),
        tiny.as_os_str(),
        os("--train"),
        train.as_os_str(),
        os("-o"),
        adapter.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = minilm();
    let out = petal(&[
        os("classify"),
        m.as_os_str(),
        os("--adapter"),
        adapter.as_os_str(),
        os("hi"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("a.safetensors: trained on another base model"),
        "{err}"
    );
}

#[test]
fn bad_training_data_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let m = minilm();
    let cases: [(&str, &str); 5] = [
        ("", "no examples"),
        (
            "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"x\"}\n",
            "every example has label \"x\"",
        ),
        (
            "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\",\"extra\":1}\n",
            "line 2: unknown field \"extra\"",
        ),
        (
            "{\"text\":\"a\",\"label\":\"x\"}\nnot json\n",
            "line 2: invalid JSON",
        ),
        (
            "{\"label\":\"x\"}\n",
            "line 1: missing string field \"text\"",
        ),
    ];
    for (i, (content, want)) in cases.iter().enumerate() {
        let train = dir.path().join(format!("t{i}.jsonl"));
        std::fs::write(&train, content).unwrap();
        let out_path = dir.path().join(format!("a{i}.safetensors"));
        let out = petal(&[
            os("adapt"),
            m.as_os_str(),
            os("--train"),
            train.as_os_str(),
            os("-o"),
            out_path.as_os_str(),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("t{i}.jsonl")) && err.contains(want),
            "{err}"
        );
        assert!(!out_path.exists());
    }
}

fn read_dir_bytes(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn lora_adapter_is_deterministic_by_seed_and_classifies() {
    let dir = tempfile::tempdir().unwrap();
    let m = minilm();
    let train = fewshot("sms-spam", "train-k8-s0.jsonl");
    let adapt = |out: &Path, seed: &str, extra: &[&str]| {
        let mut args = vec![
            os("adapt"),
            m.as_os_str(),
            os("--train"),
            train.as_os_str(),
            os("--method"),
            os("lora"),
            os("--epochs"),
            os("2"),
            os("--seed"),
            os(seed),
            os("-o"),
            out.as_os_str(),
            os("--json"),
        ];
        args.extend(extra.iter().map(|s| os(s)));
        let o = petal(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let s = adapt(&a, "1", &[]);
    assert_eq!(s["method"], "lora");
    assert_eq!(s["steps"], 4);
    adapt(&b, "1", &[]);
    adapt(&c, "2", &[]);
    let files = read_dir_bytes(&a);
    assert_eq!(
        files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
    assert!(files == read_dir_bytes(&b), "same seed, different adapter");
    assert!(files != read_dir_bytes(&c), "another seed, same adapter");

    let out = petal(&[
        os("classify"),
        m.as_os_str(),
        os("--adapter"),
        a.as_os_str(),
        os("WINNER!! Claim your free prize now, text WIN to 80086"),
        os("are we still on for dinner tonight?"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let labels: Vec<&str> = text
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(labels, ["spam", "ham"]);

    // A time budget stops training early and still writes the best adapter so far.
    let d = dir.path().join("d");
    let s = adapt(&d, "1", &["--max-seconds", "0.000001"]);
    assert_eq!(s["stopped_early"], true);
    assert!(d.join("adapter_model.safetensors").exists());
}

#[test]
fn ctrl_c_keeps_the_best_adapter_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let m = minilm();
    let train = fewshot("trec6", "train-k16-s0.jsonl");
    let out = dir.path().join("a");
    let mut child = Command::new(env!("CARGO_BIN_EXE_petal"))
        .env("RUST_LOG", "info")
        .args([
            os("adapt"),
            m.as_os_str(),
            os("--train"),
            train.as_os_str(),
            os("--method"),
            os("bitfit"),
        ])
        .args([
            os("--epochs"),
            os("1000"),
            os("-o"),
            out.as_os_str(),
            os("--json"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Past the head fit into the epochs (the trainer's first "train" progress line on stderr,
    // which has no terminal here), then interrupt it.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if !sent && line.contains("train: step") {
                tx.send(()).unwrap();
                sent = true;
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    rx.recv_timeout(std::time::Duration::from_secs(600))
        .expect("the trainer's first progress line of the epochs");
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let log = reader.join().unwrap();
    assert!(o.status.success(), "{log}");
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["stopped_early"], true);
    assert!(s["steps"].as_u64().unwrap() < 12_000);
    assert!(out.exists(), "the adapter is written");
    let c = petal(&[
        os("classify"),
        m.as_os_str(),
        os("--adapter"),
        out.as_os_str(),
        os("What is the capital of France?"),
    ]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
}

/// The default recipe chooses among the head, SetFit-style and Houlsby adapters by 3-fold
/// cross-validation on the training file, never below the head's held-out accuracy, says what
/// it measured and chose, and writes the chosen method's adapter.
#[test]
fn default_recipe_chooses_by_held_out_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("default");
    let m = minilm();
    let train = fewshot("sms-spam", "train-k8-s0.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_petal"))
        .env("RUST_LOG", "info")
        .args([os("adapt"), m.as_os_str(), os("--train"), train.as_os_str()])
        .args([
            os("--epochs"),
            os("1"),
            os("-o"),
            out_dir.as_os_str(),
            os("--json"),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sel = &s["selection"];
    assert_eq!(sel["folds"], 3);
    let est: Vec<(String, f64)> = sel["estimates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_f64().unwrap()))
        .collect();
    let names: Vec<&str> = est.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["head", "setfit", "houlsby"]);
    let chosen = sel["chosen"].as_u64().unwrap() as usize;
    let best = est.iter().map(|e| e.1).fold(0.0, f64::max);
    assert_eq!(est[chosen].1, best, "the best held-out estimate wins");
    assert!(est[chosen].1 >= est[0].1, "never below the head's estimate");
    assert_eq!(s["method"], est[chosen].0);
    assert!(log.contains("3-fold held-out accuracy: head"), "{log}");
    assert!(log.contains(&format!("chose {}", est[chosen].0)), "{log}");
    if s["method"] != "setfit" {
        assert!(
            out_dir.is_file(),
            "a petal adapter file for {}",
            s["method"]
        );
        return;
    }
    let files = read_dir_bytes(&out_dir);
    assert_eq!(
        files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
}
