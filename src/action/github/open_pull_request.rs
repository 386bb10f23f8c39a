//! `github.open-pull-request`: make a runtime fix permanent in the GitOps repository (otherwise
//! Argo CD or Flux undoes it): a branch, a commit editing one YAML manifest by path, and a pull
//! request.
//!
//! Edits (`set`, `remove`) go through `yamlpatch`, which changes only the edited values and keeps
//! the file's comments, order, quoting and indentation. The repository, the file path, the
//! values set and the PR's title and body are `minijinja` templates over `finding`, `target`
//! (the finding's first resource), `playbook` and `step`; an undefined name is an error, never an
//! empty string.
//!
//! Idempotent: the branch is named from the step's idempotency key
//! (`firebreak/<playbook>-<key>`), so a re-run finds its own branch and open PR and updates them
//! (one more commit when the wanted file differs, a new title/body) instead of opening a second
//! PR. `plan` reads only (the base file, the branch, the open PR) and shows the unified diff;
//! `apply` reads the base file again and refuses with drift when it changed since planning.
//! Rollback closes the PR and deletes the branch.

use std::collections::BTreeMap;

use base64::Engine;
use minijinja::{Environment, UndefinedBehavior};
use octocrab::params::repos::Reference;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    RepoName, connected, connection, github_error, not_connected_plan, render_problems, undo_of,
};
use crate::action::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};
use crate::clients::github::{GitHub, error_status};
use crate::finding::ResourceRef;

/// Opens (or updates) a pull request that edits a YAML manifest.
pub struct GithubOpenPullRequest;

/// Longest title GitHub shows whole; longer titles are cut.
const MAX_TITLE: usize = 200;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// `owner/name` (template).
    repo: String,
    /// The YAML file to edit (template).
    path: String,
    /// Dotted paths to values (templates when strings).
    #[serde(default)]
    set: BTreeMap<String, Value>,
    /// Dotted paths of keys to remove.
    #[serde(default)]
    remove: Vec<String>,
    /// The branch the PR merges into; absent: the repository's default branch.
    #[serde(default)]
    base: Option<String>,
    /// The PR's title (template).
    #[serde(default)]
    title: Option<String>,
    /// The PR's body (template, Markdown).
    #[serde(default)]
    body: Option<String>,
    /// Labels added to the PR.
    #[serde(default)]
    labels: Vec<String>,
}

/// One step of a YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Parses `spec.template.spec.containers[0].image` or `metadata.annotations["a.b/c"]`.
fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    let mut key = String::new();
    let bad = |why: &str| format!("`{path}` is not a YAML path ({why})");
    while i < chars.len() {
        match chars[i] {
            '.' => {
                if key.is_empty() && !matches!(out.last(), Some(Seg::Index(_))) {
                    return Err(bad("empty key"));
                }
                if !key.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut key)));
                }
                i += 1;
                if i == chars.len() {
                    return Err(bad("ends with `.`"));
                }
            }
            '[' => {
                if !key.is_empty() {
                    out.push(Seg::Key(std::mem::take(&mut key)));
                }
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .ok_or_else(|| bad("`[` without `]`"))?;
                let inner: String = chars[i + 1..i + close].iter().collect();
                if let Some(q) = inner.chars().next().filter(|c| *c == '"' || *c == '\'') {
                    let k = inner
                        .strip_prefix(q)
                        .and_then(|s| s.strip_suffix(q))
                        .ok_or_else(|| bad("unterminated quoted key"))?;
                    if k.is_empty() {
                        return Err(bad("empty key"));
                    }
                    out.push(Seg::Key(k.to_owned()));
                } else {
                    let n = inner
                        .parse::<usize>()
                        .map_err(|_| bad("an index must be a number, a key must be quoted"))?;
                    out.push(Seg::Index(n));
                }
                i += close + 1;
            }
            c => {
                key.push(c);
                i += 1;
            }
        }
    }
    if !key.is_empty() {
        out.push(Seg::Key(key));
    }
    if out.is_empty() {
        return Err(bad("empty"));
    }
    Ok(out)
}

fn route(segs: &[Seg]) -> yamlpath::Route<'static> {
    yamlpath::Route::from(
        segs.iter()
            .map(|s| match s {
                Seg::Key(k) => yamlpath::Component::Key(k.clone().into()),
                Seg::Index(n) => yamlpath::Component::Index(*n),
            })
            .collect::<Vec<_>>(),
    )
}

/// One edit, after templates were rendered.
#[derive(Debug, Clone)]
enum Edit {
    Set { path: String, value: Value },
    Remove { path: String },
}

impl Edit {
    fn path(&self) -> &str {
        match self {
            Edit::Set { path, .. } | Edit::Remove { path } => path,
        }
    }
}

