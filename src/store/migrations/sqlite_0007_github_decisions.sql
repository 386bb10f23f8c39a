-- Whether merging an approval pull request counts as an approval by whoever merged it
-- (approval.github.merge_counts_as_approval).
ALTER TABLE approval_requests ADD COLUMN merge_approves INTEGER NOT NULL DEFAULT 0;

-- GitHub webhook deliveries already handled (X-GitHub-Delivery): a redelivery or a replay of
-- the same delivery is acknowledged and ignored.
CREATE TABLE github_deliveries (
    id            TEXT PRIMARY KEY,
    event         TEXT NOT NULL,
    received_at   INTEGER NOT NULL
);
