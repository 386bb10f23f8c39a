//! AWS Security Hub findings in the AWS Security Finding Format (ASFF), in every shape they
//! travel in.
//!
//! Owns the mapping of one ASFF finding onto a canonical [`Finding`](super::Finding): which
//! product made it (its `source`), its native rule id per product, severity, class (the
//! [`CLASS_BY_CONTROL`] and [`CLASS_BY_ASFF_TYPE`] tables, documented in
//! `docs/parsers-securityhub.md`) and typed resources. Accepted shapes:
//! - a bare ASFF finding, or a JSON list of them (Prowler's `-M json-asff` output);
//! - `{"Findings": [...]}`: a `BatchImportFindings` body or a `GetFindings` answer;
//! - the EventBridge events `Security Hub Findings - Imported` and `Security Hub Findings -
//!   Custom Action` (`detail.findings`).
//!
//! Findings that are not (or no longer) a problem — a `PASSED` control, an `ARCHIVED` record, a
//! `RESOLVED`/`SUPPRESSED` workflow — are counted in [`ParseReport::skipped`]. A bad finding
//! inside a list is rejected with its pointer (`/Findings/1/Severity/Label`); its siblings are
//! still parsed. This module never echoes payload values in a rejection.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::access::{join, kind};
use super::guardduty::{class_for_type, severity_for_score};
use super::prowler::class_for_check;
use super::{Class, Document, FindingDraft, ParseReport, Parser, ResourceRef, Severity};

/// AWS Security Hub ASFF findings: bare, listed, `{"Findings": [...]}` or EventBridge envelope.
pub struct SecurityHub;

/// The EventBridge `detail-type`s whose `detail.findings` hold ASFF findings.
pub const ENVELOPE_DETAIL_TYPES: &[&str] = &[
    "Security Hub Findings - Imported",
    "Security Hub Findings - Custom Action",
];

/// The product that produced an ASFF finding, as far as Firebreak tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    /// Amazon GuardDuty.
    GuardDuty,
    /// Amazon Inspector.
    Inspector,
    /// IAM Access Analyzer.
    AccessAnalyzer,
    /// AWS Config.
    Config,
    /// Prowler (its `-M json-asff` output or its Security Hub integration).
    Prowler,
    /// Security Hub's own controls (FSBP, CIS, PCI DSS, …).
    SecurityHub,
    /// Amazon Macie.
    Macie,
    /// Any other product (partner or custom integration).
    Other,
}

impl Product {
    /// The finding `source` for this product.
    #[must_use]
    pub fn source(self) -> &'static str {
        match self {
            Product::GuardDuty => "guardduty",
            Product::Inspector => "inspector",
            Product::AccessAnalyzer => "access-analyzer",
            Product::Config => "config",
            Product::Prowler => "prowler",
            Product::Macie => "macie",
            Product::SecurityHub | Product::Other => "securityhub",
        }
    }
}

/// Product ARN `product/<company>/<name>` name segment, or product name (lowercased) →
/// product. Checked against the ARN first, then the names the finding carries.
pub const PRODUCTS: &[(&str, Product)] = &[
    ("guardduty", Product::GuardDuty),
    ("inspector", Product::Inspector),
    ("access-analyzer", Product::AccessAnalyzer),
    ("iam access analyzer", Product::AccessAnalyzer),
    ("config", Product::Config),
    ("prowler", Product::Prowler),
    ("securityhub", Product::SecurityHub),
    ("security hub", Product::SecurityHub),
    ("macie", Product::Macie),
];

/// Every `source` this parser can put on a finding besides its own id.
const SOURCES: &[&str] = &[
    "guardduty",
    "inspector",
    "access-analyzer",
    "config",
    "prowler",
    "macie",
];

/// Security Hub control id → class, for controls whose class the ASFF `Types` do not say well.
/// Controls not listed fall through to [`CLASS_BY_ASFF_TYPE`].
pub const CLASS_BY_CONTROL: &[(&str, Class)] = &[
    // Block Public Access off (account, bucket), public read/write ACLs or policies.
    ("S3.1", Class::PublicStorage),
    ("S3.2", Class::PublicStorage),
    ("S3.3", Class::PublicStorage),
    ("S3.8", Class::PublicStorage),
    ("S3.19", Class::PublicStorage),
    // Keys not rotated, credentials unused, console users without use: a weakened setting, not a
    // leak. Nothing in these controls says a key was exposed, so there is nothing to contain.
    ("IAM.3", Class::Misconfiguration),
    ("IAM.8", Class::Misconfiguration),
    ("IAM.22", Class::Misconfiguration),
];

