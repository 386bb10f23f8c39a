//! trufflehog v3 results (`--json`): JSON lines, or a JSON array of the same objects.
//!
//! Owns the mapping of one trufflehog result onto a canonical [`Finding`](super::Finding)
//! (documented in `docs/parsers-secrets.md`): `DetectorName` → rule, `Verified` → severity,
//! `SourceMetadata.Data.<source>` → where it was found. Never keeps the secret: `Raw` and `RawV2`
//! are removed from `fields` before the finding is built and only their hash is kept as the
//! `secret_hash` label. For AWS the access key *id* (which trufflehog also prints in
//! `Redacted`) becomes the `aws.iam.access_key` resource, with the account and user trufflehog
//! learnt while verifying the key (`ExtraData.account`, `ExtraData.arn`).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::access::{join, kind, opt_obj, opt_str, req_str};
use super::gitleaks::{
    Reject, aws_access_key_id, aws_access_key_id_prefix, github_repo_from_url, is_aws_rule,
    opt_u64, repo_path, rfc3339, time_unknown, without,
};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// trufflehog v3 JSON results.
pub struct Trufflehog;

/// Keys of a result that hold secret material.
const SECRET_KEYS: &[&str] = &["Raw", "RawV2"];

/// Where the secret was found: the one entry of `SourceMetadata.Data`.
struct Origin<'a> {
    /// The source kind as trufflehog names it (`Git`, `Filesystem`, `Github`, …).
    kind: &'a str,
    file: Option<&'a str>,
    line: Option<u64>,
    repository: Option<&'a str>,
    commit: Option<&'a str>,
    link: Option<&'a str>,
    /// `(value, pointer)` of the timestamp.
    timestamp: Option<(&'a str, String)>,
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

/// Reads `SourceMetadata.Data.<kind>`; a result without source metadata has an empty origin.
fn origin(v: &Value) -> Result<Option<Origin<'_>>, Reject> {
    let Some(meta) = opt_obj(v, "", "SourceMetadata")? else {
        return Ok(None);
    };
    let Some(data) = opt_obj(meta, "/SourceMetadata", "Data")? else {
        return Ok(None);
    };
    let Some((source_kind, inner)) = data.as_object().and_then(|m| m.iter().next()) else {
        return Ok(None);
    };
    let base = join("/SourceMetadata/Data", source_kind);
    if !inner.is_object() {
        return Err((base, format!("expected an object, found {}", kind(inner))));
    }
    let timestamp =
        non_empty(opt_str(inner, &base, "timestamp")?).map(|t| (t, join(&base, "timestamp")));
    Ok(Some(Origin {
        kind: source_kind,
        file: non_empty(opt_str(inner, &base, "file")?),
        line: opt_u64(inner, &base, "line")?,
        repository: non_empty(opt_str(inner, &base, "repository")?),
        commit: non_empty(opt_str(inner, &base, "commit")?),
        link: non_empty(opt_str(inner, &base, "link")?),
        timestamp,
    }))
}

/// trufflehog's git timestamps are Go's `time.String()`: `2022-06-16 10:17:40 -0700 PDT` (the
/// zone name is sometimes the offset again). RFC 3339 is accepted too.
fn timestamp(text: &str, pointer: &str) -> Result<DateTime<Utc>, Reject> {
    let mut words = text.split_whitespace();
    if let (Some(date), Some(time), Some(offset)) = (words.next(), words.next(), words.next())
        && let Ok(t) = DateTime::parse_from_str(
            &format!("{date} {time} {offset}"),
            "%Y-%m-%d %H:%M:%S%.f %z",
        )
    {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc());
    }
    rfc3339(text, pointer).map_err(|(p, _)| {
        (
            p,
            "not a timestamp (expected e.g. 2022-06-16 10:17:40 -0700 PDT or RFC 3339)".to_owned(),
        )
    })
}

