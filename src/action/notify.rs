//! Notification actions. (Being written.)
use serde_json::Value;

use super::{
    Action, ActionCtx, ActionError, BoxFuture, Outcome, ParamProblem, Permission, Plan, StepInput,
};

/// `notify.webhook`: POSTs the finding summary and the plan or outcome as JSON.
pub struct NotifyWebhook;

impl Action for NotifyWebhook {
    fn kind(&self) -> &'static str {
        "notify.webhook"
    }
    fn summary(&self) -> &'static str {
        "POST the finding and the plan or outcome as JSON to a webhook"
    }
    fn reversible(&self) -> bool {
        false
    }
    fn permissions(&self) -> &'static [Permission] {
        &[]
    }
    fn example(&self) -> &'static str {
        "url: https://hooks.example.com/firebreak\n"
    }
    fn validate(&self, _params: &Value) -> Vec<ParamProblem> {
        Vec::new()
    }
    fn plan<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _input: StepInput<'a>,
    ) -> BoxFuture<'a, Result<Plan, ActionError>> {
        Box::pin(async { Err(ActionError::Permanent("not yet implemented".into())) })
    }
    fn apply<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _input: StepInput<'a>,
        _plan: &'a Plan,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async { Err(ActionError::Permanent("not yet implemented".into())) })
    }
    fn rollback<'a>(
        &'a self,
        _ctx: &'a ActionCtx,
        _outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async { Ok(()) })
    }
}
