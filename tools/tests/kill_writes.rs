//! `petal convert` and `petal adapt` killed with SIGKILL at random moments while they work and
//! write, 50 times in all: where an output existed, it is afterwards either the old output or
//! the whole new one, byte for byte, never a truncated or half-written file or directory, and
//! nothing else in the folder could be taken for the output (temporary files are hidden
//! `.petal-*` entries).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Kills in all (split among the three jobs).
const KILLS: usize = 50;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A file's bytes, or a directory's files (name, bytes) in name order.
fn snapshot(p: &Path) -> Option<Vec<(String, Vec<u8>)>> {
    if p.is_dir() {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        Some(v)
    } else if p.exists() {
        Some(vec![(String::new(), std::fs::read(p).unwrap())])
    } else {
        None
    }
}

fn run_to_end(args: &[String]) {
    let o = Command::new(env!("CARGO_BIN_EXE_petal"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A small deterministic generator for the kill moments.
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `make(out)` to the end once for the old output (`old_args`) and once for the new one,
/// then `kills` times: restores the old output, starts the new job and kills it at a random
/// moment within 1.2 times its full run, and checks what is left.
fn check_kills(
    name: &str,
    dir: &Path,
    old_args: &dyn Fn(&Path) -> Vec<String>,
    new_args: &dyn Fn(&Path) -> Vec<String>,
    kills: usize,
    rng: &mut Lcg,
) {
    let scratch = dir.join(format!("{name}-reference"));
    std::fs::create_dir_all(&scratch).unwrap();
    let old_ref = scratch.join("old");
    let new_ref = scratch.join("new");
    run_to_end(&old_args(&old_ref));
    let t0 = Instant::now();
    run_to_end(&new_args(&new_ref));
    let full = t0.elapsed();
    let (old, new) = (snapshot(&old_ref).unwrap(), snapshot(&new_ref).unwrap());
    assert_ne!(old, new, "{name}: the old and new outputs must differ");
    let work = dir.join(name);
    let mut outcomes = [0usize; 2];
    for k in 0..kills {
        if work.exists() {
            std::fs::remove_dir_all(&work).unwrap();
        }
        std::fs::create_dir_all(&work).unwrap();
        let out = work.join("out");
        run_to_end(&old_args(&out));
        let mut child = Command::new(env!("CARGO_BIN_EXE_petal"))
            .args(new_args(&out))
            .arg("-q")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = full.mul_f64(1.2 * rng.unit());
        std::thread::sleep(at);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let left = snapshot(&out);
        let which = if left.as_ref() == Some(&old) {
            0
        } else if left.as_ref() == Some(&new) {
            1
        } else {
            panic!(
                "{name}, kill {k} after {at:?} ({status}): the output is neither the old nor the new one: {:?}",
                left.map(|v| v.iter().map(|(n, b)| (n.clone(), b.len())).collect::<Vec<_>>())
            )
        };
        outcomes[which] += 1;
        for e in std::fs::read_dir(&work).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                n == "out" || n.starts_with(".petal-"),
                "{name}, kill {k}: {n:?} left beside the output"
            );
        }
    }
    eprintln!(
        "{name}: full run {full:?}; {kills} kills left the old output {} times, the new one {} times",
        outcomes[0], outcomes[1]
    );
}

#[test]
fn sigkill_while_writing_leaves_the_old_or_the_new_output() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = workspace().join("testdata/golden/tiny-bert");
    let train = workspace().join("tests/interop/peft_train.jsonl");
    let s = |p: &Path| p.display().to_string();
    let mut rng = Lcg(2026);

    let convert = |dtype: &'static str| {
        let tiny = tiny.clone();
        move |out: &Path| {
            vec![
                "convert".into(),
                s(&tiny),
                "--dtype".into(),
                dtype.into(),
                "-o".into(),
                s(out),
            ]
        }
    };
    check_kills(
        "convert",
        dir.path(),
        &convert("f32"),
        &convert("q8_0"),
        KILLS / 3,
        &mut rng,
    );

    let model = dir.path().join("tiny.gguf");
    run_to_end(&convert("f32")(&model));
    let adapt = |method: &'static str, seed: &'static str| {
        let (model, train) = (model.clone(), train.clone());
        move |out: &Path| {
            vec![
                "adapt".into(),
                s(&model),
                "--train".into(),
                s(&train),
                "--method".into(),
                method.into(),
                "--epochs".into(),
                "3".into(),
                "--seed".into(),
                seed.into(),
                "-o".into(),
                s(out),
            ]
        }
    };
    // A PEFT directory (replaced as a whole) and a petal adapter file.
    check_kills(
        "adapt-lora",
        dir.path(),
        &adapt("lora", "1"),
        &adapt("lora", "2"),
        KILLS / 3,
        &mut rng,
    );
    check_kills(
        "adapt-bitfit",
        dir.path(),
        &adapt("bitfit", "1"),
        &adapt("bitfit", "2"),
        KILLS - 2 * (KILLS / 3),
        &mut rng,
    );
}
