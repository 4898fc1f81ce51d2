-- tracktalk: the step to schema version 5, for a database at version 4 or older. Run by
-- `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same transaction
-- (docs/dba.md); each statement may run again harmlessly.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- A tag per event (one per statement and track), and the tag of the event before: a failover
-- that lost commits is told apart from the events the sockets were sent. Existing events and
-- tracks keep NULL tags.
ALTER TABLE tracktalk.events ADD COLUMN IF NOT EXISTS tag text;
ALTER TABLE tracktalk.events ADD COLUMN IF NOT EXISTS prev_tag text;
ALTER TABLE tracktalk.track_state ADD COLUMN IF NOT EXISTS last_tag text;
ALTER TABLE tracktalk.track_state ADD COLUMN IF NOT EXISTS prev_tag text;

-- Version 2's count of comment posts, which tracktalk.recent_writes replaced (version 3); the SQL
-- dropped it only once version 4 was out.
DROP TABLE IF EXISTS tracktalk.comment_posts;
