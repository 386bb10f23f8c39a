//! Notification actions: `notify.webhook`.
//!
//! Owns building the JSON a webhook receives and sending it. Webhook URLs are secrets (Slack-style
//! URLs carry a token in their path), so nothing here prints one: plans, outcomes and errors name
//! the target as `scheme://host[:port]/…` or `endpoint:<name>`. Every string sent is scrubbed.
//! A notification cannot be unsent, so the action is not reversible; receivers de-duplicate
//! retries by the `Idempotency-Key` header, which is the same for every attempt of a step.

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Action, ActionCtx, ActionError, BoxFuture, Change, Outcome, ParamProblem, Permission, Plan,
    PlanDraft, StepInput, typed_params,
};

/// `notify.webhook`: POSTs the finding summary and the plan as JSON.
pub struct NotifyWebhook;

/// The `User-Agent` sent with every notification.
const USER_AGENT: &str = concat!("firebreak/", env!("CARGO_PKG_VERSION"));

/// `with:` parameters of `notify.webhook`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct WebhookParams {
    /// A literal `http`/`https` URL.
    #[serde(default)]
    url: Option<String>,
    /// The name of an endpoint under `notify.webhooks` in the configuration.
    #[serde(default)]
    endpoint: Option<String>,
    /// Which parts to send; default all.
    #[serde(default = "Include::all")]
    include: Vec<Include>,
}

/// A part of the notification body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Include {
    /// The finding summary (`finding`).
    Finding,
    /// The hash of the plan being applied (`plan_hash`).
    Plan,
}

impl Include {
    fn all() -> Vec<Include> {
        vec![Include::Finding, Include::Plan]
    }
}

/// Where a notification goes: the real URL (secret) and the name that may be shown.
struct Destination {
    url: Url,
    /// `scheme://host[:port]/…` or `endpoint:<name>`.
    shown: String,
}

/// Checks the parameters beyond their shape; every problem is returned.
fn check(params: &WebhookParams) -> Vec<ParamProblem> {
    let mut problems = Vec::new();
    match (&params.url, &params.endpoint) {
        (Some(_), Some(_)) => problems.push(ParamProblem {
            path: "endpoint".into(),
            message: "give either `url` or `endpoint`, not both".into(),
            hint: Some("use `endpoint` to keep the URL out of the playbook".into()),
        }),
        (None, None) => problems.push(ParamProblem {
            path: "url".into(),
            message: "one of `url` or `endpoint` is required".into(),
            hint: Some("name a configured endpoint (`notify.webhooks`) with `endpoint:`".into()),
        }),
        _ => {}
    }
    if let Some(url) = &params.url
        && let Err(message) = parse_url(url)
    {
        problems.push(ParamProblem {
            path: "url".into(),
            message,
            hint: Some("write an absolute URL such as https://hooks.example.com/firebreak".into()),
        });
    }
    if params
        .endpoint
        .as_deref()
        .is_some_and(|e| e.trim().is_empty())
    {
        problems.push(ParamProblem {
            path: "endpoint".into(),
            message: "the endpoint name is empty".into(),
            hint: None,
        });
    }
    problems
}

/// Parses a webhook URL. Messages never repeat the URL (it may carry a token).
fn parse_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme `{}`; expected http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    Ok(url)
}

/// `scheme://host[:port]/…`: the URL without userinfo, path or query, which may hold secrets.
fn redact_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = !url.username().is_empty()
        || url.password().is_some()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some();
    let tail = if hidden { "/…" } else { "/" };
    format!("{}://{host}{port}{tail}", url.scheme())
}

/// Resolves where the notification goes, from the literal URL or the configured endpoint.
fn destination(ctx: &ActionCtx, params: &WebhookParams) -> Result<Destination, ActionError> {
    let problems = check(params);
    if !problems.is_empty() {
        return Err(ActionError::Permanent(render_problems(&problems)));
    }
    if let Some(raw) = &params.url {
        let url = parse_url(raw).map_err(|m| ActionError::Permanent(format!("url: {m}")))?;
        let shown = redact_url(&url);
        return Ok(Destination { url, shown });
    }
    let name = params.endpoint.as_deref().unwrap_or_default();
    let Some(endpoint) = ctx.webhooks.get(name) else {
        let names: Vec<&str> = ctx.webhooks.keys().map(String::as_str).collect();
        let mut message = if names.is_empty() {
            format!(
                "unknown webhook endpoint `{name}`: no endpoints are configured (notify.webhooks)"
            )
        } else {
            format!(
                "unknown webhook endpoint `{name}`; configured: {}",
                names.join(", ")
            )
        };
        if let Some(m) = crate::error::did_you_mean(name, names.iter().copied()) {
            message = format!("{message} (did you mean `{m}`?)");
        }
        return Err(ActionError::Permanent(message));
    };
    let url = parse_url(endpoint.url.expose())
        .map_err(|m| ActionError::Permanent(format!("notify.webhooks.{name}.url: {m}")))?;
    Ok(Destination {
        url,
        shown: format!("endpoint:{name}"),
    })
}