/// How a [`CLASS_BY_ASFF_TYPE`] pattern matches one ASFF `Types` entry.
#[derive(Debug, Clone, Copy)]
pub enum AsffTypeMatch {
    /// The type starts with the pattern.
    Prefix(&'static str),
    /// The type contains the pattern, ignoring ASCII case.
    ContainsIgnoreCase(&'static str),
}

impl AsffTypeMatch {
    fn matches(self, t: &str) -> bool {
        match self {
            AsffTypeMatch::Prefix(p) => t.starts_with(p),
            AsffTypeMatch::ContainsIgnoreCase(p) => t
                .as_bytes()
                .windows(p.len())
                .any(|w| w.eq_ignore_ascii_case(p.as_bytes())),
        }
    }
}

/// ASFF `Types` taxonomy → class; the first row matching any of the finding's types wins.
/// Findings matching no row are [`Class::Other`].
pub const CLASS_BY_ASFF_TYPE: &[(AsffTypeMatch, Class)] = &[
    (
        AsffTypeMatch::ContainsIgnoreCase("CryptoCurrency"),
        Class::Cryptomining,
    ),
    (
        AsffTypeMatch::Prefix("TTPs/Credential Access"),
        Class::CredentialExposure,
    ),
    (
        AsffTypeMatch::Prefix("Effects/Data Exposure"),
        Class::PublicStorage,
    ),
    (AsffTypeMatch::Prefix("TTPs/"), Class::RuntimeThreat),
    (
        AsffTypeMatch::Prefix("Unusual Behaviors/"),
        Class::RuntimeThreat,
    ),
    (
        AsffTypeMatch::Prefix("Software and Configuration Checks/Vulnerabilities"),
        Class::Vulnerability,
    ),
    (
        AsffTypeMatch::Prefix("Software and Configuration Checks"),
        Class::Misconfiguration,
    ),
];

/// The class of a finding from its ASFF `Types`, by [`CLASS_BY_ASFF_TYPE`].
#[must_use]
pub fn class_for_asff_types(types: &[&str]) -> Class {
    CLASS_BY_ASFF_TYPE
        .iter()
        .find(|(m, _)| types.iter().any(|t| m.matches(t)))
        .map_or(Class::Other, |&(_, c)| c)
}

/// Security Hub's `Severity.Normalized` (0–100) bands: 0 informational, 1–39 low, 40–69 medium,
/// 70–89 high, 90–100 critical. `None` outside 0–100.
#[must_use]
pub fn severity_for_normalized(n: f64) -> Option<Severity> {
    if !(0.0..=100.0).contains(&n) {
        return None;
    }
    Some(if n < 1.0 {
        Severity::Info
    } else if n < 40.0 {
        Severity::Low
    } else if n < 70.0 {
        Severity::Medium
    } else if n < 90.0 {
        Severity::High
    } else {
        Severity::Critical
    })
}

/// `Severity.Label` → severity.
fn severity_for_label(label: &str) -> Option<Severity> {
    match label {
        "INFORMATIONAL" => Some(Severity::Info),
        "LOW" => Some(Severity::Low),
        "MEDIUM" => Some(Severity::Medium),
        "HIGH" => Some(Severity::High),
        "CRITICAL" => Some(Severity::Critical),
        _ => None,
    }
}

const LABELS_HINT: &str = "one of INFORMATIONAL, LOW, MEDIUM, HIGH, CRITICAL";

/// GuardDuty writes its finding type into ASFF `Types` as `<namespace>/<category>/<type>` with
/// the type's `/` turned into `-` (`TTPs/Command and Control/CryptoCurrency:EC2-BitcoinTool.B!DNS`)
/// and, for a few types, without the threat purpose (`TTPs/Discovery/IAMUser-AnomalousBehavior`).
/// Returns the GuardDuty type (`CryptoCurrency:EC2/BitcoinTool.B!DNS`,
/// `Discovery:IAMUser/AnomalousBehavior`), or `None` when no entry has that shape.
#[must_use]
pub fn guardduty_type_from_asff(types: &[&str]) -> Option<String> {
    fn classifier(t: &str) -> Option<(&str, &str, &str)> {
        let mut parts = t.splitn(3, '/');
        let namespace = parts.next()?;
        let category = parts.next()?;
        let classifier = parts.next().filter(|c| !c.is_empty())?;
        Some((namespace, category, classifier))
    }
    // Resource part `EC2-BitcoinTool.B!DNS` → `EC2/BitcoinTool.B!DNS` (resource types never hold
    // a `-`); left alone when it already has a `/`.
    let restore = |rest: &str| -> String {
        if rest.contains('/') {
            return rest.to_owned();
        }
        match rest.split_once('-') {
            Some((resource, family)) => format!("{resource}/{family}"),
            None => rest.to_owned(),
        }
    };
    if let Some((purpose, rest)) = types
        .iter()
        .filter_map(|t| classifier(t))
        .find_map(|(_, _, c)| c.split_once(':'))
    {
        return Some(format!("{purpose}:{}", restore(rest)));
    }
    // No threat purpose: the TTP category is it, without spaces (`Defense Evasion`).
    types
        .iter()
        .filter_map(|t| classifier(t))
        .find(|(ns, _, _)| *ns == "TTPs")
        .map(|(_, category, c)| format!("{}:{}", category.replace(' ', ""), restore(c)))
}

/// Why a finding was rejected: JSON pointer and reason.
type Reject = (String, String);

/// What one ASFF finding became.
enum Outcome {
    Finding(Box<FindingDraft>),
    Skipped,
}

/// The parts of an ARN (`arn:partition:service:region:account:resource`).
struct Arn<'a> {
    service: &'a str,
    region: &'a str,
    account: &'a str,
    resource: &'a str,
}

fn parse_arn(s: &str) -> Option<Arn<'_>> {
    let mut it = s.splitn(6, ':');
    if it.next()? != "arn" {
        return None;
    }
    let _partition = it.next()?;
    Some(Arn {
        service: it.next()?,
        region: it.next()?,
        account: it.next()?,
        resource: it.next()?,
    })
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// The typed resource an ARN names, for the services Firebreak has a resource type for: IAM
/// users (not `root`, roles or policies), S3 buckets (an object ARN names its bucket), EC2
/// instances and EKS clusters. `account` and `region` fill in what the ARN leaves empty.
#[must_use]
pub(crate) fn resource_from_arn(
    arn: &str,
    account: Option<&str>,
    region: Option<&str>,
) -> Option<ResourceRef> {
    let a = parse_arn(arn)?;
    let account = non_empty(a.account).or(account).map(str::to_owned);
    let region = non_empty(a.region).or(region).map(str::to_owned);
    match a.service {
        "iam" => {
            let path = a.resource.strip_prefix("user/")?;
            let user = path.rsplit('/').next().and_then(non_empty)?;
            Some(ResourceRef::AwsIamUser {
                account,
                user: user.to_owned(),
            })
        }
        "s3" => {
            let bucket = a.resource.split('/').next().and_then(non_empty)?;
            Some(ResourceRef::AwsS3Bucket {
                account,
                region,
                bucket: bucket.to_owned(),
            })
        }
        "ec2" => {
            let id = a.resource.strip_prefix("instance/").and_then(non_empty)?;
            Some(ResourceRef::AwsEc2Instance {
                account,
                region,
                instance_id: id.to_owned(),
            })
        }
        "eks" => {
            let name = a.resource.strip_prefix("cluster/").and_then(non_empty)?;
            Some(eks_cluster(name))
        }
        _ => None,
    }
}

fn eks_cluster(name: &str) -> ResourceRef {
    ResourceRef::Kubernetes {
        cluster: Some(name.to_owned()),
        namespace: None,
        kind: "Cluster".to_owned(),
        name: name.to_owned(),
        container: None,
    }
}

/// A non-empty string at `v[key]`, or `None`.
fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).and_then(non_empty)
}

