//! Typed configuration and where it comes from.
//!
//! Owns the [`Config`] type and [`load`], which layers, lowest first:
//!
//! 1. the embedded defaults ([`DEFAULT_YAML`], `config/default.yaml` in the repository),
//! 2. the `--config FILE`,
//! 3. `FIREBREAK_*` environment variables, with `__` between levels
//!    (`FIREBREAK_ENGINE__DRY_RUN=true`, `FIREBREAK_NOTIFY__TIMEOUT_SECONDS=3`); values are
//!    scalars (`true`/`false`, numbers, otherwise strings); names are lowercased, so
//!    `FIREBREAK_NOTIFY__WEBHOOKS__SECOPS__URL` sets `notify.webhooks.secops.url`,
//! 4. flags, passed in as `(key.path, value)` overrides.
//!
//! Every YAML document is first deserialised strictly on its own, so an unknown key or a wrong
//! type is reported as `file:line:col: key.path: message` with a `hint:`; every environment
//! variable and flag is checked the same way and named in the error. All problems are collected
//! before [`load`] fails. Environment variables without `__` (such as `FIREBREAK_CONFIG`) belong
//! to the CLI and are not configuration keys.
//!
//! This module reads only the file it is given and the environment it is passed; it never
//! touches the process environment itself, and never prints.

mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::Diagnostic;
use crate::redact::Redacted;

pub use yaml::YamlFormat;

/// The defaults, as a commented YAML file embedded in the binary (`firebreak config default`
/// can print it). A unit test keeps it equal to [`Config::default`].
pub const DEFAULT_YAML: &str = include_str!("../../config/default.yaml");

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "FIREBREAK_";

/// The separator between levels in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Firebreak's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where executions, plans and the audit trail are stored.
    pub store: StoreConfig,
    /// How playbooks are run.
    pub engine: EngineConfig,
    /// Logging.
    pub log: LogConfig,
    /// The HTTP service (`firebreak serve`).
    pub server: ServerConfig,
    /// Notification settings.
    pub notify: NotifyConfig,
    /// Where playbooks are loaded from.
    pub playbooks: PlaybooksConfig,
    /// AWS clients (SQS intake now; IAM, S3, Security Hub actions later).
    pub aws: AwsConfig,
    /// Intake sources other than the HTTP route (SQS queues).
    pub ingest: IngestConfig,
    /// Kubernetes clusters the `kubernetes.*` actions act on.
    pub kubernetes: KubernetesConfig,
    /// GitHub: the API the `github.*` actions call, and the webhook secret.
    pub github: GithubConfig,
}

/// `store:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH`, `sqlite::memory:`, or `postgres://USER@HOST/DB` (one database shared by
    /// several replicas).
    pub url: String,
    /// A file whose content (one trailing newline removed) is the password for a
    /// `postgres://` URL that carries none, e.g. a mounted Kubernetes Secret.
    pub password_file: Option<std::path::PathBuf>,
    /// A finding whose fingerprint was stored less than this many seconds ago is counted on the
    /// original instead of being stored and acted on again (0 = no deduplication).
    pub dedup_window_seconds: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://firebreak.db".to_owned(),
            password_file: None,
            dedup_window_seconds: 3600,
        }
    }
}

/// `engine:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Plan only; never apply.
    pub dry_run: bool,
    /// How many findings are processed at once.
    pub concurrency: u32,
    /// Refuse every apply (plans still run) until switched off.
    pub kill_switch: bool,
    /// Seconds a claimed finding or execution stays with one worker; after a crash another
    /// worker (or the restarted process) takes the work over once the lease expires.
    pub lease_seconds: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            dry_run: false,
            concurrency: 8,
            kill_switch: false,
            lease_seconds: 60,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `log:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `firebreak=debug,info`, ….
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// `server:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// Larger request bodies get 413.
    pub max_body_bytes: u64,
    /// Most records (findings plus rejected records) one request may carry; a request with
    /// more gets 413 and nothing of it is stored.
    pub max_records_per_request: usize,
    /// Bearer tokens accepted on `POST /v1/findings/{parser}`, each scoped to the parsers it may
    /// post to (see [`TokenConfig`]). A plain string entry is a token allowed on every parser,
    /// named `token-N` by its position; one comma-separated string
    /// (`FIREBREAK_SERVER__TOKENS=tok1,tok2`) is a list of such entries. Empty: the ingest route
    /// refuses every request with 401.
    #[serde(deserialize_with = "tokens_list")]
    pub tokens: Vec<TokenConfig>,
    /// Ingest jobs (one per request) that may wait for the store writer; when full, requests get
    /// 429 with `Retry-After`.
    pub queue_capacity: usize,
    /// Bytes of parsed findings that may wait for the store writer, all queued requests
    /// together; past it requests get 429 with `Retry-After` (one request larger than this is
    /// still taken when the queue is empty).
    pub queue_bytes: usize,
    /// Most findings written in one store transaction (group commit).
    pub max_batch: usize,
    /// Requests per second accepted per token (a token's own `rate_limit` overrides it); more
    /// get 429 with `Retry-After`. 0 = no limit.
    pub rate_limit_per_token: u32,
    /// Seconds a client has to send a request's headers (also while a kept-alive connection
    /// waits for the next request); then the connection is closed.
    pub header_read_timeout_seconds: u64,
    /// Seconds a request, its body included, may take; then 408.
    pub request_timeout_seconds: u64,
    /// Connections served at once; one more is closed at once.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 1_048_576,
            max_records_per_request: 10_000,
            tokens: Vec::new(),
            queue_capacity: 1024,
            queue_bytes: 64 * 1024 * 1024,
            max_batch: 2000,
            rate_limit_per_token: 0,
            header_read_timeout_seconds: 5,
            request_timeout_seconds: 30,
            max_connections: 512,
        }
    }
}

