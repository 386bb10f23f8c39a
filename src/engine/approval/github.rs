//! Approval requests as GitHub pull requests, and the decisions reviewers make on them.
//!
//! [`GithubApprovals`] is the [`ApprovalChannel`] of a playbook with `approval: {github: …}`:
//! each request gets a branch `firebreak/approve/<execution>` in `approval.github.repo` holding
//! one file, `.firebreak/approvals/<execution>.md`, that renders the request's plan; every
//! revision of the plan is a new commit of that file, so a review (which GitHub ties to the
//! commit it looked at) names exactly one plan. The pull request's body is the same rendering,
//! with the plan hash in a hidden marker; it is labelled and asks the configured reviewers.
//!
//! [`GithubApprovals::review`], [`GithubApprovals::closed`] and [`GithubApprovals::poll`] turn
//! what happens on those pull requests into votes on the store's request: a review counts only
//! when it approves (or requests changes on) the commit that shows the current plan, and comes
//! from an allowed reviewer (a listed user, or an active member of a listed `@org/team`) who is
//! neither the pull request's author nor Firebreak itself; a pull request closed without a merge
//! cancels the request; a merge approves it when `merge_counts_as_approval` says so. The webhook
//! route and the poller (after downtime or lost deliveries) call the same functions, and votes
//! are idempotent, so a decision seen twice counts once.

use std::sync::Arc;

use base64::Engine as _;
use octocrab::params::repos::Reference;
use serde_json::{Value, json};

use super::{ApprovalChannel, targets};
use crate::action::BoxFuture;
use crate::clients::github::{GitHub, error_status, error_text};
use crate::finding::Finding;
use crate::store::{ApprovalRow, AuditEvent, Store, StoreError, Vote, VoteOutcome, now_ms};

/// Labels every approval pull request carries.
pub const LABELS: [&str; 2] = ["firebreak", "firebreak:approval"];

/// The branch of an execution's approval pull request.
#[must_use]
pub fn branch_of(execution_id: &str) -> String {
    format!("firebreak/approve/{}", execution_id.to_ascii_lowercase())
}

/// The file the branch holds: the rendered plan.
#[must_use]
pub fn file_of(execution_id: &str) -> String {
    format!(
        ".firebreak/approvals/{}.md",
        execution_id.to_ascii_lowercase()
    )
}

/// The hidden marker naming the execution, plan and revision a body shows.
#[must_use]
pub fn marker(row: &ApprovalRow) -> String {
    format!(
        "<!-- firebreak:approval execution={} plan={} revision={} -->",
        row.execution_id, row.request.plan_hash, row.revision
    )
}

/// `owner/repo` of a request's channel (`github:owner/repo`).
fn repo_of(row: &ApprovalRow) -> Result<(String, String), String> {
    let Some(full) = row
        .request
        .channel
        .as_deref()
        .and_then(|c| c.strip_prefix("github:"))
    else {
        return Err(format!(
            "execution {} is not asked on GitHub",
            row.execution_id
        ));
    };
    match full.split_once('/') {
        Some((o, r)) if !o.is_empty() && !r.is_empty() && !r.contains('/') => {
            Ok((o.to_owned(), r.to_owned()))
        }
        _ => Err(format!("approval.github.repo `{full}` is not owner/repo")),
    }
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// The pull request's title.
#[must_use]
pub fn title(row: &ApprovalRow) -> String {
    let t = targets(&row.request.plans);
    let what = match t.as_slice() {
        [] => "no resource".to_owned(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    };
    format!("Firebreak asks to run {} on {what}", row.playbook)
}

/// Most links to the scanner's own pages (an alert, a repository, a console view) listed.
const EVIDENCE_LINKS: usize = 3;

/// Field names under which scanners put a link for people: GitHub's `html_url`, Security
/// Hub's `SourceUrl`, Trivy's `PrimaryURL`.
const LINK_FIELDS: &[&str] = &["html_url", "SourceUrl", "PrimaryURL"];

/// The `https://` links the scanner put in its finding for people (see [`LINK_FIELDS`]),
/// shallowest first (the alert's or repository's own before its owner's), without
/// duplicates, credentials in them scrubbed.
#[must_use]
pub fn evidence_links(finding: &Finding) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut level: Vec<&serde_json::Value> = vec![&finding.fields];
    for _depth in 0..8 {
        let mut next = Vec::new();
        for v in level {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, item) in map {
                        if let (true, Some(s)) = (LINK_FIELDS.contains(&k.as_str()), item.as_str())
                            && s.starts_with("https://")
                            && !s.contains(char::is_whitespace)
                        {
                            let link = crate::redact::scrub(s).into_owned();
                            if !out.contains(&link) && out.len() < EVIDENCE_LINKS {
                                out.push(link);
                            }
                        }
                        next.push(item);
                    }
                }
                serde_json::Value::Array(items) => next.extend(items),
                _ => {}
            }
        }
        if next.is_empty() || out.len() >= EVIDENCE_LINKS {
            break;
        }
        level = next;
    }
    out
}