/// `Details.<type>` of an ASFF resource, when it is an object.
fn details<'a>(r: &'a Value, resource_type: &str) -> Option<&'a Value> {
    r.get("Details")
        .and_then(|d| d.get(resource_type))
        .filter(|d| d.is_object())
}

/// The typed resources of one ASFF `Resources` element. Unknown types give none.
fn resources_of(
    r: &Value,
    at: &str,
    account: Option<&str>,
    finding_region: Option<&str>,
    out: &mut Vec<ResourceRef>,
) -> Result<(), Reject> {
    if !r.is_object() {
        return Err((
            at.to_owned(),
            format!("expected a resource object, found {}", kind(r)),
        ));
    }
    let resource_type = match r.get("Type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err((
                join(at, "Type"),
                format!("expected a string, found {}", kind(other)),
            ));
        }
        None => return Err((join(at, "Type"), "required field is missing".into())),
    };
    let id = s(r, "Id");
    let region = s(r, "Region").or(finding_region);
    let from_arn = || id.and_then(|id| resource_from_arn(id, account, region));
    let owned = |v: Option<&str>| v.map(str::to_owned);
    match resource_type {
        "AwsIamUser" => {
            let user = details(r, "AwsIamUser").and_then(|d| s(d, "UserName"));
            let arn_account = id.and_then(parse_arn).and_then(|a| non_empty(a.account));
            match user {
                Some(user) => out.push(ResourceRef::AwsIamUser {
                    account: owned(arn_account.or(account)),
                    user: user.to_owned(),
                }),
                None => out.extend(from_arn()),
            }
        }
        "AwsIamAccessKey" => {
            let d = details(r, "AwsIamAccessKey");
            let key_id = d
                .and_then(|d| s(d, "AccessKeyId"))
                .or_else(|| id.and_then(|id| id.strip_prefix("AWS::IAM::AccessKey:")))
                .filter(|k| *k != "null" && k.bytes().all(|b| b.is_ascii_alphanumeric()));
            // `UserName` is deprecated in favour of `PrincipalName` + `PrincipalType`.
            let user = d.and_then(|d| s(d, "UserName").or_else(|| s(d, "PrincipalName")));
            let principal_type = d.and_then(|d| s(d, "PrincipalType"));
            if let Some(key_id) = key_id {
                out.push(ResourceRef::AwsIamAccessKey {
                    account: owned(account),
                    user: owned(user),
                    access_key_id: key_id.to_owned(),
                });
            }
            // Only an IAM user is a user to act on; an assumed role's name is a role.
            if let Some(user) = user.filter(|_| principal_type.is_none_or(|t| t == "IAMUser")) {
                out.push(ResourceRef::AwsIamUser {
                    account: owned(account),
                    user: user.to_owned(),
                });
            }
        }
        "AwsS3Bucket" => match details(r, "AwsS3Bucket").and_then(|d| s(d, "Name")) {
            Some(bucket) => out.push(ResourceRef::AwsS3Bucket {
                account: owned(account),
                region: owned(region),
                bucket: bucket.to_owned(),
            }),
            None => out.extend(from_arn().filter(|r| matches!(r, ResourceRef::AwsS3Bucket { .. }))),
        },
        "AwsEc2Instance" => match id.filter(|id| id.starts_with("i-")) {
            Some(instance_id) => out.push(ResourceRef::AwsEc2Instance {
                account: owned(account),
                region: owned(region),
                instance_id: instance_id.to_owned(),
            }),
            None => {
                out.extend(from_arn().filter(|r| matches!(r, ResourceRef::AwsEc2Instance { .. })))
            }
        },
        "AwsEksCluster" => match details(r, "AwsEksCluster").and_then(|d| s(d, "Name")) {
            Some(name) => out.push(eks_cluster(name)),
            None => out.extend(from_arn().filter(|r| matches!(r, ResourceRef::Kubernetes { .. }))),
        },
        // `AwsAccount` is the account itself (already the `account` label); other types (roles,
        // security groups, Lambda, …) carry no typed reference yet: `fields` still has them.
        _ => {}
    }
    Ok(())
}

