//! Keeping secrets out of everything Firebreak writes.
//!
//! [`Redacted<T>`] wraps a secret value so its `Debug`, `Display` and `Serialize` print a mask.
//! [`scrub`] removes secret-looking material from free text (scanner evidence, command lines,
//! error bodies, URLs) before it reaches a log, an error, a plan, a notification or the audit
//! trail; [`scrub_json`] does the same for a JSON value and also masks the value of every
//! secret-named key. [`Scrubbed`] displays any error scrubbed, for log lines.
//!
//! What is masked (the value only; names, schemes and hosts are kept so the text still reads):
//! - a value after a *secret name* and `=`, `:`, `:=` or `=>` (`password=…`, `"SecretAccessKey":
//!   "…"`, `{\"token\":\"…\"}`, `Authorization: Bearer …`, `X-Api-Key: …`), as an XML element
//!   (`<SecretAccessKey>…</SecretAccessKey>`), after a command-line flag (`--password …`,
//!   `--aws-secret-access-key=…`, `-token …`) or in `aws configure set aws_secret_access_key …`;
//!   after `Authorization:` only a quoted value or one behind a scheme (`Bearer`, `Basic`,
//!   `Token`, `Digest`, `Negotiate`, `NTLM`) is a secret, as prose says "authorization: mode".
//!   A secret name is one that *ends* with one of [`SECRET_NAME_ENDINGS`], ignoring ASCII case and
//!   `_`/`-`/`.` between words: `client_secret`, `secretAccessKey`, `GITHUB_TOKEN`, `x-api-key`
//!   are; `token_count`, `secretName`, `max_tokens`, `password_policy` are not.
//! - the password of a URL (`https://user:[REDACTED]@host/…`), `-p…` where it is unambiguously a
//!   password (`sshpass -p …`, `mysql -p…` attached), `curl -u user:…`;
//! - tokens recognisable on their own: PEM private keys, GitHub and Slack tokens, Slack webhook
//!   paths, JSON Web Tokens, `Bearer`/`Basic` credentials of 16 characters or more, and a
//!   40-character AWS secret key right after its access key id.
//!
//! What is kept: an AWS access key *id* (`AKIA…`: playbooks need it to find the key); a named
//! value that is `true`, `false`, `null`, `none`, `nil`, `yes`, `no`, `on`, `off` or empty; the
//! working directory in `PWD=/…` / `OLDPWD=/…`; anything not named or shaped like a secret (a bare
//! 40-character string alone is indistinguishable from a hash); text shorter than 8 characters.
//! An unquoted value ends at whitespace, a quote, a backslash, `,`, `;` or `&`; quote a value to
//! keep it whole.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The mask written instead of a secret.
pub const MASK: &str = "[REDACTED]";

/// A secret value. Only [`Redacted::expose`] reveals it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a secret.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself: call only where it is sent to the system that needs it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<T> Serialize for Redacted<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Redacted<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Redacted)
    }
}

impl<T> schemars::JsonSchema for Redacted<T>
where
    T: schemars::JsonSchema,
{
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// How a name ends when it names a secret (see the module docs). Compared ignoring ASCII case;
/// `_` stands for an optional `_`, `-` or `.` between words. An ending needs a literal in
/// [`REQUIRED_LITERALS`] in every spelling (the unit tests check this).
pub const SECRET_NAME_ENDINGS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "secret_key",
    "secret_access_key",
    "secret_string",
    "token",
    "api_key",
    "private_key",
    "authorization",
];

/// Whether `name` (a JSON key, an environment variable, a header, a flag without its dashes)
/// names a secret: it ends with one of [`SECRET_NAME_ENDINGS`].
#[must_use]
pub fn is_secret_name(name: &str) -> bool {
    let name = name.as_bytes();
    // This runs for every key of every finding's fields: first compare the last four letters
    // with those of each ending, in one word. Most names end in four letters, read at once
    // (`| 0x20` lowercases ASCII letters and maps nothing else onto one).
    let tail = match name.last_chunk::<4>() {
        Some(last) if !last.iter().any(|b| matches!(b, b'_' | b'-' | b'.')) => {
            u32::from_be_bytes(*last) | 0x2020_2020
        }
        _ => tail4(name),
    };
    if !ENDING_TAILS
        .iter()
        .any(|&(ending, mask)| tail & mask == ending)
    {
        return false;
    }
    SECRET_NAME_ENDINGS.iter().any(|ending| {
        // Walk both from the end; `_` in the ending matches an optional separator.
        let mut i = name.len();
        for &e in ending.as_bytes().iter().rev() {
            if e == b'_' {
                if i > 0 && matches!(name[i - 1], b'_' | b'-' | b'.') {
                    i -= 1;
                }
            } else if i > 0 && name[i - 1].eq_ignore_ascii_case(&e) {
                i -= 1;
            } else {
                return false;
            }
        }
        true
    })
}

