//! gitleaks JSON reports: v8 (`--report-format json`) and v7, as a JSON array or JSON lines.
//!
//! Owns the mapping of one gitleaks leak onto a canonical [`Finding`](super::Finding) (documented
//! in `docs/parsers-secrets.md`). Never keeps the secret: `Secret`, `Match` and `Line` (v8) and
//! `offender` and `line` (v7, the source line) are removed from `fields` before the finding is
//! built, and only a `secret_hash` label links findings about the same secret. An AWS access key
//! *id* found in the secret is kept, as the `aws.iam.access_key` resource: it is not a secret and
//! the rotation playbook needs it.
//!
//! Also holds the small helpers the three secret-scanner parsers (gitleaks, trufflehog, GitHub)
//! share: finding an access key id, reading a GitHub repository out of a URL, and the
//! "time unknown" convention.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{join, kind, opt_str, req_str};
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// gitleaks v8 and v7 JSON reports.
pub struct Gitleaks;

/// Keys of a v8 record that hold secret material (`Line` is not serialised by current gitleaks
/// but was by some builds).
const V8_SECRET_KEYS: &[&str] = &["Secret", "Match", "Line"];

/// Keys of a v7 record that hold secret material: the secret and the whole source line.
const V7_SECRET_KEYS: &[&str] = &["offender", "line"];

/// What `gitleaks --redact` writes instead of the secret. Hashing it would link every redacted
/// leak to every other, so a redacted secret gets no `secret_hash`.
pub const REDACTED_PLACEHOLDER: &str = "REDACTED";

/// Label set, with `observed_at` = the Unix epoch, when a record carries no time at all (a
/// gitleaks `dir` scan, an old GitHub webhook payload, a trufflehog filesystem scan). Parsers
/// have no clock, and the epoch sorts such findings first instead of pretending they are new.
pub const TIME_UNKNOWN_LABEL: &str = "observed_at";

/// Why a record was rejected: JSON pointer and reason.
pub(super) type Reject = (String, String);

/// The first AWS access key id (`AKIA`/`ASIA` and 16 uppercase letters or digits) in `text`
/// that stands alone, i.e. is not part of a longer alphanumeric run (a 40-character secret
/// access key never yields one).
#[must_use]
pub fn aws_access_key_id(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let alnum = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_alphanumeric);
    let mut start = 0;
    while start + 20 <= bytes.len() {
        let window = &bytes[start..start + 20];
        if (window.starts_with(b"AKIA") || window.starts_with(b"ASIA"))
            && window[4..]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && (start == 0 || !alnum(start - 1))
            && !alnum(start + 20)
        {
            return text.get(start..start + 20);
        }
        start += 1;
    }
    None
}

/// An access key id that is the start of `text` (trufflehog's `RawV2` for AWS is the key id
/// followed directly by the secret key; only the id is taken).
#[must_use]
pub fn aws_access_key_id_prefix(text: &str) -> Option<&str> {
    aws_access_key_id(text.get(..20)?)
}

/// `(owner, repo)` from a github.com URL: `https://github.com/o/r`, `…/o/r.git`,
/// `…/o/r/blob/<sha>/path#L2`, `git@github.com:o/r.git`, `ssh://git@github.com/o/r`. Other hosts
/// (GitHub Enterprise included: its host is not known here) give `None`. Credentials in the URL
/// are ignored, never returned.
#[must_use]
pub fn github_repo_from_url(url: &str) -> Option<(String, String)> {
    let url = url.trim();
    let path = if let Some(rest) = url.strip_prefix("git@github.com:") {
        rest
    } else {
        let rest = ["https://", "http://", "ssh://", "git://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))?;
        let (authority, path) = rest.split_once('/')?;
        let host = authority.rsplit('@').next()?;
        let host = host.split(':').next()?;
        if !(host.eq_ignore_ascii_case("github.com") || host.eq_ignore_ascii_case("www.github.com"))
        {
            return None;
        }
        path
    };
    let mut parts = path.split(['/', '#', '?']);
    let owner = parts.next()?;
    let repo = parts.next()?;
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(owner) && valid(repo)).then(|| (owner.to_owned(), repo.to_owned()))
}

