//! Labelled examples: one JSON object a line, `{"text": "...", "label": "..."}`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// One labelled text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The text.
    pub text: String,
    /// Its label.
    pub label: String,
}

/// Why a data file was refused. Line numbers start at 1.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read.
    Io(PathBuf, std::io::Error),
    /// A line is not a JSON object.
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A line lacks `text` or `label`, or one is not a string.
    MissingField {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A line has a field other than `text` and `label`.
    UnknownField {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// The field.
        field: String,
    },
    /// The file holds no examples.
    Empty(PathBuf),
    /// Every example has the same label: there is nothing to tell apart.
    OneClass(PathBuf, String),
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            DataError::InvalidJson {
                path,
                line,
                message,
            } => {
                write!(
                    f,
                    "{}: line {line}: invalid JSON: {message}",
                    path.display()
                )
            }
            DataError::MissingField { path, line, field } => {
                write!(
                    f,
                    "{}: line {line}: missing string field \"{field}\"",
                    path.display()
                )
            }
            DataError::UnknownField { path, line, field } => {
                write!(
                    f,
                    "{}: line {line}: unknown field \"{field}\" (expected \"text\" and \"label\")",
                    path.display()
                )
            }
            DataError::Empty(p) => write!(f, "{}: no examples", p.display()),
            DataError::OneClass(p, l) => write!(
                f,
                "{}: every example has label \"{l}\"; at least two classes are needed",
                p.display()
            ),
        }
    }
}

impl std::error::Error for DataError {}

/// Reads examples from a JSON-lines file. Blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io(path.into(), e))?;
    parse_jsonl(&text, path)
}

/// Parses JSON lines; `path` names the source in errors. A UTF-8 byte-order mark at the start
/// (which several editors write) is skipped.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<Example>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| DataError::InvalidJson {
                path: path.into(),
                line: line_no,
                message: e.to_string(),
            })?;
        let obj = v.as_object().ok_or_else(|| DataError::InvalidJson {
            path: path.into(),
            line: line_no,
            message: "not an object".into(),
        })?;
        if let Some(k) = obj.keys().find(|k| *k != "text" && *k != "label") {
            return Err(DataError::UnknownField {
                path: path.into(),
                line: line_no,
                field: k.clone(),
            });
        }
        let field = |f: &'static str| {
            obj.get(f)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or(DataError::MissingField {
                    path: path.into(),
                    line: line_no,
                    field: f,
                })
        };
        out.push(Example {
            text: field("text")?,
            label: field("label")?,
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty(path.into()));
    }
    Ok(out)
}

/// The distinct labels of `examples`, sorted; an error if there are fewer than two.
pub fn labels(examples: &[Example], path: &Path) -> Result<Vec<String>, DataError> {
    let set: BTreeSet<&str> = examples.iter().map(|e| e.label.as_str()).collect();
    if set.len() < 2 {
        let only = set.into_iter().next().unwrap_or_default().to_string();
        return Err(DataError::OneClass(path.into(), only));
    }
    Ok(set.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<Example>, DataError> {
        parse_jsonl(s, Path::new("t.jsonl"))
    }

    #[test]
    fn good_lines_and_blank_lines() {
        let e = parse("{\"text\":\"a\",\"label\":\"x\"}\n\n{\"label\":\"y\",\"text\":\"b\"}\n")
            .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(labels(&e, Path::new("t")).unwrap(), ["x", "y"]);
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let e =
            parse("\u{feff}{\"text\":\"a\",\"label\":\"x\"}\r\n{\"text\":\"b\",\"label\":\"y\"}\n")
                .unwrap();
        assert_eq!((e[0].text.as_str(), e[1].label.as_str()), ("a", "y"));
        // Only at the start: elsewhere it is a character of a line like any other.
        let msg = parse("{\"text\":\"a\",\"label\":\"x\"}\n\u{feff}{}\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("t.jsonl: line 2: invalid JSON"), "{msg}");
    }

    #[test]
    fn each_error_names_the_line() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("{\"text\":\"a\",\"label\":\"x\"}\n{oops\n"),
            "t.jsonl: line 2: invalid JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(
            msg("{\"text\":\"a\"}"),
            "t.jsonl: line 1: missing string field \"label\""
        );
        assert_eq!(
            msg("{\"text\":\"a\",\"label\":\"x\",\"id\":3}"),
            "t.jsonl: line 1: unknown field \"id\" (expected \"text\" and \"label\")"
        );
        assert_eq!(msg("[1]"), "t.jsonl: line 1: invalid JSON: not an object");
        assert_eq!(msg("\n\n"), "t.jsonl: no examples");
        let one = parse("{\"text\":\"a\",\"label\":\"x\"}").unwrap();
        assert_eq!(
            labels(&one, Path::new("t.jsonl")).unwrap_err().to_string(),
            "t.jsonl: every example has label \"x\"; at least two classes are needed"
        );
    }
}
