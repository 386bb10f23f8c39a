-- Firebreak ledger, SQLite. Times are Unix milliseconds (INTEGER) for comparisons and indexes.

CREATE TABLE findings (
    id            TEXT PRIMARY KEY,          -- ULID
    fingerprint   TEXT NOT NULL,
    source        TEXT NOT NULL,
    rule          TEXT NOT NULL,
    severity      TEXT NOT NULL,
    class         TEXT NOT NULL,
    intake        TEXT NOT NULL,             -- where it arrived: route, queue, file
    received_at   INTEGER NOT NULL,
    body          TEXT NOT NULL,             -- the canonical finding as JSON (secrets scrubbed)
    state         TEXT NOT NULL,             -- new | matched
    lease_owner   TEXT,
    lease_until   INTEGER
);
CREATE INDEX findings_work ON findings (state, lease_until);
CREATE INDEX findings_fingerprint ON findings (fingerprint, received_at);

-- Duplicates within the dedup window are counted here instead of being stored again.
CREATE TABLE duplicates (
    finding_id    TEXT PRIMARY KEY REFERENCES findings (id),
    count         INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);

CREATE TABLE rejected (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at   INTEGER NOT NULL,
    intake        TEXT NOT NULL,
    source        TEXT NOT NULL,
    parser        TEXT NOT NULL,
    record_index  INTEGER NOT NULL,
    line          INTEGER,
    pointer       TEXT NOT NULL,
    reason        TEXT NOT NULL
);

CREATE TABLE executions (
    id            TEXT PRIMARY KEY,          -- ULID
    finding_id    TEXT NOT NULL REFERENCES findings (id),
    playbook      TEXT NOT NULL,
    state         TEXT NOT NULL,             -- matched | planned | pending_approval | applying | applied | failed | cancelled | expired | skipped
    reason        TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_until   INTEGER,
    UNIQUE (finding_id, playbook)
);
CREATE INDEX executions_work ON executions (state, lease_until);

CREATE TABLE steps (
    execution_id  TEXT NOT NULL REFERENCES executions (id),
    idx           INTEGER NOT NULL,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL,             -- planned | applying | applied | failed | skipped
    plan          TEXT,
    plan_hash     TEXT,
    outcome       TEXT,
    error         TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (execution_id, idx)
);

CREATE TABLE audit (
    seq           INTEGER PRIMARY KEY,       -- no AUTOINCREMENT: gaps are tampering
    at            INTEGER NOT NULL,
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
