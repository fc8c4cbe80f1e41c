-- orderflow schema, version 1: entities, access keys, orders and what hangs off them.

CREATE TABLE entities (
    entity_id   text PRIMARY KEY,
    name        text NOT NULL,
    timezone    text NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- An access key is shown once; we keep only HMAC-SHA256(pepper, key).
CREATE TABLE access_keys (
    key_id      text PRIMARY KEY,
    entity_id   text NOT NULL REFERENCES entities (entity_id),
    key_hash    bytea NOT NULL,
    rights      text[] NOT NULL,
    -- NULL: the key may send for any source_id.
    source_ids  text[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT access_keys_rights_known
        CHECK (rights <@ ARRAY['orders:write', 'products:create', 'admin']::text[])
);
CREATE INDEX access_keys_entity ON access_keys (entity_id);

CREATE TABLE products (
    entity_id    text NOT NULL REFERENCES entities (entity_id),
    sku          text NOT NULL,
    description  text NOT NULL DEFAULT '',
    weight       numeric,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- receipt of the order whose line created it, when it was auto-created
    created_by   text,
    PRIMARY KEY (entity_id, sku)
);

CREATE TABLE orders (
    order_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_id        text NOT NULL REFERENCES entities (entity_id),
    reference        text NOT NULL,
    source_id        text NOT NULL,
    -- the receiver's sequence number of the payload now stored: the update guard
    seq              bigint NOT NULL,
    state            text NOT NULL
        CHECK (state IN ('new', 'scheduled', 'released', 'held', 'cancelled', 'shipped')),
    status           smallint NOT NULL CHECK (status IN (0, 1, 8, 9)),
    type             smallint NOT NULL CHECK (type IN (0, 1)),
    priority         integer NOT NULL DEFAULT 0,
    flag_partial     smallint NOT NULL CHECK (flag_partial IN (0, 1, 2)),
    cod_amount       numeric NOT NULL DEFAULT 0,
    currency         text NOT NULL,
    shipping_method  text NOT NULL DEFAULT '',
    customer_id      text NOT NULL DEFAULT '',
    options          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz,
    delivery_at      timestamptz,
    release_at       timestamptz,
    released_at      timestamptz,
    stored_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    version          integer NOT NULL DEFAULT 1,
    -- hash of the normalised order: an identical repeat changes nothing
    content_hash     bytea NOT NULL,
    -- the normalised order (shared.schemas.Order) as JSON: what changes are diffed against
    document         jsonb NOT NULL,
    -- the payload as received, unknown fields included
    raw              jsonb NOT NULL,
    UNIQUE (entity_id, reference)
);
-- the release scheduler looks only at waiting orders, soonest first
CREATE INDEX orders_release_due ON orders (release_at, priority DESC) WHERE state = 'scheduled';
CREATE INDEX orders_source ON orders (entity_id, source_id);

CREATE TABLE order_lines (
    order_id         bigint NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    line_no          integer NOT NULL,
    sku              text NOT NULL,
    qty              integer NOT NULL CHECK (qty > 0),
    description      text NOT NULL DEFAULT '',
    weight           numeric,
    reference        text NOT NULL DEFAULT '',
    unit_price       numeric,
    is_kit           boolean NOT NULL DEFAULT false,
    allocation_type  smallint NOT NULL DEFAULT 1 CHECK (allocation_type IN (1, 2)),
    cost             numeric,
    custom_options   jsonb,
    packing          jsonb,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE addresses (
    order_id         bigint NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('billing', 'shipping')),
    firstname        text NOT NULL,
    lastname         text NOT NULL,
    company          text NOT NULL DEFAULT '',
    street           text NOT NULL,
    housenumber      text NOT NULL,
    housenumber_ext  text NOT NULL DEFAULT '',
    postcode         text NOT NULL,
    city             text NOT NULL,
    region           text NOT NULL DEFAULT '',
    country          char(2) NOT NULL,
    phone            text NOT NULL DEFAULT '',
    email            text NOT NULL DEFAULT '',
    method           text NOT NULL DEFAULT '',
    PRIMARY KEY (order_id, kind)
);

CREATE TABLE receipts (
    receipt_id   text PRIMARY KEY,
    entity_id    text NOT NULL REFERENCES entities (entity_id),
    seq          bigint NOT NULL,
    reference    text NOT NULL,
    source_id    text NOT NULL,
    state        text NOT NULL CHECK (state IN ('stored', 'superseded', 'rejected')),
    -- HTTP-like code for the outcome: 200 stored, 409 conflict, 422 rule, ...
    code         integer NOT NULL,
    reason       text,
    warnings     jsonb NOT NULL DEFAULT '[]',
    received_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL,
    order_id     bigint REFERENCES orders (order_id) ON DELETE SET NULL
);
CREATE INDEX receipts_reference ON receipts (entity_id, reference);

CREATE TABLE order_versions (
    order_id  bigint NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    version   integer NOT NULL,
    seq       bigint NOT NULL,
    at        timestamptz NOT NULL,
    receipt_id text NOT NULL,
    -- names of the top-level fields that changed; ["*"] for the first version
    changes   jsonb NOT NULL,
    PRIMARY KEY (order_id, version)
);
