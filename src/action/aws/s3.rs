//! `aws.s3.block-public-access`: closes a bucket to the public.
//!
//! Three things make a bucket public, and all three are closed: the bucket's Public Access Block
//! is set with all four settings true; ACL grants to the `AllUsers` and `AuthenticatedUsers`
//! groups are removed (the owner's and every other grant stay); bucket-policy statements that
//! `Allow` a public principal (`"*"`, `{"AWS": "*"}`) without a restricting condition
//! (`aws:SourceVpc`, `aws:SourceVpce`, `aws:SourceIp`, `aws:PrincipalOrgID`, `aws:SourceAccount`,
//! `aws:SourceArn`, …) are removed, and the policy is deleted when nothing remains. What was
//! removed, and the Public Access Block before, are kept in the outcome's undo record, and
//! rollback puts them back.
//!
//! Order matters on real AWS, which refuses a public policy or ACL while the Public Access Block
//! blocks them (moto accepts a public `PutBucketPolicy` anyway, so its tests cannot catch the
//! wrong order): `apply` removes grants and statements first and enables the block last;
//! rollback restores the previous block first and then re-adds grants and statements.
//!
//! Every S3 call (reads and writes, in plan, apply and rollback) names the bucket's expected
//! owner (`ExpectedBucketOwner`): the account the credentials act in, which must be the account
//! the finding names (checked with STS first; a finding about another account is refused
//! before any S3 call). S3 then refuses (403 `AccessDenied`) to read or change a bucket of the
//! same name that another account owns, so a bucket name reused elsewhere is never touched.
//!
//! A retry of an apply interrupted half-way (the ACL written, the block not yet) finds the
//! bucket between the planned state and the planned result, carries on from there and still
//! records everything the plan removed; any other difference from the plan is drift.

use aws_sdk_s3::types::{
    AccessControlPolicy, Grant, Grantee, Owner, Permission as S3Permission,
    PublicAccessBlockConfiguration, Type as GranteeType,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{acting_in, credentials_note, error_code, not_connected_plan, planning_in, sdk_error};
use crate::action::kubernetes::{render_problems, undo_of};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::aws::Aws;
use crate::finding::{Finding, ResourceRef};

/// `aws.s3.block-public-access`.
pub struct AwsS3BlockPublicAccess;

/// `with:` parameters: none.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {}

/// The group URIs that make a grant public.
const PUBLIC_GROUPS: &[&str] = &[
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
];

/// Condition keys that restrict who a statement applies to (lower case: condition keys are
/// case-insensitive). A statement with a public principal and one of these is not public
/// (except `aws:SourceIp` with an everywhere range, see [`restricting`]).
const RESTRICTING_KEYS: &[&str] = &[
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:sourceip",
    "aws:vpcsourceip",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:sourceowner",
    "aws:sourceorgid",
    "aws:sourceorgpaths",
    "aws:principalorgid",
    "aws:principalorgpaths",
    "aws:principalaccount",
    "aws:principalarn",
    "aws:userid",
    "aws:username",
];

/// The bucket a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BucketRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    bucket: String,
}

impl BucketRef {
    fn of(finding: &Finding) -> Result<Self, ActionError> {
        finding
            .resources
            .iter()
            .find_map(|r| match r {
                ResourceRef::AwsS3Bucket {
                    account,
                    region,
                    bucket,
                } => Some(Self {
                    account: account.clone(),
                    region: region.clone(),
                    bucket: bucket.clone(),
                }),
                _ => None,
            })
            .ok_or_else(|| ActionError::NotApplicable("the finding names no S3 bucket".to_owned()))
    }

    fn key(&self) -> String {
        ResourceRef::AwsS3Bucket {
            account: self.account.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
        }
        .key()
    }
}

/// The four Public Access Block settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Pab {
    block_public_acls: bool,
    ignore_public_acls: bool,
    block_public_policy: bool,
    restrict_public_buckets: bool,
}