/// `(account, user)` from an IAM ARN such as `arn:aws:iam::123456789012:user/path/name`.
fn arn_account_user(arn: &str) -> (Option<&str>, Option<&str>) {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [_, _, service, _, account, resource] = parts.as_slice() else {
        return (None, None);
    };
    let account = Some(*account).filter(|a| !a.is_empty());
    let user = match (*service, resource.strip_prefix("user/")) {
        ("iam", Some(path)) => path.rsplit('/').next().filter(|u| !u.is_empty()),
        _ => None,
    };
    (account, user)
}

/// The `aws.iam.access_key` of an AWS result: the key id from `Redacted` (where trufflehog
/// prints it), else `Raw`, else the start of `RawV2`; account and user from `ExtraData`.
fn aws_key(
    raw: Option<&str>,
    raw_v2: Option<&str>,
    redacted: Option<&str>,
    extra: Option<&Value>,
) -> Result<Option<ResourceRef>, Reject> {
    let key_id = redacted
        .and_then(aws_access_key_id)
        .or_else(|| raw.and_then(aws_access_key_id))
        .or_else(|| raw_v2.and_then(aws_access_key_id_prefix));
    let Some(access_key_id) = key_id else {
        return Ok(None);
    };
    let extra_str = |key: &str| -> Result<Option<&str>, Reject> {
        match extra {
            Some(e) => Ok(non_empty(opt_str(e, "/ExtraData", key)?)),
            None => Ok(None),
        }
    };
    let (arn_account, user) = extra_str("arn")?.map(arn_account_user).unwrap_or_default();
    Ok(Some(ResourceRef::AwsIamAccessKey {
        account: extra_str("account")?.or(arn_account).map(str::to_owned),
        user: user.map(str::to_owned),
        access_key_id: access_key_id.to_owned(),
    }))
}

/// Adds what the source metadata says (labels, the repository resource) and returns the
/// location for the title and the time, when the source has one.
fn apply_origin(
    o: &Origin<'_>,
    labels: &mut BTreeMap<String, String>,
    resources: &mut Vec<ResourceRef>,
) -> Result<(String, Option<DateTime<Utc>>), Reject> {
    labels.insert("trufflehog.source_type".to_owned(), o.kind.to_lowercase());
    if let Some(file) = o.file {
        labels.insert("file".to_owned(), file.to_owned());
    }
    if let Some(line) = o.line {
        labels.insert("line".to_owned(), line.to_string());
    }
    if let Some(commit) = o.commit {
        labels.insert("commit".to_owned(), commit.to_owned());
    }
    let repo = o
        .repository
        .and_then(github_repo_from_url)
        .or_else(|| o.link.and_then(github_repo_from_url));
    let mut location = match (repo, o.repository) {
        (Some((owner, name)), _) => {
            let location = format!("{owner}/{name}");
            resources.push(ResourceRef::GithubRepository {
                owner,
                repo: name,
                path: o.file.and_then(repo_path),
                alert_number: None,
            });
            location
        }
        (None, Some(url)) => {
            labels.insert("repository".to_owned(), url.to_owned());
            url.to_owned()
        }
        (None, None) => String::new(),
    };
    if let Some(file) = o.file {
        if !location.is_empty() {
            location.push(' ');
        }
        location.push_str(file);
        if let Some(line) = o.line {
            location.push(':');
            location.push_str(&line.to_string());
        }
    }
    let observed_at = match &o.timestamp {
        Some((t, pointer)) => Some(timestamp(t, pointer)?),
        None => None,
    };
    Ok((location, observed_at))
}

