//! `aws.iam.quarantine-user`: attaches the inline policy `firebreak-quarantine` to an IAM user,
//! denying every action on every resource.
//!
//! `mode: deny-all` (the default) denies outright: nothing signed with the user's keys or
//! sessions is allowed any more. `mode: revoke-sessions` denies only requests made with
//! temporary credentials issued before the policy was written (`DateLessThan
//! aws:TokenIssueTime`), which is how AWS revokes stolen sessions while the user's long-term
//! keys (a rotated one, say) keep working.
//!
//! The user is the finding's `aws.iam.user`, else the user of its access key. The policy's
//! statement ids (`FirebreakQuarantine…`) mark it as Firebreak's: a policy of that name that
//! Firebreak did not write is never overwritten, and rollback removes the policy only while it
//! is still exactly what Firebreak wrote (restoring the quarantine it replaced, if any).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{KeyRef, check_account, key_user};
use crate::action::aws::{client_for, connected_for, error_code, not_connected_plan, sdk_error};
use crate::action::kubernetes::{render_problems, undo_of};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::aws::Aws;
use crate::finding::{Finding, ResourceRef};

/// The name of the inline policy Firebreak writes.
pub const POLICY_NAME: &str = "firebreak-quarantine";

/// The statement id prefix that marks a policy as Firebreak's.
const SID_PREFIX: &str = "FirebreakQuarantine";

/// Shown in plans where the apply time goes.
const AT_APPLY: &str = "(the time of apply)";

/// `aws.iam.quarantine-user`.
pub struct AwsIamQuarantineUser;

/// How the quarantine denies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// Deny temporary credentials issued before the policy was written.
    RevokeSessions,
    /// Deny everything.
    #[default]
    DenyAll,
}

impl Mode {
    fn sid(self) -> &'static str {
        match self {
            Self::RevokeSessions => "FirebreakQuarantineRevokeOlderSessions",
            Self::DenyAll => "FirebreakQuarantineDenyAll",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::RevokeSessions => "revoke-sessions",
            Self::DenyAll => "deny-all",
        }
    }

    /// The policy document; `issued_before` is the session cutoff (revoke-sessions only).
    fn document(self, issued_before: &str) -> Value {
        let mut statement = json!({
            "Sid": self.sid(),
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
        });
        if self == Self::RevokeSessions {
            statement["Condition"] = json!({"DateLessThan": {"aws:TokenIssueTime": issued_before}});
        }
        json!({"Version": "2012-10-17", "Statement": [statement]})
    }
}

/// `with:` parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// `deny-all` (default) or `revoke-sessions`.
    #[serde(default)]
    mode: Mode,
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    /// The account the finding named (its role, if `aws.accounts` lists it, signs rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    user: String,
    /// The document Firebreak wrote.
    written: Value,
    /// Firebreak's earlier quarantine it replaced, restored on rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Value>,
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    typed_params::<Params>(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

/// The user a finding is about: its `aws.iam.user`, else its access key's (account, user).
fn user_of(finding: &Finding) -> Option<(Option<String>, String)> {
    finding.resources.iter().find_map(|r| match r {
        ResourceRef::AwsIamUser { account, user } => Some((account.clone(), user.clone())),
        _ => None,
    })
}

/// The account the finding names for its user or access key, if any.
fn account_of(finding: &Finding) -> Option<String> {
    user_of(finding)
        .and_then(|(account, _)| account)
        .or_else(|| KeyRef::of(finding).ok().and_then(|k| k.account))
}

async fn resolve(aws: &Aws, finding: &Finding) -> Result<(Option<String>, String), ActionError> {
    if let Some(u) = user_of(finding) {
        return Ok(u);
    }
    let key = KeyRef::of(finding).map_err(|_| {
        ActionError::NotApplicable("the finding names no IAM user or access key".to_owned())
    })?;
    match key_user(aws, &key).await? {
        Some(user) => Ok((key.account, user)),
        None => Err(ActionError::NotApplicable(format!(
            "access key {} does not exist in this account, so its user is unknown",
            key.access_key_id
        ))),
    }
}

fn target(account: Option<&String>, user: &str) -> String {
    ResourceRef::AwsIamUser {
        account: account.cloned(),
        user: user.to_owned(),
    }
    .key()
}

/// The user's `firebreak-quarantine` policy document, `None` when there is none.
async fn read_policy(aws: &Aws, user: &str) -> Result<Option<Value>, ActionError> {
    aws.iam()
        .get_user()
        .user_name(user)
        .send()
        .await
        .map_err(|e| {
            if error_code(&e) == Some("NoSuchEntity") {
                ActionError::NotApplicable(format!("IAM user {user} does not exist"))
            } else {
                sdk_error(&format!("reading IAM user {user}"), &e)
            }
        })?;
    match aws
        .iam()
        .get_user_policy()
        .user_name(user)
        .policy_name(POLICY_NAME)
        .send()
        .await
    {
        Ok(out) => {
            let text = out.policy_document();
            let doc = serde_json::from_str(text)
                .or_else(|_| serde_json::from_str(&super::percent_decode(text)))
                .unwrap_or_else(|_| Value::String("(unreadable policy document)".to_owned()));
            Ok(Some(doc))
        }
        Err(e) if error_code(&e) == Some("NoSuchEntity") => Ok(None),
        Err(e) => Err(sdk_error(
            &format!("reading inline policy {POLICY_NAME} of IAM user {user}"),
            &e,
        )),
    }
}

/// Whether `doc` is a Firebreak quarantine in `mode` that already covers a finding observed at
/// `observed_at`: deny-all always does; revoke-sessions does when its cutoff is not older than
/// the finding (sessions issued after an older cutoff may be the ones the finding is about).
fn covers(doc: &Value, mode: Mode, observed_at: chrono::DateTime<chrono::Utc>) -> bool {
    if mode_of(doc) != Some(mode) {
        return false;
    }
    if mode == Mode::DenyAll {
        return true;
    }
    doc["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|cutoff| cutoff >= observed_at)
}

/// The mode of a Firebreak quarantine document; `None` when the document is not Firebreak's.
fn mode_of(doc: &Value) -> Option<Mode> {
    let statements = doc["Statement"].as_array()?;
    let sids: Vec<&str> = statements
        .iter()
        .map(|s| s["Sid"].as_str().unwrap_or_default())
        .collect();
    if sids.len() != 1 || !sids[0].starts_with(SID_PREFIX) {
        return None;
    }
    [Mode::DenyAll, Mode::RevokeSessions]
        .into_iter()
        .find(|m| m.sid() == sids[0])
}

async fn put_policy(aws: &Aws, user: &str, doc: &Value) -> Result<(), ActionError> {
    aws.iam()
        .put_user_policy()
        .user_name(user)
        .policy_name(POLICY_NAME)
        .policy_document(doc.to_string())
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &format!("writing inline policy {POLICY_NAME} of {user}"),
                &e,
            )
        })?;
    Ok(())
}

