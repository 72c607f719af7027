-- The text `GET /roles?q=` searches: name, real name, email and permissions, lowercased, stored
-- with each row (computed on insert and update), so a search reads it instead of building it
-- per row, and the planner has statistics on it. Adding it rewrites the table once (about 2.5 s
-- per 100,000 roles). core4d adds a pg_trgm index on it at startup where the extension is
-- available; the extension is optional, so that index is not made here.
-- A generated column needs an IMMUTABLE expression: lower() and array_to_string() over text do
-- not change within a database, but array_to_string() is declared STABLE, hence the function.
-- Not STRICT: realname and email are often NULL.
CREATE FUNCTION core4_role_haystack(name text, realname text, email text, perm text[])
    RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN lower(name || ' ' || coalesce(realname, '') || ' ' || coalesce(email, '') || ' '
                 || array_to_string(perm, ' '));
END $$;

ALTER TABLE roles ADD COLUMN search_text text NOT NULL
    GENERATED ALWAYS AS (core4_role_haystack(name, realname, email, perm)) STORED;

-- Statistics of the new column now, not whenever autovacuum gets to it: without them the
-- planner takes a term most roles contain for a rare one and reads them all through the index.
ANALYZE roles;
