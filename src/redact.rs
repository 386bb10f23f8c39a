//! Keeping secrets out of everything Firebreak writes.
//!
//! [`Redacted<T>`] wraps a secret value so its `Debug`, `Display` and `Serialize` print a mask.
//! [`scrub`] removes secret-looking material from free text (scanner evidence, command lines,
//! error bodies) before it reaches a log, an error, a plan, a notification or the audit trail.
//! An AWS access key *id* (`AKIA…`) is not a secret and is kept: playbooks need it to find the key.

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

/// Patterns of secret material that free text may carry. Index order matters in [`scrub`]:
/// some keep a captured name and separator in front of the mask.
const PATTERNS: [&str; 10] = [
    // 0: PEM private keys, whole block.
    r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END[A-Z ]*PRIVATE KEY-----|$)",
    // 1: AWS secret access key next to a name that says what it is.
    r#"(?i)(aws_?secret_?access_?key|secret_?access_?key|aws_?secret|SecretAccessKey)(["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{40}"#,
    // 2: AWS session tokens.
    r#"(?i)(aws_?session_?token|SessionToken)(["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{100,}"#,
    // 3: GitHub tokens (classic, fine-grained, app, OAuth, refresh).
    r"\b(gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    // 4: Slack tokens.
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",
    // 5: Slack webhook paths.
    r"hooks\.slack\.com/services/[A-Za-z0-9/]+",
    // 6: Bearer / basic credentials in headers.
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}",
    // 7: user:password@ in URLs.
    r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@",
    // 8: Generic `password=…`, `token: …`, `secret=…` assignments.
    r#"(?i)\b(password|passwd|pwd|token|secret|api_?key|apikey|private_?key)(["']?\s*[:=]\s*["']?)[^\s"',;&]{6,}"#,
    // 9: JSON Web Tokens (Kubernetes service-account tokens, OIDC tokens).
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
];

#[allow(clippy::expect_used)] // constant patterns, exercised by the unit tests below
static REGEXES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    PATTERNS
        .iter()
        .map(|p| Regex::new(p).expect("secret pattern compiles"))
        .collect()
});

/// Literals at least one of which every pattern in [`PATTERNS`] requires (ASCII case is
/// ignored). Checked first with one Aho-Corasick scan, far cheaper than the patterns, and nearly
/// all text is clean. When adding a pattern, add its required literal here (the unit tests feed
/// every pattern through the prefilter).
const REQUIRED_LITERALS: &[&str] = &[
    "private key",
    "secret",
    "token",
    "passw",
    "pwd",
    "api_key",
    "apikey",
    "private_key",
    "privatekey",
    "bearer",
    "basic",
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
    "://",
    "eyj",
];

/// The shortest text any pattern can match: anything shorter is clean without a scan.
const SHORTEST_SECRET: usize = 8;

#[allow(clippy::expect_used)] // constant literals, exercised by the unit tests below
static PREFILTER: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
    // A full DFA: one table lookup per byte. With ASCII case folding the automaton cannot use
    // a memchr-style prefilter, and the default (NFA) kind costs several times more per byte
    // on the free text every finding carries; 26 short literals keep the table small.
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(REQUIRED_LITERALS)
        .expect("prefilter builds")
});

/// All patterns in one automaton: one scan tells whether (and which) patterns apply, so clean
/// text — nearly all text — costs a single pass.
#[allow(clippy::expect_used)] // constant patterns, exercised by the unit tests below
static SET: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(PATTERNS).expect("secret patterns compile"));

/// Replaces secret-looking material in `text` with [`MASK`], keeping the names around it so the
/// text still reads (`password=[REDACTED]`). Returns the input unchanged (borrowed) when clean.
pub fn scrub(text: &str) -> Cow<'_, str> {
    if text.len() < SHORTEST_SECRET || !PREFILTER.is_match(text) {
        return Cow::Borrowed(text);
    }
    let hits = SET.matches(text);
    if !hits.matched_any() {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for i in hits.iter() {
        let replaced = REGEXES[i].replace_all(&out, |caps: &regex::Captures<'_>| {
            let group = |n: usize| caps.get(n).map_or("", |m| m.as_str());
            match i {
                // name + separator kept, value masked
                1 | 2 | 8 => format!("{}{}{MASK}", group(1), group(2)),
                6 => format!("{} {MASK}", group(1)),
                7 => format!("{}{MASK}@", group(1)),
                _ => MASK.to_owned(),
            }
        });
        if let Cow::Owned(o) = replaced {
            out = o;
        }
    }
    Cow::Owned(out)
}

/// Scrubs every string inside a JSON value, in place.
pub fn scrub_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = scrub(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(scrub_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(scrub_json),
        _ => {}
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

    #[test]
    fn scrub_masks_aws_secret_but_keeps_key_id() {
        // AWS's documented example key pair.
        let text = "aws_access_key_id=AKIAIOSFODNN7EXAMPLE aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let clean = scrub(text);
        assert!(clean.contains("AKIAIOSFODNN7EXAMPLE"), "{clean}");
        assert!(!clean.contains("wJalrXUtnFEMI"), "{clean}");
        assert!(
            clean.contains("aws_secret_access_key=[REDACTED]"),
            "{clean}"
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
    fn scrub_masks_tokens_keys_and_url_passwords() {
        let cases = [
            "curl -H 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123' x".to_owned(),
            "git clone https://bob:s3cr3tpass@example.com/r.git".to_owned(),
            format!("token {}", fake_github_token()),
            "mysql --password=correcthorse".to_owned(),
            fake_pem("RSA ", "MIIEow"),
        ];
        for case in &cases {
            let clean = scrub(case);
            for secret in [
                "abcdefghijklmnop",
                "s3cr3tpass",
                "ghp_aBcDe",
                "correcthorse",
                "MIIEow",
            ] {
                assert!(!clean.contains(secret), "{case} -> {clean}");
            }
        }
    }

    #[test]
    fn every_pattern_is_reachable_through_the_prefilter() {
        // One sample per pattern, in PATTERNS order; each must pass the prefilter and be masked.
        let pem = fake_pem("", "MIIEvQ");
        let token = fake_github_token();
        let samples = [
            pem.as_str(),
            "SecretAccessKey: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            &format!("SessionToken={}", "A".repeat(120)),
            token.as_str(),
            "xoxb-1234567890-abcdefghij",
            "https://hooks.slack.com/services/T000/B000/XXXX",
            "Authorization: Basic dXNlcjpwYXNzd29yZDEyMzQ1",
            "postgres://admin:hunter2@db:5432/x",
            "API_KEY=abcdef123456",
            "eyJhbGciOiJSUzI1NiIsImtpZCI6IiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
        ];
        assert_eq!(samples.len(), PATTERNS.len());
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
    fn scrub_leaves_clean_text_borrowed() {
        assert!(matches!(
            scrub("sh -c clear; (bash || ash || sh)"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn scrub_json_reaches_nested_strings() {
        let mut v = serde_json::json!({"a": ["password=swordfish1"], "b": {"c": "ok"}});
        scrub_json(&mut v);
        assert_eq!(v["a"][0], "password=[REDACTED]");
        assert_eq!(v["b"]["c"], "ok");
    }

    #[test]
    fn secret_hash_is_stable_and_short() {
        assert_eq!(secret_hash("x"), secret_hash("x"));
        assert_ne!(secret_hash("x"), secret_hash("y"));
        assert_eq!(secret_hash("x").len(), "sha256:".len() + 16);
    }
}