impl Pab {
    const ALL: Self = Self {
        block_public_acls: true,
        ignore_public_acls: true,
        block_public_policy: true,
        restrict_public_buckets: true,
    };

    fn to_sdk(self) -> PublicAccessBlockConfiguration {
        PublicAccessBlockConfiguration::builder()
            .block_public_acls(self.block_public_acls)
            .ignore_public_acls(self.ignore_public_acls)
            .block_public_policy(self.block_public_policy)
            .restrict_public_buckets(self.restrict_public_buckets)
            .build()
    }
}

/// One ACL grant, as the plan shows it and the undo record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct GrantRec {
    /// `CanonicalUser`, `Group` or `AmazonCustomerByEmail`.
    grantee_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    /// `READ`, `WRITE`, `READ_ACP`, `WRITE_ACP` or `FULL_CONTROL`.
    permission: String,
}

impl GrantRec {
    fn of(g: &Grant) -> Self {
        let grantee = g.grantee();
        Self {
            grantee_type: grantee
                .map(|g| g.r#type().as_str().to_owned())
                .unwrap_or_default(),
            id: grantee.and_then(Grantee::id).map(str::to_owned),
            uri: grantee.and_then(Grantee::uri).map(str::to_owned),
            email: grantee.and_then(Grantee::email_address).map(str::to_owned),
            display_name: grantee.and_then(Grantee::display_name).map(str::to_owned),
            permission: g
                .permission()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        }
    }

    fn is_public(&self) -> bool {
        self.uri
            .as_deref()
            .is_some_and(|u| PUBLIC_GROUPS.contains(&u))
    }

    /// The same grant, for a write (display names are output only).
    fn to_sdk(&self) -> Result<Grant, ActionError> {
        let grantee = Grantee::builder()
            .r#type(GranteeType::from(self.grantee_type.as_str()))
            .set_id(self.id.clone())
            .set_uri(self.uri.clone())
            .set_email_address(self.email.clone())
            .build()
            .map_err(|e| ActionError::Permanent(format!("an ACL grant cannot be written: {e}")))?;
        Ok(Grant::builder()
            .grantee(grantee)
            .permission(S3Permission::from(self.permission.as_str()))
            .build())
    }

    fn same_grant(&self, other: &Self) -> bool {
        self.grantee_type == other.grantee_type
            && self.id == other.id
            && self.uri == other.uri
            && self.email == other.email
            && self.permission == other.permission
    }
}

/// The bucket's ACL owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OwnerRec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
}

/// What is read of a bucket.
#[derive(Debug, Clone, PartialEq)]
struct BucketState {
    pab: Option<Pab>,
    owner: OwnerRec,
    grants: Vec<GrantRec>,
    /// The policy document, parsed; `None` when the bucket has none.
    policy: Option<Value>,
}

