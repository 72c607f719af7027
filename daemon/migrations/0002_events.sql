-- Event channels: every message, in one table, under a deployment-wide gapless id sequence.
CREATE TABLE events (
    id      bigint PRIMARY KEY,
    created timestamptz NOT NULL,
    name    text NOT NULL,
    author  text NOT NULL,
    channel text NOT NULL,            -- normalised (trimmed, lowercased) before it gets here
    data    json NOT NULL             -- json, not jsonb: replays must be byte-identical to live frames
);
CREATE INDEX events_channel_id ON events (channel, id);

-- The last id handed out. Writers update this one row first in their batch transaction: the row
-- lock is held until commit, so batches (from any number of core4d instances) take their ids and
-- commit strictly one after another, and a reader that has seen id N can never later find a
-- committed id below N that it missed.
CREATE TABLE event_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id   bigint NOT NULL
);
INSERT INTO event_head (last_id) VALUES (0);

-- One row per committed batch, so a writer that lost its connection during COMMIT can find out
-- whether the batch is stored (and under which ids) instead of guessing. The primary key also
-- guarantees that a retried batch is stored at most once. Pruned after an hour.
CREATE TABLE event_batches (
    batch    uuid PRIMARY KEY,
    first_id bigint NOT NULL,
    last_id  bigint NOT NULL,
    created  timestamptz NOT NULL
);
CREATE INDEX event_batches_created ON event_batches (created);

-- Stores one batch in one round trip: ids, rows, the batch record and one NOTIFY for the batch
-- (payload `<instance> <first id> <last id>`). Run it as a single statement, so it commits on its own.
CREATE FUNCTION append_events(
    p_batch uuid,
    p_instance text,
    p_names text[],
    p_authors text[],
    p_channels text[],
    p_data text[]
) RETURNS TABLE (o_first bigint, o_created timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    n    integer := cardinality(p_names);
    last bigint;
    ts   timestamptz;
BEGIN
    UPDATE event_head SET last_id = event_head.last_id + n RETURNING event_head.last_id INTO last;
    ts := clock_timestamp();
    INSERT INTO events (id, created, name, author, channel, data)
    SELECT last - n + r.ord, ts, r.name, r.author, r.channel, r.data::json
    FROM unnest(p_names, p_authors, p_channels, p_data) WITH ORDINALITY
         AS r(name, author, channel, data, ord);
    INSERT INTO event_batches (batch, first_id, last_id, created)
    VALUES (p_batch, last - n + 1, last, ts);
    PERFORM pg_notify('core4_events', p_instance || ' ' || (last - n + 1) || ' ' || last);
    o_first := last - n + 1;
    o_created := ts;
    RETURN NEXT;
END
$$;