/// The last four letters of `name` (separators `_`, `-`, `.` skipped), lowercased, last in the
/// lowest byte; fewer when the name is shorter.
const fn tail4(name: &[u8]) -> u32 {
    let mut tail = 0u32;
    let (mut i, mut n) = (name.len(), 0);
    while i > 0 && n < 4 {
        i -= 1;
        let b = name[i];
        if !matches!(b, b'_' | b'-' | b'.') {
            tail |= (b.to_ascii_lowercase() as u32) << (8 * n);
            n += 1;
        }
    }
    tail
}

/// The last four letters of each ending and the mask that keeps as many from a name.
const ENDING_TAILS: [(u32, u32); SECRET_NAME_ENDINGS.len()] = {
    let mut out = [(0u32, 0u32); SECRET_NAME_ENDINGS.len()];
    let mut i = 0;
    while i < out.len() {
        let ending = SECRET_NAME_ENDINGS[i].as_bytes();
        let (mut letters, mut j) = (0, 0);
        while j < ending.len() {
            if ending[j] != b'_' {
                letters += 1;
            }
            j += 1;
        }
        let mask = if letters >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * letters)) - 1
        };
        out[i] = (tail4(ending), mask);
        i += 1;
    }
    out
};

/// The endings, but for those in `except`, as a regex alternation (ASCII, case-insensitive).
fn secret_name_regex(except: &[&str]) -> String {
    let endings: Vec<String> = SECRET_NAME_ENDINGS
        .iter()
        .filter(|e| !except.contains(e))
        .map(|e| e.replace('_', "[_.-]?"))
        .collect();
    format!("(?i-u:{})", endings.join("|"))
}

/// Patterns of secret material in free text, in the order [`scrub`] applies them. In each, the
/// group `v` (or `w`) is what is masked (quotes around it are kept); `n`, when present, is the
/// secret's name, and `u` a URL's user name.
fn patterns() -> Vec<String> {
    let name = secret_name_regex(&[]);
    // `authorization` has its own pattern: prose says "set authorization: mode to Webhook".
    let kv_name = secret_name_regex(&["authorization"]);
    // A value: a JSON string (escapes allowed), an escaped JSON string inside a JSON string
    // (`\"…\"`), a single-quoted string, or a bare run.
    let value = r#"(?P<v>"(?:[^"\\\r\n]|\\.)*"|\\"[^"\\\r\n]*\\"|'[^'\r\n]*'|[^\s"'\\,;&]+)"#;
    // Between a name and its value: the name's closing quote, then `: `, `=`, `:=`, `=>`, or
    // `=`/`:=`/`=>` with blanks on both sides (`secret= x` leaves `secret` empty).
    let sep = r#"\\?["']?(?:[ \t]*:[ \t]*|(?::=|=>?)|[ \t]+(?::=|=>?)[ \t]+)"#;
    // The same, for the value of a flag (a bare run does not start with `-`: that reads as the
    // next flag).
    let arg = r#"(?P<v>"(?:[^"\\\r\n]|\\.)*"|'[^'\r\n]*'|[^\s"'\\,;&-][^\s"'\\,;&]*)"#;
    vec![
        // 0: PEM private keys, whole block (an unterminated one up to the end of the text).
        r"(?P<v>-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END[A-Z ]*PRIVATE KEY-----|\z))"
            .to_owned(),
        // 1: the password of a URL (user kept): before the named patterns, so that
        //    `https://x-access-token:…@host/` keeps its host.
        r#"(?i-u:\b[a-z][a-z0-9+.-]*://)(?P<u>[^/\s:@"'<>]*):(?P<v>[^\s/?#"'<>]*)@"#.to_owned(),
        // 2: `name=value`, `name: value`, `"name": "value"`, `Authorization: Bearer value`.
        format!(
            r#"(?P<n>[A-Za-z0-9_.-]*?{kv_name}){sep}(?:(?i-u:bearer|basic|token|digest)[ \t]+)?{value}"#
        ),
        // 3: `Authorization: <scheme> value`, or a quoted value (`"authorization": "…"`); a
        //    bare word after it is prose (`set authorization: mode to Webhook`).
        format!(
            r#"(?P<n>[A-Za-z0-9_.-]*?(?i-u:authorization)){sep}(?:(?i-u:bearer|basic|token|digest|negotiate|ntlm)[ \t]+{value}|(?P<w>"(?:[^"\\\r\n]|\\.)*"|\\"[^"\\\r\n]*\\"|'[^'\r\n]*'))"#
        ),
        // 4: XML elements (AWS query-protocol bodies): `<SecretAccessKey>value</`.
        format!(r"<(?P<n>[A-Za-z0-9_.:-]*?{name})>(?P<v>[^<]+)</"),
        // 5: command-line flags: `--password value`, `--aws-secret-access-key=value`, `-token value`.
        format!(r#"(?:^|[\s"'])(?P<n>--?[A-Za-z0-9_-]*?{name})(?:[ \t]+|=){arg}"#),
        // 6: `aws configure set [--profile p] aws_secret_access_key value`.
        format!(
            r"(?i-u:\baws[ \t]+configure[ \t]+set)[ \t]+(?:--[A-Za-z0-9-]+[ \t]+[^\s-]\S*[ \t]+)*(?P<n>[A-Za-z0-9_.-]*?{name})[ \t]+{arg}"
        ),
        // 7: `sshpass -p value` / `sshpass -pvalue` (its -p always takes the next word).
        format!(r"\bsshpass[ \t]+(?:-[a-oq-zA-Z][ \t]+)*-p[ \t]*{value}"),
        // 8: `mysql … -pvalue` (attached; `-p value` prompts and names a database).
        r#"\b(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n|;&]*?[ \t]-p(?P<v>"[^"\n]*"|'[^'\n]*'|[^\s"'\\]+)"#
            .to_owned(),
        // 9: `curl … -u user:value` / `--user user:value`.
        r#"\bcurl\b[^\n|;&]*?[ \t](?:-u[ \t]*|--user(?:[ \t]+|=))["']?[^\s:"']*:(?P<v>[^\s"'\\]+)"#
            .to_owned(),
        // 10: GitHub tokens (classic, fine-grained, app, OAuth, refresh).
        r"\b(?P<v>gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b".to_owned(),
        // 11: Slack tokens.
        r"\b(?P<v>xox[abposr]-[A-Za-z0-9-]{10,})\b".to_owned(),
        // 12: Slack webhook paths.
        r"hooks\.slack\.com/services/(?P<v>[A-Za-z0-9/]+)".to_owned(),
        // 13: `Bearer …` / `Basic …` credentials without a header name (16+ characters, so prose
        //     such as "a bearer token" is left alone).
        r"(?i-u:\b(?:bearer|basic))[ \t]+(?P<v>[A-Za-z0-9._~+/=-]{16,})".to_owned(),
        // 14: JSON Web Tokens (Kubernetes service-account tokens, OIDC tokens).
        r"\b(?P<v>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})".to_owned(),
        // 15: an AWS secret access key right after its access key id (credentials CSV, `aws
        //     configure list`-style output); the id itself is kept.
        r#"\b(?:AKIA|ASIA)[A-Z0-9]{16}[ \t,;|"':=]+(?P<v>[A-Za-z0-9/+]{40})"#.to_owned(),
    ]
}

#[allow(clippy::expect_used)] // constant patterns, exercised by the unit tests below
static REGEXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    patterns()
        .iter()
        .map(|p| Regex::new(p).expect("secret pattern compiles"))
        .collect()
});

