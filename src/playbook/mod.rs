//! Playbooks: the YAML scenarios that say which findings to act on and how.
//!
//! [`load_dir`] reads a directory, reports every problem at once as positioned
//! [`crate::error::Diagnostic`]s, and compiles what it read into a [`PlaybookSet`]. Matching is
//! compiled at load time: patterns become regexes, CEL is parsed once, and playbooks are indexed
//! by class so a finding is only checked against candidates. The finding's CEL value is built
//! at most once per finding, and only if a candidate needs it.

pub mod expr;
mod load;
pub mod matcher;
pub mod spec;

use std::cell::OnceCell;
use std::path::PathBuf;

pub(crate) use load::split_hint;
pub use load::{LoadError, load_dir, load_str, revision_of};
pub use matcher::MatchResult;
pub use spec::{ApprovalSpec, GuardsSpec, OnFailure, OnLimit, PlaybookSpec};

use crate::action::Action;
use crate::finding::{Class, Finding};
use expr::FindingValue;
use matcher::{Exclusion, Matcher};

/// A compiled playbook.
pub struct Playbook {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Disabled playbooks never match.
    pub enabled: bool,
    pub(crate) matcher: Matcher,
    pub(crate) exclusions: Vec<Exclusion>,
    /// Rate limits and cooldowns (enforced by the engine).
    pub guards: GuardsSpec,
    /// Approval requirement.
    pub approval: ApprovalSpec,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// `sha256:<hex>` of the file's text: the revision an execution is pinned to.
    pub revision: String,
    /// The file's text (stored with the revision, so an execution finishes on the playbook it
    /// started with whatever happens to the file).
    pub source: std::sync::Arc<str>,
}

impl std::fmt::Debug for Playbook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playbook")
            .field("name", &self.name)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A compiled step.
pub struct Step {
    /// The action.
    pub action: &'static dyn Action,
    /// Its validated `with:` parameters.
    pub params: serde_json::Value,
    /// What a failure does to later steps.
    pub on_failure: OnFailure,
    /// Delay after the previous step (a durable timer in the store).
    pub after: Option<std::time::Duration>,
    /// Run only for findings this holds for (`steps[].when`).
    pub when: Option<expr::Expr>,
}

impl Step {
    /// Why this step does not run for `finding` (its `when` is false or cannot be evaluated);
    /// `None` when it runs.
    #[must_use]
    pub fn skipped_for(&self, finding: &Finding) -> Option<String> {
        let when = self.when.as_ref()?;
        let verdict =
            FindingValue::new(finding, when.needs_fields()).and_then(|v| when.eval_bool(&v));
        match verdict {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "not for this finding: `{}` is false",
                when.source()
            )),
            Err(e) => Some(format!(
                "not for this finding: `{}` cannot be evaluated ({e})",
                when.source()
            )),
        }
    }
}

/// The verdict of one playbook for one finding (only for playbooks whose `match` held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Act on it.
    Act,
    /// An exclusion applies (or could not be evaluated): do nothing, say why.
    Excluded(String),
    /// The `when` expression failed to evaluate: treated as no match, reported.
    WhenError(String),
}

/// One playbook's verdict.
#[derive(Debug)]
pub struct Evaluation<'a> {
    /// The playbook.
    pub playbook: &'a Playbook,
    /// What to do.
    pub decision: Decision,
}

/// A loaded, valid set of playbooks.
#[derive(Debug, Default)]
pub struct PlaybookSet {
    playbooks: Vec<Playbook>,
    by_class: [Vec<usize>; Class::ALL.len()],
    any_class: Vec<usize>,
}

fn class_slot(c: Class) -> usize {
    Class::ALL
        .iter()
        .position(|x| *x == c)
        .unwrap_or(Class::ALL.len() - 1)
}

impl PlaybookSet {
    /// Builds the class index.
    #[must_use]
    pub fn new(playbooks: Vec<Playbook>) -> Self {
        let mut set = PlaybookSet {
            playbooks,
            ..Default::default()
        };
        for (i, pb) in set.playbooks.iter().enumerate() {
            if !pb.enabled {
                continue;
            }
            match &pb.matcher.classes {
                Some(classes) => {
                    for c in classes {
                        set.by_class[class_slot(*c)].push(i);
                    }
                }
                None => set.any_class.push(i),
            }
        }
        set
    }

    /// Every playbook, in load order.
    #[must_use]
    pub fn playbooks(&self) -> &[Playbook] {
        &self.playbooks
    }

    /// The playbooks whose `match` holds for `finding`, with their verdicts, in load order.
    /// Playbooks that do not match are not listed (except `when` errors, which are reported).
    #[must_use]
    pub fn evaluate(&self, finding: &Finding) -> Vec<Evaluation<'_>> {
        let mut candidates: Vec<usize> = self.by_class[class_slot(finding.class)].clone();
        candidates.extend_from_slice(&self.any_class);
        candidates.sort_unstable();
        candidates.dedup();

        // Built at most once per finding and shape, and only if a candidate needs CEL.
        let lite: OnceCell<Option<FindingValue>> = OnceCell::new();
        let full: OnceCell<Option<FindingValue>> = OnceCell::new();
        let cel = |with_fields: bool| {
            let cell = if with_fields { &full } else { &lite };
            cell.get_or_init(|| FindingValue::new(finding, with_fields).ok())
                .as_ref()
        };

        let mut out = Vec::new();
        for i in candidates {
            let pb = &self.playbooks[i];
            match pb.matcher.evaluate(finding, &cel) {
                MatchResult::NotMatched(_) => {}
                MatchResult::WhenError(e) => out.push(Evaluation {
                    playbook: pb,
                    decision: Decision::WhenError(e),
                }),
                MatchResult::Matched => {
                    let excluded = pb
                        .exclusions
                        .iter()
                        .find_map(|ex| ex.applies(finding, &cel));
                    let decision = match excluded {
                        Some(reason) => Decision::Excluded(reason),
                        None => Decision::Act,
                    };
                    out.push(Evaluation {
                        playbook: pb,
                        decision,
                    });
                }
            }
        }
        out
    }
}

/// The JSON Schema of a playbook file, generated from the Rust types.
#[must_use]
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(PlaybookSpec);
    serde_json::to_value(schema).unwrap_or(serde_json::Value::Null)
}
