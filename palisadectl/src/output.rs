//! Output formats, as kubectl names them: `table` (the default), `wide` (the table with more
//! columns where a command has more to show), `json` and `yaml`. Commands render JSON for the structured formats; YAML is the
//! same document converted, so the two never disagree.

use std::fmt::Write as _;

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

/// A table as kubectl prints one, the one writer of every `-o table|wide`: a header of
/// upper-case names, columns two spaces apart, each as wide as its widest cell (numbers
/// aligned right, text left, the last column unpadded). Columns declared wide are shown with
/// `-o wide` only; every row gives a cell for each column declared, wide or not.
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
    wide: bool,
}

struct Column {
    name: &'static str,
    right: bool,
    wide: bool,
}

impl Table {
    /// An empty table for `output` (whose `-o wide` shows the wide columns).
    pub fn new(output: Output) -> Table {
        Table {
            columns: Vec::new(),
            rows: Vec::new(),
            wide: output.wide(),
        }
    }

    fn with(mut self, name: &'static str, right: bool, wide: bool) -> Table {
        self.columns.push(Column { name, right, wide });
        self
    }

    /// A column of text.
    pub fn text(self, name: &'static str) -> Table {
        self.with(name, false, false)
    }

    /// A column of numbers (aligned right).
    pub fn number(self, name: &'static str) -> Table {
        self.with(name, true, false)
    }

    /// A column of text shown with `-o wide` only.
    pub fn wide_text(self, name: &'static str) -> Table {
        self.with(name, false, true)
    }

    /// A column of numbers shown with `-o wide` only.
    pub fn wide_number(self, name: &'static str) -> Table {
        self.with(name, true, true)
    }

    /// A row: one cell per column declared, in order (a wide column's cell is dropped unless
    /// the table is wide; cells missing at the end are empty).
    pub fn row<I, C>(&mut self, cells: I)
    where
        I: IntoIterator<Item = C>,
        C: ToString,
    {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and rows, one line each.
    pub fn render(&self) -> String {
        let shown: Vec<usize> = (0..self.columns.len())
            .filter(|i| self.wide || !self.columns[*i].wide)
            .collect();
        let header: Vec<String> = shown
            .iter()
            .map(|i| self.columns[*i].name.to_string())
            .collect();
        let lines: Vec<Vec<&str>> = std::iter::once(header.iter().map(String::as_str).collect())
            .chain(self.rows.iter().map(|r| {
                shown
                    .iter()
                    .map(|i| r.get(*i).map_or("", String::as_str))
                    .collect()
            }))
            .collect();
        let widths: Vec<usize> = (0..shown.len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for l in &lines {
            let mut line = String::new();
            for (c, cell) in l.iter().enumerate() {
                let width = widths[c];
                if self.columns[shown[c]].right {
                    let _ = write!(line, "{cell:>width$}  ");
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
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
    fn tables_are_as_wide_as_their_cells_and_show_wide_columns_when_asked() {
        let table = |output| {
            let mut t = Table::new(output)
                .text("NAME")
                .number("COUNT")
                .wide_text("NOTE")
                .text("LAST");
            t.row(["a-long-name", "7", "x", "end"]);
            t.row(["b", "12", "", ""]);
            t.render()
        };
        assert_eq!(
            table(Output::Table),
            "NAME         COUNT  LAST\na-long-name      7  end\nb               12\n"
        );
        assert_eq!(
            table(Output::Wide),
            "NAME         COUNT  NOTE  LAST\na-long-name      7  x     end\nb               12\n"
        );
    }

    #[test]
    fn namespace_filter() {
        assert!(in_namespace("shop/web", "shop"));
        assert!(in_namespace("shop", "shop"));
        assert!(!in_namespace("shopping/web", "shop"));
        assert!(!in_namespace("other/shop", "shop"));
    }
}
