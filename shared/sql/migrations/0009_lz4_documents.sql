-- Orders carry two JSON texts (document and raw, ~3 kB together), past PostgreSQL's 2 kB
-- TOAST threshold, so every insert compresses them; with the default pglz that was 12-14 %
-- of the database's CPU for the worker's writes. lz4 compresses several times faster (and
-- decompresses faster for the dashboard and the API). Only new values are affected; a server
-- built without lz4 keeps pglz (the migration then changes nothing). Each ALTER takes an
-- ACCESS EXCLUSIVE lock for a catalog change only; behind a long transaction it gives up after
-- 10 s rather than stall the traffic queued behind it (run `orderflow migrate` again).
SET LOCAL lock_timeout = '10s';
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE orders ALTER COLUMN document SET COMPRESSION lz4,
                           ALTER COLUMN raw SET COMPRESSION lz4;
        ALTER TABLE order_events ALTER COLUMN data SET COMPRESSION lz4;
    END IF;
END
$$;
