-- Row types of the worker's batch_store statement (shared/sql/queries.sql): a batch's rows
-- travel as one array of records per table instead of one array per column. asyncpg checks
-- every element of an array parameter against collections.abc (Python-level isinstance calls
-- that cost more than encoding the value); a record is checked once, its fields are not.
-- These are the statement's types, not the tables': a column added to a table leaves them
-- alone. JSON and numeric fields are text, cast where inserted (asyncpg's binary numeric
-- encoding costs ~10x str(Decimal), and str(Decimal) is what numeric_in reads exactly).
-- w numbers the orders of a batch (position in its batch_order array): lines, addresses and
-- versions find their order id by it.
CREATE TYPE batch_order AS (
    entity_id text, reference text, source_id text, seq bigint, state text, status smallint,
    type smallint, priority integer, flag_partial smallint, cod_amount text, currency text,
    shipping_method text, customer_id text, options text, created_at timestamptz,
    delivery_at timestamptz, release_at timestamptz, released_at timestamptz,
    stored_at timestamptz, version integer, content_hash bytea);
CREATE TYPE batch_line AS (
    w integer, line_no integer, sku text, qty integer, description text, weight text,
    reference text, unit_price text, is_kit boolean, allocation_type smallint, cost text,
    custom_options text, packing text);
CREATE TYPE batch_address AS (
    w integer, kind text, firstname text, lastname text, company text, street text,
    housenumber text, housenumber_ext text, postcode text, city text, region text, country text,
    phone text, email text, method text);
CREATE TYPE batch_version AS (w integer, version integer, seq bigint, receipt_id text, changes text);
-- order_id when the order was stored before, w when the batch writes it, neither otherwise
CREATE TYPE batch_receipt AS (
    receipt_id text, entity_id text, seq bigint, reference text, source_id text, state text,
    code integer, reason text, warnings text, received_at timestamptz, order_id bigint, w integer);
-- order_id / w as for receipts; receipt_id only on the order.rejected event of that receipt,
-- which is written only if the receipt is new
CREATE TYPE batch_event AS (
    entity_id text, reference text, source_id text, type text, version integer, priority integer,
    order_id bigint, w integer, receipt_id text);
