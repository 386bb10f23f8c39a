//! Security Hub `BatchUpdateFindings` for moto, which lacks it (TEST-PEERS.md): an
//! [`Interceptor`] for the AWS proxy that answers `PATCH /findings/batchupdate` itself and keeps
//! the state in moto, so `GetFindings` (forwarded to moto) shows the update.
//!
//! Faithful to the API reference,
//! <https://docs.aws.amazon.com/securityhub/1.0/APIReference/API_BatchUpdateFindings.html>:
//! - request (REST-JSON, `PATCH /findings/batchupdate`): `FindingIdentifiers` (required, 1-100
//!   `{Id, ProductArn}`), and the fields to update; this shim implements `Workflow.Status`
//!   (`NEW` | `NOTIFIED` | `RESOLVED` | `SUPPRESSED`) and `Note` (`Text` and `UpdatedBy`, both
//!   required when `Note` is given; `Text` at most 512 characters), which is what Firebreak
//!   sends; a request updating nothing else it knows is refused as the service refuses one
//!   with no update field (`InvalidInputException`);
//! - response: `ProcessedFindings` (the identifiers updated) and `UnprocessedFindings`
//!   (`{FindingIdentifier, ErrorCode, ErrorMessage}`, `ErrorCode` `FindingNotFound` for an
//!   unknown identifier, `DuplicatedFindingIdentifier` for one given twice); a finding that
//!   cannot be processed does not fail the request (HTTP 200);
//! - "Updates from BatchUpdateFindings don't affect the value of `UpdatedAt` for a finding"
//!   (the API reference): `UpdatedAt` is left alone; `Note.UpdatedAt` is the time of the update.
//!
//! Authorisation: the service refuses a caller without `securityhub:BatchUpdateFindings`
//! (`AccessDeniedException`, HTTP 403). [`BatchUpdateFindings::enforcing`] does the same when
//! moto enforces IAM: it finds the IAM user of the request's access key (from the SigV4
//! `Authorization` header) and evaluates that user's inline and attached policies for the
//! action (explicit `Deny` wins, then any `Allow`; `Action`/`NotAction` with `*`/`?` wildcards;
//! resources are `*` for this API). The signature itself is not verified here; moto verifies
//! it on every other call of the same client.
//!
//! How: the finding is read from moto (`GetFindings`, which ignores filters in moto 5.2, so
//! every page is read and matched on `Id` and `ProductArn`), updated, and imported again with
//! `BatchImportFindings`, which moto treats as an overwrite by `Id`. The shim signs its own calls
//! to moto with the credentials it was built with (an admin when moto enforces IAM), so it does
//! not act as the caller; the caller's permission is checked as described above.

use aws_sdk_securityhub::types::{AwsSecurityFinding, Note, Workflow, WorkflowStatus};
use serde_json::{Value, json};

use super::aws_proxy::{BoxFuture, Interceptor, ProxyRequest, ProxyResponse};

/// The `BatchUpdateFindings` shim.
pub struct BatchUpdateFindings {
    hub: aws_sdk_securityhub::Client,
    /// Set when callers' IAM policies are enforced (moto with IAM enforcement).
    iam: Option<aws_sdk_iam::Client>,
}

const STATUSES: &[&str] = &["NEW", "NOTIFIED", "RESOLVED", "SUPPRESSED"];

impl BatchUpdateFindings {
    /// A shim that reads and writes findings in moto through `hub` (pointed at moto itself,
    /// not at the proxy).
    pub fn new(hub: aws_sdk_securityhub::Client) -> Self {
        Self { hub, iam: None }
    }

    /// A shim that also refuses callers whose IAM policies do not allow
    /// `securityhub:BatchUpdateFindings`, reading them through `iam` (an admin's client).
    pub fn enforcing(hub: aws_sdk_securityhub::Client, iam: aws_sdk_iam::Client) -> Self {
        Self {
            hub,
            iam: Some(iam),
        }
    }

    /// Whether the caller of `req` may call `BatchUpdateFindings`: `Err` is the user's ARN or
    /// what made the caller unknown.
    async fn authorize(&self, iam: &aws_sdk_iam::Client, req: &ProxyRequest) -> Result<(), String> {
        let key_id = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
            .ok_or("the request is not signed")?
            .to_owned();
        let users = iam
            .list_users()
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut owner = None;
        for u in users.users() {
            let keys = iam
                .list_access_keys()
                .user_name(u.user_name())
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            if keys
                .access_key_metadata()
                .iter()
                .any(|k| k.access_key_id() == Some(key_id.as_str()))
            {
                owner = Some((u.user_name().to_owned(), u.arn().to_owned()));
                break;
            }
        }
        let (user, arn) = owner.ok_or_else(|| format!("access key {key_id} belongs to no user"))?;
        let mut documents = Vec::new();
        let inline = iam
            .list_user_policies()
            .user_name(&user)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        for name in inline.policy_names() {
            let p = iam
                .get_user_policy()
                .user_name(&user)
                .policy_name(name)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            documents.push(p.policy_document().to_owned());
        }
        let attached = iam
            .list_attached_user_policies()
            .user_name(&user)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        for a in attached.attached_policies() {
            let arn = a.policy_arn().unwrap_or_default();
            let policy = iam
                .get_policy()
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let version = policy
                .policy()
                .and_then(|p| p.default_version_id())
                .unwrap_or("v1");
            let v = iam
                .get_policy_version()
                .policy_arn(arn)
                .version_id(version)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            if let Some(doc) = v.policy_version().and_then(|v| v.document()) {
                documents.push(doc.to_owned());
            }
        }
        let docs: Vec<Value> = documents.iter().filter_map(|d| parse_document(d)).collect();
        if allows(&docs, "securityhub:BatchUpdateFindings") {
            Ok(())
        } else {
            Err(arn)
        }
    }