fn render_problems(problems: &[ParamProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.path.is_empty() {
                p.message.clone()
            } else {
                format!("{}: {}", p.path, p.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn params_of(input: &StepInput<'_>) -> Result<WebhookParams, ActionError> {
    typed_params::<WebhookParams>(input.params)
        .map_err(|problems| ActionError::Permanent(render_problems(&problems)))
}

/// The JSON body a receiver gets (before `plan_hash` is added at apply), secrets scrubbed.
fn body(input: &StepInput<'_>, include: &[Include]) -> Value {
    let mut body = json!({
        "firebreak": env!("CARGO_PKG_VERSION"),
        "idempotency_key": input.idempotency_key(),
        "playbook": input.playbook,
        "step": input.step,
    });
    if include.contains(&Include::Finding) {
        let f = input.finding;
        body["finding"] = json!({
            "id": f.id.to_string(),
            "source": f.source,
            "rule": f.rule,
            "title": f.title,
            "severity": f.severity,
            "class": f.class,
            "resources": f.resources,
            "observed_at": f.observed_at,
        });
    }
    crate::redact::scrub_json(&mut body);
    body
}

impl Action for NotifyWebhook {
    fn kind(&self) -> &'static str {
        "notify.webhook"
    }

    fn summary(&self) -> &'static str {
        "POST the finding and the plan as JSON to a webhook"
    }

    /// Not reversible: a notification cannot be unsent.
    fn reversible(&self) -> bool {
        false
    }

    /// A message changes no resource: notifications about one target need not wait in line.
    fn locks_target(&self) -> bool {
        false
    }

    fn permissions(&self) -> &'static [Permission] {
        const PERMISSIONS: &[Permission] = &[Permission::new(
            "network",
            "POST to the configured webhook URL",
        )];
        PERMISSIONS
    }

    fn example(&self) -> &'static str {
        "endpoint: secops        # a name under notify.webhooks, or url: https://…\ninclude: [finding, plan]\n"
    }

    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(WebhookParams)
    }

    fn validate(&self, params: &Value) -> Vec<ParamProblem> {
        match typed_params::<WebhookParams>(params) {
            Ok(p) => check(&p),
            Err(problems) => problems,
        }
    }

    fn plan<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let body = body(&input, &params.include);
            let dest = match destination(ctx, &params) {
                Ok(d) => d,
                // A plan describes; it does not fail on configuration. An endpoint that is not
                // configured is shown plainly in the plan (dry-run) and makes apply fail.
                Err(ActionError::Permanent(why)) if params.url.is_none() => {
                    let name = params.endpoint.as_deref().unwrap_or_default();
                    let shown = format!("endpoint:{name}");
                    return Ok(PlanDraft {
                        other_targets: Vec::new(),
                        target: shown.clone(),
                        summary: format!(
                            "POST a JSON notification about {} to {shown}: NOT CONFIGURED, set \
                             notify.webhooks.{name}.url (applying fails until then){}",
                            input.finding.rule,
                            why.find(" (did you mean").map_or("", |i| &why[i..])
                        ),
                        observed: json!({ "endpoint_configured": false }),
                        before: Value::Null,
                        after: json!({ "sent": true }),
                        changes: vec![Change {
                            op: "send".into(),
                            path: shown,
                            from: None,
                            to: Some(body),
                        }],
                        noop: false,
                    }
                    .finish(self));
                }
                Err(e) => return Err(e),
            };
            Ok(PlanDraft {
                other_targets: Vec::new(),
                target: dest.shown.clone(),
                summary: format!(
                    "POST a JSON notification about {} to {}",
                    input.finding.rule, dest.shown
                ),
                observed: Value::Null,
                before: Value::Null,
                after: json!({ "sent": true }),
                changes: vec![Change {
                    op: "send".into(),
                    path: dest.shown,
                    from: None,
                    to: Some(body),
                }],
                noop: false,
            }
            .finish(self))
        })
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a ActionCtx,
        input: StepInput<'a>,
        plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let params = params_of(&input)?;
            let dest = destination(ctx, &params)?;
            let mut body = body(&input, &params.include);
            if params.include.contains(&Include::Plan) {
                body["plan_hash"] = Value::String(plan.hash.clone());
            }
            let key = input.idempotency_key();
            let response = ctx
                .http
                .post(dest.url)
                .timeout(ctx.http_timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::USER_AGENT, USER_AGENT)
                .header("Idempotency-Key", &key)
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| send_error(&dest.shown, &e))?;
            let status = response.status();
            // The body is never read into a message: receivers may echo secrets back.
            drop(response);
            classify(&dest.shown, status)?;
            Ok(Outcome {
                action: self.kind().to_owned(),
                target: dest.shown,
                result: "applied".into(),
                detail: json!({ "status": status.as_u16() }),
                undo: None,
            })
        })
    }

    /// Nothing to undo: a notification cannot be unsent.
    fn rollback<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A transport failure, named by the redacted target only (reqwest's own message holds the URL).
fn send_error(shown: &str, e: &reqwest::Error) -> ActionError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        return ActionError::Permanent(format!("POST to {shown} failed: too many redirects"));
    } else if e.is_builder() {
        return ActionError::Permanent(format!("POST to {shown} failed: invalid request"));
    } else {
        "failed in transit"
    };
    ActionError::Retryable(format!("POST to {shown} {what}"))
}

