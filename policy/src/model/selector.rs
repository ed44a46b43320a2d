//! Label selectors in a canonical form: `matchLabels` become `In` requirements with one value,
//! requirements are sorted and deduplicated, so two selectors that mean the same thing compare
//! (and hash) equal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "operator", content = "values")]
pub enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    #[serde(flatten)]
    pub op: Operator,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// Selects everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn new(reqs: impl IntoIterator<Item = Requirement>) -> Selector {
        let mut reqs: Vec<Requirement> = reqs.into_iter().collect();
        reqs.sort();
        reqs.dedup();
        Selector { reqs }
    }

    /// `matchLabels` only.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Selector::new(labels.into_iter().map(|(k, v)| Requirement {
            key: k.to_string(),
            op: Operator::In(BTreeSet::from([v.to_string()])),
        }))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }
}

/// kubectl's selector syntax: `app=web,tier in (a,b),!legacy`; `{}` for everything.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
            match &r.op {
                Operator::In(vs) if vs.len() == 1 => write!(f, "{}={}", r.key, join(vs))?,
                Operator::In(vs) => write!(f, "{} in ({})", r.key, join(vs))?,
                Operator::NotIn(vs) => write!(f, "{} notin ({})", r.key, join(vs))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: Operator) -> Requirement {
        Requirement {
            key: key.into(),
            op,
        }
    }

    fn set(vs: &[&str]) -> BTreeSet<String> {
        vs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(req("app", Operator::In(set(&["web", "db"]))).matches(&l));
        assert!(!req("app", Operator::In(set(&["db"]))).matches(&l));
        assert!(!req("zone", Operator::In(set(&["a"]))).matches(&l));
        // NotIn matches when the label is absent.
        assert!(req("zone", Operator::NotIn(set(&["a"]))).matches(&l));
        assert!(!req("app", Operator::NotIn(set(&["web"]))).matches(&l));
        assert!(req("tier", Operator::Exists).matches(&l));
        assert!(!req("zone", Operator::Exists).matches(&l));
        assert!(req("zone", Operator::DoesNotExist).matches(&l));
        assert!(!req("app", Operator::DoesNotExist).matches(&l));
    }

    #[test]
    fn empty_selector_matches_everything_and_canonical_form_is_order_free() {
        assert!(Selector::everything().matches(&Labels::new()));
        let a = Selector::new([
            req("b", Operator::Exists),
            req("a", Operator::In(set(&["x"]))),
        ]);
        let b = Selector::new([
            req("a", Operator::In(set(&["x"]))),
            req("b", Operator::Exists),
            req("b", Operator::Exists),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=x,b");
        assert_eq!(Selector::from_labels([("a", "x")]).to_string(), "a=x");
    }
}