/// The parser scope of every plain token: all parsers and `auto`.
pub const ANY_PARSER: &str = "*";

/// One ingest token (`server.tokens[]`): who posts with it and what it may post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Names the token wherever it shows: the intake of its findings (`http:<name>`, which
    /// playbooks match with `match.intake`), logs and refusals; never the token itself. Letters,
    /// digits, `.`, `_` and `-`, unique.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))]
    pub name: TokenName,
    /// The token itself (a secret, never printed). Prefer `token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Redacted<String>>,
    /// The environment variable holding the token, read when configuration is loaded (set
    /// this or `token`, not both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The routes this token may post to: parser ids (`/v1/findings/falco`), `auto`
    /// (`/v1/findings/auto`, whose sniffed parser must also be listed, record by record) or
    /// `*` for every parser and `auto`.
    #[schemars(length(min = 1))]
    pub parsers: Vec<ParserScope>,
    /// Requests per second for this token; absent: `server.rate_limit_per_token`. 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

impl TokenConfig {
    /// A plain token at `index` (0-based) of the list: named `token-<index+1>`, allowed on
    /// every parser, with the server-wide rate limit.
    #[must_use]
    pub fn plain(index: usize, token: Redacted<String>) -> Self {
        Self {
            name: TokenName(format!("token-{}", index + 1)),
            token: Some(token),
            token_env: None,
            parsers: vec![ParserScope(ANY_PARSER.to_owned())],
            rate_limit: None,
        }
    }
}

/// A token's name (`server.tokens[].name`): 1–64 letters, digits, `.`, `_`, `-`, starting with
/// a letter or digit, so it is safe in intake names, logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TokenName(pub String);

impl std::str::FromStr for TokenName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "invalid token name `{s}`: use 1-64 letters, digits, `.`, `_` or `-`, starting \
                 with a letter or digit"
            ))
        }
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a token's `parsers`: a parser id, `auto`, or `*` (checked when read).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ParserScope(pub String);

impl std::str::FromStr for ParserScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == ANY_PARSER || s == "auto" || crate::finding::parser(s).is_some() {
            return Ok(Self(s.to_owned()));
        }
        let ids: Vec<&str> = crate::finding::PARSERS.iter().map(|p| p.id()).collect();
        let mut msg = format!(
            "unknown parser `{s}`; expected `*`, `auto` or one of {}",
            ids.join(", ")
        );
        if let Some(m) = crate::error::did_you_mean(s, ids.iter().copied().chain(["auto"])) {
            msg.push_str(&format!(" (did you mean `{m}`?)"));
        }
        Err(msg)
    }
}

impl fmt::Display for ParserScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deserialises a string through `FromStr`, reporting its error as the field's.
macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
deserialize_from_str!(TokenName);
deserialize_from_str!(ParserScope);

