-- Retention: per channel, the highest message id that pruning deleted. A resume or history request
-- reaching below it is told the messages are gone (a `truncated` frame), not silently missed.
CREATE TABLE event_channels_pruned (
    channel        text PRIMARY KEY,
    pruned_through bigint NOT NULL
);
