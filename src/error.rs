//! User-facing diagnostics and exit codes.
//!
//! A [`Diagnostic`] says where (file:line:col and a field path), what went wrong, and what to do
//! about it (`hint:`). Modules collect diagnostics instead of stopping at the first problem; the
//! CLI renders them. Nothing here prints.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Process exit codes shared by every subcommand (uv/ripgrep convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Ok = 0,
    /// The command ran, but something it processed failed (a rejected record, a failed step,
    /// a playbook with problems).
    Failure = 1,
    /// The command could not run: bad flags, unreadable input, invalid configuration.
    Usage = 2,
}

impl Exit {
    /// The worse of two outcomes.
    #[must_use]
    pub fn max(self, other: Exit) -> Exit {
        if (other as u8) > (self as u8) {
            other
        } else {
            self
        }
    }
}

/// A problem found in a file the user wrote (a playbook, a configuration file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in, as the user named it.
    pub file: PathBuf,
    /// 1-based line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// 1-based column, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
    /// Dotted field path inside the document, e.g. `steps[1].with.url`; empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic about a whole file (no position).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            column: None,
            path: String::new(),
            message: message.into(),
            hint: None,
        }
    }

    /// Sets the position.
    #[must_use]
    pub fn at(mut self, line: u64, column: u64) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// Sets the field path.
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the hint.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the hint when there is one.
    #[must_use]
    pub fn maybe_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: path: message` followed by an indented `hint:` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// The closest candidate to `given` by edit distance, if it is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(given: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let given_lower = given.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&given_lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_path_and_hint() {
        let d = Diagnostic::file("playbooks/x.yaml", "unknown field `wiht`")
            .at(14, 9)
            .path("steps[1]")
            .hint("did you mean `with`?");
        assert_eq!(
            d.to_string(),
            "playbooks/x.yaml:14:9: steps[1]: unknown field `wiht`\n  hint: did you mean `with`?"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        let names = ["notify.webhook", "kubernetes.scale-to-zero"];
        assert_eq!(did_you_mean("notify.webhok", names), Some("notify.webhook"));
        assert_eq!(did_you_mean("something-else", names), None);
    }

    #[test]
    fn exit_max_keeps_the_worst() {
        assert_eq!(Exit::Ok.max(Exit::Failure), Exit::Failure);
        assert_eq!(Exit::Usage.max(Exit::Failure), Exit::Usage);
    }
}