/// Reads `server.tokens`: a list whose entries are plain token strings or [`TokenConfig`]
/// mappings, or one comma-separated string of plain tokens (the form an environment variable
/// takes). Blank plain entries are dropped; plain entries are named by their position in the
/// list. Error messages never quote a token.
fn tokens_list<'de, D>(deserializer: D) -> Result<Vec<TokenConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    /// One list entry before it is numbered.
    enum Entry {
        Plain(String),
        Scoped(Box<TokenConfig>),
    }

    impl<'de> Deserialize<'de> for Entry {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct EntryVisitor;
            impl<'de> serde::de::Visitor<'de> for EntryVisitor {
                type Value = Entry;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(
                        "a token string or a mapping with name, token_env (or token), parsers",
                    )
                }
                fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Entry, E> {
                    Ok(Entry::Plain(s.trim().to_owned()))
                }
                // An all-digit token arrives as a number.
                fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Entry, E> {
                    Ok(Entry::Plain(n.to_string()))
                }
                fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Entry, E> {
                    Ok(Entry::Plain(n.to_string()))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    map: A,
                ) -> Result<Entry, A::Error> {
                    TokenConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                        .map(|t| Entry::Scoped(Box::new(t)))
                }
            }
            d.deserialize_any(EntryVisitor)
        }
    }

    struct Tokens;

    fn numbered(entries: Vec<Entry>) -> Vec<TokenConfig> {
        entries
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Plain(t) if t.is_empty() => None,
                Entry::Plain(t) => Some(TokenConfig::plain(i, Redacted::new(t))),
                Entry::Scoped(t) => Some(*t),
            })
            .collect()
    }

    impl Tokens {
        fn split(s: &str) -> Vec<TokenConfig> {
            numbered(
                s.split(',')
                    .map(|t| Entry::Plain(t.trim().to_owned()))
                    .collect(),
            )
        }
    }

    impl<'de> serde::de::Visitor<'de> for Tokens {
        type Value = Vec<TokenConfig>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of tokens or a comma-separated string of tokens")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Self::split(s))
        }

        // An all-digit token read from the environment arrives as a number.
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Self::split(&n.to_string()))
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Self::split(&n.to_string()))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(e) = seq.next_element::<Entry>()? {
                entries.push(e);
            }
            Ok(numbered(entries))
        }
    }

    deserializer.deserialize_any(Tokens)
}

/// Checks `server.tokens` as a whole and reads each `token_env` from `env`: every entry has
/// exactly one of `token` and `token_env`, a non-empty `parsers`, a unique name and a unique
/// token. Messages name entries by position and name, never by their token.
fn resolve_tokens(server: &mut ServerConfig, env: &[(String, String)]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let problem = |i: usize, key: &str, message: String, hint: Option<&str>| {
        let path = if key.is_empty() {
            format!("server.tokens[{i}]")
        } else {
            format!("server.tokens[{i}].{key}")
        };
        Diagnostic::file("<config>", message)
            .path(path)
            .maybe_hint(hint.map(str::to_owned))
    };
    for (i, t) in server.tokens.iter_mut().enumerate() {
        let name = t.name.clone();
        if t.parsers.is_empty() {
            out.push(problem(
                i,
                "parsers",
                format!("token `{name}` may post to no parser"),
                Some("list parser ids (`firebreak parsers list`), `auto`, or `*` for all"),
            ));
        }
        match (&t.token, &t.token_env) {
            (Some(_), Some(_)) => out.push(problem(
                i,
                "token_env",
                format!("token `{name}` sets both token and token_env"),
                Some("keep token_env (the token stays out of the file)"),
            )),
            (None, None) => out.push(problem(
                i,
                "",
                format!("token `{name}` has no token"),
                Some("set token_env to the environment variable holding it"),
            )),
            (Some(tok), None) if tok.expose().trim().is_empty() => out.push(problem(
                i,
                "token",
                format!("token `{name}` is empty"),
                None,
            )),
            (Some(_), None) => {}
            (None, Some(var)) => match env.iter().find(|(k, _)| k == var).map(|(_, v)| v.trim()) {
                Some(v) if !v.is_empty() => t.token = Some(Redacted::new(v.to_owned())),
                Some(_) => out.push(problem(
                    i,
                    "token_env",
                    format!("token `{name}`: environment variable {var} is empty"),
                    None,
                )),
                None => out.push(problem(
                    i,
                    "token_env",
                    format!("token `{name}`: environment variable {var} is not set"),
                    Some("set it in the service's environment (a Kubernetes Secret, …)"),
                )),
            },
        }
    }
    for (i, t) in server.tokens.iter().enumerate() {
        if let Some(j) = server.tokens[..i].iter().position(|o| o.name == t.name) {
            out.push(problem(
                i,
                "name",
                format!(
                    "token name `{}` is already used by server.tokens[{j}]",
                    t.name
                ),
                Some("names tell intakes apart (`http:<name>`): make each unique"),
            ));
        }
        if let Some(tok) = &t.token
            && let Some(j) = server.tokens[..i]
                .iter()
                .position(|o| o.token.as_ref() == Some(tok))
        {
            out.push(problem(
                i,
                "token",
                format!(
                    "token `{}` has the same token as server.tokens[{j}] (`{}`)",
                    t.name, server.tokens[j].name
                ),
                Some("give every sender its own token, so its scope and rate limit are its own"),
            ));
        }
    }
    out
}

/// `notify:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Outbound HTTP timeout, in seconds.
    pub timeout_seconds: u64,
    /// Named webhook endpoints, for `notify.webhook` steps with `endpoint: NAME`.
    pub webhooks: BTreeMap<String, WebhookEndpoint>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 10,
            webhooks: BTreeMap::new(),
        }
    }
}

/// A named webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// The URL (a secret: Slack-style URLs carry credentials). Never printed.
    pub url: Redacted<String>,
}

