//! The `github:` configuration section: secrets are named, not written, and read from the
//! environment when configuration is loaded; every problem names its key and variable, never a
//! value; no secret survives into `Debug` or serialised configuration.

use std::io::Write;

use firebreak::config::load;

fn file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const TOKEN: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
const KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";

#[test]
fn github_defaults_are_the_public_api_and_no_access() {
    let cfg = load(None, &[], &[]).unwrap();
    assert_eq!(cfg.github.base_url, "https://api.github.com");
    assert!(cfg.github.token.is_none() && cfg.github.app.is_none());
    assert!(cfg.github.webhook_secret.is_none());
    assert_eq!(cfg.github.timeout_seconds, 30);
}

#[test]
fn github_token_app_key_and_webhook_secret_come_from_the_environment() {
    let f = file(
        "github:\n  base_url: https://ghe.example.com/api/v3\n  app:\n    id: 12\n    installation_id: 34\n    private_key_env: FB_APP_KEY\n  webhook_secret_env: FB_HOOK\n",
    );
    let cfg = load(
        Some(f.path()),
        &env(&[("FB_APP_KEY", KEY), ("FB_HOOK", "hook-secret-value")]),
        &[],
    )
    .unwrap();
    let app = cfg.github.app.as_ref().unwrap();
    assert_eq!((app.id, app.installation_id), (12, 34));
    assert_eq!(app.private_key.as_ref().unwrap().expose(), KEY.trim());
    assert_eq!(
        cfg.github.webhook_secret.as_ref().unwrap().expose(),
        "hook-secret-value"
    );
    let shown = format!("{cfg:?}{}", serde_json::to_string(&cfg).unwrap());
    assert!(
        !shown.contains("MIIEvQ") && !shown.contains("hook-secret-value"),
        "{shown}"
    );

    let cfg = load(
        None,
        &env(&[("FIREBREAK_GITHUB__TOKEN_ENV", "FB_GH"), ("FB_GH", TOKEN)]),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.github.token.as_ref().unwrap().expose(), TOKEN);
    let shown = format!("{cfg:?}{}", serde_json::to_string(&cfg).unwrap());
    assert!(!shown.contains(TOKEN), "{shown}");
}

#[test]
fn github_problems_name_keys_and_variables_never_values() {
    let f = file(
        "github:\n  base_url: ftp://x\n  token_env: FB_GH\n  app:\n    id: 0\n    installation_id: 0\n  webhook_secret_env: FB_EMPTY\n",
    );
    let e = load(
        Some(f.path()),
        &env(&[("FB_GH", TOKEN), ("FB_EMPTY", " ")]),
        &[],
    )
    .unwrap_err();
    let text = e.to_string();
    for want in [
        "github.base_url: not an http(s) URL",
        "github.token_env: both token_env and app are set",
        "github.webhook_secret_env: environment variable FB_EMPTY is empty",
        "github.app.id: the App id is missing",
        "github.app.installation_id: the installation id is missing",
        "github.app: the App has no private key",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert!(!text.contains(TOKEN), "{text}");
    let f = file(
        "github:\n  app:\n    id: 1\n    installation_id: 2\n    private_key_env: A\n    private_key_file: /k.pem\n",
    );
    let text = load(Some(f.path()), &env(&[("A", KEY)]), &[])
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(
            "github.app.private_key_env: both private_key_env and private_key_file are set"
        ),
        "{text}"
    );
    let f = file("github:\n  tokn_env: X\n");
    let text = load(Some(f.path()), &[], &[]).unwrap_err().to_string();
    assert!(text.contains("tokn_env"), "{text}");
}
