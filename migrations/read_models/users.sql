-- The `users` projector: user profiles and the counselor directory.
-- Personal columns (nickname, email, headline, bio, thumbnail) hold sealed tokens.
-- A change here needs a new `version` in projections/src/users.rs (the projector is then
-- rebuilt from the log at start); {name} is the live table or its rebuild shadow.
CREATE TABLE IF NOT EXISTS {rm_users} (
    user_id TEXT PRIMARY KEY,
    nickname TEXT,
    email TEXT,
    role TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_login_at BIGINT,
    login_count BIGINT NOT NULL DEFAULT 0,
    deactivated_at BIGINT,
    erased_at BIGINT,
    thumbnail TEXT
);

CREATE TABLE IF NOT EXISTS {rm_counselors} (
    user_id TEXT PRIMARY KEY,
    nickname TEXT,
    headline TEXT NOT NULL,
    bio TEXT NOT NULL,
    published_at BIGINT NOT NULL
);
