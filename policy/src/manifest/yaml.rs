//! YAML (and JSON, a subset of YAML) text into one generic value per document, with every
//! resource bounded: input size, nesting depth, node and event counts, alias expansion.
//!
//! serde-saphyr is set up to read values as `serde_yaml` did (YAML 1.2 core schema: `yes`,
//! `on`, `0755` and `1_000` stay strings), with duplicate keys an error, as the API server's
//! strict decoding has them.

use serde_json::Value;
use serde_saphyr::options::{DuplicateKeyPolicy, MergeKeyPolicy};
use serde_saphyr::{Budget, Options};

use super::Limits;

fn options(limits: &Limits) -> Options {
    let bytes = limits.max_bytes;
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = Some(bytes);
    budget.max_depth = limits.max_depth;
    budget.flow_nesting_limit = limits.max_depth;
    // Every node and event needs at least a byte of input, so these scale with the size
    // limit; what does not scale (aliases) stays at fixed caps.
    budget.max_events = bytes.saturating_mul(2).saturating_add(64);
    budget.max_nodes = bytes.saturating_add(64);
    budget.max_documents = bytes.saturating_add(1);
    budget.max_total_scalar_bytes = bytes;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 100_000;
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.merge_keys = MergeKeyPolicy::Merge;
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.with_snippet = false;
    options
}

/// The documents of `text`, in order; empty documents are left out. After a syntax error or
/// a breached limit nothing more can be read, so it is the last item.
pub fn documents(text: &str, limits: &Limits) -> Vec<Result<Value, String>> {
    if text.len() > limits.max_bytes {
        return vec![Err(format!(
            "{} bytes, more than the limit of {}",
            text.len(),
            limits.max_bytes
        ))];
    }
    let mut reader = text.as_bytes();
    let mut out = Vec::new();
    for doc in serde_saphyr::read_with_options::<_, Value>(&mut reader, options(limits)) {
        match doc {
            Ok(Value::Null) => {}
            Ok(v) => out.push(Ok(v)),
            Err(e) => out.push(Err(e.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Value, String> {
        let mut docs = documents(text, &Limits::default());
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0)
    }

    #[test]
    fn scalars_read_as_serde_yaml_read_them() {
        let v = one("a: yes\nb: on\nc: 0755\nd: 1_000\ne: true\nf: 80\ng: '80'\nh: 1.5\ni: ~\n")
            .unwrap();
        assert_eq!(v["a"], "yes");
        assert_eq!(v["b"], "on");
        assert_eq!(v["c"], "0755");
        assert_eq!(v["d"], "1_000");
        assert_eq!(v["e"], true);
        assert_eq!(v["f"], 80);
        assert_eq!(v["g"], "80");
        assert_eq!(v["h"], 1.5);
        assert!(v["i"].is_null());
    }

    #[test]
    fn duplicate_keys_depth_and_aliases_are_bounded() {
        assert!(one("a: 1\na: 2\n").unwrap_err().contains("uplicate"));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        assert!(one(&deep).is_err());
        // Linear, not quadratic: rejected at the depth limit. (Not a timing test: a loose
        // bound that only a pathological parser would break.)
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(one(&bomb).is_err(), "a billion laughs is refused");
        let big = "a: b\n".repeat(10);
        let docs = documents(
            &big,
            &Limits {
                max_bytes: 10,
                ..Limits::default()
            },
        );
        assert!(docs[0].as_ref().unwrap_err().contains("limit"));
    }

    #[test]
    fn multiple_documents_and_json() {
        let docs = documents("---\na: 1\n---\n---\nb: 2\n", &Limits::default());
        assert_eq!(docs.len(), 2);
        let docs = documents("{\"kind\": \"Pod\", \"n\": [1, 2]}", &Limits::default());
        assert_eq!(docs[0].as_ref().unwrap()["n"][1], 2);
    }
}
