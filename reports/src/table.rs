//! A table as reports hold it, and its renderings: Markdown, LaTeX (booktabs, ready to
//! `\input` into a paper), CSV and HTML. Content is decided in `report`; this module only lays
//! it out, so the four formats always say the same thing.

use std::fmt::Write;

/// One rendered table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// Short title, e.g. "phantom-ct: test Dice (%)".
    pub title: String,
    /// What a cell holds.
    pub caption: String,
    /// Header of the first column.
    pub corner: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// Footnotes (marks, paired statistics).
    pub notes: Vec<String>,
    /// Where the numbers came from (commits, machines, dates).
    pub provenance: Vec<String>,
    /// Shown prominently, e.g. rows from a dirty working tree.
    pub warnings: Vec<String>,
}

/// One row: a label and one entry per column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    pub label: String,
    pub entries: Vec<Entry>,
}

/// A cell's content.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entry {
    /// Main text, e.g. "62.1 ± 3.4".
    pub value: String,
    /// Secondary text, e.g. "[57.9, 66.3] n=3".
    pub detail: String,
    /// Best in its column.
    pub best: bool,
    /// Footnote marks, e.g. "†".
    pub marks: String,
}

impl Entry {
    pub fn empty() -> Self {
        Self {
            value: "–".into(),
            ..Self::default()
        }
    }
}

fn escape_markdown(text: &str) -> String {
    text.replace('|', "\\|")
}

/// GitHub-flavoured Markdown: the table, then notes, provenance and warnings.
pub fn markdown(table: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", table.title);
    for warning in &table.warnings {
        let _ = writeln!(out, "> **Warning:** {warning}\n");
    }
    if !table.caption.is_empty() {
        let _ = writeln!(out, "{}\n", table.caption);
    }
    let _ = write!(out, "| {} |", escape_markdown(&table.corner));
    for column in &table.columns {
        let _ = write!(out, " {} |", escape_markdown(column));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|{}", "---|".repeat(table.columns.len()));
    for row in &table.rows {
        let _ = write!(out, "| {} |", escape_markdown(&row.label));
        for entry in &row.entries {
            let value = if entry.best {
                format!("**{}**", entry.value)
            } else {
                entry.value.clone()
            };
            let detail = if entry.detail.is_empty() {
                String::new()
            } else {
                format!(" <sub>{}</sub>", entry.detail)
            };
            let _ = write!(out, " {}{}{} |", escape_markdown(&value), entry.marks, escape_markdown(&detail));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out);
    for note in &table.notes {
        let _ = writeln!(out, "- {note}");
    }
    if !table.notes.is_empty() {
        let _ = writeln!(out);
    }
    if !table.provenance.is_empty() {
        let _ = writeln!(out, "<sub>Provenance: {}</sub>\n", table.provenance.join("; "));
    }
    out
}

/// LaTeX special characters escaped for text mode.
pub fn escape_latex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            '–' => out.push_str("--"),
            '†' => out.push_str("$^\\dagger$"),
            '‡' => out.push_str("$^\\ddagger$"),
            '*' => out.push_str("$^*$"),
            '≥' => out.push_str("$\\geq$"),
            '≤' => out.push_str("$\\leq$"),
            '−' => out.push('-'),
            _ => out.push(c),
        }
    }
    out
}

