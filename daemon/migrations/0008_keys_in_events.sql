-- Idempotency keys move into the message's own row: a keyed message now costs one more index
-- entry, not a second row, an index entry and a BRIN entry in `event_keys` (measured: the check
-- cost 21-23 % of publish throughput that way). The partial unique index is the check; a key is
-- remembered as long as its message is stored, and counts within `events.idempotency_window_secs`.
-- `key` holds the author, the unit separator (0x1f, which no role name contains) and the client's
-- key, so one plain column is the whole check (measured: about a third cheaper per message than
-- an index over `(author, key)`); it is compared bytewise (COLLATE "C").
ALTER TABLE events ADD COLUMN key text COLLATE "C";
CREATE UNIQUE INDEX events_key ON events (key) WHERE key IS NOT NULL;

UPDATE events e SET key = k.author || chr(31) || k.key
FROM event_keys k
WHERE e.id = k.message_id AND e.author = k.author;
DROP TABLE event_keys;

DROP FUNCTION append_events(uuid, text, text[], text[], text[], text[], text[], bigint);

-- As before, one statement per batch; `p_keys` is null for a batch without keys (the plain path,
-- unchanged) or has one entry per message (null for a message without a key). The head row's lock
-- (held to the commit) makes the batches of every instance check their keys one after another, so
-- two messages with the same (author, key) can never both be stored; a duplicate inside the batch
-- acks the id of the first one. Stored messages still get gapless ids in batch order.
CREATE FUNCTION append_events(
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

    -- Keys are per author: from here on each is qualified with its author.
    p_keys := ARRAY(
        SELECT u.author || chr(31) || u.key
        FROM unnest(p_authors, p_keys) WITH ORDINALITY AS u(author, key, ord)
        ORDER BY u.ord);
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
