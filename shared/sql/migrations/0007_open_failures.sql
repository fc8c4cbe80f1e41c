-- The dashboard counts open rejections every second: keep that count off the history.
-- The worker writes a failed_payloads row for every rejection (same transaction), so the
-- open ones are exactly the rows not yet retried or discarded.
CREATE INDEX failed_payloads_open ON failed_payloads (kept_at) WHERE resolution IS NULL;
