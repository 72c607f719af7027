-- Idempotency keys belong to the account, not to its name. Until now `events.key` held the
-- author's name, the unit separator and the client's key, so a deleted user's keys answered the
-- next user created with that name (as duplicates, with the old account's message ids), and a
-- renamed user's resend was stored again. Now it holds the role id (24 hex digits, never
-- reused), chr(31) and the client's key; core4d builds it (`storage::events::AccountKey`), so
-- `append_events` stores and compares it as given, one pass over the keys fewer than before.

-- Keys of authors no longer found cannot be attributed to an account: they are forgotten (a
-- resend of one within the window is stored again). A name maps to the account that holds it
-- now, the best guess there is.
UPDATE events e SET key = NULL
WHERE e.key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM roles r WHERE r.name = e.author);
UPDATE events e SET key = r.id || chr(31) || substr(e.key, length(e.author) + 2)
FROM roles r
WHERE e.key IS NOT NULL AND r.name = e.author;

-- A key that is not account-scoped is refused: a core4d older than this migration, still running
-- during an upgrade, gets an error for a keyed message instead of storing its bare key, which
-- would collide across accounts. NOT VALID: the rows above were just made to conform, so there
-- is no need to read the table again.
ALTER TABLE events ADD CONSTRAINT events_key_scoped
    CHECK (key IS NULL OR substr(key, 25, 1) = chr(31)) NOT VALID;

-- As in 0008, except that `p_keys` arrive qualified: no per-message concatenation here. The
-- path without keys is unchanged.
CREATE OR REPLACE FUNCTION append_events(
    p_batch uuid,
    p_instance text,
    p_names text[],
    p_authors text[],
    p_channels text[],
    p_data text[],
    p_keys text[],
    p_window_secs bigint
) RETURNS TABLE (o_first bigint, o_created timestamptz, o_acks bigint[], o_dups boolean[])
LANGUAGE plpgsql AS $$
DECLARE
    n    integer := cardinality(p_names);
    head bigint;
    m    integer;
    ts   timestamptz;
    acks bigint[];
    dups boolean[];
    win  interval := make_interval(secs => p_window_secs::double precision);
    fresh boolean;
BEGIN
    IF p_keys IS NULL THEN
        UPDATE event_head SET last_id = event_head.last_id + n RETURNING event_head.last_id INTO head;
        ts := clock_timestamp();
        INSERT INTO events (id, created, name, author, channel, data)
        SELECT head - n + r.ord, ts, r.name, r.author, r.channel, r.data::json
        FROM unnest(p_names, p_authors, p_channels, p_data) WITH ORDINALITY
             AS r(name, author, channel, data, ord);
        INSERT INTO event_batches (batch, first_id, last_id, created)
        VALUES (p_batch, head - n + 1, head, ts);
        PERFORM pg_notify('core4_events', p_instance || ' ' || (head - n + 1) || ' ' || head);
        o_first := head - n + 1;
        o_created := ts;
        RETURN NEXT;
        RETURN;
    END IF;

    UPDATE event_head SET last_id = event_head.last_id + n RETURNING event_head.last_id - n INTO head;
    ts := clock_timestamp();
    -- The common case: no key stored before and none twice in the batch. The unique index is the
    -- check; a violation undoes the insert (a subtransaction) and takes the slow path below.
    BEGIN
        INSERT INTO events (id, created, name, author, channel, data, key)
        SELECT head + r.ord, ts, r.name, r.author, r.channel, r.data::json, r.key
        FROM unnest(p_names, p_authors, p_channels, p_data, p_keys) WITH ORDINALITY
             AS r(name, author, channel, data, key, ord);
        fresh := true;
    EXCEPTION WHEN unique_violation THEN
        fresh := false;
    END;
    IF fresh THEN
        INSERT INTO event_batches (batch, first_id, last_id, created)
        VALUES (p_batch, head + 1, head + n, ts);
        PERFORM pg_notify('core4_events', p_instance || ' ' || (head + 1) || ' ' || (head + n));
        o_first := head + 1;
        o_created := ts;
        RETURN NEXT;
        RETURN;
    END IF;

    -- A key stored before (within the window: a duplicate; older: the key is taken over) or twice
    -- in the batch: each message acks its own new id, the stored one's, or the id of the batch's
    -- first message with its key.
    WITH r AS (
        SELECT u.ord, u.key,
               CASE WHEN u.key IS NULL THEN u.ord
                    ELSE min(u.ord) OVER (PARTITION BY u.key) END AS lead
        FROM unnest(p_keys) WITH ORDINALITY AS u(key, ord)
    ), q AS (
        -- A correlated lookup is always a probe of the unique index.
        SELECT r.ord, r.lead,
               (SELECT e.id FROM events e
                WHERE e.key = r.key
                  AND e.created > ts - win) AS prior
        FROM r
    ), p AS (
        SELECT q.ord, q.lead, q.prior, (q.prior IS NULL AND q.lead = q.ord) AS fresh
        FROM q
    ), s AS (
        SELECT p.*,
               CASE WHEN p.fresh
                    THEN head + count(*) FILTER (WHERE p.fresh) OVER (ORDER BY p.ord) END AS new_id
        FROM p
    )
    SELECT array_agg(COALESCE(s.new_id, s.prior, l.new_id) ORDER BY s.ord),
           array_agg(NOT s.fresh ORDER BY s.ord)
    INTO acks, dups
    FROM s JOIN s AS l ON l.ord = s.lead;

    -- Keys older than the window are taken over by the new message.
    UPDATE events e SET key = NULL
    FROM unnest(p_keys, dups) AS u(key, dup)
    WHERE NOT u.dup AND u.key IS NOT NULL AND e.key = u.key;

    SELECT count(*) INTO m FROM unnest(dups) AS d(dup) WHERE NOT d.dup;
    UPDATE event_head SET last_id = head + m;
    INSERT INTO events (id, created, name, author, channel, data, key)
    SELECT acks[r.ord], ts, r.name, r.author, r.channel, r.data::json, r.key
    FROM unnest(p_names, p_authors, p_channels, p_data, p_keys) WITH ORDINALITY
         AS r(name, author, channel, data, key, ord)
    WHERE NOT dups[r.ord];
    INSERT INTO event_batches (batch, first_id, last_id, created, acks, dups)
    VALUES (p_batch, head + 1, head + m, ts, acks, dups);
    IF m > 0 THEN
        PERFORM pg_notify('core4_events', p_instance || ' ' || (head + 1) || ' ' || (head + m));
    END IF;
    o_first := head + 1;
    o_created := ts;
    o_acks := acks;
    o_dups := dups;
    RETURN NEXT;
END
$$;
