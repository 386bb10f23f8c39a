//! Loading a playbook directory: read, parse with positions, compile, and collect every problem.
//!
//! `firebreak playbooks check`, `run` and (later) `serve` all call [`load_dir`]. A set with any
//! problem is never used; the caller gets every diagnostic at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::expr::Expr;
use super::matcher::{CompiledSelector, Exclusion, FieldPath, Matcher};
use super::spec::{ApprovalSpec, OneOrMany, Pattern, PlaybookSpec, ResourceSelector};
use super::{Playbook, PlaybookSet, Step};
use crate::action;
use crate::error::{Diagnostic, did_you_mean};

/// Why a directory could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The directory itself could not be read (exit code 2).
    Unreadable(Diagnostic),
    /// One or more playbooks have problems (exit code 1). Every problem is listed.
    Invalid(Vec<Diagnostic>),
}

/// Largest playbook file accepted.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Loads and compiles every `*.yaml`/`*.yml` file in `dir` (not recursive), in file-name order.
///
/// # Errors
/// [`LoadError`] with every problem found.
pub fn load_dir(dir: &Path) -> Result<PlaybookSet, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        LoadError::Unreadable(
            Diagnostic::file(dir, format!("cannot read playbook directory: {e}"))
                .hint("pass a directory that holds *.yaml playbook files"),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::Invalid(vec![
            Diagnostic::file(dir, "no playbooks found")
                .hint("playbooks are *.yaml files in this directory"),
        ]));
    }
    let mut diagnostics = Vec::new();
    let mut playbooks: Vec<Playbook> = Vec::new();
    let mut names: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    for file in files {
        let text = match read_text(&file) {
            Ok(t) => t,
            Err(d) => {
                diagnostics.push(d);
                continue;
            }
        };
        match load_str(&file, &text) {
            Ok((pb, name_line)) => {
                if let Some((first, line)) = names.get(&pb.name) {
                    diagnostics.push(
                        Diagnostic::file(&file, format!("duplicate playbook name `{}`", pb.name))
                            .at(name_line, 7)
                            .path("name")
                            .hint(format!(
                                "first defined at {}:{line}; names must be unique",
                                first.display()
                            )),
                    );
                } else {
                    names.insert(pb.name.clone(), (file.clone(), name_line));
                    playbooks.push(pb);
                }
            }
            Err(mut ds) => diagnostics.append(&mut ds),
        }
    }
    if diagnostics.is_empty() {
        Ok(PlaybookSet::new(playbooks))
    } else {
        Err(LoadError::Invalid(diagnostics))
    }
}