/// The rendering of a request a reviewer approves: the finding and links to its evidence,
/// every resource the plan changes, each step's plan (summary, changes with before and after, permissions), how to
/// approve, and the hash in a hidden marker. Secrets were scrubbed from plans and findings
/// when they were made; the text is scrubbed once more here.
#[must_use]
pub fn render(row: &ApprovalRow, finding: &Finding, note: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(note) = note {
        out.push_str(&format!("> **{note}**\n\n"));
    }
    out.push_str(&format!(
        "Firebreak asks before it acts: playbook **{}** matched finding `{}` \
         ({} {}, {}: `{}`).\n\n> {}\n\n",
        row.playbook,
        finding.id,
        finding.severity,
        finding.class,
        finding.source,
        finding.rule,
        finding.title
    ));
    out.push_str("### Evidence\n\n");
    for link in evidence_links(finding) {
        out.push_str(&format!("- <{link}>\n"));
    }
    out.push_str(&format!(
        "- the finding and everything done about it: `firebreak audit list --finding {}`\n\n",
        finding.id
    ));
    out.push_str("### What changes\n\n");
    for t in targets(&row.request.plans) {
        out.push_str(&format!("- `{t}`\n"));
    }
    out.push_str(&format!("\n### The plan (revision {})\n\n", row.revision));
    for entry in row.request.plans.as_array().into_iter().flatten() {
        let n = entry["step"].as_u64().unwrap_or(0) + 1;
        let action = entry["action"].as_str().unwrap_or("?");
        let after = entry["after_seconds"]
            .as_u64()
            .map(|s| format!(" (runs {s} s after the previous step)"))
            .unwrap_or_default();
        match entry.get("plan") {
            Some(plan) => {
                out.push_str(&format!(
                    "{n}. **{action}**{after}: {}{}\n",
                    plan["summary"].as_str().unwrap_or_default(),
                    if plan["noop"] == true {
                        " (already done)"
                    } else {
                        ""
                    }
                ));
                for c in plan["changes"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "   - {} `{}`",
                        c["op"].as_str().unwrap_or_default(),
                        c["path"].as_str().unwrap_or_default()
                    ));
                    if let Some(from) = c.get("from") {
                        out.push_str(&format!(": from `{}`", short(from)));
                    }
                    if let Some(to) = c.get("to") {
                        out.push_str(&format!(" to `{}`", short(to)));
                    }
                    out.push('\n');
                }
                let grants: Vec<String> = plan["permissions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{} `{}`",
                            p["system"].as_str().unwrap_or_default(),
                            p["grant"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                if !grants.is_empty() {
                    out.push_str(&format!("   - uses: {}\n", grants.join(", ")));
                }
                if plan["reversible"] == true {
                    out.push_str("   - reversible with `firebreak rollback`\n");
                }
            }
            None => out.push_str(&format!(
                "{n}. **{action}**{after}: not planned: {}\n",
                entry["error"]
                    .as_str()
                    .or_else(|| entry["skipped"].as_str())
                    .unwrap_or_default()
            )),
        }
    }
    let expires = chrono::DateTime::from_timestamp_millis(row.request.expires_at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    out.push_str(&format!(
        "\n### To apply it\n\nApprove this pull request: {} approval(s) from {} are needed \
         (never its author's, never Firebreak's own). An approval counts for this plan only, \
         `{}`, at the commit that shows it. If live state changes before it is applied, nothing \
         is applied and this pull request is updated with the new plan, to be approved again. \
         Requesting changes holds it; closing this pull request without merging cancels it. \
         It expires at {expires}.\n\n{}\n",
        row.request.min,
        row.request.reviewers.join(", "),
        row.request.plan_hash,
        marker(row)
    ));
    crate::redact::scrub(&out).into_owned()
}

/// One review, as GitHub reports it (webhook or list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewSeen {
    /// Review id.
    pub id: u64,
    /// Reviewer's login.
    pub user: String,
    /// `approved`, `changes_requested`, `commented`, `dismissed` (lowercase, as webhooks say).
    pub state: String,
    /// The commit it reviewed.
    pub commit_id: String,
}

