-- One `findings.received` audit record per ingest batch instead of one per finding: the record
-- lists every stored finding's id and the sha256 of its body. Each finding keeps the sequence
-- number of that record, so `audit show <finding>` finds it without scanning audit details.
-- NULL for findings stored before this migration (they have their own `finding.received`).
ALTER TABLE findings ADD COLUMN audit_seq INTEGER;
