-- tracktalk: what makes a change go live, whoever makes it.
--
-- Apply after sql/schema.sql, in the same transaction (see the head of that file). Safe to run
-- again and again: functions are replaced, triggers dropped and created anew.
--
-- How an event travels:
--   1. A statement changes comments, comment_likes, track_likes or track_shares.
--   2. Its AFTER ... FOR EACH STATEMENT trigger builds the WebSocket messages of the change and
--      calls tracktalk.publish() once per track, in track order.
--   3. publish() bumps the track's row in tracktalk.track_state (its lock, held to commit, makes
--      writers to one track commit in the order of their numbers), numbers the messages `seq`,
--      keeps them in tracktalk.events, and sends ONE pg_notify on channel 'tracktalk' for them:
--      the messages themselves when they fit in NOTIFY's 8000 bytes, else only their numbers.
--   4. Each replica's listener gets the NOTIFY at commit (never on rollback) and hands the
--      messages to the sockets of that track; what did not fit is read from tracktalk.events.
-- New notifications rows are announced by id and recipient (kind "user"); a replica where a
-- recipient has a socket reads the messages with tracktalk.user_messages() after the commit.
--
-- NOTIFY payloads on channel 'tracktalk' (JSON, read by app/listener.py):
--   {"k":"track","track_id":T,"first":F,"last":L,"at":EPOCH[,"events":[message F, ..., message L]]}
--   {"k":"user","ids":[notification ids],"users":[their recipients, in the same order]}
--   {"k":"ephemeral","track_id":T,"message":{...}}          (sent by the app: typing)

-- The contract's tables belong in public, whoever runs this: for a role named "tracktalk" the
-- default search_path ("$user", public) would otherwise put them in the schema "tracktalk".
-- Function bodies are resolved when they run, with the writer's search_path, so they name the
-- tables public.<table>: a service whose search_path lacks public writes all the same.
SET search_path = public;

-- Largest NOTIFY payload we send; PostgreSQL refuses 8000 bytes and more.
CREATE OR REPLACE FUNCTION tracktalk.max_payload() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 7900 $$;

---------------------------------------------------------------------------------------------
-- Publishing
---------------------------------------------------------------------------------------------

