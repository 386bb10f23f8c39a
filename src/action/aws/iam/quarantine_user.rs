//! `aws.iam.quarantine-user`: attaches the inline policy `firebreak-quarantine` to an IAM user,
//! denying every action on every resource.
//!
//! `mode: deny-all` (the default) denies outright: nothing signed with the user's keys or
//! sessions is allowed any more. `mode: revoke-sessions` denies only requests made with
//! temporary credentials issued before the policy was written (`DateLessThan
//! aws:TokenIssueTime`), which is how AWS revokes stolen sessions while the user's long-term
//! keys (a rotated one, say) keep working.
//!
//! Containment never weakens. Each mode is one statement of the policy, and a quarantine only
//! ever adds its statement or moves the session cutoff forward: a user already denied outright
//! stays denied when a later step asks for revoke-sessions (both statements are then in the
//! policy, so lifting the deny-all later still leaves the older sessions revoked), and
//! deny-all added to a revoke-sessions quarantine keeps the revoke statement beside it.
//! Rollback undoes only the statement its own apply wrote, restoring what that statement was
//! before (an older cutoff) or removing it, and the whole policy when nothing remains.
//!
//! `require_inactive_key: true` makes the step refuse while the finding's access key is still
//! Active: revoking a user's sessions while the exposed key can mint new ones protects nothing.
//! The rotation playbook uses it so that, when the rotation before it refused, nothing changes.
//!
//! The user is the finding's `aws.iam.user`, else the user of its access key. The policy's
//! statement ids (`FirebreakQuarantine…`) mark it as Firebreak's: a policy of that name that
//! Firebreak did not write is never overwritten, and rollback changes a statement only while it
//! is still exactly what Firebreak wrote.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{KeyRef, key_user, live_key};
use crate::action::aws::{
    acting_in, check_account, client_for, error_code, not_connected_plan, sdk_error,
};
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
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
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

    /// This mode's statement; `issued_before` is the session cutoff (revoke-sessions only).
    fn statement(self, issued_before: &str) -> Value {
        let mut statement = json!({
            "Sid": self.sid(),
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
        });
        if self == Self::RevokeSessions {
            statement["Condition"] = json!({"DateLessThan": {"aws:TokenIssueTime": issued_before}});
        }
        statement
    }
}

/// A Firebreak quarantine policy: its statements, at most one per mode, deny-all first.
#[derive(Debug, Clone, PartialEq)]
struct Quarantine {
    statements: Vec<Value>,
}

impl Quarantine {
    /// The quarantine a policy document holds; `None` when the document is not Firebreak's
    /// (a statement without a Firebreak statement id, a statement id twice, or none at all).
    fn of(doc: &Value) -> Option<Self> {
        let statements = match doc.get("Statement")? {
            Value::Array(items) => items.clone(),
            one @ Value::Object(_) => vec![one.clone()],
            _ => return None,
        };
        let mut seen = Vec::new();
        for st in &statements {
            let sid = st["Sid"].as_str()?;
            if !sid.starts_with(SID_PREFIX) || mode_of_sid(sid).is_none() || seen.contains(&sid) {
                return None;
            }
            seen.push(sid);
        }
        (!statements.is_empty()).then_some(Self { statements })
    }

    fn get(&self, mode: Mode) -> Option<&Value> {
        self.statements
            .iter()
            .find(|st| st["Sid"].as_str() == Some(mode.sid()))
    }

    fn modes(&self) -> Vec<Mode> {
        [Mode::DenyAll, Mode::RevokeSessions]
            .into_iter()
            .filter(|m| self.get(*m).is_some())
            .collect()
    }

    /// The same quarantine with `mode`'s statement set to `statement` (`None`: removed).
    fn with(&self, mode: Mode, statement: Option<Value>) -> Self {
        let mut out: Vec<Value> = Vec::new();
        for m in [Mode::DenyAll, Mode::RevokeSessions] {
            let st = if m == mode {
                statement.clone()
            } else {
                self.get(m).cloned()
            };
            out.extend(st);
        }
        Self { statements: out }
    }

    fn document(&self) -> Value {
        json!({"Version": "2012-10-17", "Statement": self.statements})
    }

    /// Whether it already does what `mode` asks for a finding observed at `observed_at`:
    /// deny-all when it has the deny-all statement; revoke-sessions when it has a session
    /// cutoff not older than the finding (sessions issued after an older cutoff may be the
    /// ones the finding is about). A deny-all alone does not cover revoke-sessions: the revoke
    /// statement is added beside it, so that lifting the deny-all later keeps older sessions
    /// revoked.
    fn covers(&self, mode: Mode, observed_at: chrono::DateTime<chrono::Utc>) -> bool {
        let Some(st) = self.get(mode) else {
            return false;
        };
        match mode {
            Mode::DenyAll => true,
            Mode::RevokeSessions => cutoff(st).is_some_and(|c| c >= observed_at),
        }
    }
}

