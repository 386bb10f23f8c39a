//! The playbook file format: plain serde types, from which `playbooks/schema.json` is generated.
//!
//! Values that need checking beyond their type (severity conditions, rule patterns, classes,
//! sources) parse through `FromStr` during deserialisation, so a bad value is reported at its
//! own line and column. Fields whose meaning is checked later (action names, CEL, `with:`) keep
//! their position with [`Spanned`].

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::finding::{Class, Severity};

/// One playbook file: one scenario.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Firebreak playbook")]
pub struct PlaybookSpec {
    /// Unique name across the playbook directory (lowercase, digits and `-`).
    #[schemars(with = "String", regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub name: Spanned<String>,
    /// What the playbook does and why.
    #[serde(default)]
    pub description: String,
    /// A disabled playbook is loaded and checked but never matches.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Conditions a finding must meet (all of them).
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Findings to leave alone even when they match. Any entry that applies excludes the finding;
    /// an entry that cannot be evaluated excludes it too (fail closed).
    #[serde(default)]
    pub exclude: Vec<ExcludeSpec>,
    /// Limits on how often and how widely the playbook acts.
    #[serde(default)]
    pub guards: GuardsSpec,
    /// Whether a person must approve before anything is applied.
    #[serde(default)]
    pub approval: ApprovalSpec,
    /// What to do, in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepSpec>,
}

fn yes() -> bool {
    true
}

/// `match:` — every given condition must hold.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Cross-scanner class(es) (any of).
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<Class>>")]
    pub class: Option<Spanned<OneOrMany<ClassName>>>,
    /// Parser id(s) the finding came from (any of).
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub source: Option<Spanned<OneOrMany<SourceName>>>,
    /// How the finding arrived (any of): `http:<token-name>` (the `server.tokens` entry that
    /// posted it), `sqs:<queue-name>` or `cli` (`firebreak run`); exact text, a glob with
    /// `*`/`?` (`http:*`), or `re:` and a regular expression.
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub intake: Option<Spanned<OneOrMany<Pattern>>>,
    /// The scanner's rule or finding type (any of): exact text, a glob with `*`/`?`, or `re:` and
    /// a regular expression.
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub rule: Option<Spanned<OneOrMany<Pattern>>>,
    /// A severity condition: `high` (exactly), `>= high`, `> medium`, `< critical`, `!= info`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub severity: Option<Spanned<Checked<SeverityCond>>>,
    /// At least one resource of the finding must match every attribute given.
    #[serde(default)]
    pub resource: Option<ResourceSelector>,
    /// Labels that must be present and match (any of the patterns per label).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, OneOrManySchema<String>>")]
    pub labels: BTreeMap<String, Spanned<OneOrMany<Pattern>>>,
    /// Fields of the scanner's native record (`fields`), by dotted path or JSON pointer (`/a/b`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, OneOrManySchema<String>>")]
    pub fields: BTreeMap<String, Spanned<OneOrMany<Pattern>>>,
    /// A CEL expression over `finding` that must evaluate to true. An evaluation error (such as
    /// a missing field) means no match.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
}

/// Attributes of a resource; each takes one pattern or a list (any of).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ResourceSelector {
    #[serde(default, rename = "type")]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub kind_of: Option<Spanned<OneOrMany<ResourceType>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub cluster: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub namespace: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub kind: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub name: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub container: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub account: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub user: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub access_key_id: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub region: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub bucket: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub instance_id: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub owner: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub repo: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub path: Option<Spanned<OneOrMany<Pattern>>>,
    #[serde(default, rename = "ref")]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub reference: Option<Spanned<OneOrMany<Pattern>>>,
}

impl ResourceSelector {
    /// The attribute patterns that are set, by attribute name (`type` excluded).
    pub fn attributes(&self) -> Vec<(&'static str, &Spanned<OneOrMany<Pattern>>)> {
        [
            ("cluster", &self.cluster),
            ("namespace", &self.namespace),
            ("kind", &self.kind),
            ("name", &self.name),
            ("container", &self.container),
            ("account", &self.account),
            ("user", &self.user),
            ("access_key_id", &self.access_key_id),
            ("region", &self.region),
            ("bucket", &self.bucket),
            ("instance_id", &self.instance_id),
            ("owner", &self.owner),
            ("repo", &self.repo),
            ("path", &self.path),
            ("ref", &self.reference),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
        .collect()
    }
}

/// One exclusion: every condition given must hold for it to apply.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExcludeSpec {
    /// Resource attributes (e.g. `namespace: [kube-system]`, `account: "123456789012"`).
    #[serde(flatten)]
    pub resource: ResourceSelector,
    /// Rule patterns.
    #[serde(default)]
    #[schemars(with = "Option<OneOrManySchema<String>>")]
    pub rule: Option<Spanned<OneOrMany<Pattern>>>,
    /// Labels.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, OneOrManySchema<String>>")]
    pub labels: BTreeMap<String, Spanned<OneOrMany<Pattern>>>,
    /// A CEL expression over `finding`; an evaluation error excludes (fail closed).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
}

