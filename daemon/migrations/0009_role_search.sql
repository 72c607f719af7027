-- The haystack `GET /roles?q=` searches: name, real name, email and permissions, lowercased.
-- IMMUTABLE (lower() and array_to_string() over text do not change within a database) so that
-- core4d can build a trigram index over it at startup where pg_trgm is available; the extension
-- is optional, so the index is not made here. PL/pgSQL because a SQL function over the STABLE
-- array_to_string() is never inlined and then runs as a query per row, twice as slow on a scan.
-- Not STRICT: realname and email are often NULL.
CREATE FUNCTION core4_role_haystack(name text, realname text, email text, perm text[])
    RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN lower(name || ' ' || coalesce(realname, '') || ' ' || coalesce(email, '') || ' '
                 || array_to_string(perm, ' '));
END $$;