/// Whether `v` is an ASFF finding: an object with a string `ProductArn` and one of the keys
/// every ASFF finding has. A GuardDuty `GetFindings` finding has `SchemaVersion` but no
/// `ProductArn`, so it is not one.
fn is_asff(v: &Value) -> bool {
    v.get("ProductArn").is_some_and(Value::is_string)
        && (v.get("SchemaVersion").is_some() || v.get("GeneratorId").is_some())
}

/// Whether `v` is a Security Hub EventBridge event carrying findings.
fn is_envelope(v: &Value) -> bool {
    v.get("detail-type")
        .and_then(Value::as_str)
        .is_some_and(|t| ENVELOPE_DETAIL_TYPES.contains(&t))
        || (v.get("source").and_then(Value::as_str) == Some("aws.securityhub")
            && v.get("detail")
                .and_then(|d| d.get("findings"))
                .is_some_and(Value::is_array))
}

/// The `Findings` array of a `BatchImportFindings` body or `GetFindings` answer, with its key.
fn findings_array(v: &Value) -> Option<(&Vec<Value>, &'static str)> {
    ["Findings", "findings"]
        .into_iter()
        .find_map(|k| v.get(k).and_then(Value::as_array).map(|a| (a, k)))
}

/// Which product made the finding: the product ARN's name segment, else the names it carries.
fn product_of(v: &Value, product_arn: &str) -> (Product, String) {
    let lookup = |name: &str| {
        let lower = name.to_ascii_lowercase();
        PRODUCTS.iter().find(|(n, _)| *n == lower).map(|&(_, p)| p)
    };
    let fields = v.get("ProductFields");
    let names = [
        s(v, "ProductName"),
        fields.and_then(|f| s(f, "aws/securityhub/ProductName")),
        fields.and_then(|f| s(f, "ProviderName")),
    ];
    let display = names.iter().flatten().next().copied();
    // `arn:aws:securityhub:<region>::product/<company>/<product>`
    let arn_name = parse_arn(product_arn)
        .and_then(|a| a.resource.strip_prefix("product/"))
        .and_then(|p| p.split('/').nth(1));
    let product = arn_name
        .and_then(lookup)
        .or_else(|| names.iter().flatten().find_map(|n| lookup(n)))
        .unwrap_or(Product::Other);
    let display = display.or(arn_name).unwrap_or("unknown").to_owned();
    (product, display)
}