/// `playbooks:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybooksConfig {
    /// Directory of playbook YAML files.
    pub dir: String,
}

impl Default for PlaybooksConfig {
    fn default() -> Self {
        Self {
            dir: "playbooks".to_owned(),
        }
    }
}

/// `aws:` section: what every AWS SDK client is built with (see `crate::clients::aws`).
/// Credentials are never configured here: they come from the SDK's default chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region for every AWS client; empty: the SDK's default chain (`AWS_REGION`, profile, …).
    pub region: String,
    /// Send every AWS API call here instead of the AWS endpoint (moto in tests, a VPC or
    /// FIPS endpoint); empty: the AWS endpoint for the region.
    pub endpoint_url: String,
    /// A named profile of `~/.aws/config` for the base credentials; empty: the SDK's default
    /// chain (`AWS_PROFILE`, else `default`).
    pub profile: String,
    /// Accounts acted on through a role, by 12-digit account id: an action on a resource of
    /// one of these accounts uses credentials from STS `AssumeRole` (with the base
    /// credentials); a resource of any other account is acted on with the base credentials.
    pub accounts: BTreeMap<String, AwsAccountConfig>,
    /// AWS API requests per second sent with one account's credentials (the base credentials
    /// count as one account, each account of `accounts` as its own); a request over it waits
    /// before it is sent. 0 = no limit. An account's own `rate_limit_per_second` overrides it.
    pub rate_limit_per_second: u32,
    /// Requests an account may send at once after a quiet spell, before the rate applies (0 is
    /// taken as 1).
    pub rate_limit_burst: u32,
}

/// The default of `aws.rate_limit_per_second` (see config/default.yaml for why).
pub const AWS_RATE_LIMIT_PER_SECOND: u32 = 10;

/// The default of `aws.rate_limit_burst`.
pub const AWS_RATE_LIMIT_BURST: u32 = 5;

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: String::new(),
            endpoint_url: String::new(),
            profile: String::new(),
            accounts: BTreeMap::new(),
            rate_limit_per_second: AWS_RATE_LIMIT_PER_SECOND,
            rate_limit_burst: AWS_RATE_LIMIT_BURST,
        }
    }
}

/// One account Firebreak reaches through a role (`aws.accounts.<account id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AwsAccountConfig {
    /// The role to assume, e.g. `arn:aws:iam::210987654321:role/firebreak`.
    pub role_arn: String,
    /// The external id the role's trust policy requires, if it requires one.
    pub external_id: Option<String>,
    /// The role session name (shown in CloudTrail as who acted).
    pub session_name: String,
    /// AWS API requests per second for this account; absent: `aws.rate_limit_per_second`.
    /// 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
}

impl Default for AwsAccountConfig {
    fn default() -> Self {
        Self {
            role_arn: String::new(),
            external_id: None,
            session_name: "firebreak".to_owned(),
            rate_limit_per_second: None,
        }
    }
}

/// `kubernetes:` section: which API server(s) the `kubernetes.*` actions talk to (see
/// `crate::clients::kube`). Credentials are never configured here: they come from the
/// in-cluster service account or the kubeconfig.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// The API server URL of the default cluster, used without credentials (a local proxy such
    /// as `kubectl proxy`, or the emulator in tests). `null`: inferred from the in-cluster
    /// service account, else the kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    pub url: Option<String>,
    /// Further clusters by name; a finding whose Kubernetes resource names one of them
    /// (`cluster`) is acted on there.
    pub clusters: BTreeMap<String, KubeClusterConfig>,
}

/// One named cluster (`kubernetes.clusters.<name>`): an API server URL or a kubeconfig context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KubeClusterConfig {
    /// API server URL, used without credentials (as `kubernetes.url`).
    pub url: Option<String>,
    /// A context of the kubeconfig (used when `url` is not set).
    pub context: Option<String>,
}

/// `github:` section: how the GitHub client authenticates (see `crate::clients::github`).
/// Secrets are never written here, only where to find them: the environment variable (or, for
/// an App's private key, the file) holding each is read when configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// The REST API root: `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server.
    pub base_url: String,
    /// The environment variable holding a token (fine-grained or classic personal access
    /// token) to act as; `null`: no token (use `app`, or GitHub is not set up).
    pub token_env: Option<String>,
    /// Act as a GitHub App installation instead of with a token; `null`: no App.
    pub app: Option<GithubAppConfig>,
    /// The environment variable holding the secret GitHub signs webhook deliveries with
    /// (`X-Hub-Signature-256`); `null`: no webhook secret.
    pub webhook_secret_env: Option<String>,
    /// Timeout of each GitHub API request, in seconds.
    pub timeout_seconds: u64,
    /// How often `serve` reads the reviews and state of every open approval pull request, in
    /// seconds: the fallback for webhook deliveries lost or missed while it was down.
    pub poll_seconds: u64,
    /// The token read from `token_env` (never printed, never serialised).
    #[serde(skip)]
    pub token: Option<Redacted<String>>,
    /// The webhook secret read from `webhook_secret_env` (never printed, never serialised).
    #[serde(skip)]
    pub webhook_secret: Option<Redacted<String>>,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.github.com".to_owned(),
            token_env: None,
            app: None,
            webhook_secret_env: None,
            timeout_seconds: 30,
            poll_seconds: 60,
            token: None,
            webhook_secret: None,
        }
    }
}

