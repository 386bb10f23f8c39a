-- The audit chain's head (`meta.audit_head`, "SEQ:HASH") always exists, so that appending to the
-- chain can start by locking that one row (`SELECT ... FOR UPDATE`): appends from every replica
-- are taken one at a time on it, while the rest of their transactions run side by side. An
-- empty chain's head is "0:genesis"; a chain that has records already has its head row.
INSERT INTO meta (key, value) VALUES ('audit_head', '0:genesis') ON CONFLICT (key) DO NOTHING;