    async fn find(
        &self,
        id: &str,
        product_arn: &str,
    ) -> Result<Option<AwsSecurityFinding>, String> {
        let mut next: Option<String> = None;
        loop {
            let page = self
                .hub
                .get_findings()
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| format!("{}", aws_sdk_securityhub::error::DisplayErrorContext(e)))?;
            if let Some(f) = page.findings().iter().find(|f| {
                f.id.as_deref() == Some(id) && f.product_arn.as_deref() == Some(product_arn)
            }) {
                return Ok(Some(f.clone()));
            }
            match page.next_token().filter(|t| !t.is_empty()) {
                Some(t) => next = Some(t.to_owned()),
                None => return Ok(None),
            }
        }
    }

    async fn answer(&self, body: &[u8]) -> ProxyResponse {
        let invalid = |m: &str| ProxyResponse::json_error(400, "InvalidInputException", m);
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return invalid("the request body is not JSON");
        };
        let Some(ids) = req["FindingIdentifiers"]
            .as_array()
            .filter(|a| !a.is_empty())
        else {
            return invalid("FindingIdentifiers is required and must not be empty");
        };
        if ids.len() > 100 {
            return invalid("FindingIdentifiers holds at most 100 identifiers");
        }
        let status = match req.get("Workflow").map(|w| &w["Status"]) {
            None => None,
            Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => Some(s.clone()),
            Some(other) => {
                return invalid(&format!(
                    "Workflow.Status must be one of NEW, NOTIFIED, RESOLVED, SUPPRESSED, got {other}"
                ));
            }
        };
        let note = match req.get("Note") {
            None => None,
            Some(n) => match (n["Text"].as_str(), n["UpdatedBy"].as_str()) {
                (Some(text), Some(by)) if text.chars().count() <= 512 => {
                    Some((text.to_owned(), by.to_owned()))
                }
                (Some(_), Some(_)) => return invalid("Note.Text is at most 512 characters"),
                _ => return invalid("Note requires Text and UpdatedBy"),
            },
        };
        if status.is_none() && note.is_none() {
            return invalid("the request updates nothing (this shim implements Workflow and Note)");
        }
        let mut processed = Vec::new();
        let mut unprocessed = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        for ident in ids {
            let (Some(id), Some(arn)) = (ident["Id"].as_str(), ident["ProductArn"].as_str()) else {
                return invalid("every FindingIdentifier needs Id and ProductArn");
            };
            let key = (id.to_owned(), arn.to_owned());
            let unprocessed_with = |code: &str, message: &str| {
                json!({"FindingIdentifier": {"Id": id, "ProductArn": arn},
                    "ErrorCode": code, "ErrorMessage": message})
            };
            if seen.contains(&key) {
                unprocessed.push(unprocessed_with(
                    "DuplicatedFindingIdentifier",
                    "Finding identifier is duplicated in the request",
                ));
                continue;
            }
            seen.push(key);
            let mut finding = match self.find(id, arn).await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    unprocessed.push(unprocessed_with("FindingNotFound", "Finding not found"));
                    continue;
                }
                Err(e) => {
                    unprocessed.push(unprocessed_with("InternalFailure", &e));
                    continue;
                }
            };
            if let Some(s) = &status {
                finding.workflow = Some(
                    Workflow::builder()
                        .status(WorkflowStatus::from(s.as_str()))
                        .build(),
                );
            }
            if let Some((text, by)) = &note {
                finding.note = Some(
                    Note::builder()
                        .text(text)
                        .updated_by(by)
                        .updated_at(
                            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        )
                        .build(),
                );
            }
            match self
                .hub
                .batch_import_findings()
                .findings(finding)
                .send()
                .await
            {
                Ok(out) if out.failed_count() == Some(0) || out.failed_findings().is_empty() => {
                    processed.push(json!({"Id": id, "ProductArn": arn}));
                }
                Ok(out) => unprocessed.push(unprocessed_with(
                    "InternalFailure",
                    &format!("{:?}", out.failed_findings()),
                )),
                Err(e) => unprocessed.push(unprocessed_with(
                    "InternalFailure",
                    &format!("{}", aws_sdk_securityhub::error::DisplayErrorContext(e)),
                )),
            }
        }
        ProxyResponse {
            status: 200,
            content_type: "application/json".to_owned(),
            body: json!({"ProcessedFindings": processed, "UnprocessedFindings": unprocessed})
                .to_string(),
        }
    }
}

