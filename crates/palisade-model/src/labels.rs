//! Labels and label selectors (checklist §7).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Labels of an object, sorted so every textual boundary is deterministic.
pub type Labels = BTreeMap<String, String>;

/// The label that every namespace carries implicitly (checklist §7).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        })
    }
}

/// One `matchExpressions` entry. `values` is empty for Exists/DoesNotExist.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // NotIn is true when the key is missing (checklist §7).
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A validated label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector `{}`, which matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn from_labels<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// matchLabels AND every matchExpression.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    /// The `kubectl` form: `app=web,tier in (a,b),!legacy`; `{}` for everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            let values = r.values.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r.operator {
                Operator::In => format!("{} in ({values})", r.key),
                Operator::NotIn => format!("{} notin ({values})", r.key),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn selector_semantics_table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let bare = labels(&[]);
        let rows: Vec<(&str, LabelSelector, &Labels, bool)> = vec![
            (
                "§7 empty selector matches all",
                LabelSelector::everything(),
                &bare,
                true,
            ),
            (
                "§7 matchLabels equal",
                LabelSelector::from_labels([("app", "web")]),
                &web,
                true,
            ),
            (
                "§7 matchLabels differ",
                LabelSelector::from_labels([("app", "db")]),
                &web,
                false,
            ),
            (
                "§7 In hit",
                req("app", Operator::In, &["web", "db"]),
                &web,
                true,
            ),
            (
                "§7 In missing key",
                req("app", Operator::In, &["web"]),
                &bare,
                false,
            ),
            (
                "§7 NotIn hit",
                req("app", Operator::NotIn, &["web"]),
                &web,
                false,
            ),
            (
                "§7 NotIn missing key is true",
                req("app", Operator::NotIn, &["web"]),
                &bare,
                true,
            ),
            ("§7 Exists", req("tier", Operator::Exists, &[]), &web, true),
            (
                "§7 Exists missing",
                req("tier", Operator::Exists, &[]),
                &bare,
                false,
            ),
            (
                "§7 DoesNotExist",
                req("tier", Operator::DoesNotExist, &[]),
                &bare,
                true,
            ),
            (
                "§7 DoesNotExist present",
                req("tier", Operator::DoesNotExist, &[]),
                &web,
                false,
            ),
        ];
        for (name, selector, labels, expected) in rows {
            assert_eq!(selector.matches(labels), expected, "{name}");
        }
    }

    #[test]
    fn matchlabels_and_expressions_are_anded() {
        let mut s = req("tier", Operator::Exists, &[]);
        s.match_labels.insert("app".into(), "web".into());
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("tier", "x")])));
    }
}