/// What editing the file changed, per edit: the value before (its YAML text) and after.
#[derive(Debug, Clone)]
struct Applied {
    path: String,
    before: Option<String>,
    after: Option<Value>,
}

/// Applies `edits` to the YAML `text`, keeping comments and layout. Errors name the file and
/// the path.
fn edit_yaml(file: &str, text: &str, edits: &[Edit]) -> Result<(String, Vec<Applied>), String> {
    if documents(text) > 1 {
        return Err(format!(
            "{file} holds several YAML documents (`---`); this action edits single-document files"
        ));
    }
    let mut doc =
        yamlpath::Document::new(text).map_err(|e| format!("{file} is not valid YAML: {e}"))?;
    let mut applied = Vec::new();
    for edit in edits {
        let segs = parse_path(edit.path()).map_err(|e| format!("{file}: {e}"))?;
        let r = route(&segs);
        let existing = if doc.query_exists(&r) {
            Some(match doc.query_exact(&r) {
                Ok(Some(f)) => doc.extract(&f).trim().to_owned(),
                _ => String::new(),
            })
        } else {
            None
        };
        let parent = route(&segs[..segs.len() - 1]);
        if existing.is_none() && segs.len() > 1 && !doc.query_exists(&parent) {
            return Err(format!(
                "{file}: {} does not exist (nothing at {})",
                edit.path(),
                shown_path(&segs[..segs.len() - 1])
            ));
        }
        let op = match (edit, &existing) {
            (Edit::Set { value, .. }, Some(_)) => {
                Some((r, yamlpatch::Op::Replace(to_yaml(value)?)))
            }
            (Edit::Set { value, .. }, None) => match segs.last() {
                Some(Seg::Key(k)) => Some((
                    parent,
                    yamlpatch::Op::Add {
                        key: k.clone(),
                        value: to_yaml(value)?,
                    },
                )),
                _ => {
                    return Err(format!(
                        "{file}: {} does not exist (a list item cannot be added by index)",
                        edit.path()
                    ));
                }
            },
            (Edit::Remove { .. }, Some(_)) => Some((r, yamlpatch::Op::Remove)),
            // Already absent: nothing to remove.
            (Edit::Remove { .. }, None) => None,
        };
        let after = match edit {
            Edit::Set { value, .. } => Some(value.clone()),
            Edit::Remove { .. } => None,
        };
        if let Some((route, operation)) = op {
            let unchanged = matches!(edit, Edit::Set { value, .. }
                if existing.as_deref().is_some_and(|e| same_scalar(e, value)));
            if !unchanged {
                doc = yamlpatch::apply_yaml_patches(&doc, &[yamlpatch::Patch { route, operation }])
                    .map_err(|e| format!("{file}: cannot edit {}: {e}", edit.path()))?;
            }
        }
        applied.push(Applied {
            path: edit.path().to_owned(),
            before: existing,
            after,
        });
    }
    Ok((doc.source().to_owned(), applied))
}

/// Whether the YAML text of a scalar already spells `value` (so setting it changes nothing,
/// and a re-run does not rewrite `"0"` as `0`).
fn same_scalar(text: &str, value: &Value) -> bool {
    let parsed: Option<Value> = serde_saphyr::from_str(text).ok();
    parsed.as_ref() == Some(value)
}

/// Number of YAML documents in `text` (a `---` after content starts another).
fn documents(text: &str) -> usize {
    let mut docs = 0;
    let mut content = false;
    for line in text.lines() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            if content {
                docs += 1;
            }
            content = false;
        } else if !t.trim_start().is_empty() && !t.trim_start().starts_with('#') {
            content = true;
        }
    }
    docs + usize::from(content)
}

fn shown_path(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) if k.contains(['.', '[', ']']) => s.push_str(&format!("[\"{k}\"]")),
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(n) => s.push_str(&format!("[{n}]")),
        }
    }
    if s.is_empty() {
        "the top".to_owned()
    } else {
        s
    }
}

fn to_yaml(v: &Value) -> Result<yaml_serde::Value, String> {
    yaml_serde::to_value(v).map_err(|e| format!("value {v} cannot be written as YAML: {e}"))
}

/// The unified diff of `old` → `new` for `path`.
fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

/// Everything a step needs, with templates rendered.
#[derive(Debug, Clone)]
struct Rendered {
    repo: RepoName,
    path: String,
    edits: Vec<Edit>,
    base: Option<String>,
    title: String,
    body: String,
    labels: Vec<String>,
    branch: String,
    commit_message: String,
}

