-- Idempotent publish: a message sent with a key is stored at most once per (author, key) within
-- `events.idempotency_window_secs`; a resend is acknowledged with the original id. Keys older
-- than the window are pruned (and a key whose row is older than the window counts as new).
CREATE TABLE event_keys (
    author     text NOT NULL,
    key        text NOT NULL,
    message_id bigint NOT NULL,
    created    timestamptz NOT NULL,
    PRIMARY KEY (author, key)
);
-- Keys arrive in `created` order: a BRIN index finds the expired ones for pruning at almost no
-- cost per insert.
CREATE INDEX event_keys_created ON event_keys USING brin (created);

-- The per-message outcome of a batch with keys (null for batches without any): a writer in doubt
-- about its COMMIT learns which ids it acknowledges and which messages were duplicates.
ALTER TABLE event_batches ADD COLUMN acks bigint[], ADD COLUMN dups boolean[];

DROP FUNCTION append_events(uuid, text, text[], text[], text[], text[]);

-- As before, one statement per batch; `p_keys` is null for a batch without keys (the plain path,
-- unchanged) or has one entry per message (null for a message without a key). With keys, the
-- head row is locked first, so the batches of every instance check their keys one after another
-- and two messages with the same (author, key) can never both be stored; a duplicate inside the
-- batch acks the id of the first one. Stored messages still get gapless ids in batch order.
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

    -- The head row's lock (held to the commit) makes batches of every instance check their keys
    -- one after another. The common case, no key stored before and none twice in the batch,
    -- takes ids in batch order; the keys' primary key is the check (a subtransaction undoes
    -- the keys' insert otherwise).
    UPDATE event_head SET last_id = event_head.last_id + n RETURNING event_head.last_id - n INTO head;
    ts := clock_timestamp();
    BEGIN
        INSERT INTO event_keys (author, key, message_id, created)
        SELECT u.author, u.key, head + u.ord, ts
        FROM unnest(p_authors, p_keys) WITH ORDINALITY AS u(author, key, ord)
        WHERE u.key IS NOT NULL;
        fresh := true;
    EXCEPTION WHEN unique_violation THEN
        fresh := false;
    END;
    IF fresh THEN
        INSERT INTO events (id, created, name, author, channel, data)
        SELECT head + r.ord, ts, r.name, r.author, r.channel, r.data::json
        FROM unnest(p_names, p_authors, p_channels, p_data) WITH ORDINALITY
             AS r(name, author, channel, data, ord);
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
        SELECT u.ord, u.author, u.key,
               CASE WHEN u.key IS NULL THEN u.ord
                    ELSE min(u.ord) OVER (PARTITION BY u.author, u.key) END AS lead
        FROM unnest(p_authors, p_keys) WITH ORDINALITY AS u(author, key, ord)
    ), q AS (
        -- A correlated lookup is always a primary key probe (a join's plan, cached while the
        -- table was small, could scan it whole).
        SELECT r.ord, r.lead,
               (SELECT k.message_id FROM event_keys k
                WHERE k.author = r.author AND k.key = r.key AND k.created > ts - win) AS prior
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

    SELECT count(*) INTO m FROM unnest(dups) AS d(dup) WHERE NOT d.dup;
    UPDATE event_head SET last_id = head + m;
    INSERT INTO events (id, created, name, author, channel, data)
    SELECT acks[r.ord], ts, r.name, r.author, r.channel, r.data::json
    FROM unnest(p_names, p_authors, p_channels, p_data) WITH ORDINALITY
         AS r(name, author, channel, data, ord)
    WHERE NOT dups[r.ord];
    INSERT INTO event_keys (author, key, message_id, created)
    SELECT p_authors[i], p_keys[i], acks[i], ts
    FROM generate_subscripts(p_keys, 1) AS i
    WHERE p_keys[i] IS NOT NULL AND NOT dups[i]
    ON CONFLICT (author, key) DO UPDATE
        SET message_id = excluded.message_id, created = excluded.created;
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
