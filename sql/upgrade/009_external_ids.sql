-- tracktalk: the step to schema version 9, for a database at version 8 or older. Run by
-- `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same transaction
-- (docs/dba.md); each statement may run again harmlessly.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- The host's own id for each user (its identity provider's subject), looked up for a token whose
-- user claim is not a users.id. Existing users keep NULL. Adding it takes ACCESS EXCLUSIVE on
-- users while its (empty) unique index is built: a moment, even for many users.
ALTER TABLE users ADD COLUMN IF NOT EXISTS external_id text UNIQUE;
