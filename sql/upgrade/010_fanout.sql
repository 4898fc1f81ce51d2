-- tracktalk: the step to schema version 10 (fan-out nodes, issue 22), for a database at an older
-- version. Run by `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same
-- transaction (docs/dba.md); each statement may run again harmlessly.
--
-- Two columns that sql/schema.sql has for a new database: tracktalk.settings.notify_mode (who
-- sends the NOTIFYs: 'direct', the writers' triggers, as before; or 'fanout', the fan-out nodes)
-- and tracktalk.events.public (may the event travel in a NOTIFY payload: a node's trigger reads
-- it). Both are added with a constant default, which PostgreSQL does without rewriting the table.
-- The outbox and the heartbeat are new tables: sql/schema.sql makes them. Replicas of version 9
-- keep working on version 10 in 'direct' mode (publish() writes `public` itself, and sends what it
-- sent), so the replicas can be upgraded one at a time after the SQL.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

ALTER TABLE tracktalk.settings ADD COLUMN IF NOT EXISTS notify_mode text NOT NULL DEFAULT 'direct';
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'settings_notify_mode_known'
                      AND conrelid = 'tracktalk.settings'::regclass) THEN
        ALTER TABLE tracktalk.settings
            ADD CONSTRAINT settings_notify_mode_known CHECK (notify_mode IN ('direct', 'fanout'));
    END IF;
END
$$;

ALTER TABLE tracktalk.events ADD COLUMN IF NOT EXISTS public boolean NOT NULL DEFAULT false;
