//! `petal serve`: one model file behind the HTTP API of Hugging Face's
//! text-embeddings-inference (TEI), so that its clients work unchanged, with OpenAI's
//! embeddings route beside it and on-device personalization (adapters trained from examples
//! posted to the service).
//!
//! Requests are parsed and tokenized on the HTTP runtime (tokio, one thread); their texts wait
//! in one queue, and one encoder thread takes every waiting request, up to `max_batch_tokens`
//! tokens, into each pass on the thread pool (dynamic batching). SIGTERM or Ctrl-C stops
//! accepting connections, answers what is in flight and exits.

mod adapters;
mod batch;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use petal_runtime::pipeline::Model;
use serde::Deserialize;
use serde_json::{json, Value};

use adapters::{Store, StoreError};
use batch::{Job, Output, Work};
use metrics::Metrics;

/// The service's limits and names, as `GET /info` reports them.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen, `host:port`.
    pub bind: String,
    /// Where adapters and their examples are kept (none: only `--adapter` ones, no training).
    pub data: Option<PathBuf>,
    /// Adapters to serve, `(name, path)`.
    pub adapters: Vec<(String, PathBuf)>,
    /// The adapter that answers `/predict` and `/` when a request names none.
    pub default_adapter: Option<String>,
    /// Most tokens in one encoder pass.
    pub max_batch_tokens: usize,
    /// Most texts in one request.
    pub max_client_batch_size: usize,
    /// Most requests waiting for or inside the encoder; more are refused with 429.
    pub max_concurrent_requests: usize,
    /// Largest request body, in bytes.
    pub payload_limit: usize,
    /// The model's name in `/info` and OpenAI's answers.
    pub model_id: String,
}

/// Everything a request handler reads.
struct Service {
    model: Arc<Model>,
    opts: ServeOptions,
    dtype: String,
    /// The file's own head's labels.
    labels: Option<Vec<String>>,
    adapters: Store,
    metrics: Arc<Metrics>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

type Shared = Arc<Service>;

/// Runs the service until SIGTERM or Ctrl-C.
pub fn serve(model: Model, opts: ServeOptions) -> Result<()> {
    let dtype = dtype_of(&model);
    let labels = model.encoder().config().labels.clone();
    let adapters = Store::open(&model, opts.data.as_deref(), &opts.adapters)?;
    if let Some(name) = &opts.default_adapter {
        if adapters.get(name).and_then(|e| e.adapter()).is_none() {
            anyhow::bail!("--default-adapter {name}: no trained adapter of that name (give it with --adapter {name}=PATH, or train it under --data)");
        }
    }
    let model = Arc::new(model);
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::channel::<Job>();
    let encoder = {
        let (model, metrics, max) = (model.clone(), metrics.clone(), opts.max_batch_tokens);
        std::thread::Builder::new()
            .name("encoder".into())
            .spawn(move || batch::run(&model, rx, max, &metrics))
            .context("cannot start the encoder thread")?
    };
    let service = Arc::new(Service {
        model,
        dtype,
        labels,
        adapters,
        metrics,
        queue: Mutex::new(Some(tx)),
        opts: opts.clone(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&opts.bind)
            .await
            .with_context(|| format!("cannot listen on {}", opts.bind))?;
        let addr: SocketAddr = listener.local_addr()?;
        // The line scripts wait for (the port, when `--bind` asked for port 0).
        log::info!("listening on http://{addr}");
        eprintln!("petal serve: listening on http://{addr}");
        axum::serve(listener, router(service.clone()))
            .with_graceful_shutdown(shutdown())
            .await
            .context("the HTTP server failed")
    })?;
    // Every request is answered: let the encoder finish its queue and stop.
    service
        .queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    drop(service);
    let _ = encoder.join();
    eprintln!("petal serve: stopped");
    Ok(())
}

/// Resolves at SIGTERM or Ctrl-C.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    log::info!("stopping: answering the requests in flight");
}

fn router(s: Shared) -> Router {
    let limit = s.opts.payload_limit;
    Router::new()
        .route("/", post(root))
        .route("/embed", post(embed))
        .route("/predict", post(predict))
        .route("/tokenize", post(tokenize))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/adapters", get(list_adapters))
        .route("/adapters/{name}", get(get_adapter).delete(delete_adapter))
        .route("/adapters/{name}/examples", post(add_examples))
        .route("/adapters/{name}/train", post(train_adapter))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(s)
}

/// The file's storage type of its large matrices, for `/info`.
fn dtype_of(model: &Model) -> String {
    model
        .encoder()
        .weights()
        .layers
        .first()
        .map_or("unknown".to_string(), |l| {
            l.q.weight.ty.to_string().to_lowercase()
        })
}