/// `guards:` — limits enforced by the engine, per playbook, over a rolling hour. They are
/// checked atomically in the store, so every replica and `firebreak run` (unless `--no-store`) share them.
#[derive(Debug, Default, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardsSpec {
    /// Blast radius: at most this many distinct targets acted on per rolling hour.
    #[serde(default)]
    pub max_targets_per_hour: Option<u32>,
    /// Rate limit: at most this many executions that act per rolling hour.
    #[serde(default)]
    pub max_runs_per_hour: Option<u32>,
    /// Do not act on the same target again within this time (`30s`, `10m`, `2h`, `1d`).
    #[serde(default)]
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+(s|m|h|d)$"))]
    pub cooldown: Option<DurationSpec>,
    /// What happens to an execution over a limit: `hold` (default) waits for a person
    /// (`firebreak approvals approve|deny`), `skip` drops it. Either way it is audited.
    #[serde(default)]
    pub on_limit: OnLimit,
}

/// What a guard does with an execution over its playbook's limits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// Hold it for approval by a person.
    #[default]
    Hold,
    /// Skip it.
    Skip,
}

/// `approval:` — `none`, or a GitHub pull request that an allowed reviewer must approve.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ApprovalSpec {
    /// Act without asking.
    #[default]
    None,
    /// Open a pull request describing the plan; act only once it is approved.
    Github(Box<GithubApproval>),
}

impl ApprovalSpec {
    /// What must happen before anything is applied, in one line (`None` when nothing must).
    #[must_use]
    pub fn describe(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Github(gh) => Some(format!(
                "{} approval(s) from {} on a pull request in {}, within {}; until then only \
                 planned (break-glass: `firebreak approvals approve`)",
                gh.min.value,
                gh.reviewers.value.join(", "),
                gh.repo.value,
                gh.expires
            )),
        }
    }
}

/// Where and by whom a plan is approved.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubApproval {
    /// `owner/repo` the pull request is opened in.
    #[schemars(with = "String")]
    pub repo: Spanned<String>,
    /// Allowed reviewers: users (`alice`) or teams (`@org/team`).
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub reviewers: Spanned<Vec<String>>,
    /// Approvals needed.
    #[serde(default = "one")]
    #[schemars(with = "u32", range(min = 1))]
    pub min: Spanned<u32>,
    /// Cancel when not approved within this time (`30s`, `10m`, `24h`, `1d`).
    #[serde(default = "day")]
    #[schemars(with = "String", extend("default" = "24h"))]
    pub expires: DurationSpec,
    /// Merging the pull request counts as an approval by whoever merged it (who must be an
    /// allowed reviewer); otherwise a merge without the approvals cancels, like a close.
    #[serde(default)]
    pub merge_counts_as_approval: bool,
}

fn one() -> Spanned<u32> {
    Spanned::new(
        1,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

fn day() -> DurationSpec {
    DurationSpec(86_400)
}

/// One step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The action kind (`firebreak actions list`).
    #[schemars(with = "String")]
    pub action: Spanned<String>,
    /// The action's parameters.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, Value>>")]
    pub with: Option<Spanned<Value>>,
    /// What to do when this step fails: `stop` (default) skips the remaining steps.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Run this step this long after the previous one finished (`30s`, `10m`, `24h`, `1d`),
    /// e.g. delete an old access key after a grace period. The timer is kept in the store and
    /// survives restarts.
    #[serde(default)]
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+(s|m|h|d)$"))]
    pub after: Option<DurationSpec>,
    /// Run this step only for findings this CEL expression holds for (`finding.source ==
    /// "github"`); otherwise it is skipped, which is not a failure. An expression that cannot be
    /// evaluated (a field the finding does not have) skips the step too.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
}

/// What a failed step does to the steps after it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Skip the remaining steps.
    #[default]
    Stop,
    /// Carry on with the next step.
    Continue,
}

/// A duration written as `30s`, `10m`, `2h` or `1d`; stored in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DurationSpec(pub u64);

impl std::fmt::Display for DurationSpec {
    /// The largest whole unit: `4h`, `90m`, `45s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            s if s > 0 && s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s > 0 && s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl FromStr for DurationSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!("invalid duration `{s}`; expected a number and a unit, e.g. 30s, 10m, 2h, 1d")
        };
        let unit = s.chars().last().ok_or_else(bad)?;
        let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        Ok(DurationSpec(n.saturating_mul(mult)))
    }
}