-- Numbers `messages` as the next events of `track`, applies the counter deltas, keeps the
-- events in tracktalk.events and notifies the listeners once. One change, one event: when a
-- counter changed, each message carries the counters as they stand after the statement
-- (`metrics`); a change that is only counters (a track like, unlike or share) is one
-- track_metrics event.
CREATE OR REPLACE FUNCTION tracktalk.publish(
    track           text,
    messages        jsonb[],
    comments_delta  bigint DEFAULT 0,
    likes_delta     bigint DEFAULT 0,
    shares_delta    bigint DEFAULT 0
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    metrics_changed constant boolean := comments_delta <> 0 OR likes_delta <> 0 OR shares_delta <> 0;
    n constant integer := greatest(coalesce(cardinality(messages), 0), metrics_changed::integer);
    extra jsonb;
    state tracktalk.track_state;
    first_seq bigint;
    texts text[];
    joined text;
    payload text;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    FOR attempt IN 1..2 LOOP
        UPDATE tracktalk.track_state AS s
           SET last_seq = s.last_seq + n,
               comments = greatest(s.comments + comments_delta, 0),
               likes = greatest(s.likes + likes_delta, 0),
               shares = greatest(s.shares + shares_delta, 0)
         WHERE s.track_id = track
        RETURNING s.* INTO state;
        EXIT WHEN FOUND;
        -- No row: the track is being deleted (nothing to tell), or it was made while the
        -- triggers were off (count it now, then number from there).
        IF NOT EXISTS (SELECT 1 FROM public.tracks WHERE id = track) THEN
            RETURN;
        END IF;
        PERFORM tracktalk.recount(track);
    END LOOP;

    first_seq := state.last_seq - n + 1;
    IF coalesce(cardinality(messages), 0) = 0 THEN
        texts := ARRAY[jsonb_build_object(
            'type', 'track_metrics', 'track_id', track, 'seq', state.last_seq,
            'likes', state.likes, 'comments', state.comments, 'shares', state.shares)::text];
    ELSE
        extra := jsonb_build_object('track_id', track);
        IF metrics_changed THEN
            extra := extra || jsonb_build_object('metrics', jsonb_build_object(
                'likes', state.likes, 'comments', state.comments, 'shares', state.shares));
        END IF;
        SELECT array_agg((m || extra || jsonb_build_object('seq', first_seq + o - 1))::text ORDER BY o)
          INTO texts
          FROM unnest(messages) WITH ORDINALITY AS u (m, o);
    END IF;

    INSERT INTO tracktalk.events (track_id, seq, message)
    SELECT track, first_seq + o - 1, t::json
      FROM unnest(texts) WITH ORDINALITY AS u (t, o);

    -- "at": when the event was made (seconds since the epoch), for the delivery-lag metric.
    payload := format('{"k":"track","track_id":%s,"first":%s,"last":%s,"at":%s',
                      to_json(track), first_seq, state.last_seq,
                      round(extract(epoch FROM clock_timestamp()), 6));
    joined := array_to_string(texts, ',');
    IF octet_length(payload) + octet_length(joined) + 13 <= tracktalk.max_payload() THEN
        payload := payload || ',"events":[' || joined || ']}';
    ELSE
        payload := payload || '}';
    END IF;
    PERFORM pg_notify('tracktalk', payload);
END
$$;

-- Announces notifications rows to their recipients' sockets: their ids and recipients only.
-- The replicas where a recipient has a socket read the messages (tracktalk.user_messages)
-- after the commit, so the writer never pays for building messages that nobody may read.
DROP FUNCTION IF EXISTS tracktalk.announce_notifications(bigint[]);  -- before 2026-11-26
CREATE OR REPLACE FUNCTION tracktalk.announce_notifications(ids bigint[], recipients bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    -- 150 pairs a NOTIFY: even 19-digit ids fit in the payload.
    FOR i IN 1..coalesce(cardinality(ids), 0) BY 150 LOOP
        payload := format('{"k":"user","ids":%s,"users":%s}',
                          to_json(ids[i:i + 149]), to_json(recipients[i:i + 149]));
        PERFORM pg_notify('tracktalk', payload);
    END LOOP;
END
$$;

-- The messages that tell recipients about notifications `ids`, in id order.
CREATE OR REPLACE FUNCTION tracktalk.user_messages(ids bigint[])
RETURNS TABLE (user_id bigint, message jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT m.user_id, m.message
    FROM (
        SELECT n.id, 1 AS part, n.user_id,
               jsonb_build_object('type', 'notification', 'track_id', n.track_id,
                                  'notification', to_jsonb(n)) AS message
          FROM tracktalk.notification_objects n
         WHERE n.id = ANY (ids)
        UNION ALL
        SELECT n.id, 2, n.user_id,
               jsonb_build_object('type', 'mention', 'track_id', n.track_id,
                                  'comment', to_jsonb(c) || '{"user_has_liked": false}',
                                  'from_user', n.actor_username)
          FROM tracktalk.notification_objects n
          JOIN tracktalk.comment_objects c ON c.id = n.comment_id
         WHERE n.id = ANY (ids) AND n.kind = 'mention'
    ) AS m
    ORDER BY m.id, m.part;
END
$$;

-- Sets a track's counters from its rows (one scan). For a track made while the triggers were
-- off, or by a DBA who suspects drift: SELECT tracktalk.recount(id) FROM tracks;
CREATE OR REPLACE FUNCTION tracktalk.recount(track text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO tracktalk.track_state AS s (track_id, comments, likes, shares)
    SELECT t.id,
           (SELECT count(*) FROM public.comments WHERE track_id = t.id),
           (SELECT count(*) FROM public.track_likes WHERE track_id = t.id),
           (SELECT count(*) FROM public.track_shares WHERE track_id = t.id)
      FROM public.tracks t
     WHERE t.id = track
    ON CONFLICT (track_id) DO UPDATE
       SET comments = excluded.comments, likes = excluded.likes, shares = excluded.shares
$$;

-- Deletes the events older than settings.event_retention; returns how many. Also forgets the
-- API's comment posts older than an hour (tracktalk.comment_posts). Every replica calls it
-- every few minutes; a DBA may schedule it instead (pg_cron). SECURITY DEFINER, as comment_wait.
CREATE OR REPLACE FUNCTION tracktalk.prune_events() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM tracktalk.comment_posts WHERE at < now() - interval '1 hour';
    WITH gone AS (
        DELETE FROM tracktalk.events
         WHERE created_at < now() - (SELECT event_retention FROM tracktalk.settings)
        RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;

-- Can `viewer` see `track`? Private tracks are for their album's creator and team members
-- (NULL when there is no such track). Every API request asks it. PL/pgSQL keeps the query's
-- plan for the session: as a LANGUAGE sql function (which PostgreSQL cannot inline: its body
-- reads tables) it was parsed and planned again in every query that called it, about 0.13 ms
-- of the server's CPU per request.
CREATE OR REPLACE FUNCTION tracktalk.can_see(viewer bigint, track text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT NOT t.is_private
                   OR a.created_by_id = viewer
                   OR EXISTS (SELECT 1 FROM public.users u WHERE u.id = viewer AND u.is_team)
              FROM public.tracks t
              JOIN public.albums a ON a.id = t.album_id
             WHERE t.id = track);
END
$$;

-- Seconds until `author` may post another comment through the API: 0 while they posted fewer
-- than `most` within `per`, and then the post is counted (in tracktalk.comment_posts, in the
-- caller's transaction: a post that fails is not counted); else until the `most`-th newest of
-- those leaves the window. One author's posts are taken in turn here (a transaction-level
-- advisory lock, held to commit), so that replicas answering at the same moment cannot both
-- let the last one through. Expects READ COMMITTED (PostgreSQL's default; the app's pool sets it).
-- SECURITY DEFINER: it writes tracktalk.comment_posts as its owner, so the app role needs no
-- grant on that table (and an upgrade works before sql/roles.sql is run again).
CREATE OR REPLACE FUNCTION tracktalk.comment_wait(author bigint, most integer, per interval)
RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nth timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tracktalk.comment_wait'), hashint8(author));
    DELETE FROM tracktalk.comment_posts WHERE user_id = author AND at <= now() - per;
    SELECT p.at INTO nth
      FROM tracktalk.comment_posts p
     WHERE p.user_id = author
     ORDER BY p.at DESC
    OFFSET greatest(most, 1) - 1
     LIMIT 1;
    IF nth IS NOT NULL THEN
        RETURN greatest(extract(epoch FROM nth + per - clock_timestamp())::double precision, 0.001);
    END IF;
    INSERT INTO tracktalk.comment_posts (user_id) VALUES (author);
    RETURN 0;
END
$$;

-- Usernames @mentioned in `content`, lower-cased, each once. An @ inside a word (mail
-- addresses) is no mention.
CREATE OR REPLACE FUNCTION tracktalk.mentioned_names(content text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE AS $$
    SELECT DISTINCT lower(m[1])
      FROM regexp_matches(content, '(?<![A-Za-z0-9_])@([A-Za-z0-9_]{1,64})', 'g') AS m
$$;

---------------------------------------------------------------------------------------------
-- comments
---------------------------------------------------------------------------------------------

-- Row checks that a constraint cannot make, and the edit marks of the contract.
CREATE OR REPLACE FUNCTION tracktalk.comments_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    duration double precision;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.content IS DISTINCT FROM OLD.content THEN
        NEW.is_edited := true;
        NEW.last_edited_at := now();
    END IF;
    IF TG_OP = 'INSERT' OR NEW."timestamp" IS DISTINCT FROM OLD."timestamp" THEN
        SELECT duration_seconds INTO duration FROM public.tracks WHERE id = NEW.track_id;
        IF NEW."timestamp" > duration THEN
            RAISE EXCEPTION 'comment timestamp % is past the end of track % (% seconds)',
                NEW."timestamp", NEW.track_id, duration
                USING ERRCODE = 'check_violation', CONSTRAINT = 'comments_timestamp_within_track';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS comments_before_write ON comments;
CREATE TRIGGER comments_before_write
    BEFORE INSERT OR UPDATE ON comments
    FOR EACH ROW EXECUTE FUNCTION tracktalk.comments_before_write();

-- A deleted comment takes its unread notifications with it (before the foreign key sets
-- comment_id to NULL on the read ones).
CREATE OR REPLACE FUNCTION tracktalk.comments_before_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM public.notifications WHERE comment_id = OLD.id AND read_at IS NULL;
    RETURN OLD;
END
$$;

DROP TRIGGER IF EXISTS comments_before_delete ON comments;
CREATE TRIGGER comments_before_delete
    BEFORE DELETE ON comments
    FOR EACH ROW EXECUTE FUNCTION tracktalk.comments_before_delete();

-- Notifies about comments (new ones; or edited ones, with their `old_contents`), given column
-- by column: each @mentioned user (on an edit, only the newly mentioned), the parent's author,
-- the album's creator and team members (settings.notify_team); never the writer, never someone
-- who cannot see the track, and one notification per person and comment, of the most specific
-- kind: the rules run in that order, and the unique index notifications_one_per_comment turns
-- away what a later, less specific rule finds again.
DROP FUNCTION IF EXISTS tracktalk.notify_comment_readers(bigint[], text[]);  -- before 2026-11-26
DROP FUNCTION IF EXISTS tracktalk.notify_comment_readers(comments[], comments[]);  -- 2026-11-26
CREATE OR REPLACE FUNCTION tracktalk.notify_comment_readers(
    ids bigint[], track_ids text[], user_ids bigint[], parent_ids bigint[], contents text[],
    old_contents text[] DEFAULT NULL
) RETURNS void
-- PL/pgSQL with generic plans: each statement is planned once per session, not at every comment
-- (planning cost more than the work). A generic plan outlives the table sizes it was made for,
-- so the comments come in as arrays (plain columns: a row type would tie the cached plans to the
-- table's columns of the day), and the tables that grow (comments, users) are reached only
-- through per-row subqueries, which stay index lookups where a join could stay a sequential
-- scan chosen when the table was small.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    edited constant boolean := old_contents IS NOT NULL;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(contents) AS c WHERE c LIKE '%@%') THEN
        INSERT INTO public.notifications (user_id, kind, actor_id, track_id, comment_id)
        SELECT mentioned.id, 'mention', w.user_id, w.track_id, w.id
          FROM unnest(ids, track_ids, user_ids, contents, old_contents)
               AS w (id, track_id, user_id, content, old_content)
          JOIN public.tracks t ON t.id = w.track_id
          JOIN public.albums a ON a.id = t.album_id
         CROSS JOIN LATERAL tracktalk.mentioned_names(w.content) AS name
         CROSS JOIN LATERAL (SELECT u.id, u.is_team FROM public.users u WHERE lower(u.username) = name
                             OFFSET 0  -- keeps this a per-name index lookup
                            ) AS mentioned
         WHERE w.content LIKE '%@%'
           AND mentioned.id <> w.user_id
           -- tracktalk.can_see(mentioned, track), written out
           AND (NOT t.is_private OR mentioned.id = a.created_by_id OR mentioned.is_team)
           AND NOT (edited AND name IN (SELECT tracktalk.mentioned_names(w.old_content)))
         ORDER BY w.id, mentioned.id
        ON CONFLICT (user_id, comment_id) WHERE kind IN ('comment', 'reply', 'mention')
        -- An edit that mentions someone already told of the comment makes it news again.
        DO UPDATE SET kind = excluded.kind, created_at = now(), read_at = NULL
            WHERE notifications.kind <> 'mention';
    END IF;
    IF edited THEN
        RETURN;
    END IF;

    IF cardinality(array_remove(parent_ids, NULL)) > 0 THEN
        INSERT INTO public.notifications (user_id, kind, actor_id, track_id, comment_id)
        SELECT parent.user_id, 'reply', w.user_id, w.track_id, w.id
          FROM unnest(ids, track_ids, user_ids, parent_ids) AS w (id, track_id, user_id, parent_id)
          JOIN public.tracks t ON t.id = w.track_id
          JOIN public.albums a ON a.id = t.album_id
         CROSS JOIN LATERAL (SELECT p.user_id, u.is_team FROM public.comments p JOIN public.users u ON u.id = p.user_id
                              WHERE p.id = w.parent_id
                             OFFSET 0  -- keeps this a per-row index lookup
                            ) AS parent
         WHERE parent.user_id <> w.user_id
           -- tracktalk.can_see(parent author, track), written out
           AND (NOT t.is_private OR parent.user_id = a.created_by_id OR parent.is_team)
         ORDER BY w.id
        ON CONFLICT (user_id, comment_id) WHERE kind IN ('comment', 'reply', 'mention') DO NOTHING;
    END IF;

    -- The creator and the team see every track: no visibility test.
    INSERT INTO public.notifications (user_id, kind, actor_id, track_id, comment_id)
    SELECT reader.id, 'comment', w.user_id, w.track_id, w.id
      FROM unnest(ids, track_ids, user_ids) AS w (id, track_id, user_id)
      JOIN public.tracks t ON t.id = w.track_id
      JOIN public.albums a ON a.id = t.album_id
     CROSS JOIN LATERAL (SELECT a.created_by_id
                         UNION
                         SELECT u.id FROM public.users u
                          WHERE u.is_team AND (SELECT notify_team FROM tracktalk.settings)) AS reader (id)
     WHERE reader.id <> w.user_id
     ORDER BY w.id, reader.id
    ON CONFLICT (user_id, comment_id) WHERE kind IN ('comment', 'reply', 'mention') DO NOTHING;
END
$$;

CREATE OR REPLACE FUNCTION tracktalk.comments_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT n.track_id,
               array_agg(jsonb_build_object('type', 'new_comment',
                                            'comment', to_jsonb(o) || '{"user_has_liked": false}')
                         ORDER BY n.id) AS messages,
               count(*) AS added
          FROM new_rows n
          JOIN tracktalk.comment_objects o ON o.id = n.id
         GROUP BY n.track_id
         ORDER BY n.track_id
    LOOP
        PERFORM tracktalk.publish(r.track_id, r.messages, comments_delta => r.added);
    END LOOP;
    PERFORM tracktalk.notify_comment_readers(
                array_agg(n.id ORDER BY n.id), array_agg(n.track_id ORDER BY n.id),
                array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                array_agg(n.content ORDER BY n.id))
       FROM new_rows n;
    RETURN NULL;
END
$$;

-- Its statements join the two transition tables, so they run through EXECUTE: planned for each
-- statement's rows, where a plan kept from a one-row edit (a nested loop) would compare every
-- old row with every new one in a 10,000-row UPDATE.
CREATE OR REPLACE FUNCTION tracktalk.comments_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN EXECUTE $q$
        SELECT n.track_id,
               array_agg(jsonb_build_object('type', 'comment_edited', 'comment_id', n.id,
                                            'content', n.content, 'timestamp', n."timestamp",
                                            'is_edited', n.is_edited,
                                            'last_edited_at', n.last_edited_at)
                         ORDER BY n.id) AS messages
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         WHERE n.content IS DISTINCT FROM o.content
            OR n."timestamp" IS DISTINCT FROM o."timestamp"
         GROUP BY n.track_id
         ORDER BY n.track_id
    $q$
    LOOP
        PERFORM tracktalk.publish(r.track_id, r.messages);
    END LOOP;
    EXECUTE $q$
        SELECT tracktalk.notify_comment_readers(
                   array_agg(n.id ORDER BY n.id), array_agg(n.track_id ORDER BY n.id),
                   array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                   array_agg(n.content ORDER BY n.id), array_agg(o.content ORDER BY n.id))
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         WHERE n.content IS DISTINCT FROM o.content
    $q$;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tracktalk.comments_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT o.track_id,
               array_agg(jsonb_build_object('type', 'comment_deleted', 'comment_id', o.id)
                         ORDER BY o.id) AS messages,
               count(*) AS removed
          FROM old_rows o
         GROUP BY o.track_id
         ORDER BY o.track_id
    LOOP
        PERFORM tracktalk.publish(r.track_id, r.messages, comments_delta => -r.removed);
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS comments_after_insert ON comments;
CREATE TRIGGER comments_after_insert
    AFTER INSERT ON comments REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comments_after_insert();

DROP TRIGGER IF EXISTS comments_after_update ON comments;
CREATE TRIGGER comments_after_update
    AFTER UPDATE ON comments REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comments_after_update();

DROP TRIGGER IF EXISTS comments_after_delete ON comments;
CREATE TRIGGER comments_after_delete
    AFTER DELETE ON comments REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comments_after_delete();

---------------------------------------------------------------------------------------------
-- comment_likes
---------------------------------------------------------------------------------------------

-- Keeps comment_stats, sends comment_liked with the fresh count, and tells a comment's author
-- of a like (once per liker: unlike then like again tells nobody twice).
CREATE OR REPLACE FUNCTION tracktalk.comment_likes_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sign constant integer := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
    r record;
BEGIN
    FOR r IN
        WITH counted AS (
            INSERT INTO tracktalk.comment_stats AS s (comment_id, likes)
            SELECT d.comment_id, greatest(sign * count(*), 0)
              FROM changed_rows d
             -- A comment being deleted takes its likes along: nothing to count or tell then.
             WHERE EXISTS (SELECT 1 FROM public.comments c WHERE c.id = d.comment_id)
             GROUP BY d.comment_id
             ORDER BY d.comment_id
            ON CONFLICT (comment_id) DO UPDATE
               SET likes = greatest(s.likes + sign * (SELECT count(*) FROM changed_rows d
                                                       WHERE d.comment_id = s.comment_id), 0)
            RETURNING s.comment_id, s.likes
        )
        SELECT c.track_id,
               array_agg(jsonb_build_object('type', 'comment_liked', 'comment_id', k.comment_id,
                                            'like_count', k.likes)
                         ORDER BY k.comment_id) AS messages
          FROM counted k
          JOIN public.comments c ON c.id = k.comment_id
         GROUP BY c.track_id
         ORDER BY c.track_id
    LOOP
        PERFORM tracktalk.publish(r.track_id, r.messages);
    END LOOP;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO public.notifications (user_id, kind, actor_id, track_id, comment_id)
        SELECT c.user_id, 'comment_like', n.user_id, c.track_id, c.id
          FROM changed_rows n
          JOIN public.comments c ON c.id = n.comment_id
          JOIN public.tracks t ON t.id = c.track_id
          JOIN public.albums a ON a.id = t.album_id
          JOIN public.users author ON author.id = c.user_id
         WHERE c.user_id <> n.user_id
           -- tracktalk.can_see(author, track), written out
           AND (NOT t.is_private OR author.id = a.created_by_id OR author.is_team)
         ORDER BY c.id, n.user_id
        ON CONFLICT (user_id, comment_id, actor_id) WHERE kind = 'comment_like' DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS comment_likes_after_insert ON comment_likes;
CREATE TRIGGER comment_likes_after_insert
    AFTER INSERT ON comment_likes REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comment_likes_changed();

DROP TRIGGER IF EXISTS comment_likes_after_delete ON comment_likes;
CREATE TRIGGER comment_likes_after_delete
    AFTER DELETE ON comment_likes REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comment_likes_changed();

---------------------------------------------------------------------------------------------
-- track_likes, track_shares, tracks
---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tracktalk.track_counts_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    sign constant integer := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
    r record;
BEGIN
    FOR r IN
        SELECT track_id, count(*) AS n FROM changed_rows GROUP BY track_id ORDER BY track_id
    LOOP
        IF TG_TABLE_NAME = 'track_likes' THEN
            PERFORM tracktalk.publish(r.track_id, NULL, likes_delta => sign * r.n);
        ELSE
            PERFORM tracktalk.publish(r.track_id, NULL, shares_delta => sign * r.n);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS track_likes_after_insert ON track_likes;
CREATE TRIGGER track_likes_after_insert
    AFTER INSERT ON track_likes REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.track_counts_changed();
DROP TRIGGER IF EXISTS track_likes_after_delete ON track_likes;
CREATE TRIGGER track_likes_after_delete
    AFTER DELETE ON track_likes REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.track_counts_changed();
DROP TRIGGER IF EXISTS track_shares_after_insert ON track_shares;
CREATE TRIGGER track_shares_after_insert
    AFTER INSERT ON track_shares REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.track_counts_changed();
DROP TRIGGER IF EXISTS track_shares_after_delete ON track_shares;
CREATE TRIGGER track_shares_after_delete
    AFTER DELETE ON track_shares REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.track_counts_changed();

-- A new track starts its numbering and counters at zero.
CREATE OR REPLACE FUNCTION tracktalk.tracks_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tracktalk.track_state (track_id)
    SELECT id FROM new_rows ORDER BY id
    ON CONFLICT (track_id) DO NOTHING;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tracks_after_insert ON tracks;
CREATE TRIGGER tracks_after_insert
    AFTER INSERT ON tracks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.tracks_after_insert();

---------------------------------------------------------------------------------------------
-- notifications
---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tracktalk.notifications_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tracktalk.announce_notifications(array_agg(id ORDER BY id), array_agg(user_id ORDER BY id))
       FROM new_rows;
    RETURN NULL;
END
$$;

-- An existing notification that becomes a mention (an edit added an @) is news again.
-- (Through EXECUTE, like comments_after_update: a join of the two transition tables.)
CREATE OR REPLACE FUNCTION tracktalk.notifications_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $q$
        SELECT tracktalk.announce_notifications(array_agg(n.id ORDER BY n.id),
                                                array_agg(n.user_id ORDER BY n.id))
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.kind IS DISTINCT FROM o.kind
    $q$;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS notifications_after_insert ON notifications;
CREATE TRIGGER notifications_after_insert
    AFTER INSERT ON notifications REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.notifications_after_insert();

DROP TRIGGER IF EXISTS notifications_after_update ON notifications;
CREATE TRIGGER notifications_after_update
    AFTER UPDATE ON notifications REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.notifications_after_update();

---------------------------------------------------------------------------------------------
-- Counters for rows that existed before these triggers, then the version stamp (last).
---------------------------------------------------------------------------------------------

INSERT INTO tracktalk.track_state (track_id, comments, likes, shares)
SELECT t.id,
       (SELECT count(*) FROM comments WHERE track_id = t.id),
       (SELECT count(*) FROM track_likes WHERE track_id = t.id),
       (SELECT count(*) FROM track_shares WHERE track_id = t.id)
  FROM tracks t
ON CONFLICT (track_id) DO NOTHING;

INSERT INTO tracktalk.comment_stats (comment_id, likes)
SELECT comment_id, count(*) FROM comment_likes GROUP BY comment_id
ON CONFLICT (comment_id) DO NOTHING;

-- 2 (2026-11-26): tracktalk.comment_posts and comment_wait. A replica serves a schema of its
-- own version or newer (each version keeps what the one before it uses).
INSERT INTO tracktalk.schema_version (version) VALUES (2)
ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, applied_at = now();
