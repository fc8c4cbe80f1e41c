-- Whole documents that are only ever written and read back whole are stored as json, not
-- jsonb: PostgreSQL then checks them without building jsonb's binary form, which was half
-- the cost of the orders upsert (bench/PROFILE.md). Nothing queries inside them.
ALTER TABLE orders ALTER COLUMN raw TYPE json, ALTER COLUMN document TYPE json;
ALTER TABLE order_events ALTER COLUMN data TYPE json;