/// Literals at least one of which every pattern in [`patterns`] requires (ASCII case is
/// ignored). Checked first with one scan (see [`PREFILTER`]), far cheaper than the patterns, and
/// nearly all text is clean. When adding a pattern or a name ending, add its required literal
/// here (the unit tests feed every pattern and every ending through the prefilter).
const REQUIRED_LITERALS: &[&str] = &[
    "private key",
    "://",
    // secret name endings, in every separator spelling
    "passw",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "api-key",
    "api.key",
    "apikey",
    "private_key",
    "private-key",
    "private.key",
    "privatekey",
    "authorization",
    // command lines
    "sshpass",
    "mysql",
    "mariadb",
    "curl",
    // self-describing tokens
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxo-",
    "xoxs-",
    "xoxr-",
    "hooks.slack.com",
    "bearer",
    "basic",
    "eyj",
    "akia",
    "asia",
];

/// Text shorter than this is returned without a scan: the shortest named secret worth masking
/// (`pwd=abcd`) is this long, and strings this short are frequent in findings' fields.
const SHORTEST_SECRET: usize = 8;

/// The prefilter: one ASCII-case-insensitive alternation of the literals, run by the regex crate's lazy DFA:
/// on the mostly clean text of Falco events it costs about 40% fewer instructions than an
/// Aho-Corasick automaton over the same literals (measured with callgrind on `bench parse`).
#[allow(clippy::expect_used)] // constant literals, exercised by the unit tests below
static PREFILTER: LazyLock<regex::Regex> = LazyLock::new(|| {
    let alternation: Vec<String> = REQUIRED_LITERALS.iter().map(|l| regex::escape(l)).collect();
    regex::RegexBuilder::new(&format!("(?i-u:{})", alternation.join("|")))
        .build()
        .expect("prefilter builds")
});

