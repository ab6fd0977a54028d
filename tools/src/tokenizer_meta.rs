//! llama.cpp's `tokenizer.ggml.*` keys derived from a Hugging Face `tokenizer.json`.

use anyhow::{bail, Context, Result};
use petal_runtime::gguf::{names, GgufWriter, OwnedValue};
use serde_json::Value;

/// Largest vocabulary accepted (ids are dense from 0).
const MAX_VOCAB: usize = 1 << 22;

/// Writes `tokenizer.huggingface.json` (the exact text) and the `tokenizer.ggml.*` keys.
pub fn write_tokenizer_keys(w: &mut GgufWriter, json_text: &str) -> Result<usize> {
    let v: Value = serde_json::from_str(json_text).context("invalid JSON")?;
    let model = v.get("model").context("no \"model\" section")?;
    let kind = model
        .get("type")
        .and_then(Value::as_str)
        .context("no model \"type\"")?;
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut put = |id: usize, tok: &str| -> Result<()> {
        if id >= MAX_VOCAB {
            bail!("token id {id} is too large");
        }
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some(tok.to_string());
        Ok(())
    };
    let mut scores = Vec::new();
    let ggml_model = match kind {
        "WordPiece" | "BPE" => {
            let vocab = model
                .get("vocab")
                .and_then(Value::as_object)
                .context("model \"vocab\" is not an object")?;
            for (tok, id) in vocab {
                let id = id
                    .as_u64()
                    .with_context(|| format!("vocab id of {tok:?} is not an integer"))?;
                put(id as usize, tok)?;
            }
            if kind == "WordPiece" {
                "bert"
            } else {
                "gpt2"
            }
        }
        "Unigram" => {
            let vocab = model
                .get("vocab")
                .and_then(Value::as_array)
                .context("model \"vocab\" is not a list")?;
            for (id, e) in vocab.iter().enumerate() {
                let piece = e
                    .get(0)
                    .and_then(Value::as_str)
                    .with_context(|| format!("vocab entry {id} has no piece"))?;
                let score = e
                    .get(1)
                    .and_then(Value::as_f64)
                    .with_context(|| format!("vocab entry {id} has no score"))?;
                put(id, piece)?;
                scores.push(score as f32);
            }
            "t5"
        }
        other => bail!("tokenizer model \"{other}\" is not supported (WordPiece, BPE, Unigram)"),
    };
    let added = v
        .get("added_tokens")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // llama.cpp's token types (`llama_token_type`): normal, control (special added tokens),
    // user-defined (other added tokens), unused (ids the file does not name).
    let mut added_types = Vec::new();
    let mut specials = Vec::new();
    for a in &added {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            bail!("an added token lacks \"id\" or \"content\"");
        };
        put(id as usize, content)?;
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        added_types.push((
            id as usize,
            if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            },
        ));
        specials.push((content.to_string(), id as u32));
    }
    let n = tokens.len();
    let mut types: Vec<i32> = tokens
        .iter()
        .map(|t| {
            if t.is_some() {
                TOKEN_NORMAL
            } else {
                TOKEN_UNUSED
            }
        })
        .collect();
    for (id, ty) in added_types {
        types[id] = ty;
    }
    let wordpiece = kind == "WordPiece";
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .unwrap_or("##");
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            None => format!("[PAD{i}]"),
            // llama.cpp's WordPiece vocabulary is in "phantom space" form: a word-initial
            // piece `x` is `▁x`, a continuation `##x` is `x`, control tokens stay as they are.
            Some(t) if wordpiece && types[i] != TOKEN_CONTROL => match t.strip_prefix(prefix) {
                Some(rest) if !prefix.is_empty() => rest.to_string(),
                _ => format!("{PHANTOM_SPACE}{t}"),
            },
            Some(t) => t,
        })
        .collect();
    if scores.len() < n && !scores.is_empty() {
        scores.resize(n, 0.0);
    }

    w.set(names::TOKENIZER_HF_JSON, json_text);
    w.set(names::TOKENIZER_MODEL, ggml_model);
    w.set(names::TOKENIZER_TOKENS, OwnedValue::StringArray(tokens));
    w.set(names::TOKENIZER_TOKEN_TYPE, OwnedValue::I32Array(types));
    if !scores.is_empty() {
        w.set(names::TOKENIZER_SCORES, OwnedValue::F32Array(scores));
    }
    if let Some(norm) = v.get("normalizer").filter(|n| !n.is_null()) {
        let (mut lowercase, mut strip_accents) = (None, None);
        bert_normalizer_flags(norm, &mut lowercase, &mut strip_accents);
        if let Some(l) = lowercase {
            w.set(names::TOKENIZER_LOWERCASE, l);
        }
        if let Some(s) = strip_accents {
            w.set(names::TOKENIZER_STRIP_ACCENTS, s);
        }
    }
    // As llama.cpp's converter: a BERT tokenizer begins with [CLS] (its "bos") and ends each
    // sequence with [SEP] (its "eos" and separator).
    let roles: [(&str, &[&str]); 7] = [
        ("unknown", &["[UNK]", "<unk>"]),
        ("seperator", &["[SEP]", "</s>"]),
        ("padding", &["[PAD]", "<pad>"]),
        ("cls", &["[CLS]", "<s>"]),
        ("mask", &["[MASK]", "<mask>"]),
        ("bos", &["<s>", "[CLS]"]),
        ("eos", &["</s>", "[SEP]"]),
    ];
    for (role, candidates) in roles {
        if let Some((_, id)) = candidates
            .iter()
            .find_map(|c| specials.iter().find(|(s, _)| s == c))
        {
            w.set(&format!("tokenizer.ggml.{role}_token_id"), *id);
        }
    }
    if wordpiece {
        for flag in ["bos", "eos", "sep"] {
            w.set(&format!("tokenizer.ggml.add_{flag}_token"), true);
        }
    }
    Ok(n)
}

/// llama.cpp's `llama_token_type` values.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// U+2581, the "phantom space" llama.cpp puts before a word-initial WordPiece piece.
pub const PHANTOM_SPACE: char = '\u{2581}';

/// The lowercase and strip-accents flags of a Hugging Face normalizer (a `BertNormalizer`, or
/// `Lowercase` / `StripAccents` alone or in a `Sequence`), as llama.cpp's converter reads them.
fn bert_normalizer_flags(n: &Value, lowercase: &mut Option<bool>, strip: &mut Option<bool>) {
    match n.get("type").and_then(Value::as_str) {
        Some("Lowercase") => *lowercase = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            if let Some(l) = n.get("lowercase").and_then(Value::as_bool) {
                *lowercase = Some(l);
            }
            if let Some(s) = n.get("strip_accents").and_then(Value::as_bool) {
                *strip = Some(s);
            }
        }
        Some("Sequence") => {
            for m in n
                .get("normalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                bert_normalizer_flags(m, lowercase, strip);
            }
        }
        _ => {}
    }
}
