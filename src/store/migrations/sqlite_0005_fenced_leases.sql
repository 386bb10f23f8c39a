-- Fenced leases, pinned playbook revisions, and guards that count every target a plan changes.

-- Bumped by every claim of an execution. Every write about an execution names the lease owner
-- and this token; a write from a worker whose lease was taken over is refused.
ALTER TABLE executions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
-- The playbook revision (sha256 of its file text) the execution started with. NULL for
-- executions recorded before this migration: they follow the playbook in force by name.
ALTER TABLE executions ADD COLUMN playbook_rev TEXT;

-- The exact text of every playbook revision an execution started with, so a reload, an edit,
-- a rename or a removal never changes the steps of an execution in flight or scheduled.
CREATE TABLE playbook_revisions (
    revision      TEXT PRIMARY KEY,          -- sha256:<hex> of `source`
    name          TEXT NOT NULL,
    file          TEXT NOT NULL,
    source        TEXT NOT NULL,
    recorded_at   INTEGER NOT NULL
);

-- One row per execution and target it changed: a step's plan may change several resources
-- (a rotation: the key, the Secret and each rolled Deployment), and guards count them all.
CREATE TABLE acted_targets (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    playbook      TEXT NOT NULL,
    target        TEXT NOT NULL,
    at            INTEGER NOT NULL,
    PRIMARY KEY (execution_id, target)
);
INSERT INTO acted_targets (execution_id, playbook, target, at)
    SELECT execution_id, playbook, target, at FROM acted;
DROP TABLE acted;
ALTER TABLE acted_targets RENAME TO acted;
CREATE INDEX acted_window ON acted (playbook, at);
CREATE INDEX acted_target ON acted (playbook, target, at);
