-- tracktalk: the step to schema version 11 (moderation, issue 20), for a database at version 9 or
-- older. Run by `tracktalk migrate` before sql/schema.sql and sql/triggers.sql, in the same
-- transaction (docs/dba.md); each statement may run again harmlessly. (Version 10 is the fan-out
-- nodes' step; a database at 9 takes it first when it is there.)

SET search_path = public;

-- One migration at a time (as at the head of sql/schema.sql).
DO $$
BEGIN
    LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE;
END
$$;

-- A track's settings: comments off (posts refused, existing comments stay) and slow mode.
ALTER TABLE tracks ADD COLUMN IF NOT EXISTS comments_enabled boolean NOT NULL DEFAULT true;
ALTER TABLE tracks ADD COLUMN IF NOT EXISTS slow_mode_seconds integer NOT NULL DEFAULT 0;
ALTER TABLE tracks DROP CONSTRAINT IF EXISTS tracks_slow_mode_seconds_range;
ALTER TABLE tracks ADD CONSTRAINT tracks_slow_mode_seconds_range
    CHECK (slow_mode_seconds BETWEEN 0 AND 86400);

-- A comment's moderation marks (each NULL while it does not hold). Adding nullable columns
-- without a default rewrites nothing: a moment's ACCESS EXCLUSIVE lock, however many comments.
ALTER TABLE comments ADD COLUMN IF NOT EXISTS pinned_at timestamptz;
ALTER TABLE comments ADD COLUMN IF NOT EXISTS hearted_at timestamptz;
ALTER TABLE comments ADD COLUMN IF NOT EXISTS hidden_at timestamptz;
ALTER TABLE comments ADD COLUMN IF NOT EXISTS held_at timestamptz;
ALTER TABLE comments ADD COLUMN IF NOT EXISTS deleted_at timestamptz;
ALTER TABLE comments ADD COLUMN IF NOT EXISTS hidden_by bigint REFERENCES users (id) ON DELETE SET NULL;

-- A tombstone (a deleted comment whose replies stay) has empty content: the old "not blank"
-- check gives way to one that allows it for tombstones only.
ALTER TABLE comments DROP CONSTRAINT IF EXISTS comments_content_not_blank;
ALTER TABLE comments ADD CONSTRAINT comments_content_not_blank
    CHECK (btrim(content) <> '' OR deleted_at IS NOT NULL);
ALTER TABLE comments DROP CONSTRAINT IF EXISTS comments_tombstone_empty;
ALTER TABLE comments ADD CONSTRAINT comments_tombstone_empty
    CHECK (deleted_at IS NULL OR content = '');

-- How many distinct reports hold a comment for review.
ALTER TABLE tracktalk.settings ADD COLUMN IF NOT EXISTS reports_to_hide integer NOT NULL DEFAULT 3;
ALTER TABLE tracktalk.settings DROP CONSTRAINT IF EXISTS settings_reports_to_hide_positive;
ALTER TABLE tracktalk.settings ADD CONSTRAINT settings_reports_to_hide_positive CHECK (reports_to_hide >= 1);