/// The `Types` strings; a present non-array or non-string element is an error.
fn types_of<'a>(v: &'a Value, base: &str) -> Result<Vec<&'a str>, Reject> {
    match v.get("Types") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str().ok_or_else(|| {
                    (
                        format!("{}/{i}", join(base, "Types")),
                        format!("expected a string, found {}", kind(t)),
                    )
                })
            })
            .collect(),
        Some(other) => Err((
            join(base, "Types"),
            format!("expected an array of strings, found {}", kind(other)),
        )),
    }
}

/// Severity from `Severity.Label`, else `Normalized` (0–100), else `Product` (GuardDuty's
/// 0–10 for GuardDuty findings, 0–100 otherwise).
fn severity_of(v: &Value, base: &str, product: Product) -> Result<Severity, Reject> {
    let at = join(base, "Severity");
    let sev = match v.get("Severity") {
        Some(o @ Value::Object(_)) => o,
        Some(other) => {
            return Err((at, format!("expected an object, found {}", kind(other))));
        }
        None => return Err((at, "required field is missing".into())),
    };
    match sev.get("Label") {
        None | Some(Value::Null) => {}
        Some(Value::String(label)) => {
            return severity_for_label(label).ok_or_else(|| {
                (
                    join(&at, "Label"),
                    format!("unknown severity label; expected {LABELS_HINT}"),
                )
            });
        }
        Some(other) => {
            return Err((
                join(&at, "Label"),
                format!("expected a string ({LABELS_HINT}), found {}", kind(other)),
            ));
        }
    }
    let number = |key: &str| -> Result<Option<f64>, Reject> {
        match sev.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err((
                join(&at, key),
                format!("expected a number, found {}", kind(other)),
            )),
        }
    };
    if let Some(n) = number("Normalized")? {
        return severity_for_normalized(n).ok_or_else(|| {
            (
                join(&at, "Normalized"),
                "expected a number from 0 to 100".into(),
            )
        });
    }
    if let Some(n) = number("Product")? {
        let (mapped, range) = if product == Product::GuardDuty {
            (severity_for_score(n), "0 to 10")
        } else {
            (severity_for_normalized(n), "0 to 100")
        };
        return mapped.ok_or_else(|| {
            (
                join(&at, "Product"),
                format!("expected a number from {range}"),
            )
        });
    }
    Err((
        at,
        "needs Label, Normalized or Product to tell the severity".into(),
    ))
}

/// Whether the finding reports something that is not (or no longer) a problem.
fn is_settled(v: &Value) -> bool {
    let compliance = v.get("Compliance").and_then(|c| s(c, "Status"));
    let workflow = v
        .get("Workflow")
        .and_then(|w| s(w, "Status"))
        .or_else(|| s(v, "WorkflowState"));
    compliance == Some("PASSED")
        || s(v, "RecordState") == Some("ARCHIVED")
        || matches!(workflow, Some("RESOLVED" | "SUPPRESSED"))
}

