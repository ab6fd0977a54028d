//! A WordPiece tokenizer rebuilt from llama.cpp's `tokenizer.ggml.*` keys, for BERT files that
//! carry no `tokenizer.huggingface.json` (those written by llama.cpp's `convert_hf_to_gguf.py`).
//!
//! llama.cpp stores the vocabulary in "phantom space" form: a word-initial piece `x` as `▁x`, a
//! continuation `##x` as `x`, control tokens (`[CLS]`...) as they are, each with its type in
//! `tokenizer.ggml.token_type`. Undoing that gives BERT's vocabulary back; the normalizer comes
//! from `tokenizer.ggml.normalizer.*`, the special tokens from their id keys, with llama.cpp's
//! defaults for a BERT vocabulary where a key is absent.

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde_json::{json, Map, Value as Json};

use crate::config::LoadError;
use crate::gguf::{names, Gguf, Value};

/// U+2581, llama.cpp's phantom space.
const PHANTOM_SPACE: char = '\u{2581}';
/// llama.cpp's token types.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_UNUSED: i64 = 5;
/// Largest vocabulary rebuilt.
const MAX_VOCAB: usize = 1 << 22;

fn bad(key: &str, expected: &'static str) -> LoadError {
    LoadError::BadKey {
        key: key.to_string(),
        expected,
    }
}

/// An optional id key, checked against the vocabulary size; `default` (llama.cpp's) when absent.
fn token_id(g: &Gguf<'_>, key: &str, default: u32, n: usize) -> Result<u32, LoadError> {
    let id = match g.get(key) {
        None => default,
        Some(v) => v.as_u32().ok_or_else(|| bad(key, "a token id"))?,
    };
    if id as usize >= n {
        return Err(bad(key, "an id within the vocabulary"));
    }
    Ok(id)
}

fn flag(g: &Gguf<'_>, key: &str) -> Result<Option<bool>, LoadError> {
    g.get(key)
        .map(|v| v.as_bool().ok_or_else(|| bad(key, "a bool")))
        .transpose()
}

/// The `tokenizer.json` of the WordPiece tokenizer the file's ggml keys describe; an error
/// naming the key when there is none (a file without any tokenizer) or it is malformed.
pub fn wordpiece_json(g: &Gguf<'_>) -> Result<String, LoadError> {
    match g.get(names::TOKENIZER_MODEL) {
        None => return Err(LoadError::MissingKey(names::TOKENIZER_HF_JSON.into())),
        Some(v) if v.as_str() == Some("bert") => {}
        Some(_) => {
            return Err(bad(
                names::TOKENIZER_MODEL,
                "\"bert\" (other vocabularies need tokenizer.huggingface.json)",
            ))
        }
    }
    let tokens_key = names::TOKENIZER_TOKENS;
    let tokens: Vec<&str> = match g.get(tokens_key) {
        Some(Value::Array(a)) if a.len() <= MAX_VOCAB => a
            .strings()
            .ok_or_else(|| bad(tokens_key, "an array of strings"))?
            .collect(),
        Some(Value::Array(_)) => return Err(bad(tokens_key, "at most 2^22 tokens")),
        Some(_) => return Err(bad(tokens_key, "an array of strings")),
        None => return Err(LoadError::MissingKey(tokens_key.into())),
    };
    let n = tokens.len();
    if n == 0 {
        return Err(bad(tokens_key, "a non-empty array of strings"));
    }
    let types_key = names::TOKENIZER_TOKEN_TYPE;
    let types: Vec<i64> = match g.get(types_key) {
        None => Vec::new(),
        Some(Value::Array(a)) if a.len() == n => a
            .iter()
            .map(|v| match v {
                Value::I32(t) => Ok(t as i64),
                Value::U32(t) => Ok(t as i64),
                _ => Err(bad(types_key, "an array of integers")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(types_key, "an array of one type per token")),
    };
    // Without types, a bracketed token is taken for a control token, as llama.cpp's converter
    // marks them.
    let kind = |i: usize, t: &str| match types.get(i) {
        Some(&k) => k,
        None if t.starts_with('[') && t.ends_with(']') => TOKEN_CONTROL,
        None => 1,
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        let piece = match kind(i, t) {
            TOKEN_UNUSED => continue,
            k @ (TOKEN_CONTROL | TOKEN_USER_DEFINED) => {
                added.push(json!({
                    "id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": k == TOKEN_USER_DEFINED,
                    "special": k == TOKEN_CONTROL,
                }));
                t.to_string()
            }
            _ => match t.strip_prefix(PHANTOM_SPACE) {
                Some(word) => word.to_string(),
                None => format!("##{t}"),
            },
        };
        // The first id of a piece wins, as in a vocab.txt.
        vocab.entry(piece).or_insert(Json::from(i));
    }
    let unk = token_id(g, "tokenizer.ggml.unknown_token_id", 100, n)?;
    let cls = match g.get("tokenizer.ggml.cls_token_id") {
        Some(_) => token_id(g, "tokenizer.ggml.cls_token_id", 101, n)?,
        None => token_id(g, "tokenizer.ggml.bos_token_id", 101, n)?,
    };
    let sep = token_id(g, "tokenizer.ggml.seperator_token_id", 102, n)?;
    // llama.cpp: no lowercasing unless the key says so; accents stripped when lowercasing
    // unless the key says otherwise.
    let lowercase = flag(g, names::TOKENIZER_LOWERCASE)?.unwrap_or(false);
    let strip_accents = flag(g, names::TOKENIZER_STRIP_ACCENTS)?.unwrap_or(lowercase);
    let tok = |id: u32| tokens[id as usize];
    let t = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {
            "type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": strip_accents, "lowercase": lowercase,
        },
        "pre_tokenizer": { "type": "BertPreTokenizer" },
        "post_processor": {
            "type": "BertProcessing",
            "sep": [tok(sep), sep],
            "cls": [tok(cls), cls],
        },
        "decoder": { "type": "WordPiece", "prefix": "##", "cleanup": true },
        "model": {
            "type": "WordPiece", "unk_token": tok(unk), "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": vocab,
        },
    });
    Ok(t.to_string())
}
