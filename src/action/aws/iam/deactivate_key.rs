//! `aws.iam.deactivate-access-key`: sets the finding's access key Inactive.
//!
//! The key's user comes from the finding, else from IAM (`GetAccessKeyLastUsed`). A key that is
//! already Inactive is a no-op; rollback sets it Active again, only if it is still Inactive.
//!
//! AWS calls per key: `ListAccessKeys` to plan (plus `GetAccessKeyLastUsed` when the finding
//! names no user) and `UpdateAccessKey` to apply; the account check (`GetCallerIdentity`) is
//! made once per credentials, not per key. `apply` trusts the plan it is given (the engine
//! plans right before it applies) instead of reading the key again: the write is idempotent, so
//! a second apply, or one racing a person who deactivated the key meanwhile, changes nothing.

use aws_sdk_iam::types::StatusType;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{KeyRef, LiveKey, key_path, live_key, set_status};
use crate::action::aws::{acting_in, not_connected_plan};
use crate::action::kubernetes::{render_problems, undo_of};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};

/// `aws.iam.deactivate-access-key`.
pub struct AwsIamDeactivateAccessKey;

/// `with:` parameters: none.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    /// The account the finding named (its role, if `aws.accounts` lists it, signs rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    user: String,
    access_key_id: String,
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    typed_params::<Params>(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

/// The key as read live; a key IAM does not know is not applicable.
async fn read(aws: &crate::clients::aws::Aws, key: &KeyRef) -> Result<LiveKey, ActionError> {
    let live = live_key(aws, key).await?;
    match live {
        Some(l) if l.status.is_some() => Ok(l),
        Some(l) => Err(ActionError::NotApplicable(format!(
            "access key {} is not a key of IAM user {} (it may have been deleted)",
            key.access_key_id, l.user
        ))),
        None => Err(ActionError::NotApplicable(format!(
            "access key {} does not exist in this account (it may have been deleted)",
            key.access_key_id
        ))),
    }
}

fn observed(key: &KeyRef, live: &LiveKey) -> Value {
    json!({
        "user": live.user,
        "access_key_id": key.access_key_id,
        "status": live.status,
    })
}

impl AwsIamDeactivateAccessKey {
    fn draft(key: &KeyRef, live: &LiveKey) -> PlanDraft {
        let status = live.status.clone().unwrap_or_default();
        let shown = format!("access key {} of IAM user {}", key.access_key_id, live.user);
        if status == "Inactive" {
            return PlanDraft {
                other_targets: Vec::new(),
                target: key.target(),
                summary: format!("{shown} is already Inactive"),
                observed: observed(key, live),
                before: json!({"status": "Inactive"}),
                after: json!({"status": "Inactive"}),
                changes: Vec::new(),
                noop: true,
            };
        }
        PlanDraft {
            other_targets: Vec::new(),
            target: key.target(),
            summary: format!(
                "deactivate {shown}: requests signed with it fail from now on (rollback \
                 reactivates it)"
            ),
            observed: observed(key, live),
            before: json!({"status": status}),
            after: json!({"status": "Inactive"}),
            changes: vec![Change {
                op: "update".into(),
                path: format!("{}: Status", key_path(&live.user, &key.access_key_id)),
                from: Some(json!(status)),
                to: Some(json!("Inactive")),
            }],
            noop: false,
        }
    }
}

impl Action for AwsIamDeactivateAccessKey {
    fn kind(&self) -> &'static str {
        "aws.iam.deactivate-access-key"
    }

    fn summary(&self) -> &'static str {
        "set the finding's IAM access key Inactive"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "iam:GetAccessKeyLastUsed"),
            Permission::new("aws", "iam:ListAccessKeys"),
            Permission::new("aws", "iam:UpdateAccessKey"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "{}                       # no parameters: the access key comes from the finding\n"
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
                    let what = format!("deactivate access key {}", key.access_key_id);
                    return Ok(not_connected_plan(self, key.target(), &what, &why));
                }
            };
            let aws = &aws;
            let live = read(aws, &key).await?;
            Ok(Self::draft(&key, &live).finish(self))
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
            // The engine applies right after planning, so the plan's reading is the live state:
            // it is not read again (one call per key, not two). Setting a key Inactive is
            // idempotent; a key deleted since is reported by IAM itself (NoSuchEntity).
            let planned_user = plan.observed["user"].as_str().unwrap_or_default();
            let user = if planned_user.is_empty() {
                read(aws, &key).await?.user
            } else {
                planned_user.to_owned()
            };
            let outcome = |result: &str, undo: Option<Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({
                    "user": user,
                    "access_key_id": key.access_key_id,
                    "status": "Inactive",
                }),
                undo: undo.and_then(|u| serde_json::to_value(u).ok()),
            };
            if plan.noop {
                // Planned as already Inactive: nothing to do, and nothing of ours to undo.
                return Ok(outcome("unchanged", None));
            }
            set_status(aws, &user, &key.access_key_id, StatusType::Inactive).await?;
            Ok(outcome(
                "applied",
                Some(Undo {
                    account: key.account.clone(),
                    user: user.clone(),
                    access_key_id: key.access_key_id.clone(),
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
            let aws = &acting_in(ctx, undo.account.as_deref()).await?.0;
            let keys = super::list_keys(aws, &undo.user).await?.unwrap_or_default();
            match keys.iter().find(|k| k.id == undo.access_key_id) {
                None => Err(ActionError::Permanent(format!(
                    "access key {} of IAM user {} no longer exists; nothing to reactivate",
                    undo.access_key_id, undo.user
                ))),
                Some(k) if k.active() => Ok(()),
                Some(_) => {
                    set_status(aws, &undo.user, &undo.access_key_id, StatusType::Active).await
                }
            }
        })
    }
}
