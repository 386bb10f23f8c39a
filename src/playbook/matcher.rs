//! Compiled match conditions and exclusions.
//!
//! All conditions of a `match:` block must hold. `resource:` holds when at least one resource
//! matches every attribute given. `exclude:` entries are tried in order; an entry applies when all
//! of its conditions hold, and an entry that cannot be evaluated (a CEL error, an attribute the
//! matching resource does not know) applies too: exclusions fail closed.

use serde_json::Value;

use super::expr::{Expr, FindingValue};
use super::spec::{Pattern, SeverityCond};
use crate::finding::{Class, Finding, ResourceRef};

/// The compiled `match:` block.
#[derive(Debug, Default)]
pub struct Matcher {
    /// Classes (any of); `None` means any class.
    pub classes: Option<Vec<Class>>,
    pub(crate) sources: Option<Vec<String>>,
    pub(crate) intakes: Option<Vec<Pattern>>,
    pub(crate) rules: Option<Vec<Pattern>>,
    pub(crate) severity: Option<SeverityCond>,
    pub(crate) resource: Option<CompiledSelector>,
    pub(crate) labels: Vec<(String, Vec<Pattern>)>,
    pub(crate) fields: Vec<(FieldPath, Vec<Pattern>)>,
    pub(crate) when: Option<Expr>,
}

/// A compiled resource selector.
#[derive(Debug, Default)]
pub struct CompiledSelector {
    pub(crate) types: Option<Vec<String>>,
    pub(crate) attrs: Vec<(&'static str, Vec<Pattern>)>,
}

impl CompiledSelector {
    fn is_empty(&self) -> bool {
        self.types.is_none() && self.attrs.is_empty()
    }

    /// For one resource: `Some(true/false)` when decided, `None` when an attribute that this
    /// resource type has is unknown on it (cannot evaluate).
    fn check(&self, r: &ResourceRef) -> Option<bool> {
        if let Some(types) = &self.types
            && !types.iter().any(|t| t == r.type_name())
        {
            return Some(false);
        }
        let mut unknown = false;
        for (name, patterns) in &self.attrs {
            match r.attr(name) {
                Some(v) => {
                    if !patterns.iter().any(|p| p.is_match(&v)) {
                        return Some(false);
                    }
                }
                None if applies_to(name, r) => unknown = true,
                None => return Some(false),
            }
        }
        if unknown { None } else { Some(true) }
    }
}

/// Whether a resource of this type has the attribute at all (even if this one lacks a value).
fn applies_to(attr: &str, r: &ResourceRef) -> bool {
    let attrs: &[&str] = match r {
        ResourceRef::Kubernetes { .. } => &["cluster", "namespace", "kind", "name", "container"],
        ResourceRef::AwsIamAccessKey { .. } => &["account", "user", "access_key_id", "name"],
        ResourceRef::AwsIamUser { .. } => &["account", "user", "name"],
        ResourceRef::AwsS3Bucket { .. } => &["account", "region", "bucket", "name"],
        ResourceRef::AwsEc2Instance { .. } => &["account", "region", "instance_id", "name"],
        ResourceRef::GithubRepository { .. } => &["owner", "repo", "path", "name"],
        ResourceRef::Image { .. } => &["ref", "digest", "name"],
        ResourceRef::Host { .. } => &["name"],
    };
    attrs.contains(&attr)
}

/// A path into `finding.fields`: a JSON pointer (`/output_fields/k8s.ns.name`) or dotted keys.
#[derive(Debug, Clone)]
pub struct FieldPath(String);

impl FieldPath {
    pub(crate) fn new(path: &str) -> Self {
        if path.starts_with('/') {
            Self(path.to_owned())
        } else {
            let escaped: Vec<String> = path
                .split('.')
                .map(|k| k.replace('~', "~0").replace('/', "~1"))
                .collect();
            Self(format!("/{}", escaped.join("/")))
        }
    }

