//! Printing results: one JSON object with `--json`, else a readable table.

use serde_json::{Map, Value};

/// Prints `obj` as JSON (one line) or as `key: value` lines.
pub fn emit(json: bool, obj: Map<String, Value>) {
    if json {
        println!("{}", Value::Object(obj));
    } else {
        let w = obj.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, v) in obj {
            let s = match &v {
                Value::String(s) => s.clone(),
                Value::Array(a) if a.iter().all(|x| x.is_number()) && a.len() <= 12 => {
                    a.iter().map(fmt_num).collect::<Vec<_>>().join(", ")
                }
                Value::Number(_) => fmt_num(&v),
                other => other.to_string(),
            };
            println!("{k:<w$}  {s}");
        }
    }
}

fn fmt_num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() => format!("{x:.10e}"),
        _ => v.to_string(),
    }
}

/// A JSON object from pairs.
#[macro_export]
macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( m.insert($k.to_string(), serde_json::json!($v)); )*
        m
    }};
}
