//! `report.json`: the report as pretty-printed JSON, the form CI gates and
//! `loadgen compare` read. Its shape is described by `loadgen/report.schema.json`
//! and documented field by field in docs/reports.md.

use std::path::Path;

use super::Report;
use crate::error::LoadgenError;

/// The report as pretty JSON, ending in a newline.
pub fn render(report: &Report) -> Result<String, LoadgenError> {
    let mut text = serde_json::to_string_pretty(report)
        .map_err(|e| LoadgenError::unrunnable(format!("cannot serialise the report: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// Reads a report.json written by this version of loadgen (or a directory
/// holding one). Unreadable or malformed: `Invalid`, naming the file.
pub fn read(path: &Path) -> Result<Report, LoadgenError> {
    let file = super::baseline::resolve(path);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        LoadgenError::invalid(file.display().to_string(), format!("cannot read: {e}"))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        LoadgenError::invalid(
            file.display().to_string(),
            format!("not a loadgen report.json: {e}"),
        )
    })
}
