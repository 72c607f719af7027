-- Users and roles share one table, as in core4: a user has an email and a password.
CREATE TABLE roles (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    name_key      text NOT NULL UNIQUE,          -- lower(name): names are unique case-insensitively
    realname      text,
    email         text UNIQUE,                   -- stored lowercased
    password_hash text,                          -- argon2id PHC string
    is_active     boolean NOT NULL DEFAULT true,
    perm          text[] NOT NULL DEFAULT '{}',
    created       timestamptz NOT NULL DEFAULT now(),
    updated       timestamptz,
    last_login    timestamptz,
    etag          text NOT NULL,
    token_version bigint NOT NULL DEFAULT 0      -- bumped to end all tokens of the user
);
CREATE INDEX roles_name ON roles (name, id);
CREATE INDEX roles_realname ON roles (realname, id);
CREATE INDEX roles_email ON roles (email, id);
CREATE INDEX roles_created ON roles (created, id);

-- role_id holds the role parent_id (core4's `role` list); cycles are allowed.
CREATE TABLE role_parents (
    role_id   text NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    parent_id text NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    PRIMARY KEY (role_id, parent_id)
);
CREATE INDEX role_parents_parent ON role_parents (parent_id);

-- Tokens ended by logout, kept until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires ON revoked_tokens (expires_at);

-- Bumped in the same transaction as every change that can end tokens or change permissions,
-- so open sockets can notice cheaply that they must re-check.
CREATE TABLE auth_epoch (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    n         bigint NOT NULL
);
INSERT INTO auth_epoch (n) VALUES (0);

-- Deployment-wide values generated once, e.g. the token signing secret.
CREATE TABLE server_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
