-- The `audit` projector: the audit trail (who did what, when, from which request).
-- Never a personal value: `detail` names methods, roles and keys only.
-- A change here needs a new `version` in projections/src/audit.rs (the projector is then
-- rebuilt from the log at start); {name} is the live table or its rebuild shadow.
CREATE TABLE IF NOT EXISTS {rm_audit} (
    position BIGINT PRIMARY KEY,
    stream TEXT NOT NULL,
    version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    actor_id TEXT,
    correlation_id TEXT,
    traceparent TEXT,
    recorded_at BIGINT NOT NULL,
    detail TEXT
);

CREATE INDEX IF NOT EXISTS rm_audit_by_stream ON {rm_audit} (stream, version);
CREATE INDEX IF NOT EXISTS rm_audit_by_actor ON {rm_audit} (actor_id);
CREATE INDEX IF NOT EXISTS rm_audit_by_trace ON {rm_audit} (traceparent);