/// A policy's statements as a list (`Statement` may be one object).
fn statements(policy: &Value) -> Vec<Value> {
    match policy.get("Statement") {
        Some(Value::Array(items)) => items.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// Whether a principal is everyone: `"*"`, or `{"AWS": "*"}` (also inside a list).
fn public_principal(p: &Value) -> bool {
    let star = |v: &Value| match v {
        Value::String(s) => s == "*",
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some("*")),
        _ => false,
    };
    match p {
        Value::Object(map) => map.get("AWS").is_some_and(star),
        other => star(other),
    }
}

/// Whether a statement's `Condition` restricts who it applies to. An `aws:SourceIp` that is
/// every address (`0.0.0.0/0`, `::/0`) restricts nothing.
fn restricting(condition: Option<&Value>) -> bool {
    let Some(Value::Object(ops)) = condition else {
        return false;
    };
    ops.values().filter_map(Value::as_object).any(|keys| {
        keys.iter().any(|(k, v)| {
            let k = k.to_ascii_lowercase();
            if !RESTRICTING_KEYS.contains(&k.as_str()) {
                return false;
            }
            if k == "aws:sourceip" {
                let everywhere = |s: &str| s == "0.0.0.0/0" || s == "::/0";
                return match v {
                    Value::String(s) => !everywhere(s),
                    Value::Array(items) => !items.iter().filter_map(Value::as_str).any(everywhere),
                    _ => true,
                };
            }
            true
        })
    })
}

/// Whether a statement opens the bucket to the public: it allows a public principal without a
/// restricting condition. (`NotPrincipal` with `Allow` is public too: it allows everyone else.)
fn public_statement(st: &Value) -> bool {
    let allows = st.get("Effect").and_then(Value::as_str) == Some("Allow");
    let principal =
        st.get("Principal").is_some_and(public_principal) || st.get("NotPrincipal").is_some();
    allows && principal && !restricting(st.get("Condition"))
}

impl BucketState {
    fn public_grants(&self) -> Vec<GrantRec> {
        self.grants
            .iter()
            .filter(|g| g.is_public())
            .cloned()
            .collect()
    }

    fn kept_grants(&self) -> Vec<GrantRec> {
        self.grants
            .iter()
            .filter(|g| !g.is_public())
            .cloned()
            .collect()
    }

    /// The public statements with their index in the policy.
    fn public_statements(&self) -> Vec<(usize, Value)> {
        self.policy
            .as_ref()
            .map(statements)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter(|(_, st)| public_statement(st))
            .collect()
    }

    /// The policy without its public statements; `None` when nothing would remain.
    fn kept_policy(&self) -> Option<Value> {
        let policy = self.policy.as_ref()?;
        let kept: Vec<Value> = statements(policy)
            .into_iter()
            .filter(|st| !public_statement(st))
            .collect();
        if kept.is_empty() {
            return None;
        }
        let mut out = policy.clone();
        if let Value::Object(map) = &mut out {
            map.insert("Statement".to_owned(), Value::Array(kept));
        }
        Some(out)
    }

    /// The state a plan recorded in `observed`.
    fn from_observed(observed: &Value) -> Option<Self> {
        Some(Self {
            pab: serde_json::from_value(observed.get("public_access_block")?.clone()).ok()?,
            owner: serde_json::from_value(observed.get("acl")?.get("owner")?.clone()).ok()?,
            grants: serde_json::from_value(observed.get("acl")?.get("grants")?.clone()).ok()?,
            policy: observed.get("policy").cloned().filter(|p| !p.is_null()),
        })
    }

    /// Whether `live` is this (planned) state with some of the plan's writes done: each of the
    /// ACL, the policy and the block is either as planned against or as the plan leaves it.
    fn on_the_way(&self, live: &Self) -> bool {
        live.owner == self.owner
            && (live.grants == self.grants || live.grants == self.kept_grants())
            && (live.policy == self.policy || live.policy == self.kept_policy())
            && (live.pab == self.pab || live.pab == Some(Pab::ALL))
    }

    fn closed(&self) -> bool {
        self.pab == Some(Pab::ALL)
            && self.public_grants().is_empty()
            && self.public_statements().is_empty()
    }

    /// What the plan records and `apply` compares.
    fn observed(&self, b: &BucketRef, credentials: &str) -> Value {
        json!({
            "bucket": b.bucket,
            "account": b.account,
            "credentials": credentials,
            "public_access_block": self.pab,
            "acl": {"owner": self.owner, "grants": self.grants},
            "policy": self.policy,
        })
    }
}

/// Whose credentials act, and the account every S3 call names as the bucket's owner.
fn acting_as(aws: &Aws, b: &BucketRef, owner: &str) -> String {
    format!(
        "{}, in account {owner}, the bucket's expected owner",
        credentials_note(aws, b.account.as_deref())
    )
}

/// `what` about the bucket, for an error message: which owner S3 was told to expect, since an
/// `AccessDenied` may mean that another account owns a bucket of this name.
fn owned(b: &BucketRef, owner: &str) -> String {
    format!("s3://{} (expected owner: account {owner})", b.bucket)
}

async fn read(aws: &Aws, b: &BucketRef, owner: &str) -> Result<BucketState, ActionError> {
    let s3 = aws.s3_in(b.region.as_deref());
    let shown = owned(b, owner);
    let pab = match s3
        .get_public_access_block()
        .bucket(&b.bucket)
        .expected_bucket_owner(owner)
        .send()
        .await
    {
        Ok(out) => out.public_access_block_configuration().map(|c| Pab {
            block_public_acls: c.block_public_acls().unwrap_or(false),
            ignore_public_acls: c.ignore_public_acls().unwrap_or(false),
            block_public_policy: c.block_public_policy().unwrap_or(false),
            restrict_public_buckets: c.restrict_public_buckets().unwrap_or(false),
        }),
        Err(e) if error_code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => None,
        Err(e) if error_code(&e) == Some("NoSuchBucket") => {
            return Err(ActionError::NotApplicable(format!(
                "{shown} does not exist"
            )));
        }
        Err(e) => {
            return Err(sdk_error(
                &format!("reading the Public Access Block of {shown}"),
                &e,
            ));
        }
    };
    let acl = s3
        .get_bucket_acl()
        .bucket(&b.bucket)
        .expected_bucket_owner(owner)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("reading the ACL of {shown}"), &e))?;
    let acl_owner = OwnerRec {
        id: acl.owner().and_then(Owner::id).map(str::to_owned),
        display_name: acl.owner().and_then(Owner::display_name).map(str::to_owned),
    };
    let grants = acl.grants().iter().map(GrantRec::of).collect();
    let policy = match s3
        .get_bucket_policy()
        .bucket(&b.bucket)
        .expected_bucket_owner(owner)
        .send()
        .await
    {
        Ok(out) => match out.policy() {
            Some(text) => Some(serde_json::from_str::<Value>(text).map_err(|e| {
                ActionError::Permanent(format!("the bucket policy of {shown} is not JSON: {e}"))
            })?),
            None => None,
        },
        Err(e) if error_code(&e) == Some("NoSuchBucketPolicy") => None,
        Err(e) => {
            return Err(sdk_error(
                &format!("reading the bucket policy of {shown}"),
                &e,
            ));
        }
    };
    Ok(BucketState {
        pab,
        owner: acl_owner,
        grants,
        policy,
    })
}

