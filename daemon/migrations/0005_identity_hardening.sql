-- Look-alike names (`аdmin` with a Cyrillic a) cannot coexist: each name's Unicode TR39 confusable
-- skeleton is unique. core4d computes it (PostgreSQL cannot) and fills it in for older rows at start.
ALTER TABLE roles ADD COLUMN name_skeleton text UNIQUE;

-- The roles core4d seeds (the bootstrap admin and `standard_user`) can be changed by a cop only.
ALTER TABLE roles ADD COLUMN seeded boolean NOT NULL DEFAULT false;
UPDATE roles SET seeded = true
 WHERE name_key = 'standard_user' OR email = 'admin@core4d.invalid';

-- Addresses a user logged in from successfully: failed logins of strangers do not lock the user
-- out from these.
CREATE TABLE login_sources (
    role_id   text NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    addr      text NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_id, addr)
);
CREATE INDEX login_sources_last_seen ON login_sources (last_seen);
