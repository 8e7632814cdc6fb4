-- The `rooms` projector: my rooms (last message, unread counts) and room message history.
-- `body` and `last_message_preview` hold sealed tokens.
-- A change here needs a new `version` in projections/src/rooms.rs (the projector is then
-- rebuilt from the log at start); {name} is the live table or its rebuild shadow.
CREATE TABLE IF NOT EXISTS {rm_rooms} (
    room_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    counselor_id TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    closed_at BIGINT,
    message_count BIGINT NOT NULL DEFAULT 0,
    last_message_id TEXT,
    last_message_author TEXT,
    last_message_preview TEXT,
    last_message_at BIGINT
);

CREATE TABLE IF NOT EXISTS {rm_room_members} (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    unread_count BIGINT NOT NULL DEFAULT 0,
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    left_at BIGINT,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE IF NOT EXISTS {rm_messages} (
    room_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    message_id TEXT NOT NULL,
    author_id TEXT NOT NULL,
    body TEXT,
    posted_at BIGINT NOT NULL
);

-- The history's key is a unique index rather than an inline primary key, so a rebuild can
-- append message rows in log order and build it once at the end.
CREATE UNIQUE INDEX IF NOT EXISTS rm_messages_by_seq ON {rm_messages} (room_id, seq);
CREATE INDEX IF NOT EXISTS rm_room_members_by_user ON {rm_room_members} (user_id);
CREATE INDEX IF NOT EXISTS rm_messages_by_author ON {rm_messages} (author_id);
CREATE INDEX IF NOT EXISTS rm_messages_by_id ON {rm_messages} (room_id, message_id);