/// All patterns in one automaton: one scan tells whether (and which) patterns apply, so text
/// that only passed the prefilter by chance costs a single further pass.
#[allow(clippy::expect_used)] // constant patterns, exercised by the unit tests below
static SET: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(patterns()).expect("secret patterns compile"));

/// Named values that are not secrets whatever their name says: switches and placeholders.
const NOT_SECRETS: &[&str] = &[
    "true", "false", "null", "none", "nil", "yes", "no", "on", "off",
];

/// Whether the value of `name` is kept: a switch or placeholder ([`NOT_SECRETS`]), empty,
/// already masked, or the working directory of a shell (`PWD=/…`).
fn keep_value(name: &str, value: &str) -> bool {
    let name = name.trim_start_matches('-');
    value.is_empty()
        || value.starts_with(MASK)
        || NOT_SECRETS.iter().any(|w| value.eq_ignore_ascii_case(w))
        || ((name.eq_ignore_ascii_case("pwd") || name.eq_ignore_ascii_case("oldpwd"))
            && value.starts_with('/'))
}

/// `value` without the quotes around it, and those quotes.
fn unquote(value: &str) -> (&str, &str) {
    for q in ["\\\"", "\"", "'"] {
        if value.len() >= 2 * q.len() && value.starts_with(q) && value.ends_with(q) {
            return (&value[q.len()..value.len() - q.len()], q);
        }
    }
    (value, "")
}

/// The replacement of one match: the match with its `v` group masked, or unchanged when the
/// value is one [`keep_value`] keeps.
fn mask_match(caps: &regex::Captures<'_>) -> String {
    let Some(whole) = caps.get(0) else {
        return String::new();
    };
    let Some(v) = caps.name("v").or_else(|| caps.name("w")) else {
        return whole.as_str().to_owned();
    };
    let (inner, quote) = unquote(v.as_str());
    let kept = match caps.name("n") {
        Some(name) => keep_value(name.as_str(), inner),
        None => inner.is_empty() || inner.starts_with(MASK),
    };
    if kept {
        return whole.as_str().to_owned();
    }
    let text = whole.as_str();
    let (from, to) = (v.start() - whole.start(), v.end() - whole.start());
    // `https://TOKEN:x-oauth-basic@host`: the user is the secret.
    if let Some(u) = caps.name("u")
        && inner == "x-oauth-basic"
    {
        let (from, to) = (u.start() - whole.start(), u.end() - whole.start());
        return format!("{}{MASK}{}", &text[..from], &text[to..]);
    }
    format!("{}{quote}{MASK}{quote}{}", &text[..from], &text[to..])
}

/// Replaces secret-looking material in `text` with [`MASK`], keeping the names around it so the
/// text still reads (`password=[REDACTED]`). Returns the input unchanged (borrowed) when clean.
/// What is and is not masked: see the module docs.
pub fn scrub(text: &str) -> Cow<'_, str> {
    if text.len() < SHORTEST_SECRET || !PREFILTER.is_match(text) {
        return Cow::Borrowed(text);
    }
    let hits = SET.matches(text);
    if !hits.matched_any() {
        return Cow::Borrowed(text);
    }
    let mut out: Option<String> = None;
    for i in hits.iter() {
        let current = out.as_deref().unwrap_or(text);
        if let Cow::Owned(o) = REGEXES[i].replace_all(current, mask_match)
            && o != current
        {
            out = Some(o);
        }
    }
    out.map_or(Cow::Borrowed(text), Cow::Owned)
}

/// Scrubs every string inside a JSON value, in place, and masks the string value of every
/// secret-named key ([`is_secret_name`]: `"SecretAccessKey"`, `"client_secret"`, `"apiKey"`)
/// and of `{"name": <secret name>, "value": …}` objects (environment variables), whatever its
/// length. Values of other types under such keys (`"automountServiceAccountToken": true`) are
/// kept.
pub fn scrub_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_json),
        Value::Object(map) => {
            // An environment variable (`{name, value}`, `{name, value, valueFrom}`).
            let secret_pair = map.len() <= 3
                && map
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("name"))
                    .and_then(|(_, v)| v.as_str())
                    .is_some_and(is_secret_name);
            for (k, v) in map.iter_mut() {
                let named = is_secret_name(k) || (secret_pair && k.eq_ignore_ascii_case("value"));
                match v {
                    Value::String(s) if named => {
                        if !keep_value(k, s) {
                            MASK.clone_into(s);
                        }
                    }
                    _ => scrub_json(v),
                }
            }
        }
        _ => {}
    }
}

/// Displays an error (or any text) with its secrets scrubbed: for log lines and messages about
/// failures whose text may echo input (SDK, HTTP, database and I/O errors):
/// `tracing::warn!(error = %Scrubbed(&e), "…")`.
pub struct Scrubbed<T>(pub T);

