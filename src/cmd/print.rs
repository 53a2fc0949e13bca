//! What every command's printing shares: the output formats, tables, and writing to standard
//! output (the only place the binary prints results; logs go through `tracing` to standard
//! error).

use std::io::{self, Write};

use clap::ValueEnum;
use serde::Serialize;

pub use apexsim::analysis::format_lap_time as lap_time;

/// Output format of commands that print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned text table.
    #[default]
    Table,
    /// JSON on one line.
    Json,
}

/// A table with a header row underlined, columns padded to their widest cell and two spaces
/// apart (comfy-table, without borders); numeric-looking columns are right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    use comfy_table::{CellAlignment, Table, TableComponent, presets};
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_style(TableComponent::HeaderLines, '-')
        .set_style(TableComponent::VerticalLines, ' ')
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row.clone());
    }
    for (c, column) in t.column_iter_mut().enumerate() {
        column.set_padding((u16::from(c > 0), 0));
        let numeric = rows.iter().all(|r| {
            r.get(c).is_none_or(|v| {
                v.starts_with(|ch: char| ch.is_ascii_digit() || ch == '+' || ch == '-')
            })
        });
        if numeric {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes text to standard output.
///
/// # Errors
/// Writing failed.
pub fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes a value as one line of JSON.
///
/// # Errors
/// Writing failed.
pub fn emit_json<T: Serialize>(value: &T) -> io::Result<()> {
    let text = serde_json::to_string(value).map_err(io::Error::other)?;
    emit(&(text + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["Pos", "Name"],
            &[
                vec!["1".into(), "Ann".into()],
                vec!["10".into(), "Bo".into()],
            ],
        );
        assert_eq!(t, "Pos  Name\n--- -----\n  1  Ann\n 10  Bo\n");
    }
}