async fn put_acl(
    aws: &Aws,
    b: &BucketRef,
    expected_owner: &str,
    owner: &OwnerRec,
    grants: &[GrantRec],
) -> Result<(), ActionError> {
    let grants = grants
        .iter()
        .map(GrantRec::to_sdk)
        .collect::<Result<Vec<_>, _>>()?;
    let policy = AccessControlPolicy::builder()
        .owner(
            Owner::builder()
                .set_id(owner.id.clone())
                .set_display_name(owner.display_name.clone())
                .build(),
        )
        .set_grants(Some(grants))
        .build();
    aws.s3_in(b.region.as_deref())
        .put_bucket_acl()
        .bucket(&b.bucket)
        .expected_bucket_owner(expected_owner)
        .access_control_policy(policy)
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &format!("writing the ACL of {}", owned(b, expected_owner)),
                &e,
            )
        })?;
    Ok(())
}

async fn put_policy(
    aws: &Aws,
    b: &BucketRef,
    owner: &str,
    policy: Option<&Value>,
) -> Result<(), ActionError> {
    let s3 = aws.s3_in(b.region.as_deref());
    let what = format!("the bucket policy of {}", owned(b, owner));
    match policy {
        Some(p) => {
            s3.put_bucket_policy()
                .bucket(&b.bucket)
                .expected_bucket_owner(owner)
                .policy(p.to_string())
                .send()
                .await
                .map_err(|e| sdk_error(&format!("writing {what}"), &e))?;
        }
        None => {
            s3.delete_bucket_policy()
                .bucket(&b.bucket)
                .expected_bucket_owner(owner)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("deleting {what}"), &e))?;
        }
    }
    Ok(())
}

