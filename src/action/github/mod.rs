//! GitHub actions: `github.open-pull-request` (make a runtime fix permanent in the GitOps
//! repository) and `github.resolve-secret-alert` (close the secret-scanning loop after a
//! rotation).
//!
//! Owns what they share: picking the GitHub client from the context, the plan shown when no
//! GitHub access is configured, and turning octocrab errors into retryable or permanent
//! [`ActionError`]s (throttling, conflicts, 5xx and transport failures retry; validation,
//! permission and not-found errors do not). Clients are never built here; they come from
//! [`ActionCtx::github`] (`crate::clients::github`).
//!
//! Permissions are GitHub App permissions, written `permission:level` with GitHub's own names
//! (`contents:write`, `pull_requests:write`, `secret_scanning_alerts:write`); `deploy/github-app.md`
//! is generated from them ([`app`]).

pub mod app;
mod open_pull_request;
mod resolve_secret_alert;

pub use open_pull_request::GithubOpenPullRequest;
pub use resolve_secret_alert::GithubResolveSecretAlert;

use serde_json::{Value, json};

use super::{Action, ActionCtx, ActionError, ParamProblem, Plan, PlanDraft};
use crate::clients::github::{GitHub, error_status, error_text};

/// The client, or why there is none (plans still describe the change).
pub(crate) fn connection(ctx: &ActionCtx) -> Result<&GitHub, String> {
    ctx.github
        .as_ref()
        .ok_or_else(|| "no GitHub access is configured (github.app or github.token_env)".to_owned())
}

/// The client `apply` and `rollback` need: without one they fail (permanently).
pub(crate) fn connected(ctx: &ActionCtx) -> Result<&GitHub, ActionError> {
    connection(ctx).map_err(|why| ActionError::Permanent(format!("cannot change GitHub: {why}")))
}

/// The plan when no GitHub access is configured: what would be done, said plainly; the engine
/// records it as planned only.
pub(crate) fn not_connected_plan(
    action: &dyn Action,
    target: String,
    what: &str,
    why: &str,
) -> Plan {
    PlanDraft {
        target,
        summary: format!(
            "{what}: NOT CONNECTED, {why}; nothing was read, and it is only planned until GitHub \
             access is configured"
        ),
        observed: json!({ "github_connected": false }),
        before: Value::Null,
        after: Value::Null,
        ..PlanDraft::default()
    }
    .finish(action)
    .not_connected(why)
}

/// An octocrab error as an action error: conflicts (409), throttling (429, and 403 with a rate
/// limit message), server errors and transport failures are retryable; everything else is
/// permanent. The message names `what` was being done and GitHub's answer, scrubbed.
pub(crate) fn github_error(what: &str, e: &octocrab::Error) -> ActionError {
    let message = format!("{what}: {}", error_text(e));
    match error_status(e) {
        Some(409 | 429) => ActionError::Retryable(message),
        Some(s) if s >= 500 => ActionError::Retryable(message),
        Some(403) if message.to_ascii_lowercase().contains("rate limit") => {
            ActionError::Retryable(message)
        }
        Some(_) => ActionError::Permanent(message),
        None => match e {
            octocrab::Error::Hyper { .. }
            | octocrab::Error::Service { .. }
            | octocrab::Error::Http { .. } => ActionError::Retryable(message),
            _ => ActionError::Permanent(message),
        },
    }
}

/// `owner/name`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepoName {
    pub owner: String,
    pub name: String,
}

impl RepoName {
    /// Parses `owner/name` (GitHub's character set: letters, digits, `-`, `_`, `.`).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match s.trim().split_once('/') {
            Some((o, n)) if ok(o) && ok(n) => Ok(Self {
                owner: o.to_owned(),
                name: n.to_owned(),
            }),
            _ => Err(format!("`{s}` is not a repository `owner/name`")),
        }
    }

    /// `owner/name`.
    pub(crate) fn shown(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// The problems of typed parameters, rendered as one message.
pub(crate) fn render_problems(problems: &[ParamProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.path.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.path, p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The undo record of an outcome, typed.
pub(crate) fn undo_of<T: serde::de::DeserializeOwned>(
    outcome: &super::Outcome,
) -> Result<Option<T>, ActionError> {
    outcome
        .undo
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            ActionError::Permanent(format!("the outcome's undo record is unreadable: {e}"))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_are_checked() {
        assert_eq!(RepoName::parse("org/deploy").unwrap().shown(), "org/deploy");
        assert!(RepoName::parse("org").is_err());
        assert!(RepoName::parse("org/de ploy").is_err());
        assert!(RepoName::parse("/x").is_err());
    }
}
