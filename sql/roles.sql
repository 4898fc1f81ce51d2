-- tracktalk: two roles for a shared PostgreSQL (see docs/dba.md).
--
--   tracktalk_owner  owns the schema: runs `tracktalk migrate` (or applies schema.sql and
--                    triggers.sql with psql). Not a superuser; never used by the service.
--   tracktalk_app    what `tracktalk serve` connects as (DATABASE_URL, TRACKTALK_LISTEN_URL):
--                    reads and writes rows, LISTENs; no DDL, no TRUNCATE, no ownership.
--
-- Run it as a superuser (or a role with CREATEROLE that may grant on the database), connected
-- to tracktalk's database, BEFORE and AFTER every migration; it is idempotent, and each run
-- grants on what exists at that moment:
--
--     psql "$ADMIN_URL" -v ON_ERROR_STOP=1 --single-transaction -f sql/roles.sql   # roles
--     psql "$OWNER_URL" -v ON_ERROR_STOP=1 --single-transaction \
--          -f sql/schema.sql -f sql/triggers.sql                                   # migrate
--     psql "$ADMIN_URL" -v ON_ERROR_STOP=1 --single-transaction -f sql/roles.sql   # grants
--
-- Passwords are not in this file (it goes into version control). The roles are made with
-- LOGIN and no password; give each one in psql with
--     \password tracktalk_owner
--     \password tracktalk_app
-- (psql sends only the SCRAM hash: the password never reaches the server's log), or with
--     ALTER ROLE tracktalk_owner PASSWORD '<owner-password>';
--     ALTER ROLE tracktalk_app   PASSWORD '<app-password>';
-- replacing the <placeholders>. Re-running this file never changes a password.
--
-- The app role needs INSERT/UPDATE/DELETE on tracktalk's bookkeeping tables because the
-- triggers run as the role that writes the row: any other service that writes comments,
-- likes or shares with SQL needs the same grants (GRANT tracktalk_app TO that_service).

-- Roles (cluster-wide): made once, left alone afterwards.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracktalk_owner') THEN
        CREATE ROLE tracktalk_owner LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracktalk_app') THEN
        CREATE ROLE tracktalk_app LOGIN;
    END IF;
END
$$;

-- The database: the owner creates the schema "tracktalk" in it; the app only connects.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO tracktalk_owner', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tracktalk_app', current_database());
END
$$;

-- Nobody but the owner creates objects in public (the default since PostgreSQL 15; older
-- servers let every role create tables there).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO tracktalk_owner;
GRANT USAGE ON SCHEMA public TO tracktalk_app;

-- Tables and views, once the owner has made them (skipped when they do not exist yet).
-- Every relation of sql/schema.sql is listed: tests/test_deploy.py fails when one is missing.
DO $$
DECLARE
    grant_ record;
BEGIN
    IF to_regnamespace('tracktalk') IS NOT NULL THEN
        -- tracktalk's roles only: the event log and the channel key live there (docs/dba.md,
        -- "Who may listen").
        REVOKE ALL ON SCHEMA tracktalk FROM PUBLIC;
        GRANT USAGE ON SCHEMA tracktalk TO tracktalk_app;
    END IF;
    FOR grant_ IN
        SELECT * FROM (VALUES
            -- the host app's rows: read only
            ('public.users',                    'SELECT'),
            ('public.albums',                   'SELECT'),
            ('public.tracks',                   'SELECT'),
            -- what listeners write
            ('public.comments',                 'SELECT, INSERT, UPDATE, DELETE'),
            ('public.comment_likes',            'SELECT, INSERT, DELETE'),
            ('public.track_likes',              'SELECT, INSERT, DELETE'),
            ('public.track_shares',             'SELECT, INSERT'),
            -- made by the triggers; read and marked read by the API
            ('public.notifications',            'SELECT, INSERT, UPDATE, DELETE'),
            -- bookkeeping, written by the triggers and the pruner
            ('tracktalk.schema_version',        'SELECT'),
            ('tracktalk.settings',              'SELECT'),
            ('tracktalk.track_state',           'SELECT, INSERT, UPDATE'),
            -- signs what the triggers send (they run as the writer); read by every replica
            ('tracktalk.channel_key',           'SELECT'),
            ('tracktalk.comment_stats',         'SELECT, INSERT, UPDATE'),
            ('tracktalk.events',                'SELECT, INSERT, DELETE'),
            ('tracktalk.recent_writes',         'SELECT'),  -- written by wait_to_write, as owner
            ('tracktalk.comment_mentions',      'SELECT, INSERT'),
            ('tracktalk.track_audio',           'SELECT'),
            -- who is here: each replica's heartbeat and its listeners per track
            ('tracktalk.replicas',              'SELECT, INSERT, UPDATE, DELETE'),
            ('tracktalk.presence',              'SELECT, INSERT, UPDATE, DELETE'),
            ('tracktalk.comment_objects',       'SELECT'),
            ('tracktalk.notification_objects',  'SELECT')
        ) AS g (relation, privileges)
    LOOP
        IF to_regclass(grant_.relation) IS NOT NULL THEN
            EXECUTE format('GRANT %s ON %s TO tracktalk_app', grant_.privileges, grant_.relation);
        END IF;
    END LOOP;
END
$$;
