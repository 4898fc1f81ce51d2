-- tracktalk: what makes a change go live, whoever makes it.
--
-- Apply after sql/schema.sql, in the same transaction (see the head of that file). Safe to run
-- again and again: functions are replaced, triggers dropped and created anew. It holds what is,
-- top to bottom: shared functions, the channels and their key, publishing, the triggers of each
-- table, maintenance (last: the version stamp). What turns an older schema into this one is in
-- sql/upgrade/, one numbered file per version.
--
-- How an event travels:
--   1. A statement changes comments, comment_likes, track_likes or track_shares (or the tables of
--      another kind of topic: the forum's, a table made live by its DBA).
--   2. Its AFTER ... FOR EACH STATEMENT trigger builds the WebSocket messages of the change and
--      calls tracktalk.publish() once per topic, in topic order (a track's triggers through
--      tracktalk.publish_track(), which keeps the track's counters and puts them in the messages).
--   3. publish() bumps the topic's row in tracktalk.topic_state (its lock, held to commit, makes
--      writers to one topic commit in the order of their numbers), numbers the messages `seq`,
--      tags them (a random tag per statement and topic: a failover that lost commits numbers new
--      events with their seqs, and the tags tell the two apart), keeps them in tracktalk.events,
--      and sends ONE pg_notify for them on the topic's own channel: the messages themselves when
--      the topic is public, no event has a restricted variant, and they fit in NOTIFY's 8000
--      bytes, else only their numbers.
--   4. Each replica that has sockets on the topic LISTENs on its channel, gets the NOTIFY at
--      commit (never on rollback) and hands the messages to the sockets; what was not in the
--      payload it reads from tracktalk.events.
-- A topic is a text: `track:{track_id}`, `thread:{id}`, `category:{slug}`, or a live table's
-- (`book_requests`, `book_requests:7`); its kind (before the first colon) names the functions that
-- say who may see it (tracktalk.topic_kinds; tracktalk.may_see, tracktalk.moderates). The
-- interface for those who add kinds of topics is in docs/dba.md, "Topics".
-- New notifications rows are announced by id on their recipient's channel; a replica where the
-- recipient has a socket reads the messages with
-- tracktalk.user_messages() after the commit. A change of who may see a topic (a track made
-- private, moved, deleted; a user off the team, or deleted) sends a "revoke" on the topic's or
-- user's channel: the replicas check those subscriptions again and end the ones that lost access.
--
-- PostgreSQL lets any role that can connect LISTEN and NOTIFY on any channel whose name it knows.
-- So channels are named by tracktalk.channel_key ('tracktalk:' and 32 hex digits of the HMAC of
-- the channel's name: 'topic <topic>', 'user <id>', 'rekey'; tracktalk.channel_name): nobody
-- without the key can flood a channel a replica listens on. And every payload is signed
-- (HMAC-SHA256 under the same key): the replicas do not believe what is not signed. Payloads
-- (JSON after the 64 hex digits and a space; read by app/live/notices.py):
--   {"k":"topic","topic":T,"first":F,"last":L,"at":EPOCH,"tag":G,"prev":P[,"events":[message F, ..., message L]]}
--       (G: the events' tag; P: the tag of event F - 1, or null)
--   {"k":"user","user":U,"ids":[notification ids],"at":EPOCH}
--   {"k":"revoke","topic":T,"at":EPOCH[,"gone":true]}   or   {"k":"revoke","user":U,"at":EPOCH}
--   {"k":"rekey","at":EPOCH}   (on the old key's 'rekey' channel, signed with it: the key changed)
-- The replicas also send each other typing notices on a topic's channel, sealed with a key
-- derived from the same secret ("e:" and base64).

-- The contract's tables belong in public, whoever runs this: for a role named "tracktalk" the
-- default search_path ("$user", public) would otherwise put them in the schema "tracktalk".
-- Function bodies are resolved when they run, with the writer's search_path, so they name the
-- tables public.<table>: a service whose search_path lacks public writes all the same.
SET search_path = public;

---------------------------------------------------------------------------------------------
-- Shared functions
---------------------------------------------------------------------------------------------

-- Largest NOTIFY payload we send; PostgreSQL refuses 8000 bytes and more.
CREATE OR REPLACE FUNCTION tracktalk.max_payload() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 7900 $$;

-- Most users one comment notifies as mentioned: the first this many distinct @names in its text
-- that name a user (names of nobody are plain text and take no place), its edits counting
-- toward the same number. The author and users who cannot see the track take their place but are
-- not notified.
CREATE OR REPLACE FUNCTION tracktalk.max_mentions() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT 10 $$;

-- A time as the JSON of every message and answer writes it (HTTP answers are msgspec's, and
-- this is exactly what msgspec writes for a UTC time): RFC 3339 in UTC with `Z`, microseconds
-- as six digits, left out when they are zero. to_json would write the session's zone
-- (`+00:00`) and drop trailing zeros (`.69860`).
CREATE OR REPLACE FUNCTION tracktalk.json_time(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || 'Z'
$$;

-- A comment of tracktalk.comment_objects as the messages carry it (the same for everyone:
-- user_has_liked is false).
CREATE OR REPLACE FUNCTION tracktalk.comment_json(o tracktalk.comment_objects) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(o) || jsonb_build_object('user_has_liked', false,
                                             'created_at', tracktalk.json_time(o.created_at),
                                             'last_edited_at', tracktalk.json_time(o.last_edited_at))
$$;

-- A notification of tracktalk.notification_objects as the `notification` message carries it.
CREATE OR REPLACE FUNCTION tracktalk.notification_json(n tracktalk.notification_objects) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(n) || jsonb_build_object('created_at', tracktalk.json_time(n.created_at),
                                             'read_at', tracktalk.json_time(n.read_at))
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

-- Usernames @mentioned in `content`, lower-cased, each once, in the order of their first
-- appearance (read it WITH ORDINALITY). An @ inside a word (mail addresses) is no mention.
CREATE OR REPLACE FUNCTION tracktalk.mentioned_names(content text) RETURNS SETOF text
LANGUAGE sql IMMUTABLE AS $$
    SELECT name
      FROM regexp_matches(content, '(?<![A-Za-z0-9_])@([A-Za-z0-9_]{1,64})', 'g') WITH ORDINALITY AS m (match, at)
     CROSS JOIN LATERAL lower(m.match[1]) AS name
     GROUP BY name
     ORDER BY min(m.at)
$$;

-- Seconds until `author` may write again through the API, by `kind` ('comment': a post;
-- 'write': an edit, a comment like or unlike, a track like, unlike or share): 0 while they made
-- fewer than `most` writes of that kind within `per`, and then this one is counted (in
-- tracktalk.recent_writes, in the caller's transaction: a write that fails is not counted); else
-- until the `most`-th newest of those leaves the window. One user's writes of a kind are taken in
-- turn here (the lock of the user's row of that kind in tracktalk.write_turns, held to commit;
-- each kind its own, so that posts and likes queue apart), so that replicas answering at the same
-- moment cannot both let the last one through. Only tracktalk's owner can take that lock: not an
-- advisory lock, whose keys any role that can connect may compute and hold. A write that changes
-- nothing (a second like) counts: it is a request, and it costs one. Expects READ COMMITTED
-- (PostgreSQL's default; the app's pool sets it). SECURITY DEFINER: it writes
-- tracktalk.recent_writes and tracktalk.write_turns as their owner, so the app role needs no grant
-- on them.
CREATE OR REPLACE FUNCTION tracktalk.wait_to_write(author bigint, kind text, most integer, per interval)
RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nth timestamptz;
BEGIN
    -- The user's turn: lock the row, made on the first write of the kind. A writer that finds no
    -- row inserts it (a second one waits on that insert, finds it made, and locks it next).
    LOOP
        PERFORM FROM tracktalk.write_turns t WHERE t.user_id = author AND t.kind = wait_to_write.kind FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO tracktalk.write_turns (user_id, kind) VALUES (author, wait_to_write.kind) ON CONFLICT DO NOTHING;
    END LOOP;
    DELETE FROM tracktalk.recent_writes w WHERE w.user_id = author AND w.kind = wait_to_write.kind AND w.at <= now() - per;
    SELECT w.at INTO nth
      FROM tracktalk.recent_writes w
     WHERE w.user_id = author AND w.kind = wait_to_write.kind
     ORDER BY w.at DESC
    OFFSET greatest(most, 1) - 1
     LIMIT 1;
    IF nth IS NOT NULL THEN
        RETURN greatest(extract(epoch FROM nth + per - clock_timestamp())::double precision, 0.001);
    END IF;
    INSERT INTO tracktalk.recent_writes (user_id, kind) VALUES (author, wait_to_write.kind);
    RETURN 0;
END
$$;

---------------------------------------------------------------------------------------------
-- Channels, their key, and signed notices
---------------------------------------------------------------------------------------------

-- HMAC-SHA256 of `body`'s UTF-8 bytes, in hex, under the key whose pads (tracktalk.channel_key's
-- inner_pad and outer_pad) are given: two sha256() calls (RFC 2104).
CREATE OR REPLACE FUNCTION tracktalk.hmac(inner_pad bytea, outer_pad bytea, body text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(outer_pad || sha256(inner_pad || convert_to(body, 'UTF8'))), 'hex')
$$;

-- The channel named `name` ('topic <topic>', 'user <id>', 'rekey') under the key of those pads:
-- 'tracktalk:' and 32 hex digits of its HMAC (app/live/notices.py names it the same way).
CREATE OR REPLACE FUNCTION tracktalk.channel_name(inner_pad bytea, outer_pad bytea, name text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 'tracktalk:' || left(tracktalk.hmac(inner_pad, outer_pad, name), 32)
$$;

-- The channel of a topic's events (and of the replicas' typing notices), under the current key
-- (for DBAs: who may read the key may LISTEN there).
CREATE OR REPLACE FUNCTION tracktalk.topic_channel(topic text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT tracktalk.channel_name(k.inner_pad, k.outer_pad, 'topic ' || topic) FROM tracktalk.channel_key k
$$;

-- The channel of a track's events: its topic's.
CREATE OR REPLACE FUNCTION tracktalk.track_channel(track text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT tracktalk.topic_channel('track:' || track)
$$;

-- The channel of a user's notifications and access changes, under the current key.
CREATE OR REPLACE FUNCTION tracktalk.user_channel(user_id bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT tracktalk.channel_name(k.inner_pad, k.outer_pad, 'user ' || user_id) FROM tracktalk.channel_key k
$$;

-- `key`, padded to 64 bytes, XOR `pad` (HMAC's ipad 0x36 or opad 0x5c).
CREATE OR REPLACE FUNCTION tracktalk.xor_pad(key bytea, pad integer) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT decode(string_agg(lpad(to_hex(CASE WHEN i < octet_length(key) THEN get_byte(key, i) ELSE 0 END # pad),
                                  2, '0'), '' ORDER BY i), 'hex')
      FROM generate_series(0, 63) AS i
$$;

-- Puts a new random key in tracktalk.channel_key: every channel gets a new name. The trigger
-- below tells the replicas, which LISTEN under the new names and read from tracktalk.events what
-- they missed meanwhile (docs/dba.md).
CREATE OR REPLACE FUNCTION tracktalk.rotate_channel_key() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- 32 bytes from two random UUIDs (PostgreSQL's strong random source; 244 random bits).
    fresh constant bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
BEGIN
    INSERT INTO tracktalk.channel_key AS k (key, inner_pad, outer_pad)
    VALUES (fresh, tracktalk.xor_pad(fresh, 54), tracktalk.xor_pad(fresh, 92))
    ON CONFLICT (singleton) DO UPDATE
       SET key = excluded.key, inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad;
END
$$;

-- `body` signed: HMAC-SHA256 of its UTF-8 bytes under the channel key, in hex, a space, `body`.
CREATE OR REPLACE FUNCTION tracktalk.sign(body text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k record;
BEGIN
    SELECT inner_pad, outer_pad INTO STRICT k FROM tracktalk.channel_key;
    RETURN tracktalk.hmac(k.inner_pad, k.outer_pad, body) || ' ' || body;
END
$$;

-- Sends `body`, signed, on the channel named `name` ('topic <topic>', 'user <id>'): the key is read
-- once for both. Its callers have written a row first (so their transaction has an id before it
-- reads the key): a replica that takes a new key waits for the transactions then running, which
-- may have read the old one, to end (app/listener.py).
CREATE OR REPLACE FUNCTION tracktalk.send_signed(name text, body text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k record;
BEGIN
    SELECT inner_pad, outer_pad INTO STRICT k FROM tracktalk.channel_key;
    PERFORM pg_notify(tracktalk.channel_name(k.inner_pad, k.outer_pad, name),
                      tracktalk.hmac(k.inner_pad, k.outer_pad, body) || ' ' || body);
END
$$;

-- Tells the replicas to check again who may see `topic`: each subscription to it is asked of
-- tracktalk.may_see() again, and ends if refused. `gone`: what the topic is about was deleted
-- (its subscribers that may still see it, if it was made again, reload). "at": when (the replicas
-- drop a revocation that is old: one sent again by someone listening).
CREATE OR REPLACE FUNCTION tracktalk.revoke_topic(topic text, gone boolean DEFAULT false) RETURNS void
LANGUAGE sql AS $$
    SELECT tracktalk.send_signed('topic ' || topic,
                                 format('{"k":"revoke","topic":%s,"at":%s%s}', to_json(topic),
                                        round(extract(epoch FROM clock_timestamp()), 6),
                                        CASE WHEN gone THEN ',"gone":true' ELSE '' END))
$$;

-- Tells the replicas to check again who may watch `track` (its topic's revocation).
CREATE OR REPLACE FUNCTION tracktalk.revoke_track(track text, gone boolean DEFAULT false) RETURNS void
LANGUAGE sql AS $$
    SELECT tracktalk.revoke_topic('track:' || track, gone)
$$;

-- Tells the replicas to check again what `user_id` may see (every topic of their sockets).
CREATE OR REPLACE FUNCTION tracktalk.revoke_user(user_id bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT tracktalk.send_signed('user ' || user_id,
                                 format('{"k":"revoke","user":%s,"at":%s}', user_id,
                                        round(extract(epoch FROM clock_timestamp()), 6)))
$$;

-- What `topic` is about was deleted: its events go from the log (they tell of rows that are
-- gone; its numbering stays in tracktalk.topic_state, so that a topic made again goes on from
-- there), and its subscribers are told (revoke_topic, gone): the replicas end the subscriptions
-- that may no longer see it, and make the others reload. For the triggers of a kind's tables.
CREATE OR REPLACE FUNCTION tracktalk.topic_gone(topic text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tracktalk.events e WHERE e.topic = topic_gone.topic;
    PERFORM tracktalk.revoke_topic(topic, gone => true);
END
$$;

---------------------------------------------------------------------------------------------
-- Publishing
---------------------------------------------------------------------------------------------

-- Numbers `messages` as the next events of `topic` and publishes them: THE way an event enters the
-- live path, whatever the kind of topic (docs/dba.md, "Topics").
--   messages    one JSON object per event, in order: what every socket of the topic gets
--               (/api/ws adds "topic"); publish adds "seq" and "tag" to each.
--   public      the messages may travel in the NOTIFY payload (anyone may see the topic). When
--               false, or when a payload would pass 7,900 bytes, the payload carries only the
--               events' numbers and the replicas read the messages from tracktalk.events.
--   restricted  NULL, or per event (NULL in it: none) a variant of the message for the event's
--               restricted audience: the topic's moderators (tracktalk.moderates) and the
--               event's `authors` entry. Every other socket gets the message, which may then be
--               {"type":"skip"} (a socket's numbering stays whole). An event with a restricted
--               variant never travels in a payload.
-- Returns the seq of the last event (NULL when there are none). One NOTIFY per call: call it once
-- per statement and topic, topics in a fixed order (as the track triggers do: in track order),
-- so that writers to several topics lock them in the same order. It runs with its caller's rights
-- (an app role cannot publish: it may not write tracktalk's tables); call it from a trigger
-- function that is SECURITY DEFINER, owned by tracktalk's owner.
CREATE OR REPLACE FUNCTION tracktalk.publish(
    topic       text,
    messages    jsonb[],
    public      boolean DEFAULT false,
    restricted  jsonb[] DEFAULT NULL,
    authors     bigint[] DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n constant integer := coalesce(cardinality(messages), 0);
    -- 64 random bits (of a version 4 UUID's 122), in hex.
    event_tag constant text := left(md5(gen_random_uuid()::text), 16);
    state tracktalk.topic_state;
    first_seq bigint;
    texts text[];
    joined text;
    payload text;
BEGIN
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    -- The topic's row, locked to commit: made at its first event (a writer that finds no row
    -- inserts it; a second one waits on that insert, finds it made, and updates it next).
    LOOP
        UPDATE tracktalk.topic_state AS s
           SET last_seq = s.last_seq + n,
               prev_tag = s.last_tag,  -- the value before this statement (SET reads the old row)
               last_tag = event_tag
         WHERE s.topic = publish.topic
        RETURNING s.* INTO state;
        EXIT WHEN FOUND;
        INSERT INTO tracktalk.topic_state (topic) VALUES (publish.topic) ON CONFLICT DO NOTHING;
    END LOOP;

    first_seq := state.last_seq - n + 1;
    SELECT array_agg((m || jsonb_build_object('seq', first_seq + o - 1, 'tag', event_tag))::text ORDER BY o)
      INTO texts
      FROM unnest(messages) WITH ORDINALITY AS u (m, o);

    IF restricted IS NULL THEN
        INSERT INTO tracktalk.events (topic, seq, message, tag, prev_tag, size)
        SELECT publish.topic, first_seq + o - 1, t::json, event_tag,
               CASE WHEN o = 1 THEN state.prev_tag ELSE event_tag END, octet_length(t)
          FROM unnest(texts) WITH ORDINALITY AS u (t, o);
    ELSE
        INSERT INTO tracktalk.events (topic, seq, message, tag, prev_tag, restricted, author, size)
        SELECT publish.topic, first_seq + o - 1, t::json, event_tag,
               CASE WHEN o = 1 THEN state.prev_tag ELSE event_tag END, r.variant::json,
               authors[o], octet_length(t) + coalesce(octet_length(r.variant), 0)
          FROM unnest(texts) WITH ORDINALITY AS u (t, o)
          CROSS JOIN LATERAL (
                SELECT (restricted[o] || jsonb_build_object('seq', first_seq + o - 1, 'tag', event_tag))::text
               ) AS r (variant);
    END IF;

    -- "at": when the events were made (seconds since the epoch), for the delivery-lag metric;
    -- "prev": the tag of the event before these, so that a replica whose event first - 1 was
    -- another (it has events a failover lost) knows it.
    payload := format('{"k":"topic","topic":%s,"first":%s,"last":%s,"at":%s,"tag":"%s","prev":%s',
                      to_json(topic), first_seq, state.last_seq,
                      round(extract(epoch FROM clock_timestamp()), 6), event_tag,
                      coalesce(to_json(state.prev_tag)::text, 'null'));
    joined := array_to_string(texts, ',');
    -- Content that not everyone may see never travels on a channel (anyone who learns a channel's
    -- name may LISTEN): its replicas read it from tracktalk.events. 13 bytes of ',"events":[]}',
    -- 65 of the signature.
    IF public AND (restricted IS NULL OR cardinality(array_remove(restricted, NULL)) = 0)
       AND octet_length(payload) + octet_length(joined) + 13 + 65 <= tracktalk.max_payload() THEN
        payload := payload || ',"events":[' || joined || ']}';
    ELSE
        payload := payload || '}';
    END IF;
    PERFORM tracktalk.send_signed('topic ' || topic, payload);
    RETURN state.last_seq;
END
$$;

-- Publishes `messages` on the topic of `track` (`track:{id}`), with what every track message
-- carries: `track_id`, and, when a counter changed, the counters as they stand after the
-- statement (`metrics`): one change, one event. A change that is only counters (a track like,
-- unlike or share) is one track_metrics event. The counters (tracktalk.track_state) are updated
-- before the events are numbered, both rows locked to commit, so that the counters writers send
-- go up with their seqs. `restricted` and `authors` as for publish() (each variant gets
-- `track_id` and `metrics` too). Nothing is published for a track being deleted
-- (tracks_after_delete tells its sockets).
CREATE OR REPLACE FUNCTION tracktalk.publish_track(
    track           text,
    messages        jsonb[],
    comments_delta  bigint DEFAULT 0,
    likes_delta     bigint DEFAULT 0,
    shares_delta    bigint DEFAULT 0,
    restricted      jsonb[] DEFAULT NULL,
    authors         bigint[] DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    metrics_changed constant boolean := comments_delta <> 0 OR likes_delta <> 0 OR shares_delta <> 0;
    extra jsonb := jsonb_build_object('track_id', track);
    counts tracktalk.track_state;
    private boolean;
BEGIN
    IF coalesce(cardinality(messages), 0) = 0 AND NOT metrics_changed THEN
        RETURN;
    END IF;
    SELECT t.is_private INTO private FROM public.tracks t WHERE t.id = track;
    IF NOT FOUND THEN
        RETURN;  -- the track is being deleted: nothing to tell (tracks_after_delete tells its sockets)
    END IF;
    IF metrics_changed THEN
        FOR attempt IN 1..2 LOOP
            UPDATE tracktalk.track_state AS s
               SET comments = greatest(s.comments + comments_delta, 0),
                   likes = greatest(s.likes + likes_delta, 0),
                   shares = greatest(s.shares + shares_delta, 0)
             WHERE s.track_id = track
            RETURNING s.* INTO counts;
            EXIT WHEN FOUND;
            -- No row: the track was made while the triggers were off (count it now, then go on
            -- from there).
            PERFORM tracktalk.recount(track, comments_delta, likes_delta, shares_delta);
        END LOOP;
        IF coalesce(cardinality(messages), 0) = 0 THEN
            messages := ARRAY[jsonb_build_object('type', 'track_metrics', 'likes', counts.likes,
                                                 'comments', counts.comments, 'shares', counts.shares)];
        ELSE
            extra := extra || jsonb_build_object('metrics', jsonb_build_object(
                'likes', counts.likes, 'comments', counts.comments, 'shares', counts.shares));
        END IF;
    END IF;
    PERFORM tracktalk.publish(
        'track:' || track,
        ARRAY(SELECT m || extra FROM unnest(messages) WITH ORDINALITY AS u (m, o) ORDER BY o),
        public => NOT private,
        restricted => CASE WHEN restricted IS NOT NULL THEN
                          ARRAY(SELECT r || extra FROM unnest(restricted) WITH ORDINALITY AS u (r, o) ORDER BY o)
                      END,
        authors => authors);
END
$$;

-- Announces notifications rows on their recipients' channels: ids only. The replicas where a
-- recipient has a socket read the messages (tracktalk.user_messages) after the commit, so the
-- writer never pays for building messages that nobody may read.
CREATE OR REPLACE FUNCTION tracktalk.announce_notifications(ids bigint[], recipients bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    at constant numeric := round(extract(epoch FROM clock_timestamp()), 6);
BEGIN
    FOR r IN
        SELECT x.user_id, array_agg(x.id ORDER BY x.id) AS ids
          FROM unnest(ids, recipients) AS x (id, user_id)
         GROUP BY x.user_id
         ORDER BY x.user_id
    LOOP
        -- 300 ids a NOTIFY: even 19-digit ids fit in the payload.
        FOR i IN 1..cardinality(r.ids) BY 300 LOOP
            PERFORM tracktalk.send_signed('user ' || r.user_id,
                                          format('{"k":"user","user":%s,"ids":%s,"at":%s}',
                                                 r.user_id, to_json(r.ids[i:i + 299]), at));
        END LOOP;
    END LOOP;
END
$$;

-- The messages that tell recipients about notifications `ids`, in id order: none for a recipient
-- who may no longer see the track (tracktalk.notification_objects leaves those out).
CREATE OR REPLACE FUNCTION tracktalk.user_messages(ids bigint[])
RETURNS TABLE (user_id bigint, message jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT m.user_id, m.message
    FROM (
        SELECT n.id, 1 AS part, n.user_id,
               jsonb_build_object('type', 'notification', 'track_id', n.track_id,
                                  'notification', tracktalk.notification_json(n)) AS message
          FROM tracktalk.notification_objects n
         WHERE n.id = ANY (ids)
        UNION ALL
        SELECT n.id, 2, n.user_id,
               jsonb_build_object('type', 'mention', 'track_id', n.track_id,
                                  'comment', tracktalk.comment_json(c),
                                  'from_user', n.actor_username)
          FROM tracktalk.notification_objects n
          JOIN tracktalk.comment_objects c ON c.id = n.comment_id
         WHERE n.id = ANY (ids) AND n.kind = 'mention'
    ) AS m
    ORDER BY m.id, m.part;
END
$$;

---------------------------------------------------------------------------------------------
-- Topics: their kinds, and who may see them
---------------------------------------------------------------------------------------------

-- The kinds of topic that tracktalk itself makes (the forum's among them): no live table may be
-- made live under these names.
CREATE OR REPLACE FUNCTION tracktalk.reserved_kinds() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY['track', 'thread', 'category'] $$;

-- Registers a kind of topic, or changes it (re-runnable): the functions that answer
-- tracktalk.may_see() and tracktalk.moderates() for its topics, each `(user_id bigint, topic text)
-- RETURNS boolean` (NULL: anyone may see every topic of the kind / nobody moderates it), and
-- whether its topics have typing and presence. Only who may write tracktalk.topic_kinds (its
-- owner) can call it.
CREATE OR REPLACE FUNCTION tracktalk.topic_kind(
    kind       text,
    may_see    regprocedure DEFAULT NULL,
    moderates  regprocedure DEFAULT NULL,
    presence   boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tracktalk.topic_kinds AS k (kind, may_see, moderates, presence)
    VALUES (topic_kind.kind, tracktalk.kind_function(topic_kind.kind, 'may_see', topic_kind.may_see),
            tracktalk.kind_function(topic_kind.kind, 'moderates', topic_kind.moderates), topic_kind.presence)
    ON CONFLICT ON CONSTRAINT topic_kinds_pkey DO UPDATE
       SET may_see = excluded.may_see, moderates = excluded.moderates, presence = excluded.presence;
END
$$;

-- The schema-qualified name of `fn`, checked to be `(bigint, text) RETURNS boolean` (the `role`
-- function of topic kind `kind`); NULL for NULL.
CREATE OR REPLACE FUNCTION tracktalk.kind_function(kind text, role text, fn regprocedure) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text;
BEGIN
    IF fn IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT format('%I.%I', n.nspname, p.proname) INTO name
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = fn
       AND p.prorettype = 'boolean'::regtype
       AND p.pronargs = 2 AND p.proargtypes[0] = 'bigint'::regtype AND p.proargtypes[1] = 'text'::regtype
       AND p.prokind = 'f' AND NOT p.proretset;
    IF name IS NULL THEN
        RAISE EXCEPTION 'the % function of topic kind % must be (user_id bigint, topic text) RETURNS boolean: % is not',
                        role, kind, fn
            USING ERRCODE = 'invalid_function_definition';
    END IF;
    RETURN name;
END
$$;

-- May `user_id` (NULL: an anonymous socket) subscribe to `topic`? true: yes; false: forbidden;
-- NULL: there is no such topic (an unknown kind, a track that does not exist or that the user may
-- not know of). Asked by the replicas when a socket subscribes (many pairs in one query) and again
-- when a revocation names the topic or the user. Dispatches on the topic's kind (the text before
-- its first colon) to the kind's function (tracktalk.topic_kinds.may_see). A kind's function
-- that raises refuses, with a WARNING in the server's log: one bad function fails none of the
-- other pairs asked with it, and its error reaches no client.
CREATE OR REPLACE FUNCTION tracktalk.may_see(user_id bigint, topic text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn text;
    seen boolean;
BEGIN
    SELECT k.may_see INTO fn FROM tracktalk.topic_kinds k WHERE k.kind = split_part(topic, ':', 1);
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF fn IS NULL THEN
        RETURN true;
    END IF;
    BEGIN
        EXECUTE format('SELECT %s($1, $2)', fn) INTO seen USING user_id, topic;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'tracktalk.may_see: % failed for topic % (refused): %', fn, left(topic, 100), SQLERRM;
        RETURN false;
    END;
    RETURN seen;
END
$$;

-- Does `user_id` moderate `topic` (get the restricted variant of its events: tracktalk.events)?
-- Asked when a socket subscribes, and again with may_see(). Never NULL.
CREATE OR REPLACE FUNCTION tracktalk.moderates(user_id bigint, topic text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn text;
    yes boolean;
BEGIN
    SELECT k.moderates INTO fn FROM tracktalk.topic_kinds k WHERE k.kind = split_part(topic, ':', 1);
    IF fn IS NULL OR user_id IS NULL THEN
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('SELECT %s($1, $2)', fn) INTO yes USING user_id, topic;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'tracktalk.moderates: % failed for topic % (not a moderator): %', fn, left(topic, 100), SQLERRM;
        RETURN false;
    END;
    RETURN coalesce(yes, false);
END
$$;

-- `track:{id}`: the track exists and the user may see it (tracktalk.can_see). A private track
-- exists only for those who may see it (as over HTTP, where others get 404): NULL, not false.
CREATE OR REPLACE FUNCTION tracktalk.track_may_see(user_id bigint, topic text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN tracktalk.can_see(user_id, substr(topic, 7)) THEN true END
$$;

-- The moderators of `track:{id}`: its album's creator and the team.
CREATE OR REPLACE FUNCTION tracktalk.track_moderates(user_id bigint, topic text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM public.users u WHERE u.id = user_id AND u.is_team)
        OR EXISTS (SELECT 1 FROM public.tracks t JOIN public.albums a ON a.id = t.album_id
                    WHERE t.id = substr(topic, 7) AND a.created_by_id = user_id)
$$;

SELECT tracktalk.topic_kind('track', 'tracktalk.track_may_see(bigint, text)',
                            'tracktalk.track_moderates(bigint, text)', presence => true);

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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
-- by column: each @mentioned user (at most max_mentions() per comment, its edits included), the
-- parent's author, the album's creator and team members (settings.notify_team); never the
-- writer, never someone who cannot see the track, and one notification per person and comment,
-- of the most specific kind: the rules run in that order, and the unique index
-- notifications_one_per_comment turns away what a later, less specific rule finds again.
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
        -- The users each comment names that it has not named before, in text order, as many as
        -- keep it within max_mentions() (tracktalk.comment_mentions remembers them, edits
        -- included); of those, whoever may see the track and is not the writer is notified.
        WITH named AS (
            INSERT INTO tracktalk.comment_mentions (comment_id, user_id)
            SELECT w.id, newly.id
              FROM unnest(ids, contents) AS w (id, content)
             CROSS JOIN LATERAL (
                   SELECT u.id
                     FROM tracktalk.mentioned_names(w.content) WITH ORDINALITY AS m (name, at)
                    CROSS JOIN LATERAL (SELECT u.id FROM public.users u WHERE lower(u.username) = m.name
                                        OFFSET 0  -- keeps this a per-name index lookup
                                       ) AS u
                    WHERE NOT EXISTS (SELECT 1 FROM tracktalk.comment_mentions c
                                       WHERE c.comment_id = w.id AND c.user_id = u.id)
                    ORDER BY m.at, u.id
                    LIMIT greatest(tracktalk.max_mentions()
                                   - (SELECT count(*) FROM tracktalk.comment_mentions c WHERE c.comment_id = w.id),
                                   0)
                   ) AS newly
             WHERE w.content LIKE '%@%'
             ORDER BY w.id, newly.id
            ON CONFLICT DO NOTHING
            RETURNING comment_id, user_id
        )
        INSERT INTO public.notifications (user_id, kind, actor_id, track_id, comment_id)
        SELECT named.user_id, 'mention', w.user_id, w.track_id, w.id
          FROM named
          JOIN unnest(ids, track_ids, user_ids) AS w (id, track_id, user_id) ON w.id = named.comment_id
          JOIN public.tracks t ON t.id = w.track_id
          JOIN public.albums a ON a.id = t.album_id
         CROSS JOIN LATERAL (SELECT u.is_team FROM public.users u WHERE u.id = named.user_id
                             OFFSET 0  -- keeps this a per-row index lookup
                            ) AS mentioned
         WHERE named.user_id <> w.user_id
           -- tracktalk.can_see(mentioned, track), written out
           AND (NOT t.is_private OR named.user_id = a.created_by_id OR mentioned.is_team)
         ORDER BY w.id, named.user_id
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT n.track_id,
               array_agg(jsonb_build_object('type', 'new_comment',
                                            'comment', tracktalk.comment_json(o))
                         ORDER BY n.id) AS messages,
               count(*) AS added
          FROM new_rows n
          JOIN tracktalk.comment_objects o ON o.id = n.id
         GROUP BY n.track_id
         ORDER BY n.track_id
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages, comments_delta => r.added);
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN EXECUTE $q$
        SELECT n.track_id,
               array_agg(jsonb_build_object('type', 'comment_edited', 'comment_id', n.id,
                                            'content', n.content, 'timestamp', n."timestamp",
                                            'is_edited', n.is_edited,
                                            'last_edited_at', tracktalk.json_time(n.last_edited_at))
                         ORDER BY n.id) AS messages
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         WHERE n.content IS DISTINCT FROM o.content
            OR n."timestamp" IS DISTINCT FROM o."timestamp"
         GROUP BY n.track_id
         ORDER BY n.track_id
    $q$
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages);
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
        PERFORM tracktalk.publish_track(r.track_id, r.messages, comments_delta => -r.removed);
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
        PERFORM tracktalk.publish_track(r.track_id, r.messages);
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sign constant integer := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
    r record;
BEGIN
    FOR r IN
        SELECT track_id, count(*) AS n FROM changed_rows GROUP BY track_id ORDER BY track_id
    LOOP
        IF TG_TABLE_NAME = 'track_likes' THEN
            PERFORM tracktalk.publish_track(r.track_id, NULL, likes_delta => sign * r.n);
        ELSE
            PERFORM tracktalk.publish_track(r.track_id, NULL, shares_delta => sign * r.n);
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

-- A new track starts its counters at zero. Its numbering (its topic's) starts at zero too, or, for
-- an id that a deleted track had, goes on where that one stopped (its tracktalk.topic_state row
-- outlived it): an event number is never used twice, so no replica or client can take a new event
-- for an old one.
CREATE OR REPLACE FUNCTION tracktalk.tracks_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO tracktalk.track_state AS s (track_id)
    SELECT id FROM new_rows ORDER BY id
    ON CONFLICT (track_id) DO UPDATE SET comments = 0, likes = 0, shares = 0;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tracks_after_insert ON tracks;
CREATE TRIGGER tracks_after_insert
    AFTER INSERT ON tracks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.tracks_after_insert();

-- A deleted track: its topic's events go from the log (they tell of comments that are gone), its
-- counters to zero (its row stays, as its topic's numbering does), and its sockets are told
-- (tracktalk.topic_gone): the replicas close them (the track is not found), or, if a track with
-- the same id was made again in the same transaction, make them reload.
CREATE OR REPLACE FUNCTION tracktalk.tracks_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dead text;
BEGIN
    FOR dead IN SELECT id FROM old_rows ORDER BY id LOOP
        UPDATE tracktalk.track_state s SET comments = 0, likes = 0, shares = 0 WHERE s.track_id = dead;
        PERFORM tracktalk.topic_gone('track:' || dead);
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tracks_after_delete ON tracks;
CREATE TRIGGER tracks_after_delete
    AFTER DELETE ON tracks REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.tracks_after_delete();

-- Who may see a track changed (made private, moved to another album, its id changed): its
-- sockets are checked again, on every replica.
CREATE OR REPLACE FUNCTION tracktalk.tracks_access_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.revoke_track(OLD.id, gone => OLD.id IS DISTINCT FROM NEW.id);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tracks_access_changed ON tracks;
CREATE TRIGGER tracks_access_changed
    AFTER UPDATE ON tracks
    FOR EACH ROW
    WHEN (OLD.id IS DISTINCT FROM NEW.id
          OR (NEW.is_private AND NOT OLD.is_private)
          OR OLD.album_id IS DISTINCT FROM NEW.album_id)
    EXECUTE FUNCTION tracktalk.tracks_access_changed();

-- An album changed hands: the sockets of its private tracks are checked again.
CREATE OR REPLACE FUNCTION tracktalk.albums_access_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.revoke_track(t.id) FROM public.tracks t WHERE t.album_id = NEW.id AND t.is_private;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS albums_access_changed ON albums;
CREATE TRIGGER albums_access_changed
    AFTER UPDATE ON albums
    FOR EACH ROW
    WHEN (OLD.created_by_id IS DISTINCT FROM NEW.created_by_id)
    EXECUTE FUNCTION tracktalk.albums_access_changed();

---------------------------------------------------------------------------------------------
-- users
---------------------------------------------------------------------------------------------

-- A user left the team, or is gone: their sockets are checked again, on every replica.
CREATE OR REPLACE FUNCTION tracktalk.users_access_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.revoke_user(o.id) FROM old_rows o ORDER BY o.id;
    RETURN NULL;
END
$$;

-- (Through EXECUTE: a join of the two transition tables, planned for each statement's rows.)
CREATE OR REPLACE FUNCTION tracktalk.users_left_team() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE $q$
        SELECT tracktalk.revoke_user(o.id)
          FROM old_rows o JOIN new_rows n ON n.id = o.id
         WHERE o.is_team AND NOT n.is_team
         ORDER BY o.id
    $q$;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS users_after_delete ON users;
CREATE TRIGGER users_after_delete
    AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.users_access_changed();

DROP TRIGGER IF EXISTS users_after_update ON users;
CREATE TRIGGER users_after_update
    AFTER UPDATE ON users REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.users_left_team();

---------------------------------------------------------------------------------------------
-- Rows do not move: comments, likes and shares keep their track and owner
---------------------------------------------------------------------------------------------

-- An UPDATE that would move a comment, a like or a share to another track, comment or user
-- would leave both sides' counters and events wrong (the triggers publish inserts and deletes,
-- and edits of content and timestamp): refused, saying what to do instead. The triggers fire
-- only when one of their columns changes (WHEN), so other updates cost nothing.
-- Arguments: what the row is, where it cannot move to, then the columns that may not change.
CREATE OR REPLACE FUNCTION tracktalk.refuse_move() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_row constant jsonb := to_jsonb(OLD);
    new_row constant jsonb := to_jsonb(NEW);
    changed text;
BEGIN
    SELECT string_agg(format('%s.%s from %s to %s', TG_TABLE_NAME, c, old_row -> c, new_row -> c), ', ')
      INTO changed
      FROM unnest(TG_ARGV[2:]) AS c
     WHERE old_row -> c IS DISTINCT FROM new_row -> c;
    RAISE EXCEPTION 'cannot change %: % cannot move to %', changed, TG_ARGV[0], TG_ARGV[1]
        USING ERRCODE = 'feature_not_supported',
              DETAIL = 'The counters and the events of both sides would be wrong for good.',
              HINT = 'Delete the row and insert a new one instead (in one transaction, if you like): '
                     'both sides then count it and hear of it.';
END
$$;

DROP TRIGGER IF EXISTS comments_refuse_move ON comments;
CREATE TRIGGER comments_refuse_move
    BEFORE UPDATE OF id, track_id ON comments
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.track_id IS DISTINCT FROM NEW.track_id)
    EXECUTE FUNCTION tracktalk.refuse_move('a comment', 'another track', 'id', 'track_id');

DROP TRIGGER IF EXISTS comment_likes_refuse_move ON comment_likes;
CREATE TRIGGER comment_likes_refuse_move
    BEFORE UPDATE OF comment_id, user_id ON comment_likes
    FOR EACH ROW WHEN (OLD.comment_id IS DISTINCT FROM NEW.comment_id OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION tracktalk.refuse_move('a like', 'another comment or user', 'comment_id', 'user_id');

DROP TRIGGER IF EXISTS track_likes_refuse_move ON track_likes;
CREATE TRIGGER track_likes_refuse_move
    BEFORE UPDATE OF track_id, user_id ON track_likes
    FOR EACH ROW WHEN (OLD.track_id IS DISTINCT FROM NEW.track_id OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION tracktalk.refuse_move('a like', 'another track or user', 'track_id', 'user_id');

DROP TRIGGER IF EXISTS track_shares_refuse_move ON track_shares;
CREATE TRIGGER track_shares_refuse_move
    BEFORE UPDATE OF track_id ON track_shares
    FOR EACH ROW WHEN (OLD.track_id IS DISTINCT FROM NEW.track_id)
    EXECUTE FUNCTION tracktalk.refuse_move('a share', 'another track', 'track_id');

---------------------------------------------------------------------------------------------
-- notifications
---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION tracktalk.notifications_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.announce_notifications(array_agg(id ORDER BY id), array_agg(user_id ORDER BY id))
       FROM new_rows;
    RETURN NULL;
END
$$;

-- An existing notification that becomes a mention (an edit added an @) is news again. A row
-- trigger that fires only when `kind` changes: marking notifications read (100,000 at a time)
-- must not pay for transition tables it never needs.
CREATE OR REPLACE FUNCTION tracktalk.notifications_after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.announce_notifications(ARRAY[NEW.id], ARRAY[NEW.user_id]);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS notifications_after_insert ON notifications;
CREATE TRIGGER notifications_after_insert
    AFTER INSERT ON notifications REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.notifications_after_insert();

DROP TRIGGER IF EXISTS notifications_after_update ON notifications;
CREATE TRIGGER notifications_after_update
    AFTER UPDATE OF kind ON notifications
    FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind)
    EXECUTE FUNCTION tracktalk.notifications_after_update();

---------------------------------------------------------------------------------------------
-- tracktalk.channel_key
---------------------------------------------------------------------------------------------

-- The key changed (rotate_channel_key, or any UPDATE of it): said on the OLD key's 'rekey'
-- channel, signed with the old key, so that only the replicas, which listen there, hear it; they
-- read the new key and LISTEN under the new names (app/listener.py). A key changed with the
-- triggers off (session_replication_role = replica) is noticed by the replicas within a minute.
CREATE OR REPLACE FUNCTION tracktalk.channel_key_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    body constant text := format('{"k":"rekey","at":%s}', round(extract(epoch FROM clock_timestamp()), 6));
BEGIN
    PERFORM pg_notify(tracktalk.channel_name(OLD.inner_pad, OLD.outer_pad, 'rekey'),
                      tracktalk.hmac(OLD.inner_pad, OLD.outer_pad, body) || ' ' || body);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS channel_key_changed ON tracktalk.channel_key;
CREATE TRIGGER channel_key_changed
    AFTER UPDATE ON tracktalk.channel_key
    FOR EACH ROW WHEN (OLD.key IS DISTINCT FROM NEW.key)
    EXECUTE FUNCTION tracktalk.channel_key_changed();

---------------------------------------------------------------------------------------------
-- Maintenance: recounts, pruning, counters for rows made before these triggers, the key; the stamp last
---------------------------------------------------------------------------------------------

-- Sets a track's counters from its rows (one scan of each table), making its row in
-- tracktalk.track_state if it has none. For a track made while the triggers were off, or by a
-- DBA who suspects drift: SELECT tracktalk.recount(id) FROM tracks;
-- Inside a statement whose trigger is about to add that statement's changes to the counters
-- (publish_track() on a track without a row), pass those changes as the deltas: the rows already
-- hold them, so they are left out here and counted once, by publish_track().
-- It first takes the counter row's lock (writers that change the track's counters take it too,
-- and hold it to commit), so that a writer still running finishes first and its rows are counted, and later
-- writers wait; then counts from a fresh snapshot (READ COMMITTED: each statement takes one).
CREATE OR REPLACE FUNCTION tracktalk.recount(
    track           text,
    comments_delta  bigint DEFAULT 0,
    likes_delta     bigint DEFAULT 0,
    shares_delta    bigint DEFAULT 0
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO tracktalk.track_state AS s (track_id)
    SELECT t.id FROM public.tracks t WHERE t.id = track
    ON CONFLICT (track_id) DO UPDATE SET comments = s.comments;
    UPDATE tracktalk.track_state AS s
       SET comments = greatest((SELECT count(*) FROM public.comments WHERE track_id = track) - comments_delta, 0),
           likes = greatest((SELECT count(*) FROM public.track_likes WHERE track_id = track) - likes_delta, 0),
           shares = greatest((SELECT count(*) FROM public.track_shares WHERE track_id = track) - shares_delta, 0)
     WHERE s.track_id = track;
END
$$;

-- Deletes at most `most` notifications past settings.notification_retention, read or not, the
-- oldest first (index notifications_created_at), skipping rows that another transaction holds
-- (a replica pruning at the same moment, a user marking them read): a short transaction that
-- keeps few rows locked, however many have expired. Returns how many went. SECURITY DEFINER, as
-- prune_events, which calls it. Planned for each call (force_custom_plan), with the cutoff known:
-- a plan made for an unknown cutoff expects a third of the table to be past it.
CREATE OR REPLACE FUNCTION tracktalk.prune_notifications(most integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    cutoff constant timestamptz := now() - (SELECT notification_retention FROM tracktalk.settings);
    gone bigint;
BEGIN
    -- The batch's ids, then each row by its primary key (`id IN (SELECT ...)` is planned as a
    -- hash join over the whole table).
    DELETE FROM public.notifications
     WHERE id = ANY (ARRAY(SELECT n.id
                             FROM public.notifications n
                            WHERE n.created_at < cutoff
                            ORDER BY n.created_at
                            LIMIT most
                              FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS gone = ROW_COUNT;
    RETURN gone;
END
$$;

-- Deletes the events past settings.event_retention, keeping a contiguous tail of each topic:
-- per topic, every event up to the newest expired one goes. (created_at is the writer's
-- transaction start, seq is numbered later under the topic's lock: an event that a long
-- transaction numbered after others can be older than they are, and pruning by time alone would
-- cut a hole after them.) Then one batch of the notifications past settings.notification_retention
-- (tracktalk.prune_notifications), and the API's writes older than an hour
-- (tracktalk.recent_writes). Returns how many events and notifications went.
-- Every replica calls it every few minutes, and again at once while a call deleted many rows; a
-- DBA may schedule it instead (pg_cron). SECURITY DEFINER, as wait_to_write.
-- The expired events come from the index events_created_at, and each topic's are deleted as one
-- range of the primary key: one DELETE per topic, because a single join of the two would be
-- planned without knowing how few events per topic have expired (a third of the log, the planner
-- guesses), as a scan of the whole log.
CREATE OR REPLACE FUNCTION tracktalk.prune_events() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cutoff constant timestamptz := now() - (SELECT event_retention FROM tracktalk.settings);
    expired record;
    deleted bigint;
    gone bigint := 0;
BEGIN
    DELETE FROM tracktalk.recent_writes WHERE at < now() - interval '1 hour';
    FOR expired IN
        SELECT e.topic, max(e.seq) AS through
          FROM tracktalk.events e
         WHERE e.created_at < cutoff
         GROUP BY e.topic
         ORDER BY e.topic
    LOOP
        DELETE FROM tracktalk.events e WHERE e.topic = expired.topic AND e.seq <= expired.through;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        gone := gone + deleted;
    END LOOP;
    RETURN gone + tracktalk.prune_notifications();
END
$$;

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

-- The channel key, made once.
SELECT tracktalk.rotate_channel_key() WHERE NOT EXISTS (SELECT 1 FROM tracktalk.channel_key);

-- A replica serves a schema of its own version or newer; docs/dba.md lists what each version
-- added, and which upgrades need the old replicas stopped first (2 to 3, 4 to 5, 5 to 6).
INSERT INTO tracktalk.schema_version (version) VALUES (6)
ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, applied_at = now();
