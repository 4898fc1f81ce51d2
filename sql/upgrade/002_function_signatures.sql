-- tracktalk: the step to schema version 2, for a database at version 1. Run by `tracktalk migrate`
-- before sql/schema.sql and sql/triggers.sql, in the same transaction (docs/dba.md); each
-- statement may run again harmlessly.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- Signatures that the functions of version 1 had and sql/triggers.sql no longer makes: announce
-- notifications by id and recipient, and the comments' notification rules take column arrays.
DROP FUNCTION IF EXISTS tracktalk.announce_notifications(bigint[]);
DROP FUNCTION IF EXISTS tracktalk.notify_comment_readers(bigint[], text[]);
DROP FUNCTION IF EXISTS tracktalk.notify_comment_readers(comments[], comments[]);
