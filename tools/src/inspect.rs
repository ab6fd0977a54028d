//! `petal inspect`: what a GGUF file holds, validated.

use std::path::Path;

use anyhow::{Context, Result};
use petal_runtime::gguf::{Gguf, Value};
use petal_runtime::mmap::Mapping;
use serde_json::{json, Value as Json};

/// Longest string value shown in full in plain output.
const SHOWN_STRING: usize = 64;
/// Array elements shown in plain output and in `--json`.
const SHOWN_ELEMENTS: usize = 8;

fn value_json(v: &Value<'_>, full_arrays: bool) -> Json {
    match *v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => {
            let take = if full_arrays { a.len() } else { SHOWN_ELEMENTS };
            let items: Vec<Json> = a.iter().take(take).map(|e| value_json(&e, false)).collect();
            if items.len() == a.len() {
                Json::Array(items)
            } else {
                json!({ "type": format!("{:?}", a.elem_type()), "len": a.len(), "head": items })
            }
        }
    }
}

fn value_plain(v: &Value<'_>) -> String {
    match *v {
        Value::String(s) if s.len() > SHOWN_STRING => format!("<string, {} bytes>", s.len()),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => {
            let head: Vec<String> = a
                .iter()
                .take(SHOWN_ELEMENTS)
                .map(|e| value_plain(&e))
                .collect();
            let more = if a.len() > SHOWN_ELEMENTS {
                ", ..."
            } else {
                ""
            };
            format!(
                "[{:?}; {}] [{}{more}]",
                a.elem_type(),
                a.len(),
                head.join(", ")
            )
        }
        _ => value_json(v, false).to_string(),
    }
}

/// The report on the GGUF file at `path`, as text or JSON.
pub fn inspect(path: &Path, as_json: bool, full_arrays: bool) -> Result<String> {
    use std::fmt::Write;
    let mut o = String::new();
    let map = Mapping::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let g = Gguf::parse(map.bytes()).with_context(|| format!("{}", path.display()))?;
    let file_bytes = map.bytes().len() as u64;
    let mut by_type = std::collections::BTreeMap::<String, (usize, u64)>::new();
    for t in g.tensors() {
        let e = by_type.entry(t.ty.to_string()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    if as_json {
        let metadata: serde_json::Map<String, Json> = g
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), value_json(v, full_arrays)))
            .collect();
        let tensors: Vec<Json> = g
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "type": t.ty.to_string(),
                    "shape": t.shape(),
                    "dims": &t.dims[..t.n_dims],
                    "offset": t.offset,
                    "file_offset": g.data_offset + t.offset,
                    "bytes": t.size,
                })
            })
            .collect();
        let out = json!({
            "file": path.display().to_string(),
            "file_bytes": file_bytes,
            "version": g.version,
            "alignment": g.alignment,
            "data_offset": g.data_offset,
            "metadata": metadata,
            "tensors": tensors,
            "tensor_count": g.tensors().len(),
            "tensor_bytes": g.tensor_bytes_total(),
            "by_type": by_type.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "checks": {"aligned": true, "in_bounds": true, "no_overlap": true},
        });
        return Ok(serde_json::to_string_pretty(&out)? + "\n");
    }
    let _ = writeln!(
        o,
        "{}: GGUF v{}, {} bytes, alignment {}, data at byte {}",
        path.display(),
        g.version,
        file_bytes,
        g.alignment,
        g.data_offset
    );
    let _ = writeln!(o, "\nmetadata ({} keys):", g.metadata().len());
    for (k, v) in g.metadata() {
        let _ = writeln!(o, "  {k} = {}", value_plain(v));
    }
    let _ = writeln!(o, "\ntensors ({}):", g.tensors().len());
    let w = g
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        o,
        "  {:<w$}  {:<5}  {:<14}  {:>12}  {:>12}",
        "name", "type", "shape", "offset", "bytes"
    );
    for t in g.tensors() {
        let shape = format!("{:?}", t.shape());
        let _ = writeln!(
            o,
            "  {:<w$}  {:<5}  {:<14}  {:>12}  {:>12}",
            t.name,
            t.ty.to_string(),
            shape,
            t.offset,
            t.size
        );
    }
    o.push('\n');
    for (ty, (n, b)) in &by_type {
        let _ = writeln!(o, "  {ty:<5} {n:>4} tensors {b:>12} bytes");
    }
    let _ = writeln!(o,
        "total: {} tensors, {} bytes of tensor data; every tensor aligned to {}, inside the file, no overlap",
        g.tensors().len(),
        g.tensor_bytes_total(),
        g.alignment
    );
    Ok(o)
}