async fn put_pab(
    aws: &Aws,
    b: &BucketRef,
    owner: &str,
    pab: Option<Pab>,
) -> Result<(), ActionError> {
    let s3 = aws.s3_in(b.region.as_deref());
    let what = format!("the Public Access Block of {}", owned(b, owner));
    match pab {
        Some(p) => {
            s3.put_public_access_block()
                .bucket(&b.bucket)
                .expected_bucket_owner(owner)
                .public_access_block_configuration(p.to_sdk())
                .send()
                .await
                .map_err(|e| sdk_error(&format!("writing {what}"), &e))?;
        }
        None => {
            s3.delete_public_access_block()
                .bucket(&b.bucket)
                .expected_bucket_owner(owner)
                .send()
                .await
                .map_err(|e| sdk_error(&format!("deleting {what}"), &e))?;
        }
    }
    Ok(())
}

/// What `rollback` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    bucket: BucketRef,
    /// The Public Access Block before (`None`: the bucket had none).
    previous_public_access_block: Option<Pab>,
    /// The ACL grants removed.
    removed_grants: Vec<GrantRec>,
    /// The policy statements removed.
    removed_statements: Vec<Value>,
    /// The policy's `Version` (and other top-level fields but `Statement`), to re-create it
    /// if it was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_policy: Option<Value>,
}

fn params_of(input: &StepInput<'_>) -> Result<Params, ActionError> {
    typed_params::<Params>(input.params).map_err(|p| ActionError::Permanent(render_problems(&p)))
}

impl AwsS3BlockPublicAccess {
    fn draft(b: &BucketRef, state: &BucketState, credentials: &str) -> PlanDraft {
        let observed = state.observed(b, credentials);
        let base = format!("s3://{}", b.bucket);
        if state.closed() {
            return PlanDraft {
                other_targets: Vec::new(),
                target: b.key(),
                summary: format!(
                    "{base} is already closed to the public: Public Access Block all on, no \
                     public ACL grant or policy statement (acting as {credentials})"
                ),
                observed,
                before: json!({"public_access_block": state.pab}),
                after: json!({"public_access_block": state.pab}),
                changes: Vec::new(),
                noop: true,
            };
        }
        let public_grants = state.public_grants();
        let public_statements = state.public_statements();
        let kept_policy = state.kept_policy();
        let mut changes = Vec::new();
        for g in &public_grants {
            changes.push(Change {
                op: "delete".into(),
                path: format!(
                    "{base}?acl: grant {} to {}",
                    g.permission,
                    g.uri.as_deref().unwrap_or("?")
                ),
                from: serde_json::to_value(g).ok(),
                to: None,
            });
        }
        for (i, st) in &public_statements {
            let sid = st
                .get("Sid")
                .and_then(Value::as_str)
                .map(|s| format!(" (Sid {s})"))
                .unwrap_or_default();
            changes.push(Change {
                op: "delete".into(),
                path: format!("{base}?policy: Statement[{i}]{sid}"),
                from: Some(st.clone()),
                to: None,
            });
        }
        if !public_statements.is_empty() && kept_policy.is_none() {
            changes.push(Change {
                op: "delete".into(),
                path: format!("{base}?policy"),
                from: state.policy.clone(),
                to: None,
            });
        }
        if state.pab != Some(Pab::ALL) {
            changes.push(Change {
                op: if state.pab.is_some() {
                    "update"
                } else {
                    "create"
                }
                .into(),
                path: format!("{base}?publicAccessBlock"),
                from: state.pab.and_then(|p| serde_json::to_value(p).ok()),
                to: serde_json::to_value(Pab::ALL).ok(),
            });
        }
        PlanDraft {
            other_targets: Vec::new(),
            target: b.key(),
            summary: format!(
                "close {base} to the public: remove {} public ACL grant(s) and {} public policy \
                 statement(s){}, turn on all four Public Access Block settings (acting as \
                 {credentials})",
                public_grants.len(),
                public_statements.len(),
                if !public_statements.is_empty() && kept_policy.is_none() {
                    ", deleting the policy as nothing else remains"
                } else {
                    ""
                }
            ),
            observed,
            before: json!({
                "public_access_block": state.pab,
                "acl_grants": state.grants,
                "policy": state.policy,
            }),
            after: json!({
                "public_access_block": Pab::ALL,
                "acl_grants": state.kept_grants(),
                "policy": kept_policy,
            }),
            changes,
            noop: false,
        }
    }
}

