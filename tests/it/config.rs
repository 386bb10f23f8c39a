//! Configuration layering and its diagnostics: defaults < file < environment < flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;

use firebreak::config::{Config, ConfigError, LogFormat, load};

fn file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    f.write_all(yaml.as_bytes()).expect("write");
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_err(file: Option<&Path>, env: &[(String, String)]) -> ConfigError {
    load(file, env, &[]).expect_err("configuration should be rejected")
}

#[test]
fn embedded_default_loads() {
    let cfg = load(None, &[], &[]).expect("defaults load");
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.store.url, "sqlite://firebreak.db");
    assert_eq!(cfg.engine.concurrency, 8);
    assert_eq!(cfg.log.format, LogFormat::Pretty);
    assert_eq!(cfg.server.max_body_bytes, 1_048_576);
}

#[test]
fn unrelated_environment_is_ignored() {
    let vars = env(&[
        ("PATH", "/usr/bin"),
        ("FIREBREAK_CONFIG", "/etc/firebreak.yaml"),
        ("HOME", "/root"),
    ]);
    assert_eq!(load(None, &vars, &[]).expect("loads"), Config::default());
}

#[test]
fn file_overrides_default() {
    let f = file("engine:\n  dry_run: true\n  concurrency: 2\nlog:\n  format: json\n");
    let cfg = load(Some(f.path()), &[], &[]).expect("loads");
    assert!(cfg.engine.dry_run);
    assert_eq!(cfg.engine.concurrency, 2);
    assert_eq!(cfg.log.format, LogFormat::Json);
    // Untouched keys keep their defaults.
    assert_eq!(cfg.log.level, "info");
    assert_eq!(cfg.store.url, "sqlite://firebreak.db");
}

#[test]
fn env_overrides_file() {
    let f = file("engine:\n  dry_run: false\nnotify:\n  timeout_seconds: 30\n");
    let vars = env(&[
        ("FIREBREAK_ENGINE__DRY_RUN", "true"),
        ("FIREBREAK_NOTIFY__TIMEOUT_SECONDS", "3"),
        ("FIREBREAK_STORE__URL", "postgres://fb@db/firebreak"),
    ]);
    let cfg = load(Some(f.path()), &vars, &[]).expect("loads");
    assert!(cfg.engine.dry_run);
    assert_eq!(cfg.notify.timeout_seconds, 3);
    assert_eq!(cfg.store.url, "postgres://fb@db/firebreak");
}

#[test]
fn override_beats_env() {
    let vars = env(&[("FIREBREAK_ENGINE__CONCURRENCY", "4")]);
    let cfg = load(None, &vars, &[("engine.concurrency", "16".to_owned())]).expect("loads");
    assert_eq!(cfg.engine.concurrency, 16);
    let cfg = load(None, &vars, &[]).expect("loads");
    assert_eq!(cfg.engine.concurrency, 4);
}

#[test]
fn webhook_endpoints_come_from_file_and_env() {
    let f = file("notify:\n  webhooks:\n    secops:\n      url: https://hooks.example.com/a/b\n");
    let vars = env(&[(
        "FIREBREAK_NOTIFY__WEBHOOKS__ONCALL__URL",
        "https://hooks.example.com/c/d",
    )]);
    let cfg = load(Some(f.path()), &vars, &[]).expect("loads");
    assert_eq!(
        cfg.notify.webhooks["secops"].url.expose(),
        "https://hooks.example.com/a/b"
    );
    assert_eq!(
        cfg.notify.webhooks["oncall"].url.expose(),
        "https://hooks.example.com/c/d"
    );
}

#[test]
fn unknown_key_in_file_names_line_column_path_and_hint() {
    let f = file("store:\n  url: sqlite://x.db\nengine:\n  dry_run: true\n  concurency: 3\n");
    let err = load_err(Some(f.path()), &[]);
    assert_eq!(err.diagnostics.len(), 1, "{err}");
    let d = &err.diagnostics[0];
    assert_eq!(d.file, f.path());
    assert_eq!(d.path, "engine.concurency", "{err}");
    assert_eq!((d.line, d.column), (Some(5), Some(3)), "{err}");
    assert!(d.message.contains("unknown field `concurency`"), "{err}");
    assert_eq!(
        d.hint.as_deref(),
        Some("did you mean `concurrency`?"),
        "{err}"
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}:5:3: engine.concurency: unknown field",
            f.path().display()
        )),
        "{shown}"
    );
}

