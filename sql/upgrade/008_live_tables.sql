-- tracktalk: the step to schema version 8 (tables made live by their DBA, issue 24), for a
-- database at version 7 or older. Run by `tracktalk migrate` before sql/schema.sql and
-- sql/triggers.sql, in the same transaction (docs/dba.md); each statement may run again harmlessly.
--
-- Version 8 only adds: tracktalk.live_tables (sql/schema.sql makes it) and the functions of
-- tracktalk.make_live (sql/triggers.sql), and takes EXECUTE on tracktalk's trigger functions from
-- PUBLIC (sql/triggers.sql, at each run). Nothing that exists changes shape, so this step has
-- nothing to do but wait its turn; replicas of version 7 keep working on version 8.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;
