//! `aws.securityhub.update-finding`: closes the loop in Security Hub, setting the finding's
//! workflow status (`NOTIFIED` or `RESOLVED`) with a note naming the playbook and the Firebreak
//! finding that acted.
//!
//! The Security Hub finding is the one the Firebreak finding was parsed from: its `Id` and
//! `ProductArn` are in `fields` (the ASFF finding, see docs/parsers-securityhub.md), whichever
//! route it came by (a BatchImportFindings body, GetFindings, EventBridge, Prowler's ASFF). The
//! update is `BatchUpdateFindings`, the API meant for customers (and responders such as this
//! one) to change a finding's workflow; `BatchImportFindings` is the finding provider's.
//!
//! The finding is updated only with credentials of the account it is about (`AwsAccountId`):
//! the account is read with STS first, and a finding of another account is refused before
//! anything is read from or written to Security Hub (list the account with its role in
//! `aws.accounts`). A Security Hub administrator account's own credentials therefore do not
//! update a member account's finding; the member account's role does.
//!
//! Not reversible: a workflow status is history, not configuration; a later scan or a person
//! sets the next one.

use aws_sdk_securityhub::types::{
    AwsSecurityFinding, AwsSecurityFindingFilters, AwsSecurityFindingIdentifier, NoteUpdate,
    StringFilter, StringFilterComparison, WorkflowStatus, WorkflowUpdate,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{acting_in, credentials_note, not_connected_plan, planning_in, sdk_error};
use crate::action::kubernetes::render_problems;
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::aws::Aws;
use crate::finding::Finding;

/// `aws.securityhub.update-finding`.
pub struct AwsSecurityHubUpdateFinding;

/// Who Security Hub records as having written the note.
pub const UPDATED_BY: &str = "firebreak";

/// The workflow statuses this action sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Status {
    /// The resource owner was told; the finding stays open.
    Notified,
    /// The finding was remediated.
    Resolved,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Notified => "NOTIFIED",
            Self::Resolved => "RESOLVED",
        }
    }
}

/// `with:` parameters.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The workflow status to set.
    status: Status,
    /// Text added to the note after the line naming the playbook and finding.
    #[serde(default)]
    note: Option<String>,
}

/// The Security Hub finding a Firebreak finding came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HubFinding {
    id: String,
    product_arn: String,
    account: Option<String>,
    /// The finding's region (`Region`, else the `ProductArn` region).
    region: Option<String>,
}

impl HubFinding {
    fn of(finding: &Finding) -> Result<Self, ActionError> {
        let s = |k: &str| {
            finding
                .fields
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match (s("Id"), s("ProductArn")) {
            (Some(id), Some(product_arn)) => Ok(Self {
                region: s("Region").or_else(|| {
                    // arn:aws:securityhub:<region>::product/…
                    product_arn
                        .split(':')
                        .nth(3)
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned)
                }),
                id,
                product_arn,
                account: s("AwsAccountId"),
            }),
            _ => Err(ActionError::NotApplicable(format!(
                "finding {} did not come from Security Hub (no ASFF Id and ProductArn in its \
                 fields)",
                finding.id
            ))),
        }
    }

    fn key(&self) -> String {
        format!("aws:securityhub:{}", self.id)
    }
}

/// The finding's workflow status in Security Hub now (`NEW` when it has none).
async fn read_status(aws: &Aws, f: &HubFinding) -> Result<String, ActionError> {
    let eq = |v: &str| {
        StringFilter::builder()
            .comparison(StringFilterComparison::Equals)
            .value(v)
            .build()
    };
    let filters = AwsSecurityFindingFilters::builder()
        .id(eq(&f.id))
        .product_arn(eq(&f.product_arn))
        .build();
    let hub = aws.securityhub_in(f.region.as_deref());
    let mut next: Option<String> = None;
    loop {
        let what = format!("reading Security Hub finding {}", f.id);
        let request = hub
            .get_findings()
            .filters(filters.clone())
            .set_next_token(next.take())
            .send();
        // On a task of its own, so that it runs on a runtime worker thread, whose stack is
        // sized for it (see `crate::cli::runtime`): the SDK's deserialiser of a full ASFF
        // finding needs more stack than a thread's default in a debug build.
        let page = tokio::spawn(request)
            .await
            .map_err(|e| ActionError::Retryable(format!("{what}: {e}")))?
            .map_err(|e| sdk_error(&what, &e))?;
        // Filters narrow the answer to this one finding; matching again costs nothing and
        // keeps a server that ignores filters from handing us another finding.
        if let Some(found) = page.findings().iter().find(|x| same(x, f)) {
            return Ok(status_of(found));
        }
        match page.next_token().filter(|t| !t.is_empty()) {
            Some(t) => next = Some(t.to_owned()),
            None => break,
        }
    }
    Err(ActionError::NotApplicable(format!(
        "Security Hub has no finding {} of {} (in region {})",
        f.id,
        f.product_arn,
        f.region.as_deref().or(aws.region()).unwrap_or("?")
    )))
}

fn same(x: &AwsSecurityFinding, f: &HubFinding) -> bool {
    x.id.as_deref() == Some(f.id.as_str()) && x.product_arn.as_deref() == Some(&f.product_arn)
}

