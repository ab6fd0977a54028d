//! petal's fast WordPiece path of `tokenizer.json` against the tokenizers crate's own reading of
//! the same file: the same ids, type ids, tokens and offsets for every text, the same vocabulary.

use std::path::PathBuf;

use petal_runtime::pipeline::tokenizer_from_json;
use tokenizers::Tokenizer;

const TEXTS: &[&str] = &[
    "Hello, world!",
    "Hello [MASK] wörld, naïve café 東京 and an emoji 🙂",
    "[CLS] [SEP] [PAD] [UNK] typed in by a user",
    "unaffable antidisestablishmentarianism ##ing",
    "",
    "   spaces\tand\nnewlines   ",
    "ÀÉÎÕÜ ß œ Ǆ ﬁ",
    // One word longer than WordPiece's max_input_chars_per_word (100): a single [UNK].
    "pneumonoultramicroscopicsilicovolcanoconiosispneumonoultramicroscopicsilicovolcanoconiosispneumonoultramicroscopicsilicovolcanoconiosis ok",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn fast_path_reads_tokenizers_as_the_tokenizers_crate_does() {
    let assets = std::env::var_os("PETAL_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("assets"));
    let files = [
        assets.join("minilm/tokenizer.json"),
        workspace().join("testdata/golden/tiny-bert/tokenizer.json"),
        workspace().join("testdata/golden/tiny-distilbert/tokenizer.json"),
        workspace().join("testdata/golden/tiny-roberta/tokenizer.json"),
        workspace().join("testdata/golden/tiny-xlmr/tokenizer.json"),
    ];
    for file in files {
        let json = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh first)", file.display()));
        let ours = tokenizer_from_json(&json).unwrap();
        let theirs: Tokenizer = json.parse().unwrap();
        assert_eq!(
            ours.get_vocab(true),
            theirs.get_vocab(true),
            "{}: vocabulary",
            file.display()
        );
        for text in TEXTS {
            for pair in [None, Some("and a second segment")] {
                let encode = |t: &Tokenizer| match pair {
                    None => t.encode(*text, true).unwrap(),
                    Some(p) => t.encode((*text, p), true).unwrap(),
                };
                let (a, b) = (encode(&ours), encode(&theirs));
                let what = format!("{}: {text:?} + {pair:?}", file.display());
                assert_eq!(a.get_ids(), b.get_ids(), "{what}: ids");
                assert_eq!(a.get_type_ids(), b.get_type_ids(), "{what}: type ids");
                assert_eq!(a.get_tokens(), b.get_tokens(), "{what}: tokens");
                assert_eq!(a.get_offsets(), b.get_offsets(), "{what}: offsets");
            }
        }
    }
}