/// `github.app`: a GitHub App installation Firebreak acts as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubAppConfig {
    /// The App's id (its settings page, "App ID").
    pub id: u64,
    /// The id of the App's installation on the organisation or account whose repositories
    /// Firebreak changes.
    pub installation_id: u64,
    /// The environment variable holding the App's private key (PEM); set this or
    /// `private_key_file`.
    #[serde(default)]
    pub private_key_env: Option<String>,
    /// A file holding the App's private key (PEM), e.g. a mounted Kubernetes Secret; read by
    /// the GitHub client when it is built.
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// The key read from `private_key_env` (never printed, never serialised).
    #[serde(skip)]
    pub private_key: Option<Redacted<String>>,
}

/// Checks `github:` and reads the secrets it names from `env`: a token or an App (not both), an
/// App with its ids and one source of its key, each named variable set and not empty, and a
/// base URL that is an http(s) URL. Messages name keys and variables, never values.
/// `store.password_file` only with a `postgres://` URL that holds no password of its own.
fn check_store(store: &StoreConfig) -> Option<Diagnostic> {
    store.password_file.as_ref()?;
    let url = store.url.as_str();
    let problem = |message: &str, hint: &str| {
        Some(
            Diagnostic::file("<config>", message.to_owned())
                .path("store.password_file")
                .hint(hint.to_owned()),
        )
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        problem(
            "store.password_file is set but store.url is not a postgres:// URL",
            "remove store.password_file (only PostgreSQL takes a password)",
        )
    } else if crate::store::url_has_password(url) {
        problem(
            "store.url already holds a password and store.password_file is set: which one is meant?",
            "keep one: remove the password from store.url, or remove store.password_file",
        )
    } else {
        None
    }
}

fn resolve_github(github: &mut GithubConfig, env: &[(String, String)]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let problem = |key: &str, message: String, hint: Option<&str>| {
        Diagnostic::file("<config>", message)
            .path(format!("github.{key}"))
            .maybe_hint(hint.map(str::to_owned))
    };
    let read = |key: &str, var: &str, out: &mut Vec<Diagnostic>| -> Option<Redacted<String>> {
        match env.iter().find(|(k, _)| k == var).map(|(_, v)| v.trim()) {
            Some(v) if !v.is_empty() => Some(Redacted::new(v.to_owned())),
            Some(_) => {
                out.push(problem(
                    key,
                    format!("environment variable {var} is empty"),
                    None,
                ));
                None
            }
            None => {
                out.push(problem(
                    key,
                    format!("environment variable {var} is not set"),
                    Some("set it in the service's environment (a Kubernetes Secret, …)"),
                ));
                None
            }
        }
    };
    let url_ok =
        github.base_url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
    if !url_ok {
        out.push(problem(
            "base_url",
            "not an http(s) URL".to_owned(),
            Some("https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server"),
        ));
    }
    if github.token_env.is_some() && github.app.is_some() {
        out.push(problem(
            "token_env",
            "both token_env and app are set".to_owned(),
            Some("keep one: an App installation (recommended) or a token"),
        ));
    }
    if let Some(var) = github.token_env.clone() {
        github.token = read("token_env", &var, &mut out);
    }
    if let Some(var) = github.webhook_secret_env.clone() {
        github.webhook_secret = read("webhook_secret_env", &var, &mut out);
    }
    if let Some(app) = &mut github.app {
        if app.id == 0 {
            out.push(problem("app.id", "the App id is missing".to_owned(), None));
        }
        if app.installation_id == 0 {
            out.push(problem(
                "app.installation_id",
                "the installation id is missing".to_owned(),
                Some("it ends the URL of the installation's settings page"),
            ));
        }
        match (app.private_key_env.clone(), &app.private_key_file) {
            (Some(_), Some(_)) => out.push(problem(
                "app.private_key_env",
                "both private_key_env and private_key_file are set".to_owned(),
                Some("keep one"),
            )),
            (None, None) => out.push(problem(
                "app",
                "the App has no private key".to_owned(),
                Some("set private_key_env or private_key_file"),
            )),
            (Some(var), None) => app.private_key = read("app.private_key_env", &var, &mut out),
            (None, Some(_)) => {}
        }
    }
    out
}

/// `ingest:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// SQS queues to poll (EventBridge → SQS carries GuardDuty and Security Hub findings).
    pub sqs: Vec<SqsQueueConfig>,
}

