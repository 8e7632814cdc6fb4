-- The `calls` projector: call history (participants, start, duration).
-- A change here needs a new `version` in projections/src/calls.rs (the projector is then
-- rebuilt from the log at start); {name} is the live table or its rebuild shadow.
CREATE TABLE IF NOT EXISTS {rm_calls} (
    call_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    invitee TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    accepted_at BIGINT,
    started_at BIGINT,
    ended_at BIGINT,
    duration_secs BIGINT,
    end_reason TEXT
);

CREATE TABLE IF NOT EXISTS {rm_call_participants} (
    call_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    first_joined_at BIGINT NOT NULL,
    PRIMARY KEY (call_id, user_id)
);

CREATE INDEX IF NOT EXISTS rm_calls_by_requester ON {rm_calls} (requested_by);
CREATE INDEX IF NOT EXISTS rm_calls_by_invitee ON {rm_calls} (invitee);
