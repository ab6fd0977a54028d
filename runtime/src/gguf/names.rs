//! Metadata keys and tensor names of petal's GGUF profile (`docs/FORMAT.md`). The converter and
//! the loader both take their names from here.

use alloc::format;
use alloc::string::String;

/// `general.architecture`.
pub const ARCHITECTURE: &str = "general.architecture";
/// `general.alignment`.
pub const ALIGNMENT: &str = "general.alignment";
/// `general.name`.
pub const NAME: &str = "general.name";
/// `general.file_type`.
pub const FILE_TYPE: &str = "general.file_type";

/// `petal.normalize`: L2-normalize the pooled embedding.
pub const NORMALIZE: &str = "petal.normalize";
/// `petal.position_offset`: first position id.
pub const POSITION_OFFSET: &str = "petal.position_offset";
/// `petal.pad_token_id`.
pub const PAD_TOKEN_ID: &str = "petal.pad_token_id";
/// `petal.format_version`: petal's file format version (absent means 1); a reader refuses
/// versions it does not know.
pub const FORMAT_VERSION: &str = "petal.format_version";
/// The format version this petal reads and writes (absent in the file means this one).
pub const FORMAT_VERSION_CURRENT: u32 = 1;
/// `petal.max_seq_length`: the default truncation, sentence-transformers' `max_seq_length`.
pub const MAX_SEQ_LENGTH: &str = "petal.max_seq_length";
/// `petal.source.sha256`: SHA-256 of the source weights file.
pub const SOURCE_SHA256: &str = "petal.source.sha256";
/// `petal.source.format`: `safetensors` or `onnx`.
pub const SOURCE_FORMAT: &str = "petal.source.format";
/// `petal.source.tensor_names`: the source name of each tensor, in tensor order.
pub const SOURCE_TENSOR_NAMES: &str = "petal.source.tensor_names";
/// `petal.converter.version`.
pub const CONVERTER_VERSION: &str = "petal.converter.version";
/// `petal.head.activation`: `tanh` or `relu`.
pub const HEAD_ACTIVATION: &str = "petal.head.activation";
/// `petal.head.input`: `cls`.
pub const HEAD_INPUT: &str = "petal.head.input";

/// `tokenizer.huggingface.json`: the exact source `tokenizer.json`.
pub const TOKENIZER_HF_JSON: &str = "tokenizer.huggingface.json";
/// `tokenizer.ggml.model`.
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.tokens`.
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.scores`.
pub const TOKENIZER_SCORES: &str = "tokenizer.ggml.scores";
/// `tokenizer.ggml.token_type`: llama.cpp's type of each token (1 normal, 3 control, 4 user
/// defined, 5 unused).
pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.normalizer.lowercase` (llama.cpp's BERT normalizer).
pub const TOKENIZER_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
/// `tokenizer.ggml.normalizer.strip_accents` (llama.cpp: defaults to the lowercase flag).
pub const TOKENIZER_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
/// `tokenizer.ggml.token_type_count`.
pub const TOKENIZER_TOKEN_TYPE_COUNT: &str = "tokenizer.ggml.token_type_count";

/// llama.cpp's pooling type ids (`ARCH.pooling_type`).
pub mod pooling {
    /// Mean over unmasked tokens.
    pub const MEAN: u32 = 1;
    /// The first token's hidden state.
    pub const CLS: u32 = 2;
    /// The first token's hidden state through the classification head (`cls`, `cls.output`):
    /// llama.cpp's pooling for sequence classifiers and rerankers. petal's embedding of such a
    /// file is the CLS pooling; its `classify` applies the head.
    pub const RANK: u32 = 4;
}

/// An architecture-scoped key, for example `arch_key("bert", BLOCK_COUNT)` is `bert.block_count`.
pub fn arch_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// `ARCH.block_count`.
pub const BLOCK_COUNT: &str = "block_count";
/// `ARCH.context_length`.
pub const CONTEXT_LENGTH: &str = "context_length";
/// `ARCH.embedding_length`.
pub const EMBEDDING_LENGTH: &str = "embedding_length";
/// `ARCH.feed_forward_length`.
pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
/// `ARCH.attention.head_count`.
pub const HEAD_COUNT: &str = "attention.head_count";
/// `ARCH.attention.layer_norm_epsilon`.
pub const LAYER_NORM_EPS: &str = "attention.layer_norm_epsilon";
/// `ARCH.attention.causal`.
pub const CAUSAL: &str = "attention.causal";
/// `ARCH.pooling_type`.
pub const POOLING_TYPE: &str = "pooling_type";
/// `ARCH.classifier.output_labels`.
pub const OUTPUT_LABELS: &str = "classifier.output_labels";

/// Tensor names.
pub mod tensor {
    use alloc::format;
    use alloc::string::String;

    /// Word embeddings `[vocab, H]`.
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    /// Position embeddings `[positions, H]`.
    pub const POSITION_EMBD: &str = "position_embd.weight";
    /// Token type embeddings `[types, H]`.
    pub const TOKEN_TYPES: &str = "token_types.weight";
    /// Embedding LayerNorm (prefix; `.weight` and `.bias`).
    pub const TOKEN_EMBD_NORM: &str = "token_embd_norm";
    /// Head dense layer (prefix).
    pub const CLS: &str = "cls";
    /// Head output layer (prefix).
    pub const CLS_OUTPUT: &str = "cls.output";

    /// The sub-layers of one encoder block, in llama.cpp's names.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    #[allow(missing_docs)]
    pub enum Block {
        AttnQ,
        AttnK,
        AttnV,
        AttnOutput,
        AttnOutputNorm,
        FfnUp,
        FfnDown,
        LayerOutputNorm,
    }

    impl Block {
        /// Every sub-layer.
        pub const ALL: [Block; 8] = [
            Block::AttnQ,
            Block::AttnK,
            Block::AttnV,
            Block::AttnOutput,
            Block::AttnOutputNorm,
            Block::FfnUp,
            Block::FfnDown,
            Block::LayerOutputNorm,
        ];

        /// The name part after `blk.N.`.
        pub const fn stem(self) -> &'static str {
            match self {
                Block::AttnQ => "attn_q",
                Block::AttnK => "attn_k",
                Block::AttnV => "attn_v",
                Block::AttnOutput => "attn_output",
                Block::AttnOutputNorm => "attn_output_norm",
                Block::FfnUp => "ffn_up",
                Block::FfnDown => "ffn_down",
                Block::LayerOutputNorm => "layer_output_norm",
            }
        }

        /// Whether this is a LayerNorm (its weight stays F32).
        pub const fn is_norm(self) -> bool {
            matches!(self, Block::AttnOutputNorm | Block::LayerOutputNorm)
        }
    }

    /// `blk.{layer}.{stem}.{param}`, `param` being `weight` or `bias`.
    pub fn block(layer: usize, part: Block, param: &str) -> String {
        format!("blk.{layer}.{}.{param}", part.stem())
    }
}

/// Whether a model file of architecture `arch` has token type embeddings.
pub fn has_token_types(arch: &str) -> bool {
    arch != "distilbert"
}

/// `general.file_type` for files whose large matrices are `ty` (llama.cpp's `LLAMA_FTYPE_*`).
pub fn file_type(ty: crate::quant::TensorType) -> u32 {
    use crate::quant::TensorType::*;
    match ty {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q8_0 => 7,
    }
}