    fn lookup<'a>(&self, fields: &'a Value) -> Option<&'a Value> {
        fields.pointer(&self.0)
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn any_match(patterns: &[Pattern], text: &str) -> bool {
    patterns.iter().any(|p| p.is_match(text))
}

/// Why a finding did or did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchResult {
    /// Every condition holds.
    Matched,
    /// Some condition does not hold (the first one that failed).
    NotMatched(&'static str),
    /// The `when` expression could not be evaluated; treated as no match.
    WhenError(String),
}

impl Matcher {
    /// Evaluates the conditions, cheapest first; CEL last and only when everything else holds.
    pub fn evaluate<'v>(
        &self,
        f: &Finding,
        cel: &dyn Fn(bool) -> Option<&'v FindingValue>,
    ) -> MatchResult {
        if let Some(classes) = &self.classes
            && !classes.contains(&f.class)
        {
            return MatchResult::NotMatched("class");
        }
        if let Some(sources) = &self.sources
            && !sources.contains(&f.source)
        {
            return MatchResult::NotMatched("source");
        }
        if let Some(intakes) = &self.intakes
            && !any_match(intakes, &f.intake)
        {
            return MatchResult::NotMatched("intake");
        }
        if let Some(sev) = &self.severity
            && !sev.holds(f.severity)
        {
            return MatchResult::NotMatched("severity");
        }
        if let Some(rules) = &self.rules
            && !any_match(rules, &f.rule)
        {
            return MatchResult::NotMatched("rule");
        }
        if let Some(sel) = &self.resource
            && !sel.is_empty()
            && !f.resources.iter().any(|r| sel.check(r) == Some(true))
        {
            return MatchResult::NotMatched("resource");
        }
        for (key, patterns) in &self.labels {
            match f.labels.get(key) {
                Some(v) if any_match(patterns, v) => {}
                _ => return MatchResult::NotMatched("labels"),
            }
        }
        for (path, patterns) in &self.fields {
            match path.lookup(&f.fields).and_then(value_text) {
                Some(v) if any_match(patterns, &v) => {}
                _ => return MatchResult::NotMatched("fields"),
            }
        }
        if let Some(expr) = &self.when {
            let Some(value) = cel(expr.needs_fields()) else {
                return MatchResult::WhenError("the finding could not be converted for CEL".into());
            };
            return match expr.eval_bool(value) {
                Ok(true) => MatchResult::Matched,
                Ok(false) => MatchResult::NotMatched("when"),
                Err(e) => MatchResult::WhenError(e),
            };
        }
        MatchResult::Matched
    }
}

/// One compiled `exclude:` entry.
#[derive(Debug, Default)]
pub struct Exclusion {
    pub(crate) index: usize,
    pub(crate) resource: CompiledSelector,
    pub(crate) rules: Option<Vec<Pattern>>,
    pub(crate) labels: Vec<(String, Vec<Pattern>)>,
    pub(crate) when: Option<Expr>,
}

impl Exclusion {
    /// `Ok(Some(reason))` when the exclusion applies (or could not be evaluated: fail closed),
    /// `Ok(None)` when it does not.
    pub fn applies<'v>(
        &self,
        f: &Finding,
        cel: &dyn Fn(bool) -> Option<&'v FindingValue>,
    ) -> Option<String> {
        let me = format!("exclude[{}]", self.index);
        if let Some(rules) = &self.rules
            && !any_match(rules, &f.rule)
        {
            return None;
        }
        for (key, patterns) in &self.labels {
            match f.labels.get(key) {
                Some(v) if any_match(patterns, v) => {}
                _ => return None,
            }
        }
        if !self.resource.is_empty() {
            let mut unknown = false;
            let mut hit = false;
            for r in &f.resources {
                match self.resource.check(r) {
                    Some(true) => hit = true,
                    None => unknown = true,
                    Some(false) => {}
                }
            }
            if !hit && unknown {
                return Some(format!(
                    "{me} could not be evaluated: a resource lacks an attribute it names (fail closed)"
                ));
            }
            if !hit {
                return None;
            }
        }
        if let Some(expr) = &self.when {
            let Some(value) = cel(expr.needs_fields()) else {
                return Some(format!("{me}.when could not be evaluated (fail closed)"));
            };
            return match expr.eval_bool(value) {
                Ok(true) => Some(format!("{me} applies")),
                Ok(false) => None,
                Err(e) => Some(format!(
                    "{me}.when could not be evaluated: {e} (fail closed)"
                )),
            };
        }
        Some(format!("{me} applies"))
    }
}
