//! `github.resolve-secret-alert`: after the exposed credential was rotated, mark the GitHub
//! secret-scanning alert that reported it `resolved` as `revoked`, with a comment naming the
//! playbook and the finding, so the alert list shows what was done. Rollback reopens it (or puts
//! back the resolution it had).
//!
//! The alert comes from the finding (parser `github`): its `github.repository` resource with an
//! `alert_number`. Alerts are read with `hide_secret=true`: the secret never reaches Firebreak
//! through this action.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    RepoName, connected, connection, github_error, not_connected_plan, render_problems, undo_of,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::github::GitHub;
use crate::finding::{Finding, ResourceRef};

/// Resolves a secret-scanning alert as revoked.
pub struct GithubResolveSecretAlert;

/// The resolution set.
const REVOKED: &str = "revoked";

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The resolution comment; absent: one naming the playbook and the finding.
    #[serde(default)]
    comment: Option<String>,
}

/// The alert a finding names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AlertRef {
    repo: RepoName,
    number: u64,
}

impl AlertRef {
    fn of(finding: &Finding) -> Result<Self, ActionError> {
        finding
            .resources
            .iter()
            .find_map(|r| match r {
                ResourceRef::GithubRepository {
                    owner,
                    repo,
                    alert_number: Some(n),
                    ..
                } => Some(Self {
                    repo: RepoName {
                        owner: owner.clone(),
                        name: repo.clone(),
                    },
                    number: *n,
                }),
                _ => None,
            })
            .ok_or_else(|| {
                ActionError::NotApplicable(
                    "the finding names no GitHub secret-scanning alert (a github.repository \
                     resource with an alert number, from the `github` parser)"
                        .to_owned(),
                )
            })
    }

    fn key(&self) -> String {
        ResourceRef::GithubRepository {
            owner: self.repo.owner.clone(),
            repo: self.repo.name.clone(),
            path: None,
            alert_number: Some(self.number),
        }
        .key()
    }

    fn shown(&self) -> String {
        format!(
            "secret-scanning alert #{} of {}",
            self.number,
            self.repo.shown()
        )
    }

    fn route(&self) -> String {
        format!(
            "/repos/{}/{}/secret-scanning/alerts/{}",
            self.repo.owner, self.repo.name, self.number
        )
    }
}

/// The part of an alert read here (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AlertState {
    state: String,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    resolution_comment: Option<String>,
}

async fn read(gh: &GitHub, alert: &AlertRef) -> Result<AlertState, ActionError> {
    gh.octocrab()
        .get::<AlertState, _, _>(alert.route(), Some(&[("hide_secret", "true")]))
        .await
        .map_err(|e| github_error(&format!("reading {}", alert.shown()), &e))
}

async fn update(gh: &GitHub, alert: &AlertRef, body: &Value) -> Result<AlertState, ActionError> {
    gh.octocrab()
        .patch::<AlertState, _, _>(alert.route(), Some(body))
        .await
        .map_err(|e| github_error(&format!("updating {}", alert.shown()), &e))
}

fn comment(input: &StepInput<'_>, p: &Params) -> String {
    let text = p.comment.clone().unwrap_or_else(|| match input.execution {
        Some(execution) => format!(
            "Revoked: rotated by Firebreak, execution {execution} (playbook {}, finding {})",
            input.playbook, input.finding.id
        ),
        None => format!(
            "Revoked: rotated by Firebreak, playbook {}, finding {}",
            input.playbook, input.finding.id
        ),
    });
    crate::redact::scrub(text.trim()).into_owned()
}

fn is_revoked(s: &AlertState) -> bool {
    s.state == "resolved" && s.resolution.as_deref() == Some(REVOKED)
}

/// What rollback needs: the alert and what it was before.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    owner: String,
    repo: String,
    number: u64,
    before: AlertState,
}

