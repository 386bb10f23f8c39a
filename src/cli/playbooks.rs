//! `firebreak playbooks check|schema`.

use std::path::Path;

use super::{Format, output};
use crate::error::Exit;
use crate::playbook::{LoadError, json_schema, load_dir};

/// Loads the directory exactly as `run` and `serve` do, and reports every problem.
pub fn check(dir: &Path, format: Format) -> Exit {
    match load_dir(dir) {
        Ok(set) => {
            output::check_ok(dir, set.playbooks(), format);
            Exit::Ok
        }
        Err(LoadError::Invalid(ds)) => {
            output::diagnostics(&ds, format);
            Exit::Failure
        }
        Err(LoadError::Unreadable(d)) => {
            output::diagnostics(std::slice::from_ref(&d), format);
            Exit::Usage
        }
    }
}

/// Prints the playbook JSON Schema.
pub fn schema() -> Exit {
    output::json(&json_schema());
    Exit::Ok
}
