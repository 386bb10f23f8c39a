-- Work is taken most urgent first (critical, high, medium, low, info), then oldest first, so a
-- flood of low-severity findings cannot hold a critical one back by more than one claim.
ALTER TABLE findings ADD COLUMN urgency SMALLINT GENERATED ALWAYS AS (
    CASE severity
        WHEN 'critical' THEN 4
        WHEN 'high' THEN 3
        WHEN 'medium' THEN 2
        WHEN 'low' THEN 1
        ELSE 0
    END
) STORED;
CREATE INDEX findings_queue ON findings (state, urgency DESC, received_at, id);
