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

-- Ids are 16-byte UUIDs ({blob}: BLOB or BYTEA), not 36 characters of text: the table
-- has a row per message and its key leads with the room.
CREATE TABLE IF NOT EXISTS {rm_messages} (
    room_id {blob} NOT NULL,
    seq BIGINT NOT NULL,
    message_id {blob} NOT NULL,
    author_id {blob} NOT NULL,
    body TEXT,
    posted_at BIGINT NOT NULL
);

-- The history's key is a unique index rather than an inline primary key, so a rebuild can
-- append message rows in log order and build it once at the end.
CREATE UNIQUE INDEX IF NOT EXISTS rm_messages_by_seq ON {rm_messages} (room_id, seq);
CREATE INDEX IF NOT EXISTS rm_room_members_by_user ON {rm_room_members} (user_id);
-- No index by author or by message id: an erasure finds its messages through the rooms the
-- author is a member of, and a read marker (which only moves forward, so it names one of
-- the newest messages) walks the room's key back from the end. Each of them cost every post
-- a random B-tree insert and a rebuild a sort of the whole table.
