//! `firebreak parsers list` and `firebreak actions list`.

use serde::Serialize;

use super::{Format, output};
use crate::action::{ACTIONS, Permission};
use crate::error::Exit;
use crate::finding::PARSERS;

/// One parser, as listed.
#[derive(Serialize)]
pub struct ParserRow {
    /// Id.
    pub id: &'static str,
    /// Summary.
    pub summary: &'static str,
}

/// One action, as listed.
#[derive(Serialize)]
pub struct ActionRow {
    /// Kind.
    pub kind: &'static str,
    /// Summary.
    pub summary: &'static str,
    /// Reversible.
    pub reversible: bool,
    /// Permissions.
    pub permissions: Vec<Permission>,
}

/// Lists parsers.
pub fn parsers(format: Format) -> Exit {
    let rows: Vec<ParserRow> = PARSERS
        .iter()
        .map(|p| ParserRow {
            id: p.id(),
            summary: p.summary(),
        })
        .collect();
    match format {
        Format::Json => output::json(&rows),
        Format::Table => output::parser_table(&rows),
    }
    Exit::Ok
}

/// Lists actions.
pub fn actions(format: Format) -> Exit {
    let rows: Vec<ActionRow> = ACTIONS
        .iter()
        .map(|a| ActionRow {
            kind: a.kind(),
            summary: a.summary(),
            reversible: a.reversible(),
            permissions: a.permissions().to_vec(),
        })
        .collect();
    match format {
        Format::Json => output::json(&rows),
        Format::Table => output::action_table(&rows),
    }
    Exit::Ok
}