/// A comparison of the finding's severity with a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeverityCond {
    /// The comparison.
    pub op: CmpOp,
    /// The level compared with.
    pub level: Severity,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CmpOp {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
}

impl SeverityCond {
    /// Whether `s` satisfies the condition.
    #[must_use]
    pub fn holds(&self, s: Severity) -> bool {
        match self.op {
            CmpOp::Eq => s == self.level,
            CmpOp::Ne => s != self.level,
            CmpOp::Ge => s >= self.level,
            CmpOp::Gt => s > self.level,
            CmpOp::Le => s <= self.level,
            CmpOp::Lt => s < self.level,
        }
    }
}

impl FromStr for SeverityCond {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (op, rest) = [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("!=", CmpOp::Ne),
            ("==", CmpOp::Eq),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
        ]
        .into_iter()
        .find_map(|(p, op)| t.strip_prefix(p).map(|r| (op, r)))
        .unwrap_or((CmpOp::Eq, t));
        let level = rest.trim().parse::<Severity>().map_err(|e| {
            let (msg, hint) = crate::playbook::split_hint(&e);
            let mut out = format!("{msg}; a severity condition looks like `high` or `>= high`");
            if let Some(h) = hint {
                out.push_str(&format!(" ({h})"));
            }
            out
        })?;
        Ok(SeverityCond { op, level })
    }
}

/// A text pattern: exact text, a glob when it contains `*`, `?` or `[`, or a regular expression
/// after `re:`. `exact:` forces exact matching of text that contains glob characters.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Equal text.
    Exact(String),
    /// A glob or regular expression, compiled.
    Regex {
        /// As written.
        source: String,
        /// Anchored regex.
        regex: regex::Regex,
    },
}

impl Pattern {
    /// Whether `text` matches.
    #[must_use]
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(s) => s == text,
            Pattern::Regex { regex, .. } => regex.is_match(text),
        }
    }
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(exact) = s.strip_prefix("exact:") {
            return Ok(Pattern::Exact(exact.to_owned()));
        }
        if let Some(re) = s.strip_prefix("re:") {
            let regex = regex::RegexBuilder::new(&format!("^(?:{re})$"))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    format!(
                        "invalid regular expression `{re}`: {}",
                        first_line(&e.to_string())
                    )
                })?;
            return Ok(Pattern::Regex {
                source: s.to_owned(),
                regex,
            });
        }
        if s.contains(['*', '?', '[']) {
            let regex = regex::Regex::new(&glob_to_regex(s)?).map_err(|e| {
                format!(
                    "invalid glob `{s}`: {}; prefix with `exact:` to match it literally",
                    first_line(&e.to_string())
                )
            })?;
            return Ok(Pattern::Regex {
                source: s.to_owned(),
                regex,
            });
        }
        Ok(Pattern::Exact(s.to_owned()))
    }
}

/// Translates a glob (`*` any text, `?` one character, `[abc]`/`[!abc]` a class) into an
/// anchored regex. `/` is an ordinary character: rule names such as `CryptoCurrency:EC2/…` are
/// not paths.
fn glob_to_regex(glob: &str) -> Result<String, String> {
    let mut out = String::from("^(?:");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                out.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    out.push('^');
                }
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    if c == '\\' || c == '[' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                if !closed {
                    return Err(format!(
                        "invalid glob `{glob}`: `[` is not closed; prefix with `exact:` to match it literally"
                    ));
                }
                out.push(']');
            }
            other => out.push_str(&regex::escape(&other.to_string())),
        }
    }
    out.push_str(")$");
    Ok(out)
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// A class name (parsed with did-you-mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassName(pub Class);

impl FromStr for ClassName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(ClassName)
    }
}

/// A parser id that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceName(pub String);

impl FromStr for SourceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let known = crate::finding::known_sources();
        if known.contains(&s) {
            return Ok(SourceName(s.to_owned()));
        }
        let mut msg = format!("unknown source `{s}`; expected one of {}", known.join(", "));
        if let Some(m) = crate::error::did_you_mean(s, known.iter().copied()) {
            msg.push_str(&format!(" (did you mean `{m}`?)"));
        }
        Err(msg)
    }
}

/// A resource type name that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType(pub String);

impl FromStr for ResourceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let names = crate::finding::ResourceRef::TYPE_NAMES;
        if names.contains(&s) {
            return Ok(ResourceType(s.to_owned()));
        }
        let mut msg = format!(
            "unknown resource type `{s}`; expected one of {}",
            names.join(", ")
        );
        if let Some(m) = crate::error::did_you_mean(s, names) {
            msg.push_str(&format!(" (did you mean `{m}`?)"));
        }
        Err(msg)
    }
}