#[test]
fn unknown_section_in_file_gets_a_hint() {
    let f = file("engnie:\n  dry_run: true\n");
    let err = load_err(Some(f.path()), &[]);
    let d = &err.diagnostics[0];
    assert_eq!(d.path, "engnie", "{err}");
    assert_eq!(d.line, Some(1), "{err}");
    assert_eq!(d.hint.as_deref(), Some("did you mean `engine`?"), "{err}");
}

#[test]
fn wrong_type_in_file_names_the_key_path() {
    let f = file("engine: {concurrency: many}\n");
    let err = load_err(Some(f.path()), &[]);
    let d = &err.diagnostics[0];
    assert_eq!(d.path, "engine.concurrency", "{err}");
    assert_eq!(d.line, Some(1), "{err}");
    assert!(d.column.is_some(), "{err}");
    assert_eq!(
        d.hint.as_deref(),
        Some("expected a whole number >= 0 (default 8)"),
        "{err}"
    );
}

#[test]
fn unknown_log_format_is_rejected() {
    let f = file("log:\n  format: xml\n");
    let err = load_err(Some(f.path()), &[]);
    assert_eq!(err.diagnostics[0].path, "log.format", "{err}");
    assert_eq!(err.diagnostics[0].line, Some(2), "{err}");
    assert_eq!(
        err.diagnostics[0].hint.as_deref(),
        Some("expected `pretty` or `json`")
    );
}

#[test]
fn unknown_env_key_names_the_variable_with_a_hint() {
    let vars = env(&[("FIREBREAK_ENGNE__DRY_RUN", "true")]);
    let err = load_err(None, &vars);
    let d = &err.diagnostics[0];
    assert_eq!(d.file, Path::new("<env>"));
    assert!(d.message.contains("FIREBREAK_ENGNE__DRY_RUN"), "{err}");
    assert_eq!(d.path, "engne", "{err}");
    assert_eq!(d.hint.as_deref(), Some("did you mean `engine`?"), "{err}");
}

#[test]
fn env_key_with_single_underscore_gets_a_hint() {
    let vars = env(&[("FIREBREAK_ENGINE_DRY_RUN", "true")]);
    let err = load_err(None, &vars);
    let d = &err.diagnostics[0];
    assert!(d.message.contains("FIREBREAK_ENGINE_DRY_RUN"), "{err}");
    assert_eq!(
        d.hint.as_deref(),
        Some("write FIREBREAK_ENGINE__DRY_RUN"),
        "{err}"
    );
}

#[test]
fn wrong_type_in_env_names_variable_and_path() {
    let vars = env(&[("FIREBREAK_ENGINE__CONCURRENCY", "many")]);
    let err = load_err(None, &vars);
    let d = &err.diagnostics[0];
    assert!(d.message.contains("FIREBREAK_ENGINE__CONCURRENCY"), "{err}");
    assert_eq!(d.path, "engine.concurrency", "{err}");
}