/// The Security Hub control id: `Compliance.SecurityControlId` (consolidated findings), else
/// `ProductFields.ControlId` (FSBP, PCI), `ProductFields.RuleId` (CIS 1.2), else the last
/// segment of `GeneratorId` (`aws-foundational-security-best-practices/v/1.0.0/IAM.3`,
/// `security-control/IAM.3`).
fn control_id<'a>(v: &'a Value, generator: &'a str) -> &'a str {
    let fields = v.get("ProductFields");
    v.get("Compliance")
        .and_then(|c| s(c, "SecurityControlId"))
        .or_else(|| fields.and_then(|f| s(f, "ControlId")))
        .or_else(|| fields.and_then(|f| s(f, "RuleId")))
        .or_else(|| generator.rsplit('/').next().and_then(non_empty))
        .unwrap_or(generator)
}

/// The standard a control belongs to: `standards/<…>` of `ProductFields.StandardsArn` or
/// `StandardsGuideArn`, e.g. `aws-foundational-security-best-practices/v/1.0.0`.
fn standard_of(v: &Value) -> Option<&str> {
    let fields = v.get("ProductFields")?;
    let arn = s(fields, "StandardsArn").or_else(|| s(fields, "StandardsGuideArn"))?;
    Some(
        arn.split_once(":standards/")
            .or_else(|| arn.split_once(":ruleset/"))
            .map_or(arn, |(_, rest)| rest),
    )
}

/// Builds the finding for one ASFF finding object at pointer `base`.
fn draft(v: &Value, base: &str) -> Result<Outcome, Reject> {
    if !v.is_object() {
        return Err((
            base.to_owned(),
            format!("expected an ASFF finding object, found {}", kind(v)),
        ));
    }
    let product_arn = super::access::req_str(v, base, "ProductArn")?;
    if is_settled(v) {
        return Ok(Outcome::Skipped);
    }
    let generator = super::access::req_str(v, base, "GeneratorId")?;
    let (product, product_name) = product_of(v, product_arn);
    let types = types_of(v, base)?;
    let severity = severity_of(v, base, product)?;

    let (time, time_key) = match ["UpdatedAt", "CreatedAt"]
        .into_iter()
        .find_map(|k| v.get(k).map(|t| (t, k)))
    {
        Some((Value::String(t), key)) => (t.as_str(), key),
        Some((other, key)) => {
            return Err((
                join(base, key),
                format!("expected an RFC 3339 timestamp, found {}", kind(other)),
            ));
        }
        None => {
            return Err((
                join(base, "UpdatedAt"),
                "required field is missing (neither UpdatedAt nor CreatedAt is set)".into(),
            ));
        }
    };
    let observed_at = DateTime::parse_from_rfc3339(time)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            (
                join(base, time_key),
                "not an RFC 3339 timestamp (expected e.g. 2020-11-28T23:11:30.817Z)".to_owned(),
            )
        })?;

    let account = s(v, "AwsAccountId");
    let first_resource_region = v
        .get("Resources")
        .and_then(|r| r.get(0))
        .and_then(|r| s(r, "Region"));
    let region = s(v, "Region")
        .or(first_resource_region)
        .or_else(|| parse_arn(product_arn).and_then(|a| non_empty(a.region)));

    let mut labels = BTreeMap::new();
    let (rule, class) = match product {
        Product::GuardDuty => {
            let gd_type = guardduty_type_from_asff(&types);
            let class = gd_type
                .as_deref()
                .map(class_for_type)
                .filter(|c| *c != Class::Other)
                .unwrap_or_else(|| class_for_asff_types(&types));
            if let Some(t) = &gd_type {
                labels.insert("guardduty.type".to_owned(), t.clone());
            }
            let is_sample = v
                .get("ProductFields")
                .and_then(|f| s(f, "aws/guardduty/service/additionalInfo/sample"))
                == Some("true");
            if is_sample {
                labels.insert("sample".to_owned(), "true".to_owned());
            }
            (gd_type.unwrap_or_else(|| generator.to_owned()), class)
        }
        Product::SecurityHub => {
            let control = control_id(v, generator);
            labels.insert("control".to_owned(), control.to_owned());
            let class = CLASS_BY_CONTROL
                .iter()
                .find(|(id, _)| *id == control)
                .map_or_else(|| class_for_asff_types(&types), |&(_, c)| c);
            (control.to_owned(), class)
        }
        Product::Prowler => {
            let check = generator.strip_prefix("prowler-").unwrap_or(generator);
            (check.to_owned(), class_for_check(check))
        }
        Product::Inspector => {
            // Inspector's GeneratorId names the scanner; the vulnerability id is the rule.
            let vuln = v
                .get("Vulnerabilities")
                .and_then(|vs| vs.get(0))
                .and_then(|vl| s(vl, "Id"));
            (vuln.unwrap_or(generator).to_owned(), Class::Vulnerability)
        }
        Product::AccessAnalyzer | Product::Config | Product::Macie | Product::Other => {
            (generator.to_owned(), class_for_asff_types(&types))
        }
    };

    let mut resources = Vec::new();
    match v.get("Resources") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let at = join(base, "Resources");
            for (i, r) in items.iter().enumerate() {
                resources_of(r, &format!("{at}/{i}"), account, region, &mut resources)?;
            }
        }
        Some(other) => {
            return Err((
                join(base, "Resources"),
                format!("expected an array, found {}", kind(other)),
            ));
        }
    }

    labels.insert("parser".to_owned(), "securityhub".to_owned());
    labels.insert("product".to_owned(), product_name);
    labels.insert("generator".to_owned(), generator.to_owned());
    if let Some(account) = account {
        labels.insert("account".to_owned(), account.to_owned());
    }
    if let Some(region) = region {
        labels.insert("region".to_owned(), region.to_owned());
    }
    if let Some(standard) = standard_of(v) {
        labels.insert("standard".to_owned(), standard.to_owned());
    }
    if let Some(status) = v.get("Compliance").and_then(|c| s(c, "Status")) {
        labels.insert("compliance".to_owned(), status.to_owned());
    }
    if let Some(status) = v
        .get("Workflow")
        .and_then(|w| s(w, "Status"))
        .or_else(|| s(v, "WorkflowState"))
    {
        labels.insert("workflow".to_owned(), status.to_owned());
    }

    Ok(Outcome::Finding(Box::new(FindingDraft {
        source: product.source(),
        title: s(v, "Title").unwrap_or(&rule).to_owned(),
        rule,
        severity,
        class,
        resources,
        labels,
        fields: v.clone(),
        observed_at,
    })))
}