/// An error answer in TEI's shape (`{"error", "error_type"}`) or OpenAI's.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    openai: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            openai: false,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Validation", message)
    }

    fn openai(mut self) -> Self {
        self.openai = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.openai {
            json!({ "error": {
                "message": self.message,
                "type": if self.status.is_server_error() { "server_error" } else { "invalid_request_error" },
                "param": null,
                "code": self.status.as_u16(),
            }})
        } else {
            json!({ "error": self.message, "error_type": self.kind })
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::NoData => StatusCode::CONFLICT,
            StoreError::NotFound => StatusCode::NOT_FOUND,
            StoreError::Busy => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, "Validation", e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Times a handler's answer into the metrics.
async fn timed(
    s: &Shared,
    route: &'static str,
    f: impl std::future::Future<Output = ApiResult>,
) -> Response {
    let start = Instant::now();
    let r = match f.await {
        Ok(r) => r,
        Err(e) => {
            log::debug!("{route}: {} {}", e.status, e.message);
            e.into_response()
        }
    };
    s.metrics
        .request(route, r.status().as_u16(), start.elapsed());
    r
}

/// The request's body, or 413 over the size limit, 400 unreadable.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Validation",
                "the request body is over the size limit",
            )
        } else {
            ApiError::bad(format!("cannot read the request body: {e}"))
        }
    })
}

/// The request's JSON object, or 400 (malformed) / 413 (over the size limit). The keys of a
/// `"parameters"` object (what Hugging Face's Python client sends) count as top-level keys.
fn body_json<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    let mut v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("malformed JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| ApiError::bad("the request body must be a JSON object"))?;
    if let Some(Value::Object(params)) = obj.remove("parameters") {
        for (k, p) in params {
            obj.insert(k, p);
        }
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("malformed request: {e}")))
}

/// One text or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    fn into_vec(self) -> (Vec<String>, bool) {
        match self {
            Inputs::One(t) => (vec![t], false),
            Inputs::Many(v) => (v, true),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: bool,
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Inputs,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    adapter: Option<String>,
}

#[derive(Deserialize)]
struct TokenizeRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

#[derive(Deserialize)]
struct OpenAiRequest {
    input: Inputs,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// Checks the batch and counts its tokens: 400 empty, 413 too many texts, 422 a text over the
/// model's length with `truncate` false.
fn validate(s: &Service, texts: &[String], truncate: bool) -> Result<usize, ApiError> {
    let tok = checked_batch(s, texts)?;
    let mut tokens = 0;
    for (i, t) in texts.iter().enumerate() {
        let enc = tok.encode(t.as_str(), true).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Tokenizer",
                format!("input {i}: {e}"),
            )
        })?;
        if !truncate && !enc.get_overflowing().is_empty() {
            let all: usize =
                enc.len() + enc.get_overflowing().iter().map(|o| o.len()).sum::<usize>();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Tokenizer",
                format!(
                    "input {i}: {all} tokens or more > the model's maximum of {} (send \"truncate\": true to truncate)",
                    s.model.max_length()
                ),
            ));
        }
        tokens += enc.len();
    }
    Ok(tokens)
}

/// Checks the number of texts (400 none, 413 more than `max_client_batch_size`) and returns the
/// model's tokenizer.
fn checked_batch<'a>(
    s: &'a Service,
    texts: &[String],
) -> Result<&'a tokenizers::Tokenizer, ApiError> {
    if texts.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Empty",
            "`inputs` is empty",
        ));
    }
    if texts.len() > s.opts.max_client_batch_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!(
                "batch size {} > maximum allowed batch size {}",
                texts.len(),
                s.opts.max_client_batch_size
            ),
        ));
    }
    s.model
        .tokenizer()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()))
}

/// A slot in the queue, given back when dropped.
struct Slot<'a>(&'a Metrics);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.queue.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Queues `texts` for the encoder and waits for the answer; 429 when the queue is full.
async fn run(
    s: &Service,
    texts: Vec<String>,
    tokens: usize,
    work: Work,
) -> Result<Output, ApiError> {
    let waiting = s.metrics.queue.fetch_add(1, Ordering::AcqRel);
    let _slot = Slot(&s.metrics);
    if waiting >= s.opts.max_concurrent_requests {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Overloaded",
            format!("model is overloaded: {waiting} requests in the queue"),
        ));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job {
        texts,
        tokens,
        work,
        reply,
    };
    let sent = match s.queue.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(q) => q.send(job).is_ok(),
        None => false,
    };
    if !sent {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unhealthy",
            "the service is stopping",
        ));
    }
    match answer.await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            e,
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            "the encoder stopped",
        )),
    }
}

