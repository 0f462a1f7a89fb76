//! The `--json` summary of a run.

use serde_json::{json, Map, Value};

use crate::engine::Outcome;
use crate::ring::OpKind;

pub fn to_json(o: &Outcome) -> Value {
    let t = &o.totals;
    let secs = o.elapsed.as_secs_f64();
    let mut lat = Map::new();
    for (kind, h) in OpKind::ALL.iter().zip(&o.latencies.by_kind) {
        let Some(h) = h.as_ref().filter(|h| !h.is_empty()) else {
            continue;
        };
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        lat.insert(
            kind.name().to_string(),
            json!({
                "count": h.len(),
                "p50": us(0.5),
                "p99": us(0.99),
                "p999": us(0.999),
                "max": h.max() as f64 / 1000.0,
            }),
        );
    }
    json!({
        "bytes": t.bytes,
        "files": t.files,
        "dirs": t.dirs,
        "symlinks": t.symlinks,
        "hardlinks": t.hardlinks,
        "specials": t.specials,
        "reflinked_files": t.reflinked,
        "skipped": t.skipped,
        "errors": o.errors,
        "vanished": o.vanished,
        "warnings": o.warnings,
        "error_messages": o.messages,
        "elapsed_s": secs,
        "throughput_bytes_per_s": if secs > 0.0 { t.bytes as f64 / secs } else { 0.0 },
        "engine": o.engine,
        "threads": o.threads,
        "latency_us": Value::Object(lat),
        "exit_code": o.exit_code,
        // --verify: files and bytes read back from the target (null without it).
        "verified": o.verified.map(|v| json!({"files": v.files, "bytes": v.bytes})),
    })
}
