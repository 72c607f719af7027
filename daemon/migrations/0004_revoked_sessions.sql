-- Logout ends a whole session (the login token and every token refreshed or exchanged from it),
-- so revocations are kept per session id. `revoked_at` lets open sockets find new revocations
-- with one indexed query instead of re-verifying every token.
ALTER TABLE revoked_tokens RENAME TO revoked_sessions;
ALTER TABLE revoked_sessions RENAME COLUMN jti TO sid;
ALTER INDEX revoked_tokens_pkey RENAME TO revoked_sessions_pkey;
ALTER INDEX revoked_tokens_expires RENAME TO revoked_sessions_expires;
ALTER TABLE revoked_sessions ADD COLUMN revoked_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX revoked_sessions_revoked_at ON revoked_sessions (revoked_at);