/// A file path as the `path` of a `github.repository` resource: relative to the repository root
/// (scanners write `/conf/aws.tf` and `conf/aws.tf` alike), `None` when empty.
#[must_use]
pub fn repo_path(path: &str) -> Option<String> {
    let p = path.trim().trim_start_matches('/');
    (!p.is_empty()).then(|| p.to_owned())
}

/// An RFC 3339 timestamp, or a rejection at `pointer` saying what was expected.
pub(super) fn rfc3339(text: &str, pointer: &str) -> Result<DateTime<Utc>, Reject> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            (
                pointer.to_owned(),
                "not an RFC 3339 timestamp (expected e.g. 2021-10-14T17:05:15Z)".to_owned(),
            )
        })
}

/// `observed_at` for a record without a time: the epoch, with the [`TIME_UNKNOWN_LABEL`] label.
pub(super) fn time_unknown(labels: &mut BTreeMap<String, String>) -> DateTime<Utc> {
    labels.insert(TIME_UNKNOWN_LABEL.to_owned(), "unknown".to_owned());
    DateTime::<Utc>::UNIX_EPOCH
}

/// A copy of the object `v` without `keys` (the secret-bearing ones).
pub(super) fn without(v: &Value, keys: &[&str]) -> Value {
    let mut copy = v.clone();
    if let Value::Object(map) = &mut copy {
        for k in keys {
            map.shift_remove(*k);
        }
    }
    copy
}

/// An optional non-negative integer field; a present non-integer is an error.
pub(super) fn opt_u64(v: &Value, base: &str, key: &str) -> Result<Option<u64>, Reject> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n @ Value::Number(_)) => n.as_u64().map(Some).ok_or_else(|| {
            (
                join(base, key),
                "expected a non-negative integer, found another number".to_owned(),
            )
        }),
        Some(other) => Err((
            join(base, key),
            format!("expected an integer, found {}", kind(other)),
        )),
    }
}

/// A required non-negative integer field.
pub(super) fn req_u64(v: &Value, base: &str, key: &str) -> Result<u64, Reject> {
    opt_u64(v, base, key)?.ok_or_else(|| (join(base, key), "required field is missing".into()))
}

/// Whether a rule (gitleaks `RuleID`/`rule`, trufflehog `DetectorName`, GitHub `secret_type`)
/// is about AWS credentials.
#[must_use]
pub fn is_aws_rule(rule: &str) -> bool {
    rule.to_ascii_lowercase().contains("aws")
}

/// Which gitleaks report format a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// gitleaks 8: keys in Pascal case, `RuleID`.
    V8,
    /// gitleaks 7: keys in camel case, `rule`, `offender`.
    V7,
}

impl Format {
    fn of(v: &Value) -> Option<Self> {
        if v.get("RuleID").is_some() && (v.get("Secret").is_some() || v.get("Match").is_some()) {
            Some(Format::V8)
        } else if v.get("rule").is_some()
            && (v.get("offender").is_some() || v.get("lineNumber").is_some())
        {
            Some(Format::V7)
        } else {
            None
        }
    }
}

/// The record read into one shape, whichever the format.
struct Leak<'a> {
    format: Format,
    rule: &'a str,
    description: Option<&'a str>,
    file: Option<&'a str>,
    line: Option<u64>,
    commit: Option<&'a str>,
    /// `(value, pointer)` of the commit date, when present and not empty.
    date: Option<(&'a str, &'static str)>,
    tags: Vec<String>,
    /// The secret (v8 `Secret`, else `Match`; v7 `offender`), for the hash.
    secret: Option<&'a str>,
    /// Where an access key id may be found: `Secret`, `Match`, `offender`.
    key_id_sources: Vec<&'a str>,
    /// URLs naming the repository: v8 `Link`, v7 `repoURL`, `leakURL`.
    urls: Vec<&'a str>,
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