impl SecurityHub {
    fn parse_one(&self, doc: &Document, v: &Value, base: &str, out: &mut ParseReport) {
        match draft(v, base) {
            Ok(Outcome::Finding(d)) => out.findings.push(d.build()),
            Ok(Outcome::Skipped) => out.skipped += 1,
            Err((pointer, reason)) => out.reject(doc, self.id(), &pointer, reason),
        }
    }

    fn parse_list(&self, doc: &Document, items: &[Value], at: &str, out: &mut ParseReport) {
        for (i, item) in items.iter().enumerate() {
            self.parse_one(doc, item, &format!("{at}/{i}"), out);
        }
    }
}

impl Parser for SecurityHub {
    fn id(&self) -> &'static str {
        "securityhub"
    }

    fn summary(&self) -> &'static str {
        "AWS Security Hub ASFF findings (bare, Findings list, EventBridge Imported/Custom Action)"
    }

    fn sniff(&self, doc: &Value) -> bool {
        is_envelope(doc)
            || findings_array(doc).is_some_and(|(items, _)| items.iter().any(is_asff))
            || is_asff(doc)
    }

    fn parse(&self, doc: &mut Document, out: &mut ParseReport) {
        let v = &doc.value;
        if is_envelope(v) {
            match v.get("detail").and_then(|d| d.get("findings")) {
                Some(Value::Array(items)) => self.parse_list(doc, items, "/detail/findings", out),
                Some(other) => out.reject(
                    doc,
                    self.id(),
                    "/detail/findings",
                    format!("expected an array of ASFF findings, found {}", kind(other)),
                ),
                None => out.reject(
                    doc,
                    self.id(),
                    "/detail/findings",
                    "required field is missing",
                ),
            }
        } else if let Some((items, key)) = findings_array(v) {
            self.parse_list(doc, items, &format!("/{key}"), out);
        } else if v.get("ProductArn").is_some() {
            self.parse_one(doc, v, "", out);
        } else {
            out.reject(
                doc,
                self.id(),
                "",
                "not a Security Hub finding: expected an ASFF finding (ProductArn, GeneratorId, \
                 Severity, …), a {\"Findings\": [...]} list or an EventBridge \"Security Hub \
                 Findings - Imported\" event",
            );
        }
    }

    fn sources(&self) -> &'static [&'static str] {
        SOURCES
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn guardduty_types_are_restored_from_asff_types() {
        for (types, want) in [
            (
                vec!["TTPs/Command and Control/CryptoCurrency:EC2-BitcoinTool.B!DNS"],
                Some("CryptoCurrency:EC2/BitcoinTool.B!DNS"),
            ),
            (
                vec!["Unusual Behaviors/User/UnauthorizedAccess:IAMUser-ConsoleLogin"],
                Some("UnauthorizedAccess:IAMUser/ConsoleLogin"),
            ),
            (
                vec!["TTPs/Discovery/IAMUser-AnomalousBehavior"],
                Some("Discovery:IAMUser/AnomalousBehavior"),
            ),
            (
                vec!["TTPs/Defense Evasion/DefenseEvasion:EC2-UnusualDNSResolver"],
                Some("DefenseEvasion:EC2/UnusualDNSResolver"),
            ),
            (vec!["Software and Configuration Checks"], None),
            (vec![], None),
        ] {
            assert_eq!(
                guardduty_type_from_asff(&types).as_deref(),
                want,
                "{types:?}"
            );
        }
    }

    #[test]
    fn asff_types_map_onto_classes() {
        for (t, c) in [
            (
                "Effects/Resource Consumption/CryptoCurrency:EC2-BitcoinTool.B!DNS",
                Class::Cryptomining,
            ),
            (
                "TTPs/Credential Access/CredentialAccess:IAMUser-AnomalousBehavior",
                Class::CredentialExposure,
            ),
            (
                "Effects/Data Exposure/AWS-Foundational",
                Class::PublicStorage,
            ),
            ("TTPs/Discovery/Recon:EC2-Portscan", Class::RuntimeThreat),
            ("Unusual Behaviors/User/X", Class::RuntimeThreat),
            (
                "Software and Configuration Checks/Vulnerabilities/CVE",
                Class::Vulnerability,
            ),
            (
                "Software and Configuration Checks/Industry and Regulatory Standards/CIS",
                Class::Misconfiguration,
            ),
            ("Sensitive Data Identifications/PII", Class::Other),
        ] {
            assert_eq!(class_for_asff_types(&[t]), c, "{t}");
        }
    }

    #[test]
    fn normalized_severity_uses_security_hub_bands() {
        for (n, s) in [
            (0.0, Severity::Info),
            (1.0, Severity::Low),
            (39.0, Severity::Low),
            (40.0, Severity::Medium),
            (69.0, Severity::Medium),
            (70.0, Severity::High),
            (89.0, Severity::High),
            (90.0, Severity::Critical),
            (100.0, Severity::Critical),
        ] {
            assert_eq!(severity_for_normalized(n), Some(s), "{n}");
        }
        assert_eq!(severity_for_normalized(101.0), None);
        assert_eq!(severity_for_normalized(-1.0), None);
    }

    #[test]
    fn arns_become_typed_resources() {
        assert_eq!(
            resource_from_arn("arn:aws:iam::111111111111:user/path/bob", None, None),
            Some(ResourceRef::AwsIamUser {
                account: Some("111111111111".into()),
                user: "bob".into()
            })
        );
        assert_eq!(
            resource_from_arn("arn:aws:iam::111111111111:root", None, None),
            None
        );
        assert_eq!(
            resource_from_arn("arn:aws:iam::111111111111:role/r", None, None),
            None
        );
        assert_eq!(
            resource_from_arn("arn:aws:s3:::example", Some("1"), Some("eu-west-1")),
            Some(ResourceRef::AwsS3Bucket {
                account: Some("1".into()),
                region: Some("eu-west-1".into()),
                bucket: "example".into()
            })
        );
        assert_eq!(resource_from_arn("123456789012", None, None), None);
        assert!(matches!(
            resource_from_arn("arn:aws:eks:us-east-1:1:cluster/prod", None, None),
            Some(ResourceRef::Kubernetes { .. })
        ));
    }
}