fn status_of(x: &AwsSecurityFinding) -> String {
    x.workflow
        .as_ref()
        .and_then(|w| w.status())
        .map_or_else(|| "NEW".to_owned(), |s| s.as_str().to_owned())
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    typed_params::<Params>(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

/// The note: which playbook acted on which Firebreak finding, then the step's own text.
fn note_text(input: &StepInput<'_>, params: &Params) -> String {
    let mut text = format!(
        "Firebreak playbook {} (finding {}): workflow set to {}",
        input.playbook,
        input.finding.id,
        params.status.as_str()
    );
    if let Some(extra) = params.note.as_deref().filter(|n| !n.trim().is_empty()) {
        text.push_str(". ");
        text.push_str(extra.trim());
    }
    // Security Hub limits a note to 512 characters.
    text.chars().take(512).collect()
}

impl Action for AwsSecurityHubUpdateFinding {
    fn kind(&self) -> &'static str {
        "aws.securityhub.update-finding"
    }

    fn summary(&self) -> &'static str {
        "set the Security Hub finding's workflow status (NOTIFIED or RESOLVED) with a note"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn locks_target(&self) -> bool {
        // Only bookkeeping upstream: it must not wait behind the containment of the resource.
        false
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "securityhub:GetFindings"),
            Permission::new("aws", "securityhub:BatchUpdateFindings"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "status: NOTIFIED          # or RESOLVED\n\
         note: \"Public access blocked; owner asked to review.\"   # optional\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        typed_params::<Params>(params)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|mut p| {
                if p.message.contains("unknown variant") || p.message.contains("missing field") {
                    p.hint = Some("status: NOTIFIED or status: RESOLVED".to_owned());
                }
                p
            })
            .collect()
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let f = HubFinding::of(input.finding)?;
            let want = params.status.as_str();
            let aws = match planning_in(ctx, f.account.as_deref()).await? {
                Ok((aws, _)) => aws,
                Err(why) => {
                    let what = format!("set Security Hub finding {} to {want}", f.id);
                    return Ok(not_connected_plan(self, f.key(), &what, &why));
                }
            };
            let credentials = credentials_note(&aws, f.account.as_deref());
            let status = read_status(&aws, &f).await?;
            let observed = json!({
                "id": f.id,
                "product_arn": f.product_arn,
                "account": f.account,
                "credentials": credentials,
                "workflow_status": status,
            });
            let draft = if status == want {
                PlanDraft {
                    other_targets: Vec::new(),
                    target: f.key(),
                    summary: format!("Security Hub finding {} is already {want}", f.id),
                    observed,
                    before: json!({"workflow_status": status}),
                    after: json!({"workflow_status": status}),
                    changes: Vec::new(),
                    noop: true,
                }
            } else {
                let note = note_text(&input, &params);
                PlanDraft {
                    other_targets: Vec::new(),
                    target: f.key(),
                    summary: format!(
                        "set Security Hub finding {} from {status} to {want} with a note by \
                         {UPDATED_BY} (acting as {credentials})",
                        f.id
                    ),
                    observed,
                    before: json!({"workflow_status": status}),
                    after: json!({"workflow_status": want,
                        "note": {"text": note, "updated_by": UPDATED_BY}}),
                    changes: vec![
                        Change {
                            op: "update".into(),
                            path: format!("securityhub finding {}: Workflow.Status", f.id),
                            from: Some(Value::String(status)),
                            to: Some(Value::String(want.to_owned())),
                        },
                        Change {
                            op: "update".into(),
                            path: format!("securityhub finding {}: Note", f.id),
                            from: None,
                            to: Some(json!({"Text": note, "UpdatedBy": UPDATED_BY})),
                        },
                    ],
                    noop: false,
                }
            };
            Ok(draft.finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let f = HubFinding::of(input.finding)?;
            let want = params.status.as_str();
            let (aws, _) = acting_in(ctx, f.account.as_deref()).await?;
            let live = read_status(&aws, &f).await?;
            let outcome = |result: &str, previous: &str| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({"id": f.id, "workflow_status": want, "previous_status": previous}),
                undo: None,
            };
            if live == want {
                return Ok(outcome("unchanged", &live));
            }
            if plan.noop || plan.observed["workflow_status"].as_str() != Some(live.as_str()) {
                return Err(ActionError::Drift(format!(
                    "Security Hub finding {} is {live} now, planned with {}",
                    f.id, plan.observed["workflow_status"]
                )));
            }
            let out = aws
                .securityhub_in(f.region.as_deref())
                .batch_update_findings()
                .finding_identifiers(
                    AwsSecurityFindingIdentifier::builder()
                        .id(&f.id)
                        .product_arn(&f.product_arn)
                        .build(),
                )
                .workflow(
                    WorkflowUpdate::builder()
                        .status(WorkflowStatus::from(want))
                        .build(),
                )
                .note(
                    NoteUpdate::builder()
                        .text(note_text(&input, &params))
                        .updated_by(UPDATED_BY)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_error(&format!("updating Security Hub finding {}", f.id), &e))?;
            if let Some(u) = out.unprocessed_findings().first() {
                let code = u.error_code().unwrap_or("unknown");
                let message =
                    crate::redact::scrub(u.error_message().unwrap_or_default()).into_owned();
                let text = format!(
                    "Security Hub did not update finding {}: {code}: {message}",
                    f.id
                );
                return Err(
                    if code == "ConcurrentUpdateError" || code == "InternalFailure" {
                        ActionError::Retryable(text)
                    } else {
                        ActionError::Permanent(text)
                    },
                );
            }
            Ok(outcome("applied", &live))
        })
    }

    fn rollback<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async { Ok(()) })
    }
}
