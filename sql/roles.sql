-- tracktalk: three roles for a shared PostgreSQL (see docs/dba.md).
--
--   tracktalk_owner   owns the schema: runs `tracktalk migrate` (or applies schema.sql and
--                     triggers.sql with psql). Not a superuser; never used by the service.
--   tracktalk_writer  what any service that writes comments, likes, shares or forum posts with
--                     SQL needs: those tables and nothing of tracktalk's (NOLOGIN: grant it to the
--                     service's own role). The triggers run as the owner (SECURITY DEFINER), so
--                     a writer can neither read the key that signs NOTIFY payloads nor write
--                     the event log: it can only make real changes, which go live.
--   tracktalk_app     what `tracktalk serve` connects as (DATABASE_URL, TRACKTALK_LISTEN_URL):
--                     a writer, plus reading tracktalk's bookkeeping (the event log, the channel
--                     key), marking notifications read, the presence tables; LISTENs; no DDL, no
--                     TRUNCATE, no ownership.
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
-- Another service that writes comments, likes, shares or forum posts with SQL: GRANT tracktalk_writer TO it.

-- Roles (cluster-wide): made once, left alone afterwards.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracktalk_owner') THEN
        CREATE ROLE tracktalk_owner LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracktalk_writer') THEN
        CREATE ROLE tracktalk_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracktalk_app') THEN
        CREATE ROLE tracktalk_app LOGIN;
    END IF;
END
$$;
GRANT tracktalk_writer TO tracktalk_app;

-- The database: the owner creates the schema "tracktalk" in it; the app and the writers only
-- connect. PUBLIC's CONNECT and TEMPORARY go (least privilege): a role that can connect can LISTEN
-- on tracktalk's channels and, by sitting idle in a transaction, pin the server's NOTIFY queue
-- (docs/dba.md, "Who may listen"); none of tracktalk's roles makes temporary tables. The database's
-- owner and superusers keep both. Any other role that connects through PUBLIC's grant (the host
-- app's, a report's) needs a grant of its own: while such a role is connected, the file stops
-- here and names it rather than lock it out.
DO $$
DECLARE
    db constant text := current_database();
    stranded text;
BEGIN
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO tracktalk_owner', db);
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tracktalk_writer, tracktalk_app', db);
    SELECT string_agg(DISTINCT quote_ident(r.rolname), ', ' ORDER BY quote_ident(r.rolname)) INTO stranded
      FROM pg_stat_activity a
      JOIN pg_roles r ON r.oid = a.usesysid
      JOIN pg_database d ON d.oid = a.datid
     WHERE d.datname = db
       AND NOT r.rolsuper
       AND NOT EXISTS (SELECT FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) g
                        WHERE g.privilege_type = 'CONNECT' AND g.grantee <> 0
                          AND pg_has_role(r.oid, g.grantee, 'MEMBER'));
    IF stranded IS NOT NULL THEN
        RAISE EXCEPTION 'sql/roles.sql takes CONNECT on database % from PUBLIC, and these roles, connected now, have it only through PUBLIC: %',
                        db, stranded
            USING HINT = format('Grant each one that belongs here its own (GRANT CONNECT ON DATABASE %I TO <role>;), '
                                'end the sessions of the others, then run sql/roles.sql again.', db);
    END IF;
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', db);
END
$$;

-- Nobody but the owner creates objects in public (the default since PostgreSQL 15; older
-- servers let every role create tables there).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO tracktalk_owner;
GRANT USAGE ON SCHEMA public TO tracktalk_writer, tracktalk_app;

-- Tables and views, once the owner has made them (skipped when they do not exist yet). Each run
-- takes back what either role had on a relation, then grants what is listed: a privilege no
-- longer listed goes. Every relation of sql/schema.sql is listed: tests/system/test_deploy.py fails
-- when one is missing.
DO $$
DECLARE
    grant_ record;
