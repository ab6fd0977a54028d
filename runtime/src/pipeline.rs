//! Text in, embeddings or predictions out: the model file mapped, its tokenizer, the encoder.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::sync::OnceLock;
use std::vec::Vec;

use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{probabilities, Encoder, ForwardError, Hooks, Input};
use crate::config::LoadError;
use crate::gguf::names;
use crate::head::{HeadInput, LinearHead};
use crate::mmap::Mapping;

/// Where a model's bytes live.
#[derive(Debug)]
pub enum Storage {
    /// Memory-mapped, read-only (the default).
    Mapped(Mapping),
    /// Read into memory (for filesystems where mapping is unsafe or unavailable).
    Buffered(Vec<u8>),
}

impl AsRef<[u8]> for Storage {
    fn as_ref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m.bytes(),
            Storage::Buffered(b) => b,
        }
    }
}

/// Errors of the text pipeline.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a usable model.
    Load {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: LoadError,
    },
    /// The file's tokenizer could not be built, or tokenization failed.
    Tokenize {
        /// The model file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// The encoder refused the input.
    Forward(ForwardError),
    /// `classify` on a model without a classification head.
    NoHead,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Load { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Tokenize { path, message } => {
                write!(f, "{}: embedded tokenizer: {message}", path.display())
            }
            Error::Forward(e) => e.fmt(f),
            Error::NoHead => write!(
                f,
                "this model has no classification head (convert a checkpoint with one, or adapt one with `petal adapt`)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// One text's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The most probable label.
    pub label: String,
    /// Its index.
    pub index: usize,
    /// Its probability.
    pub score: f32,
    /// Every label's probability, in label order.
    pub scores: Vec<f32>,
    /// Every label's logit (the scores before softmax), in label order.
    pub logits: Vec<f32>,
}

/// A model file ready for text: `Send + Sync`, so one model serves many threads.
///
/// ```no_run
/// use petal_runtime::pipeline::Model;
///
/// let model = Model::open("assets/models/minilm-q8_0.gguf")?;
/// let embeddings = model.embed(&["A cat sits on the mat.", "Markets fell today."])?;
/// assert_eq!(embeddings[0].len(), 384);
///
/// let classifier = Model::open("sentiment.gguf")?; // converted from a checkpoint with a head
/// for p in classifier.classify(&["what a lovely day"])? {
///     println!("{} {:.3}", p.label, p.score);
/// }
/// # Ok::<(), petal_runtime::pipeline::Error>(())
/// ```
#[derive(Debug)]
pub struct Model {
    encoder: Encoder<Storage>,
    /// The tokenizer's JSON description.
    tokenizer_json: TokenizerSource,
    /// Built from the embedded JSON on first use: opening a model allocates almost nothing.
    tokenizer: OnceLock<Result<Tokenizer, String>>,
    max_length: usize,
    batch_size: usize,
    /// The file, for messages.
    path: PathBuf,
}

/// Where a model's tokenizer description comes from.
#[derive(Debug)]
enum TokenizerSource {
    /// `tokenizer.huggingface.json`, at this range of the file (not copied).
    InFile(Range<usize>),
    /// Rebuilt from llama.cpp's `tokenizer.ggml.*` keys (a file written by another converter).
    Rebuilt(String),
}

/// Texts encoded per forward pass by default.
pub const DEFAULT_BATCH_SIZE: usize = 8;

impl Model {
    /// Maps the file at `path` read-only and loads it without copying weights.
    ///
    /// The mapping relies on the file not being truncated while the model is open: on a
    /// filesystem where another process may do that (or where mapping fails), use
    /// [`Model::open_buffered`], since a truncated mapping kills the process with SIGBUS.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let map = Mapping::open(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_storage(Storage::Mapped(map), path)
    }

    /// Reads the whole file at `path` into memory and loads it.
    pub fn open_buffered(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_storage(Storage::Buffered(bytes), path)
    }

    /// Loads a model from bytes already in `storage`; `path` names it in errors.
    pub fn from_storage(storage: Storage, path: &Path) -> Result<Self, Error> {
        let load = |source| Error::Load {
            path: path.into(),
            source,
        };
        // Where the tokenizer's JSON lies in the file, as an offset range (the bytes move
        // with the storage into the encoder).
        let (encoder, tokenizer_json) = Encoder::new_with(storage, |g| {
            match g.get(names::TOKENIZER_HF_JSON) {
                Some(v) => {
                    let json = v.as_str().ok_or_else(|| LoadError::BadKey {
                        key: names::TOKENIZER_HF_JSON.into(),
                        expected: "a string",
                    })?;
                    let start = json.as_ptr() as usize - g.bytes().as_ptr() as usize;
                    Ok(TokenizerSource::InFile(start..start + json.len()))
                }
                // A BERT file from llama.cpp's converter has only the ggml vocabulary.
                None => crate::ggml_vocab::wordpiece_json(g).map(TokenizerSource::Rebuilt),
            }
        })
        .map_err(load)?;
        let max_length = encoder
            .config()
            .max_seq_length
            .map_or(encoder.max_tokens(), |n| n.clamp(2, encoder.max_tokens()));
        Ok(Model {
            encoder,
            tokenizer_json,
            tokenizer: OnceLock::new(),
            max_length,
            batch_size: DEFAULT_BATCH_SIZE,
            path: path.into(),
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder<Storage> {
        &self.encoder
    }

    /// Longest token sequence; longer texts are truncated. By default the file's
    /// `petal.max_seq_length` (sentence-transformers' truncation) when it has one, else the
    /// model's positions; never more than the positions.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Sets the longest token sequence (clamped to 2 ..= the model's positions).
    pub fn set_max_length(&mut self, n: usize) {
        self.max_length = n.clamp(2, self.encoder.max_tokens());
        // Rebuilt with the new truncation on next use.
        self.tokenizer = OnceLock::new();
    }

    /// The tokenizer, built from the JSON in the file on first call.
    pub fn tokenizer(&self) -> Result<&Tokenizer, Error> {
        let built = self.tokenizer.get_or_init(|| {
            let json = match &self.tokenizer_json {
                // The range was cut from a valid UTF-8 string of this very file.
                TokenizerSource::InFile(r) => std::str::from_utf8(&self.encoder.bytes()[r.clone()])
                    .map_err(|e| e.to_string())?,
                TokenizerSource::Rebuilt(json) => json.as_str(),
            };
            let mut t = tokenizer_from_json(json)?;
            t.with_padding(None);
            t.with_truncation(Some(TruncationParams {
                max_length: self.max_length,
                ..Default::default()
            }))
            .map_err(|e| e.to_string())?;
            Ok(t)
        });
        built.as_ref().map_err(|e| Error::Tokenize {
            path: self.path.clone(),
            message: e.clone(),
        })
    }

    /// Sets how many texts go through the encoder together (at least 1).
    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n.max(1);
    }

    /// Token ids and type ids of `text`, with special tokens, truncated to `max_length`.
    pub fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>), Error> {
        let enc = self
            .tokenizer()?
            .encode(text, true)
            .map_err(|e| Error::Tokenize {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Runs `texts` through the encoder in batches, calling `each` with every batch's output;
    /// without hooks, by [`Encoder::infer`] (a batch in parts on the thread pool).
    fn run<T>(
        &self,
        texts: &[&str],
        mut hooks: Option<&mut dyn Hooks>,
        mut each: impl FnMut(&crate::bert::Hidden) -> Vec<T>,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            let (mut ids, mut types, mut lens) = (Vec::new(), Vec::new(), Vec::new());
            for text in chunk {
                let (i, t) = self.tokenize(text)?;
                lens.push(i.len());
                ids.extend(i);
                types.extend(t);
            }
            let input = Input {
                ids: &ids,
                type_ids: Some(&types),
                lens: &lens,
            };
            let hidden = match hooks.as_deref_mut() {
                Some(hooks) => self.encoder.forward(&input, hooks),
                None => self.encoder.infer(&input),
            }
            .map_err(Error::Forward)?;
            out.extend(each(&hidden));
        }
        Ok(out)
    }

    /// Sentence embeddings of `texts`, pooled and normalized as the file says.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        self.run(texts, None, |h| self.encoder.pool(h))
    }

    /// Sentence embeddings of `texts`, pooled as the file says, L2-normalized or not as
    /// `normalize` says (whatever the file says).
    pub fn embed_normalized(
        &self,
        texts: &[&str],
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, Error> {
        self.run(texts, None, |h| self.encoder.pool_with(h, normalize))
    }

    /// [`Model::embed`] with hooks in the forward pass (adapters).
    pub fn embed_with(
        &self,
        texts: &[&str],
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<Vec<f32>>, Error> {
        self.run(texts, Some(hooks), |h| self.encoder.pool(h))
    }

    /// Predictions for `texts` by the file's head; an error if the model has none.
    pub fn classify(&self, texts: &[&str]) -> Result<Vec<Prediction>, Error> {
        let labels = self.encoder.config().labels.as_ref().ok_or(Error::NoHead)?;
        let logits = self.run(texts, None, |h| self.encoder.logits(h).unwrap_or_default())?;
        Ok(predictions(&logits, labels))
    }

    /// Predictions for `texts` by `head` (an adapter's), in place of the file's.
    pub fn classify_with_head(
        &self,
        texts: &[&str],
        head: &LinearHead,
    ) -> Result<Vec<Prediction>, Error> {
        let HeadInput::Pooled = head.input;
        let logits: Vec<Vec<f32>> = self.embed(texts)?.iter().map(|e| head.logits(e)).collect();
        Ok(predictions(&logits, &head.labels))
    }
}

fn predictions(logits: &[Vec<f32>], labels: &[String]) -> Vec<Prediction> {
    logits
        .iter()
        .map(|l| {
            let scores = probabilities(l);
            let index = scores
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            Prediction {
                label: labels[index].clone(),
                index,
                score: scores[index],
                scores,
                logits: l.clone(),
            }
        })
        .collect()
}

/// The tokenizer described by a `tokenizer.json`. A WordPiece vocabulary (BERT's) is read
/// straight into its model: the generic path buffers the whole model section several times while
/// it finds out which model it is, which was half of a cold start. The rest of the file goes
/// through the generic path with a vocabulary of the added tokens only, so that their ids
/// resolve as the file says, and the full model then replaces that stand-in.
pub fn tokenizer_from_json(json: &str) -> Result<Tokenizer, String> {
    use serde_json::value::RawValue;
    use tokenizers::models::wordpiece::WordPiece;

    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        model: &'a RawValue,
        #[serde(default)]
        added_tokens: Vec<Added>,
    }
    #[derive(serde::Deserialize)]
    struct Added {
        id: u32,
        content: String,
    }
    // The whole text must be JSON first: the tokenizers crate (0.22) panics instead of failing on
    // a syntax error inside some sections ("decoder"), which a hostile file can hold.
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map_err(|e| std::format!("invalid JSON: {e}"))?;
    let generic = |json: &str| json.parse::<Tokenizer>().map_err(|e| e.to_string());
    let Ok(top) = serde_json::from_str::<Top<'_>>(json) else {
        return generic(json);
    };
    let model = top.model.get();
    // Any other model fails at once on its "type" (the first key of the files the tokenizers
    // crate writes), and a WordPiece section it cannot read fails alike: both take the generic
    // path, which reads every model and reports what is wrong.
    let Ok(wp) = serde_json::from_str::<WordPiece>(model) else {
        return generic(json);
    };
    let vocab: serde_json::Map<String, serde_json::Value> = top
        .added_tokens
        .iter()
        .map(|a| (a.content.clone(), a.id.into()))
        .collect();
    let stand_in = serde_json::json!({
        "type": "WordPiece",
        "unk_token": wp.unk_token,
        "continuing_subword_prefix": wp.continuing_subword_prefix,
        "max_input_chars_per_word": wp.max_input_chars_per_word,
        "vocab": vocab,
    });
    // `model` is a slice of `json`: splice the stand-in in its place.
    let at = model.as_ptr() as usize - json.as_ptr() as usize;
    let rest = [
        &json[..at],
        &stand_in.to_string(),
        &json[at + model.len()..],
    ]
    .concat();
    let mut t = generic(&rest)?;
    t.with_model(wp);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/fuzz_targets/model_open.rs`: a syntax error inside the decoder section
    /// made the tokenizers crate panic ("Helper") instead of returning an error.
    #[test]
    fn a_syntax_error_in_a_section_is_an_error_not_a_panic() {
        let json = r###"{"version": "1.0", "added_tokens": [], "normalizer": null,
            "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true\
              "trim_offsets": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0}}}"###;
        let e = tokenizer_from_json(json).unwrap_err();
        assert!(e.starts_with("invalid JSON"), "{e}");
        let fine = json.replace("true\\\n", "true,\n");
        let r = tokenizer_from_json(&fine);
        assert!(r.is_ok(), "{:?}", r.err());
    }

    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Model>();
    }
}
