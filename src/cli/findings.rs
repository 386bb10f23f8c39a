//! `firebreak findings parse`.

use super::{Format, ParseArgs, input, output};
use crate::error::Exit;
use crate::finding::{ParserChoice, parse_input};

/// Parses the input and prints findings and rejections. Exit 1 when anything was rejected.
pub fn parse(args: &ParseArgs) -> Exit {
    let choice = match ParserChoice::from_id(&args.parser) {
        Ok(c) => c,
        Err(e) => {
            output::error(&e, Some("`firebreak parsers list` shows the parsers"));
            return Exit::Usage;
        }
    };
    let (source, bytes) = match input::read(&args.input) {
        Ok(x) => x,
        Err(e) => {
            output::error(&e, None);
            return Exit::Usage;
        }
    };
    let report = parse_input(&source, &bytes, choice);
    match args.format {
        Format::Json => output::json(&report),
        Format::Table => {
            output::findings_table(&report.findings);
            output::rejections(&report.rejected);
            output::parse_summary(&report);
        }
    }
    if report.rejected.is_empty() {
        Exit::Ok
    } else {
        Exit::Failure
    }
}
