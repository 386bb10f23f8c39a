-- Approval bound to the exact plan: an execution of a playbook with `approval:` is planned in
-- full (every step, read-only) and held with a request naming the hash of that plan. Votes name
-- the plan hash they approve; only votes for the current hash count, and `min` of them from
-- distinct allowed reviewers approve it. A plan that changed before it was applied is asked
-- again (revision + 1).
CREATE TABLE approval_requests (
    execution_id  TEXT PRIMARY KEY REFERENCES executions (id),
    plan_hash     TEXT NOT NULL,             -- sha256 over every step's plan
    plans         TEXT NOT NULL,             -- JSON: [{step, action, plan} | {step, action, error}]
    min_approvals INTEGER NOT NULL,
    reviewers     TEXT NOT NULL,             -- JSON array: users and @org/team
    channel       TEXT,                      -- github:owner/repo, or NULL (the CLI only)
    pr_number     INTEGER,                   -- the approval pull request, once opened
    head_sha      TEXT,                      -- its head commit when it shows this revision
    revision      INTEGER NOT NULL,
    state         TEXT NOT NULL,             -- pending | changes_requested | approved | expired | cancelled
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX approval_requests_pr ON approval_requests (channel, pr_number);
CREATE INDEX approval_requests_due ON approval_requests (state, expires_at);

CREATE TABLE approval_votes (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    plan_hash     TEXT NOT NULL,
    by            TEXT NOT NULL,             -- reviewer login, or the operator's name (CLI)
    via           TEXT NOT NULL,             -- github-review:<id>, github-merge:<pr>, cli
    verdict       TEXT NOT NULL,             -- approved | changes_requested
    at            INTEGER NOT NULL,
    PRIMARY KEY (execution_id, plan_hash, by)
);
