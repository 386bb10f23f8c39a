//! `deploy/github-app.md`, generated from the GitHub permissions the actions declare (plus what
//! approval through pull requests needs), so the GitHub App Firebreak runs as gets exactly the
//! permissions and webhook events it uses.
//!
//! A GitHub grant is `permission:level` with GitHub's permission name (`contents:write`); a
//! permission needed at several levels is granted at the highest. The page lists repository and
//! organisation permissions in a table (with who needs each), the webhook events, and the same
//! as an App manifest (`default_permissions`, `default_events`) for GitHub's manifest flow.

use std::collections::BTreeMap;

use serde_json::json;

use crate::action::{ACTIONS, Permission};

/// What approval through pull requests (`approval.github`) needs: open the approval PR (a branch
/// and a commit), request reviewers, label it and comment outcomes, read its reviews, and resolve
/// `@org/team` reviewers.
pub static APPROVAL_PERMISSIONS: &[Permission] = &[
    Permission::new("github", "contents:write"),
    Permission::new("github", "pull_requests:write"),
    Permission::new("github", "issues:write"),
    Permission::new("github", "members:read"),
];

/// The webhook events Firebreak takes on `POST /v1/github`.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_review",
    "secret_scanning_alert",
];

/// Organisation-level permissions (every other one is a repository permission).
const ORGANIZATION: &[&str] = &["members"];

/// The name GitHub's settings page shows for a permission.
fn title(permission: &str) -> String {
    match permission {
        "pull_requests" => "Pull requests".to_owned(),
        "secret_scanning_alerts" => "Secret scanning alerts".to_owned(),
        other => {
            let mut s = other.replace('_', " ");
            if let Some(first) = s.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            s
        }
    }
}

fn rank(level: &str) -> u8 {
    match level {
        "write" => 2,
        "read" => 1,
        _ => 0,
    }
}

/// Splits `permission:level`; `None` if malformed.
fn parse_grant(grant: &str) -> Option<(&str, &str)> {
    let (p, level) = grant.split_once(':')?;
    let ok = !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    (ok && matches!(level, "read" | "write")).then_some((p, level))
}

/// Every GitHub permission: its level and who needs it, by permission name.
#[must_use]
pub fn github_permissions() -> BTreeMap<String, (String, Vec<String>)> {
    let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let users = ACTIONS
        .iter()
        .map(|a| (format!("`{}`", a.kind()), a.permissions()))
        .chain(std::iter::once((
            "approval through pull requests".to_owned(),
            APPROVAL_PERMISSIONS,
        )));
    for (user, permissions) in users {
        for p in permissions.iter().filter(|p| p.system == "github") {
            let Some((name, level)) = parse_grant(&p.grant) else {
                continue;
            };
            let entry = out
                .entry(name.to_owned())
                .or_insert_with(|| (level.to_owned(), Vec::new()));
            if rank(level) > rank(&entry.0) {
                entry.0 = level.to_owned();
            }
            if !entry.1.contains(&user) {
                entry.1.push(user.clone());
            }
        }
    }
    out
}

/// The App manifest's permissions and events (GitHub's manifest flow), as JSON.
#[must_use]
pub fn app_manifest() -> serde_json::Value {
    let permissions: BTreeMap<String, String> = github_permissions()
        .into_iter()
        .map(|(k, (level, _))| (k, level))
        .collect();
    json!({
        "name": "Firebreak",
        "public": false,
        "default_permissions": permissions,
        "default_events": WEBHOOK_EVENTS,
        "hook_attributes": {"url": "https://FIREBREAK_HOST/v1/github", "active": true},
    })
}

/// The Markdown `deploy/github-app.md` holds.
#[must_use]
pub fn github_app_markdown() -> String {
    let perms = github_permissions();
    let table = |org: bool| -> String {
        let mut s = String::from("| permission | access | needed by |\n|---|---|---|\n");
        for (name, (level, users)) in &perms {
            if ORGANIZATION.contains(&name.as_str()) != org {
                continue;
            }
            let access = if level == "write" {
                "Read and write"
            } else {
                "Read-only"
            };
            s.push_str(&format!(
                "| {} (`{name}`) | {access} | {} |\n",
                title(name),
                users.join(", ")
            ));
        }
        s
    };
    let events: Vec<String> = WEBHOOK_EVENTS.iter().map(|e| format!("`{e}`")).collect();
    let manifest = serde_json::to_string_pretty(&app_manifest()).unwrap_or_default();
    format!(
        "# The GitHub App Firebreak runs as\n\
         \n\
         <!-- Generated by `firebreak actions github-app` from the GitHub permissions the actions \
         declare; a test fails when this file is stale. Do not edit by hand. -->\n\
         \n\
         Create a GitHub App (organisation settings, Developer settings, GitHub Apps) with exactly \
         these permissions and webhook events, install it on the repositories Firebreak changes, \
         and configure `github.app` (id, installation id, private key; see \
         `config/default.yaml`). Firebreak acts as the App's installation, with installation \
         tokens minted from a JWT signed by the App's key and renewed before they expire; the \
         App's bot account (`<slug>[bot]`) is Firebreak's identity on GitHub.\n\
         \n\
         A fine-grained personal access token (`github.token_env`) needs the same repository \
         permissions.\n\
         \n\
         ## Repository permissions\n\
         \n\
         {}\
         \n\
         ## Organization permissions\n\
         \n\
         {}\
         \n\
         ## Webhook\n\
         \n\
         Events: {}. URL: `https://FIREBREAK_HOST/v1/github`. Secret: the value of the \
         environment variable `github.webhook_secret_env` names; GitHub signs every delivery \
         with it (`X-Hub-Signature-256`).\n\
         \n\
         ## As an App manifest\n\
         \n\
         ```json\n{manifest}\n```\n",
        table(false),
        table(true),
        events.join(", "),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_github_grant_in_the_registry_is_well_formed() {
        for a in ACTIONS {
            for p in a.permissions().iter().filter(|p| p.system == "github") {
                assert!(parse_grant(&p.grant).is_some(), "{}: {}", a.kind(), p.grant);
            }
        }
        for p in APPROVAL_PERMISSIONS {
            assert!(parse_grant(&p.grant).is_some(), "{}", p.grant);
        }
    }

    #[test]
    fn the_highest_level_wins_and_users_are_named() {
        let perms = github_permissions();
        assert_eq!(perms["contents"].0, "write");
        assert_eq!(perms["metadata"].0, "read");
        assert!(
            perms["secret_scanning_alerts"]
                .1
                .contains(&"`github.resolve-secret-alert`".to_owned())
        );
        assert_eq!(title("pull_requests"), "Pull requests");
        assert_eq!(title("members"), "Members");
    }
}