#[test]
fn unknown_flag_key_is_reported_as_flag() {
    let err =
        load(None, &[], &[("engine.dryrun", "true".to_owned())]).expect_err("unknown flag key");
    let d = &err.diagnostics[0];
    assert_eq!(d.file, Path::new("<flag>"));
    assert_eq!(d.path, "engine.dryrun", "{err}");
    assert_eq!(d.hint.as_deref(), Some("did you mean `dry_run`?"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = file("engine:\n  concurency: 3\n");
    let vars = env(&[
        ("FIREBREAK_ENGNE__DRY_RUN", "true"),
        ("FIREBREAK_LOG__FORMT", "json"),
    ]);
    let err = load_err(Some(f.path()), &vars);
    assert_eq!(err.diagnostics.len(), 3, "{err}");
    assert_eq!(err.to_string().matches("hint:").count(), 3, "{err}");
}

#[test]
fn missing_file_is_a_diagnostic() {
    let err = load_err(Some(Path::new("/nonexistent/firebreak.yaml")), &[]);
    assert_eq!(
        err.diagnostics[0].file,
        Path::new("/nonexistent/firebreak.yaml")
    );
}

#[test]
fn webhook_urls_never_appear_in_debug_or_serialised_config() {
    let secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX";
    let f = file(&format!(
        "notify:\n  webhooks:\n    secops:\n      url: {secret}\n"
    ));
    let vars = env(&[(
        "FIREBREAK_NOTIFY__WEBHOOKS__ONCALL__URL",
        "https://example.com/hook?token=ENVSECRET",
    )]);
    let cfg = load(Some(f.path()), &vars, &[]).expect("loads");
    assert_eq!(cfg.notify.webhooks["secops"].url.expose(), secret);
    let rendered = [
        format!("{cfg:?}"),
        format!("{cfg:#?}"),
        serde_json::to_string(&cfg).expect("json"),
        serde_saphyr::to_string(&cfg).expect("yaml"),
    ];
    for out in rendered {
        assert!(!out.contains("XXXXSECRETXXXX"), "{out}");
        assert!(!out.contains("ENVSECRET"), "{out}");
        assert!(!out.contains("hooks.slack.com"), "{out}");
        assert!(out.contains("[REDACTED]"), "{out}");
    }
}

#[test]
fn aws_accounts_and_profile_load_from_file_with_defaults() {
    let f = file(
        "aws:\n  region: eu-west-1\n  profile: security\n  accounts:\n    \"210987654321\":\n      \
         role_arn: arn:aws:iam::210987654321:role/firebreak\n    \"310987654321\":\n      \
         role_arn: arn:aws:iam::310987654321:role/firebreak\n      external_id: ext-1\n      \
         session_name: fb\n",
    );
    let cfg = load(Some(f.path()), &[], &[]).expect("loads");
    assert_eq!(cfg.aws.profile, "security");
    let a = &cfg.aws.accounts["210987654321"];
    assert_eq!(a.role_arn, "arn:aws:iam::210987654321:role/firebreak");
    assert_eq!(a.external_id, None);
    assert_eq!(a.session_name, "firebreak", "the default session name");
    let b = &cfg.aws.accounts["310987654321"];
    assert_eq!(b.external_id.as_deref(), Some("ext-1"));
    assert_eq!(b.session_name, "fb");
    // A configuration without the new keys still loads (backward compatible).
    let old = file("aws:\n  region: eu-west-1\n  endpoint_url: \"\"\n");
    let cfg = load(Some(old.path()), &[], &[]).expect("loads");
    assert!(cfg.aws.accounts.is_empty());
    assert_eq!(cfg.aws.profile, "");
}

const SCOPED_TOKENS: &str = "server:
  rate_limit_per_token: 50
  tokens:
    - name: falcosidekick
      token_env: FIREBREAK_TOKEN_FALCOSIDEKICK
      parsers: [falco, auto]
      rate_limit: 200
    - name: eventbridge
      token: inline-eventbridge-9a3f
      parsers: [guardduty, securityhub]
    - plain-token-c41b
";

#[test]
fn scoped_tokens_load_from_file_with_their_token_read_from_the_environment() {
    let f = file(SCOPED_TOKENS);
    let vars = env(&[("FIREBREAK_TOKEN_FALCOSIDEKICK", "from-env-5e6d")]);
    let cfg = load(Some(f.path()), &vars, &[]).expect("loads");
    let t = &cfg.server.tokens;
    let names: Vec<&str> = t.iter().map(|t| t.name.0.as_str()).collect();
    // A plain entry is named by its position in the list.
    assert_eq!(names, ["falcosidekick", "eventbridge", "token-3"]);
    let secrets: Vec<&str> = t
        .iter()
        .map(|t| t.token.as_ref().unwrap().expose().as_str())
        .collect();
    assert_eq!(
        secrets,
        [
            "from-env-5e6d",
            "inline-eventbridge-9a3f",
            "plain-token-c41b"
        ]
    );
    let parsers: Vec<Vec<&str>> = t
        .iter()
        .map(|t| t.parsers.iter().map(|p| p.0.as_str()).collect())
        .collect();
    assert_eq!(
        parsers,
        [
            vec!["falco", "auto"],
            vec!["guardduty", "securityhub"],
            vec!["*"]
        ]
    );
    assert_eq!(t[0].rate_limit, Some(200));
    assert_eq!(t[1].rate_limit, None);
    assert_eq!(cfg.server.rate_limit_per_token, 50);
    // No token value in Debug or serialised output.
    for out in [format!("{cfg:?}"), serde_json::to_string(&cfg).unwrap()] {
        for secret in secrets.iter() {
            assert!(!out.contains(secret), "{out}");
        }
    }
}

#[test]
fn plain_comma_separated_tokens_from_the_environment_may_post_anywhere() {
    let vars = env(&[("FIREBREAK_SERVER__TOKENS", "first-tok,second-tok")]);
    let cfg = load(None, &vars, &[]).expect("loads");
    let t = &cfg.server.tokens;
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].name.0, "token-2");
    assert_eq!(t[1].token.as_ref().unwrap().expose(), "second-tok");
    assert!(
        t.iter()
            .all(|t| t.parsers.len() == 1 && t.parsers[0].0 == "*")
    );
}

