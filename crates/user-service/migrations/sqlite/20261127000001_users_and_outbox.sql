-- The user directory and the transactional outbox of its data_sync events.
-- (SQLite flavour; migrations/postgres holds the same schema for PostgreSQL.)

CREATE TABLE users (
    id         TEXT    PRIMARY KEY NOT NULL,
    name       TEXT    NOT NULL,
    age        INTEGER NOT NULL,
    email      TEXT    NOT NULL DEFAULT '',
    -- Unix milliseconds.
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- One row per committed change, written in the change's own transaction and
-- deleted by the relay once RabbitMQ confirmed the event. AUTOINCREMENT keeps
-- ids increasing, so events leave in commit order.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    traceparent TEXT,
    created_at  INTEGER NOT NULL
);
