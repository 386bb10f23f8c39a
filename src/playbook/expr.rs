//! Firebreak's small interface over CEL, so the engine does not depend on one CEL crate's API.
//!
//! Expressions see one variable, `finding` (the canonical finding as JSON: `finding.class`,
//! `finding.resources`, `finding.fields[...]`, …). The finding's CEL value is built once per
//! finding ([`FindingValue`]) and shared by every playbook evaluated against it.
//! Semantics: a field that does not exist is an evaluation *error*, not `false`; callers decide
//! what an error means (no match for `when`, excluded for `exclude`).

use std::sync::{Arc, LazyLock};

use crate::finding::Finding;

/// The only variable an expression may use.
pub const VARIABLE: &str = "finding";

#[allow(clippy::expect_used)] // a constant pattern, exercised by every test that compiles CEL
static BOUND: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"\.(?:exists|all|exists_one|map|filter)\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
        .expect("comprehension pattern compiles")
});

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled boolean expression.
pub struct Expr {
    source: String,
    program: cel::Program,
    needs_fields: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

/// A finding converted to a CEL value, once per finding (and per shape: see [`Expr::needs_fields`]).
pub struct FindingValue(cel::Value);

/// The finding as CEL sees it. `fields` (the whole native record, often the largest part) is
/// converted only for expressions that mention it.
#[derive(serde::Serialize)]
struct CelFinding<'a> {
    id: String,
    fingerprint: &'a crate::finding::Fingerprint,
    source: &'a str,
    intake: &'a str,
    rule: &'a str,
    title: &'a str,
    severity: crate::finding::Severity,
    class: crate::finding::Class,
    resources: &'a [crate::finding::ResourceRef],
    labels: &'a std::collections::BTreeMap<String, String>,
    observed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a serde_json::Value>,
}

impl FindingValue {
    /// Converts a finding; `with_fields` includes the native record.
    ///
    /// # Errors
    /// When the finding cannot be represented (not expected for parser-built findings).
    pub fn new(finding: &Finding, with_fields: bool) -> Result<Self, String> {
        let view = CelFinding {
            id: finding.id.to_string(),
            fingerprint: &finding.fingerprint,
            source: &finding.source,
            intake: &finding.intake,
            rule: &finding.rule,
            title: &finding.title,
            severity: finding.severity,
            class: finding.class,
            resources: &finding.resources,
            labels: &finding.labels,
            observed_at: finding.observed_at.to_rfc3339(),
            fields: with_fields.then_some(&finding.fields),
        };
        cel::to_value(&view)
            .map(FindingValue)
            .map_err(|e| e.to_string())
    }
}

impl Expr {
    /// Compiles `source`, and checks it names no variable but `finding`.
    ///
    /// # Errors
    /// A message saying what is wrong (syntax, unknown variable).
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = ENV.compile(source).map_err(|errs| {
            errs.errors
                .iter()
                .map(|e| format!("invalid CEL at column {}: {}", e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        // Macro-bound names (`r` in `finding.resources.exists(r, …)`) are reported as variables
        // by the CEL crate; collect them so only truly free names are rejected.
        let bound: Vec<&str> = BOUND
            .captures_iter(source)
            .filter_map(|c| c.get(1))
            .map(|m| m.as_str())
            .collect();
        let unknown: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .filter(|v| *v != VARIABLE && !bound.contains(v))
            .map(str::to_owned)
            .collect();
        if let Some(v) = unknown.first() {
            let mut msg = format!(
                "unknown variable `{v}` in CEL expression; the only variable is `{VARIABLE}`"
            );
            if crate::error::did_you_mean(v, [VARIABLE]).is_some() {
                msg.push_str(&format!(" (did you mean `{VARIABLE}`?)"));
            }
            return Err(msg);
        }
        // Conservative: any mention of `fields` (even in a string) converts the native record.
        let needs_fields = source.contains("fields");
        Ok(Self {
            source: source.to_owned(),
            program,
            needs_fields,
        })
    }

    /// Whether evaluation needs `finding.fields` (the native record) in the CEL value.
    #[must_use]
    pub fn needs_fields(&self) -> bool {
        self.needs_fields
    }

    /// The expression as written.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a boolean.
    ///
    /// # Errors
    /// Evaluation errors (missing field, wrong type) and non-boolean results.
    pub fn eval_bool(&self, finding: &FindingValue) -> Result<bool, String> {
        let mut ctx = cel::Context::with_env(Arc::clone(&ENV));
        ctx.add_variable_from_value(VARIABLE, finding.0.clone());
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "expression returned {:?}, not a boolean",
                other.type_of()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}