#[test]
fn a_token_env_that_is_not_set_is_an_error_naming_the_entry_not_a_value() {
    let f = file(SCOPED_TOKENS);
    let err = load_err(Some(f.path()), &[]);
    assert_eq!(err.diagnostics.len(), 1, "{err}");
    let d = &err.diagnostics[0];
    assert_eq!(d.path, "server.tokens[0].token_env", "{err}");
    assert!(
        d.message.contains(
            "token `falcosidekick`: environment variable FIREBREAK_TOKEN_FALCOSIDEKICK is not set"
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(!text.contains("inline-eventbridge-9a3f"), "{text}");

    let err = load_err(
        Some(f.path()),
        &env(&[("FIREBREAK_TOKEN_FALCOSIDEKICK", "  ")]),
    );
    assert!(err.to_string().contains("is empty"), "{err}");
}

#[test]
fn an_unknown_parser_in_a_token_scope_names_line_path_and_suggestion() {
    let f = file(
        "server:
  tokens:
    - name: falcosidekick
      token: t1
      parsers: [falco, guarddutty]
",
    );
    let err = load_err(Some(f.path()), &[]);
    let d = &err.diagnostics[0];
    assert_eq!(d.file, f.path());
    assert_eq!(d.path, "server.tokens[0].parsers[1]", "{err}");
    assert_eq!(d.line, Some(5), "{err}");
    assert!(d.message.contains("unknown parser `guarddutty`"), "{err}");
    assert!(d.message.contains("did you mean `guardduty`?"), "{err}");
    assert!(!err.to_string().contains("t1"), "{err}");
}

#[test]
fn token_entries_are_checked_as_a_whole_and_every_problem_is_reported() {
    let f = file(
        "server:
  tokens:
    - name: a
      token: same-secret-77
      token_env: ALSO_SET
      parsers: [falco]
    - name: a
      token: same-secret-77
      parsers: []
    - name: c
      parsers: ['*']
    - name: d
      token: other-secret-12
      parsers: [auto]
      wat: 1
",
    );
    // The unknown key is found first, in the file, with its position.
    let err = load_err(Some(f.path()), &[]);
    assert_eq!(err.diagnostics[0].path, "server.tokens[3].wat", "{err}");
    assert_eq!(err.diagnostics[0].line, Some(15), "{err}");

    let fixed = std::fs::read_to_string(f.path())
        .unwrap()
        .replace("      wat: 1\n", "");
    let f = file(&fixed);
    let err = load_err(Some(f.path()), &[]);
    let found: Vec<(&str, &str)> = err
        .diagnostics
        .iter()
        .map(|d| (d.path.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "server.tokens[0].token_env",
                "token `a` sets both token and token_env"
            ),
            (
                "server.tokens[1].parsers",
                "token `a` may post to no parser"
            ),
            ("server.tokens[2]", "token `c` has no token"),
            (
                "server.tokens[1].name",
                "token name `a` is already used by server.tokens[0]"
            ),
            (
                "server.tokens[1].token",
                "token `a` has the same token as server.tokens[0] (`a`)"
            ),
        ],
        "{err}"
    );
    assert!(!err.to_string().contains("same-secret-77"), "{err}");
}

#[test]
fn a_token_name_must_be_safe_to_show() {
    let f = file(
        "server:\n  tokens:\n    - name: \"falco sidekick\"\n      token: t\n      parsers: [falco]\n",
    );
    let err = load_err(Some(f.path()), &[]);
    assert_eq!(err.diagnostics[0].path, "server.tokens[0].name", "{err}");
    assert!(
        err.diagnostics[0].message.contains("invalid token name"),
        "{err}"
    );
}

/// Every key path of the configuration structs, from their JSON schema: `a.b` for struct
/// fields, `a[].b` inside lists, `a.*.b` inside maps keyed by the user (accounts, clusters,
/// webhooks). Optional sections (`github.app`) are walked as if present.
fn schema_paths() -> Vec<String> {
    fn walk(node: &serde_json::Value, defs: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
            let name = r.rsplit('/').next().unwrap();
            return walk(&defs[name], defs, path, out);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(alts) = node.get(key).and_then(|a| a.as_array()) {
                for alt in alts {
                    walk(alt, defs, path, out);
                }
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, defs, &format!("{path}[]"), out);
        }
        if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
            walk(extra, defs, &format!("{path}.*"), out);
        }
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (key, sub) in props {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.push(p.clone());
                walk(sub, defs, &p, out);
            }
        }
    }
    let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap();
    let mut out = Vec::new();
    walk(&schema, &schema["$defs"], "", &mut out);
    out.sort();
    out.dedup();
    out
}