fn mode_of_sid(sid: &str) -> Option<Mode> {
    [Mode::DenyAll, Mode::RevokeSessions]
        .into_iter()
        .find(|m| m.sid() == sid)
}

/// A revoke-sessions statement's cutoff.
fn cutoff(statement: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(Into::into)
}

/// `with:` parameters.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// `deny-all` (default) or `revoke-sessions`.
    #[serde(default)]
    mode: Mode,
    /// Refuse while the finding's access key is still Active.
    #[serde(default)]
    require_inactive_key: bool,
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
    /// The document before (`None`: the user had no quarantine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Value>,
    /// The statement id this apply added or changed; rollback undoes only that statement.
    /// Absent in records of versions that replaced the whole document, which roll back by
    /// restoring `previous` as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    statement: Option<String>,
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

/// With `require_inactive_key`: refuses while the finding's access key is still Active.
async fn check_key_inactive(aws: &Aws, finding: &Finding) -> Result<(), ActionError> {
    let key = KeyRef::of(finding).map_err(|_| {
        ActionError::NotApplicable(
            "require_inactive_key is set, but the finding names no access key".to_owned(),
        )
    })?;
    if let Some(live) = live_key(aws, &key).await?
        && live.status.as_deref() == Some("Active")
    {
        return Err(ActionError::NotApplicable(format!(
            "access key {} of IAM user {} is still Active (a rotation or deactivation before \
             this step did not happen): revoking the user's sessions while that key can mint \
             new ones protects nothing, so this step changes nothing (require_inactive_key)",
            key.access_key_id, live.user
        )));
    }
    Ok(())
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

/// Writes the policy, or deletes it when `doc` is `None`.
async fn put_policy(aws: &Aws, user: &str, doc: Option<&Value>) -> Result<(), ActionError> {
    match doc {
        Some(doc) => {
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
        }
        None => match aws
            .iam()
            .delete_user_policy()
            .user_name(user)
            .policy_name(POLICY_NAME)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("NoSuchEntity") => {}
            Err(e) => {
                return Err(sdk_error(
                    &format!("removing inline policy {POLICY_NAME} of {user}"),
                    &e,
                ));
            }
        },
    }
    Ok(())
}

fn not_firebreaks(user: &str) -> ActionError {
    ActionError::NotApplicable(format!(
        "IAM user {user} has an inline policy named {POLICY_NAME} that Firebreak did not write; \
         rename or remove it, then run again"
    ))
}

/// The summary of a change from `current` to a quarantine with `mode` added or renewed.
fn change_summary(user: &str, mode: Mode, current: Option<&Quarantine>) -> String {
    let what = match mode {
        Mode::DenyAll => "deny every request signed with its keys or sessions",
        Mode::RevokeSessions => "deny requests made with sessions issued before the time of apply",
    };
    let Some(current) = current else {
        return format!(
            "quarantine IAM user {user} with inline policy {POLICY_NAME} ({}): {what} (rollback \
             removes the policy)",
            mode.name()
        );
    };
    let kept: Vec<&str> = current
        .modes()
        .into_iter()
        .filter(|m| *m != mode)
        .map(Mode::name)
        .collect();
    let mut text = if current.get(mode).is_some() {
        format!(
            "renew the {} quarantine of IAM user {user}: {what} (the session cutoff moves \
             forward; rollback restores the older one)",
            mode.name()
        )
    } else {
        format!(
            "add {} to the quarantine of IAM user {user}: {what} (rollback removes only this \
             statement)",
            mode.name()
        )
    };
    if !kept.is_empty() {
        text.push_str(&format!(
            "; its {} statement stays: a quarantine never weakens",
            kept.join(" and ")
        ));
    }
    if current.get(Mode::DenyAll).is_some() {
        text.push_str(", and the user stays denied outright");
    }
    text
}