/// One SQS queue polled by `firebreak serve` (`ingest.sqs[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SqsQueueConfig {
    /// The queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`). Required.
    pub queue_url: String,
    /// `auto` (sniff each message body) or a parser id (`firebreak parsers list`).
    pub parser: String,
    /// Long-poll wait of each `ReceiveMessage`, 0–20 seconds.
    pub wait_seconds: u32,
    /// Messages per `ReceiveMessage`, 1–10.
    pub max_messages: u32,
    /// Seconds a received message stays hidden from other consumers; extended while its batch
    /// is being recorded, so it only needs to cover one extension period (1–43200).
    pub visibility_timeout_seconds: u32,
    /// Seconds a poison message (every record rejected) is hidden after each receive, doubled
    /// per receive (capped at one hour), so it never loops hot.
    pub poison_retry_seconds: u32,
    /// Receives after which a poison message is deleted (after its rejection was recorded) when
    /// the queue has no redrive policy; with one, the queue moves it to its dead-letter queue.
    pub max_receives: u32,
}

impl Default for SqsQueueConfig {
    fn default() -> Self {
        Self {
            queue_url: String::new(),
            parser: "auto".to_owned(),
            wait_seconds: 20,
            max_messages: 10,
            visibility_timeout_seconds: 60,
            poison_retry_seconds: 60,
            max_receives: 5,
        }
    }
}

/// Why configuration could not be loaded: every problem found, each with where it came from
/// (the file, `<env>` or `<flag>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl From<Diagnostic> for ConfigError {
    fn from(d: Diagnostic) -> Self {
        Self {
            diagnostics: vec![d],
        }
    }
}

/// The name diagnostics use for the embedded defaults.
const EMBEDDED: &str = "<embedded default.yaml>";
/// The name diagnostics use for environment variables.
const ENV: &str = "<env>";
/// The name diagnostics use for flags.
const FLAG: &str = "<flag>";

/// Loads configuration: embedded defaults < `file` < `FIREBREAK_*` variables in `env` <
/// `overrides` (flags, as `("engine.dry_run", "true")`).
///
/// `env` is the environment to read (the CLI passes `std::env::vars().collect()`); variables
/// without the `FIREBREAK_` prefix, or without `__`, are ignored as configuration keys. The
/// `token_env` of each `server.tokens` entry is also read from `env`, here.
///
/// # Errors
/// Every problem found: an unreadable file, YAML syntax, unknown keys and wrong types in the
/// file, the environment or the flags; then `server.tokens` entries without a usable token,
/// without parsers, or with a name or token another entry has.
pub fn load(
    file: Option<&Path>,
    env: &[(String, String)],
    overrides: &[(&str, String)],
) -> Result<Config, ConfigError> {
    let mut diagnostics = Vec::new();
    let mut builder = config::Config::builder();
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();

    // 1. Embedded defaults (checked too, so a broken build fails loudly rather than silently).
    if let Err(d) = yaml::check_file::<Config>(Path::new(EMBEDDED), DEFAULT_YAML) {
        diagnostics.push(with_type_hint(*d, &defaults));
    }
    builder = builder.add_source(config::File::from_str(DEFAULT_YAML, YamlFormat));

    // 2. The file.
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Err(d) = yaml::check_file::<Config>(path, &text) {
                    diagnostics.push(with_type_hint(*d, &defaults));
                }
                builder = builder.add_source(config::File::from_str(&text, YamlFormat));
            }
            Err(e) => diagnostics.push(
                Diagnostic::file(path, format!("cannot read the configuration file: {e}"))
                    .hint("check the path given to --config"),
            ),
        }
    }

    // 3. The environment.
    let mut env_map = config::Map::new();
    for (name, value) in env {
        match env_key(name, &defaults) {
            EnvKey::NotOurs => {}
            EnvKey::MissingSeparator(section) => diagnostics.push(
                Diagnostic::file(
                    ENV,
                    format!("{name}: not a configuration key (levels are separated by `__`)"),
                )
                .hint(format!(
                    "write {ENV_PREFIX}{}{ENV_SEPARATOR}{}",
                    section.to_ascii_uppercase(),
                    name.get(ENV_PREFIX.len() + section.len() + 1..)
                        .unwrap_or_default()
                        .to_ascii_uppercase()
                )),
            ),
            EnvKey::Key(key) => {
                match check_key(&key, scalar(value)) {
                    Ok(()) => {
                        env_map.insert(key.join(ENV_SEPARATOR), value.clone());
                    }
                    // The value is not repeated: it may be a secret (a webhook URL).
                    Err((path, message, hint)) => diagnostics.push(with_type_hint(
                        Diagnostic::file(ENV, format!("{name}: {message}"))
                            .path(path)
                            .maybe_hint(hint),
                        &defaults,
                    )),
                }
            }
        }
    }
    if !env_map.is_empty() {
        builder = builder.add_source(
            config::Environment::default()
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(Some(env_map)),
        );
    }

    // 4. Flags.
    for (key, value) in overrides {
        let segments: Vec<String> = key.split('.').map(str::to_owned).collect();
        if let Err((path, message, hint)) = check_key(&segments, scalar(value)) {
            diagnostics.push(with_type_hint(
                Diagnostic::file(FLAG, message).path(path).maybe_hint(hint),
                &defaults,
            ));
            continue;
        }
        match builder.set_override(*key, value.clone()) {
            Ok(b) => builder = b,
            Err(e) => {
                diagnostics.push(Diagnostic::file(FLAG, format!("{key}: {e}")).path(*key));
                return Err(ConfigError { diagnostics });
            }
        }
    }

    if !diagnostics.is_empty() {
        return Err(ConfigError { diagnostics });
    }

    let built = builder
        .build()
        .map_err(|e| Diagnostic::file("<config>", e.to_string()))?;
    let mut cfg = serde_path_to_error::deserialize::<_, Config>(built).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::from(Diagnostic::file("<config>", e.into_inner().to_string()).path(path))
    })?;
    let mut diagnostics = resolve_tokens(&mut cfg.server, env);
    diagnostics.extend(resolve_github(&mut cfg.github, env));
    diagnostics.extend(check_store(&cfg.store));
    if diagnostics.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError { diagnostics })
    }
}