fn json_response(v: &impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

async fn embed(State(s): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    timed(&s.clone(), "embed", embed_inner(s, body)).await
}

async fn embed_inner(s: Shared, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let r: EmbedRequest = body_json(body)?;
    let (texts, _) = r.inputs.into_vec();
    let tokens = validate(&s, &texts, r.truncate)?;
    match run(
        &s,
        texts,
        tokens,
        Work::Embed {
            normalize: r.normalize,
        },
    )
    .await?
    {
        Output::Embeddings(v) => json_response(&v),
        Output::Predictions(_) => unreachable!("an embedding job gets embeddings"),
    }
}

/// The adapter a prediction request names, or the default one; `None` for the file's head.
fn head_for(s: &Service, name: Option<&str>) -> Result<Work, ApiError> {
    let name = name.or(s.opts.default_adapter.as_deref());
    match name {
        Some(n) => {
            let entry = s.adapters.get(n).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "Validation",
                    format!("no adapter {n:?}"),
                )
            })?;
            let a = entry.adapter().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "Validation",
                    format!("adapter {n:?} is not trained yet"),
                )
            })?;
            Ok(Work::Predict { adapter: Some(a) })
        }
        None if s.labels.is_some() => Ok(Work::Predict { adapter: None }),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Validation",
            "this model has no classification head: name an adapter (\"adapter\": NAME)",
        )),
    }
}

async fn predict(State(s): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    timed(&s.clone(), "predict", predict_inner(s, body)).await
}

async fn predict_inner(s: Shared, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let r: PredictRequest = body_json(body)?;
    let (texts, many) = r.inputs.into_vec();
    let work = head_for(&s, r.adapter.as_deref())?;
    let labels: Vec<String> = match &work {
        Work::Predict { adapter: Some(a) } => a.labels.clone(),
        _ => s.labels.clone().unwrap_or_default(),
    };
    let tokens = validate(&s, &texts, r.truncate)?;
    let preds = match run(&s, texts, tokens, work).await? {
        Output::Predictions(p) => p,
        Output::Embeddings(_) => unreachable!("a prediction job gets predictions"),
    };
    let labels_of = |p: &petal_runtime::pipeline::Prediction| -> Vec<Value> {
        let values = if r.raw_scores { &p.logits } else { &p.scores };
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        order
            .into_iter()
            .map(|i| json!({ "score": values[i], "label": labels[i] }))
            .collect()
    };
    let out: Vec<Vec<Value>> = preds.iter().map(labels_of).collect();
    if many {
        json_response(&out)
    } else {
        json_response(&out[0])
    }
}

/// TEI's root route: what `/embed` or `/predict` does, as the model is an embedding model or a
/// classifier (a file with a head, or a default adapter).
async fn root(State(s): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    if s.labels.is_some() || s.opts.default_adapter.is_some() {
        timed(&s.clone(), "predict", predict_inner(s, body)).await
    } else {
        timed(&s.clone(), "embed", embed_inner(s, body)).await
    }
}

async fn tokenize(State(s): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let s2 = s.clone();
    timed(&s2, "tokenize", async move {
        let r: TokenizeRequest = body_json(body)?;
        let (texts, _) = r.inputs.into_vec();
        let tok = checked_batch(&s, &texts)?;
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let enc = tok.encode(t.as_str(), r.add_special_tokens).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Tokenizer",
                    format!("input {i}: {e}"),
                )
            })?;
            let tokens: Vec<Value> = (0..enc.len())
                .map(|j| {
                    let special = enc.get_special_tokens_mask()[j] == 1;
                    let (start, stop) = enc.get_offsets()[j];
                    let text = if special {
                        enc.get_tokens()[j].clone()
                    } else {
                        t.get(start..stop)
                            .unwrap_or(&enc.get_tokens()[j])
                            .to_string()
                    };
                    json!({
                        "id": enc.get_ids()[j],
                        "text": text,
                        "special": special,
                        "start": if special { Value::Null } else { json!(start) },
                        "stop": if special { Value::Null } else { json!(stop) },
                    })
                })
                .collect();
            out.push(tokens);
        }
        json_response(&out)
    })
    .await
}

async fn openai_embeddings(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s2 = s.clone();
    timed(&s2, "v1/embeddings", async move {
        let r: OpenAiRequest = body_json(body).map_err(ApiError::openai)?;
        let (texts, _) = r.input.into_vec();
        let tokens = validate(&s, &texts, true).map_err(ApiError::openai)?;
        let base64 = match r.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(
                    ApiError::bad(format!("encoding_format {other:?}: float or base64")).openai(),
                )
            }
        };
        let emb = match run(&s, texts, tokens, Work::Embed { normalize: true })
            .await
            .map_err(ApiError::openai)?
        {
            Output::Embeddings(v) => v,
            Output::Predictions(_) => unreachable!("an embedding job gets embeddings"),
        };
        let data: Vec<Value> = emb
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(e)
                };
                json!({ "object": "embedding", "index": i, "embedding": embedding })
            })
            .collect();
        json_response(&json!({
            "object": "list",
            "data": data,
            "model": r.model.unwrap_or_else(|| s.opts.model_id.clone()),
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }))
    })
    .await
}

