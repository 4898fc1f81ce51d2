-- tracktalk: the step to schema version 12 (slow mode counts deleted posts), for a database at
-- version 11 or older. Run by `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the
-- same transaction (docs/dba.md); each statement may run again harmlessly.
--
-- Version 12 holds every writer to a track's slow mode, SQL writers too, from the user's last
-- post there, deleted or not: the comments' insert trigger checks it, and takes one user's posts
-- on one track in turn. Its table, tracktalk.slow_mode_posts, is new: sql/schema.sql makes it.
-- There is nothing to change in what exists, so this step only takes the migration's lock.
-- Replicas of version 11 keep working on version 12 (a post the trigger refuses reaches them as
-- a database refusal, 422, instead of 429): upgrade them one at a time after the SQL.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;
