-- The user directory and the transactional outbox of its data_sync events.
-- (PostgreSQL flavour; migrations/sqlite holds the same schema for SQLite.)

CREATE TABLE users (
    -- Byte order, as SQLite sorts: listings page the same way on both.
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT    NOT NULL,
    age        INTEGER NOT NULL,
    email      TEXT    NOT NULL DEFAULT '',
    -- Unix milliseconds.
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);

-- One row per committed change, written in the change's own transaction and
-- deleted by the relay once RabbitMQ confirmed the event.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_id    TEXT   NOT NULL,
    event       TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    traceparent TEXT,
    created_at  BIGINT NOT NULL
);
