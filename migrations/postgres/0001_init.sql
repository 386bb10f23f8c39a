-- Firebreak ledger, PostgreSQL: the schema SQLite reaches after its migrations 0001-0007, in one
-- step. Times are Unix milliseconds (BIGINT) taken from the database's clock, so every replica
-- compares leases and locks against the same clock.

CREATE TABLE findings (
    id            TEXT PRIMARY KEY,          -- ULID
    fingerprint   TEXT NOT NULL,
    source        TEXT NOT NULL,
    rule          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    class         TEXT NOT NULL,
    intake        TEXT NOT NULL,             -- where it arrived: route, queue, file
    received_at   BIGINT NOT NULL,
    body          TEXT NOT NULL,             -- the canonical finding as JSON (secrets scrubbed)
    state         TEXT NOT NULL,             -- new | matched
    lease_owner   TEXT,
    lease_until   BIGINT,
    scope         TEXT,                      -- NULL: the service's shared queue
    dry_run       BOOLEAN NOT NULL DEFAULT FALSE,
    audit_seq     BIGINT                     -- the batch's findings.received record
);
CREATE INDEX findings_work ON findings (state, scope, lease_until);
CREATE INDEX findings_fingerprint ON findings (fingerprint, received_at);

CREATE TABLE duplicates (
    finding_id    TEXT PRIMARY KEY REFERENCES findings (id),
    count         BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL
);

CREATE TABLE rejected (
    id            BIGSERIAL PRIMARY KEY,
    received_at   BIGINT NOT NULL,
    intake        TEXT NOT NULL,
    source        TEXT NOT NULL,
    parser        TEXT NOT NULL,
    record_index  BIGINT NOT NULL,
    line          BIGINT,
    pointer       TEXT NOT NULL,
    reason        TEXT NOT NULL
);

CREATE TABLE executions (
    id            TEXT PRIMARY KEY,          -- ULID
    finding_id    TEXT NOT NULL REFERENCES findings (id),
    playbook      TEXT NOT NULL,
    state         TEXT NOT NULL,
    reason        TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    lease_owner   TEXT,
    lease_until   BIGINT,
    wake_at       BIGINT,                    -- claimable again from then (NULL: now)
    approved_by   TEXT,
    fence         BIGINT NOT NULL DEFAULT 0, -- bumped by every claim
    playbook_rev  TEXT,
    UNIQUE (finding_id, playbook)
);
CREATE INDEX executions_work ON executions (state, lease_until, wake_at);

CREATE TABLE steps (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    idx           BIGINT NOT NULL,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL,
    plan          TEXT,
    plan_hash     TEXT,
    outcome       TEXT,
    error         TEXT,
    attempts      BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL,
    due_at        BIGINT,
    PRIMARY KEY (execution_id, idx)
);

CREATE TABLE audit (
    seq           BIGINT PRIMARY KEY,        -- no sequence: gaps are tampering
    at            BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    finding_id    TEXT,
    execution_id  TEXT,
    detail        TEXT NOT NULL,             -- JSON, secrets scrubbed
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);

CREATE TABLE meta (
    key           TEXT PRIMARY KEY,
    value         TEXT NOT NULL
);

CREATE TABLE acted (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    playbook      TEXT NOT NULL,
    target        TEXT NOT NULL,
    at            BIGINT NOT NULL,
    PRIMARY KEY (execution_id, target)
);
CREATE INDEX acted_window ON acted (playbook, at);
CREATE INDEX acted_target ON acted (playbook, target, at);

CREATE TABLE locks (
    key           TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    execution_id  TEXT NOT NULL,
    until         BIGINT NOT NULL
);

CREATE TABLE schedules (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    idx           BIGINT NOT NULL,
    action        TEXT NOT NULL,
    due_at        BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    fired_at      BIGINT,
    PRIMARY KEY (execution_id, idx)
);
CREATE INDEX schedules_due ON schedules (fired_at, due_at);

CREATE TABLE evidence (
    sha256        TEXT PRIMARY KEY,
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    step_idx      BIGINT NOT NULL,
    finding_id    TEXT NOT NULL,
    action        TEXT NOT NULL,
    recorded_at   BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX evidence_execution ON evidence (execution_id, step_idx);

CREATE TABLE playbook_revisions (
    revision      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    file          TEXT NOT NULL,
    source        TEXT NOT NULL,
    recorded_at   BIGINT NOT NULL
);

CREATE TABLE approval_requests (
    execution_id  TEXT PRIMARY KEY REFERENCES executions (id),
    plan_hash     TEXT NOT NULL,
    plans         TEXT NOT NULL,
    min_approvals BIGINT NOT NULL,
    reviewers     TEXT NOT NULL,
    channel       TEXT,
    pr_number     BIGINT,
    head_sha      TEXT,
    revision      BIGINT NOT NULL,
    state         TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    merge_approves BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX approval_requests_pr ON approval_requests (channel, pr_number);
CREATE INDEX approval_requests_due ON approval_requests (state, expires_at);

CREATE TABLE approval_votes (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    plan_hash     TEXT NOT NULL,
    "by"          TEXT NOT NULL,             -- reviewer login, or the operator's name (CLI)
    via           TEXT NOT NULL,
    verdict       TEXT NOT NULL,
    at            BIGINT NOT NULL,
    PRIMARY KEY (execution_id, plan_hash, "by")
);

CREATE TABLE github_deliveries (
    id            TEXT PRIMARY KEY,
    event         TEXT NOT NULL,
    received_at   BIGINT NOT NULL
);