/// Adds a hint naming the expected kind of value when a diagnostic has none and its path is a
/// known setting, e.g. "expected a whole number >= 0 (default 8)".
fn with_type_hint(d: Diagnostic, defaults: &serde_json::Value) -> Diagnostic {
    if d.hint.is_some() || d.path.is_empty() {
        return d;
    }
    let hint = match d.path.as_str() {
        "log.format" => Some("expected `pretty` or `json`".to_owned()),
        path => path
            .split('.')
            .try_fold(defaults, |v, k| v.get(k))
            .and_then(|v| match v {
                serde_json::Value::Bool(b) => Some(format!("expected true or false (default {b})")),
                serde_json::Value::Number(n) => {
                    Some(format!("expected a whole number >= 0 (default {n})"))
                }
                serde_json::Value::String(s) => Some(format!("expected a string (default `{s}`)")),
                _ => None,
            }),
    };
    d.maybe_hint(hint)
}

/// What an environment variable name means to configuration.
enum EnvKey {
    /// Not a configuration variable (no prefix, or a CLI variable such as `FIREBREAK_CONFIG`).
    NotOurs,
    /// Looks like `FIREBREAK_ENGINE_DRY_RUN`: a section name with `_` where `__` belongs.
    MissingSeparator(&'static str),
    /// A key path, lowercased.
    Key(Vec<String>),
}

/// The section names, for recognising `FIREBREAK_<SECTION>_…` typos.
const SECTIONS: [&str; 10] = [
    "store",
    "engine",
    "log",
    "server",
    "notify",
    "playbooks",
    "aws",
    "ingest",
    "kubernetes",
    "github",
];

fn env_key(name: &str, defaults: &serde_json::Value) -> EnvKey {
    let Some(rest) = name
        .get(..ENV_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
        .and_then(|_| name.get(ENV_PREFIX.len()..))
    else {
        return EnvKey::NotOurs;
    };
    let rest = rest.to_ascii_lowercase();
    if !rest.contains(ENV_SEPARATOR) {
        // Only a real `section_key` is a likely typo; other names belong to the CLI.
        return SECTIONS
            .into_iter()
            .find(|s| {
                rest.strip_prefix(s)
                    .and_then(|r| r.strip_prefix('_'))
                    .is_some_and(|key| defaults[*s].get(key).is_some())
            })
            .map_or(EnvKey::NotOurs, EnvKey::MissingSeparator);
    }
    EnvKey::Key(rest.split(ENV_SEPARATOR).map(str::to_owned).collect())
}

/// A raw environment or flag value as the scalar it spells, the way the `config` crate's
/// `try_parsing` reads it: `true`/`false`, an integer, a float, otherwise a string.
fn scalar(raw: &str) -> config::ValueKind {
    if let Ok(b) = raw.to_lowercase().parse::<bool>() {
        config::ValueKind::Boolean(b)
    } else if let Ok(i) = raw.parse::<i64>() {
        config::ValueKind::I64(i)
    } else if let Ok(f) = raw.parse::<f64>() {
        config::ValueKind::Float(f)
    } else {
        config::ValueKind::String(raw.to_owned())
    }
}

/// Checks that one `key.path = value` fits [`Config`], with the `config` crate's own coercions.
/// On failure: the key path, the message, and a hint.
fn check_key(
    key: &[String],
    value: config::ValueKind,
) -> Result<(), (String, String, Option<String>)> {
    if key.iter().any(String::is_empty) {
        return Err((
            key.join("."),
            "empty key segment".to_owned(),
            Some("separate levels with exactly one `__` (environment) or `.` (flags)".to_owned()),
        ));
    }
    let mut v = config::Value::new(None, value);
    for segment in key.iter().rev() {
        let mut table = config::Map::new();
        table.insert(segment.clone(), v);
        v = config::Value::new(None, config::ValueKind::Table(table));
    }
    match serde_path_to_error::deserialize::<_, Config>(v) {
        Ok(_) => Ok(()),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { key.join(".") } else { path };
            let message = yaml::strip_key_suffix(&e.into_inner().to_string()).to_owned();
            let hint = yaml::unknown_field_hint(&message);
            Err((path, message, hint))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_equals_config_default() {
        let parsed: Config = serde_saphyr::from_str(DEFAULT_YAML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn embedded_default_mentions_every_key() {
        let v = serde_json::to_value(Config::default()).unwrap();
        for (section, keys) in v.as_object().unwrap() {
            assert!(
                DEFAULT_YAML.contains(&format!("{section}:")),
                "default.yaml lacks section {section}"
            );
            for key in keys.as_object().unwrap().keys() {
                assert!(
                    DEFAULT_YAML.contains(&format!("  {key}:")),
                    "default.yaml lacks {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn env_names_map_to_key_paths() {
        let d = serde_json::to_value(Config::default()).unwrap();
        assert!(matches!(env_key("PATH", &d), EnvKey::NotOurs));
        assert!(matches!(
            env_key("FIREBREAK_CONFIG_FILE", &d),
            EnvKey::NotOurs
        ));
        assert!(matches!(
            env_key("FIREBREAK_LOG_COLOR", &d),
            EnvKey::NotOurs
        ));
        assert!(matches!(
            env_key("FIREBREAK_ENGINE_DRY_RUN", &d),
            EnvKey::MissingSeparator("engine")
        ));
        match env_key("FIREBREAK_ENGINE__DRY_RUN", &d) {
            EnvKey::Key(k) => assert_eq!(k, ["engine", "dry_run"]),
            _ => panic!("expected a key"),
        }
    }

    #[test]
    fn scalars_parse_like_the_config_crate() {
        assert!(matches!(scalar("TRUE"), config::ValueKind::Boolean(true)));
        assert!(matches!(scalar("3"), config::ValueKind::I64(3)));
        assert!(matches!(scalar("x"), config::ValueKind::String(_)));
    }

    fn secrets(cfg: &Config) -> Vec<(&str, &str)> {
        cfg.server
            .tokens
            .iter()
            .map(|t| {
                (
                    t.name.0.as_str(),
                    t.token.as_ref().map_or("", |s| s.expose().as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn server_tokens_come_from_a_list_or_a_comma_separated_env_value() {
        let env = vec![(
            "FIREBREAK_SERVER__TOKENS".to_owned(),
            "alpha-token, beta-token".to_owned(),
        )];
        let cfg = load(None, &env, &[]).unwrap();
        assert_eq!(
            secrets(&cfg),
            [("token-1", "alpha-token"), ("token-2", "beta-token")]
        );
        assert!(
            cfg.server
                .tokens
                .iter()
                .all(|t| t.parsers == [ParserScope(ANY_PARSER.into())] && t.rate_limit.is_none())
        );
        assert!(!format!("{cfg:?}").contains("alpha-token"));

        let parsed: Config =
            serde_saphyr::from_str("server:\n  tokens: [\"one\", \"\", \"two\"]\n").unwrap();
        // A blank entry is dropped; names follow positions in the list as written.
        assert_eq!(secrets(&parsed), [("token-1", "one"), ("token-3", "two")]);
    }

    #[test]
    fn scoped_token_entries_mix_with_plain_ones() {
        let parsed: Config = serde_saphyr::from_str(
            "server:\n  tokens:\n    - plain-one\n    - name: falcosidekick\n      token: s3cret\n      parsers: [falco, auto]\n      rate_limit: 200\n",
        )
        .unwrap();
        let t = &parsed.server.tokens;
        assert_eq!(
            secrets(&parsed),
            [("token-1", "plain-one"), ("falcosidekick", "s3cret")]
        );
        assert_eq!(
            t[1].parsers,
            [ParserScope("falco".into()), ParserScope("auto".into())]
        );
        assert_eq!(t[1].rate_limit, Some(200));
        assert!(!serde_json::to_string(&parsed).unwrap().contains("s3cret"));
    }

    #[test]
    fn error_display_is_one_diagnostic_per_line() {
        let e = ConfigError {
            diagnostics: vec![
                Diagnostic::file("<env>", "a"),
                Diagnostic::file("<flag>", "b"),
            ],
        };
        assert_eq!(e.to_string(), "<env>: a\n<flag>: b");
    }
}
