//! The API server's syntax rules for names, labels, ports and selectors
//! (k8s.io/apimachinery/pkg/util/validation), reimplemented so that what the API server would
//! reject is rejected here with the same field and a similar message.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::Errors;
use crate::model::{Operator, Requirement, Selector};

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const PORT_NAME_MAX: usize = 15;

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= DNS1123_LABEL_MAX
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid DNS-1123 label: at most {DNS1123_LABEL_MAX} lowercase \
             alphanumeric characters or '-', starting and ending with an alphanumeric character"
        ))
    }
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= DNS1123_SUBDOMAIN_MAX
        && s.split('.').all(|l| dns1123_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid DNS-1123 subdomain: lowercase alphanumeric characters, '-' \
             or '.', starting and ending with an alphanumeric character"
        ))
    }
}

fn is_name_part(s: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(inner)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63 alphanumerics, '-', '_', '.'.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| dns1123_subdomain(p).is_ok());
    if prefix_ok && is_name_part(name) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid label key: an optional DNS subdomain prefix and '/', then at \
             most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an \
             alphanumeric character"
        ))
    }
}

/// A label value: empty, or like the name part of a key.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || is_name_part(s) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid label value: at most 63 alphanumeric characters, '-', '_' or \
             '.', starting and ending with an alphanumeric character"
        ))
    }
}

/// IANA service name syntax (IsValidPortName): ≤ 15 lowercase alphanumerics or '-', at least
/// one letter, no leading, trailing or doubled '-'.
pub fn port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= PORT_NAME_MAX
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a valid port name: at most {PORT_NAME_MAX} lowercase alphanumeric \
             characters or '-', with at least one letter and no leading, trailing or \
             consecutive '-'"
        ))
    }
}

/// A port number as the API stores it (i32) checked to 1–65535.
pub fn port_number(n: i32) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!(
            "{n} is not a valid port number: must be between 1 and 65535, inclusive"
        )),
    }
}

/// Labels on an object's metadata.
pub fn labels(labels: Option<&BTreeMap<String, String>>, field: &str, errs: &mut Errors) {
    for (k, v) in labels.into_iter().flatten() {
        if let Err(e) = qualified_name(k) {
            errs.push(field, e);
        }
        if let Err(e) = label_value(v) {
            errs.push(format!("{field}[{k}]"), e);
        }
    }
}

/// Validate and canonicalise a `LabelSelector`. `None` (absent) selects everything.
pub fn selector(sel: Option<&LabelSelector>, field: &str, errs: &mut Errors) -> Selector {
    let Some(sel) = sel else {
        return Selector::everything();
    };
    let mut reqs = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        let path = format!("{field}.matchLabels");
        let key_ok = errs.check(&path, qualified_name(k));
        let value_ok = errs.check(format!("{path}[{k}]"), label_value(v));
        if key_ok && value_ok {
            reqs.push(Requirement {
                key: k.clone(),
                op: Operator::In(BTreeSet::from([v.clone()])),
            });
        }
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let path = format!("{field}.matchExpressions[{i}]");
        let key_ok = errs.check(format!("{path}.key"), qualified_name(&expr.key));
        let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
        let mut ok = key_ok;
        for v in expr.values.iter().flatten() {
            ok &= errs.check(format!("{path}.values"), label_value(v));
        }
        let op = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errs.push(
                    format!("{path}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                );
                None
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errs.push(
                    format!("{path}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                );
                None
            }
            "In" => Some(Operator::In(values)),
            "NotIn" => Some(Operator::NotIn(values)),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            other => {
                errs.push(
                    format!("{path}.operator"),
                    format!(
                        "'{other}' is not a valid selector operator: must be In, NotIn, \
                         Exists or DoesNotExist"
                    ),
                );
                None
            }
        };
        if let (true, Some(op)) = (ok, op) {
            reqs.push(Requirement {
                key: expr.key.clone(),
                op,
            });
        }
    }
    Selector::new(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("Web").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("kubernetes.io/metadata.name").is_ok());
        assert!(qualified_name("Bad_Prefix/x").is_err());
        assert!(qualified_name("a/").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_x").is_ok());
        assert!(label_value("has space").is_err());
    }

    #[test]
    fn port_names_and_numbers() {
        assert!(port_name("http").is_ok());
        assert!(port_name("h2c-web").is_ok());
        assert!(port_name("80").is_err(), "needs a letter");
        assert!(port_name("a--b").is_err());
        assert!(port_name("toolongportname1").is_err());
        assert!(port_name("HTTP").is_err());
        assert_eq!(port_number(1), Ok(1));
        assert_eq!(port_number(65535), Ok(65535));
        assert!(port_number(0).is_err());
        assert!(port_number(65536).is_err());
        assert!(port_number(-1).is_err());
    }
}