impl Action for AwsIamQuarantineUser {
    fn kind(&self) -> &'static str {
        "aws.iam.quarantine-user"
    }

    fn summary(&self) -> &'static str {
        "attach a Firebreak deny policy to an IAM user (deny all, or revoke older sessions)"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "iam:GetAccessKeyLastUsed"),
            Permission::new("aws", "iam:GetUser"),
            Permission::new("aws", "iam:GetUserPolicy"),
            Permission::new("aws", "iam:PutUserPolicy"),
            Permission::new("aws", "iam:DeleteUserPolicy"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "mode: deny-all           # or revoke-sessions: deny only sessions issued before now\n"
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
            let params = params_of(&input)?;
            let named = account_of(input.finding);
            let aws = match client_for(ctx, named.as_deref()).await? {
                Ok(a) => a,
                Err(why) => {
                    let (account, user) = user_of(input.finding)
                        .or_else(|| {
                            KeyRef::of(input.finding).ok().map(|k| {
                                (k.account, k.user.unwrap_or_else(|| k.access_key_id.clone()))
                            })
                        })
                        .ok_or_else(|| {
                            ActionError::NotApplicable(
                                "the finding names no IAM user or access key".to_owned(),
                            )
                        })?;
                    let what = format!(
                        "quarantine IAM user {user} ({} inline policy {POLICY_NAME})",
                        params.mode.name()
                    );
                    return Ok(not_connected_plan(
                        self,
                        target(account.as_ref(), &user),
                        &what,
                        &why,
                    ));
                }
            };
            let aws = &aws;
            let (account, user) = resolve(aws, input.finding).await?;
            check_account(aws, account.as_deref()).await?;
            let current = read_policy(aws, &user).await?;
            let mode = params.mode;
            let after = mode.document(AT_APPLY);
            let observed = json!({"user": user, "policy": current});
            let path = format!("iam/users/{user}/policies/{POLICY_NAME}");
            let what = match mode {
                Mode::DenyAll => "deny every request signed with its keys or sessions",
                Mode::RevokeSessions => {
                    "deny requests made with sessions issued before the time of apply"
                }
            };
            let draft = match current.as_ref().map(|d| (d, mode_of(d))) {
                Some((doc, Some(_))) if covers(doc, mode, input.finding.observed_at) => PlanDraft {
                    other_targets: Vec::new(),
                    target: target(account.as_ref(), &user),
                    summary: format!(
                        "IAM user {user} is already quarantined ({} policy {POLICY_NAME})",
                        mode.name()
                    ),
                    before: json!({"policy": current}),
                    after: json!({"policy": current}),
                    observed,
                    changes: Vec::new(),
                    noop: true,
                },
                Some((_, None)) => {
                    return Err(ActionError::NotApplicable(format!(
                        "IAM user {user} has an inline policy named {POLICY_NAME} that Firebreak \
                         did not write; rename or remove it, then run again"
                    )));
                }
                Some((doc, Some(_))) => PlanDraft {
                    other_targets: Vec::new(),
                    target: target(account.as_ref(), &user),
                    summary: format!(
                        "change the quarantine of IAM user {user} to {}: {what} (rollback \
                         restores the current quarantine)",
                        mode.name()
                    ),
                    before: json!({"policy": doc}),
                    after: json!({"policy": after}),
                    observed,
                    changes: vec![Change {
                        op: "update".into(),
                        path,
                        from: Some(doc.clone()),
                        to: Some(after.clone()),
                    }],
                    noop: false,
                },
                None => PlanDraft {
                    other_targets: Vec::new(),
                    target: target(account.as_ref(), &user),
                    summary: format!(
                        "quarantine IAM user {user} with inline policy {POLICY_NAME} ({}): \
                         {what} (rollback removes the policy)",
                        mode.name()
                    ),
                    before: json!({"policy": null}),
                    after: json!({"policy": after}),
                    observed,
                    changes: vec![Change {
                        op: "create".into(),
                        path,
                        from: None,
                        to: Some(after.clone()),
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
            let params = params_of(&input)?;
            let aws = &connected_for(ctx, account_of(input.finding).as_deref()).await?;
            let (account, user) = resolve(aws, input.finding).await?;
            check_account(aws, account.as_deref()).await?;
            let live = read_policy(aws, &user).await?;
            let mode = params.mode;
            let outcome = |result: &str, doc: Option<&Value>, undo: Option<Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({
                    "user": user, "policy_name": POLICY_NAME, "mode": mode.name(), "policy": doc,
                }),
                undo: undo.and_then(|u| serde_json::to_value(u).ok()),
            };
            if let Some(doc) = live
                .as_ref()
                .filter(|d| covers(d, mode, input.finding.observed_at))
            {
                // Planned as a no-op, or applied already (a retry after a crash).
                return Ok(outcome("unchanged", Some(doc), None));
            }
            if plan.noop || plan.observed["user"] != json!(user) {
                return Err(ActionError::Drift(format!(
                    "IAM user {user}'s quarantine is no longer what was planned"
                )));
            }
            if plan.observed["policy"] != json!(live) {
                return Err(ActionError::Drift(format!(
                    "inline policy {POLICY_NAME} of IAM user {user} changed since planning"
                )));
            }
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let doc = mode.document(&now);
            put_policy(aws, &user, &doc).await?;
            let undo = Undo {
                account: account.clone(),
                user: user.clone(),
                written: doc.clone(),
                previous: live,
            };
            Ok(outcome("applied", Some(&doc), Some(undo)))
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
            let aws = &connected_for(ctx, undo.account.as_deref()).await?;
            let live = match read_policy(aws, &undo.user).await {
                Ok(l) => l,
                Err(ActionError::NotApplicable(m)) => {
                    return Err(ActionError::Permanent(format!("nothing to roll back: {m}")));
                }
                Err(e) => return Err(e),
            };
            let Some(live) = live else {
                return Ok(()); // removed already
            };
            if Some(&live) == undo.previous.as_ref() {
                return Ok(()); // restored already
            }
            if live != undo.written {
                return Err(ActionError::Permanent(format!(
                    "inline policy {POLICY_NAME} of IAM user {} changed since Firebreak wrote \
                     it; not removing it",
                    undo.user
                )));
            }
            match &undo.previous {
                Some(previous) => put_policy(aws, &undo.user, previous).await,
                None => {
                    aws.iam()
                        .delete_user_policy()
                        .user_name(&undo.user)
                        .policy_name(POLICY_NAME)
                        .send()
                        .await
                        .map_err(|e| {
                            sdk_error(
                                &format!("removing inline policy {POLICY_NAME} of {}", undo.user),
                                &e,
                            )
                        })?;
                    Ok(())
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(t: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(t).unwrap().into()
    }

    #[test]
    fn an_older_session_cutoff_does_not_cover_a_newer_finding() {
        let doc = Mode::RevokeSessions.document("2026-01-01T00:00:00Z");
        assert!(covers(
            &doc,
            Mode::RevokeSessions,
            at("2025-12-31T23:00:00Z")
        ));
        assert!(!covers(
            &doc,
            Mode::RevokeSessions,
            at("2026-01-02T00:00:00Z")
        ));
        assert!(!covers(&doc, Mode::DenyAll, at("2025-01-01T00:00:00Z")));
        let deny = Mode::DenyAll.document("");
        assert!(covers(&deny, Mode::DenyAll, at("2030-01-01T00:00:00Z")));
        assert_eq!(mode_of(&json!({"Statement": [{"Sid": "Theirs"}]})), None);
    }
}
