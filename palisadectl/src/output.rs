//! Output formats, as kubectl names them: `table` (the default), `wide` (a table with every
//! column), `json` and `yaml`. Commands render JSON for the structured formats; YAML is the
//! same document converted, so the two never disagree.

use clap::ValueEnum;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Wide,
    Json,
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
}
