//! `petal serve` as its clients see it: the real service started on a free port, spoken to over
//! TCP with HTTP/1.1, its answers compared with the command line's on the same model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest a test waits for a training job through the service.
const TRAIN_TIMEOUT: Duration = Duration::from_secs(900);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn minilm() -> PathBuf {
    let p = std::env::var_os("PETAL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"))
        .join("models/minilm-q8_0.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

fn fewshot(set: &str, file: &str) -> PathBuf {
    workspace().join("bench/data/fewshot").join(set).join(file)
}

fn petal(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_petal"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

/// The tiny BERT classifier (three labels, 64 positions), converted into `dir`.
fn tiny_classifier(dir: &Path) -> PathBuf {
    let out = dir.join("tiny.gguf");
    let src = workspace().join("testdata/golden/tiny-bert");
    let r = petal(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    out
}

/// A running `petal serve`, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_petal"))
            .args(["serve", model.to_str().unwrap(), "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => panic!("petal serve ended before listening:\n{seen}"),
            };
            seen += &line;
            seen.push('\n');
            if let Some(a) = line.split("listening on http://").nth(1) {
                break a.trim().to_string();
            }
        };
        // Keep reading its log, so that the pipe never fills.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        http(&self.addr, method, path, body)
    }

    fn json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (code, bytes) = self.call(method, path, body.to_string().as_bytes());
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (code, v)
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signals our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on its own connection: the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The service may answer (413) before it has read a long body.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> (u16, Vec<u8>) {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (code, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// `petal embed --json` of `texts`, one embedding a text.
fn cli_embeddings(model: &Path, texts: &[&str]) -> Vec<Vec<f32>> {
    let mut args = vec!["embed", model.to_str().unwrap(), "--json"];
    args.extend(texts);
    let out = petal(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| floats(&serde_json::from_str::<Value>(l).unwrap()["embedding"]))
        .collect()
}

const TEXTS: [&str; 3] = [
    "A cat sits on the mat.",
    "Markets fell sharply today after the announcement.",
    "Are we still meeting for lunch at noon?",
];

#[test]
fn tei_and_openai_routes_answer_as_the_cli_does() {
    let model = minilm();
    let s = Server::start(&model, &[]);
    let want = cli_embeddings(&model, &TEXTS);

    // The same texts in one request: one encoder pass, as the command line's.
    let (code, v) = s.json("POST", "/embed", json!({ "inputs": TEXTS }));
    assert_eq!(code, 200, "{v}");
    let got: Vec<Vec<f32>> = v.as_array().unwrap().iter().map(floats).collect();
    assert_eq!(got, want);
    // One text: a list of one embedding.
    let (code, v) = s.json("POST", "/embed", json!({ "inputs": TEXTS[0] }));
    assert_eq!(code, 200);
    assert_eq!(vec![floats(&v[0])], cli_embeddings(&model, &TEXTS[..1]));
    // Unnormalized: the same direction, another length.
    let (_, v) = s.json(
        "POST",
        "/embed",
        json!({ "inputs": TEXTS[0], "normalize": false }),
    );
    let raw = floats(&v[0]);
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "norm {norm}");
    let cos: f32 = raw.iter().zip(&got[0]).map(|(a, b)| a * b).sum::<f32>() / norm;
    assert!(cos > 0.99999, "cosine {cos}");
    // The root route of an embedding model embeds, with the parameters Hugging Face's client
    // sends.
    let (code, v) = s.json(
        "POST",
        "/",
        json!({ "inputs": TEXTS[1], "parameters": { "normalize": true } }),
    );
    assert_eq!(code, 200);
    assert_eq!(floats(&v[0]), cli_embeddings(&model, &TEXTS[1..2])[0]);

    // OpenAI's route, in floats and in base64.
    let (code, v) = s.json(
        "POST",
        "/v1/embeddings",
        json!({ "input": TEXTS, "model": "minilm" }),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(floats(&d["embedding"]), want[i]);
    }
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    let (_, v) = s.json(
        "POST",
        "/v1/embeddings",
        json!({ "input": TEXTS, "model": "minilm", "encoding_format": "base64" }),
    );
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let bytes = base64_decode(d["embedding"].as_str().unwrap());
        let e: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(e, want[i]);
    }

    // Tokens as `petal tokenize` gives them, with offsets into the text.
    let (code, v) = s.json("POST", "/tokenize", json!({ "inputs": TEXTS[0] }));
    assert_eq!(code, 200);
    let out = petal(&["tokenize", model.to_str().unwrap(), "--json", TEXTS[0]]);
    let ids: Value = serde_json::from_slice::<Value>(&out.stdout).unwrap()["ids"].clone();
    let got_ids: Vec<Value> = v[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(Value::Array(got_ids), ids);
    assert_eq!(v[0][0]["special"], true);
    assert_eq!(v[0][1]["text"], "A");
    assert_eq!(v[0][1]["start"], 0);

    // /info, /health, /metrics.
    let (code, v) = s.json("GET", "/info", Value::Null);
    assert_eq!(code, 200);
    assert_eq!(v["model_dtype"], "q8_0");
    assert_eq!(v["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(v["max_input_length"], 256);
    for k in [
        "max_batch_tokens",
        "max_client_batch_size",
        "max_concurrent_requests",
        "version",
    ] {
        assert!(v[k].is_number() || v[k].is_string(), "{k}: {v}");
    }
    assert_eq!(s.call("GET", "/health", b"").0, 200);
    let (code, m) = s.call("GET", "/metrics", b"");
    assert_eq!(code, 200);
    let m = String::from_utf8(m).unwrap();
    for line in [
        "petal_requests_total{route=\"embed\"} 4",
        "petal_queue_size 0",
        "# TYPE petal_batch_size histogram",
        "# TYPE petal_request_duration_seconds histogram",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    assert!(s.stop().success());
}

/// Standard base64 (what OpenAI's `encoding_format: base64` sends).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| val(c) as u32).collect();
        let n = v.iter().fold(0u32, |a, &x| a << 6 | x) << (6 * (4 - v.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..1 + v.len() * 6 / 8]);
    }
    out
}

#[test]
fn a_classifier_predicts_every_label_highest_first() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_classifier(dir.path());
    let s = Server::start(&model, &[]);
    let out = petal(&[
        "classify",
        model.to_str().unwrap(),
        "--json",
        TEXTS[0],
        TEXTS[1],
    ]);
    let cli: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (code, v) = s.json(
        "POST",
        "/predict",
        json!({ "inputs": [TEXTS[0], TEXTS[1]] }),
    );
    assert_eq!(code, 200, "{v}");
    for (item, c) in v.as_array().unwrap().iter().zip(&cli) {
        let labels = item.as_array().unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels[0]["label"], c["label"]);
        assert!((labels[0]["score"].as_f64().unwrap() - c["score"].as_f64().unwrap()).abs() < 1e-6);
        let scores: Vec<f64> = labels
            .iter()
            .map(|l| l["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    // One text: one flat list; the root route of a classifier predicts.
    let (_, one) = s.json("POST", "/predict", json!({ "inputs": TEXTS[0] }));
    let (_, root) = s.json("POST", "/", json!({ "inputs": TEXTS[0] }));
    assert_eq!(one, v[0]);
    assert_eq!(root, v[0]);
    // Raw scores: the logits, in the same order.
    let (_, raw) = s.json(
        "POST",
        "/predict",
        json!({ "inputs": TEXTS[0], "raw_scores": true }),
    );
    assert_eq!(raw[0]["label"], one[0]["label"]);
    let logits: Vec<f64> = raw
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["score"].as_f64().unwrap())
        .collect();
    assert!(
        (logits.iter().sum::<f64>() - 1.0).abs() > 1e-3,
        "{logits:?}"
    );
    let (_, info) = s.json("GET", "/info", Value::Null);
    assert_eq!(
        info["model_type"]["classifier"]["id2label"],
        json!({ "0": "negative", "1": "neutral", "2": "positive" })
    );
    assert!(s.stop().success());
}

#[test]
fn every_error_has_its_code_and_none_takes_the_service_down() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_classifier(dir.path());
    let s = Server::start(
        &model,
        &["--max-client-batch-size", "4", "--payload-limit", "2000"],
    );
    let err = |code: u16, path: &str, body: &[u8], kind: &str| {
        let (got, b) = s.call("POST", path, body);
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        assert_eq!(got, code, "{path} {:?}: {v}", String::from_utf8_lossy(body));
        assert_eq!(v["error_type"], kind, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    };
    err(400, "/embed", b"{\"inputs\": ", "Validation");
    err(400, "/embed", b"[1, 2]", "Validation");
    err(400, "/embed", b"{\"inputs\": 7}", "Validation");
    err(400, "/embed", b"{\"inputs\": []}", "Empty");
    err(400, "/predict", &[0xff, 0xfe, 0x00], "Validation");
    err(
        413,
        "/embed",
        json!({ "inputs": ["a", "b", "c", "d", "e"] })
            .to_string()
            .as_bytes(),
        "Validation",
    );
    err(413, "/embed", &vec![b' '; 5000], "Validation");
    let long = "word ".repeat(100);
    err(
        422,
        "/embed",
        json!({ "inputs": long, "truncate": false })
            .to_string()
            .as_bytes(),
        "Tokenizer",
    );
    err(
        404,
        "/predict",
        json!({ "inputs": "x", "adapter": "nope" })
            .to_string()
            .as_bytes(),
        "Validation",
    );
    // Truncated on request, it is answered.
    let (code, _) = s.json(
        "POST",
        "/embed",
        json!({ "inputs": long, "truncate": true }),
    );
    assert_eq!(code, 200);
    // OpenAI's route answers in OpenAI's shape.
    let (code, b) = s.call("POST", "/v1/embeddings", b"{\"input\": []}");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(code, 400);
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"] == "invalid_request_error",
        "{v}"
    );
    // Garbage on the socket, a request line without a body, a half-sent request: the service
    // stays up.
    for raw in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"POST /embed HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"inp",
        b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(raw);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    assert_eq!(s.call("GET", "/health", b"").0, 200);
    let (code, m) = s.call("GET", "/metrics", b"");
    assert_eq!(code, 200);
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("petal_errors_total{code=\"413\"} 2"), "{m}");
    assert!(s.stop().success());
}

#[test]
fn a_full_queue_answers_429() {
    let model = minilm();
    let s = Server::start(
        &model,
        &[
            "--max-concurrent-requests",
            "1",
            "--max-client-batch-size",
            "256",
        ],
    );
    // One long request (seconds of encoder time) holds the only slot while a second one comes.
    let long: Vec<String> = (0..256)
        .map(|i| {
            format!(
                "{i} {}",
                "the quick brown fox jumps over the lazy dog ".repeat(24)
            )
        })
        .collect();
    let body = json!({ "inputs": long, "truncate": true }).to_string();
    let addr = s.addr.clone();
    let first = std::thread::spawn(move || http(&addr, "POST", "/embed", body.as_bytes()).0);
    // Once it holds the slot (the queue gauge says so), the next request is refused.
    let start = Instant::now();
    let mut refused = false;
    while !first.is_finished() && start.elapsed() < Duration::from_secs(120) {
        let (_, m) = s.call("GET", "/metrics", b"");
        if String::from_utf8_lossy(&m).contains("petal_queue_size 1") {
            let (code, b) = s.call("POST", "/embed", br#"{"inputs": "hi"}"#);
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(code, 429, "{v}");
            assert_eq!(v["error_type"], "Overloaded");
            refused = true;
            break;
        }
    }
    assert_eq!(first.join().unwrap(), 200);
    assert!(refused, "no request was refused while the queue was full");
    assert!(s.stop().success());
}

#[test]
fn sigterm_answers_what_is_in_flight_and_exits_zero() {
    let model = minilm();
    let s = Server::start(&model, &[]);
    let long: Vec<String> = (0..32)
        .map(|i| {
            format!(
                "{i} {}",
                "a sentence of some length for the encoder ".repeat(20)
            )
        })
        .collect();
    let body = json!({ "inputs": long, "truncate": true }).to_string();
    let addr = s.addr.clone();
    let inflight = std::thread::spawn(move || http(&addr, "POST", "/embed", body.as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    let status = s.stop();
    let (code, body) = inflight.join().unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 32);
    assert!(status.success(), "{status}");
}

#[test]
fn adapters_train_through_the_service_and_survive_a_restart() {
    let model = minilm();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let s = Server::start(&model, &["--data", d]);
    // Examples as JSON lines, then more as a JSON list.
    let lines = std::fs::read_to_string(fewshot("sms-spam", "train-k8-s0.jsonl")).unwrap();
    let all: Vec<&str> = lines.lines().collect();
    let (first, rest) = all.split_at(10);
    let (code, v) = s.call(
        "POST",
        "/adapters/spam/examples",
        first.join("\n").as_bytes(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&v));
    let list: Vec<Value> = rest
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (code, v) = s.json("POST", "/adapters/spam/examples", Value::Array(list));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["examples"], all.len());
    let (code, v) = s.json("GET", "/adapters/spam", Value::Null);
    assert_eq!((code, &v["state"]), (200, &json!("untrained")), "{v}");
    // Bad examples and names are refused.
    assert_eq!(
        s.call("POST", "/adapters/spam/examples", b"{\"text\": 1}")
            .0,
        400
    );
    assert_eq!(s.call("POST", "/adapters/..%2Fx/examples", b"[]").0, 400);
    // Not trained yet.
    let (code, _) = s.json(
        "POST",
        "/predict",
        json!({ "inputs": "hi", "adapter": "spam" }),
    );
    assert_eq!(code, 409);

    let (code, v) = s.json("POST", "/adapters/spam/train", Value::Null);
    assert_eq!(code, 202, "{v}");
    // Inference keeps answering while it trains.
    let (code, _) = s.json("POST", "/embed", json!({ "inputs": "still here" }));
    assert_eq!(code, 200);
    let start = Instant::now();
    let described = loop {
        let (_, v) = s.json("GET", "/adapters/spam", Value::Null);
        match v["state"].as_str() {
            Some("ready") => break v,
            Some("training") => {}
            other => panic!("state {other:?}: {v}"),
        }
        assert!(start.elapsed() < TRAIN_TIMEOUT, "training took too long");
        std::thread::sleep(Duration::from_millis(500));
    };
    let acc = described["held_out_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{described}");

    let texts = [
        "WINNER!! You have been selected for a free cruise, call 09061701461 now",
        "Are we still meeting for lunch at noon?",
    ];
    let (code, served) = s.json(
        "POST",
        "/predict",
        json!({ "inputs": texts, "adapter": "spam" }),
    );
    assert_eq!(code, 200, "{served}");
    // The adapter on disk gives the command line the same predictions.
    let dir = data.path().join("adapters/spam");
    let current = std::fs::read_to_string(dir.join("current")).unwrap();
    let adapter = dir.join(current.trim());
    let out = petal(&[
        "classify",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--json",
        texts[0],
        texts[1],
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (item, c) in served.as_array().unwrap().iter().zip(&cli) {
        assert_eq!(item[0]["label"], c["label"]);
        assert!((item[0]["score"].as_f64().unwrap() - c["score"].as_f64().unwrap()).abs() < 1e-5);
    }
    assert!(s.stop().success());

    // A restart with the same data serves the same adapter.
    let s = Server::start(&model, &["--data", d]);
    let (code, again) = s.json(
        "POST",
        "/predict",
        json!({ "inputs": texts, "adapter": "spam" }),
    );
    assert_eq!(code, 200);
    assert_eq!(again, served);
    let (code, _) = s.json("DELETE", "/adapters/spam", Value::Null);
    assert_eq!(code, 200);
    assert_eq!(s.json("GET", "/adapters/spam", Value::Null).0, 404);
    assert!(!dir.exists());
    assert!(s.stop().success());
}