impl Action for GithubResolveSecretAlert {
    fn kind(&self) -> &'static str {
        "github.resolve-secret-alert"
    }

    fn summary(&self) -> &'static str {
        "mark the GitHub secret-scanning alert of the finding resolved as revoked (after a \
         rotation)"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("github", "metadata:read"),
            Permission::new("github", "secret_scanning_alerts:write"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "{}                       # the alert comes from the finding; `comment:` overrides the note\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        match typed_params::<Params>(params) {
            Ok(p) if p.comment.as_deref().is_some_and(|c| c.trim().is_empty()) => {
                vec![ParamProblem {
                    path: "comment".into(),
                    message: "empty comment".into(),
                    hint: Some("leave it out for the default comment".into()),
                }]
            }
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let p = typed_params::<Params>(input.params)
                .map_err(|p| ActionError::Permanent(render_problems(&p)))?;
            let alert = AlertRef::of(input.finding)?;
            let gh = match connection(ctx) {
                Ok(gh) => gh,
                Err(why) => {
                    let what = format!("resolve {} as revoked", alert.shown());
                    return Ok(not_connected_plan(self, alert.key(), &what, &why));
                }
            };
            let live = read(gh, &alert).await?;
            let observed =
                json!({"alert": alert.number, "state": live.state, "resolution": live.resolution});
            let before = json!(live);
            if is_revoked(&live) {
                return Ok(PlanDraft {
                    target: alert.key(),
                    summary: format!("{} is already resolved as revoked", alert.shown()),
                    observed,
                    after: before.clone(),
                    before,
                    noop: true,
                    ..PlanDraft::default()
                }
                .finish(self));
            }
            let note = comment(&input, &p);
            Ok(PlanDraft {
                target: alert.key(),
                summary: format!(
                    "resolve {} ({}) as revoked",
                    alert.shown(),
                    match live.resolution.as_deref() {
                        Some(r) => format!("now resolved as {r}"),
                        None => format!("now {}", live.state),
                    }
                ),
                observed,
                before,
                after: json!({"state": "resolved", "resolution": REVOKED, "resolution_comment": note}),
                changes: vec![Change {
                    op: "update".into(),
                    path: format!("{}: state, resolution", alert.shown()),
                    from: Some(json!({"state": live.state, "resolution": live.resolution})),
                    to: Some(json!({"state": "resolved", "resolution": REVOKED})),
                }],
                noop: false,
                ..PlanDraft::default()
            }
            .finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let p = typed_params::<Params>(input.params)
                .map_err(|p| ActionError::Permanent(render_problems(&p)))?;
            let alert = AlertRef::of(input.finding)?;
            let gh = connected(ctx)?;
            let live = read(gh, &alert).await?;
            let outcome = |result: &str, undo: Option<Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({
                    "repository": alert.repo.shown(),
                    "alert": alert.number,
                    "state": "resolved",
                    "resolution": REVOKED,
                }),
                undo: undo.and_then(|u| serde_json::to_value(u).ok()),
            };
            if is_revoked(&live) {
                // Applied already (a retry after a crash), or resolved so by someone else.
                return Ok(outcome("unchanged", None));
            }
            let planned = (
                plan.observed["state"].as_str(),
                plan.observed["resolution"].as_str(),
            );
            if plan.noop || planned != (Some(live.state.as_str()), live.resolution.as_deref()) {
                return Err(ActionError::Drift(format!(
                    "{} is {} now, planned when it was {}",
                    alert.shown(),
                    live.resolution.as_deref().unwrap_or(&live.state),
                    planned.1.or(planned.0).unwrap_or("?")
                )));
            }
            let note = comment(&input, &p);
            update(
                gh,
                &alert,
                &json!({"state": "resolved", "resolution": REVOKED, "resolution_comment": note}),
            )
            .await?;
            Ok(outcome(
                "applied",
                Some(Undo {
                    owner: alert.repo.owner.clone(),
                    repo: alert.repo.name.clone(),
                    number: alert.number,
                    before: live,
                }),
            ))
        })
    }

    fn rollback<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let Some(undo) = undo_of::<Undo>(outcome)? else {
                return Ok(());
            };
            let gh = connected(ctx)?;
            let alert = AlertRef {
                repo: RepoName {
                    owner: undo.owner.clone(),
                    name: undo.repo.clone(),
                },
                number: undo.number,
            };
            let live = read(gh, &alert).await?;
            if !is_revoked(&live) {
                // Reopened or re-resolved by someone since: theirs stands.
                return Ok(());
            }
            let body = if undo.before.state == "resolved" {
                json!({
                    "state": "resolved",
                    "resolution": undo.before.resolution,
                    "resolution_comment": undo.before.resolution_comment,
                })
            } else {
                json!({"state": "open"})
            };
            update(gh, &alert, &body).await?;
            Ok(())
        })
    }
}
