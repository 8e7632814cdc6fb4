-- The projector runtime's own tables, created before any projector's.
-- Each projector's next log position and schema version, moved in the same transaction as
-- its read-model changes (so each event takes effect exactly once).
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Projectors stalled on an event they cannot apply, for `neulbi projections status`.
CREATE TABLE IF NOT EXISTS projection_faults (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    error TEXT NOT NULL,
    failures BIGINT NOT NULL,
    first_failed_at BIGINT NOT NULL,
    last_failed_at BIGINT NOT NULL
);
