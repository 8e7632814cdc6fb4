-- The `images` projector: the profile-image blob keys users reference (for the image
-- sweeper). `image` and `thumbnail` hold sealed tokens.
-- A change here needs a new `version` in projections/src/images.rs (the projector is then
-- rebuilt from the log at start); {name} is the live table or its rebuild shadow.
CREATE TABLE IF NOT EXISTS {rm_images} (
    user_id TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    thumbnail TEXT NOT NULL
);