fn read_text(file: &Path) -> Result<String, Diagnostic> {
    let meta =
        std::fs::metadata(file).map_err(|e| Diagnostic::file(file, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::file(
            file,
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    let bytes =
        std::fs::read(file).map_err(|e| Diagnostic::file(file, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        Diagnostic::file(
            file,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
        .hint("playbooks are YAML text files")
    })
}

/// Parses and compiles one playbook document. Returns the playbook and the line of its name.
///
/// # Errors
/// Every problem found in the file.
pub fn load_str(file: &Path, text: &str) -> Result<(Playbook, u64), Vec<Diagnostic>> {
    let spec = parse(file, text).map_err(|d| vec![d])?;
    let (mut pb, line) = compile(file, spec)?;
    pb.revision = revision_of(text);
    pb.source = std::sync::Arc::from(text);
    Ok((pb, line))
}

/// The revision of a playbook's text: `sha256:<hex>`.
#[must_use]
pub fn revision_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

fn parse(file: &Path, text: &str) -> Result<PlaybookSpec, Diagnostic> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| yaml_diagnostic(file, &path, &e))
}

/// Turns a YAML/serde error into a diagnostic with position, field path, message and hint.
pub(crate) fn yaml_diagnostic(file: &Path, path: &str, e: &serde_saphyr::Error) -> Diagnostic {
    use serde_saphyr::Error as E;
    let path = if path == "." || path == "?" { "" } else { path };
    let (message, hint) = match e {
        E::SerdeUnknownField {
            field, expected, ..
        } => (
            format!("unknown field `{field}`"),
            Some(match did_you_mean(field, expected.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("expected one of {}", expected.join(", ")),
            }),
        ),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => (
            format!("unknown value `{variant}`"),
            Some(match did_you_mean(variant, expected.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("expected one of {}", expected.join(", ")),
            }),
        ),
        E::SerdeMissingField { field, .. } => (
            format!("missing required field `{field}`"),
            Some(format!("add `{field}:` here")),
        ),
        E::DuplicateMappingKey { key, .. } => (
            format!("duplicate key `{}`", key.as_deref().unwrap_or("?")),
            Some("each key may appear once in a mapping".to_owned()),
        ),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => (format!("expected {expected}, found {unexpected}"), None),
        E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            format!("invalid value {unexpected}, expected {expected}"),
            None,
        ),
        E::Message { msg, .. } => split_hint(msg),
        other => split_hint(&strip_position(&other.to_string())),
    };
    // Flattened sections (`exclude:` entries) report unknown fields as plain messages: offer
    // the closest known key ourselves.
    let hint = hint.or_else(|| {
        let field = message.strip_prefix("unknown field `")?.split('`').next()?;
        let known = crate::finding::ResourceRef::ATTRS
            .into_iter()
            .chain(["type", "rule", "labels", "when"]);
        Some(match did_you_mean(field, known) {
            Some(m) => format!("did you mean `{m}`?"),
            None => "see `firebreak playbooks schema` for the fields of each section".to_owned(),
        })
    });
    let mut d = Diagnostic::file(file, message).path(path).maybe_hint(hint);
    if let Some(loc) = e.location()
        && loc.line() > 0
    {
        d = d.at(loc.line(), loc.column());
    }
    d
}

fn strip_position(s: &str) -> String {
    s.split(" at line ").next().unwrap_or(s).trim().to_owned()
}

/// Moves a trailing "(did you mean `x`?)" from a message into a hint.
pub(crate) fn split_hint(msg: &str) -> (String, Option<String>) {
    match msg.find(" (did you mean ") {
        Some(i) => {
            let hint = msg[i + 2..].trim_end_matches(')').to_owned();
            (msg[..i].to_owned(), Some(hint))
        }
        None => (msg.to_owned(), None),
    }
}

fn at<T>(d: Diagnostic, s: &Spanned<T>) -> Diagnostic {
    if s.referenced.line() == 0 {
        return d;
    }
    d.at(s.referenced.line(), s.referenced.column())
}

/// Collects the compile-time problems of one file.
struct Checker<'a> {
    file: &'a Path,
    ds: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn push<T>(
        &mut self,
        span: &Spanned<T>,
        path: impl Into<String>,
        msg: &str,
        hint: Option<String>,
    ) {
        let (msg, inline_hint) = split_hint(msg);
        self.ds.push(
            at(Diagnostic::file(self.file, msg), span)
                .path(path)
                .maybe_hint(hint.or(inline_hint)),
        );
    }

    /// The values that parsed; each one that did not becomes a diagnostic at its field.
    fn values<T: Clone>(&mut self, path: &str, v: &Spanned<OneOrMany<T>>) -> Vec<T> {
        let problems: Vec<(String, String)> = v
            .value
            .problems()
            .into_iter()
            .map(|(i, m)| {
                (
                    i.map_or_else(|| path.to_owned(), |i| format!("{path}[{i}]")),
                    m.to_owned(),
                )
            })
            .collect();
        for (p, m) in problems {
            self.push(v, p, &m, None);
        }
        v.value.values()
    }

    fn patterns(
        &mut self,
        path: &str,
        map: &BTreeMap<String, Spanned<OneOrMany<Pattern>>>,
    ) -> Vec<(String, Vec<Pattern>)> {
        map.iter()
            .map(|(k, v)| (k.clone(), self.values(&format!("{path}.{k}"), v)))
            .collect()
    }

    fn selector(&mut self, path: &str, sel: &ResourceSelector) -> CompiledSelector {
        CompiledSelector {
            types: sel.kind_of.as_ref().map(|t| {
                self.values(&format!("{path}type"), t)
                    .into_iter()
                    .map(|t| t.0)
                    .collect()
            }),
            attrs: sel
                .attributes()
                .into_iter()
                .map(|(n, p)| (n, self.values(&format!("{path}{n}"), p)))
                .collect(),
        }
    }

    fn expr(&mut self, path: &str, when: Option<&Spanned<String>>) -> Option<Expr> {
        let when = when?;
        match Expr::compile(&when.value) {
            Ok(e) => Some(e),
            Err(msg) => {
                self.push(when, path, &msg, None);
                None
            }
        }
    }
}