/// config/default.yaml documents every key: each key of the configuration structs is in it,
/// set to its default or (inside lists, user-keyed maps and optional sections) in a commented
/// example under its parent, and every key set there has a comment above it.
#[test]
fn default_yaml_documents_every_config_key() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.yaml"))
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // (indent, key, commented) of every line that holds a key, commented out or not.
    let key_re = regex::Regex::new(r"^(\s*)(#\s*)?(?:-\s+)?(?:#\s*)?([a-z_]+):(\s|$)").unwrap();
    let keyed: Vec<(usize, String, bool)> = lines
        .iter()
        .map(|l| {
            key_re.captures(l).map_or((0, String::new(), false), |c| {
                (c[1].len(), c[3].to_owned(), c.get(2).is_some())
            })
        })
        .collect();
    let defaults: serde_json::Value = serde_saphyr::from_str(&text).unwrap();

    let mut missing = Vec::new();
    for path in schema_paths() {
        let plain =
            !path.contains("[]") && !path.contains(".*") && !path.starts_with("github.app.");
        if plain {
            // Set in the file, with its default.
            let mut v = &defaults;
            for k in path.split('.') {
                v = v.get(k).unwrap_or(&serde_json::Value::Null);
            }
            if v.is_null()
                && !matches!(
                    path.as_str(),
                    "kubernetes.url"
                        | "store.password_file"
                        | "github.token_env"
                        | "github.app"
                        | "github.webhook_secret_env"
                )
            {
                missing.push(format!("{path}: not set in default.yaml"));
            }
        }
        // Its key appears after its parent section's key, in the file's order.
        let segments: Vec<&str> = path
            .split(['.'])
            .map(|s| s.trim_end_matches("[]"))
            .filter(|s| *s != "*")
            .collect();
        let mut at = 0;
        for seg in &segments {
            match keyed[at..].iter().position(|(_, k, _)| k == seg) {
                Some(i) => at += i + 1,
                None => {
                    missing.push(format!("{path}: `{seg}:` not found in order"));
                    break;
                }
            }
        }
    }
    // Every key set (not commented out) has a comment line above it, or is the first key of
    // a section whose own line is commented.
    for (i, (_, key, commented)) in keyed.iter().enumerate() {
        if key.is_empty() || *commented {
            continue;
        }
        let above = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map_or("", |l| l.trim_start());
        if !above.starts_with('#') {
            missing.push(format!("line {}: `{key}:` has no comment above it", i + 1));
        }
    }
    assert!(
        missing.is_empty(),
        "config/default.yaml:\n{}",
        missing.join("\n")
    );
}

/// config/production.example.yaml loads (the loader of `serve`) with the environment variables
/// it names set, and is what it says: the tokens limited to their routes, the queue, the other
/// account's role, GitHub credentials and the security webhook, and no secret in the file.
#[test]
fn the_production_example_loads_with_its_secrets_from_the_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.yaml");
    let env: Vec<(String, String)> = [
        "FIREBREAK_TOKEN_FALCOSIDEKICK",
        "FIREBREAK_TOKEN_CI",
        "FIREBREAK_GITHUB_TOKEN",
        "FIREBREAK_GITHUB_WEBHOOK_SECRET",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), format!("value-of-{k}")))
    .chain(std::iter::once((
        "FIREBREAK_NOTIFY__WEBHOOKS__SECURITY__URL".to_owned(),
        "https://hooks.example.com/security".to_owned(),
    )))
    .collect();
    let config = load(Some(&path), &env, &[]).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.server.tokens.len(), 2);
    assert_eq!(config.ingest.sqs.len(), 1);
    assert!(config.aws.accounts.contains_key("210987654321"));
    assert!(config.github.token.is_some() && config.github.webhook_secret.is_some());
    assert!(config.notify.webhooks.contains_key("security"));
    assert_eq!(config.log.format, LogFormat::Json);
    // Without its secrets it does not start.
    assert!(load(Some(&path), &[], &[]).is_err());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("value-of-") && !text.contains("token:"));
}