impl Action for AwsIamQuarantineUser {
    fn kind(&self) -> &'static str {
        "aws.iam.quarantine-user"
    }

    fn summary(&self) -> &'static str {
        "attach a Firebreak deny policy to an IAM user (deny all, or revoke older sessions); \
         never weakens a quarantine already there"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "iam:GetAccessKeyLastUsed"),
            Permission::new("aws", "iam:ListAccessKeys"),
            Permission::new("aws", "iam:GetUser"),
            Permission::new("aws", "iam:GetUserPolicy"),
            Permission::new("aws", "iam:PutUserPolicy"),
            Permission::new("aws", "iam:DeleteUserPolicy"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "mode: deny-all           # or revoke-sessions: deny only sessions issued before now\n\
         require_inactive_key: false   # true: refuse while the finding's access key is Active\n"
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
            check_account(aws, named.as_deref()).await?;
            let (account, user) = resolve(aws, input.finding).await?;
            if params.require_inactive_key {
                check_key_inactive(aws, input.finding).await?;
            }
            let current = read_policy(aws, &user).await?;
            let quarantine = match &current {
                Some(doc) => Some(Quarantine::of(doc).ok_or_else(|| not_firebreaks(&user))?),
                None => None,
            };
            let mode = params.mode;
            let observed = json!({"user": user, "policy": current});
            let path = format!("iam/users/{user}/policies/{POLICY_NAME}");
            let target = target(account.as_ref(), &user);
            if let Some(q) = quarantine
                .as_ref()
                .filter(|q| q.covers(mode, input.finding.observed_at))
            {
                let draft = PlanDraft {
                    other_targets: Vec::new(),
                    target,
                    summary: format!(
                        "IAM user {user} is already quarantined ({} of policy {POLICY_NAME}, \
                         which covers {})",
                        q.modes()
                            .into_iter()
                            .map(Mode::name)
                            .collect::<Vec<_>>()
                            .join(" and "),
                        mode.name()
                    ),
                    before: json!({"policy": current}),
                    after: json!({"policy": current}),
                    observed,
                    changes: Vec::new(),
                    noop: true,
                };
                return Ok(draft.finish(self));
            }
            let after = quarantine
                .clone()
                .unwrap_or(Quarantine {
                    statements: Vec::new(),
                })
                .with(mode, Some(mode.statement(AT_APPLY)))
                .document();
            let draft = PlanDraft {
                other_targets: Vec::new(),
                target,
                summary: change_summary(&user, mode, quarantine.as_ref()),
                before: json!({"policy": current}),
                after: json!({"policy": after}),
                observed,
                changes: vec![Change {
                    op: if current.is_some() {
                        "update"
                    } else {
                        "create"
                    }
                    .into(),
                    path,
                    from: current.clone(),
                    to: Some(after.clone()),
                }],
                noop: false,
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
            let aws = &acting_in(ctx, account_of(input.finding).as_deref())
                .await?
                .0;
            let (account, user) = resolve(aws, input.finding).await?;
            if params.require_inactive_key {
                check_key_inactive(aws, input.finding).await?;
            }
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
            let quarantine = match &live {
                Some(doc) => Some(Quarantine::of(doc).ok_or_else(|| not_firebreaks(&user))?),
                None => None,
            };
            if quarantine
                .as_ref()
                .is_some_and(|q| q.covers(mode, input.finding.observed_at))
            {
                // Planned as a no-op, or applied already (a retry after a crash).
                return Ok(outcome("unchanged", live.as_ref(), None));
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
            let doc = quarantine
                .unwrap_or(Quarantine {
                    statements: Vec::new(),
                })
                .with(mode, Some(mode.statement(&now)))
                .document();
            put_policy(aws, &user, Some(&doc)).await?;
            let undo = Undo {
                account: account.clone(),
                user: user.clone(),
                written: doc.clone(),
                previous: live,
                statement: Some(mode.sid().to_owned()),
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
            let aws = &acting_in(ctx, undo.account.as_deref()).await?.0;
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
            let restored = rolled_back(&undo, &live)?;
            match restored {
                Restore::Nothing => Ok(()),
                Restore::Write(doc) => put_policy(aws, &undo.user, doc.as_ref()).await,
            }
        })
    }
}

/// What rollback writes.
#[derive(Debug, PartialEq)]
enum Restore {
    /// Already as before.
    Nothing,
    /// This document (`None`: delete the policy).
    Write(Option<Value>),
}

