//! `petal embed` and `petal classify` on real input shapes: arguments, stdin lines, empty,
//! whitespace-only, very long, non-ASCII and invalid UTF-8 lines, models without a head.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn petal_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_petal"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// tiny-bert (a classifier) and a headless copy of it, converted once per test.
fn models(dir: &Path) -> (String, String) {
    let src = workspace().join("testdata/golden/tiny-bert");
    let with_head = dir.join("cls.gguf");
    let out = petal_stdin(
        &[
            "convert",
            src.to_str().unwrap(),
            "-o",
            with_head.to_str().unwrap(),
            "-q",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Drop the head: a sentence-embedding model.
    let headless = dir.join("base");
    std::fs::create_dir(&headless).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(src.join(f), headless.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(headless.join("config.json"), cfg).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("classifier"))
        .collect();
    safetensors::serialize_to_file(kept, &None, &headless.join("model.safetensors")).unwrap();
    let base = dir.join("base.gguf");
    let out = petal_stdin(
        &[
            "convert",
            headless.to_str().unwrap(),
            "-o",
            base.to_str().unwrap(),
            "-q",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        with_head.to_str().unwrap().into(),
        base.to_str().unwrap().into(),
    )
}

#[test]
fn classify_arguments_and_stdin_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (cls, _) = models(dir.path());
    let a = petal_stdin(
        &["classify", &cls, "hello world", "The quick brown fox"],
        b"",
    );
    assert!(a.status.success());
    let b = petal_stdin(&["classify", &cls], b"hello world\r\nThe quick brown fox\n");
    assert!(b.status.success());
    assert_eq!(a.stdout, b.stdout);
    let text = String::from_utf8(a.stdout).unwrap();
    assert_eq!(text.lines().count(), 2);
    for line in text.lines() {
        let (label, score) = line.split_once('\t').unwrap();
        assert!(["negative", "neutral", "positive"].contains(&label));
        let s: f32 = score.parse().unwrap();
        assert!((0.0..=1.0).contains(&s));
    }
}

#[test]
fn odd_stdin_lines_are_handled_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (cls, base) = models(dir.path());
    let long = "long ".repeat(20_000);
    let input = format!("\n   \t \nHéllo wörld, naïve café 你好 🙂\n{long}\n");
    for (model, cmd) in [(&cls, "classify"), (&base, "embed")] {
        let out = petal_stdin(&[cmd, model, "--json"], input.as_bytes());
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len(),
            4,
            "{cmd}: one result per line, empty ones included"
        );
        assert_eq!(lines[3]["text"].as_str().unwrap().len(), long.len());
        if cmd == "embed" {
            assert!(lines
                .iter()
                .all(|l| l["embedding"].as_array().unwrap().len() == 32));
        }
    }
}

#[test]
fn invalid_utf8_stops_with_the_line_number_after_the_valid_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (cls, _) = models(dir.path());
    let out = petal_stdin(
        &["classify", &cls],
        b"fine\nalso fine\nbad \xff\xfe\nnever read\n",
    );
    assert!(!out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end(), "error: stdin line 3: not valid UTF-8");
}

#[test]
fn classify_without_a_head_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (_, base) = models(dir.path());
    let out = petal_stdin(&["classify", &base, "hello"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("base.gguf: this model has no classification head"),
        "{err}"
    );
    let out = petal_stdin(&["embed", &base, "hello", "--max-length", "1"], b"");
    assert!(!out.status.success());
}

#[test]
fn no_mmap_gives_the_same_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let (_, base) = models(dir.path());
    let a = petal_stdin(&["embed", &base, "same text"], b"");
    let b = petal_stdin(&["embed", &base, "same text", "--no-mmap"], b"");
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
}
