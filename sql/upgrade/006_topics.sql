-- tracktalk: the step to schema version 6 (topics, issue 24), for a database at version 5 or
-- older. Run by `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same
-- transaction (docs/dba.md); each statement may run again harmlessly.
--
-- A track's events become the events of its topic `track:{id}`: the event log is keyed by topic,
-- each topic numbered in tracktalk.topic_state (the tracks' last_seq and tags move there; their
-- counters stay in tracktalk.track_state), and who is here is counted per topic. Replicas of
-- version 5 listen on the tracks' old channel names and read the log by track: stop them, apply
-- this, start version 6 (docs/dba.md).

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- The numbering of every track, as the numbering of its topic.
CREATE TABLE IF NOT EXISTS tracktalk.topic_state (
    topic     text PRIMARY KEY,
    last_seq  bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_tag  text,
    prev_tag  text
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = 'tracktalk' AND table_name = 'track_state' AND column_name = 'last_seq') THEN
        INSERT INTO tracktalk.topic_state (topic, last_seq, last_tag, prev_tag)
        SELECT 'track:' || s.track_id, s.last_seq, s.last_tag, s.prev_tag
          FROM tracktalk.track_state s
        ON CONFLICT (topic) DO NOTHING;
        ALTER TABLE tracktalk.track_state DROP COLUMN last_seq;
        ALTER TABLE tracktalk.track_state DROP COLUMN last_tag;
        ALTER TABLE tracktalk.track_state DROP COLUMN prev_tag;
    END IF;
END
$$;

-- The event log, keyed by topic: every event kept moves to its track's topic (one pass over the
-- log, rewriting each row: 24 hours of events by default), and gains what topics need.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = 'tracktalk' AND table_name = 'events' AND column_name = 'track_id') THEN
        ALTER TABLE tracktalk.events RENAME COLUMN track_id TO topic;
        ALTER TABLE tracktalk.events ADD COLUMN restricted json;
        ALTER TABLE tracktalk.events ADD COLUMN author bigint;
        ALTER TABLE tracktalk.events ADD COLUMN size integer NOT NULL DEFAULT 0;
        UPDATE tracktalk.events SET topic = 'track:' || topic, size = octet_length(message::text);
        ALTER TABLE tracktalk.events ALTER COLUMN size DROP DEFAULT;
    END IF;
END
$$;

-- Who is here, per topic. The rows are each replica's, written again within a heartbeat of
-- their going (the table is unlogged: a crash empties it too): they are dropped, not moved.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = 'tracktalk' AND table_name = 'presence' AND column_name = 'track_id') THEN
        DELETE FROM tracktalk.presence;
        ALTER TABLE tracktalk.presence RENAME COLUMN track_id TO topic;
        ALTER INDEX tracktalk.presence_track_id RENAME TO presence_topic;
    END IF;
END
$$;

-- Version 5's publish(track, messages, comments_delta, likes_delta, shares_delta): replaced by
-- publish(topic, …) and publish_track(track, …) (sql/triggers.sql).
DROP FUNCTION IF EXISTS tracktalk.publish(text, jsonb[], bigint, bigint, bigint);

-- Their argument `topic` (a channel's: 'track <id>', 'user <id>') is now `name` ('topic <topic>',
-- 'user <id>'): a function's argument is renamed only by making it again.
DROP FUNCTION IF EXISTS tracktalk.channel_name(bytea, bytea, text);
DROP FUNCTION IF EXISTS tracktalk.send_signed(text, text);