/// The pull request a decision was made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSeen {
    /// `owner/repo`.
    pub repo: String,
    /// Its number.
    pub number: u64,
    /// Its author's login.
    pub author: String,
    /// `open` or `closed`.
    pub state: String,
    /// Who merged it, when merged.
    pub merged_by: Option<String>,
    /// Its head commit.
    pub head_sha: String,
}

/// Pull-request approval for the engine and the webhook route.
pub struct GithubApprovals<S> {
    gh: GitHub,
    store: Arc<S>,
}

impl<S> Clone for GithubApprovals<S> {
    fn clone(&self) -> Self {
        Self {
            gh: self.gh.clone(),
            store: Arc::clone(&self.store),
        }
    }
}

impl<S: Store> GithubApprovals<S> {
    /// Approval through `gh`, deciding on `store`'s requests.
    pub fn new(gh: GitHub, store: Arc<S>) -> Self {
        Self { gh, store }
    }

    /// The request a pull request shows, if it is one of Firebreak's.
    async fn request_of(&self, pull: &PullSeen) -> Result<Option<ApprovalRow>, StoreError> {
        let channel = format!("github:{}", pull.repo);
        self.store
            .approval_for_pr(&channel, i64::try_from(pull.number).unwrap_or(i64::MAX))
            .await
    }

    async fn ignore(
        &self,
        row: &ApprovalRow,
        by: &str,
        via: &str,
        why: &str,
    ) -> Result<(), StoreError> {
        tracing::info!(execution = %row.execution_id, %by, %via, %why, "approval decision ignored");
        self.store
            .audit(AuditEvent {
                kind: "approval.ignored".into(),
                finding_id: Some(row.finding_id.clone()),
                execution_id: Some(row.execution_id.clone()),
                detail: json!({
                    "by": by, "via": via, "why": why, "plan_hash": row.request.plan_hash,
                }),
            })
            .await
            .map(|_| ())
    }

