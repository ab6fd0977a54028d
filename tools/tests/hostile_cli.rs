//! Handmade hostile files and lines through the `petal` command line: each ends with a non-zero
//! exit (not an abort), one line on stderr naming the file and the problem, and a peak resident
//! memory of at most 60 MB (read from the kernel's accounting of the child, `wait4`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use petal_runtime::gguf::{Gguf, GgufWriter, OwnedValue};

/// Most resident memory a refusal may take.
const REFUSAL_MAX_RSS_KB: i64 = 60 * 1024;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    max_rss_kb: i64,
}

/// Runs `petal ARGS -q` and waits for it with `wait4`, which reports the child's peak RSS.
fn run(args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_petal"))
        .args(args)
        .arg("-q")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: `rusage` is plain integers, for which all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `pid` is our own child, not yet waited for (std's `Child` is never waited on
    // after this); both pointers are to live locals the kernel fills.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    std::mem::forget(child);
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stderr,
        max_rss_kb: usage.ru_maxrss,
    }
}

/// `args` must be refused: exit status 1, one stderr line naming `file` and containing `want`,
/// within the memory bound.
fn refused(what: &str, args: &[&str], file: &Path, want: &str) {
    let o = run(args);
    eprintln!(
        "{what}: exit {:?}, peak RSS {} kB: {}",
        o.code,
        o.max_rss_kb,
        o.stderr.trim_end()
    );
    assert_eq!((o.code, o.signal), (Some(1), None), "{what}: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line on stderr: {:?}", o.stderr);
    assert!(
        lines[0].contains(&file.display().to_string()) && lines[0].contains(want),
        "{what}: {:?} should name {} and say {want:?}",
        lines[0],
        file.display()
    );
    assert!(
        o.max_rss_kb <= REFUSAL_MAX_RSS_KB,
        "{what}: {} kB to refuse",
        o.max_rss_kb
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn hostile_files_and_lines_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let golden = workspace().join("testdata/golden");
    let model = d.join("tiny.gguf");
    let o = run(&[
        "convert",
        &s(&golden.join("tiny-bert")),
        "--dtype",
        "f32",
        "-o",
        &s(&model),
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let text = "a short text";

    // A PEFT directory whose rank would size petabytes.
    let lora = d.join("lora");
    std::fs::create_dir(&lora).unwrap();
    std::fs::copy(
        golden.join("train-lora/adapter_model.safetensors"),
        lora.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(golden.join("train-lora/adapter_config.json")).unwrap();
    std::fs::write(
        lora.join("adapter_config.json"),
        cfg.replace("\"r\": 4", "\"r\": 1000000000000"),
    )
    .unwrap();
    refused(
        "LoRA rank 10^12",
        &["classify", &s(&model), "--adapter", &s(&lora), text],
        &lora.join("adapter_config.json"),
        "the LoRA rank must be between 1 and 4096",
    );

    // Training data: not JSON, a missing field; a byte-order mark is fine.
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\"\n",
    )
    .unwrap();
    refused(
        "a broken JSON line",
        &[
            "adapt",
            &s(&model),
            "--train",
            &s(&bad),
            "--method",
            "head",
            "-o",
            &s(&d.join("a")),
        ],
        &bad,
        "line 2: invalid JSON",
    );
    let bom = d.join("bom.jsonl");
    std::fs::write(
        &bom,
        "\u{feff}{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n",
    )
    .unwrap();
    let o = run(&[
        "adapt",
        &s(&model),
        "--train",
        &s(&bom),
        "--method",
        "head",
        "--epochs",
        "1",
        "-o",
        &s(&d.join("bom.safetensors")),
    ]);
    assert_eq!(
        o.code,
        Some(0),
        "a JSONL file with a byte-order mark: {}",
        o.stderr
    );

    // Model files: truncated, and one whose layer count is far beyond its tensors.
    let bytes = std::fs::read(&model).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    refused(
        "a truncated model",
        &["embed", &s(&cut), text],
        &cut,
        "runs past the end of the file",
    );
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = GgufWriter::dequantized(&g).unwrap();
    w.set("bert.block_count", OwnedValue::U32(1 << 20));
    let layers = d.join("layers.gguf");
    w.write_atomic(&layers).unwrap();
    refused(
        "2^20 layers",
        &["embed", &s(&layers), text],
        &layers,
        "blk.2.",
    );
    let mut w = GgufWriter::dequantized(&g).unwrap();
    w.set("petal.format_version", OwnedValue::U32(2));
    let future = d.join("future.gguf");
    w.write_atomic(&future).unwrap();
    refused(
        "a later format version",
        &["embed", &s(&future), text],
        &future,
        "petal.format_version",
    );
    let mut w = GgufWriter::dequantized(&g).unwrap();
    w.set(
        "tokenizer.huggingface.json",
        "{\"model\": {\"type\": \"WordPiece\", \"vocab\": 7}}",
    );
    let tok = d.join("tokenizer.gguf");
    w.write_atomic(&tok).unwrap();
    refused(
        "a broken embedded tokenizer",
        &["embed", &s(&tok), text],
        &tok,
        "embedded tokenizer: invalid type",
    );
}