/// Works out the rollback of `undo` given the live policy document.
fn rolled_back(undo: &Undo, live: &Value) -> Result<Restore, ActionError> {
    let changed = |what: &str| {
        ActionError::Permanent(format!(
            "{what} of inline policy {POLICY_NAME} of IAM user {} changed since Firebreak wrote \
             it; not touching it",
            undo.user
        ))
    };
    let Some(sid) = &undo.statement else {
        // A record of a version that wrote whole documents: restore the whole document.
        if Some(live) == undo.previous.as_ref() {
            return Ok(Restore::Nothing);
        }
        if *live != undo.written {
            return Err(changed("the document"));
        }
        return Ok(Restore::Write(undo.previous.clone()));
    };
    let Some(mode) = mode_of_sid(sid) else {
        return Err(ActionError::Permanent(format!(
            "the undo record names statement {sid}, which is not a Firebreak quarantine statement"
        )));
    };
    let Some(live_q) = Quarantine::of(live) else {
        return Err(changed("the document"));
    };
    let written = Quarantine::of(&undo.written).and_then(|q| q.get(mode).cloned());
    let previous = undo
        .previous
        .as_ref()
        .and_then(Quarantine::of)
        .and_then(|q| q.get(mode).cloned());
    let now = live_q.get(mode).cloned();
    if now == previous {
        return Ok(Restore::Nothing);
    }
    if now != written {
        return Err(changed(&format!("the {} statement", mode.name())));
    }
    let restored = live_q.with(mode, previous);
    Ok(Restore::Write(
        (!restored.statements.is_empty()).then(|| restored.document()),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(t: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(t).unwrap().into()
    }

    fn only(mode: Mode, cutoff: &str) -> Quarantine {
        Quarantine {
            statements: vec![mode.statement(cutoff)],
        }
    }

    #[test]
    fn an_older_session_cutoff_does_not_cover_a_newer_finding() {
        let q = only(Mode::RevokeSessions, "2026-01-01T00:00:00Z");
        assert!(q.covers(Mode::RevokeSessions, at("2025-12-31T23:00:00Z")));
        assert!(!q.covers(Mode::RevokeSessions, at("2026-01-02T00:00:00Z")));
        assert!(!q.covers(Mode::DenyAll, at("2025-01-01T00:00:00Z")));
        let deny = only(Mode::DenyAll, "");
        assert!(deny.covers(Mode::DenyAll, at("2030-01-01T00:00:00Z")));
        assert_eq!(
            Quarantine::of(&json!({"Statement": [{"Sid": "Theirs"}]})),
            None
        );
    }

    #[test]
    fn revoke_sessions_is_added_beside_a_deny_all_never_instead_of_it() {
        let deny = only(Mode::DenyAll, "");
        assert!(!deny.covers(Mode::RevokeSessions, at("2026-01-01T00:00:00Z")));
        let both = deny.with(
            Mode::RevokeSessions,
            Some(Mode::RevokeSessions.statement("2026-01-02T00:00:00Z")),
        );
        assert_eq!(both.modes(), [Mode::DenyAll, Mode::RevokeSessions]);
        assert!(both.covers(Mode::DenyAll, at("2030-01-01T00:00:00Z")));
        let doc = both.document();
        assert_eq!(doc["Statement"][0]["Sid"], "FirebreakQuarantineDenyAll");
        assert!(doc["Statement"][0].get("Condition").is_none());
        assert_eq!(Quarantine::of(&doc), Some(both));
    }

    #[test]
    fn rollback_undoes_only_its_own_statement() {
        let deny = only(Mode::DenyAll, "").document();
        let both = Quarantine::of(&deny)
            .unwrap()
            .with(
                Mode::RevokeSessions,
                Some(Mode::RevokeSessions.statement("2026-01-02T00:00:00Z")),
            )
            .document();
        let revoke_undo = Undo {
            account: None,
            user: "u".into(),
            written: both.clone(),
            previous: Some(deny.clone()),
            statement: Some(Mode::RevokeSessions.sid().into()),
        };
        assert_eq!(
            rolled_back(&revoke_undo, &both).unwrap(),
            Restore::Write(Some(deny.clone()))
        );
        // The deny-all written first, rolled back after the revoke statement joined it: the
        // revoke statement stays.
        let deny_undo = Undo {
            account: None,
            user: "u".into(),
            written: deny.clone(),
            previous: None,
            statement: Some(Mode::DenyAll.sid().into()),
        };
        let Restore::Write(Some(left)) = rolled_back(&deny_undo, &both).unwrap() else {
            panic!("expected a document");
        };
        assert_eq!(
            Quarantine::of(&left).unwrap().modes(),
            [Mode::RevokeSessions]
        );
        assert_eq!(
            rolled_back(&deny_undo, &deny).unwrap(),
            Restore::Write(None),
            "nothing left: the policy goes"
        );
        // A later apply moved the cutoff: the earlier revoke is not rolled back over it.
        let moved = Quarantine::of(&deny)
            .unwrap()
            .with(
                Mode::RevokeSessions,
                Some(Mode::RevokeSessions.statement("2026-02-01T00:00:00Z")),
            )
            .document();
        assert!(rolled_back(&revoke_undo, &moved).is_err());
    }
}