impl<T: fmt::Display> fmt::Display for Scrubbed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        f.write_str(&scrub(&text))
    }
}

/// A stable, non-reversible reference to a secret: `sha256:` and the first 16 hex digits of its
/// SHA-256. Lets two findings about the same leaked secret be linked without storing it.
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..16])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn redacted_never_prints_its_value() {
        let r = Redacted::new("hunter2-secret".to_owned());
        assert_eq!(format!("{r:?} {r}"), "[REDACTED] [REDACTED]");
        assert_eq!(
            serde_json::to_string(&r).ok().as_deref(),
            Some("\"[REDACTED]\"")
        );
        assert_eq!(r.expose(), "hunter2-secret");
    }

    /// AWS's documented example access key id and secret, assembled at run time so no
    /// credential-shaped literal is committed.
    fn example_key_pair() -> (String, String) {
        (
            format!("{}{}", "AKIA", "IOSFODNN7EXAMPLE"),
            format!("{}{}", "wJalrXUtnFEMI/K7MDENG/", "bPxRfiCYEXAMPLEKEY"),
        )
    }

    #[test]
    fn scrub_masks_aws_secret_but_keeps_key_id() {
        let (id, secret) = example_key_pair();
        for text in [
            format!("aws_access_key_id={id} aws_secret_access_key={secret}"),
            // The credentials CSV the console offers, and `aws configure set`.
            format!("User name,Access key ID,Secret access key\nbob,{id},{secret}"),
            format!("aws configure set aws_secret_access_key {secret} --profile prod"),
        ] {
            let clean = scrub(&text);
            assert!(clean.contains(&id) || !text.contains(&id), "{clean}");
            assert!(!clean.contains(&secret[..12]), "{clean}");
        }
        assert_eq!(
            scrub(&format!("aws_secret_access_key={secret}")),
            "aws_secret_access_key=[REDACTED]"
        );
    }

    /// A GitHub-token-shaped fake, assembled at run time so no credential-shaped literal is
    /// committed.
    fn fake_github_token() -> String {
        format!("{}_{}", "ghp", "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789")
    }

    /// A PEM private-key-shaped fake (`kind` e.g. `RSA `), assembled at run time.
    fn fake_pem(kind: &str, body: &str) -> String {
        let label = format!("{kind}{}", "PRIVATE KEY");
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----")
    }

    #[test]
    fn scrub_keeps_names_schemes_and_hosts() {
        let cases = [
            (
                "git clone https://bob:s3cr3tpass@example.com/r.git",
                "git clone https://bob:[REDACTED]@example.com/r.git",
            ),
            (
                "postgres://firebreak:pa@ss@db:5432/ledger",
                "postgres://firebreak:[REDACTED]@db:5432/ledger",
            ),
            (
                "https://x-access-token:abc123@github.com/o/r",
                "https://x-access-token:[REDACTED]@github.com/o/r",
            ),
            (
                "https://0123456789abcdef:x-oauth-basic@github.com/o/r",
                "https://[REDACTED]:x-oauth-basic@github.com/o/r",
            ),
            (
                r#"{"AccessKeyId":"AKID","SecretAccessKey":"a b c d e f"}"#,
                r#"{"AccessKeyId":"AKID","SecretAccessKey":"[REDACTED]"}"#,
            ),
            (
                r#"{\"client_secret\":\"abcdef\"}"#,
                r#"{\"client_secret\":\"[REDACTED]\"}"#,
            ),
            (
                "Authorization: Bearer abc.def",
                "Authorization: Bearer [REDACTED]",
            ),
            (
                "<SessionToken>FQoG/abc</SessionToken>",
                "<SessionToken>[REDACTED]</SessionToken>",
            ),
            (
                "mysql -h db -u root -phunter2 app",
                "mysql -h db -u root -p[REDACTED] app",
            ),
            (
                "sshpass -p hunter2 ssh root@10.0.0.1",
                "sshpass -p [REDACTED] ssh root@10.0.0.1",
            ),
            (
                "curl -u admin:hunter2 https://api",
                "curl -u admin:[REDACTED] https://api",
            ),
            (
                "app --db-password hunter2 --verbose",
                "app --db-password [REDACTED] --verbose",
            ),
            ("GITHUB_TOKEN=abc", "GITHUB_TOKEN=[REDACTED]"),
        ];
        for (text, want) in cases {
            assert_eq!(scrub(text), want, "{text}");
        }
    }

    #[test]
    fn scrub_masks_self_describing_tokens_whole() {
        let token = fake_github_token();
        assert_eq!(scrub(&format!("token {token}")), "token [REDACTED]");
        assert_eq!(scrub(&fake_pem("RSA ", "MIIEow")), MASK);
        let unterminated = format!("key: {}", &fake_pem("", "MIIEow")[..40]);
        assert!(!scrub(&unterminated).contains("MIIE"));
    }

    #[test]
    fn every_pattern_is_reachable_through_the_prefilter() {
        // One sample per pattern, in patterns() order; each must pass the prefilter and be masked.
        let pem = fake_pem("", "MIIEvQ");
        let token = fake_github_token();
        let (id, secret) = example_key_pair();
        let samples = [
            pem,
            "postgres://admin:hunter2@db:5432/x".to_owned(),
            format!("SecretAccessKey: {secret}"),
            "Authorization: Digest username=bob".to_owned(),
            "<Password>hunter2</Password>".to_owned(),
            "run --api-key hunter2".to_owned(),
            "aws configure set aws_session_token FQoGZXIvYXdzE".to_owned(),
            "sshpass -phunter2 ssh host".to_owned(),
            "mariadb -u root -phunter2".to_owned(),
            "curl --user bob:hunter2 http://x".to_owned(),
            token,
            "xoxb-1234567890-abcdefghij".to_owned(),
            "https://hooks.slack.com/services/T000/B000/XXXX".to_owned(),
            "Basic dXNlcjpwYXNzd29yZDEyMzQ1".to_owned(),
            "eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ".to_owned(),
            format!("{id},{secret}"),
        ];
        assert_eq!(samples.len(), patterns().len());
        for (i, sample) in samples.iter().enumerate() {
            assert!(
                PREFILTER.is_match(sample),
                "pattern {i} sample skipped by the prefilter"
            );
            assert!(
                SET.matches(sample).matched(i),
                "pattern {i} does not match its sample"
            );
            assert!(
                scrub(sample).contains(MASK),
                "pattern {i}: {}",
                scrub(sample)
            );
        }
    }

    #[test]
    fn every_name_ending_passes_the_prefilter_in_every_spelling() {
        for ending in SECRET_NAME_ENDINGS {
            for sep in ["", "_", "-", "."] {
                let name = ending.replace('_', sep);
                for name in [name.clone(), name.to_uppercase()] {
                    assert!(is_secret_name(&name), "{name}");
                    // `authorization` takes a scheme first (see patterns()).
                    let value = if *ending == "authorization" {
                        "Bearer hunter2"
                    } else {
                        "hunter2"
                    };
                    let text = format!("{name}={value}");
                    assert!(PREFILTER.is_match(&text), "{text} skipped by the prefilter");
                    assert_eq!(scrub(&text), text.replace("hunter2", MASK));
                }
            }
        }
    }

    #[test]
    fn scrub_leaves_clean_text_borrowed() {
        assert!(matches!(
            scrub("sh -c clear; (bash || ash || sh)"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(scrub("token_count: 5"), Cow::Borrowed(_)));
    }

    #[test]
    fn scrub_json_reaches_nested_strings_and_masks_secret_keys() {
        let mut v = serde_json::json!({
            "a": ["password=swordfish1"],
            "b": {"c": "ok", "secretAccessKey": "x", "client_secret": "y z", "apiKey": "k"},
            "env": [{"name": "DB_PASSWORD", "value": "p"}, {"name": "MODE", "value": "fast"}],
            "automountServiceAccountToken": true,
            "secretName": "db-creds",
            "token_count": 5,
            "PWD": "/home/app",
        });
        scrub_json(&mut v);
        assert_eq!(v["a"][0], "password=[REDACTED]");
        assert_eq!(v["b"]["c"], "ok");
        for key in ["secretAccessKey", "client_secret", "apiKey"] {
            assert_eq!(v["b"][key], MASK, "{key}");
        }
        assert_eq!(v["env"][0]["value"], MASK);
        assert_eq!(v["env"][1]["value"], "fast");
        assert_eq!(v["automountServiceAccountToken"], true);
        assert_eq!(v["secretName"], "db-creds");
        assert_eq!(v["token_count"], 5);
        assert_eq!(v["PWD"], "/home/app");
    }

    #[test]
    fn scrubbed_displays_errors_without_their_secrets() {
        let e = std::io::Error::other("connect postgres://u:hunter2@db/x: refused");
        let shown = Scrubbed(&e).to_string();
        assert_eq!(shown, "connect postgres://u:[REDACTED]@db/x: refused");
    }

    #[test]
    fn secret_hash_is_stable_and_short() {
        assert_eq!(secret_hash("x"), secret_hash("x"));
        assert_ne!(secret_hash("x"), secret_hash("y"));
        assert_eq!(secret_hash("x").len(), "sha256:".len() + 16);
    }

    // ---- property tests: generated secrets in every form ----

    /// A secret name: one of the endings, with an optional prefix word, in one of the
    /// spellings programs use.
    fn secret_name() -> impl Strategy<Value = String> {
        let ending = proptest::sample::select(SECRET_NAME_ENDINGS);
        let prefix = proptest::sample::select(&["", "aws", "client", "db", "github", "x_auth"][..]);
        (ending, prefix, 0..6usize).prop_map(|(ending, prefix, style)| {
            let words: Vec<&str> = prefix
                .split('_')
                .chain(ending.split('_'))
                .filter(|w| !w.is_empty())
                .collect();
            let cap = |w: &str| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            };
            match style {
                0 => words.join("_"),
                1 => words.join("_").to_uppercase(),
                2 => words.join("-"),
                3 => words.join("."),
                4 => words.iter().map(|w| cap(w)).collect(), // PascalCase
                _ => {
                    let mut s = words[0].to_owned();
                    s.extend(words[1..].iter().map(|w| cap(w)));
                    s // camelCase
                }
            }
        })
    }

    /// A secret as it appears unquoted: no whitespace, quote, backslash, `,`, `;` or `&`.
    const BARE: &str = "[A-Za-z0-9][A-Za-z0-9/+=._~!@#$%^*()-]{7,40}";

    /// Ordinary words around a secret, never part of one.
    fn words() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(
                &[
                    "the",
                    "pod",
                    "sh",
                    "-c",
                    "exec",
                    "user=root",
                    "container",
                    "nginx:1.27",
                    "ns=prod",
                    "/bin/bash",
                    "ok",
                    "failed",
                    "(retryable)",
                    "12:01:02",
                    "42",
                ][..],
            ),
            0..4,
        )
        .prop_map(|w| w.join(" "))
    }

    /// Every way a named secret is written: `(template, quoted)`; `{n}` is the name, `{s}` the
    /// secret. A quoted template may hold a secret with spaces and punctuation.
    const NAMED_FORMS: &[(&str, bool)] = &[
        ("{n}={s}", false),
        ("{n}: {s}", false),
        ("{n} = {s}", false),
        ("export {n}={s}", false),
        ("{n}:={s}", false),
        ("?{n}={s}&page=2", false),
        ("--{k}={s}", false),
        ("--{k} {s}", false),
        ("-{k} {s}", false),
        ("aws configure set {n} {s}", false),
        ("aws configure set --profile prod {n} {s}", false),
        ("<{n}>{s}</{n}>", false),
        ("{n}: Bearer {s}", false),
        ("\"{n}\": \"{s}\"", true),
        ("{\"{n}\":\"{s}\",\"a\":1}", true),
        ("'{n}': '{s}'", true),
        ("{n}=\"{s}\"", true),
        ("'{n}' => '{s}'", true),
        ("{\\\"{n}\\\":\\\"{s}\\\"}", true),
        ("--{k} \"{s}\"", true),
    ];

    /// Forms that need no name: `{s}` is the secret.
    const UNNAMED_FORMS: &[&str] = &[
        "Authorization: Bearer {s}",
        "Authorization: Basic {s}",
        "authorization: token {s}",
        "-H 'Bearer {s}'",
        "sshpass -p {s} ssh root@host",
        "sshpass -p{s} scp f host:",
        "mysql -h db -u root -p{s} app",
        "mysqldump -p{s} --all-databases",
        "curl -u bob:{s} https://api.example.com",
        "curl -s --user 'bob:{s}' https://api.example.com",
    ];

    /// Forms for a URL password (RFC 3986 userinfo characters, `@` too: the last `@` ends it).
    const URL_FORMS: &[&str] = &[
        "https://user:{s}@example.com/path",
        "postgres://firebreak:{s}@db:5432/ledger",
        "git clone https://bob:{s}@git.example.com/r.git",
        "\"url\": \"amqp://guest:{s}@mq\"",
    ];

    fn render(template: &str, name: &str, secret: &str) -> String {
        let kebab = name.replace(['_', '.'], "-");
        template
            .replace("{n}", name)
            .replace("{k}", &kebab)
            .replace("{s}", secret)
    }

    fn assert_masked(text: &str, secret: &str) -> Result<(), TestCaseError> {
        let clean = scrub(text);
        prop_assert!(!clean.contains(secret), "{text:?} -> {clean:?}");
        prop_assert!(clean.contains(MASK), "{text:?} -> {clean:?}");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn a_named_secret_never_survives_scrub(
            name in secret_name(),
            bare in BARE,
            phrase in "[A-Za-z0-9][A-Za-z0-9 ,;&:/+=._-]{7,40}",
            form in proptest::sample::select(NAMED_FORMS),
            before in words(),
            after in words(),
        ) {
            let (template, quoted) = form;
            // A bare word after `Authorization:` is prose unless a scheme comes first.
            prop_assume!(
                quoted
                    || template.starts_with('-')
                    || template.contains('<')
                    || template.starts_with("aws")
                    || !name.to_ascii_lowercase().ends_with("authorization")
            );
            let secret = if quoted { phrase.trim_end() } else { bare.as_str() };
            let text = format!("{before} {} {after}", render(template, &name, secret));
            prop_assume!(!render(template, &name, "").contains(secret));
            assert_masked(&text, secret)?;
        }

        #[test]
        fn an_unnamed_secret_never_survives_scrub(
            token in "[A-Za-z0-9._~+/-]{16,64}",
            url_password in "[A-Za-z0-9._~!$*+%@-]{1,30}",
            form in proptest::sample::select(UNNAMED_FORMS),
            url_form in proptest::sample::select(URL_FORMS),
            before in words(),
            after in words(),
        ) {
            assert_masked(&format!("{before} {} {after}", form.replace("{s}", &token)), &token)?;
            let text = format!("{before} {} {after}", url_form.replace("{s}", &url_password));
            let clean = scrub(&text);
            prop_assert!(
                clean.contains(&url_form.replace("{s}", MASK)),
                "{text:?} -> {clean:?}"
            );
        }

        #[test]
        fn a_self_describing_secret_never_survives_scrub(
            body in "[A-Za-z0-9]{36,60}",
            aws_secret in "[A-Za-z0-9/+]{40}",
            id in "(AKIA|ASIA)[A-Z0-9]{16}",
            sep in proptest::sample::select(&[",", " ", "\t", ":", "|", "\",\""][..]),
            before in words(),
        ) {
            let github = format!("{}_{body}", "ghp");
            assert_masked(&format!("{before} {github}"), &github)?;
            let slack = format!("{}-{body}", "xoxb");
            assert_masked(&format!("{before} {slack}"), &slack)?;
            let pem = fake_pem("EC ", &body);
            assert_masked(&format!("{before}\n{pem}\n"), &body)?;
            let jwt = format!("eyJ{}.eyJ{}.{body}", &body[..10], &body[10..20]);
            assert_masked(&format!("{before} {jwt}"), &jwt)?;
            // A secret key right after its id: masked, the id kept.
            let text = format!("{before} {id}{sep}{aws_secret}");
            let clean = scrub(&text);
            prop_assert!(!clean.contains(&aws_secret) && clean.contains(&id), "{clean}");
        }

        #[test]
        fn a_secret_named_json_key_is_masked_whatever_its_value(
            name in secret_name(),
            secret in "[ -~]{1,40}",
        ) {
            prop_assume!(!keep_value(&name, &secret));
            let mut v = serde_json::json!({"outer": [{ name.clone(): secret.clone(), "kept": "ok" }]});
            scrub_json(&mut v);
            prop_assert_eq!(&v["outer"][0][&name], MASK);
            prop_assert_eq!(&v["outer"][0]["kept"], "ok");
            let mut env = serde_json::json!({"name": name, "value": secret});
            scrub_json(&mut env);
            prop_assert_eq!(&env["value"], MASK);
        }

        #[test]
        fn ordinary_text_is_left_unchanged(
            parts in proptest::collection::vec(proptest::sample::select(ORDINARY), 1..8),
        ) {
            let text = parts.join(" ");
            prop_assert_eq!(scrub(&text), text.as_str());
            let mut v = serde_json::json!({"text": text.clone(), "secretName": "db", "token_count": "5"});
            let before = v.clone();
            scrub_json(&mut v);
            prop_assert_eq!(v, before);
        }
    }

    /// Text that looks near a secret and is not one: kept as it is (see the module docs).
    const ORDINARY: &[&str] = &[
        "token_count: 5",
        "max_tokens=4096",
        "secretName: db-creds",
        "secret_ref=app",
        "password_policy: strict",
        "tokenExpirationSeconds: 3600",
        "--secret-name app-creds",
        "--token-ttl 5m",
        "--password-file /run/pw",
        "--authorization-mode=Node,RBAC",
        "--anonymous-auth=false",
        "ssh -p 2222 host",
        "docker run -p 8080:80 nginx",
        "mysql -u root -p app",
        "curl https://example.com/a?b=c",
        "https://example.com:8443/path",
        "ssh://git@github.com/org/repo.git",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "a bearer token",
        "basic authentication",
        "PWD=/home/app",
        "OLDPWD=/",
        "password: false",
        "token: null",
        "secret=",
        "Asia/Tokyo",
        "ASIA",
        "user=root",
        "the secret is rotated",
        "proc.cmdline=cat /etc/shadow",
        "k8s.ns.name=kube-system",
        "evt.type=openat",
        "GetSecretValue",
        "kubernetes.io/service-account-token",
        "set authorization: mode to Webhook",
    ];
}