fn compile(file: &Path, spec: PlaybookSpec) -> Result<(Playbook, u64), Vec<Diagnostic>> {
    let mut ck = Checker {
        file,
        ds: Vec::new(),
    };
    let name = spec.name.value.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        ck.push(
            &spec.name,
            "name",
            &format!("invalid playbook name `{name}`"),
            Some("use lowercase letters, digits and `-`, e.g. stop-cryptominer".into()),
        );
    }

    // match:
    let m = &spec.matcher;
    let severity = m.severity.as_ref().and_then(|s| match &s.value.0 {
        Ok(c) => Some(*c),
        Err(e) => {
            ck.push(s, "match.severity", e, None);
            None
        }
    });
    let matcher = Matcher {
        classes: m.class.as_ref().map(|c| {
            ck.values("match.class", c)
                .into_iter()
                .map(|c| c.0)
                .collect()
        }),
        sources: m.source.as_ref().map(|s| {
            ck.values("match.source", s)
                .into_iter()
                .map(|s| s.0)
                .collect()
        }),
        intakes: m.intake.as_ref().map(|i| ck.values("match.intake", i)),
        rules: m.rule.as_ref().map(|r| ck.values("match.rule", r)),
        severity,
        resource: m
            .resource
            .as_ref()
            .map(|r| ck.selector("match.resource.", r)),
        labels: ck.patterns("match.labels", &m.labels),
        fields: m
            .fields
            .iter()
            .map(|(k, v)| {
                (
                    FieldPath::new(k),
                    ck.values(&format!("match.fields.{k}"), v),
                )
            })
            .collect(),
        when: ck.expr("match.when", m.when.as_ref()),
    };
    let has_condition = m.class.is_some()
        || m.source.is_some()
        || m.intake.is_some()
        || m.rule.is_some()
        || m.severity.is_some()
        || m.resource.is_some()
        || !m.labels.is_empty()
        || !m.fields.is_empty()
        || m.when.is_some();
    if !has_condition {
        ck.push(
            &spec.name,
            "match",
            "`match` has no conditions, so it would act on every finding",
            Some(
                "add at least one of class, source, intake, rule, severity, resource, labels, \
                 fields, when"
                    .into(),
            ),
        );
    }

    // exclude:
    let mut exclusions = Vec::new();
    for (i, ex) in spec.exclude.iter().enumerate() {
        let base = format!("exclude[{i}]");
        exclusions.push(Exclusion {
            index: i,
            resource: ck.selector(&format!("{base}."), &ex.resource),
            rules: ex
                .rule
                .as_ref()
                .map(|r| ck.values(&format!("{base}.rule"), r)),
            labels: ck.patterns(&format!("{base}.labels"), &ex.labels),
            when: ck.expr(&format!("{base}.when"), ex.when.as_ref()),
        });
    }

    // approval:
    if let ApprovalSpec::Github(gh) = &spec.approval {
        let parts: Vec<&str> = gh.repo.value.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            ck.push(
                &gh.repo,
                "approval.github.repo",
                &format!("invalid repository `{}`", gh.repo.value),
                Some("write it as owner/repo".into()),
            );
        }
        if gh.reviewers.value.is_empty() {
            ck.push(
                &gh.reviewers,
                "approval.github.reviewers",
                "no reviewers: nobody could approve",
                Some("list users (alice) or teams (@org/security)".into()),
            );
        }
        if gh.min.value == 0 {
            ck.push(
                &gh.min,
                "approval.github.min",
                "`min: 0` would approve without a review",
                Some("use `approval: none` to act without approval, or min >= 1".into()),
            );
        }
    }
    let file = ck.file;
    let mut ds = ck.ds;

    // steps:
    if spec.steps.is_empty() {
        ds.push(
            at(
                Diagnostic::file(file, "a playbook needs at least one step"),
                &spec.name,
            )
            .path("steps")
            .hint("add `steps: [{action: notify.webhook, with: {endpoint: security}}]` or similar"),
        );
    }
    let mut steps = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let kind = &step.action.value;
        let Some(act) = action::action(kind) else {
            let kinds: Vec<&str> = action::ACTIONS.iter().map(|a| a.kind()).collect();
            let hint = match did_you_mean(kind, kinds.iter().copied()) {
                Some(m) => format!("did you mean `{m}`? (`firebreak actions list` shows all)"),
                None => format!("known actions: {}", kinds.join(", ")),
            };
            ds.push(
                at(
                    Diagnostic::file(file, format!("unknown action `{kind}`")),
                    &step.action,
                )
                .path(format!("steps[{i}].action"))
                .hint(hint),
            );
            continue;
        };
        let params = step
            .with
            .as_ref()
            .map_or(serde_json::Value::Null, |w| w.value.clone());
        for p in act.validate(&params) {
            let path = if p.path.is_empty() {
                format!("steps[{i}].with")
            } else {
                format!("steps[{i}].with.{}", p.path)
            };
            let (msg, hint) = split_hint(&p.message);
            let d = Diagnostic::file(file, msg)
                .path(path)
                .maybe_hint(p.hint.or(hint));
            ds.push(match &step.with {
                Some(w) => at(d, w),
                None => at(d, &step.action),
            });
        }
        let when = match &step.when {
            Some(w) => match Expr::compile(&w.value) {
                Ok(e) => Some(e),
                Err(msg) => {
                    ds.push(at(
                        Diagnostic::file(file, msg).path(format!("steps[{i}].when")),
                        w,
                    ));
                    None
                }
            },
            None => None,
        };
        steps.push(Step {
            action: act,
            params,
            on_failure: step.on_failure,
            after: step.after.map(|d| std::time::Duration::from_secs(d.0)),
            when,
        });
    }

    if !ds.is_empty() {
        ds.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        return Err(ds);
    }
    let name_line = spec.name.referenced.line();
    Ok((
        Playbook {
            name,
            description: spec.description,
            file: file.to_path_buf(),
            enabled: spec.enabled,
            matcher,
            exclusions,
            guards: spec.guards,
            approval: spec.approval,
            steps,
            revision: String::new(),
            source: std::sync::Arc::from(""),
        },
        name_line,
    ))
}
