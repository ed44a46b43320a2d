//! Output formats, as kubectl names them: `table` (the default), `wide` (the table with more
//! columns where a command has more to show), `json` and `yaml`. Commands render JSON for the structured formats; YAML is the
//! same document converted, so the two never disagree.

use clap::ValueEnum;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table or list for people.
    #[default]
    Table,
    /// The table with more columns (`nodes`, `replicas`, `get`); elsewhere the same as table.
    Wide,
    /// JSON, for programs.
    Json,
    /// The JSON document as YAML.
    Yaml,
}

impl Output {
    /// JSON or YAML: the command renders JSON ([`Output::render`] converts it).
    pub fn structured(self) -> bool {
        matches!(self, Output::Json | Output::Yaml)
    }

    /// The table with every column.
    pub fn wide(self) -> bool {
        self == Output::Wide
    }

    /// What a command printed for this format: JSON text becomes YAML when YAML was asked for;
    /// anything else is printed as it is.
    pub fn render(self, text: String) -> String {
        if self != Output::Yaml {
            return text;
        }
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) => serde_saphyr::to_string(&value).unwrap_or(text),
            Err(_) => text,
        }
    }
}

/// Whether an object named as Palisade names objects (`NAMESPACE/NAME`, or a Namespace's own
/// name) is in `namespace` as `-n/--namespace` filters: a namespaced object of it, or the
/// Namespace itself.
pub fn in_namespace(object: &str, namespace: &str) -> bool {
    object.split('/').next() == Some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_the_json_document() {
        let yaml = Output::Yaml.render(r#"{"a": [1, {"b": "x"}], "c": null}"#.into());
        let back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, serde_json::json!({"a": [1, {"b": "x"}], "c": null}));
        assert_eq!(Output::Json.render("{}".into()), "{}");
    }

    #[test]
    fn namespace_filter() {
        assert!(in_namespace("shop/web", "shop"));
        assert!(in_namespace("shop", "shop"));
        assert!(!in_namespace("shopping/web", "shop"));
        assert!(!in_namespace("other/shop", "shop"));
    }
}
