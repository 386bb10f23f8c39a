//! Voting on approval requests the way an allowed reviewer does, for tests of what follows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use firebreak::store::{Store, Vote, VoteOutcome, now_ms};

/// A vote by `by` for `verdict` (`approved`, `changes_requested`).
pub fn vote(by: &str, verdict: &str) -> Vote {
    Vote {
        by: by.into(),
        via: "test".into(),
        verdict: verdict.into(),
        at: now_ms(),
    }
}

/// Approves an execution's current plan with as many distinct reviewers as it needs; returns
/// the plan hash approved.
pub async fn approve_plan<S: Store>(store: &S, execution_id: &str) -> String {
    let req = store
        .approval(execution_id)
        .await
        .unwrap()
        .expect("the execution waits for approval of its plan");
    let hash = req.request.plan_hash.clone();
    let mut last = None;
    for i in 0..req.request.min {
        last = Some(
            store
                .vote(
                    execution_id,
                    &hash,
                    &vote(&format!("reviewer-{i}"), "approved"),
                )
                .await
                .unwrap(),
        );
    }
    assert_eq!(last, Some(VoteOutcome::Approved));
    hash
}
