-- tracktalk: the step to schema version 4, for a database at version 3 or older. Run by
-- `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same transaction
-- (docs/dba.md); each statement may run again harmlessly.

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- What version 3's SQL gained after it was first stamped 3 (a database stamped 3 may have been made
-- before any of it): every step here is one that version 3 made.

-- Events of tracks deleted while their track_state row still went with them: their numbers would
-- be used again by a track made with the same id. (A track that exists but has no row, made
-- while the triggers were off, keeps its events: sql/triggers.sql makes its row.)
DELETE FROM tracktalk.events e
 WHERE NOT EXISTS (SELECT 1 FROM tracktalk.track_state s WHERE s.track_id = e.track_id)
   AND NOT EXISTS (SELECT 1 FROM public.tracks t WHERE t.id = e.track_id);

-- Notifications are pruned after this long.
ALTER TABLE tracktalk.settings ADD COLUMN IF NOT EXISTS
    notification_retention interval NOT NULL DEFAULT '90 days'
        CONSTRAINT settings_notification_retention_positive CHECK (notification_retention > interval '0');

-- recount(track, comments_delta, likes_delta, shares_delta) replaces recount(track) (a call with
-- one argument works as before).
DROP FUNCTION IF EXISTS tracktalk.recount(text);

-- At most 10 users mentioned per comment, its edits included: the mentions made so far count
-- toward their comment's ten (the table as sql/schema.sql makes it, made here to be filled).
CREATE TABLE IF NOT EXISTS tracktalk.comment_mentions (
    comment_id  bigint NOT NULL REFERENCES comments (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (comment_id, user_id)
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tracktalk.comment_mentions) THEN
        INSERT INTO tracktalk.comment_mentions (comment_id, user_id)
        SELECT comment_id, user_id FROM notifications
         WHERE kind = 'mention' AND comment_id IS NOT NULL
        ON CONFLICT DO NOTHING;
    END IF;
END
$$;

-- tracktalk.wait_to_write, one limit by kind, replaces the two functions that repeated each
-- other (the first of them version 2's).
DROP FUNCTION IF EXISTS tracktalk.comment_wait(bigint, integer, interval);
DROP FUNCTION IF EXISTS tracktalk.write_wait(bigint, integer, interval);