fn template_context(input: &StepInput<'_>) -> minijinja::Value {
    let finding = serde_json::to_value(input.finding).unwrap_or(Value::Null);
    let target = input
        .finding
        .resources
        .first()
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or(Value::Null);
    minijinja::Value::from(minijinja::value::Serde(json!({
        "finding": finding,
        "target": target,
        "playbook": input.playbook,
        "step": input.step,
    })))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

fn render(
    env: &Environment<'_>,
    field: &str,
    template: &str,
    ctx: &minijinja::Value,
) -> Result<String, ActionError> {
    env.render_str(template, ctx.clone()).map_err(|e| {
        ActionError::Permanent(format!(
            "with.{field}: the template `{template}` cannot be rendered for this finding: {}",
            crate::redact::scrub(&e.to_string())
        ))
    })
}

/// A branch name from the playbook and the step's idempotency key: the same for every run of
/// this step for this finding.
fn branch_name(playbook: &str, key: &str) -> String {
    let slug: String = playbook
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "firebreak/{}-{}",
        slug.trim_matches('-'),
        &key[..key.len().min(12)]
    )
}

fn describe(edits: &[Edit]) -> String {
    edits
        .iter()
        .map(|e| match e {
            Edit::Set { path, value } => format!("set {path} to {value}"),
            Edit::Remove { path } => format!("remove {path}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn rendered(input: &StepInput<'_>) -> Result<Rendered, ActionError> {
    let p = typed_params::<Params>(input.params)
        .map_err(|p| ActionError::Permanent(render_problems(&p)))?;
    let env = environment();
    let ctx = template_context(input);
    let repo = RepoName::parse(&render(&env, "repo", &p.repo, &ctx)?)
        .map_err(|e| ActionError::Permanent(format!("with.repo: {e}")))?;
    let path = render(&env, "path", &p.path, &ctx)?
        .trim()
        .trim_start_matches('/')
        .to_owned();
    if path.is_empty() || path.split('/').any(|s| s.is_empty() || s == "..") {
        return Err(ActionError::Permanent(format!(
            "with.path: `{path}` is not a file path in the repository"
        )));
    }
    let mut edits = Vec::new();
    for (k, v) in &p.set {
        let value = match v {
            Value::String(s) => Value::String(render(&env, &format!("set.{k}"), s, &ctx)?),
            other => other.clone(),
        };
        edits.push(Edit::Set {
            path: k.clone(),
            value,
        });
    }
    for k in &p.remove {
        edits.push(Edit::Remove { path: k.clone() });
    }
    let what = describe(&edits);
    let title = match &p.title {
        Some(t) => render(&env, "title", t, &ctx)?,
        None => format!("Firebreak: {what} in {path}"),
    };
    let title = cut(&crate::redact::scrub(title.trim()), MAX_TITLE);
    let f = input.finding;
    let body = match &p.body {
        Some(b) => render(&env, "body", b, &ctx)?,
        None => format!(
            "Firebreak changed this at runtime for the finding **{}** ({} `{}`, severity {}), \
             playbook `{}`. This pull request makes the change permanent in Git, so that GitOps \
             (Argo CD, Flux) keeps it instead of undoing it.\n\nChanges to `{path}`:\n{}\n\n\
             Finding `{}`.",
            f.title,
            f.source,
            f.rule,
            serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            input.playbook,
            edits
                .iter()
                .map(|e| match e {
                    Edit::Set { path, value } => format!("- set `{path}` to `{value}`"),
                    Edit::Remove { path } => format!("- remove `{path}`"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            f.id,
        ),
    };
    let key = input.idempotency_key();
    let body = format!(
        "{}\n\n<!-- firebreak:open-pull-request key={key} -->\n",
        crate::redact::scrub(body.trim())
    );
    Ok(Rendered {
        branch: branch_name(input.playbook, &key),
        commit_message: format!(
            "{title}\n\nPlaybook: {}\nFinding: {}\n",
            input.playbook, f.id
        ),
        repo,
        path,
        edits,
        base: p.base,
        title,
        body,
        labels: p.labels,
    })
}

/// A file read from the repository.
#[derive(Debug, Clone)]
struct FileAt {
    text: String,
    blob: String,
}

/// The live state a plan and an apply read.
#[derive(Debug, Clone)]
struct Live {
    base: String,
    base_sha: String,
    file: FileAt,
    branch_sha: Option<String>,
    branch_file: Option<FileAt>,
    pull: Option<OpenPull>,
}

#[derive(Debug, Clone)]
struct OpenPull {
    number: u64,
    url: String,
    title: String,
    body: String,
    labels: Vec<String>,
}

async fn ref_sha(
    gh: &GitHub,
    repo: &RepoName,
    branch: &str,
) -> Result<Option<String>, ActionError> {
    match gh
        .octocrab()
        .repos(&repo.owner, &repo.name)
        .get_ref(&Reference::Branch(branch.to_owned()))
        .await
    {
        Ok(r) => match r.object {
            octocrab::models::repos::Object::Commit { sha, .. } => Ok(Some(sha)),
            _ => Err(ActionError::Permanent(format!(
                "{}: refs/heads/{branch} does not point at a commit",
                repo.shown()
            ))),
        },
        Err(e) if error_status(&e) == Some(404) => Ok(None),
        Err(e) => Err(github_error(
            &format!("reading branch {branch} of {}", repo.shown()),
            &e,
        )),
    }
}

async fn read_file(
    gh: &GitHub,
    repo: &RepoName,
    path: &str,
    at: &str,
) -> Result<Option<FileAt>, ActionError> {
    let items = match gh
        .octocrab()
        .repos(&repo.owner, &repo.name)
        .get_content()
        .path(path)
        .r#ref(at)
        .send()
        .await
    {
        Ok(mut c) => c.take_items(),
        Err(e) if error_status(&e) == Some(404) => return Ok(None),
        Err(e) => {
            return Err(github_error(
                &format!("reading {path} in {}", repo.shown()),
                &e,
            ));
        }
    };
    let Some(item) = items
        .into_iter()
        .find(|i| i.r#type == "file" && i.path == path)
    else {
        return Err(ActionError::Permanent(format!(
            "{}: {path} is a directory, not a file",
            repo.shown()
        )));
    };
    let raw: Vec<u8> = item
        .content
        .unwrap_or_default()
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let bytes = base64::prelude::BASE64_STANDARD.decode(raw).map_err(|e| {
        ActionError::Permanent(format!(
            "{}: GitHub sent {path} in an encoding that is not base64: {e}",
            repo.shown()
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ActionError::Permanent(format!("{}: {path} is not UTF-8 text", repo.shown()))
    })?;
    Ok(Some(FileAt {
        text,
        blob: item.sha,
    }))
}

async fn open_pull(
    gh: &GitHub,
    repo: &RepoName,
    branch: &str,
) -> Result<Option<OpenPull>, ActionError> {
    let page = gh
        .octocrab()
        .pulls(&repo.owner, &repo.name)
        .list()
        .state(octocrab::params::State::Open)
        .head(format!("{}:{branch}", repo.owner))
        .send()
        .await
        .map_err(|e| github_error(&format!("listing pull requests of {}", repo.shown()), &e))?;
    Ok(page
        .items
        .into_iter()
        .find(|p| p.head.ref_field == branch)
        .map(|p| OpenPull {
            number: p.number,
            url: p.html_url.map(|u| u.to_string()).unwrap_or(p.url),
            title: p.title.unwrap_or_default(),
            body: p.body.unwrap_or_default(),
            labels: p
                .labels
                .unwrap_or_default()
                .into_iter()
                .map(|l| l.name)
                .collect(),
        }))
}

async fn read_live(gh: &GitHub, r: &Rendered) -> Result<Live, ActionError> {
    let repo = &r.repo;
    let base = match &r.base {
        Some(b) => b.clone(),
        None => gh
            .octocrab()
            .repos(&repo.owner, &repo.name)
            .get()
            .await
            .map_err(|e| github_error(&format!("reading repository {}", repo.shown()), &e))?
            .default_branch
            .unwrap_or_else(|| "main".to_owned()),
    };
    let base_sha = ref_sha(gh, repo, &base).await?.ok_or_else(|| {
        ActionError::Permanent(format!(
            "{}: the base branch {base} does not exist",
            repo.shown()
        ))
    })?;
    let file = read_file(gh, repo, &r.path, &base_sha)
        .await?
        .ok_or_else(|| {
            ActionError::Permanent(format!(
                "{}: {} does not exist on branch {base}; nothing was changed",
                repo.shown(),
                r.path
            ))
        })?;
    let branch_sha = ref_sha(gh, repo, &r.branch).await?;
    let branch_file = match &branch_sha {
        Some(sha) => read_file(gh, repo, &r.path, sha).await?,
        None => None,
    };
    let pull = open_pull(gh, repo, &r.branch).await?;
    Ok(Live {
        base,
        base_sha,
        file,
        branch_sha,
        branch_file,
        pull,
    })
}

fn target_key(r: &Rendered) -> String {
    ResourceRef::GithubRepository {
        owner: r.repo.owner.clone(),
        repo: r.repo.name.clone(),
        path: Some(r.path.clone()),
        alert_number: None,
    }
    .key()
}

/// The file wanted on the branch, and what each edit changes; a plan-time error names the file
/// and the path.
fn wanted(r: &Rendered, live: &Live) -> Result<(String, Vec<Applied>), ActionError> {
    edit_yaml(
        &format!("{}:{}", r.repo.shown(), r.path),
        &live.file.text,
        &r.edits,
    )
    .map_err(|e| ActionError::Permanent(format!("{e}; nothing was changed")))
}

impl GithubOpenPullRequest {
    fn draft(r: &Rendered, live: &Live) -> Result<PlanDraft, ActionError> {
        let (desired, applied) = wanted(r, live)?;
        let shown = format!("{}:{}", r.repo.shown(), r.path);
        let observed = json!({
            "repository": r.repo.shown(),
            "path": r.path,
            "base": live.base,
            "base_blob": live.file.blob,
            "branch": r.branch,
            "branch_blob": live.branch_file.as_ref().map(|f| f.blob.clone()),
            "pull_request": live.pull.as_ref().map(|p| p.number),
        });
        let before_values: BTreeMap<&str, Option<&str>> = applied
            .iter()
            .map(|a| (a.path.as_str(), a.before.as_deref()))
            .collect();
        let after_values: BTreeMap<&str, Option<&Value>> = applied
            .iter()
            .map(|a| (a.path.as_str(), a.after.as_ref()))
            .collect();
        let before = json!({"file": shown, "values": before_values});
        if desired == live.file.text {
            return Ok(PlanDraft {
                target: target_key(r),
                summary: format!(
                    "{shown} on {} already has {}: nothing to make permanent",
                    live.base,
                    describe(&r.edits)
                ),
                observed,
                after: before.clone(),
                before,
                noop: true,
                ..PlanDraft::default()
            });
        }
        let diff = unified_diff(&r.path, &live.file.text, &desired);
        let branch_current = live.branch_file.as_ref().is_some_and(|f| f.text == desired);
        let pull_current = live.pull.as_ref().is_some_and(|p| {
            p.title == r.title
                && p.body.trim() == r.body.trim()
                && r.labels.iter().all(|l| p.labels.contains(l))
        });
        let mut changes: Vec<Change> = applied
            .iter()
            .filter(|a| match (&a.before, &a.after) {
                (Some(b), Some(v)) => !same_scalar(b, v),
                (None, None) => false,
                _ => true,
            })
            .map(|a| Change {
                op: match (&a.before, &a.after) {
                    (None, _) => "create",
                    (_, None) => "delete",
                    _ => "update",
                }
                .to_owned(),
                path: format!("{shown} {}", a.path),
                from: a.before.clone().map(Value::String),
                to: a.after.clone(),
            })
            .collect();
        if live.branch_sha.is_none() {
            changes.push(Change {
                op: "create".into(),
                path: format!(
                    "{} branch {} (from {})",
                    r.repo.shown(),
                    r.branch,
                    live.base
                ),
                from: None,
                to: None,
            });
        }
        if !branch_current {
            changes.push(Change {
                op: "update".into(),
                path: format!("{} commit on {}: {}", r.repo.shown(), r.branch, r.path),
                from: None,
                to: Some(Value::String(diff.clone())),
            });
        }
        match &live.pull {
            None => changes.push(Change {
                op: "create".into(),
                path: format!(
                    "{} pull request {} → {}: {}",
                    r.repo.shown(),
                    r.branch,
                    live.base,
                    r.title
                ),
                from: None,
                to: None,
            }),
            Some(p) if !pull_current => changes.push(Change {
                op: "update".into(),
                path: format!(
                    "{} pull request #{} title, body and labels",
                    r.repo.shown(),
                    p.number
                ),
                from: None,
                to: None,
            }),
            Some(_) => {}
        }
        let noop = branch_current && pull_current;
        let summary = match (&live.pull, noop) {
            (Some(p), true) => format!(
                "pull request #{} in {} already proposes {} in {}",
                p.number,
                r.repo.shown(),
                describe(&r.edits),
                r.path
            ),
            (Some(p), false) => format!(
                "update pull request #{} in {} (branch {}) to {} in {}",
                p.number,
                r.repo.shown(),
                r.branch,
                describe(&r.edits),
                r.path
            ),
            (None, _) => format!(
                "open a pull request in {} (branch {} into {}) to {} in {}",
                r.repo.shown(),
                r.branch,
                live.base,
                describe(&r.edits),
                r.path
            ),
        };
        Ok(PlanDraft {
            target: target_key(r),
            summary,
            observed,
            before,
            after: json!({
                "file": shown,
                "values": after_values,
                "diff": diff,
                "branch": r.branch,
                "pull_request": {
                    "number": live.pull.as_ref().map(|p| p.number),
                    "title": r.title,
                    "base": live.base,
                    "labels": r.labels,
                },
            }),
            changes,
            noop,
            ..PlanDraft::default()
        })
    }
}

/// What rollback needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    owner: String,
    repo: String,
    branch: String,
    pull_request: u64,
}

impl Action for GithubOpenPullRequest {
    fn kind(&self) -> &'static str {
        "github.open-pull-request"
    }

    fn summary(&self) -> &'static str {
        "make a fix permanent in the GitOps repository: a branch, a commit editing a YAML manifest \
         (comments and layout kept) and a pull request"
    }

    fn reversible(&self) -> bool {
        true
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[
            Permission::new("github", "metadata:read"),
            Permission::new("github", "contents:write"),
            Permission::new("github", "pull_requests:write"),
        ];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "repo: org/deploy\n\
         path: \"apps/{{ target.namespace }}/{{ target.name }}.yaml\"\n\
         set: { spec.replicas: 0 }\n\
         remove: [\"spec.template.spec.hostNetwork\"]\n\
         labels: [firebreak]\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        let p = match typed_params::<Params>(params) {
            Ok(p) => p,
            Err(problems) => return problems,
        };
        let mut out = Vec::new();
        let env = environment();
        let mut template = |field: String, source: &str| {
            if let Err(e) = env.template_from_str(source) {
                out.push(ParamProblem {
                    path: field,
                    message: format!("not a valid template: {e}"),
                    hint: Some("templates use minijinja: `{{ target.namespace }}`".into()),
                });
            }
        };
        template("repo".into(), &p.repo);
        template("path".into(), &p.path);
        if let Some(t) = &p.title {
            template("title".into(), t);
        }
        if let Some(b) = &p.body {
            template("body".into(), b);
        }
        for (k, v) in &p.set {
            if let Value::String(s) = v {
                template(format!("set.{k}"), s);
            }
        }
        if !p.repo.contains("{{")
            && let Err(e) = RepoName::parse(&p.repo)
        {
            out.push(ParamProblem {
                path: "repo".into(),
                message: e,
                hint: Some("write owner/name, e.g. org/deploy".into()),
            });
        }
        for (field, path) in p.set.keys().map(|k| (format!("set.{k}"), k)).chain(
            p.remove
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("remove[{i}]"), k)),
        ) {
            if let Err(e) = parse_path(path) {
                out.push(ParamProblem {
                    path: field,
                    message: e,
                    hint: Some(
                        "dotted keys, `[0]` for list items, `[\"a.b/c\"]` for keys with dots"
                            .into(),
                    ),
                });
            }
        }
        if p.set.is_empty() && p.remove.is_empty() {
            out.push(ParamProblem {
                path: String::new(),
                message: "nothing to change: no `set` and no `remove`".into(),
                hint: Some("e.g. set: { spec.replicas: 0 }".into()),
            });
        }
        if let Some(b) = &p.base
            && (b.is_empty() || b.contains(' ') || b.contains(".."))
        {
            out.push(ParamProblem {
                path: "base".into(),
                message: format!("`{b}` is not a branch name"),
                hint: None,
            });
        }
        out
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let r = rendered(&input)?;
            let gh = match connection(ctx) {
                Ok(gh) => gh,
                Err(why) => {
                    let what = format!(
                        "open a pull request in {} to {} in {}",
                        r.repo.shown(),
                        describe(&r.edits),
                        r.path
                    );
                    return Ok(not_connected_plan(self, target_key(&r), &what, &why));
                }
            };
            let live = read_live(gh, &r).await?;
            Ok(Self::draft(&r, &live)?.finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let r = rendered(&input)?;
            let gh = connected(ctx)?;
            let live = read_live(gh, &r).await?;
            let planned = plan.observed["base_blob"].as_str().unwrap_or_default();
            if live.file.blob != planned {
                return Err(ActionError::Drift(format!(
                    "{}:{} on {} changed since planning (blob {planned} → {})",
                    r.repo.shown(),
                    r.path,
                    live.base,
                    live.file.blob
                )));
            }
            let (desired, _) = wanted(&r, &live)?;
            let repo = &r.repo;
            let mut wrote = false;
            let outcome = |result: &str, number: Option<u64>, url: Option<String>| Outcome {
                action: self.kind().to_owned(),
                target: plan.target.clone(),
                result: result.to_owned(),
                detail: json!({
                    "repository": repo.shown(),
                    "path": r.path,
                    "branch": r.branch,
                    "pull_request": number,
                    "url": url,
                }),
                undo: number.and_then(|n| {
                    serde_json::to_value(Undo {
                        owner: repo.owner.clone(),
                        repo: repo.name.clone(),
                        branch: r.branch.clone(),
                        pull_request: n,
                    })
                    .ok()
                }),
            };
            if desired == live.file.text {
                // Already permanent on the base branch (merged, or fixed by hand).
                return Ok(outcome("unchanged", None, None));
            }
            let repos = gh.octocrab().repos(&repo.owner, &repo.name);
            let branch_file = match live.branch_sha {
                Some(_) => live.branch_file.clone(),
                None => {
                    repos
                        .create_ref(&Reference::Branch(r.branch.clone()), live.base_sha.clone())
                        .await
                        .map_err(|e| {
                            github_error(
                                &format!("creating branch {} in {}", r.branch, repo.shown()),
                                &e,
                            )
                        })?;
                    wrote = true;
                    Some(live.file.clone())
                }
            };
            if branch_file.as_ref().is_none_or(|f| f.text != desired) {
                let put = match &branch_file {
                    Some(f) => repos.update_file(&r.path, &r.commit_message, &desired, &f.blob),
                    None => repos.create_file(&r.path, &r.commit_message, &desired),
                };
                put.branch(&r.branch).send().await.map_err(|e| {
                    github_error(
                        &format!("committing {} to {} in {}", r.path, r.branch, repo.shown()),
                        &e,
                    )
                })?;
                wrote = true;
            }
            let pulls = gh.octocrab().pulls(&repo.owner, &repo.name);
            let pull = match live.pull.clone() {
                Some(p) => {
                    if p.title != r.title || p.body.trim() != r.body.trim() {
                        let route =
                            format!("/repos/{}/{}/pulls/{}", repo.owner, repo.name, p.number);
                        gh.octocrab()
                            .patch::<octocrab::models::pulls::PullRequest, _, _>(
                                route,
                                Some(&json!({"title": r.title, "body": r.body})),
                            )
                            .await
                            .map_err(|e| {
                                github_error(
                                    &format!(
                                        "updating pull request #{} in {}",
                                        p.number,
                                        repo.shown()
                                    ),
                                    &e,
                                )
                            })?;
                        wrote = true;
                    }
                    p
                }
                None => {
                    let created = pulls
                        .create(&r.title, &r.branch, &live.base)
                        .body(&r.body)
                        .send()
                        .await;
                    match created {
                        Ok(p) => {
                            wrote = true;
                            OpenPull {
                                number: p.number,
                                url: p.html_url.map(|u| u.to_string()).unwrap_or(p.url),
                                title: r.title.clone(),
                                body: r.body.clone(),
                                labels: Vec::new(),
                            }
                        }
                        // Opened meanwhile (a concurrent retry): use it.
                        Err(e) if error_status(&e) == Some(422) => {
                            open_pull(gh, repo, &r.branch).await?.ok_or_else(|| {
                                github_error(
                                    &format!("opening a pull request in {}", repo.shown()),
                                    &e,
                                )
                            })?
                        }
                        Err(e) => {
                            return Err(github_error(
                                &format!("opening a pull request in {}", repo.shown()),
                                &e,
                            ));
                        }
                    }
                }
            };
            let missing: Vec<String> = r
                .labels
                .iter()
                .filter(|l| !pull.labels.contains(l))
                .cloned()
                .collect();
            if !missing.is_empty() {
                gh.octocrab()
                    .issues(&repo.owner, &repo.name)
                    .add_labels(pull.number, &missing)
                    .await
                    .map_err(|e| {
                        github_error(
                            &format!(
                                "labelling pull request #{} in {}",
                                pull.number,
                                repo.shown()
                            ),
                            &e,
                        )
                    })?;
                wrote = true;
            }
            Ok(outcome(
                if wrote { "applied" } else { "unchanged" },
                Some(pull.number),
                Some(pull.url),
            ))
        })
    }

    fn rollback<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let Some(undo) = undo_of::<Undo>(outcome)? else {
                return Ok(());
            };
            let gh = connected(ctx)?;
            let repo = RepoName {
                owner: undo.owner.clone(),
                name: undo.repo.clone(),
            };
            let route = format!(
                "/repos/{}/{}/pulls/{}",
                undo.owner, undo.repo, undo.pull_request
            );
            let pr: octocrab::models::pulls::PullRequest =
                gh.octocrab().get(&route, None::<&()>).await.map_err(|e| {
                    github_error(
                        &format!(
                            "reading pull request #{} in {}",
                            undo.pull_request,
                            repo.shown()
                        ),
                        &e,
                    )
                })?;
            let merged = pr.merged_at.is_some();
            if merged {
                return Err(ActionError::Permanent(format!(
                    "pull request #{} in {} was merged: the change is in the base branch; revert \
                     it there",
                    undo.pull_request,
                    repo.shown()
                )));
            }
            if pr.state != Some(octocrab::models::IssueState::Closed) {
                gh.octocrab()
                    .patch::<octocrab::models::pulls::PullRequest, _, _>(
                        &route,
                        Some(&json!({"state": "closed"})),
                    )
                    .await
                    .map_err(|e| {
                        github_error(
                            &format!(
                                "closing pull request #{} in {}",
                                undo.pull_request,
                                repo.shown()
                            ),
                            &e,
                        )
                    })?;
            }
            match gh
                .octocrab()
                .repos(&undo.owner, &undo.repo)
                .delete_ref(&Reference::Branch(undo.branch.clone()))
                .await
            {
                Ok(()) => Ok(()),
                // Deleted already.
                Err(e) if error_status(&e) == Some(422) || error_status(&e) == Some(404) => Ok(()),
                Err(e) => Err(github_error(
                    &format!("deleting branch {} in {}", undo.branch, repo.shown()),
                    &e,
                )),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MANIFEST: &str = "\
# The API deployment (owned by team web).
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api   # keep in sync with the Service
  annotations:
    firebreak.dev/owner: web
spec:
  replicas: 3 # scaled by HPA in prod
  template:
    spec:
      hostNetwork: true
      containers:
        - name: api
          image: \"ghcr.io/org/api:1.2\"
";

    #[test]
    fn paths_parse_keys_indexes_and_quoted_keys() {
        assert_eq!(
            parse_path("spec.template.spec.containers[0].image").unwrap(),
            vec![
                Seg::Key("spec".into()),
                Seg::Key("template".into()),
                Seg::Key("spec".into()),
                Seg::Key("containers".into()),
                Seg::Index(0),
                Seg::Key("image".into()),
            ]
        );
        assert_eq!(
            parse_path("metadata.annotations[\"firebreak.dev/owner\"]").unwrap(),
            vec![
                Seg::Key("metadata".into()),
                Seg::Key("annotations".into()),
                Seg::Key("firebreak.dev/owner".into()),
            ]
        );
        for bad in ["", "a..b", "a.", ".a", "a[x]", "a[0", "a[\"\"]"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn edits_keep_comments_and_layout() {
        let edits = vec![
            Edit::Set {
                path: "spec.replicas".into(),
                value: json!(0),
            },
            Edit::Remove {
                path: "spec.template.spec.hostNetwork".into(),
            },
            Edit::Set {
                path: "spec.template.spec.containers[0].image".into(),
                value: json!("ghcr.io/org/api:1.3"),
            },
            Edit::Set {
                path: "metadata.annotations[\"firebreak.dev/reason\"]".into(),
                value: json!("cryptominer"),
            },
        ];
        let (out, applied) = edit_yaml("f.yaml", MANIFEST, &edits).unwrap();
        assert!(
            out.contains("# The API deployment (owned by team web)."),
            "{out}"
        );
        assert!(
            out.contains("name: api   # keep in sync with the Service"),
            "{out}"
        );
        assert!(out.contains("replicas: 0 # scaled by HPA in prod"), "{out}");
        assert!(!out.contains("hostNetwork"), "{out}");
        assert!(out.contains("ghcr.io/org/api:1.3"), "{out}");
        assert!(out.contains("firebreak.dev/reason: cryptominer"), "{out}");
        assert_eq!(applied[0].before.as_deref(), Some("3"));
        // Editing again changes nothing: the same value is not rewritten.
        let (again, _) = edit_yaml("f.yaml", &out, &edits).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn a_missing_parent_names_the_file_and_the_path() {
        let err = edit_yaml(
            "org/deploy:apps/web/api.yaml",
            MANIFEST,
            &[Edit::Set {
                path: "spec.strategy.type".into(),
                value: json!("Recreate"),
            }],
        )
        .unwrap_err();
        assert!(err.contains("org/deploy:apps/web/api.yaml"), "{err}");
        assert!(err.contains("spec.strategy.type"), "{err}");
        // A missing leaf is added, an absent key to remove is already removed.
        assert!(
            edit_yaml(
                "f",
                MANIFEST,
                &[Edit::Set {
                    path: "spec.paused".into(),
                    value: json!(true)
                }]
            )
            .is_ok()
        );
        let (same, _) = edit_yaml(
            "f",
            MANIFEST,
            &[Edit::Remove {
                path: "spec.paused".into(),
            }],
        )
        .unwrap();
        assert_eq!(same, MANIFEST);
    }

    #[test]
    fn multi_document_files_are_refused() {
        let err = edit_yaml(
            "f.yaml",
            "a: 1\n---\nb: 2\n",
            &[Edit::Remove { path: "a".into() }],
        )
        .unwrap_err();
        assert!(err.contains("several YAML documents"), "{err}");
        assert_eq!(documents("---\n# c\na: 1\n"), 1);
    }

    #[test]
    fn branch_names_are_stable_and_safe() {
        assert_eq!(
            branch_name("stop cryptominer!", "0123456789abcdef"),
            "firebreak/stop-cryptominer-0123456789ab"
        );
    }
}