impl Interceptor for BatchUpdateFindings {
    fn intercept<'a>(
        &'a self,
        req: &'a ProxyRequest,
        _upstream: &'a str,
    ) -> BoxFuture<'a, Option<ProxyResponse>> {
        Box::pin(async move {
            let path = req.uri.split('?').next().unwrap_or_default();
            if req.method != axum::http::Method::PATCH || path != "/findings/batchupdate" {
                return None;
            }
            if let Some(iam) = &self.iam
                && let Err(who) = self.authorize(iam, req).await
            {
                return Some(ProxyResponse::json_error(
                    403,
                    "AccessDeniedException",
                    &format!(
                        "User: {who} is not authorized to perform: securityhub:BatchUpdateFindings"
                    ),
                ));
            }
            Some(self.answer(&req.body).await)
        })
    }
}

/// Imports raw ASFF findings (real fixtures, as JSON) into Security Hub with
/// `BatchImportFindings`, signed by `hub`'s credentials. The SDK models findings as typed
/// structs with no JSON reader, so the request is built with a placeholder and its body is
/// replaced by the fixture's JSON before signing (the signature covers the real body).
pub async fn import_findings(hub: &aws_sdk_securityhub::Client, findings: &[Value]) {
    let body = json!({ "Findings": findings }).to_string();
    let out = hub
        .batch_import_findings()
        .set_findings(Some(Vec::new()))
        .customize()
        .mutate_request(move |req| {
            let len = body.len().to_string();
            *req.body_mut() = body.clone().into();
            req.headers_mut().insert("content-length", len);
        })
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "BatchImportFindings: {}",
                aws_sdk_securityhub::error::DisplayErrorContext(e)
            )
        });
    assert_eq!(out.failed_count(), Some(0), "{:?}", out.failed_findings());
}

/// A policy document as IAM returns it: URL-encoded JSON (or plain JSON).
fn parse_document(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok().or_else(|| {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        serde_json::from_slice(&out).ok()
    })
}

/// Whether an IAM action pattern (`s3:*`, `securityhub:Get*`) matches `action`, ignoring case.
fn action_matches(pattern: &str, action: &str) -> bool {
    fn glob(p: &[u8], a: &[u8]) -> bool {
        match (p.first(), a.first()) {
            (None, None) => true,
            (Some(b'*'), _) => glob(&p[1..], a) || (!a.is_empty() && glob(p, &a[1..])),
            (Some(b'?'), Some(_)) => glob(&p[1..], &a[1..]),
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(y) => glob(&p[1..], &a[1..]),
            _ => false,
        }
    }
    glob(pattern.as_bytes(), action.as_bytes())
}

/// IAM policy evaluation for one action on `*`: an explicit Deny wins, else any Allow.
fn allows(documents: &[Value], action: &str) -> bool {
    let listed = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut allowed = false;
    for doc in documents {
        let statements = match &doc["Statement"] {
            Value::Array(items) => items.clone(),
            one @ Value::Object(_) => vec![one.clone()],
            _ => Vec::new(),
        };
        for st in statements {
            let applies = if st.get("NotAction").is_some() {
                !listed(st.get("NotAction"))
                    .iter()
                    .any(|p| action_matches(p, action))
            } else {
                listed(st.get("Action"))
                    .iter()
                    .any(|p| action_matches(p, action))
            };
            if !applies {
                continue;
            }
            match st["Effect"].as_str() {
                Some("Deny") => return false,
                Some("Allow") => allowed = true,
                _ => {}
            }
        }
    }
    allowed
}

#[test]
fn the_shims_policy_evaluation_follows_iam_deny_then_allow() {
    let allow = json!({"Statement": [{"Effect": "Allow", "Action": ["securityhub:Batch*"], "Resource": "*"}]});
    let deny = json!({"Statement": {"Effect": "Deny", "Action": "securityhub:*", "Resource": "*"}});
    let other =
        json!({"Statement": [{"Effect": "Allow", "NotAction": "securityhub:*", "Resource": "*"}]});
    let action = "securityhub:BatchUpdateFindings";
    assert!(allows(std::slice::from_ref(&allow), action));
    assert!(!allows(&[allow, deny], action), "an explicit Deny wins");
    assert!(!allows(&[other], action), "NotAction excludes it");
    assert!(!allows(&[], action), "nothing allowed: denied");
    assert!(action_matches("SecurityHub:batchupdatefindings", action));
    assert!(!action_matches("securityhub:GetFindings", action));
    assert_eq!(
        parse_document("%7B%22Statement%22%3A%5B%5D%7D"),
        Some(json!({"Statement": []}))
    );
}
