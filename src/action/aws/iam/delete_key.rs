//! `aws.iam.delete-access-key`: deletes the finding's (old) access key once it is Inactive.
//!
//! Meant as the last step of a rotation, run with `after: <grace period>` (the engine's durable
//! timer): by then the key has been Inactive for the whole grace period, and nobody who still
//! needed it rolled the rotation back. A key that is Active again (a rollback reactivated it) is
//! never deleted: the step refuses, saying so. A key that is already gone is a no-op. Deleting
//! cannot be undone.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{KeyRef, key_path, live_key};
use crate::action::aws::{not_connected_plan, sdk_error};
use crate::action::kubernetes::render_problems;
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::aws::Aws;

/// `aws.iam.delete-access-key`.
pub struct AwsIamDeleteAccessKey;

/// `with:` parameters: none.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    typed_params::<Params>(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

/// The key's user and status, `None` when the key no longer exists.
async fn read(aws: &Aws, key: &KeyRef) -> Result<Option<(String, String)>, ActionError> {
    Ok(live_key(aws, key)
        .await?
        .and_then(|l| l.status.map(|s| (l.user, s))))
}

fn refuse_active(key: &KeyRef, user: &str) -> ActionError {
    ActionError::NotApplicable(format!(
        "access key {} of IAM user {user} is Active (reactivated, e.g. by a rollback of the \
         rotation); Firebreak never deletes an active key: deactivate it first if it must go",
        key.access_key_id
    ))
}

impl Action for AwsIamDeleteAccessKey {
    fn kind(&self) -> &'static str {
        "aws.iam.delete-access-key"
    }

    fn summary(&self) -> &'static str {
        "delete the finding's IAM access key once it is Inactive (after a rotation's grace period)"
    }

    fn reversible(&self) -> bool {
        false
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "iam:GetAccessKeyLastUsed"),
            Permission::new("aws", "iam:ListAccessKeys"),
            Permission::new("aws", "iam:DeleteAccessKey"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "{}                       # no parameters; run it with `after: 24h` behind the rotation\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        typed_params::<Params>(params).err().unwrap_or_default()
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            params_of(&input)?;
            let key = KeyRef::of(input.finding)?;
            let aws = match key.planning_client(ctx).await? {
                Ok(a) => a,
                Err(why) => {
                    let what = format!("delete access key {}", key.access_key_id);
                    return Ok(not_connected_plan(self, key.target(), &what, &why));
                }
            };
            let aws = &aws;
            let draft = match read(aws, &key).await? {
                None => PlanDraft {
                    other_targets: Vec::new(),
                    target: key.target(),
                    summary: format!("access key {} is already deleted", key.access_key_id),
                    observed: json!({"access_key_id": key.access_key_id, "exists": false}),
                    before: json!({"exists": false}),
                    after: json!({"exists": false}),
                    changes: Vec::new(),
                    noop: true,
                },
                Some((user, status)) if status == "Active" => {
                    return Err(refuse_active(&key, &user));
                }
                Some((user, status)) => PlanDraft {
                    other_targets: Vec::new(),
                    target: key.target(),
                    summary: format!(
                        "delete Inactive access key {} of IAM user {user} (cannot be undone)",
                        key.access_key_id
                    ),
                    observed: json!({
                        "access_key_id": key.access_key_id, "user": user, "status": status,
                        "exists": true,
                    }),
                    before: json!({"exists": true, "status": status}),
                    after: json!({"exists": false}),
                    changes: vec![Change {
                        op: "delete".into(),
                        path: key_path(&user, &key.access_key_id),
                        from: Some(json!({"status": status})),
                        to: None,
                    }],
                    noop: false,
                },
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
            let key = KeyRef::of(input.finding)?;
            let aws = &key.acting_client(ctx).await?;
            let outcome = |result: &str, user: Option<&str>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({"access_key_id": key.access_key_id, "user": user, "deleted": true}),
                undo: None,
            };
            let Some((user, status)) = read(aws, &key).await? else {
                // Planned as a no-op, or deleted already (a retry after a crash).
                return Ok(outcome("unchanged", None));
            };
            if status == "Active" {
                return Err(refuse_active(&key, &user));
            }
            if plan.noop || plan.observed["user"] != json!(user) {
                return Err(ActionError::Drift(format!(
                    "access key {} of IAM user {user} is not what was planned ({})",
                    key.access_key_id, plan.observed
                )));
            }
            aws.iam()
                .delete_access_key()
                .user_name(&user)
                .access_key_id(&key.access_key_id)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        &format!("deleting access key {} of {user}", key.access_key_id),
                        &e,
                    )
                })?;
            Ok(outcome("applied", Some(&user)))
        })
    }

    /// Nothing to undo: a deleted access key cannot be restored (the plan says the action is
    /// not reversible), and its outcome carries no undo record.
    fn rollback<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async { Ok(()) })
    }
}