    /// Whether `login` may vote on `row`: a listed user, or an active member of a listed team;
    /// never the pull request's author, never Firebreak. `Err(why)` when not.
    async fn allowed(&self, row: &ApprovalRow, author: &str, login: &str) -> Result<(), String> {
        if self.gh.is_own_login(login) {
            return Err("Firebreak's own identity never approves".into());
        }
        if login.eq_ignore_ascii_case(author) {
            return Err("the pull request's author never approves it".into());
        }
        for r in &row.request.reviewers {
            match r.strip_prefix('@').and_then(|t| t.split_once('/')) {
                Some((org, team)) => match self.team_member(org, team, login).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(why) => {
                        return Err(format!(
                            "cannot check membership of {r} (failing closed): {why}"
                        ));
                    }
                },
                None if r.eq_ignore_ascii_case(login) => return Ok(()),
                None => {}
            }
        }
        Err(format!(
            "{login} is not an allowed reviewer ({})",
            row.request.reviewers.join(", ")
        ))
    }

    async fn team_member(&self, org: &str, team: &str, login: &str) -> Result<bool, String> {
        let route = format!("/orgs/{org}/teams/{team}/memberships/{login}");
        match self
            .gh
            .octocrab()
            .get::<Value, _, ()>(route, None::<&()>)
            .await
        {
            Ok(m) => Ok(m["state"] == "active"),
            Err(e) if error_status(&e) == Some(404) => Ok(false),
            Err(e) => Err(error_text(&e)),
        }
    }

    /// A review submitted on `pull`: a vote for the current plan when it reviewed the commit
    /// that shows it and the reviewer may vote; ignored (and audited) otherwise.
    ///
    /// # Errors
    /// Store failures.
    pub async fn review(
        &self,
        pull: &PullSeen,
        review: &ReviewSeen,
    ) -> Result<Option<VoteOutcome>, StoreError> {
        let Some(row) = self.request_of(pull).await? else {
            return Ok(None);
        };
        let via = format!("github-review:{}", review.id);
        let verdict = match review.state.to_ascii_lowercase().as_str() {
            "approved" => "approved",
            "changes_requested" => "changes_requested",
            _ => return Ok(None), // a comment or a dismissal decides nothing
        };
        if let Err(why) = self.allowed(&row, &pull.author, &review.user).await {
            self.ignore(&row, &review.user, &via, &why).await?;
            return Ok(None);
        }
        // A review is of a commit; the commit that shows the current plan names its hash.
        let hash = if row.head_sha.as_deref() == Some(review.commit_id.as_str()) {
            row.request.plan_hash.clone()
        } else {
            format!("commit:{}", review.commit_id)
        };
        let vote = Vote {
            by: review.user.clone(),
            via,
            verdict: verdict.into(),
            at: now_ms(),
        };
        let outcome = self.store.vote(&row.execution_id, &hash, &vote).await?;
        tracing::info!(execution = %row.execution_id, by = %review.user, ?outcome, "review counted");
        Ok(Some(outcome))
    }

    /// `pull` was closed: merged and `merge_counts_as_approval`, it is a vote by whoever
    /// merged it (when they may vote); otherwise the request is cancelled.
    ///
    /// # Errors
    /// Store failures.
    pub async fn closed(&self, pull: &PullSeen, sender: &str) -> Result<(), StoreError> {
        let Some(row) = self.request_of(pull).await? else {
            return Ok(());
        };
        if let Some(merger) = &pull.merged_by
            && row.request.merge_approves
        {
            let via = format!("github-merge:{}", pull.number);
            if let Err(why) = self.allowed(&row, &pull.author, merger).await {
                self.ignore(&row, merger, &via, &why).await?;
                return self
                    .cancel(
                        &row,
                        merger,
                        &format!("merged by {merger}, who may not approve"),
                    )
                    .await;
            }
            let hash = if row.head_sha.as_deref() == Some(pull.head_sha.as_str()) {
                row.request.plan_hash.clone()
            } else {
                format!("commit:{}", pull.head_sha)
            };
            let vote = Vote {
                by: merger.clone(),
                via,
                verdict: "approved".into(),
                at: now_ms(),
            };
            self.store.vote(&row.execution_id, &hash, &vote).await?;
            return Ok(());
        }
        let why = if pull.merged_by.is_some() {
            "the pull request was merged, and merging does not count as approval here"
        } else {
            "the pull request was closed without merging"
        };
        self.cancel(&row, sender, why).await
    }

    async fn cancel(&self, row: &ApprovalRow, by: &str, why: &str) -> Result<(), StoreError> {
        let via = format!("github-pr-closed:{}", row.pr_number.unwrap_or_default());
        if self
            .store
            .close_approval(&row.execution_id, by, &via, why)
            .await?
        {
            tracing::info!(execution = %row.execution_id, %by, "approval pull request closed: cancelled");
        }
        Ok(())
    }

    /// Catches up on every open request's pull request (after downtime or lost webhook
    /// deliveries): its reviews and whether it was closed, through the same decisions as the
    /// webhook. Votes are idempotent, so what was already counted is not counted twice.
    ///
    /// # Errors
    /// Store failures (GitHub failures are logged and retried at the next poll).
    pub async fn poll(&self) -> Result<(), StoreError> {
        for row in self.store.open_approvals().await? {
            let (Some(number), Ok((owner, name))) = (row.pr_number, repo_of(&row)) else {
                continue;
            };
            let number = u64::try_from(number).unwrap_or_default();
            if let Err(why) = self.poll_one(&row, &owner, &name, number).await {
                tracing::warn!(execution = %row.execution_id, %why, "cannot poll the approval pull request; trying again later");
            }
        }
        Ok(())
    }

    async fn poll_one(
        &self,
        row: &ApprovalRow,
        owner: &str,
        name: &str,
        number: u64,
    ) -> Result<(), String> {
        let pulls = self.gh.octocrab().pulls(owner, name);
        let pr = pulls.get(number).await.map_err(|e| error_text(&e))?;
        let pull = PullSeen {
            repo: format!("{owner}/{name}"),
            number,
            author: pr
                .user
                .as_ref()
                .map(|u| u.login.clone())
                .unwrap_or_default(),
            state: if pr.closed_at.is_some() || pr.merged_at.is_some() {
                "closed".into()
            } else {
                "open".into()
            },
            merged_by: pr
                .merged_at
                .and(pr.merged_by.as_ref().map(|u| u.login.clone())),
            head_sha: pr.head.sha.clone(),
        };
        let reviews = pulls
            .list_reviews(number)
            .per_page(100)
            .send()
            .await
            .map_err(|e| error_text(&e))?;
        for r in reviews.items {
            let state = match r.state {
                Some(octocrab::models::pulls::ReviewState::Approved) => "approved",
                Some(octocrab::models::pulls::ReviewState::ChangesRequested) => "changes_requested",
                _ => continue,
            };
            let seen = ReviewSeen {
                id: r.id.into_inner(),
                user: r.user.map(|u| u.login).unwrap_or_default(),
                state: state.into(),
                commit_id: r.commit_id.unwrap_or_default(),
            };
            // A vote already counted is the same vote again: only count what is new.
            if row
                .votes
                .iter()
                .any(|v| v.via == format!("github-review:{}", seen.id))
            {
                continue;
            }
            self.review(&pull, &seen).await.map_err(|e| e.to_string())?;
        }
        if pull.state == "closed" {
            let sender = pull.merged_by.clone().unwrap_or_else(|| "github".into());
            self.closed(&pull, &sender)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn publish_pr(
        &self,
        row: &ApprovalRow,
        finding: &Finding,
        note: Option<&str>,
    ) -> Result<(i64, String), String> {
        let (owner, name) = repo_of(row)?;
        let octo = self.gh.octocrab();
        let repos = octo.repos(&owner, &name);
        let repo = repos.get().await.map_err(|e| error_text(&e))?;
        let base = repo.default_branch.unwrap_or_else(|| "main".into());
        let branch = branch_of(&row.execution_id);
        let path = file_of(&row.execution_id);
        let body = render(row, finding, note);
        let branch_sha = match repos.get_ref(&Reference::Branch(branch.clone())).await {
            Ok(_) => true,
            Err(e) if error_status(&e) == Some(404) => false,
            Err(e) => return Err(error_text(&e)),
        };
        if !branch_sha {
            let base_ref = repos
                .get_ref(&Reference::Branch(base.clone()))
                .await
                .map_err(|e| error_text(&e))?;
            let octocrab::models::repos::Object::Commit { sha, .. } = base_ref.object else {
                return Err(format!("{owner}/{name}: {base} does not point at a commit"));
            };
            repos
                .create_ref(&Reference::Branch(branch.clone()), sha)
                .await
                .map_err(|e| error_text(&e))?;
        }
        let existing = match repos.get_content().path(&path).r#ref(&branch).send().await {
            Ok(mut c) => c.take_items().into_iter().next(),
            Err(e) if error_status(&e) == Some(404) => None,
            Err(e) => return Err(error_text(&e)),
        };
        let message = format!(
            "Firebreak: plan revision {} of execution {}",
            row.revision, row.execution_id
        );
        let same = existing.as_ref().is_some_and(|f| {
            let raw: String = f
                .content
                .clone()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::prelude::BASE64_STANDARD
                .decode(raw)
                .is_ok_and(|b| b == body.as_bytes())
        });
        let head = if same {
            // Published before a crash: the branch already shows this revision.
            let r = repos
                .get_ref(&Reference::Branch(branch.clone()))
                .await
                .map_err(|e| error_text(&e))?;
            match r.object {
                octocrab::models::repos::Object::Commit { sha, .. } => sha,
                _ => return Err(format!("{branch} does not point at a commit")),
            }
        } else {
            let put = match &existing {
                Some(f) => repos.update_file(&path, &message, &body, &f.sha),
                None => repos.create_file(&path, &message, &body),
            };
            let written = put
                .branch(&branch)
                .send()
                .await
                .map_err(|e| error_text(&e))?;
            written
                .commit
                .sha
                .ok_or_else(|| "GitHub did not say which commit it made".to_owned())?
        };
        let title = title(row);
        let number = match self.open_pull(&owner, &name, &branch, row).await? {
            Some(n) => {
                octo.patch::<octocrab::models::pulls::PullRequest, _, _>(
                    format!("/repos/{owner}/{name}/pulls/{n}"),
                    Some(&json!({"title": title, "body": body})),
                )
                .await
                .map_err(|e| error_text(&e))?;
                n
            }
            None => {
                let created = octo
                    .pulls(&owner, &name)
                    .create(&title, &branch, &base)
                    .body(&body)
                    .send()
                    .await
                    .map_err(|e| error_text(&e))?;
                let n = created.number;
                let labels: Vec<String> = LABELS.iter().map(|l| (*l).to_owned()).collect();
                if let Err(e) = octo.issues(&owner, &name).add_labels(n, &labels).await {
                    tracing::warn!(error = %error_text(&e), "cannot label the approval pull request");
                }
                let (teams, users): (Vec<&String>, Vec<&String>) = row
                    .request
                    .reviewers
                    .iter()
                    .partition(|r| r.starts_with('@'));
                let team_slugs: Vec<&str> = teams
                    .iter()
                    .filter_map(|t| t.split_once('/').map(|(_, slug)| slug))
                    .collect();
                if let Err(e) = octo
                    .post::<_, octocrab::models::pulls::PullRequest>(
                        format!("/repos/{owner}/{name}/pulls/{n}/requested_reviewers"),
                        Some(&json!({"reviewers": users, "team_reviewers": team_slugs})),
                    )
                    .await
                {
                    tracing::warn!(error = %error_text(&e), "cannot request reviewers on the approval pull request");
                }
                n
            }
        };
        if let Some(note) = note {
            let text = format!("{note}\n\nNew plan: `{}` at {head}.", row.request.plan_hash);
            if let Err(e) = octo
                .issues(&owner, &name)
                .create_comment(number, text)
                .await
            {
                tracing::warn!(error = %error_text(&e), "cannot comment on the approval pull request");
            }
        }
        Ok((i64::try_from(number).unwrap_or(i64::MAX), head))
    }

    async fn open_pull(
        &self,
        owner: &str,
        name: &str,
        branch: &str,
        row: &ApprovalRow,
    ) -> Result<Option<u64>, String> {
        if let Some(n) = row.pr_number {
            return Ok(u64::try_from(n).ok());
        }
        let page = self
            .gh
            .octocrab()
            .pulls(owner, name)
            .list()
            .state(octocrab::params::State::Open)
            .head(format!("{owner}:{branch}"))
            .send()
            .await
            .map_err(|e| error_text(&e))?;
        Ok(page
            .items
            .into_iter()
            .find(|p| p.head.ref_field == branch)
            .map(|p| p.number))
    }
}

