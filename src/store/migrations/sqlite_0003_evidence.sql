-- Evidence bundles (kubernetes.capture-evidence, kubernetes.delete-pod), content-addressed. The
-- step's outcome and its audit line keep the bundle's sha256 and size; the bundle itself
-- (redacted before it left the action) is kept here, once per content.
CREATE TABLE evidence (
    sha256        TEXT PRIMARY KEY,          -- sha256:<hex> of `body`
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    step_idx      INTEGER NOT NULL,
    finding_id    TEXT NOT NULL,
    action        TEXT NOT NULL,
    recorded_at   INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    body          TEXT NOT NULL              -- canonical JSON, secrets scrubbed
);
CREATE INDEX evidence_execution ON evidence (execution_id, step_idx);
