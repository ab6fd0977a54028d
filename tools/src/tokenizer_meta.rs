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
    let mut specials = Vec::new();
    for a in &added {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            bail!("an added token lacks \"id\" or \"content\"");
        };
        put(id as usize, content)?;
        specials.push((content.to_string(), id as u32));
    }
    let n = tokens.len();
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PETAL_UNUSED_{i}]")))
        .collect();
    if scores.len() < n && !scores.is_empty() {
        scores.resize(n, 0.0);
    }

    w.set(names::TOKENIZER_HF_JSON, json_text);
    w.set(names::TOKENIZER_MODEL, ggml_model);
    w.set(names::TOKENIZER_TOKENS, OwnedValue::StringArray(tokens));
    if !scores.is_empty() {
        w.set(names::TOKENIZER_SCORES, OwnedValue::F32Array(scores));
    }
    let roles: [(&str, &[&str]); 7] = [
        ("unknown", &["[UNK]", "<unk>"]),
        ("seperator", &["[SEP]", "</s>"]),
        ("padding", &["[PAD]", "<pad>"]),
        ("cls", &["[CLS]", "<s>"]),
        ("mask", &["[MASK]", "<mask>"]),
        ("bos", &["<s>"]),
        ("eos", &["</s>"]),
    ];
    for (role, candidates) in roles {
        if let Some((_, id)) = specials
            .iter()
            .find(|(c, _)| candidates.contains(&c.as_str()))
        {
            w.set(&format!("tokenizer.ggml.{role}_token_id"), *id);
        }
    }
    Ok(n)
}