/// A booktabs `table` environment (needs `\usepackage{booktabs}`), notes and provenance as a
/// footnote-sized paragraph under the tabular.
pub fn latex(table: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "% {}", table.title);
    let _ = writeln!(out, "\\begin{{table}}[t]");
    let _ = writeln!(out, "\\centering");
    let _ = writeln!(out, "\\caption{{{}}}", escape_latex(&format!("{}. {}", table.title, table.caption)));
    let _ = writeln!(out, "\\begin{{tabular}}{{l{}}}", "c".repeat(table.columns.len()));
    let _ = writeln!(out, "\\toprule");
    let header: Vec<String> = std::iter::once(&table.corner)
        .chain(&table.columns)
        .map(|c| escape_latex(c))
        .collect();
    let _ = writeln!(out, "{} \\\\", header.join(" & "));
    let _ = writeln!(out, "\\midrule");
    for row in &table.rows {
        let mut cells = vec![escape_latex(&row.label)];
        for entry in &row.entries {
            let value = escape_latex(&entry.value);
            let value = if entry.best { format!("\\textbf{{{value}}}") } else { value };
            let detail = if entry.detail.is_empty() {
                String::new()
            } else {
                format!(" {{\\scriptsize {}}}", escape_latex(&entry.detail))
            };
            cells.push(format!("{value}{}{detail}", escape_latex(&entry.marks)));
        }
        let _ = writeln!(out, "{} \\\\", cells.join(" & "));
    }
    let _ = writeln!(out, "\\bottomrule");
    let _ = writeln!(out, "\\end{{tabular}}");
    let footer: Vec<String> = table
        .warnings
        .iter()
        .map(|w| format!("Warning: {w}"))
        .chain(table.notes.iter().cloned())
        .chain((!table.provenance.is_empty()).then(|| format!("Provenance: {}.", table.provenance.join("; "))))
        .collect();
    if !footer.is_empty() {
        let _ = writeln!(out, "\\par\\smallskip{{\\footnotesize\\raggedright");
        for line in footer {
            let _ = writeln!(out, "{}\\par", escape_latex(&line));
        }
        let _ = writeln!(out, "}}");
    }
    let _ = writeln!(out, "\\end{{table}}");
    out
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTML `<section>` with the table, notes and provenance.
pub fn html(table: &Table) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "<section>\n<h3>{}</h3>", escape_html(&table.title));
    for warning in &table.warnings {
        let _ = writeln!(out, "<p class=\"warning\"><strong>Warning:</strong> {}</p>", escape_html(warning));
    }
    if !table.caption.is_empty() {
        let _ = writeln!(out, "<p>{}</p>", escape_html(&table.caption));
    }
    let _ = write!(out, "<table>\n<thead><tr><th>{}</th>", escape_html(&table.corner));
    for column in &table.columns {
        let _ = write!(out, "<th>{}</th>", escape_html(column));
    }
    let _ = writeln!(out, "</tr></thead>\n<tbody>");
    for row in &table.rows {
        let _ = write!(out, "<tr><th>{}</th>", escape_html(&row.label));
        for entry in &row.entries {
            let value = escape_html(&entry.value);
            let value = if entry.best { format!("<strong>{value}</strong>") } else { value };
            let detail = if entry.detail.is_empty() {
                String::new()
            } else {
                format!("<br><small>{}</small>", escape_html(&entry.detail))
            };
            let _ = write!(out, "<td>{value}{}{detail}</td>", escape_html(&entry.marks));
        }
        let _ = writeln!(out, "</tr>");
    }
    let _ = writeln!(out, "</tbody>\n</table>");
    if !table.notes.is_empty() {
        let _ = writeln!(out, "<ul class=\"notes\">");
        for note in &table.notes {
            let _ = writeln!(out, "<li>{}</li>", escape_html(note));
        }
        let _ = writeln!(out, "</ul>");
    }
    if !table.provenance.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"provenance\">Provenance: {}</p>",
            escape_html(&table.provenance.join("; "))
        );
    }
    let _ = writeln!(out, "</section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latex_escapes_specials() {
        assert_eq!(escape_latex("10% a_b & c ± d"), "10\\% a\\_b \\& c $\\pm$ d");
    }

    #[test]
    fn markdown_marks_the_best_entry() {
        let table = Table {
            title: "t".into(),
            corner: "method".into(),
            columns: vec!["10%".into()],
            rows: vec![Row {
                label: "a".into(),
                entries: vec![Entry {
                    value: "1.0".into(),
                    best: true,
                    ..Entry::default()
                }],
            }],
            ..Table::default()
        };
        assert!(markdown(&table).contains("| a | **1.0** |"));
    }
}
