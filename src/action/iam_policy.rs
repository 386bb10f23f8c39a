//! `deploy/iam-policy.json`, generated from the permissions the AWS actions declare, so the IAM
//! policy Firebreak runs with allows exactly the API actions its actions call and nothing more.
//!
//! An AWS grant is an IAM action, `service:Action` (`s3:PutBucketAcl`). The policy has one
//! statement per service (`Sid` `Firebreak` + the service, e.g. `FirebreakS3`), services and
//! actions sorted, so the file only changes when a declared permission does. Resources are
//! `*`: which bucket, key or finding is acted on comes from findings at run time; the guards
//! (exclusions, blast radius) bound it, and an account's role can narrow it further.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::ACTIONS;

/// Splits `service:Action` into its two parts; `None` if malformed.
fn parse_grant(grant: &str) -> Option<(&str, &str)> {
    let (service, action) = grant.split_once(':')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (ok(service) && ok(action)).then_some((service, action))
}

/// The statement id of a service: `Firebreak` and the service name with its first letter (and
/// any letter after a `-`) upper-cased, alphanumeric only as IAM requires.
fn sid(service: &str) -> String {
    let mut out = String::from("Firebreak");
    let mut upper = true;
    for c in service.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(if upper { c.to_ascii_uppercase() } else { c });
            upper = false;
        } else {
            upper = true;
        }
    }
    out
}

/// The IAM policy document for every AWS action in [`ACTIONS`], as a JSON value.
#[must_use]
pub fn aws_policy_document() -> Value {
    let mut by_service: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for action in ACTIONS {
        for p in action.permissions() {
            if p.system != "aws" {
                continue;
            }
            // A malformed grant is caught by the unit test below; skip it here.
            if let Some((service, _)) = parse_grant(&p.grant) {
                by_service.entry(service).or_default().insert(&p.grant);
            }
        }
    }
    let statements: Vec<Value> = by_service
        .iter()
        .map(|(service, grants)| {
            json!({
                "Sid": sid(service),
                "Effect": "Allow",
                "Action": grants.iter().collect::<Vec<_>>(),
                "Resource": "*",
            })
        })
        .collect();
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// [`aws_policy_document`] as the pretty-printed JSON `deploy/iam-policy.json` holds (with a
/// final newline).
#[must_use]
pub fn aws_iam_policy() -> String {
    let mut text = serde_json::to_string_pretty(&aws_policy_document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_aws_grant_in_the_registry_is_well_formed() {
        for action in ACTIONS {
            for p in action.permissions().iter().filter(|p| p.system == "aws") {
                assert!(
                    parse_grant(&p.grant).is_some(),
                    "{}: malformed grant `{}`",
                    action.kind(),
                    p.grant
                );
            }
        }
    }

    #[test]
    fn one_sorted_statement_per_service() {
        let doc = aws_policy_document();
        let sids: Vec<&str> = doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Sid"].as_str().unwrap())
            .collect();
        let mut sorted = sids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sids, sorted);
        assert!(sids.contains(&"FirebreakS3"), "{sids:?}");
        assert!(sids.contains(&"FirebreakSecurityhub"), "{sids:?}");
        assert_eq!(sid("access-analyzer"), "FirebreakAccessAnalyzer");
    }

    #[test]
    fn grants_split_into_service_and_action() {
        assert_eq!(parse_grant("s3:PutBucketAcl"), Some(("s3", "PutBucketAcl")));
        assert_eq!(parse_grant("s3:"), None);
        assert_eq!(parse_grant("PutBucketAcl"), None);
        assert_eq!(parse_grant("s3:Put*"), None);
    }
}