fn read_v8(v: &Value) -> Result<Leak<'_>, Reject> {
    let rule = req_str(v, "", "RuleID")?;
    let description = non_empty(opt_str(v, "", "Description")?);
    let line = Some(req_u64(v, "", "StartLine")?);
    let file = non_empty(opt_str(v, "", "File")?);
    let commit = non_empty(opt_str(v, "", "Commit")?);
    let date = non_empty(opt_str(v, "", "Date")?).map(|d| (d, "/Date"));
    let secret_field = non_empty(opt_str(v, "", "Secret")?);
    let match_field = non_empty(opt_str(v, "", "Match")?);
    let remote_link = non_empty(opt_str(v, "", "Link")?);
    let tags = match v.get("Tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str().map(str::to_owned).ok_or_else(|| {
                    (
                        format!("/Tags/{i}"),
                        format!("expected a string, found {}", kind(t)),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err((
                "/Tags".to_owned(),
                format!("expected an array of strings, found {}", kind(other)),
            ));
        }
    };
    Ok(Leak {
        format: Format::V8,
        rule,
        description,
        file,
        line,
        commit,
        date,
        tags,
        secret: secret_field.or(match_field),
        key_id_sources: secret_field.into_iter().chain(match_field).collect(),
        urls: remote_link.into_iter().collect(),
    })
}

fn read_v7(v: &Value) -> Result<Leak<'_>, Reject> {
    let rule = req_str(v, "", "rule")?;
    let line = opt_u64(v, "", "lineNumber")?;
    let file = non_empty(opt_str(v, "", "file")?);
    let commit = non_empty(opt_str(v, "", "commit")?);
    let date = non_empty(opt_str(v, "", "date")?).map(|d| (d, "/date"));
    let offender = non_empty(opt_str(v, "", "offender")?);
    let repo_url = non_empty(opt_str(v, "", "repoURL")?);
    let leak_url = non_empty(opt_str(v, "", "leakURL")?);
    // v7 writes tags as one comma-separated string: "key, AWS".
    let tags = opt_str(v, "", "tags")?
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Leak {
        format: Format::V7,
        rule,
        description: None,
        file,
        line,
        commit,
        date,
        tags,
        secret: offender,
        key_id_sources: offender.into_iter().collect(),
        urls: repo_url.into_iter().chain(leak_url).collect(),
    })
}

/// Builds the finding for one gitleaks record, or says which field is wrong.
fn draft(v: &Value) -> Result<FindingDraft, Reject> {
    let Some(format) = Format::of(v) else {
        return Err((
            String::new(),
            format!(
                "not a gitleaks finding: expected an object with RuleID and Secret (v8) or rule \
                 and offender (v7), found {}",
                if v.is_object() {
                    "an object without them"
                } else {
                    kind(v)
                }
            ),
        ));
    };
    let leak = match format {
        Format::V8 => read_v8(v)?,
        Format::V7 => read_v7(v)?,
    };

    let mut labels = BTreeMap::new();
    labels.insert(
        "gitleaks.format".to_owned(),
        match leak.format {
            Format::V8 => "v8",
            Format::V7 => "v7",
        }
        .to_owned(),
    );
    match leak.secret {
        Some(s) if s != REDACTED_PLACEHOLDER => {
            labels.insert("secret_hash".to_owned(), crate::redact::secret_hash(s));
        }
        Some(_) => {
            labels.insert("secret_redacted".to_owned(), "true".to_owned());
        }
        None => {}
    }
    if let Some(file) = leak.file {
        labels.insert("file".to_owned(), file.to_owned());
    }
    if let Some(line) = leak.line {
        labels.insert("line".to_owned(), line.to_string());
    }
    if let Some(commit) = leak.commit {
        labels.insert("commit".to_owned(), commit.to_owned());
    }
    for tag in &leak.tags {
        labels.insert(format!("tag.{tag}"), "true".to_owned());
    }

    let observed_at = match leak.date {
        Some((date, pointer)) => rfc3339(date, pointer)?,
        None => time_unknown(&mut labels),
    };

    let mut resources = Vec::new();
    if is_aws_rule(leak.rule)
        && let Some(id) = leak
            .key_id_sources
            .iter()
            .find_map(|s| aws_access_key_id(s))
    {
        resources.push(ResourceRef::AwsIamAccessKey {
            account: None,
            user: None,
            access_key_id: id.to_owned(),
        });
    }
    if let Some((owner, repo)) = leak.urls.iter().find_map(|u| github_repo_from_url(u)) {
        resources.push(ResourceRef::GithubRepository {
            owner,
            repo,
            path: leak.file.and_then(repo_path),
            alert_number: None,
        });
    }

    let what = leak.description.unwrap_or(leak.rule);
    let title = match (leak.file, leak.line) {
        (Some(file), Some(line)) => format!("{what} found in {file}:{line}"),
        (Some(file), None) => format!("{what} found in {file}"),
        _ => format!("{what} found"),
    };
    let secret_keys = match leak.format {
        Format::V8 => V8_SECRET_KEYS,
        Format::V7 => V7_SECRET_KEYS,
    };

    Ok(FindingDraft {
        source: "gitleaks",
        rule: leak.rule.to_owned(),
        title,
        severity: Severity::High,
        class: Class::CredentialExposure,
        resources,
        labels,
        fields: without(v, secret_keys),
        observed_at,
    })
}