/// Builds the finding for one trufflehog result, or says which field is wrong.
fn draft(v: &Value) -> Result<FindingDraft, Reject> {
    if !(v.is_object() && v.get("DetectorName").is_some()) {
        return Err((
            String::new(),
            format!(
                "not a trufflehog result: expected an object with SourceMetadata, DetectorName \
                 and Verified, found {}",
                if v.is_object() {
                    "an object without them"
                } else {
                    kind(v)
                }
            ),
        ));
    }
    let detector = req_str(v, "", "DetectorName")?;
    let verified = match v.get("Verified") {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err((
                "/Verified".to_owned(),
                format!("expected a boolean, found {}", kind(other)),
            ));
        }
        None => return Err(("/Verified".to_owned(), "required field is missing".into())),
    };
    let raw = non_empty(opt_str(v, "", "Raw")?);
    let raw_v2 = non_empty(opt_str(v, "", "RawV2")?);
    let redacted = non_empty(opt_str(v, "", "Redacted")?);
    let decoder = non_empty(opt_str(v, "", "DecoderName")?);
    let source_name = non_empty(opt_str(v, "", "SourceName")?);
    let detector_type = v.get("DetectorType").and_then(Value::as_i64);
    let extra = opt_obj(v, "", "ExtraData")?;
    let origin = origin(v)?;

    let mut labels = BTreeMap::new();
    labels.insert("verified".to_owned(), verified.to_string());
    if let Some(secret) = raw.or(raw_v2) {
        labels.insert("secret_hash".to_owned(), crate::redact::secret_hash(secret));
    }
    if let Some(t) = detector_type {
        labels.insert("trufflehog.detector_type".to_owned(), t.to_string());
    }
    if let Some(d) = decoder {
        labels.insert("trufflehog.decoder".to_owned(), d.to_owned());
    }
    if let Some(s) = source_name {
        labels.insert("trufflehog.source".to_owned(), s.to_owned());
    }

    let mut resources = Vec::new();
    if is_aws_rule(detector)
        && let Some(key) = aws_key(raw, raw_v2, redacted, extra)?
    {
        resources.push(key);
    }
    let (location, observed_at) = match &origin {
        Some(o) => apply_origin(o, &mut labels, &mut resources)?,
        None => (String::new(), None),
    };
    let observed_at = match observed_at {
        Some(t) => t,
        None => time_unknown(&mut labels),
    };

    let verdict = if verified { "verified" } else { "unverified" };
    let title = if location.is_empty() {
        format!("{detector} secret ({verdict})")
    } else {
        format!("{detector} secret ({verdict}) in {location}")
    };

    Ok(FindingDraft {
        source: "trufflehog",
        rule: detector.to_owned(),
        title,
        severity: if verified {
            Severity::Critical
        } else {
            Severity::High
        },
        class: Class::CredentialExposure,
        resources,
        labels,
        fields: without(v, SECRET_KEYS),
        observed_at,
    })
}

impl Parser for Trufflehog {
    fn id(&self) -> &'static str {
        "trufflehog"
    }

    fn summary(&self) -> &'static str {
        "trufflehog v3 JSON results (JSON lines or array)"
    }

    fn sniff(&self, doc: &Value) -> bool {
        doc.get("SourceMetadata").is_some() && doc.get("DetectorName").is_some()
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        out.accept(doc, self.id(), draft(&doc.value));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn go_time_strings_parse_with_either_zone_spelling() {
        for text in [
            "2022-06-16 10:17:40 -0700 PDT",
            "2022-06-16 10:17:40 -0700 -0700",
            "2022-06-16T10:17:40-07:00",
        ] {
            assert_eq!(
                timestamp(text, "/t").unwrap().to_rfc3339(),
                "2022-06-16T17:17:40+00:00",
                "{text}"
            );
        }
        let (pointer, reason) = timestamp("yesterday", "/t").unwrap_err();
        assert_eq!(pointer, "/t");
        assert!(!reason.contains("yesterday"), "{reason}");
    }

    #[test]
    fn iam_user_arns_name_account_and_user() {
        assert_eq!(
            arn_account_user(
                "arn:aws:iam::595918472158:user/canarytokens.com@@mirux23ppyky6hx3l6vclmhnj"
            ),
            (
                Some("595918472158"),
                Some("canarytokens.com@@mirux23ppyky6hx3l6vclmhnj")
            )
        );
        assert_eq!(
            arn_account_user("arn:aws:iam::123456789012:user/division/alice"),
            (Some("123456789012"), Some("alice"))
        );
        assert_eq!(
            arn_account_user("arn:aws:sts::123456789012:assumed-role/r/s"),
            (Some("123456789012"), None)
        );
        assert_eq!(arn_account_user("not an arn"), (None, None));
    }
}
