//! `petal`: convert checkpoints to GGUF (the host build), run them (embed, classify, tokenize),
//! adapt them from a few examples, evaluate, benchmark, inspect and serve them.
#![forbid(unsafe_code)]

#[cfg(feature = "convert")]
use petal_tools::convert;
use petal_tools::infer::{self, RunArgs};
use petal_tools::{adapt_cmd, inspect, listen, serve};

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
#[cfg(feature = "convert")]
use petal_runtime::quant::TensorType;

/// Run pre-trained language models on small devices.
#[derive(Parser)]
#[command(name = "petal", version)]
struct Cli {
    /// Print only errors on stderr (no progress bar, no log).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Threads for the encoder (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face model folder to one GGUF file.
    #[cfg(feature = "convert")]
    Convert {
        /// The model folder (config.json, model.safetensors, tokenizer.json, and
        /// 1_Pooling/config.json for a sentence-transformers model), or an ONNX file.
        src: PathBuf,
        /// The GGUF file to write (atomically).
        #[arg(short, long)]
        output: PathBuf,
        /// Storage type of the large matrices: f32, f16, q8_0 or q4_0.
        #[arg(long, default_value = "q8_0", value_parser = parse_dtype)]
        dtype: TensorType,
        /// Pooling of the sentence embedding (default: the sentence-transformers config, else
        /// CLS for a model with a head and mean without).
        #[arg(long, value_enum)]
        pooling: Option<convert::Pooling>,
        /// L2-normalize the embedding (default: as the sentence-transformers modules say).
        #[arg(long)]
        normalize: Option<bool>,
        /// The tokenizer.json to embed: required for an ONNX file; for a folder, overrides its own.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Attention heads of an ONNX model, when its graph does not tell.
        #[arg(long)]
        heads: Option<usize>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sentence embeddings of texts (arguments, or stdin one a line): plain (space-separated
    /// numbers, one text a line) or --json lines.
    Embed {
        /// The model file.
        model: PathBuf,
        /// Texts; without any, stdin is read one text a line.
        texts: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Token ids of texts (arguments, or stdin one a line), with the special tokens and the
    /// truncation `embed` uses: space-separated ids, one text a line, or --json lines.
    Tokenize {
        /// The model file.
        model: PathBuf,
        /// Texts; without any, stdin is read one text a line.
        texts: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Classify texts (arguments, or stdin one a line): `label<TAB>score` a line, or --json lines.
    Classify {
        /// The model file (with a classification head, or with --adapter).
        model: PathBuf,
        /// An adapter trained by `petal adapt` for this model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Texts; without any, stdin is read one text a line.
        texts: Vec<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Learn a classifier from a few labelled examples (JSON lines `{"text": ..., "label": ...}`)
    /// over the frozen model; writes a small adapter file.
    Adapt {
        /// The model file.
        model: PathBuf,
        /// Training examples, one JSON object a line.
        #[arg(long)]
        train: PathBuf,
        /// What to train.
        #[arg(long, value_enum, default_value = "default")]
        method: adapt_cmd::MethodArg,
        /// Where to write the adapter: a file for head, bitfit, houlsby and pfeiffer; a PEFT
        /// directory (adapter_config.json + adapter_model.safetensors) for lora, setfit, ia3,
        /// prompt and prefix (and for the default recipe when it picks SetFit-style). Written
        /// atomically.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        train_args: adapt_cmd::AdaptArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Accuracy, macro-F1 and confusion matrix on a labelled test file.
    Eval {
        /// The model file.
        model: PathBuf,
        /// An adapter trained by `petal adapt` for this model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Test examples, one JSON object a line.
        #[arg(long)]
        test: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Latency (batch 1 at 16, 64 and 128 tokens), throughput (batch 8 x 128), cold start and
    /// memory of a model file on this machine.
    Bench {
        /// The model file.
        model: PathBuf,
        /// Timed runs per latency figure.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the model over HTTP with text-embeddings-inference's API (and OpenAI's
    /// /v1/embeddings), with adapters trained on the device through it.
    Serve {
        /// The model file.
        model: PathBuf,
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// Directory for adapters and their examples (trained through the API; kept across
        /// restarts). Without it, only the --adapter ones, and no training.
        #[arg(long)]
        data: Option<PathBuf>,
        /// An adapter to serve, NAME=PATH (a file or PEFT directory from `petal adapt`);
        /// repeatable.
        #[arg(long = "adapter", value_parser = parse_named)]
        adapters: Vec<(String, PathBuf)>,
        /// The adapter that answers /predict and / when a request names none (the service
        /// is then a classifier).
        #[arg(long)]
        default_adapter: Option<String>,
        /// Most tokens in one encoder pass.
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// Most texts in one request.
        #[arg(long, default_value_t = 32)]
        max_client_batch_size: usize,
        /// Most requests waiting for or inside the encoder; more get 429.
        #[arg(long, default_value_t = 512)]
        max_concurrent_requests: usize,
        /// Largest request body, in bytes.
        #[arg(long, default_value_t = 2_000_000)]
        payload_limit: usize,
        /// The model's name in /info and OpenAI's answers (default: the file's name).
        #[arg(long)]
        model_id: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Classify text lines from a serial port: one `label<TAB>score` line back for each (or
    /// `error<TAB>message`), and the label's GPIO line raised.
    Listen {
        /// The model file (with a classification head, or with --adapter).
        model: PathBuf,
        /// An adapter trained by `petal adapt` for this model.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The serial device (a UART such as /dev/ttyAMA0, a USB adapter, a pseudo-terminal).
        #[arg(long)]
        serial: PathBuf,
        /// Its speed.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// The GPIO chip's character device (/dev/gpiochip0) for --lines.
        #[arg(long, requires = "lines")]
        gpio_chip: Option<PathBuf>,
        /// GPIO line offsets, one per label in label order: the predicted label's goes high.
        #[arg(long, value_delimiter = ',', requires = "gpio_chip")]
        lines: Vec<u32>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print a GGUF file's keys and tensors, after checking alignment and bounds.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// With --json, print arrays in full instead of their first elements.
        #[arg(long, requires = "json")]
        full_arrays: bool,
    },
}

#[cfg(feature = "convert")]
fn parse_dtype(s: &str) -> Result<TensorType, String> {
    TensorType::from_name(s).ok_or_else(|| format!("unknown dtype {s:?} (f32, f16, q8_0, q4_0)"))
}

fn progress_bar(quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(0);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    pb
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok((n.to_string(), PathBuf::from(p))),
        _ => Err(format!("{s:?}: expected NAME=PATH")),
    }
}

#[cfg(feature = "convert")]
fn convert_summary(r: &convert::ConvertReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let w = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4);
    let _ = writeln!(
        o,
        "{:<w$}  {:<5}  {:<14}  {:>10}  {:>10}",
        "tensor", "type", "shape", "bytes", "rel.rms"
    );
    for t in &r.tensors {
        let err = t
            .rel_rms_error
            .map_or("-".to_string(), |e| format!("{e:.3e}"));
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            o,
            "{:<w$}  {:<5}  {:<14}  {:>10}  {:>10}",
            t.name, t.ty, shape, t.bytes, err
        );
    }
    let _ = writeln!(
        o,
        "wrote {}: {} {} ({} tensors, {} bytes, {:.1} MB); pooling {}, normalize {}",
        r.output,
        r.architecture,
        r.dtype,
        r.tensors.len(),
        r.file_bytes,
        r.file_bytes as f64 / 1e6,
        r.pooling.name(),
        r.normalize
    );
    let worst = r
        .tensors
        .iter()
        .filter_map(|t| Some((t.rel_rms_error?, t)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((e, t)) = worst {
        let _ = writeln!(o, "largest relative RMS error: {e:.3e} ({})", t.name);
    }
    if let Some(l) = &r.labels {
        let _ = writeln!(o, "labels: {}", l.join(", "));
    }
    if !r.dropped.is_empty() {
        let _ = writeln!(
            o,
            "dropped (unused without a head): {}",
            r.dropped.join(", ")
        );
    }
    o
}

/// The model, the adapter when given, and the labels predictions name (the adapter's, else
/// the file's head's; an error when there is neither).
fn open_classifier(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    run: &RunArgs,
) -> Result<(
    petal_runtime::pipeline::Model,
    Option<petal_adapt::adapter::Adapter>,
    Vec<String>,
)> {
    let m = infer::open(model, run)?;
    let head = adapter
        .map(|a| adapt_cmd::load_adapter(&m, a))
        .transpose()?;
    let labels = match &head {
        Some(h) => h.labels.clone(),
        None => m.encoder().config().labels.clone().ok_or_else(|| {
            anyhow!(
                "{}: this model has no classification head (pass --adapter from `petal adapt`)",
                model.display()
            )
        })?,
    };
    Ok((m, head, labels))
}

/// Writes a result to stdout; a closed pipe (`petal inspect m.gguf | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    infer::write_out(text).map(|_| ())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        #[cfg(feature = "convert")]
        Command::Convert {
            src,
            output,
            dtype,
            pooling,
            normalize,
            tokenizer,
            heads,
            json,
        } => {
            let opts = convert::ConvertOptions {
                src,
                out: output,
                dtype,
                pooling,
                normalize,
                tokenizer,
                heads,
            };
            let report = convert::convert(&opts, &progress_bar(cli.quiet))?;
            if json {
                emit(&(serde_json::to_string(&report)? + "\n"))?;
            } else {
                emit(&convert_summary(&report))?;
            }
        }
        Command::Embed { model, texts, run } => {
            let (petal, tract) = match run.engine {
                infer::Engine::Petal => (Some(infer::open(&model, &run)?), None),
                infer::Engine::Tract => (None, Some(infer::open_tract(&model, &run)?)),
            };
            let mut open = true;
            infer::for_each_batch(&texts, run.batch_size, |batch| {
                let emb = match (&petal, &tract) {
                    (Some(m), _) => m.embed(batch)?,
                    (_, Some(t)) => t.embed(batch, run.normalize)?,
                    _ => unreachable!("one engine is open"),
                };
                let out: String = batch
                    .iter()
                    .zip(&emb)
                    .map(|(t, e)| infer::format_embedding(t, e, run.json))
                    .collect();
                if open {
                    open = infer::write_out(&out)?;
                }
                Ok(())
            })?;
            // The process ends here: the OS takes the model back at once, instead of its
            // tokenizer tables being freed entry by entry (a sixth of a cold start).
            std::mem::forget((petal, tract));
        }
        Command::Tokenize { model, texts, run } => {
            if run.engine == infer::Engine::Tract {
                bail!("{}: tokenize reads a GGUF file", model.display());
            }
            let m = infer::open(&model, &run)?;
            let mut open = true;
            infer::for_each_batch(&texts, run.batch_size, |batch| {
                let mut out = String::new();
                for t in batch {
                    let (ids, _) = m.tokenize(t)?;
                    if run.json {
                        out += &serde_json::json!({ "text": t, "ids": ids }).to_string();
                    } else {
                        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                        out += &ids.join(" ");
                    }
                    out.push('\n');
                }
                if open {
                    open = infer::write_out(&out)?;
                }
                Ok(())
            })?;
        }
        Command::Classify {
            model,
            adapter,
            texts,
            run,
        } => {
            if run.engine == infer::Engine::Tract {
                bail!("{}: the tract engine only embeds (classification needs a GGUF file with a head)", model.display());
            }
            let (m, head, labels) = open_classifier(&model, adapter.as_deref(), &run)?;
            let mut open = true;
            infer::for_each_batch(&texts, run.batch_size, |batch| {
                let preds = adapt_cmd::predict(&m, head.as_ref(), batch)?;
                let out: String = batch
                    .iter()
                    .zip(&preds)
                    .map(|(t, p)| infer::format_prediction(t, p, &labels, run.json))
                    .collect();
                if open {
                    open = infer::write_out(&out)?;
                }
                Ok(())
            })?;
            // As for `embed`: left to the OS at exit.
            std::mem::forget((m, head));
        }
        Command::Adapt {
            model,
            train,
            method,
            output,
            train_args,
            run,
        } => {
            let m = infer::open(&model, &run)?;
            let quiet = cli.quiet;
            let bars = |what: &str| {
                let pb = progress_bar(quiet);
                pb.set_message(what.to_string());
                pb
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            // Ctrl-C ends training at the next step and keeps the best parameters so far.
            if let Err(e) =
                ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed))
            {
                log::warn!("Ctrl-C will not keep the adapter: {e}");
            }
            let s = adapt_cmd::adapt(
                &m,
                &train,
                method,
                &train_args,
                &output,
                run.batch_size,
                &stop,
                &bars,
            )?;
            if run.json {
                emit(&(serde_json::to_string(&s)? + "\n"))?;
            } else {
                emit(&format!(
                    "wrote {}: {} over {} examples, labels {}; {} trainable values, {} steps, loss {:.4}, training accuracy {:.3}, {:.1} s{}\n",
                    s.output, s.method, s.examples, s.labels.join(", "), s.trainable, s.steps, s.final_loss, s.train_accuracy, s.seconds,
                    if s.stopped_early { " (stopped early)" } else { "" }
                ))?;
            }
        }
        Command::Eval {
            model,
            adapter,
            test,
            run,
        } => {
            let m = infer::open(&model, &run)?;
            let head = adapter
                .as_deref()
                .map(|a| adapt_cmd::load_adapter(&m, a))
                .transpose()?;
            let r = adapt_cmd::evaluate(
                &m,
                head.as_ref(),
                &test,
                run.batch_size,
                &progress_bar(cli.quiet),
            )?;
            emit(&adapt_cmd::format_report(&r, run.json))?;
        }
        Command::Bench { model, runs, json } => {
            let threads = petal_runtime::kernels::threads();
            let r = petal_tools::bench::bench(&model, runs.max(1), threads)?;
            emit(&if json {
                serde_json::to_string(&r)? + "\n"
            } else {
                petal_tools::bench::format(&r)
            })?;
        }
        Command::Inspect {
            file,
            json,
            full_arrays,
        } => emit(&inspect::inspect(&file, json, full_arrays)?)?,
        Command::Listen {
            model,
            adapter,
            serial,
            baud,
            gpio_chip,
            lines,
            run,
        } => {
            let (m, head, labels) = open_classifier(&model, adapter.as_deref(), &run)?;
            let gpio = gpio_chip.as_deref().map(|chip| listen::Gpio {
                chip,
                lines: &lines,
            });
            listen::listen(&m, head.as_ref(), &labels, &serial, baud, gpio)?;
        }
        Command::Serve {
            model,
            bind,
            data,
            adapters,
            default_adapter,
            max_batch_tokens,
            max_client_batch_size,
            max_concurrent_requests,
            payload_limit,
            model_id,
            run,
        } => {
            let m = infer::open(&model, &run)?;
            let model_id = model_id.unwrap_or_else(|| {
                model
                    .file_stem()
                    .map_or("petal".into(), |s| s.to_string_lossy().into_owned())
            });
            serve::serve(
                m,
                serve::ServeOptions {
                    bind,
                    data,
                    adapters,
                    default_adapter,
                    max_batch_tokens: max_batch_tokens.max(1),
                    max_client_batch_size: max_client_batch_size.max(1),
                    max_concurrent_requests,
                    payload_limit,
                    model_id,
                },
            )?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if cli.quiet {
        "error"
    } else {
        "info"
    }))
    .format_timestamp(None)
    .init();
    if cli.threads == Some(0) {
        eprintln!("error: --threads must be at least 1");
        return ExitCode::FAILURE;
    }
    let n = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Err(e) = petal_runtime::kernels::set_threads(n) {
        eprintln!("error: cannot start {n} threads: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: {}",
                anyhow!(e)
                    .chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            ExitCode::FAILURE
        }
    }
}