impl Action for AwsS3BlockPublicAccess {
    fn kind(&self) -> &'static str {
        "aws.s3.block-public-access"
    }

    fn summary(&self) -> &'static str {
        "close an S3 bucket to the public: Public Access Block all on, public ACL grants and \
         policy statements removed (kept for rollback)"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        // The IAM actions for these calls: GetBucketAcl/PutBucketAcl, Get/Put/DeleteBucketPolicy,
        // and Get/Put/DeletePublicAccessBlock → s3:{Get,Put}BucketPublicAccessBlock.
        const PERMISSIONS: &[Permission] = &[
            Permission::new("aws", "sts:GetCallerIdentity"),
            Permission::new("aws", "s3:GetBucketPublicAccessBlock"),
            Permission::new("aws", "s3:PutBucketPublicAccessBlock"),
            Permission::new("aws", "s3:GetBucketAcl"),
            Permission::new("aws", "s3:PutBucketAcl"),
            Permission::new("aws", "s3:GetBucketPolicy"),
            Permission::new("aws", "s3:PutBucketPolicy"),
            Permission::new("aws", "s3:DeleteBucketPolicy"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "{}                       # no parameters: the bucket comes from the finding\n"
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
            let b = BucketRef::of(input.finding)?;
            let (aws, owner) = match planning_in(ctx, b.account.as_deref()).await? {
                Ok(connected) => connected,
                Err(why) => {
                    let what = format!("close s3://{} to the public", b.bucket);
                    return Ok(not_connected_plan(self, b.key(), &what, &why));
                }
            };
            let credentials = acting_as(&aws, &b, &owner);
            let state = read(&aws, &b, &owner).await?;
            Ok(Self::draft(&b, &state, &credentials).finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let b = BucketRef::of(input.finding)?;
            let (aws, owner) = acting_in(ctx, b.account.as_deref()).await?;
            let credentials = acting_as(&aws, &b, &owner);
            let live = read(&aws, &b, &owner).await?;
            let outcome = |result: &str, detail: Value, undo: Option<Undo>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail,
                undo: undo.and_then(|u| serde_json::to_value(u).ok()),
            };
            if live.closed() {
                // Planned as a no-op, or a retry after this apply already closed it. Without
                // knowing which, no undo record is kept: a rollback never reopens a bucket
                // this step may not have closed.
                return Ok(outcome(
                    "unchanged",
                    json!({"bucket": b.bucket, "public_access_block": Pab::ALL}),
                    None,
                ));
            }
            let drift = || {
                ActionError::Drift(format!(
                    "the Public Access Block, ACL or policy of s3://{} changed since planning",
                    b.bucket
                ))
            };
            if plan.noop {
                return Err(drift());
            }
            // The state planned against; a retry of an apply interrupted half-way finds some
            // of its writes done and carries on from there, keeping what the plan removes.
            let planned = BucketState::from_observed(&plan.observed).ok_or_else(drift)?;
            if live.observed(&b, &credentials) != plan.observed && !planned.on_the_way(&live) {
                return Err(drift());
            }
            let removed_grants = planned.public_grants();
            let removed_statements: Vec<Value> = planned
                .public_statements()
                .into_iter()
                .map(|(_, st)| st)
                .collect();
            let kept_grants = planned.kept_grants();
            let kept_policy = planned.kept_policy();
            // Grants and statements first: real AWS refuses neither while the block is off,
            // and the block, turned on last, then guards the result.
            if live.grants != kept_grants {
                put_acl(&aws, &b, &owner, &planned.owner, &kept_grants).await?;
            }
            if live.policy != kept_policy {
                put_policy(&aws, &b, &owner, kept_policy.as_ref()).await?;
            }
            if live.pab != Some(Pab::ALL) {
                put_pab(&aws, &b, &owner, Some(Pab::ALL)).await?;
            }
            let live = planned;
            let detail = json!({
                "bucket": b.bucket,
                "public_access_block": Pab::ALL,
                "removed_grants": removed_grants.len(),
                "removed_statements": removed_statements.len(),
                "policy_deleted": !removed_statements.is_empty() && kept_policy.is_none(),
            });
            let undo = Undo {
                bucket: b.clone(),
                previous_public_access_block: live.pab,
                removed_grants,
                removed_statements,
                previous_policy: live.policy.clone().map(|mut p| {
                    if let Value::Object(map) = &mut p {
                        map.remove("Statement");
                    }
                    p
                }),
            };
            Ok(outcome("applied", detail, Some(undo)))
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
            let b = &undo.bucket;
            let (aws, owner) = acting_in(ctx, b.account.as_deref()).await?;
            let live = read(&aws, b, &owner).await.map_err(|e| match e {
                ActionError::NotApplicable(m) => {
                    ActionError::Permanent(format!("nothing to restore: {m}"))
                }
                other => other,
            })?;
            // The block first: with it on, real AWS refuses the public grants and statements.
            if live.pab != undo.previous_public_access_block {
                put_pab(&aws, b, &owner, undo.previous_public_access_block).await?;
            }
            let missing: Vec<GrantRec> = undo
                .removed_grants
                .iter()
                .filter(|g| !live.grants.iter().any(|l| l.same_grant(g)))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let mut grants = live.grants.clone();
                grants.extend(missing);
                put_acl(&aws, b, &owner, &live.owner, &grants).await?;
            }
            let current = live.policy.as_ref().map(statements).unwrap_or_default();
            let missing: Vec<Value> = undo
                .removed_statements
                .iter()
                .filter(|st| !current.contains(st))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let mut policy = live
                    .policy
                    .clone()
                    .or_else(|| undo.previous_policy.clone())
                    .unwrap_or_else(|| json!({"Version": "2012-10-17"}));
                let mut all = current;
                all.extend(missing);
                if let Value::Object(map) = &mut policy {
                    map.insert("Statement".to_owned(), Value::Array(all));
                }
                put_policy(&aws, b, &owner, Some(&policy)).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_public_principal_without_a_restricting_condition_is_public() {
        let open = json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"});
        assert!(public_statement(&open));
        let aws_star = json!({"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": "s3:*"});
        assert!(public_statement(&aws_star));
        let vpc = json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}});
        assert!(!public_statement(&vpc));
        let org = json!({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject",
            "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abc"}}});
        assert!(!public_statement(&org));
        let anywhere = json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
            "Condition": {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}});
        assert!(
            public_statement(&anywhere),
            "every address restricts nothing"
        );
        let deny = json!({"Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}});
        assert!(!public_statement(&deny), "a Deny never opens a bucket");
        let account = json!({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "s3:GetObject"});
        assert!(!public_statement(&account));
    }

    #[test]
    fn a_single_statement_object_is_read_as_a_list() {
        let p =
            json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Principal": "*"}});
        assert_eq!(statements(&p).len(), 1);
    }
}