BEGIN
    IF to_regnamespace('tracktalk') IS NOT NULL THEN
        -- tracktalk's roles only: the event log and the channel key live there (docs/dba.md,
        -- "Who may listen"). Not the writers: the triggers reach it as its owner.
        REVOKE ALL ON SCHEMA tracktalk FROM PUBLIC, tracktalk_writer;
        GRANT USAGE ON SCHEMA tracktalk TO tracktalk_app;
    END IF;
    FOR grant_ IN
        SELECT * FROM (VALUES
            -- the host app's rows: read
            ('public.users',                    'SELECT', 'tracktalk_writer'),
            ('public.albums',                   'SELECT', 'tracktalk_writer'),
            -- a track's moderation settings are its creator's and the team's, through the API
            ('public.tracks',                   'SELECT, UPDATE (comments_enabled, slow_mode_seconds)', 'tracktalk_writer'),
            -- what listeners write (the triggers do the rest, as the owner)
            ('public.comments',                 'SELECT, INSERT, UPDATE, DELETE', 'tracktalk_writer'),
            ('public.comment_likes',            'SELECT, INSERT, DELETE', 'tracktalk_writer'),
            ('public.track_likes',              'SELECT, INSERT, DELETE', 'tracktalk_writer'),
            ('public.track_shares',             'SELECT, INSERT', 'tracktalk_writer'),
            -- moderation (issue 20): reports (an approval clears them), mutes, the creators' words
            ('public.comment_reports',          'SELECT, INSERT, DELETE', 'tracktalk_writer'),
            ('public.muted_users',              'SELECT, INSERT, DELETE', 'tracktalk_writer'),
            ('public.moderation_words',         'SELECT, INSERT, UPDATE, DELETE', 'tracktalk_writer'),
            -- the forum: categories are the host app's (or a DBA's); the rest is written like comments
            ('public.forum_categories',         'SELECT', 'tracktalk_writer'),
            ('public.forum_threads',            'SELECT, INSERT, UPDATE, DELETE', 'tracktalk_writer'),
            ('public.forum_posts',              'SELECT, INSERT, UPDATE, DELETE', 'tracktalk_writer'),
            ('public.forum_post_likes',         'SELECT, INSERT, DELETE', 'tracktalk_writer'),
            -- made by the triggers; read and marked read by the API
            ('public.notifications',            'SELECT, UPDATE', 'tracktalk_app'),
            -- bookkeeping, written by the triggers and the SECURITY DEFINER functions; read by
            -- the replicas (tracktalk.channel_key: to check what travels on the channels)
            ('tracktalk.schema_version',        'SELECT', 'tracktalk_app'),
            ('tracktalk.settings',              'SELECT', 'tracktalk_app'),
            ('tracktalk.track_state',           'SELECT', 'tracktalk_app'),
            ('tracktalk.topic_state',           'SELECT', 'tracktalk_app'),
            -- who may see which topics: tracktalk.may_see() reads it as the app
            ('tracktalk.topic_kinds',           'SELECT', 'tracktalk_app'),
            -- the tables made live by their DBA: tracktalk.live_may_see() reads it as the app
            -- (sql/schema.sql grants SELECT to PUBLIC too: the DBAs who call make_live read it)
            ('tracktalk.live_tables',           'SELECT', 'tracktalk_app'),
            ('tracktalk.channel_key',           'SELECT', 'tracktalk_app'),
            ('tracktalk.comment_stats',         'SELECT', 'tracktalk_app'),
            ('tracktalk.events',                'SELECT', 'tracktalk_app'),
            -- what the fan-out nodes send (written by the triggers and tracktalk.relay()), and the
            -- primary's heartbeat (written by tracktalk.beat()); the replicas on a node read its copy
            ('tracktalk.outbox',                'SELECT', 'tracktalk_app'),
            ('tracktalk.heartbeat',             'SELECT', 'tracktalk_app'),
            ('tracktalk.recent_writes',         'SELECT', 'tracktalk_app'),
            ('tracktalk.write_turns',           'SELECT', 'tracktalk_app'),
            ('tracktalk.slow_mode_posts',       'SELECT', 'tracktalk_app'),
            ('tracktalk.comment_mentions',      'SELECT', 'tracktalk_app'),
            ('tracktalk.post_stats',            'SELECT', 'tracktalk_app'),
            ('tracktalk.post_mentions',         'SELECT', 'tracktalk_app'),
            ('tracktalk.track_audio',           'SELECT', 'tracktalk_app'),
            -- who is here: each replica's heartbeat and its listeners per track
            ('tracktalk.replicas',              'SELECT, INSERT, UPDATE, DELETE', 'tracktalk_app'),
            ('tracktalk.presence',              'SELECT, INSERT, UPDATE, DELETE', 'tracktalk_app'),
            ('tracktalk.comment_objects',       'SELECT', 'tracktalk_app'),
            ('tracktalk.post_objects',          'SELECT', 'tracktalk_app'),
            ('tracktalk.thread_objects',        'SELECT', 'tracktalk_app'),
            ('tracktalk.notification_objects',  'SELECT', 'tracktalk_app')
        ) AS g (relation, privileges, grantee)
    LOOP
        IF to_regclass(grant_.relation) IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON %s FROM tracktalk_writer, tracktalk_app', grant_.relation);
            EXECUTE format('GRANT %s ON %s TO %I', grant_.privileges, grant_.relation, grant_.grantee);
        END IF;
    END LOOP;
END
$$;