impl Parser for Gitleaks {
    fn id(&self) -> &'static str {
        "gitleaks"
    }

    fn summary(&self) -> &'static str {
        "gitleaks v8 and v7 JSON reports (array or JSON lines)"
    }

    fn sniff(&self, doc: &Value) -> bool {
        Format::of(doc).is_some()
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
    fn access_key_ids_are_found_only_standing_alone() {
        assert_eq!(
            aws_access_key_id("key=AKIAIOSFODNN7EXAMPLE;"),
            Some("AKIAIOSFODNN7EXAMPLE")
        );
        // A session key id, assembled here so no credential-shaped literal is committed.
        let session_id = format!("{}{}", "ASIA", "Q".repeat(16));
        assert_eq!(aws_access_key_id(&session_id), Some(session_id.as_str()));
        // AWS's documented example secret access key holds no id.
        assert_eq!(
            aws_access_key_id("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            None
        );
        // Part of a longer run: not an id on its own.
        assert_eq!(aws_access_key_id("xAKIAIOSFODNN7EXAMPLE"), None);
        assert_eq!(aws_access_key_id("AKIAIOSFODNN7EXAMPLEx"), None);
        assert_eq!(aws_access_key_id("AKIAiosfodnn7example"), None);
        assert_eq!(aws_access_key_id("REDACTED"), None);
        assert_eq!(
            aws_access_key_id_prefix("AKIAIOSFODNN7EXAMPLEwJalrXUtnFEMI/K7MDENG"),
            Some("AKIAIOSFODNN7EXAMPLE")
        );
        assert_eq!(aws_access_key_id_prefix("AKIA"), None);
    }

    #[test]
    fn github_urls_name_owner_and_repo() {
        let want = Some(("octo".to_owned(), "repo".to_owned()));
        for url in [
            "https://github.com/octo/repo",
            "https://github.com/octo/repo.git",
            "https://github.com/octo/repo/blob/abc/conf/aws.tf#L2",
            "git@github.com:octo/repo.git",
            "ssh://git@github.com/octo/repo",
            "https://user:pass@github.com/octo/repo",
        ] {
            assert_eq!(github_repo_from_url(url), want, "{url}");
        }
        for url in [
            "",
            ".",
            "https://gitlab.com/octo/repo",
            "https://github.com/octo",
            "https://github.example.com/octo/repo",
        ] {
            assert_eq!(github_repo_from_url(url), None, "{url}");
        }
    }
}