/// A value parsed with `FromStr` whose parse error is kept rather than raised, so the loader can
/// report it at the value's position *and* go on checking the rest of the file.
#[derive(Debug, Clone)]
pub struct Checked<T>(pub Result<T, String>);

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ScalarText(s) = ScalarText::deserialize(d)?;
        Ok(Checked(s.parse()))
    }
}

/// One value or a list of values, each parsed with `FromStr` (YAML numbers and booleans are
/// taken as their text, so `account: 123456789012` works). Parse errors are kept per value.
#[derive(Debug, Clone)]
pub struct OneOrMany<T>(pub Vec<Result<T, String>>);

impl<T> OneOrMany<T> {
    /// The values that parsed.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().filter_map(|r| r.as_ref().ok())
    }

    /// Problems, as `(index, message)`; the index is `None` for a single value.
    pub fn problems(&self) -> Vec<(Option<usize>, &str)> {
        let many = self.0.len() > 1;
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (many.then_some(i), e.as_str())))
            .collect()
    }
}

impl<T: Clone> OneOrMany<T> {
    /// The values that parsed, cloned.
    pub fn values(&self) -> Vec<T> {
        self.iter().cloned().collect()
    }
}

/// Schema stand-in for [`OneOrMany`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum OneOrManySchema<T> {
    /// One value.
    One(T),
    /// Several values.
    Many(Vec<T>),
}

struct ScalarText(String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: FromStr<Err = String>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![v.parse()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(ScalarText(s)) = seq.next_element::<ScalarText>()? {
                    out.push(s.parse());
                }
                if out.is_empty() {
                    return Err(de::Error::custom(
                        "the list is empty; give at least one value or remove the key",
                    ));
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let ScalarText(s) = ScalarText::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(DurationSpec);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn severity_conditions() {
        let ge: SeverityCond = ">= high".parse().unwrap();
        assert!(
            ge.holds(Severity::Critical) && ge.holds(Severity::High) && !ge.holds(Severity::Medium)
        );
        let exact: SeverityCond = "medium".parse().unwrap();
        assert!(exact.holds(Severity::Medium) && !exact.holds(Severity::High));
        let lt: SeverityCond = "<critical".parse().unwrap();
        assert!(lt.holds(Severity::High) && !lt.holds(Severity::Critical));
        let ne: SeverityCond = "!= info".parse().unwrap();
        assert!(!ne.holds(Severity::Info) && ne.holds(Severity::Low));
        let gt: SeverityCond = "> low".parse().unwrap();
        assert!(gt.holds(Severity::Medium) && !gt.holds(Severity::Low));
        let le: SeverityCond = "<= low".parse().unwrap();
        assert!(le.holds(Severity::Info) && !le.holds(Severity::Medium));
        assert!(
            ">= hihg"
                .parse::<SeverityCond>()
                .unwrap_err()
                .contains("did you mean `high`")
        );
    }

    #[test]
    fn patterns_exact_glob_regex() {
        let exact: Pattern = "Terminal shell in container".parse().unwrap();
        assert!(exact.is_match("Terminal shell in container"));
        assert!(!exact.is_match("Terminal shell in container 2"));
        let glob: Pattern = "CryptoCurrency:*".parse().unwrap();
        assert!(glob.is_match("CryptoCurrency:EC2/BitcoinTool.B!DNS"));
        assert!(!glob.is_match("Backdoor:EC2/C&CActivity.B!DNS"));
        let re: Pattern = "re:^(Backdoor|Trojan):.*DNS".parse().unwrap();
        assert!(re.is_match("Trojan:EC2/DropPoint!DNS"));
        assert!(!re.is_match("Trojan:EC2/DropPoint"));
        let class: Pattern = "pod-[0-9]?".parse().unwrap();
        assert!(class.is_match("pod-1x") && !class.is_match("pod-xx"));
        let negated: Pattern = "[!k]ube*".parse().unwrap();
        assert!(negated.is_match("cube") && !negated.is_match("kube-system"));
        assert!("[unclosed".parse::<Pattern>().is_err());
        let literal: Pattern = "exact:a*b".parse().unwrap();
        assert!(literal.is_match("a*b") && !literal.is_match("aXb"));
        assert!("re:(".parse::<Pattern>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!("10m".parse::<DurationSpec>().unwrap(), DurationSpec(600));
        assert_eq!("1d".parse::<DurationSpec>().unwrap(), DurationSpec(86_400));
        assert!("10 minutes".parse::<DurationSpec>().is_err());
        assert!("".parse::<DurationSpec>().is_err());
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        for text in ["45s", "90m", "4h", "1d", "36h"] {
            let d: DurationSpec = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(DurationSpec(0).to_string(), "0s");
    }
}