/// 2xx is success; 408, 429 and 5xx are worth retrying; anything else is permanent.
fn classify(shown: &str, status: StatusCode) -> Result<(), ActionError> {
    if status.is_success() {
        return Ok(());
    }
    let message = format!("POST to {shown} answered {status}");
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Err(ActionError::Retryable(message))
    } else {
        Err(ActionError::Permanent(message))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn problems(v: &Value) -> Vec<ParamProblem> {
        NotifyWebhook.validate(v)
    }

    #[test]
    fn accepts_a_url_or_an_endpoint() {
        assert_eq!(problems(&json!({"url": "https://hooks.example.com/x"})), []);
        assert_eq!(
            problems(&json!({"endpoint": "secops", "include": ["finding"]})),
            []
        );
    }

    #[test]
    fn both_url_and_endpoint_is_a_problem() {
        let p = problems(&json!({"url": "https://a.example/x", "endpoint": "secops"}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "endpoint");
    }

    #[test]
    fn neither_url_nor_endpoint_is_a_problem() {
        let p = problems(&Value::Null);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "url");
    }

    #[test]
    fn bad_scheme_is_a_problem_without_echoing_the_url() {
        let p = problems(&json!({"url": "ftp://files.example/SECRETPART"}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "url");
        assert!(p[0].message.contains("ftp"), "{p:?}");
        assert!(!p[0].message.contains("SECRETPART"), "{p:?}");
        let p = problems(&json!({"url": "not a url"}));
        assert_eq!(p[0].path, "url");
    }

    #[test]
    fn every_problem_is_returned() {
        let p = problems(&json!({"url": "gopher://x/", "endpoint": " "}));
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["endpoint", "url", "endpoint"], "{p:?}");
    }

    #[test]
    fn unknown_field_is_a_problem_with_its_path() {
        let p = problems(&json!({"url": "https://a.example/", "methd": "PUT"}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "methd", "{p:?}");
        assert!(p[0].message.contains("unknown field"), "{p:?}");
    }

    #[test]
    fn outcome_is_not_an_include_until_steps_carry_earlier_outcomes() {
        // The body cannot carry earlier steps' outcomes (the step input does not have them), so
        // `include: [outcome]` is refused at load rather than silently sending nothing.
        let p = problems(&json!({"url": "https://a.example/", "include": ["outcome"]}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "include[0]", "{p:?}");
    }

    #[test]
    fn unknown_include_is_a_problem_with_its_path() {
        let p = problems(&json!({"url": "https://a.example/", "include": ["finding", "evidence"]}));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "include[1]", "{p:?}");
    }

    #[test]
    fn redacted_url_keeps_only_scheme_host_and_port() {
        let r = |s: &str| redact_url(&Url::parse(s).unwrap());
        assert_eq!(
            r("https://hooks.slack.com/services/T0/B0/XYZ"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            r("http://user:pw@127.0.0.1:8080/?token=abc"),
            "http://127.0.0.1:8080/…"
        );
        assert_eq!(r("https://example.com"), "https://example.com/");
    }

    #[test]
    fn retry_policy_follows_the_status() {
        assert!(classify("x", StatusCode::OK).is_ok());
        assert!(classify("x", StatusCode::NO_CONTENT).is_ok());
        for s in [408, 429, 500, 502, 503] {
            let e = classify("x", StatusCode::from_u16(s).unwrap()).unwrap_err();
            assert!(e.is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            let e = classify("x", StatusCode::from_u16(s).unwrap()).unwrap_err();
            assert!(!e.is_retryable(), "{s}");
        }
    }
}