async fn info(State(s): State<Shared>) -> Response {
    let s2 = s.clone();
    timed(&s2, "info", async move {
        let cfg = s.model.encoder().config();
        let classifier = match (&s.opts.default_adapter, &s.labels) {
            (Some(name), _) => s
                .adapters
                .get(name)
                .and_then(|e| e.adapter())
                .map(|a| a.labels.clone()),
            (None, Some(l)) => Some(l.clone()),
            (None, None) => None,
        };
        let model_type = match classifier {
            Some(labels) => {
                let id2label: serde_json::Map<String, Value> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i.to_string(), json!(l)))
                    .collect();
                let label2id: serde_json::Map<String, Value> = labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), json!(i)))
                    .collect();
                json!({ "classifier": { "id2label": id2label, "label2id": label2id } })
            }
            None => json!({ "embedding": { "pooling": match cfg.pooling {
                petal_runtime::config::Pooling::Mean => "mean",
                petal_runtime::config::Pooling::Cls => "cls",
            } } }),
        };
        json_response(&json!({
            "model_id": s.opts.model_id,
            "model_sha": null,
            "model_dtype": s.dtype,
            "model_type": model_type,
            "max_concurrent_requests": s.opts.max_concurrent_requests,
            "max_input_length": s.model.max_length(),
            "max_batch_tokens": s.opts.max_batch_tokens,
            "max_batch_requests": null,
            "max_client_batch_size": s.opts.max_client_batch_size,
            "tokenization_workers": 1,
            "version": env!("CARGO_PKG_VERSION"),
            "adapters": s.adapters.names(),
        }))
    })
    .await
}

async fn health(State(s): State<Shared>) -> Response {
    timed(&s.clone(), "health", async {
        Ok(StatusCode::OK.into_response())
    })
    .await
}

async fn prometheus(State(s): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found(State(s): State<Shared>) -> Response {
    timed(&s.clone(), "other", async {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Validation",
            "no such route",
        ))
    })
    .await
}

async fn list_adapters(State(s): State<Shared>) -> Response {
    let s2 = s.clone();
    timed(&s2, "adapters", async move {
        let all: Vec<Value> = s
            .adapters
            .names()
            .iter()
            .filter_map(|n| s.adapters.describe(n))
            .collect();
        json_response(&all)
    })
    .await
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if adapters::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "adapter name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

async fn get_adapter(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let s2 = s.clone();
    timed(&s2, "adapters", async move {
        checked_name(&name)?;
        let d = s.adapters.describe(&name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "Validation",
                format!("no adapter {name:?}"),
            )
        })?;
        json_response(&d)
    })
    .await
}

async fn delete_adapter(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let s2 = s.clone();
    timed(&s2, "adapters", async move {
        checked_name(&name)?;
        if s.opts.default_adapter.as_deref() == Some(name.as_str()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Validation",
                format!("adapter {name:?} is the service's default adapter"),
            ));
        }
        s.adapters.delete(&name)?;
        json_response(&json!({ "deleted": name }))
    })
    .await
}

async fn add_examples(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let s2 = s.clone();
    timed(&s2, "adapters", async move {
        checked_name(&name)?;
        let bytes = body_bytes(body)?;
        let text =
            std::str::from_utf8(&bytes).map_err(|_| ApiError::bad("the body is not UTF-8"))?;
        let source = std::path::Path::new("request body");
        let examples = if text.trim_start().starts_with('[') {
            let list: Vec<Value> = serde_json::from_str(text)
                .map_err(|e| ApiError::bad(format!("malformed JSON: {e}")))?;
            let lines: String = list.iter().map(|v| v.to_string() + "\n").collect();
            petal_adapt::data::parse_jsonl(&lines, source)
        } else {
            petal_adapt::data::parse_jsonl(text, source)
        }
        .map_err(|e| ApiError::bad(e.to_string()))?;
        if examples.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Empty",
                "no examples in the body",
            ));
        }
        let added = examples.len();
        // A small file rewritten whole: quick enough for the HTTP thread.
        let total = s.adapters.add_examples(&name, examples)?;
        json_response(&json!({ "name": name, "added": added, "examples": total }))
    })
    .await
}

async fn train_adapter(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    let s2 = s.clone();
    timed(&s2, "adapters", async move {
        checked_name(&name)?;
        s.adapters.train(&name, s.model.clone())?;
        let d = s.adapters.describe(&name);
        Ok((StatusCode::ACCEPTED, axum::Json(d)).into_response())
    })
    .await
}
