//! IAM containment actions: `aws.iam.deactivate-access-key`, `aws.iam.rotate-access-key`,
//! `aws.iam.delete-access-key` and `aws.iam.quarantine-user`.
//!
//! Owns what they share: finding the access key or user a finding is about, refusing a finding
//! about another account than the one Firebreak is connected to, finding a key's user (from the
//! finding, else `GetAccessKeyLastUsed`), and reading a user's keys. Access key *ids* appear in
//! plans and outcomes (they are not secret); a secret access key never does.

mod deactivate_key;
mod delete_key;
mod quarantine_user;
mod rotate_key;

pub use deactivate_key::AwsIamDeactivateAccessKey;
pub use delete_key::AwsIamDeleteAccessKey;
pub use quarantine_user::AwsIamQuarantineUser;
pub use rotate_key::AwsIamRotateAccessKey;

use aws_sdk_iam::types::StatusType;
use serde::{Deserialize, Serialize};

use super::{acting_in, error_code, planning_in, sdk_error};
use crate::action::{ActionCtx, ActionError};
use crate::clients::aws::Aws;
use crate::finding::{Finding, ResourceRef};

/// The access key a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRef {
    /// The account the finding names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The key's user, when the finding names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The access key id.
    pub access_key_id: String,
}

impl KeyRef {
    /// The first `aws.iam.access_key` among the finding's resources.
    pub(crate) fn of(finding: &Finding) -> Result<Self, ActionError> {
        finding
            .resources
            .iter()
            .find_map(|r| match r {
                ResourceRef::AwsIamAccessKey {
                    account,
                    user,
                    access_key_id,
                } => Some(Self {
                    account: account.clone(),
                    user: user.clone(),
                    access_key_id: access_key_id.clone(),
                }),
                _ => None,
            })
            .ok_or_else(|| {
                ActionError::NotApplicable("the finding names no AWS access key".to_owned())
            })
    }

    /// The stable key of the access key (also the lock key), as findings key resources.
    pub(crate) fn target(&self) -> String {
        ResourceRef::AwsIamAccessKey {
            account: self.account.clone(),
            user: None,
            access_key_id: self.access_key_id.clone(),
        }
        .key()
    }

    /// The AWS configuration `plan` reads this key with, its account checked against the
    /// connected one; `Ok(Err(why))` when AWS is not usable (the plan then says so).
    pub(crate) async fn planning_client(
        &self,
        ctx: &ActionCtx,
    ) -> Result<Result<Aws, String>, ActionError> {
        Ok(planning_in(ctx, self.account.as_deref())
            .await?
            .map(|(aws, _)| aws))
    }

    /// [`KeyRef::planning_client`] for `apply`: without AWS it fails (permanently).
    pub(crate) async fn acting_client(&self, ctx: &ActionCtx) -> Result<Aws, ActionError> {
        Ok(acting_in(ctx, self.account.as_deref()).await?.0)
    }
}

/// One access key of a user as IAM lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyState {
    /// The access key id.
    pub id: String,
    /// `Active` or `Inactive`.
    pub status: String,
}

impl KeyState {
    pub(crate) fn active(&self) -> bool {
        self.status == "Active"
    }
}

/// The user owning `access_key_id`: the finding's, else asked of IAM (`GetAccessKeyLastUsed`).
/// `Ok(None)` when IAM knows no such key.
pub(crate) async fn key_user(aws: &Aws, key: &KeyRef) -> Result<Option<String>, ActionError> {
    if let Some(user) = key.user.as_ref().filter(|u| !u.is_empty()) {
        return Ok(Some(user.clone()));
    }
    match aws
        .iam()
        .get_access_key_last_used()
        .access_key_id(&key.access_key_id)
        .send()
        .await
    {
        Ok(out) => Ok(out.user_name().map(str::to_owned)),
        Err(e) if error_code(&e) == Some("NoSuchEntity") => Ok(None),
        Err(e) => Err(sdk_error(
            &format!("finding the user of access key {}", key.access_key_id),
            &e,
        )),
    }
}

/// The user's access keys, in IAM's order. `Ok(None)` when the user does not exist.
pub(crate) async fn list_keys(aws: &Aws, user: &str) -> Result<Option<Vec<KeyState>>, ActionError> {
    match aws.iam().list_access_keys().user_name(user).send().await {
        Ok(out) => Ok(Some(
            out.access_key_metadata()
                .iter()
                .filter_map(|m| {
                    Some(KeyState {
                        id: m.access_key_id()?.to_owned(),
                        status: m.status().map_or("Active", StatusType::as_str).to_owned(),
                    })
                })
                .collect(),
        )),
        Err(e) if error_code(&e) == Some("NoSuchEntity") => Ok(None),
        Err(e) => Err(sdk_error(
            &format!("listing the access keys of IAM user {user}"),
            &e,
        )),
    }
}

/// A key as it is now: its user and status, `None` when it no longer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveKey {
    pub user: String,
    pub keys: Vec<KeyState>,
    pub status: Option<String>,
}

/// Reads the key's user and that user's keys. `Ok(None)` when IAM knows neither the key nor
/// (for a finding naming its user) the user.
pub(crate) async fn live_key(aws: &Aws, key: &KeyRef) -> Result<Option<LiveKey>, ActionError> {
    let Some(user) = key_user(aws, key).await? else {
        return Ok(None);
    };
    let Some(keys) = list_keys(aws, &user).await? else {
        return Ok(None);
    };
    let status = keys
        .iter()
        .find(|k| k.id == key.access_key_id)
        .map(|k| k.status.clone());
    Ok(Some(LiveKey { user, keys, status }))
}

/// Sets a key's status.
pub(crate) async fn set_status(
    aws: &Aws,
    user: &str,
    access_key_id: &str,
    status: StatusType,
) -> Result<(), ActionError> {
    aws.iam()
        .update_access_key()
        .user_name(user)
        .access_key_id(access_key_id)
        .status(status.clone())
        .send()
        .await
        .map_err(|e| {
            sdk_error(
                &format!(
                    "setting access key {access_key_id} of IAM user {user} {}",
                    status.as_str()
                ),
                &e,
            )
        })?;
    Ok(())
}

/// The object path of a key in plans.
pub(crate) fn key_path(user: &str, access_key_id: &str) -> String {
    format!("iam/users/{user}/access-keys/{access_key_id}")
}

/// Decodes the `%XX` escapes IAM puts in policy documents (RFC 3986); text without escapes is
/// returned as it is.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_documents_are_decoded_whether_escaped_or_not() {
        assert_eq!(
            percent_decode("%7B%22Effect%22%3A%22Deny%22%7D"),
            r#"{"Effect":"Deny"}"#
        );
        assert_eq!(percent_decode(r#"{"a":"50%"}"#), r#"{"a":"50%"}"#);
    }
}
