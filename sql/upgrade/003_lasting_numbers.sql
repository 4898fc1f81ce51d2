-- tracktalk: the step to schema version 3, for a database at version 2 or older. Run by
-- `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same transaction
-- (docs/dba.md); each statement may run again harmlessly.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- A track's numbering outlives it (no foreign key): a track made again with its id goes on where
-- the old one stopped, and no event number is used twice.
ALTER TABLE tracktalk.track_state DROP CONSTRAINT IF EXISTS track_state_track_id_fkey;