impl<S: Store> ApprovalChannel for GithubApprovals<S> {
    fn publish<'a>(
        &'a self,
        row: &'a ApprovalRow,
        finding: &'a Finding,
        note: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(i64, String), String>> {
        Box::pin(self.publish_pr(row, finding, note))
    }

    fn comment<'a>(
        &'a self,
        row: &'a ApprovalRow,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let (owner, name) = repo_of(row)?;
            let Some(n) = row.pr_number.and_then(|n| u64::try_from(n).ok()) else {
                return Ok(());
            };
            let text = format!("{text}\n\n{}", marker(row));
            self.gh
                .octocrab()
                .issues(&owner, &name)
                .create_comment(n, crate::redact::scrub(&text).into_owned())
                .await
                .map(|_| ())
                .map_err(|e| error_text(&e))
        })
    }

    fn close<'a>(
        &'a self,
        row: &'a ApprovalRow,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.comment(row, text).await?;
            let (owner, name) = repo_of(row)?;
            let Some(n) = row.pr_number else {
                return Ok(());
            };
            let octo = self.gh.octocrab();
            octo.patch::<octocrab::models::pulls::PullRequest, _, _>(
                format!("/repos/{owner}/{name}/pulls/{n}"),
                Some(&json!({"state": "closed"})),
            )
            .await
            .map_err(|e| error_text(&e))?;
            if let Err(e) = octo
                .repos(&owner, &name)
                .delete_ref(&Reference::Branch(branch_of(&row.execution_id)))
                .await
            {
                tracing::warn!(error = %error_text(&e), "cannot delete the approval branch");
            }
            Ok(())
        })
    }
}
