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
--   {"k":"revoke","kind":K,"at":EPOCH,"gone":true}   (on the 'rekey' channel, which every replica
--       listens on: every topic of kind K, numbered or not, is gone: tracktalk.revoke_kind)
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
-- user_has_liked is false; without the marks only its author and the moderators get: hidden,
-- held, report_count).
CREATE OR REPLACE FUNCTION tracktalk.comment_json(o tracktalk.comment_objects) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (to_jsonb(o) - 'hidden' - 'held' - 'report_count')
           || jsonb_build_object('user_has_liked', false,
                                 'created_at', tracktalk.json_time(o.created_at),
                                 'last_edited_at', tracktalk.json_time(o.last_edited_at))
$$;

-- The same comment as its author and the track's moderators get it (moderation, issue 20): with
-- `hidden`, `held` and `report_count`.
CREATE OR REPLACE FUNCTION tracktalk.comment_json_marked(o tracktalk.comment_objects) RETURNS jsonb
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

-- Do the writers' triggers send the NOTIFYs themselves (tracktalk.settings.notify_mode 'direct')?
-- In 'fanout' they do not, and their commits do not take NOTIFY's lock: the fan-out nodes send
-- them (docs/dba.md, "Fan-out nodes"). Read once per call by publish() and tell(): a transaction
-- that read it before a switch commits as it read it (the replicas that listen on the primary
-- read the log until those have ended: app/live/polling.py).
CREATE OR REPLACE FUNCTION tracktalk.notifies() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT s.notify_mode = 'direct' FROM tracktalk.settings s), true)
$$;

-- Is there a fan-out publication on this database (made by `tracktalk fanout-node`)? Then what
-- travels as NOTIFYs only (revocations, notifications' announcements, typing) is also written to
-- tracktalk.outbox, whatever notify_mode says: the nodes' replicas get it in both modes, so that a
-- switch between them loses nothing.
CREATE OR REPLACE FUNCTION tracktalk.fans_out() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'tracktalk_outbox')
$$;

-- Tells the replicas `body` (a JSON object with its "at") on the channel named `name` ('topic
-- <topic>', 'user <id>'): signed on this database's channels unless notify_mode is 'fanout', and
-- through the outbox to the fan-out nodes where there are any (each signs it under its copy of
-- the key, with its own "at").
CREATE OR REPLACE FUNCTION tracktalk.tell(name text, body text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF tracktalk.notifies() THEN
        PERFORM tracktalk.send_signed(name, body);
    END IF;
    IF tracktalk.fans_out() THEN
        -- "x": this transaction's id. A node applies it once its commit is flushed here, which
        -- can be a moment before this server's own sessions see it: a replica that reads what
        -- the notice announces on the primary waits until "x" is visible (app/data/events.py).
        INSERT INTO tracktalk.outbox (name, body)
        VALUES (tell.name, (tell.body::jsonb || jsonb_build_object('x', pg_current_xact_id()::text::bigint))::text);
    END IF;
END
$$;

-- A replica's sealed notice (typing: "e:" and base64, app/live/notices.py) for every replica's
-- sockets of a topic, on `channel`: sent on this database's channels unless notify_mode is
-- 'fanout', and through the outbox to the fan-out nodes where there are any. Not kept, and not
-- worth a WAL flush: its commit does not wait for one (synchronous_commit off for this
-- transaction; the nodes get it with the next flush, within wal_writer_delay). SECURITY DEFINER:
-- the app role writes the outbox only through it.
CREATE OR REPLACE FUNCTION tracktalk.relay(channel text, payload text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF payload NOT LIKE 'e:%' THEN
        RAISE EXCEPTION 'tracktalk.relay sends only sealed notices (e:...)' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF tracktalk.notifies() THEN
        PERFORM pg_notify(channel, payload);
    END IF;
    IF tracktalk.fans_out() THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        INSERT INTO tracktalk.outbox (channel, body) VALUES (relay.channel, relay.payload);
    END IF;
END
$$;

-- Tells the replicas to check again who may see `topic`: each subscription to it is asked of
-- tracktalk.may_see() again, and ends if refused. `gone`: what the topic is about was deleted
-- (its subscribers that may still see it, if it was made again, reload). "at": when (the replicas
-- drop a revocation that is old: one sent again by someone listening).
CREATE OR REPLACE FUNCTION tracktalk.revoke_topic(topic text, gone boolean DEFAULT false) RETURNS void
LANGUAGE sql AS $$
    SELECT tracktalk.tell('topic ' || topic,
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
    SELECT tracktalk.tell('user ' || user_id,
                          format('{"k":"revoke","user":%s,"at":%s}', user_id,
                                 round(extract(epoch FROM clock_timestamp()), 6)))
$$;

-- The kind of topic `kind` is gone (a live table's, undone): every replica checks again each
-- subscription to a topic of that kind, and ends it (its topics are not found). Said on the
-- 'rekey' channel, which every replica listens on: a topic that never had an event has no row in
-- tracktalk.topic_state to revoke it by, and its subscribers would stay (and get the events of a
-- table made live again, whatever its new can_see says). Through tell(), as every revocation: the
-- fan-out nodes say it too.
CREATE OR REPLACE FUNCTION tracktalk.revoke_kind(kind text) RETURNS void
LANGUAGE sql AS $$
    SELECT tracktalk.tell('rekey',
                          format('{"k":"revoke","kind":%s,"at":%s,"gone":true}', to_json(kind),
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

    -- Last to first: a fan-out node's trigger, which fires for each row its copy receives (in this
    -- order), sends the statement's one payload when the first event arrives, the others being
    -- there by then (tracktalk.events_fan_out).
    IF restricted IS NULL THEN
        INSERT INTO tracktalk.events (topic, seq, message, tag, prev_tag, size, public)
        SELECT publish.topic, first_seq + o - 1, t::json, event_tag,
               CASE WHEN o = 1 THEN state.prev_tag ELSE event_tag END, octet_length(t), publish.public
          FROM unnest(texts) WITH ORDINALITY AS u (t, o)
         ORDER BY o DESC;
    ELSE
        INSERT INTO tracktalk.events (topic, seq, message, tag, prev_tag, restricted, author, size, public)
        SELECT publish.topic, first_seq + o - 1, t::json, event_tag,
               CASE WHEN o = 1 THEN state.prev_tag ELSE event_tag END, r.variant::json,
               authors[o], octet_length(t) + coalesce(octet_length(r.variant), 0), publish.public
          FROM unnest(texts) WITH ORDINALITY AS u (t, o)
          CROSS JOIN LATERAL (
                SELECT (restricted[o] || jsonb_build_object('seq', first_seq + o - 1, 'tag', event_tag))::text
               ) AS r (variant)
         ORDER BY o DESC;
    END IF;

    -- In 'fanout' mode the fan-out nodes send the payload, from their copy of the rows above.
    IF NOT tracktalk.notifies() THEN
        RETURN state.last_seq;
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
    -- A comment_deleted carries the counters even when they did not change (a tombstone's removal:
    -- it was counted out when it became one), as the contract's message has them.
    metrics_changed constant boolean := comments_delta <> 0 OR likes_delta <> 0 OR shares_delta <> 0
        OR EXISTS (SELECT 1 FROM unnest(messages) AS m WHERE m ->> 'type' = 'comment_deleted');
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
            PERFORM tracktalk.tell('user ' || r.user_id,
                                   format('{"k":"user","user":%s,"ids":%s,"at":%s}',
                                          r.user_id, to_json(r.ids[i:i + 299]), at));
        END LOOP;
    END LOOP;
END
$$;

-- The messages that tell recipients about notifications `ids`, in id order: none for a recipient
-- who may no longer see the track or the thread (tracktalk.notification_objects leaves those out).
-- A notification of a track carries its `track_id`, one of the forum its `thread_id`; a mention
-- carries the comment (`comment`) or the post (`post`). `about_track`: the message is about a
-- track (a comment's), which the track socket's contract knows; a forum's goes to /api/ws sockets
-- only (the track socket's `mention` carries a comment, its `notification` a track_id).
CREATE OR REPLACE FUNCTION tracktalk.user_messages(ids bigint[])
RETURNS TABLE (user_id bigint, message jsonb, about_track boolean)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT m.user_id, m.message, m.about_track
    FROM (
        SELECT n.id, 1 AS part, n.user_id, n.thread_id IS NULL AS about_track,
               jsonb_build_object('type', 'notification',
                                  CASE WHEN n.thread_id IS NULL THEN 'track_id' ELSE 'thread_id' END,
                                  coalesce(to_jsonb(n.track_id), to_jsonb(n.thread_id)),
                                  'notification', tracktalk.notification_json(n)) AS message
          FROM tracktalk.notification_objects n
         WHERE n.id = ANY (ids)
        UNION ALL
        SELECT n.id, 2, n.user_id, true,
               jsonb_build_object('type', 'mention', 'track_id', n.track_id,
                                  'comment', tracktalk.comment_json(c),
                                  'from_user', n.actor_username)
          FROM tracktalk.notification_objects n
          JOIN tracktalk.comment_objects c ON c.id = n.comment_id
         WHERE n.id = ANY (ids) AND n.kind = 'mention'
        UNION ALL
        SELECT n.id, 2, n.user_id, false,
               jsonb_build_object('type', 'mention', 'thread_id', n.thread_id,
                                  'post', tracktalk.post_json(p),
                                  'from_user', n.actor_username)
          FROM tracktalk.notification_objects n
          JOIN tracktalk.post_objects p ON p.id = n.post_id
         WHERE n.id = ANY (ids) AND n.kind = 'post_mention'
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

-- Does `viewer` moderate track `track` (pin, heart, hide, approve, settings; sees hidden and held
-- comments): its album's creator, or a team member. What the API asks.
CREATE OR REPLACE FUNCTION tracktalk.moderates_track(viewer bigint, track text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT viewer IS NOT NULL AND tracktalk.track_moderates(viewer, 'track:' || track)
$$;

---------------------------------------------------------------------------------------------
-- comments
---------------------------------------------------------------------------------------------

-- Does `content` hold one of `creator`'s moderation_words? A word entry matches a whole word of
-- the content, in any case: each word of the content is one lookup in the index
-- moderation_words_creator_word, so 10,000 entries cost what 10 do. An entry that is not one word
-- ("buy now", "c++") is looked for as text, through the partial index of such entries.
CREATE OR REPLACE FUNCTION tracktalk.has_moderation_word(creator bigint, content text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM public.moderation_words w
                    WHERE w.creator_id = creator
                      AND lower(w.word) = ANY (regexp_split_to_array(lower(content), '[^[:alnum:]_]+')))
        OR EXISTS (SELECT 1 FROM public.moderation_words w
                    WHERE w.creator_id = creator AND lower(w.word) !~ '^[[:alnum:]_]+$'
                      AND strpos(lower(content), lower(w.word)) > 0)
$$;

-- The creator of `track`'s album (NULL for no such track).
CREATE OR REPLACE FUNCTION tracktalk.track_creator(track text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT a.created_by_id FROM public.tracks t JOIN public.albums a ON a.id = t.album_id WHERE t.id = track
$$;

-- Slow mode, whoever writes (the API, or SQL): a comment by `author` on `track`, whose slow mode is
-- `seconds`, within `seconds` of their last post there (tracktalk.slow_mode_posts; or their newest
-- comment, for a post from before slow mode) is refused: check_violation on the constraint
-- comments_slow_mode, whose DETAIL says how long to wait (`wait 12.345 s of 30`: the API reads it
-- for its 429). Otherwise this post is their last. The user's row is locked first (held to
-- commit), so that two posts at the same moment are taken in turn and the second is refused, with
-- or without the API's write limit (TRACKTALK_COMMENTS_PER_MINUTE=0). SECURITY DEFINER: it writes
-- tracktalk.slow_mode_posts as its owner.
CREATE OR REPLACE FUNCTION tracktalk.take_slow_mode_turn(track text, author bigint, seconds integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    latest timestamptz;
    wait double precision;
BEGIN
    -- The user's turn on the track: lock the row, made on their first post there in slow mode (a
    -- second writer waits on that insert, finds it made, and locks it next).
    LOOP
        SELECT p.posted_at INTO latest
          FROM tracktalk.slow_mode_posts p
         WHERE p.track_id = track AND p.user_id = author
           FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO tracktalk.slow_mode_posts (track_id, user_id, posted_at)
        VALUES (track, author, '-infinity') ON CONFLICT DO NOTHING;
    END LOOP;
    latest := greatest(latest, (SELECT max(c.created_at) FROM public.comments c
                                 WHERE c.user_id = author AND c.track_id = track));
    IF latest > now() - make_interval(secs => seconds) THEN
        wait := least(extract(epoch FROM latest + make_interval(secs => seconds) - now()), seconds);
        RAISE EXCEPTION 'slow mode on track %: user % may comment there again in % s', track, author, ceil(wait)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'comments_slow_mode',
                  DETAIL = format('wait %s s of %s', round(wait::numeric, 3), seconds),
                  HINT = 'tracks.slow_mode_seconds: one comment every that many seconds per user, deleted or not; the track''s creator and team are above it';
    END IF;
    UPDATE tracktalk.slow_mode_posts p SET posted_at = now() WHERE p.track_id = track AND p.user_id = author;
END
$$;
-- The comments' insert trigger's alone (it runs as tracktalk's owner): a role that may use the
-- schema (the app role, a DBA granted USAGE to call make_live) could otherwise start any user's
-- wait on any track, and fill the table with rows for tracks that do not exist.
REVOKE EXECUTE ON FUNCTION tracktalk.take_slow_mode_turn(text, bigint, integer) FROM PUBLIC;

-- Row checks that a constraint cannot make, the edit marks of the contract, and moderation's rules
-- (issue 20), whoever writes: a new comment by a user the track's creator muted is hidden from the
-- start (hidden_by: the creator); a new or edited comment with one of the creator's
-- moderation_words is held for review (an edit never clears a hold: only a moderator does); a
-- tombstone is no edit; pinning a comment unpins the track's other one (the track's row locked
-- first, so that two pins of one track take turns); a new comment in the track's slow mode waits
-- its turn (tracktalk.take_slow_mode_turn), but by the track's moderators. SECURITY DEFINER: it
-- reads the creator's lists and unpins as tracktalk's owner.
CREATE OR REPLACE FUNCTION tracktalk.comments_before_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    duration double precision;
    slow integer;
    creator bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.content IS DISTINCT FROM OLD.content AND NEW.deleted_at IS NULL THEN
        NEW.is_edited := true;
        NEW.last_edited_at := now();
    END IF;
    IF TG_OP = 'INSERT' OR NEW."timestamp" IS DISTINCT FROM OLD."timestamp" THEN
        SELECT duration_seconds, slow_mode_seconds INTO duration, slow FROM public.tracks WHERE id = NEW.track_id;
        IF NEW."timestamp" > duration THEN
            RAISE EXCEPTION 'comment timestamp % is past the end of track % (% seconds)',
                NEW."timestamp", NEW.track_id, duration
                USING ERRCODE = 'check_violation', CONSTRAINT = 'comments_timestamp_within_track';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' AND slow > 0 AND NOT tracktalk.moderates_track(NEW.user_id, NEW.track_id) THEN
        PERFORM tracktalk.take_slow_mode_turn(NEW.track_id, NEW.user_id, slow);
    END IF;
    -- Moderation's rules cost a comment nothing where nobody uses them: the creator is looked up
    -- only when its author is muted by someone, or when some creator has words (one probe each).
    IF TG_OP = 'INSERT' AND NEW.hidden_at IS NULL
       AND EXISTS (SELECT 1 FROM public.muted_users m WHERE m.user_id = NEW.user_id) THEN
        creator := tracktalk.track_creator(NEW.track_id);
        IF EXISTS (SELECT 1 FROM public.muted_users m WHERE m.creator_id = creator AND m.user_id = NEW.user_id) THEN
            NEW.hidden_at := now();
            NEW.hidden_by := creator;
        END IF;
    END IF;
    IF NEW.held_at IS NULL AND NEW.deleted_at IS NULL
       AND (TG_OP = 'INSERT' OR NEW.content IS DISTINCT FROM OLD.content)
       AND EXISTS (SELECT 1 FROM public.moderation_words) THEN
        creator := coalesce(creator, tracktalk.track_creator(NEW.track_id));
        IF tracktalk.has_moderation_word(creator, NEW.content) THEN
            NEW.held_at := now();
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.pinned_at IS NOT NULL AND OLD.pinned_at IS NULL THEN
        PERFORM 1 FROM public.tracks t WHERE t.id = NEW.track_id FOR NO KEY UPDATE;
        UPDATE public.comments c SET pinned_at = NULL
         WHERE c.track_id = NEW.track_id AND c.pinned_at IS NOT NULL AND c.id <> NEW.id;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS comments_before_write ON comments;
CREATE TRIGGER comments_before_write
    BEFORE INSERT OR UPDATE ON comments
    FOR EACH ROW EXECUTE FUNCTION tracktalk.comments_before_write();

-- A deleted comment takes its unread notifications with it (before the foreign key sets
-- comment_id to NULL on the read ones). A comment that has replies is not deleted but left as a
-- tombstone (issue 20: deleted_at set, content empty, unpinned; its replies stay), whoever
-- deletes it; a tombstone goes when its last reply does (comments_after_delete). Deleted for real
-- all the same: when its track or its author is being deleted (the foreign keys' cascade), or
-- when the session says so (SET tracktalk.delete_threads = on: a DBA removing a whole thread).
CREATE OR REPLACE FUNCTION tracktalk.comments_before_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM public.notifications WHERE comment_id = OLD.id AND read_at IS NULL;
    IF EXISTS (SELECT 1 FROM public.comments r WHERE r.parent_id = OLD.id)
       AND current_setting('tracktalk.delete_threads', true) IS DISTINCT FROM 'on'
       AND EXISTS (SELECT 1 FROM public.tracks t WHERE t.id = OLD.track_id)
       AND EXISTS (SELECT 1 FROM public.users u WHERE u.id = OLD.user_id) THEN
        IF OLD.deleted_at IS NULL THEN
            UPDATE public.comments c SET deleted_at = now(), content = '', pinned_at = NULL WHERE c.id = OLD.id;
        END IF;
        RETURN NULL;  -- not deleted: a tombstone
    END IF;
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
    -- A comment hidden or held from the start (moderation) reaches its author and the moderators
    -- as new_comment (marked), everyone else as skip; it is not notified to anyone.
    FOR r IN
        SELECT n.track_id,
               array_agg(CASE WHEN n.hidden_at IS NULL AND n.held_at IS NULL
                              THEN jsonb_build_object('type', 'new_comment', 'comment', tracktalk.comment_json(o))
                              ELSE '{"type": "skip"}'::jsonb END
                         ORDER BY n.id) AS messages,
               CASE WHEN bool_or(n.hidden_at IS NOT NULL OR n.held_at IS NOT NULL) THEN
                   array_agg(CASE WHEN n.hidden_at IS NOT NULL OR n.held_at IS NOT NULL
                                  THEN jsonb_build_object('type', 'new_comment',
                                                          'comment', tracktalk.comment_json_marked(o)) END
                             ORDER BY n.id) END AS restricted,
               CASE WHEN bool_or(n.hidden_at IS NOT NULL OR n.held_at IS NOT NULL) THEN
                   array_agg(CASE WHEN n.hidden_at IS NOT NULL OR n.held_at IS NOT NULL THEN n.user_id END
                             ORDER BY n.id) END AS authors,
               count(*) AS added
          FROM new_rows n
          JOIN tracktalk.comment_objects o ON o.id = n.id
         GROUP BY n.track_id
         ORDER BY n.track_id
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages, comments_delta => r.added,
                                        restricted => r.restricted, authors => r.authors);
    END LOOP;
    PERFORM tracktalk.notify_comment_readers(
                array_agg(n.id ORDER BY n.id), array_agg(n.track_id ORDER BY n.id),
                array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                array_agg(n.content ORDER BY n.id))
       FROM new_rows n
      WHERE n.hidden_at IS NULL AND n.held_at IS NULL
     HAVING count(*) > 0;
    RETURN NULL;
END
$$;

-- Its statements join the two transition tables, so they run through EXECUTE: planned for each
-- statement's rows, where a plan kept from a one-row edit (a nested loop) would compare every
-- old row with every new one in a 10,000-row UPDATE.
CREATE OR REPLACE FUNCTION tracktalk.comments_after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    plain boolean;
    r record;
BEGIN
    -- Each row's changes, as events in this order: made a tombstone (comment_deleted, tombstone),
    -- edited (comment_edited), hidden/held/restored (comment_hidden or comment_restored for
    -- everyone else, comment_moderated for its author and the moderators), pinned
    -- (comment_pinned), hearted (comment_hearted). An event about a comment that is hidden or held
    -- goes to its author and the moderators only (everyone else: skip).
    -- The common statement (edits of visible comments, nothing else) takes the short way: as
    -- before moderation, at a third of the cost for 10,000 rows.
    -- (Each transition table scanned on its own: a join of the two would be planned blind.)
    SELECT NOT EXISTS (SELECT 1 FROM new_rows n
                        WHERE n.hidden_at IS NOT NULL OR n.held_at IS NOT NULL OR n.deleted_at IS NOT NULL)
       AND NOT EXISTS (SELECT 1 FROM old_rows o WHERE o.hidden_at IS NOT NULL OR o.held_at IS NOT NULL)
       AND (SELECT array_agg(n.id ORDER BY n.id) FROM new_rows n WHERE n.pinned_at IS NOT NULL)
           IS NOT DISTINCT FROM (SELECT array_agg(o.id ORDER BY o.id) FROM old_rows o WHERE o.pinned_at IS NOT NULL)
       AND (SELECT array_agg(n.id ORDER BY n.id) FROM new_rows n WHERE n.hearted_at IS NOT NULL)
           IS NOT DISTINCT FROM (SELECT array_agg(o.id ORDER BY o.id) FROM old_rows o WHERE o.hearted_at IS NOT NULL)
      INTO plain;
    IF plain THEN
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
    ELSE
    FOR r IN EXECUTE $q$
        WITH changed AS (
            SELECT n.track_id, n.id, n.user_id, n.content, n."timestamp", n.is_edited, n.last_edited_at,
                   n.pinned_at IS NOT NULL AS pinned, n.hearted_at IS NOT NULL AS hearted,
                   o.hidden_at IS NULL AND o.held_at IS NULL AS was_shown,
                   n.hidden_at IS NULL AND n.held_at IS NULL AS shown,
                   n.deleted_at IS NOT NULL AND o.deleted_at IS NULL AS tombstoned,
                   (n.content IS DISTINCT FROM o.content OR n."timestamp" IS DISTINCT FROM o."timestamp")
                       AND n.deleted_at IS NULL AS edited,
                   (n.hidden_at IS NULL) <> (o.hidden_at IS NULL) OR (n.held_at IS NULL) <> (o.held_at IS NULL)
                       AS moderated,
                   (n.pinned_at IS NULL) <> (o.pinned_at IS NULL) AS pin_changed,
                   (n.hearted_at IS NULL) <> (o.hearted_at IS NULL) AS heart_changed
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
        ), events AS (
            SELECT c.track_id, c.id, k.ord, k.delta,
                   CASE WHEN k.ord = 3 THEN
                            CASE WHEN c.was_shown AND NOT c.shown
                                     THEN jsonb_build_object('type', 'comment_hidden', 'comment_id', c.id)
                                 WHEN c.shown AND NOT c.was_shown
                                     THEN jsonb_build_object('type', 'comment_restored',
                                                             'comment', tracktalk.comment_json(m.obj))
                                 ELSE '{"type": "skip"}'::jsonb END
                        WHEN c.shown THEN k.body
                        ELSE '{"type": "skip"}'::jsonb END AS message,
                   CASE WHEN k.ord = 3 THEN
                            jsonb_build_object('type', 'comment_moderated', 'comment', tracktalk.comment_json_marked(m.obj))
                        WHEN NOT c.shown THEN k.body END AS variant,
                   c.user_id AS author
              FROM changed c
              LEFT JOIN LATERAL (SELECT o AS obj FROM tracktalk.comment_objects o
                                  WHERE o.id = c.id AND c.moderated) AS m ON true
              CROSS JOIN LATERAL (VALUES
                    (1, c.tombstoned, -1,
                     jsonb_build_object('type', 'comment_deleted', 'comment_id', c.id, 'tombstone', true)),
                    (2, c.edited, 0,
                     jsonb_build_object('type', 'comment_edited', 'comment_id', c.id, 'content', c.content,
                                        'timestamp', c."timestamp", 'is_edited', c.is_edited,
                                        'last_edited_at', tracktalk.json_time(c.last_edited_at))),
                    (3, c.moderated, 0, NULL::jsonb),
                    (4, c.pin_changed, 0, jsonb_build_object('type', 'comment_pinned', 'comment_id', c.id,
                                                             'pinned', c.pinned)),
                    (5, c.heart_changed, 0, jsonb_build_object('type', 'comment_hearted', 'comment_id', c.id,
                                                               'hearted', c.hearted))
                   ) AS k (ord, happened, delta, body)
             WHERE k.happened
        )
        SELECT e.track_id,
               array_agg(e.message ORDER BY e.id, e.ord) AS messages,
               CASE WHEN bool_or(e.variant IS NOT NULL) THEN array_agg(e.variant ORDER BY e.id, e.ord) END AS restricted,
               CASE WHEN bool_or(e.variant IS NOT NULL) THEN
                   array_agg(CASE WHEN e.variant IS NOT NULL THEN e.author END ORDER BY e.id, e.ord) END AS authors,
               sum(e.delta) AS delta
          FROM events e
         GROUP BY e.track_id
         ORDER BY e.track_id
    $q$
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages, comments_delta => r.delta,
                                        restricted => r.restricted, authors => r.authors);
    END LOOP;
    END IF;
    EXECUTE $q$
        SELECT tracktalk.notify_comment_readers(
                   array_agg(n.id ORDER BY n.id), array_agg(n.track_id ORDER BY n.id),
                   array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                   array_agg(n.content ORDER BY n.id), array_agg(o.content ORDER BY n.id))
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         WHERE n.content IS DISTINCT FROM o.content
           AND n.hidden_at IS NULL AND n.held_at IS NULL AND n.deleted_at IS NULL
           AND o.hidden_at IS NULL AND o.held_at IS NULL
        HAVING count(*) > 0
    $q$;
    IF NOT plain THEN
        -- A comment shown at last (approved, or unhidden) notifies as a new one would have: its
        -- mentions, its parent's author, the team. Who was told already (it was shown once, then
        -- hidden) is not told again (tracktalk.comment_mentions and the unique index).
        EXECUTE $q$
            SELECT tracktalk.notify_comment_readers(
                       array_agg(n.id ORDER BY n.id), array_agg(n.track_id ORDER BY n.id),
                       array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                       array_agg(n.content ORDER BY n.id))
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
             WHERE (o.hidden_at IS NOT NULL OR o.held_at IS NOT NULL)
               AND n.hidden_at IS NULL AND n.held_at IS NULL AND n.deleted_at IS NULL
            HAVING count(*) > 0
        $q$;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tracktalk.comments_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    bare bigint[];
BEGIN
    -- A hidden or held comment's deletion reaches its author and the moderators only (everyone
    -- else: skip); a tombstone was counted out when it became one.
    FOR r IN
        SELECT o.track_id,
               array_agg(CASE WHEN o.hidden_at IS NULL AND o.held_at IS NULL
                              THEN jsonb_build_object('type', 'comment_deleted', 'comment_id', o.id)
                              ELSE '{"type": "skip"}'::jsonb END
                         ORDER BY o.id) AS messages,
               CASE WHEN bool_or(o.hidden_at IS NOT NULL OR o.held_at IS NOT NULL) THEN
                   array_agg(CASE WHEN o.hidden_at IS NOT NULL OR o.held_at IS NOT NULL
                                  THEN jsonb_build_object('type', 'comment_deleted', 'comment_id', o.id) END
                             ORDER BY o.id) END AS restricted,
               CASE WHEN bool_or(o.hidden_at IS NOT NULL OR o.held_at IS NOT NULL) THEN
                   array_agg(CASE WHEN o.hidden_at IS NOT NULL OR o.held_at IS NOT NULL THEN o.user_id END
                             ORDER BY o.id) END AS authors,
               count(*) FILTER (WHERE o.deleted_at IS NULL) AS removed
          FROM old_rows o
         GROUP BY o.track_id
         ORDER BY o.track_id
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages, comments_delta => -r.removed,
                                        restricted => r.restricted, authors => r.authors);
    END LOOP;
    -- A tombstone whose last reply went goes too (its own deletion publishes comment_deleted).
    -- Only when there is one: an empty DELETE would fire this trigger again, and again.
    SELECT array_agg(p.id ORDER BY p.id) INTO bare
      FROM public.comments p
     WHERE p.id = ANY (ARRAY(SELECT DISTINCT o.parent_id FROM old_rows o WHERE o.parent_id IS NOT NULL))
       AND p.deleted_at IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM public.comments c WHERE c.parent_id = p.id);
    IF bare IS NOT NULL THEN
        DELETE FROM public.comments p WHERE p.id = ANY (bare);
    END IF;
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
               array_agg(CASE WHEN c.hidden_at IS NULL AND c.held_at IS NULL
                              THEN jsonb_build_object('type', 'comment_liked', 'comment_id', k.comment_id,
                                                      'like_count', k.likes)
                              ELSE '{"type": "skip"}'::jsonb END
                         ORDER BY k.comment_id) AS messages,
               -- a hidden or held comment's likes: for its author and the moderators only
               CASE WHEN bool_or(c.hidden_at IS NOT NULL OR c.held_at IS NOT NULL) THEN
                   array_agg(CASE WHEN c.hidden_at IS NOT NULL OR c.held_at IS NOT NULL
                                  THEN jsonb_build_object('type', 'comment_liked', 'comment_id', k.comment_id,
                                                          'like_count', k.likes) END
                             ORDER BY k.comment_id) END AS restricted,
               CASE WHEN bool_or(c.hidden_at IS NOT NULL OR c.held_at IS NOT NULL) THEN
                   array_agg(CASE WHEN c.hidden_at IS NOT NULL OR c.held_at IS NOT NULL THEN c.user_id END
                             ORDER BY k.comment_id) END AS authors
          FROM counted k
          JOIN public.comments c ON c.id = k.comment_id
         GROUP BY c.track_id
         ORDER BY c.track_id
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages, restricted => r.restricted, authors => r.authors);
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

-- An album changed hands: the sockets of its tracks are checked again (who may see its private
-- ones, and who moderates them all: the old creator's sockets stop getting the restricted variants).
CREATE OR REPLACE FUNCTION tracktalk.albums_access_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.revoke_track(t.id) FROM public.tracks t WHERE t.album_id = NEW.id ORDER BY t.id;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS albums_access_changed ON albums;
CREATE TRIGGER albums_access_changed
    AFTER UPDATE ON albums
    FOR EACH ROW
    WHEN (OLD.created_by_id IS DISTINCT FROM NEW.created_by_id)
    EXECUTE FUNCTION tracktalk.albums_access_changed();

-- A track's settings changed (comments off, slow mode): track_settings on its topic.
CREATE OR REPLACE FUNCTION tracktalk.tracks_settings_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN EXECUTE $q$
        SELECT n.id, n.comments_enabled, n.slow_mode_seconds
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.comments_enabled IS DISTINCT FROM o.comments_enabled
            OR n.slow_mode_seconds IS DISTINCT FROM o.slow_mode_seconds
         ORDER BY n.id
    $q$
    LOOP
        PERFORM tracktalk.publish_track(r.id, ARRAY[jsonb_build_object(
                    'type', 'track_settings', 'comments_enabled', r.comments_enabled,
                    'slow_mode_seconds', r.slow_mode_seconds)]);
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tracks_settings_changed ON tracks;
CREATE TRIGGER tracks_settings_changed
    AFTER UPDATE ON tracks REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.tracks_settings_changed();

---------------------------------------------------------------------------------------------
-- comment_reports (moderation, issue 20)
---------------------------------------------------------------------------------------------

-- The report counts of `ids` (those still there) reach each comment's author and the track's
-- moderators as comment_moderated, everyone else as skip: one statement's events per track.
CREATE OR REPLACE FUNCTION tracktalk.publish_report_counts(ids bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT o.track_id,
               array_agg('{"type": "skip"}'::jsonb ORDER BY o.id) AS messages,
               array_agg(jsonb_build_object('type', 'comment_moderated',
                                            'comment', tracktalk.comment_json_marked(o)) ORDER BY o.id) AS restricted,
               array_agg(o.user_id ORDER BY o.id) AS authors
          FROM tracktalk.comment_objects o
         WHERE o.id = ANY (ids)
         GROUP BY o.track_id
         ORDER BY o.track_id
    LOOP
        PERFORM tracktalk.publish_track(r.track_id, r.messages, restricted => r.restricted, authors => r.authors);
    END LOOP;
END
$$;

-- New reports: a comment that reaches tracktalk.settings.reports_to_hide distinct reports and is
-- neither hidden nor held is held for review (that UPDATE goes live as comment_hidden /
-- comment_moderated); any other reported comment's new report_count reaches its author and the
-- moderators as comment_moderated (everyone else: skip). Reports taken away: see
-- comment_reports_after_delete.
CREATE OR REPLACE FUNCTION tracktalk.comment_reports_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    threshold constant integer := (SELECT reports_to_hide FROM tracktalk.settings);
    just_held bigint[];
BEGIN
    -- The reported comments' rows first, in id order, held to commit: two reports of one comment
    -- written at once count in turn, the later one after the earlier committed (its next
    -- statement sees it), else each would count its own and those committed before, and the
    -- threshold could pass with nobody holding the comment.
    PERFORM 1 FROM public.comments c
     WHERE c.id = ANY (ARRAY(SELECT DISTINCT n.comment_id FROM new_rows n))
     ORDER BY c.id
       FOR NO KEY UPDATE;
    WITH newly AS (
        UPDATE public.comments c SET held_at = now()
         WHERE c.id = ANY (ARRAY(SELECT DISTINCT n.comment_id FROM new_rows n ORDER BY 1))
           AND c.held_at IS NULL AND c.hidden_at IS NULL
           AND (SELECT count(*) FROM public.comment_reports p WHERE p.comment_id = c.id) >= threshold
        RETURNING c.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO just_held FROM newly;
    PERFORM tracktalk.publish_report_counts(ARRAY(
        SELECT DISTINCT n.comment_id FROM new_rows n
         WHERE n.comment_id <> ALL (just_held)));  -- their hold told them
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS comment_reports_after_insert ON comment_reports;
CREATE TRIGGER comment_reports_after_insert
    AFTER INSERT ON comment_reports REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comment_reports_after_insert();

-- Reports taken away (an approval, a DBA's DELETE, a reporter's account deleted): each comment
-- still there reaches its author and the moderators as comment_moderated with the reports that
-- remain (everyone else: skip), as a report does. An approval that also shows the comment sends
-- that event too (comment_restored / comment_moderated, from comments_after_update): both carry
-- the comment as the statement left it. A comment being deleted takes its reports along: nothing
-- to tell then.
CREATE OR REPLACE FUNCTION tracktalk.comment_reports_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tracktalk.publish_report_counts(ARRAY(SELECT DISTINCT d.comment_id FROM old_rows d));
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS comment_reports_after_delete ON comment_reports;
CREATE TRIGGER comment_reports_after_delete
    AFTER DELETE ON comment_reports REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comment_reports_after_delete();

---------------------------------------------------------------------------------------------
-- users
---------------------------------------------------------------------------------------------

-- A user left the team, joined it, or is gone: their sockets are checked again, on every replica
-- (who may see what, and who moderates what: a subscription whose user's role changed is told to
-- reload).
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
         WHERE o.is_team IS DISTINCT FROM n.is_team
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

-- The user whose users.external_id is `subject` (a subject of the host's identity provider), made
-- when there is none: what a replica with TRACKTALK_JWT_PROVISION=1 calls on a valid token of a
-- subject it does not know (app/auth/subjects.py). The new row is named `wanted`, or, when a user
-- has that name already (in any case: @mentions match names case-insensitively), `wanted_2`,
-- `wanted_3`, … the first that is free. `wanted` must be a name an @mention reaches: 1 to 48 of
-- A-Z, a-z, 0-9 and _ (so that `_` and a number still fit in the 64 characters a mention reads;
-- app/data/users.py makes it from the token's username claim).
-- One at a time across replicas: the second of two first requests of a new user, on two replicas
-- at once, finds the row the first made, and two new users who want one name get two. The lock on
-- users (SHARE ROW EXCLUSIVE, to commit) holds other writers of users for that moment, never their
-- readers, nor the writers of comments and likes (their foreign keys' locks pass). Only on first
-- sight: a subject that has its row returns before the lock. Expects READ COMMITTED (PostgreSQL's
-- default; the app's pool sets it): after the lock it reads what committed before. SECURITY
-- DEFINER: the app role may not write users otherwise.
CREATE OR REPLACE FUNCTION tracktalk.provision_user(subject text, wanted text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found bigint;
    name text := wanted;
    n integer := 1;
BEGIN
    IF subject IS NULL OR subject = '' THEN
        RAISE EXCEPTION 'tracktalk.provision_user: give the subject (the external_id), not an empty one'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF wanted IS NULL OR wanted !~ '^[A-Za-z0-9_]{1,48}$' THEN
        RAISE EXCEPTION 'tracktalk.provision_user: the username % is not one an @mention reaches: use 1 to 48 of A-Z, a-z, 0-9 and _', quote_nullable(wanted)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT u.id INTO found FROM public.users u WHERE u.external_id = subject;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    LOCK TABLE public.users IN SHARE ROW EXCLUSIVE MODE;
    SELECT u.id INTO found FROM public.users u WHERE u.external_id = subject;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    WHILE EXISTS (SELECT 1 FROM public.users u WHERE lower(u.username) = lower(name)) LOOP
        n := n + 1;
        name := wanted || '_' || n;
    END LOOP;
    INSERT INTO public.users (username, external_id) VALUES (name, subject) RETURNING id INTO found;
    RETURN found;
END
$$;

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
-- The forum: forum_categories, forum_threads, forum_posts, forum_post_likes
---------------------------------------------------------------------------------------------
-- Two kinds of topic: a thread's (`thread:{id}`: new_post, post_edited, post_deleted,
-- post_liked, thread_updated; typing and "N here") and a category's (`category:{slug}`:
-- thread_created, thread_updated, thread_deleted). A statement publishes on the category topics
-- before the thread topics (each in the order of its topic's text, COLLATE "C"), after locking
-- the threads' rows it counts (in id order): writers of the forum take their locks in one order.
-- Every change is made live by these triggers, whoever makes it (the API or any SQL client).

-- Can `viewer` (NULL: anonymous) see category `category`, its threads and their posts? A private
-- category is for team members only. NULL when there is no such category.
CREATE OR REPLACE FUNCTION tracktalk.can_see_category(viewer bigint, category bigint) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT NOT c.is_private
                   OR EXISTS (SELECT 1 FROM public.users u WHERE u.id = viewer AND u.is_team)
              FROM public.forum_categories c
             WHERE c.id = category);
END
$$;

-- `thread:{id}`: the thread exists and the user may see its category. A private category's
-- threads exist only for the team (as over HTTP, where others get 404): NULL, not false.
CREATE OR REPLACE FUNCTION tracktalk.thread_may_see(user_id bigint, topic text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    key constant text := substr(topic, 8);
BEGIN
    IF key !~ '^[1-9][0-9]{0,17}$' THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT CASE WHEN tracktalk.can_see_category(thread_may_see.user_id, t.category_id) THEN true END
              FROM public.forum_threads t
             WHERE t.id = key::bigint);
END
$$;

-- `category:{slug}`: the category exists and the user may see it (NULL for a private one, to
-- anyone off the team).
CREATE OR REPLACE FUNCTION tracktalk.category_may_see(user_id bigint, topic text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT CASE WHEN tracktalk.can_see_category(category_may_see.user_id, c.id) THEN true END
              FROM public.forum_categories c
             WHERE c.slug = substr(topic, 10));
END
$$;

SELECT tracktalk.topic_kind('thread', 'tracktalk.thread_may_see(bigint, text)', NULL, presence => true);
SELECT tracktalk.topic_kind('category', 'tracktalk.category_may_see(bigint, text)', NULL);

-- A post of tracktalk.post_objects as the messages carry it (user_has_liked: false).
CREATE OR REPLACE FUNCTION tracktalk.post_json(o tracktalk.post_objects) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(o) || jsonb_build_object('user_has_liked', false,
                                             'created_at', tracktalk.json_time(o.created_at),
                                             'last_edited_at', tracktalk.json_time(o.last_edited_at))
$$;

-- A thread of tracktalk.thread_objects as the messages carry it.
CREATE OR REPLACE FUNCTION tracktalk.thread_json(o tracktalk.thread_objects) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(o) || jsonb_build_object('created_at', tracktalk.json_time(o.created_at),
                                             'last_post_at', tracktalk.json_time(o.last_post_at))
$$;

-- A thread's counters as new_post and post_deleted carry them (`thread`).
CREATE OR REPLACE FUNCTION tracktalk.thread_counters(id bigint, post_count integer, last_post_at timestamptz)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('id', id, 'post_count', post_count,
                              'last_post_at', tracktalk.json_time(last_post_at))
$$;

-- Sets post_count and last_post_at of the threads `ids` after a statement added `deltas` posts to
-- each (negative: removed; 0: only a post's time changed). The rows are locked first, in id order,
-- FOR NO KEY UPDATE (the foreign-key checks of other writers' posts, which take KEY SHARE, go on);
-- then they are set in a statement of its own, whose fresh snapshot (READ COMMITTED) sees what
-- the writers who held the lock before committed: post_count moves by the deltas under the lock
-- (concurrent posts never lose a count), and last_post_at is read from the posts (one index
-- lookup: forum_posts_thread_created_at), the thread's own created_at while it has none. Threads
-- being deleted are skipped. The columns are tracktalk's: forum_threads_before_write sets aside
-- what anyone else writes there, unless tracktalk.counting is on (as here, for one statement).
CREATE OR REPLACE FUNCTION tracktalk.count_posts(ids bigint[], deltas bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM public.forum_threads t WHERE t.id = ANY (ids) ORDER BY t.id FOR NO KEY UPDATE;
    PERFORM set_config('tracktalk.counting', 'on', true);
    UPDATE public.forum_threads t
       SET post_count = greatest(t.post_count + d.delta, 0),
           last_post_at = coalesce((SELECT max(p.created_at) FROM public.forum_posts p WHERE p.thread_id = t.id),
                                   t.created_at)
      FROM unnest(ids, deltas) AS d (id, delta)
     WHERE t.id = d.id;
    PERFORM set_config('tracktalk.counting', 'off', true);
END
$$;

-- A thread's counters are tracktalk's: an INSERT starts them at zero (and last_post_at at the
-- thread's created_at), and an UPDATE by anyone but the triggers and recount_thread() leaves
-- them as they are (an ORM that writes every column back writes the title all the same).
CREATE OR REPLACE FUNCTION tracktalk.forum_threads_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.post_count := 0;
        NEW.last_post_at := NEW.created_at;
    ELSIF current_setting('tracktalk.counting', true) IS DISTINCT FROM 'on' THEN
        NEW.post_count := OLD.post_count;
        NEW.last_post_at := OLD.last_post_at;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS forum_threads_before_write ON forum_threads;
CREATE TRIGGER forum_threads_before_write
    BEFORE INSERT OR UPDATE ON forum_threads
    FOR EACH ROW EXECUTE FUNCTION tracktalk.forum_threads_before_write();

-- New threads: thread_created on their categories' topics.
CREATE OR REPLACE FUNCTION tracktalk.forum_threads_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT 'category:' || o.category_slug AS topic, NOT c.is_private AS public,
               array_agg(jsonb_build_object('type', 'thread_created', 'thread', tracktalk.thread_json(o))
                         ORDER BY o.id) AS messages
          FROM new_rows n
          JOIN tracktalk.thread_objects o ON o.id = n.id
          JOIN public.forum_categories c ON c.id = o.category_id
         GROUP BY o.category_slug, c.is_private
         ORDER BY o.category_slug COLLATE "C"
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    RETURN NULL;
END
$$;

-- A thread's title, lock, pin or author changed: thread_updated on its topic and its category's.
-- Moved to another category: thread_deleted on the old one's, thread_created on the new one's,
-- and its subscribers are checked again (the new category may be private). Its counters changing
-- (count_posts, recount_thread: tracktalk.counting is on) publishes nothing here: the posts'
-- triggers say it, in the post's own event; and it returns at once, for every post fires it.
-- (Through EXECUTE: a join of the two transition tables, planned for each statement's rows.)
CREATE OR REPLACE FUNCTION tracktalk.forum_threads_after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('tracktalk.counting', true) = 'on' THEN
        RETURN NULL;
    END IF;
    FOR r IN EXECUTE $q$
        WITH changed AS (
            SELECT n.id, o.category_id AS was_in, tracktalk.thread_json(t) AS thread, t.category_slug,
                   NOT c.is_private AS public
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
              JOIN tracktalk.thread_objects t ON t.id = n.id
              JOIN public.forum_categories c ON c.id = t.category_id
             WHERE n.title IS DISTINCT FROM o.title
                OR n.is_locked IS DISTINCT FROM o.is_locked
                OR n.is_pinned IS DISTINCT FROM o.is_pinned
                OR n.user_id IS DISTINCT FROM o.user_id
                OR n.category_id IS DISTINCT FROM o.category_id
        ), events AS (
            SELECT 'thread:' || x.id AS topic, x.public, x.id AS ord,
                   jsonb_build_object('type', 'thread_updated', 'thread', x.thread) AS message
              FROM changed x
            UNION ALL
            SELECT 'category:' || x.category_slug, x.public, x.id,
                   jsonb_build_object('type', CASE WHEN x.was_in = (x.thread ->> 'category_id')::bigint
                                                   THEN 'thread_updated' ELSE 'thread_created' END,
                                      'thread', x.thread)
              FROM changed x
            UNION ALL
            SELECT 'category:' || c.slug, NOT c.is_private, x.id,
                   jsonb_build_object('type', 'thread_deleted', 'thread_id', x.id)
              FROM changed x
              JOIN public.forum_categories c ON c.id = x.was_in
             WHERE x.was_in <> (x.thread ->> 'category_id')::bigint
        )
        SELECT e.topic, bool_and(e.public) AS public, array_agg(e.message ORDER BY e.ord) AS messages
          FROM events e
         GROUP BY e.topic
         ORDER BY e.topic COLLATE "C"
    $q$
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    EXECUTE $q$
        SELECT tracktalk.revoke_topic('thread:' || n.id)
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.category_id IS DISTINCT FROM o.category_id
         ORDER BY n.id
    $q$;
    RETURN NULL;
END
$$;

-- Deleted threads: thread_deleted on their categories' topics (unless the category goes too),
-- and their own topics are gone (tracktalk.topic_gone: their events leave the log, their sockets
-- are told).
CREATE OR REPLACE FUNCTION tracktalk.forum_threads_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT 'category:' || c.slug AS topic, NOT c.is_private AS public,
               array_agg(jsonb_build_object('type', 'thread_deleted', 'thread_id', o.id) ORDER BY o.id) AS messages
          FROM old_rows o
          JOIN public.forum_categories c ON c.id = o.category_id
         GROUP BY c.slug, c.is_private
         ORDER BY c.slug COLLATE "C"
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    PERFORM tracktalk.topic_gone('thread:' || o.id) FROM old_rows o ORDER BY o.id;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS forum_threads_after_insert ON forum_threads;
CREATE TRIGGER forum_threads_after_insert
    AFTER INSERT ON forum_threads REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_threads_after_insert();

DROP TRIGGER IF EXISTS forum_threads_after_update ON forum_threads;
CREATE TRIGGER forum_threads_after_update
    AFTER UPDATE ON forum_threads REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_threads_after_update();

DROP TRIGGER IF EXISTS forum_threads_after_delete ON forum_threads;
CREATE TRIGGER forum_threads_after_delete
    AFTER DELETE ON forum_threads REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_threads_after_delete();

-- A category made private: its subscribers, and its threads', are checked again (one revocation
-- per thread: a rare change, which a DBA makes). Its slug changed, or it was deleted: its topic
-- is gone (its threads' go with them, through their own trigger).
CREATE OR REPLACE FUNCTION tracktalk.forum_categories_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.slug IS DISTINCT FROM OLD.slug THEN
        PERFORM tracktalk.topic_gone('category:' || OLD.slug);
    ELSIF NEW.is_private AND NOT OLD.is_private THEN
        PERFORM tracktalk.revoke_topic('category:' || NEW.slug);
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.is_private AND NOT OLD.is_private THEN
        PERFORM tracktalk.revoke_topic('thread:' || t.id) FROM public.forum_threads t WHERE t.category_id = NEW.id ORDER BY t.id;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS forum_categories_after_update ON forum_categories;
CREATE TRIGGER forum_categories_after_update
    AFTER UPDATE ON forum_categories
    FOR EACH ROW
    WHEN (OLD.slug IS DISTINCT FROM NEW.slug OR (NEW.is_private AND NOT OLD.is_private))
    EXECUTE FUNCTION tracktalk.forum_categories_changed();

DROP TRIGGER IF EXISTS forum_categories_after_delete ON forum_categories;
CREATE TRIGGER forum_categories_after_delete
    AFTER DELETE ON forum_categories
    FOR EACH ROW EXECUTE FUNCTION tracktalk.forum_categories_changed();

-- An edited post is marked so, as the API does.
CREATE OR REPLACE FUNCTION tracktalk.forum_posts_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.is_edited := true;
    NEW.last_edited_at := now();
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS forum_posts_before_update ON forum_posts;
CREATE TRIGGER forum_posts_before_update
    BEFORE UPDATE OF content ON forum_posts
    FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content)
    EXECUTE FUNCTION tracktalk.forum_posts_before_update();

-- A deleted post takes its unread notifications with it (before the foreign key sets post_id to
-- NULL on the read ones).
CREATE OR REPLACE FUNCTION tracktalk.forum_posts_before_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM public.notifications WHERE post_id = OLD.id AND read_at IS NULL;
    RETURN OLD;
END
$$;

DROP TRIGGER IF EXISTS forum_posts_before_delete ON forum_posts;
CREATE TRIGGER forum_posts_before_delete
    BEFORE DELETE ON forum_posts
    FOR EACH ROW EXECUTE FUNCTION tracktalk.forum_posts_before_delete();

-- Notifies about posts (new ones; or edited ones, with their `old_contents`), given column by
-- column, as tracktalk.notify_comment_readers does about comments: each @mentioned user (at
-- most max_mentions() per post, its edits included: tracktalk.post_mentions) as post_mention,
-- then the parent's author as post_reply; never the writer, never someone who cannot see the
-- thread (a private category's are the team's), and one notification per person and post, of the
-- most specific kind (the unique index notifications_one_per_post turns away the rest).
CREATE OR REPLACE FUNCTION tracktalk.notify_post_readers(
    ids bigint[], thread_ids bigint[], user_ids bigint[], parent_ids bigint[], contents text[],
    old_contents text[] DEFAULT NULL
) RETURNS void
-- Generic plans and per-row subqueries, for the reasons given at notify_comment_readers.
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    edited constant boolean := old_contents IS NOT NULL;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(contents) AS c WHERE c LIKE '%@%') THEN
        WITH named AS (
            INSERT INTO tracktalk.post_mentions (post_id, user_id)
            SELECT w.id, newly.id
              FROM unnest(ids, contents) AS w (id, content)
             CROSS JOIN LATERAL (
                   SELECT u.id
                     FROM tracktalk.mentioned_names(w.content) WITH ORDINALITY AS m (name, at)
                    CROSS JOIN LATERAL (SELECT u.id FROM public.users u WHERE lower(u.username) = m.name
                                        OFFSET 0  -- keeps this a per-name index lookup
                                       ) AS u
                    WHERE NOT EXISTS (SELECT 1 FROM tracktalk.post_mentions c
                                       WHERE c.post_id = w.id AND c.user_id = u.id)
                    ORDER BY m.at, u.id
                    LIMIT greatest(tracktalk.max_mentions()
                                   - (SELECT count(*) FROM tracktalk.post_mentions c WHERE c.post_id = w.id),
                                   0)
                   ) AS newly
             WHERE w.content LIKE '%@%'
             ORDER BY w.id, newly.id
            ON CONFLICT DO NOTHING
            RETURNING post_id, user_id
        )
        INSERT INTO public.notifications (user_id, kind, actor_id, thread_id, post_id)
        SELECT named.user_id, 'post_mention', w.user_id, w.thread_id, w.id
          FROM named
          JOIN unnest(ids, thread_ids, user_ids) AS w (id, thread_id, user_id) ON w.id = named.post_id
          JOIN public.forum_threads t ON t.id = w.thread_id
          JOIN public.forum_categories c ON c.id = t.category_id
         CROSS JOIN LATERAL (SELECT u.is_team FROM public.users u WHERE u.id = named.user_id
                             OFFSET 0  -- keeps this a per-row index lookup
                            ) AS mentioned
         WHERE named.user_id <> w.user_id
           -- tracktalk.can_see_category(mentioned, category), written out
           AND (NOT c.is_private OR mentioned.is_team)
         ORDER BY w.id, named.user_id
        ON CONFLICT (user_id, post_id) WHERE kind IN ('post_reply', 'post_mention')
        -- An edit that mentions someone already told of the post (a reply) makes it news again.
        DO UPDATE SET kind = excluded.kind, created_at = now(), read_at = NULL
            WHERE notifications.kind <> 'post_mention';
    END IF;
    IF edited THEN
        RETURN;
    END IF;

    IF cardinality(array_remove(parent_ids, NULL)) > 0 THEN
        INSERT INTO public.notifications (user_id, kind, actor_id, thread_id, post_id)
        SELECT parent.user_id, 'post_reply', w.user_id, w.thread_id, w.id
          FROM unnest(ids, thread_ids, user_ids, parent_ids) AS w (id, thread_id, user_id, parent_id)
          JOIN public.forum_threads t ON t.id = w.thread_id
          JOIN public.forum_categories c ON c.id = t.category_id
         CROSS JOIN LATERAL (SELECT p.user_id, u.is_team
                               FROM public.forum_posts p JOIN public.users u ON u.id = p.user_id
                              WHERE p.id = w.parent_id
                             OFFSET 0  -- keeps this a per-row index lookup
                            ) AS parent
         WHERE parent.user_id <> w.user_id
           -- tracktalk.can_see_category(parent author, category), written out
           AND (NOT c.is_private OR parent.is_team)
         ORDER BY w.id
        ON CONFLICT (user_id, post_id) WHERE kind IN ('post_reply', 'post_mention') DO NOTHING;
    END IF;
END
$$;

-- New posts: their threads' counters (tracktalk.count_posts), then new_post on each thread's
-- topic, carrying the thread's counters after the statement (one change, one event), and
-- thread_updated on each category's topic; then the notifications.
CREATE OR REPLACE FUNCTION tracktalk.forum_posts_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM tracktalk.count_posts(array_agg(x.thread_id ORDER BY x.thread_id), array_agg(x.added ORDER BY x.thread_id))
       FROM (SELECT n.thread_id, count(*) AS added FROM new_rows n GROUP BY n.thread_id) AS x;
    FOR r IN
        SELECT * FROM (
            SELECT 'thread:' || t.id AS topic, NOT c.is_private AS public,
                   array_agg(jsonb_build_object('type', 'new_post', 'post', tracktalk.post_json(p),
                                                'thread', tracktalk.thread_counters(t.id, t.post_count, t.last_post_at))
                             ORDER BY n.id) AS messages
              FROM new_rows n
              JOIN public.forum_threads t ON t.id = n.thread_id
              JOIN public.forum_categories c ON c.id = t.category_id
              JOIN tracktalk.post_objects p ON p.id = n.id
             GROUP BY t.id, c.is_private
            UNION ALL
            SELECT 'category:' || o.category_slug, NOT c.is_private,
                   array_agg(jsonb_build_object('type', 'thread_updated', 'thread', tracktalk.thread_json(o))
                             ORDER BY o.id)
              FROM tracktalk.thread_objects o
              JOIN public.forum_categories c ON c.id = o.category_id
             WHERE o.id IN (SELECT n.thread_id FROM new_rows n)
             GROUP BY o.category_slug, c.is_private
        ) AS e
        ORDER BY e.topic COLLATE "C"
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    PERFORM tracktalk.notify_post_readers(
                array_agg(n.id ORDER BY n.id), array_agg(n.thread_id ORDER BY n.id),
                array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                array_agg(n.content ORDER BY n.id))
       FROM new_rows n;
    RETURN NULL;
END
$$;

-- Edited posts: post_edited on their threads' topics, and the notifications of the @names an
-- edit adds. A post whose created_at a writer changed moves its thread's last_post_at: its
-- counters are set again (tracktalk.count_posts) and thread_updated goes to the thread's and the
-- category's topics.
-- (Through EXECUTE: a join of the two transition tables, planned for each statement's rows.)
CREATE OR REPLACE FUNCTION tracktalk.forum_posts_after_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    EXECUTE $q$
        SELECT tracktalk.count_posts(array_agg(x.thread_id ORDER BY x.thread_id), array_agg(0::bigint))
          FROM (SELECT DISTINCT n.thread_id
                  FROM new_rows n JOIN old_rows o ON o.id = n.id
                 WHERE n.created_at IS DISTINCT FROM o.created_at) AS x
        HAVING count(*) > 0
    $q$;
    FOR r IN EXECUTE $q$
        WITH edits AS (
            SELECT n.thread_id, n.id,
                   jsonb_build_object('type', 'post_edited', 'post_id', n.id, 'content', n.content,
                                      'is_edited', n.is_edited,
                                      'last_edited_at', tracktalk.json_time(n.last_edited_at)) AS message
              FROM new_rows n
              JOIN old_rows o ON o.id = n.id
             WHERE n.content IS DISTINCT FROM o.content
        ), retimed AS (
            SELECT t.id, t.category_slug, tracktalk.thread_json(t) AS thread
              FROM tracktalk.thread_objects t
             WHERE t.id IN (SELECT n.thread_id FROM new_rows n JOIN old_rows o ON o.id = n.id
                             WHERE n.created_at IS DISTINCT FROM o.created_at)
        ), events AS (
            SELECT 'thread:' || e.thread_id AS topic, e.thread_id AS thread_id, e.id AS ord, e.message
              FROM edits e
            UNION ALL
            SELECT 'thread:' || x.id, x.id, 9223372036854775807,
                   jsonb_build_object('type', 'thread_updated', 'thread', x.thread)
              FROM retimed x
            UNION ALL
            SELECT 'category:' || x.category_slug, x.id, x.id,
                   jsonb_build_object('type', 'thread_updated', 'thread', x.thread)
              FROM retimed x
        )
        SELECT e.topic, NOT c.is_private AS public, array_agg(e.message ORDER BY e.ord) AS messages
          FROM events e
          JOIN public.forum_threads t ON t.id = e.thread_id
          JOIN public.forum_categories c ON c.id = t.category_id
         GROUP BY e.topic, c.is_private
         ORDER BY e.topic COLLATE "C"
    $q$
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    EXECUTE $q$
        SELECT tracktalk.notify_post_readers(
                   array_agg(n.id ORDER BY n.id), array_agg(n.thread_id ORDER BY n.id),
                   array_agg(n.user_id ORDER BY n.id), array_agg(n.parent_id ORDER BY n.id),
                   array_agg(n.content ORDER BY n.id), array_agg(o.content ORDER BY n.id))
          FROM new_rows n
          JOIN old_rows o ON o.id = n.id
         WHERE n.content IS DISTINCT FROM o.content
    $q$;
    RETURN NULL;
END
$$;

-- Deleted posts: their threads' counters, then post_deleted on each thread's topic (with the
-- counters) and thread_updated on each category's. Nothing for a thread that goes too (its
-- topic is gone: forum_threads_after_delete).
CREATE OR REPLACE FUNCTION tracktalk.forum_posts_after_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM tracktalk.count_posts(array_agg(x.thread_id ORDER BY x.thread_id), array_agg(-x.removed ORDER BY x.thread_id))
       FROM (SELECT o.thread_id, count(*) AS removed FROM old_rows o GROUP BY o.thread_id) AS x;
    FOR r IN
        SELECT * FROM (
            SELECT 'thread:' || t.id AS topic, NOT c.is_private AS public,
                   array_agg(jsonb_build_object('type', 'post_deleted', 'post_id', o.id,
                                                'thread', tracktalk.thread_counters(t.id, t.post_count, t.last_post_at))
                             ORDER BY o.id) AS messages
              FROM old_rows o
              JOIN public.forum_threads t ON t.id = o.thread_id
              JOIN public.forum_categories c ON c.id = t.category_id
             GROUP BY t.id, c.is_private
            UNION ALL
            SELECT 'category:' || t.category_slug, NOT c.is_private,
                   array_agg(jsonb_build_object('type', 'thread_updated', 'thread', tracktalk.thread_json(t))
                             ORDER BY t.id)
              FROM tracktalk.thread_objects t
              JOIN public.forum_categories c ON c.id = t.category_id
             WHERE t.id IN (SELECT o.thread_id FROM old_rows o)
             GROUP BY t.category_slug, c.is_private
        ) AS e
        ORDER BY e.topic COLLATE "C"
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS forum_posts_after_insert ON forum_posts;
CREATE TRIGGER forum_posts_after_insert
    AFTER INSERT ON forum_posts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_posts_after_insert();

DROP TRIGGER IF EXISTS forum_posts_after_update ON forum_posts;
CREATE TRIGGER forum_posts_after_update
    AFTER UPDATE ON forum_posts REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_posts_after_update();

DROP TRIGGER IF EXISTS forum_posts_after_delete ON forum_posts;
CREATE TRIGGER forum_posts_after_delete
    AFTER DELETE ON forum_posts REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_posts_after_delete();

-- Keeps post_stats, and sends post_liked with the fresh count (as comment_likes_changed).
CREATE OR REPLACE FUNCTION tracktalk.forum_post_likes_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sign constant integer := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
    r record;
BEGIN
    FOR r IN
        WITH counted AS (
            INSERT INTO tracktalk.post_stats AS s (post_id, likes)
            SELECT d.post_id, greatest(sign * count(*), 0)
              FROM changed_rows d
             -- A post being deleted takes its likes along: nothing to count or tell then.
             WHERE EXISTS (SELECT 1 FROM public.forum_posts p WHERE p.id = d.post_id)
             GROUP BY d.post_id
             ORDER BY d.post_id
            ON CONFLICT (post_id) DO UPDATE
               SET likes = greatest(s.likes + sign * (SELECT count(*) FROM changed_rows d
                                                       WHERE d.post_id = s.post_id), 0)
            RETURNING s.post_id, s.likes
        )
        SELECT 'thread:' || p.thread_id AS topic, NOT c.is_private AS public,
               array_agg(jsonb_build_object('type', 'post_liked', 'post_id', k.post_id, 'like_count', k.likes)
                         ORDER BY k.post_id) AS messages
          FROM counted k
          JOIN public.forum_posts p ON p.id = k.post_id
          JOIN public.forum_threads t ON t.id = p.thread_id
          JOIN public.forum_categories c ON c.id = t.category_id
         GROUP BY p.thread_id, c.is_private
         ORDER BY ('thread:' || p.thread_id) COLLATE "C"
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS forum_post_likes_after_insert ON forum_post_likes;
CREATE TRIGGER forum_post_likes_after_insert
    AFTER INSERT ON forum_post_likes REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_post_likes_changed();

DROP TRIGGER IF EXISTS forum_post_likes_after_delete ON forum_post_likes;
CREATE TRIGGER forum_post_likes_after_delete
    AFTER DELETE ON forum_post_likes REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.forum_post_likes_changed();

-- Posts, likes and threads do not move (tracktalk.refuse_move): a post moved to another thread
-- would leave both threads' counters and events wrong.
DROP TRIGGER IF EXISTS forum_posts_refuse_move ON forum_posts;
CREATE TRIGGER forum_posts_refuse_move
    BEFORE UPDATE OF id, thread_id ON forum_posts
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.thread_id IS DISTINCT FROM NEW.thread_id)
    EXECUTE FUNCTION tracktalk.refuse_move('a post', 'another thread', 'id', 'thread_id');

DROP TRIGGER IF EXISTS forum_post_likes_refuse_move ON forum_post_likes;
CREATE TRIGGER forum_post_likes_refuse_move
    BEFORE UPDATE OF post_id, user_id ON forum_post_likes
    FOR EACH ROW WHEN (OLD.post_id IS DISTINCT FROM NEW.post_id OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION tracktalk.refuse_move('a like', 'another post or user', 'post_id', 'user_id');

DROP TRIGGER IF EXISTS forum_threads_refuse_move ON forum_threads;
CREATE TRIGGER forum_threads_refuse_move
    BEFORE UPDATE OF id ON forum_threads
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION tracktalk.refuse_move('a thread', 'another id', 'id');

-- Sets a thread's post_count and last_post_at from its posts: for a DBA who suspects drift, or for
-- threads written while the triggers were off: SELECT tracktalk.recount_thread(id) FROM forum_threads;
-- Locks the row first, then counts from a fresh snapshot (as count_posts does). When they changed,
-- the thread's and its category's sockets get thread_updated.
CREATE OR REPLACE FUNCTION tracktalk.recount_thread(thread bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was public.forum_threads;
    now_ public.forum_threads;
    r record;
BEGIN
    SELECT * INTO was FROM public.forum_threads t WHERE t.id = thread FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM set_config('tracktalk.counting', 'on', true);
    UPDATE public.forum_threads t
       SET post_count = (SELECT count(*) FROM public.forum_posts p WHERE p.thread_id = t.id),
           last_post_at = coalesce((SELECT max(p.created_at) FROM public.forum_posts p WHERE p.thread_id = t.id),
                                   t.created_at)
     WHERE t.id = thread
    RETURNING t.* INTO now_;
    PERFORM set_config('tracktalk.counting', 'off', true);
    IF (now_.post_count, now_.last_post_at) IS NOT DISTINCT FROM (was.post_count, was.last_post_at) THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT x.topic, NOT c.is_private AS public,
               ARRAY[jsonb_build_object('type', 'thread_updated', 'thread', tracktalk.thread_json(o))] AS messages
          FROM tracktalk.thread_objects o
          JOIN public.forum_categories c ON c.id = o.category_id
         CROSS JOIN LATERAL (VALUES ('category:' || o.category_slug), ('thread:' || o.id)) AS x (topic)
         WHERE o.id = thread
         ORDER BY x.topic COLLATE "C"
    LOOP
        PERFORM tracktalk.publish(r.topic, r.messages, public => r.public);
    END LOOP;
END
$$;

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
-- On the primary in 'fanout' mode nothing is said here: each fan-out node says it when its copy
-- of the key changes (channel_key_fan_out, below, calls this with the argument 'node').
CREATE OR REPLACE FUNCTION tracktalk.channel_key_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    body constant text := format('{"k":"rekey","at":%s}', round(extract(epoch FROM clock_timestamp()), 6));
BEGIN
    IF TG_NARGS > 0 OR tracktalk.notifies() THEN
        PERFORM pg_notify(tracktalk.channel_name(OLD.inner_pad, OLD.outer_pad, 'rekey'),
                          tracktalk.hmac(OLD.inner_pad, OLD.outer_pad, body) || ' ' || body);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS channel_key_changed ON tracktalk.channel_key;
CREATE TRIGGER channel_key_changed
    AFTER UPDATE ON tracktalk.channel_key
    FOR EACH ROW WHEN (OLD.key IS DISTINCT FROM NEW.key)
    EXECUTE FUNCTION tracktalk.channel_key_changed();

---------------------------------------------------------------------------------------------
-- Fan-out nodes: a PostgreSQL that subscribes to the primary's publications `tracktalk` (the event
-- log, the numbering, the channel key, the heartbeat, who may see what) and `tracktalk_outbox`,
-- and sends the NOTIFYs from its copies (docs/dba.md, "Fan-out nodes"; prepared by `tracktalk
-- fanout-node`). Its triggers are made everywhere and enabled only on a node whose copy of the log
-- is complete (tracktalk.fan_out_triggers(), run last in this file): ENABLE REPLICA, so that they
-- fire for the rows the subscription applies, and for nothing else.
---------------------------------------------------------------------------------------------

-- The subscription of this database that makes it a fan-out node (NULL: it is none).
CREATE OR REPLACE FUNCTION tracktalk.node_subscription() RETURNS oid
LANGUAGE sql STABLE AS $$
    SELECT s.oid FROM pg_catalog.pg_subscription s
     WHERE s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
       AND 'tracktalk' = ANY (s.subpublications)
     ORDER BY s.subname LIMIT 1
$$;

-- On a node, for each event its copy of tracktalk.events receives (the apply worker fires row
-- triggers, never statement triggers): the payload that publish() sends on the primary in
-- 'direct' mode, one per statement and topic, as the statement's first event arrives. publish()
-- inserts a statement's events last to first, so the others are there by then; the first is the
-- one whose prev_tag is not its own tag (the trigger's WHEN). "at" is the event's time on the
-- primary (the replicas' delivery-lag metric then includes the node's lag).
CREATE OR REPLACE FUNCTION tracktalk.events_fan_out() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    last_seq bigint;
    joined text;
    closed boolean;
    payload text;
BEGIN
    IF NEW.public AND NEW.restricted IS NULL THEN
        SELECT max(e.seq), string_agg(e.message::text, ',' ORDER BY e.seq), bool_or(e.restricted IS NOT NULL)
          INTO last_seq, joined, closed
          FROM tracktalk.events e
         WHERE e.topic = NEW.topic AND e.seq >= NEW.seq AND e.tag = NEW.tag;
    ELSE
        SELECT max(e.seq), NULL, true INTO last_seq, joined, closed
          FROM tracktalk.events e
         WHERE e.topic = NEW.topic AND e.seq >= NEW.seq AND e.tag = NEW.tag;
    END IF;
    payload := format('{"k":"topic","topic":%s,"first":%s,"last":%s,"at":%s,"tag":"%s","prev":%s',
                      to_json(NEW.topic), NEW.seq, last_seq, round(extract(epoch FROM NEW.created_at), 6),
                      NEW.tag, coalesce(to_json(NEW.prev_tag)::text, 'null'));
    IF NOT closed AND octet_length(payload) + octet_length(joined) + 13 + 65 <= tracktalk.max_payload() THEN
        payload := payload || ',"events":[' || joined || ']}';
    ELSE
        payload := payload || '}';
    END IF;
    PERFORM tracktalk.send_signed('topic ' || NEW.topic, payload);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS events_fan_out ON tracktalk.events;
CREATE TRIGGER events_fan_out
    AFTER INSERT ON tracktalk.events
    FOR EACH ROW WHEN (NEW.prev_tag IS DISTINCT FROM NEW.tag)
    EXECUTE FUNCTION tracktalk.events_fan_out();

-- On a node, each row the outbox receives is sent (signed under the node's copy of the key, with
-- the node's "at", so that a revocation that reaches a lagging node late is not dropped as old
-- news), and not kept: the primary prunes its own rows, and its deletes are not published.
CREATE OR REPLACE FUNCTION tracktalk.outbox_fan_out() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.channel IS NOT NULL THEN
        PERFORM pg_notify(NEW.channel, NEW.body);
    ELSE
        PERFORM tracktalk.send_signed(
            NEW.name, (NEW.body::jsonb || jsonb_build_object('at', round(extract(epoch FROM clock_timestamp()), 6)))::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS outbox_fan_out ON tracktalk.outbox;
CREATE TRIGGER outbox_fan_out
    BEFORE INSERT ON tracktalk.outbox
    FOR EACH ROW EXECUTE FUNCTION tracktalk.outbox_fan_out();

-- On a node, a change of its copy of the key is told as on the primary (channel_key_changed).
DROP TRIGGER IF EXISTS channel_key_fan_out ON tracktalk.channel_key;
CREATE TRIGGER channel_key_fan_out
    AFTER UPDATE ON tracktalk.channel_key
    FOR EACH ROW WHEN (OLD.key IS DISTINCT FROM NEW.key)
    EXECUTE FUNCTION tracktalk.channel_key_changed('node');

-- Enables the fan-out triggers where this database is a node whose copy of the event log is
-- complete (its initial copy done: while it runs, every row it copies would fire the trigger), and
-- disables them everywhere else (the primary). On a node, the outbox's rows are dropped: with its
-- trigger on none is kept, so any row there came before (the primary's last few minutes, copied
-- by the initial sync while the trigger was off): old news that nobody prunes on a node. Run at
-- the end of this file and by `tracktalk fanout-node` once the initial copy is done; returns
-- whether the events' trigger is on.
CREATE OR REPLACE FUNCTION tracktalk.fan_out_triggers() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    node constant oid := tracktalk.node_subscription();
    copied constant boolean := node IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_catalog.pg_subscription_rel r
         WHERE r.srsubid = node AND r.srrelid = 'tracktalk.events'::regclass AND r.srsubstate = 'r');
BEGIN
    IF copied THEN
        ALTER TABLE tracktalk.events ENABLE REPLICA TRIGGER events_fan_out;
    ELSE
        ALTER TABLE tracktalk.events DISABLE TRIGGER events_fan_out;
    END IF;
    IF node IS NOT NULL THEN
        ALTER TABLE tracktalk.outbox ENABLE REPLICA TRIGGER outbox_fan_out;
        -- In the same transaction as the line above, which locks the table until it commits: the
        -- apply worker's next row finds the trigger on.
        DELETE FROM tracktalk.outbox;
        ALTER TABLE tracktalk.channel_key ENABLE REPLICA TRIGGER channel_key_fan_out;
    ELSE
        ALTER TABLE tracktalk.outbox DISABLE TRIGGER outbox_fan_out;
        ALTER TABLE tracktalk.channel_key DISABLE TRIGGER channel_key_fan_out;
    END IF;
    RETURN copied;
END
$$;

-- The primary's heartbeat (tracktalk.heartbeat), written at most every half second, and only where
-- there are fan-out nodes to read it; its time. The replicas that listen on a node call it about
-- once a second and compare it with the node's copy: how far the node is behind. SECURITY DEFINER:
-- the app role writes the heartbeat only through it.
CREATE OR REPLACE FUNCTION tracktalk.beat() RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    beat timestamptz;
BEGIN
    SELECT h.at INTO beat FROM tracktalk.heartbeat h;
    -- Read first: the replicas that find it fresh write nothing (not even a row lock).
    IF (beat IS NULL OR beat < clock_timestamp() - interval '0.5 s') AND tracktalk.fans_out() THEN
        INSERT INTO tracktalk.heartbeat AS h (at) VALUES (clock_timestamp())
        ON CONFLICT (singleton) DO UPDATE SET at = excluded.at
         WHERE h.at < excluded.at - interval '0.5 s';
        SELECT h.at INTO beat FROM tracktalk.heartbeat h;
    END IF;
    RETURN beat;
END
$$;

-- How a fan-out node stands (read by the replicas that listen on it, every second, and by
-- `tracktalk check`): its subscription, whether its apply worker runs, whether its initial copy is
-- done and its triggers send, and the primary's heartbeat as it last received it. No row where
-- this database is not a node.
CREATE OR REPLACE FUNCTION tracktalk.node_state(
    OUT subscription text, OUT enabled boolean, OUT running boolean, OUT copied boolean,
    OUT sending boolean, OUT beat timestamptz, OUT received_at timestamptz
) RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT s.subname::text, s.subenabled,
           EXISTS (SELECT 1 FROM pg_catalog.pg_stat_subscription w
                    WHERE w.subid = s.oid AND w.relid IS NULL AND w.pid IS NOT NULL),
           NOT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel r
                        WHERE r.srsubid = s.oid AND r.srsubstate <> 'r'),
           EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                    WHERE t.tgrelid = 'tracktalk.events'::regclass AND t.tgname = 'events_fan_out'
                      AND t.tgenabled = 'R'),
           (SELECT h.at FROM tracktalk.heartbeat h),
           (SELECT max(w.last_msg_receipt_time) FROM pg_catalog.pg_stat_subscription w WHERE w.subid = s.oid)
      FROM pg_catalog.pg_subscription s
     WHERE s.oid = tracktalk.node_subscription()
$$;

---------------------------------------------------------------------------------------------
-- Tables made live by their DBA: tracktalk.make_live (docs/dba.md, "Any table live")
---------------------------------------------------------------------------------------------
-- SELECT tracktalk.make_live('public.book_requests', topic_column => 'album_id', can_see => …)
-- puts four statement triggers on the table (tracktalk_live_insert, _update, _delete, _truncate,
-- all running tracktalk.live_rows_changed), a row in tracktalk.live_tables and a kind of topic in
-- tracktalk.topic_kinds (its may_see: tracktalk.live_may_see). Who may do it is checked twice:
-- make_live runs as its caller, who must be able to act as the table's owner (the triggers are
-- made with the caller's rights); the registry is written by SECURITY DEFINER functions, which
-- check the session's role again (they may be called directly by any role that may use the
-- schema) and register only a table that carries the triggers.

-- The settings under which a live table's rows and topics become text, whoever writes them: the
-- same row is the same JSON (times in UTC), and the same value the same topic, whatever the
-- writer's session says (each function below that makes or reads topics SETs them).
--   SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
--   SET extra_float_digits = 1 SET bytea_output = 'hex'

-- The columns of `tbl`'s primary key, in its order, each with the SQL of its equality operator
-- (the one its index uses, schema-qualified: a citext key compares as citext); none when it has no
-- primary key. PL/pgSQL: its query is planned once per session (a LANGUAGE sql function with a SET
-- clause is planned at every call: 0.8 ms here, more than the rest of a statement's trigger).
CREATE OR REPLACE FUNCTION tracktalk.live_key(tbl regclass)
RETURNS TABLE (name text, equals text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT a.attname::text, format('OPERATOR(%I.%s)', opn.nspname, op.oprname)
      FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) WITH ORDINALITY AS k (attnum, opclass, o)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      JOIN pg_opclass c ON c.oid = k.opclass
      JOIN pg_amop am ON am.amopfamily = c.opcfamily AND am.amoplefttype = c.opcintype
                     AND am.amoprighttype = c.opcintype AND am.amopstrategy = 3  -- btree's "="
      JOIN pg_operator op ON op.oid = am.amopopr
      JOIN pg_namespace opn ON opn.oid = op.oprnamespace
     WHERE i.indrelid = tbl AND i.indisprimary
     ORDER BY k.o;
END
$$;

-- The SQL of the topic of a row of the live table `live`, the row written as the expression `r`
-- (`o.r`): its topic, or `topic:` and the text of its topic_column's value; NULL (no topic, nothing
-- published) when that value is NULL or empty, or makes a topic of more than 256 characters, which
-- no socket may subscribe to (app/bounds.py's MAX_TOPIC; as a key of topic_state it would fail the
-- writer's statement past 2,704 bytes). Raises when the column is gone (renamed or dropped since
-- make_live): the writer's statement fails rather than go unseen.
CREATE OR REPLACE FUNCTION tracktalk.live_topic_sql(live tracktalk.live_tables, r text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF live.topic_column IS NULL THEN
        RETURN quote_literal(live.topic);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = live.tbl AND a.attname = live.topic_column
                      AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION '% is live with a topic per value of its column %, which it no longer has',
                        live.tbl, live.topic_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Make it live again by the column''s new name: SELECT tracktalk.make_live(%L, '
                                'enabled => false); then tracktalk.make_live(%L, topic_column => …).',
                                live.tbl::text, live.tbl::text);
    END IF;
    RETURN format('CASE WHEN char_length((%2$s).%3$I::text) <= %4$s THEN %1$L || nullif((%2$s).%3$I::text, %5$L) END',
                  live.topic || ':', r, live.topic_column, 256 - char_length(live.topic || ':'), '');
END
$$;

-- The SQL of the JSON of a row of the live table `tbl`, the row written as the expression `r`:
-- to_jsonb, with each timestamptz column (or one of a domain over it) written as every other time
-- of the protocol is (tracktalk.json_time: `2026-12-05T13:07:52.199147Z`; an infinite one as
-- to_jsonb writes it). Times inside arrays and composites stay to_jsonb's (in UTC: the trigger
-- sets the zone).
CREATE OR REPLACE FUNCTION tracktalk.live_row_sql(tbl regclass, r text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    times text;
BEGIN
    SELECT string_agg(format('%1$L, CASE WHEN isfinite((%2$s).%1$I) THEN to_jsonb(tracktalk.json_time((%2$s).%1$I))'
                             ' ELSE to_jsonb((%2$s).%1$I) END', a.attname, r), ', ' ORDER BY a.attnum)
      INTO times
      FROM pg_attribute a
      JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND 'timestamptz'::regtype IN (t.oid, t.typbasetype);
    RETURN format('to_jsonb(%s)', r) || coalesce(format(' || jsonb_build_object(%s)', times), '');
END
$$;

-- The query that turns the rows of one statement on the live table `live` (its transition tables
-- live_old and live_new) into messages: one row per topic, in topic order (the order in which
-- publish() locks them), with its messages in the order of the rows. `op`: TG_OP.
--   INSERT: row_inserted {row}; DELETE: row_deleted {row: its primary key};
--   UPDATE: old and new rows paired by primary key: row_updated {row} on the row's topic; a row
--   whose topic changed is row_deleted on the old topic and row_inserted on the new one; a key
--   that changed is the old key's row_deleted and the new one's row_inserted.
CREATE OR REPLACE FUNCTION tracktalk.live_changes_sql(live tracktalk.live_tables, op text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old_key text;     -- the primary key of o.r, as a JSON object
    same_row text;    -- o.r and n.r have the same primary key
    old_topic constant text := tracktalk.live_topic_sql(live, 'o.r');
    new_topic constant text := tracktalk.live_topic_sql(live, 'n.r');
    new_row constant text := tracktalk.live_row_sql(live.tbl, 'n.r');
    changes text;
BEGIN
    SELECT format('jsonb_build_object(%s)', string_agg(format('%L, (o.r).%I', k.name, k.name), ', ')),
           string_agg(format('(o.r).%1$I %2$s (n.r).%1$I', k.name, k.equals), ' AND ')
      INTO old_key, same_row
      FROM tracktalk.live_key(live.tbl) AS k;
    IF old_key IS NULL THEN
        RAISE EXCEPTION '% is live and has no primary key any more', live.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Give it one again (row_deleted names a row by it), or undo make_live: '
                                'SELECT tracktalk.make_live(%L, enabled => false);', live.tbl::text);
    END IF;
    IF op = 'INSERT' THEN
        changes := format($q$
            SELECT %s AS topic, n.ord, 0 AS part,
                   jsonb_build_object('type', 'row_inserted', 'row', %s) AS message
              FROM (SELECT r, row_number() OVER () AS ord FROM live_new r) AS n
        $q$, new_topic, new_row);
    ELSIF op = 'DELETE' THEN
        changes := format($q$
            SELECT %s AS topic, o.ord, 0 AS part,
                   jsonb_build_object('type', 'row_deleted', 'row', %s) AS message
              FROM (SELECT r, row_number() OVER () AS ord FROM live_old r) AS o
        $q$, old_topic, old_key);
    ELSE
        changes := format($q$
            WITH o AS (SELECT r, row_number() OVER () AS ord FROM live_old r),
                 n AS (SELECT r, row_number() OVER () AS ord FROM live_new r),
                 p AS (SELECT o.ord AS o_ord, n.ord AS n_ord, %s AS old_topic, %s AS new_topic,
                              %s AS old_key, CASE WHEN n.ord IS NOT NULL THEN %s END AS new_row
                         FROM o FULL JOIN n ON %s)
            SELECT new_topic AS topic, n_ord AS ord, 1 AS part,
                   jsonb_build_object('type', 'row_updated', 'row', new_row) AS message
              FROM p
             WHERE o_ord IS NOT NULL AND n_ord IS NOT NULL AND old_topic IS NOT DISTINCT FROM new_topic
            UNION ALL
            SELECT old_topic, coalesce(n_ord, o_ord), 0, jsonb_build_object('type', 'row_deleted', 'row', old_key)
              FROM p
             WHERE o_ord IS NOT NULL AND (n_ord IS NULL OR old_topic IS DISTINCT FROM new_topic)
            UNION ALL
            SELECT new_topic, coalesce(n_ord, o_ord), 2, jsonb_build_object('type', 'row_inserted', 'row', new_row)
              FROM p
             WHERE n_ord IS NOT NULL AND (o_ord IS NULL OR old_topic IS DISTINCT FROM new_topic)
        $q$, old_topic, new_topic, old_key, new_row, same_row);
    END IF;
    RETURN format($q$
        SELECT c.topic, array_agg(c.message ORDER BY c.ord, c.part) AS messages
          FROM (%s) AS c
         WHERE c.topic IS NOT NULL
         GROUP BY c.topic
         ORDER BY c.topic COLLATE "C"
    $q$, changes);
END
$$;

-- Every topic of the live kind `topic` (`topic` and `topic:…`) starts again: its events leave the
-- log and its subscribers are told (tracktalk.topic_gone: those that may no longer see it lose the
-- subscription, the others reload), and its numbering skips a seq, with no event: a client that
-- resumes later with a since= from before gets resync, since what happened meanwhile (rows
-- written while the table was not live, a TRUNCATE) is in no event. One NOTIFY per topic the kind
-- ever had (tracktalk.topic_state keeps them all).
CREATE OR REPLACE FUNCTION tracktalk.live_reset(topic text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    each_topic text;
BEGIN
    FOR each_topic IN
        SELECT s.topic FROM tracktalk.topic_state s
         WHERE s.topic = live_reset.topic OR starts_with(s.topic, live_reset.topic || ':')
         ORDER BY s.topic COLLATE "C"
    LOOP
        UPDATE tracktalk.topic_state s
           SET last_seq = s.last_seq + 1, prev_tag = s.last_tag,
               last_tag = left(md5(gen_random_uuid()::text), 16)
         WHERE s.topic = each_topic;
        PERFORM tracktalk.topic_gone(each_topic);
    END LOOP;
END
$$;

-- The trigger of every live table (AFTER INSERT, UPDATE, DELETE and TRUNCATE, FOR EACH STATEMENT,
-- with transition tables live_old and live_new): publishes the statement's rows, one call of
-- publish() per topic, in topic order; public (the rows may travel in the NOTIFY payload) when the
-- table has no can_see. Nothing for a table that is not registered (a trigger left or made by
-- hand). TRUNCATE: every topic of the table starts again (tracktalk.live_reset). SECURITY DEFINER,
-- as every trigger that publishes; the settings make the JSON of a row the same in every session.
CREATE OR REPLACE FUNCTION tracktalk.live_rows_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
DECLARE
    live tracktalk.live_tables;
    batch record;
BEGIN
    SELECT * INTO live FROM tracktalk.live_tables l WHERE l.tbl = TG_RELID;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM tracktalk.live_reset(live.topic);
        RETURN NULL;
    END IF;
    FOR batch IN EXECUTE tracktalk.live_changes_sql(live, TG_OP) LOOP
        PERFORM tracktalk.publish(batch.topic, batch.messages, public => live.can_see IS NULL);
    END LOOP;
    RETURN NULL;
END
$$;

-- May `user_id` (NULL: an anonymous socket) subscribe to `topic`, of a live table? The kind's
-- may_see (tracktalk.may_see calls it, as the replicas' role). NULL (not found): no live table
-- has that topic, or a key of a table without topic_column, no key (or one that is not the
-- canonical text of a value of the column: `book_requests:07` for an integer column) for one with
-- it. Then the table's can_see, if any: its answer (true, false, or NULL: not found). A can_see
-- that raises, or is gone, refuses (false) with a WARNING in the server's log; its error reaches
-- no client.
CREATE OR REPLACE FUNCTION tracktalk.live_may_see(user_id bigint, topic text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
DECLARE
    colon constant integer := strpos(topic, ':');
    key constant text := CASE WHEN colon > 0 THEN substr(topic, colon + 1) END;
    live tracktalk.live_tables;
    column_type text;
    canonical text;
    fn text;
    seen boolean;
BEGIN
    SELECT * INTO live FROM tracktalk.live_tables l
     WHERE l.topic = CASE WHEN colon > 0 THEN left(live_may_see.topic, colon - 1) ELSE live_may_see.topic END;
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM pg_trigger t
                                 WHERE t.tgrelid = live.tbl
                                   AND t.tgfoid = 'tracktalk.live_rows_changed()'::regprocedure) THEN
        RETURN NULL;
    END IF;
    IF live.topic_column IS NULL THEN
        IF key IS NOT NULL THEN
            RETURN NULL;
        END IF;
    ELSE
        SELECT format_type(a.atttypid, a.atttypmod) INTO column_type
          FROM pg_attribute a
         WHERE a.attrelid = live.tbl AND a.attname = live.topic_column AND a.attnum > 0 AND NOT a.attisdropped;
        IF key IS NULL OR key = '' OR column_type IS NULL THEN
            RETURN NULL;
        END IF;
        BEGIN
            EXECUTE format('SELECT ($1::%s)::text', column_type) INTO canonical USING key;
        EXCEPTION WHEN OTHERS THEN
            RETURN NULL;  -- not a value of the column
        END;
        IF canonical IS DISTINCT FROM key THEN
            RETURN NULL;
        END IF;
    END IF;
    IF live.can_see IS NULL THEN
        RETURN true;
    END IF;
    SELECT format('%I.%I', n.nspname, p.proname) INTO fn
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = to_regprocedure(live.can_see);
    IF fn IS NULL THEN
        RAISE WARNING 'tracktalk.live_may_see: the can_see of %, %, is gone (topic % refused)',
                      live.tbl, live.can_see, left(topic, 100);
        RETURN false;
    END IF;
    BEGIN
        EXECUTE format('SELECT %s($1, $2)', fn) INTO seen USING user_id, topic;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'tracktalk.live_may_see: %, the can_see of %, failed for topic % (refused): % (SQLSTATE %)',
                      live.can_see, live.tbl, left(topic, 100), SQLERRM, SQLSTATE;
        RETURN false;
    END;
    RETURN seen;
END
$$;

-- The function that `can_see` names, resolved as the caller of make_live would (its search_path):
-- with its argument types (`public.f(bigint, text)`), or by name alone, where the one of that name
-- that takes (bigint, text) wins over others. NULL for NULL; raises when there is none.
CREATE OR REPLACE FUNCTION tracktalk.live_function(can_see text) RETURNS regprocedure
LANGUAGE plpgsql STABLE AS $$
DECLARE
    fn regprocedure;
BEGIN
    IF can_see IS NULL THEN
        RETURN NULL;
    ELSIF strpos(can_see, '(') > 0 THEN
        fn := pg_catalog.to_regprocedure(can_see);
    ELSE
        -- (One function of that name, of other arguments: live_check says what is wrong with it.)
        fn := coalesce(pg_catalog.to_regprocedure(can_see || '(bigint, text)'),
                       pg_catalog.to_regproc(can_see)::oid::regprocedure);
    END IF;
    IF fn IS NULL THEN
        RAISE EXCEPTION 'can_see: there is no function %(user_id bigint, topic text)', can_see
            USING ERRCODE = 'undefined_function',
                  HINT = 'can_see names a function (user_id bigint, topic text) RETURNS boolean, with its schema: '
                         '''public.can_see_book_requests''.';
    END IF;
    RETURN fn;
END
$$;

-- The row that make_live would write in tracktalk.live_tables for these arguments, every one
-- checked (each error says what to do): who asks (the session's role must be able to act as the
-- table's owner: a superuser, the owner, or a member of the owning role), the table (an ordinary,
-- permanent table of its own schema, with a primary key, not one of tracktalk's), its topic (the
-- `topic` argument, else the table's name: a kind of topic that is not reserved and not another's),
-- its topic_column, its can_see. SECURITY DEFINER, to read tracktalk.topic_kinds; it writes
-- nothing.
--
-- can_see runs as its owner, whatever asks it: it must be SECURITY DEFINER with a fixed
-- search_path, owned by a role the session's role may act as. tracktalk asks it as the replicas'
-- role (which reads the channel key and every topic's events): run as that role (SECURITY
-- INVOKER), the code of whoever made the table live would get those rights; run as a role
-- the caller could not act as, it would get that role's.
CREATE OR REPLACE FUNCTION tracktalk.live_check(tbl regclass, topic text, topic_column text, can_see regprocedure)
RETURNS tracktalk.live_tables
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    kind_of text := coalesce(topic, (SELECT c.relname::text FROM pg_class c WHERE c.oid = tbl));
    other text;
    fn record;
    fix text;
    made tracktalk.live_tables;
BEGIN
    SELECT c.relkind, c.relpersistence, c.relowner, c.relispartition, n.nspname INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no table %', tbl USING ERRCODE = 'undefined_table';
    ELSIF NOT pg_has_role(session_user, rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of % (%) or a superuser may make it live, not %',
                        tbl, pg_get_userbyid(rel.relowner), session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Connect as its owner (or a member of the owning role), or as a superuser.';
    ELSIF rel.relkind = 'p' OR rel.relispartition THEN
        RAISE EXCEPTION '% is a partitioned table, or a partition: it cannot be made live', tbl
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A statement fires the statement triggers of the table it names only: writes made '
                           'straight into a partition, or through its parent, would not all be seen.';
    ELSIF rel.relkind <> 'r' THEN
        RAISE EXCEPTION '% is not a table: only tables can be made live', tbl
            USING ERRCODE = 'wrong_object_type';
    ELSIF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table: it cannot be made live', tbl
            USING ERRCODE = 'feature_not_supported';
    ELSIF rel.nspname IN ('tracktalk', 'pg_catalog', 'information_schema') THEN
        RAISE EXCEPTION '% belongs to %: it cannot be made live', tbl, rel.nspname
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT format('its trigger %I runs %s', t.tgname, t.tgfoid::regprocedure) INTO other
      FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
     WHERE t.tgrelid = tbl AND p.pronamespace = 'tracktalk'::regnamespace
       AND t.tgfoid <> 'tracktalk.live_rows_changed()'::regprocedure
     LIMIT 1;
    IF other IS NOT NULL THEN
        RAISE EXCEPTION '% is one of tracktalk''s own tables (%): it goes live through its own topics', tbl, other
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Subscribe to its topics (track:{id}, thread:{id}, category:{slug}): docs/protocol.md.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tracktalk.live_key(tbl)) THEN
        RAISE EXCEPTION '% has no primary key: a live table needs one', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'row_deleted names the row by its primary key, and an UPDATE''s rows are paired by it.',
                  HINT = format('Give it one: ALTER TABLE %s ADD PRIMARY KEY (…);', tbl);
    END IF;

    IF kind_of !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        IF topic IS NULL THEN
            RAISE EXCEPTION 'the name of % cannot be its topic: a topic is a-z, 0-9 and _, starting with a letter, at most 63 characters', tbl
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = format('Name its topic: SELECT tracktalk.make_live(%L, topic => ''…'');', tbl::text);
        END IF;
        RAISE EXCEPTION 'the topic % is not a-z, 0-9 and _, starting with a letter, at most 63 characters', quote_literal(kind_of)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF kind_of = ANY (tracktalk.reserved_kinds()) THEN
        RAISE EXCEPTION 'the topic % is tracktalk''s own (%)', kind_of, array_to_string(tracktalk.reserved_kinds(), ', ')
            USING ERRCODE = 'duplicate_object',
                  HINT = format('Name another: SELECT tracktalk.make_live(%L, topic => ''…'');', tbl::text);
    END IF;
    SELECT l.tbl::text INTO other
      FROM tracktalk.live_tables l
     WHERE l.topic = kind_of AND l.tbl <> live_check.tbl
       AND EXISTS (SELECT 1 FROM pg_trigger t   -- (not a table dropped since: live_register forgets it)
                    WHERE t.tgrelid = l.tbl AND t.tgfoid = 'tracktalk.live_rows_changed()'::regprocedure);
    IF other IS NOT NULL THEN
        RAISE EXCEPTION 'the topic % is the topic of the live table % already', kind_of, other
            USING ERRCODE = 'duplicate_object',
                  HINT = format('Name another: SELECT tracktalk.make_live(%L, topic => ''…'');', tbl::text);
    ELSIF EXISTS (SELECT 1 FROM tracktalk.topic_kinds k WHERE k.kind = kind_of)
          AND NOT EXISTS (SELECT 1 FROM tracktalk.live_tables l WHERE l.topic = kind_of) THEN
        RAISE EXCEPTION 'the topic % is a kind of topic of tracktalk''s already', kind_of
            USING ERRCODE = 'duplicate_object',
                  HINT = format('Name another: SELECT tracktalk.make_live(%L, topic => ''…'');', tbl::text);
    END IF;

    IF topic_column IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = tbl AND a.attname = topic_column AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION '% has no column %', tbl, quote_ident(topic_column)
            USING ERRCODE = 'undefined_column',
                  HINT = 'topic_column names a column of the table (one topic per value): its name as the catalog has it, unquoted.';
    END IF;

    IF can_see IS NOT NULL THEN
        SELECT p.*, pg_get_userbyid(p.proowner) AS owner_name,
               EXISTS (SELECT 1 FROM unnest(p.proconfig) AS s WHERE s LIKE 'search\_path=%') AS fixed_path
          INTO fn
          FROM pg_proc p WHERE p.oid = can_see;
        IF NOT (fn.prorettype = 'boolean'::regtype AND fn.pronargs = 2 AND fn.prokind = 'f' AND NOT fn.proretset
                AND fn.proargtypes[0] = 'bigint'::regtype AND fn.proargtypes[1] = 'text'::regtype) THEN
            RAISE EXCEPTION 'can_see must be (user_id bigint, topic text) RETURNS boolean: % is not', can_see
                USING ERRCODE = 'invalid_function_definition',
                      HINT = 'CREATE FUNCTION … (user_id bigint, topic text) RETURNS boolean LANGUAGE sql STABLE '
                             'SECURITY DEFINER SET search_path = pg_catalog, public AS …;';
        END IF;
        fix := format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, public;', can_see);
        IF NOT fn.prosecdef THEN
            RAISE EXCEPTION 'can_see % must be SECURITY DEFINER: it runs as its owner', can_see
                USING ERRCODE = 'invalid_function_definition',
                      DETAIL = 'The replicas ask it as their own role, which reads the channel key and every topic''s '
                               'events: the code of whoever made the table live must not run with those rights.',
                      HINT = fix;
        ELSIF NOT fn.fixed_path THEN
            RAISE EXCEPTION 'can_see % must fix its search_path: as SECURITY DEFINER it would run with its caller''s', can_see
                USING ERRCODE = 'invalid_function_definition',
                      HINT = fix;
        ELSIF NOT pg_has_role(session_user, fn.proowner, 'USAGE') THEN
            RAISE EXCEPTION 'can_see % belongs to %, a role that % may not act as: it would run as that role',
                            can_see, fn.owner_name, session_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Use a function of the table''s owner (ALTER FUNCTION … OWNER TO …).';
        END IF;
    END IF;

    made := ROW(tbl, kind_of, topic_column, can_see::text, now(), session_user);
    RETURN made;
END
$$;

-- Registers the table `tbl` as live_check() makes it, once it carries its four triggers (made by
-- make_live as the table's owner): the row of tracktalk.live_tables, and its kind of topic.
-- Registrations of tables that are gone, or no longer carry the triggers, go first.
CREATE OR REPLACE FUNCTION tracktalk.live_register(tbl regclass, topic text, topic_column text, can_see regprocedure)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    made constant tracktalk.live_tables := tracktalk.live_check(tbl, topic, topic_column, can_see);
BEGIN
    PERFORM tracktalk.live_forget_stale();
    IF (SELECT count(*) FROM pg_trigger t
         WHERE t.tgrelid = tbl AND t.tgfoid = 'tracktalk.live_rows_changed()'::regprocedure) <> 4 THEN
        RAISE EXCEPTION '% does not carry the triggers of a live table', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Make it live with tracktalk.make_live(), which makes them.';
    END IF;
    BEGIN
        INSERT INTO tracktalk.live_tables VALUES (made.*);
        INSERT INTO tracktalk.topic_kinds (kind, may_see)
        VALUES (made.topic, tracktalk.kind_function(made.topic, 'may_see', 'tracktalk.live_may_see(bigint, text)'));
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION '% or the topic % was made live at the same moment by another session', tbl, made.topic
            USING ERRCODE = 'duplicate_object', HINT = 'See tracktalk.live_tables.';
    END;
END
$$;

-- The registration of `tbl` goes, once its triggers are gone (make_live drops them first): its
-- row, its kind of topic (its subscribers are then refused: not found), and its topics start
-- again (tracktalk.live_reset: their events go, the subscriptions end). False when it was not live.
CREATE OR REPLACE FUNCTION tracktalk.live_unregister(tbl regclass) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner oid := (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl);
    gone tracktalk.live_tables;
BEGIN
    IF owner IS NOT NULL AND NOT pg_has_role(session_user, owner, 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of % (%) or a superuser may undo make_live, not %',
                        tbl, pg_get_userbyid(owner), session_user
            USING ERRCODE = 'insufficient_privilege';
    ELSIF EXISTS (SELECT 1 FROM pg_trigger t
                   WHERE t.tgrelid = tbl AND t.tgfoid = 'tracktalk.live_rows_changed()'::regprocedure) THEN
        RAISE EXCEPTION '% still carries the triggers of a live table', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Undo it with SELECT tracktalk.make_live(%L, enabled => false);', tbl::text);
    END IF;
    DELETE FROM tracktalk.live_tables l WHERE l.tbl = live_unregister.tbl RETURNING l.* INTO gone;
    IF gone.tbl IS NULL THEN
        RETURN false;
    END IF;
    DELETE FROM tracktalk.topic_kinds k WHERE k.kind = gone.topic;
    PERFORM tracktalk.live_reset(gone.topic);
    PERFORM tracktalk.revoke_kind(gone.topic);
    RETURN true;
END
$$;

-- Registrations whose table is gone (dropped: its triggers went with it) or no longer carries
-- its triggers (dropped by hand) go, as make_live(…, enabled => false) would undo them. Until then
-- their topics are not found (tracktalk.live_may_see).
CREATE OR REPLACE FUNCTION tracktalk.live_forget_stale() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stale record;
BEGIN
    FOR stale IN
        DELETE FROM tracktalk.live_tables l
         WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
                            WHERE t.tgrelid = l.tbl AND t.tgfoid = 'tracktalk.live_rows_changed()'::regprocedure)
        RETURNING l.topic
    LOOP
        DELETE FROM tracktalk.topic_kinds k WHERE k.kind = stale.topic;
        PERFORM tracktalk.live_reset(stale.topic);
        PERFORM tracktalk.revoke_kind(stale.topic);
    END LOOP;
END
$$;

-- Makes the live triggers on the table named `qualified` (create or replace: each is made again
-- as it should be), or drops them.
CREATE OR REPLACE FUNCTION tracktalk.live_triggers(qualified text, made boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('tracktalk_live_insert',   'INSERT',   'REFERENCING NEW TABLE AS live_new FOR EACH STATEMENT'),
            ('tracktalk_live_update',   'UPDATE',   'REFERENCING OLD TABLE AS live_old NEW TABLE AS live_new FOR EACH STATEMENT'),
            ('tracktalk_live_delete',   'DELETE',   'REFERENCING OLD TABLE AS live_old FOR EACH STATEMENT'),
            ('tracktalk_live_truncate', 'TRUNCATE', 'FOR EACH STATEMENT')
        ) AS w (name, event, how)
    LOOP
        IF made THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s %s EXECUTE FUNCTION tracktalk.live_rows_changed()',
                           t.name, t.event, qualified, t.how);
        ELSIF EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = qualified::regclass AND g.tgname = t.name) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', t.name, qualified);
        END IF;
    END LOOP;
END
$$;

-- How a live table is live, in words: `book_requests:{album_id}, can_see public.f(bigint,text)`.
CREATE OR REPLACE FUNCTION tracktalk.live_described(live tracktalk.live_tables) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT live.topic || coalesce(':{' || live.topic_column || '}', '') || coalesce(', can_see ' || live.can_see, '')
$$;

-- Makes the table `tbl` live (docs/dba.md, "Any table live"): its inserts, updates and deletes
-- reach the sockets subscribed to its topics as row_inserted, row_updated and row_deleted.
--   topic         the kind of its topics (default: the table's name): the topic itself, or
--   topic_column  with it, one topic per value of that column: `topic:value`
--   can_see       a function (user_id bigint, topic text) RETURNS boolean, SECURITY DEFINER, asked
--                 when a socket subscribes and when tracktalk.recheck_topic() says to (default:
--                 any user may subscribe)
--   enabled       false: undo it (its triggers and registration go; its events too, and its
--                 subscribers are told)
-- Returns its topics (`book_requests`, `book_requests:{album_id}`); NULL when undone. Called again
-- with the same arguments it changes nothing; with others, it says to undo it first. It runs as
-- its caller (who must act as the table's owner: the triggers are made with the caller's rights),
-- and `tbl` and `can_see` are found as the caller would find them (its search_path).
CREATE OR REPLACE FUNCTION tracktalk.make_live(
    tbl           regclass,
    topic         text DEFAULT NULL,
    topic_column  text DEFAULT NULL,
    can_see       text DEFAULT NULL,
    enabled       boolean DEFAULT true
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    rel record;
    fn regprocedure;
    wanted tracktalk.live_tables;
    live tracktalk.live_tables;
BEGIN
    SELECT c.relowner, format('%I.%I', n.nspname, c.relname) AS qualified INTO rel
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl;
    IF enabled IS NULL THEN
        RAISE EXCEPTION 'enabled must be true or false' USING ERRCODE = 'null_value_not_allowed';
    ELSIF NOT pg_catalog.pg_has_role(current_user, rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of % (%) or a superuser may make it live, or undo it, not %',
                        rel.qualified, pg_catalog.pg_get_userbyid(rel.relowner), current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Connect as its owner (or a member of the owning role), or as a superuser.';
    END IF;

    IF NOT enabled THEN
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel.qualified);
        PERFORM tracktalk.live_triggers(rel.qualified, made => false);
        IF NOT tracktalk.live_unregister(tbl) THEN
            RAISE NOTICE '% was not live', rel.qualified;
        END IF;
        RETURN NULL;
    END IF;

    fn := tracktalk.live_function(can_see);
    wanted := tracktalk.live_check(tbl, topic, topic_column, fn);
    -- One make_live of a table at a time (the lock is its own: writers wait, readers do not).
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel.qualified);
    SELECT * INTO live FROM tracktalk.live_tables l WHERE l.tbl = make_live.tbl;
    IF FOUND AND (live.topic, live.topic_column, live.can_see)
                 IS NOT DISTINCT FROM (wanted.topic, wanted.topic_column, wanted.can_see) THEN
        IF (SELECT count(*) FROM pg_catalog.pg_trigger t
             WHERE t.tgrelid = tbl AND t.tgfoid = 'tracktalk.live_rows_changed()'::regprocedure) <> 4 THEN
            PERFORM tracktalk.live_triggers(rel.qualified, made => true);
        END IF;
    ELSIF FOUND THEN
        RAISE EXCEPTION '% is live already, as %', rel.qualified, tracktalk.live_described(live)
            USING ERRCODE = 'duplicate_object',
                  DETAIL = format('make_live was called for it again with other arguments (%s).',
                                  tracktalk.live_described(wanted)),
                  HINT = format('Undo it first, then make it live as you want it: SELECT tracktalk.make_live(%L, '
                                'enabled => false); (its events so far go, and its subscribers are told).',
                                rel.qualified);
    ELSE
        PERFORM tracktalk.live_triggers(rel.qualified, made => true);
        PERFORM tracktalk.live_register(tbl, wanted.topic, wanted.topic_column, fn);
    END IF;
    RETURN wanted.topic || CASE WHEN wanted.topic_column IS NOT NULL THEN format(':{%s}', wanted.topic_column) ELSE '' END;
END
$$;

-- Asks the replicas to check again who may see `topic`, a live table's (`book_requests:7`, or
-- `book_requests`): every subscription to it is asked of the table's can_see again, and ends
-- (unsubscribed, forbidden) where refused. For the DBA's triggers on the tables that decide who may
-- see (docs/dba.md). SECURITY DEFINER: it signs with the channel key, which its callers may not read.
CREATE OR REPLACE FUNCTION tracktalk.recheck_topic(topic text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tracktalk.live_tables l WHERE l.topic = split_part(recheck_topic.topic, ':', 1)) THEN
        RAISE EXCEPTION '% is not a topic of a live table', quote_nullable(topic)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'tracktalk.live_tables lists them. Who may see tracktalk''s own topics is checked again by its triggers.';
    END IF;
    PERFORM pg_current_xact_id();  -- an id before the key is read (tracktalk.send_signed)
    PERFORM tracktalk.revoke_topic(topic);
END
$$;

-- Asks the replicas to check again every subscription of `user_id` (a user whose rights changed
-- in the DBA's tables): each is asked of may_see again. SECURITY DEFINER, as recheck_topic.
CREATE OR REPLACE FUNCTION tracktalk.recheck_user(user_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_current_xact_id();
    PERFORM tracktalk.revoke_user(user_id);
END
$$;

---------------------------------------------------------------------------------------------
-- Maintenance: recounts, pruning, counters for rows made before these triggers, the key; the stamp last
---------------------------------------------------------------------------------------------

-- Sets a track's counters from its rows (one scan of each table; tombstones are no comments), making its row in
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
       SET comments = greatest((SELECT count(*) FROM public.comments WHERE track_id = track AND deleted_at IS NULL)
                               - comments_delta, 0),
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
-- (tracktalk.prune_notifications), the API's writes older than an hour
-- (tracktalk.recent_writes), and slow mode's posts older than a day (tracktalk.slow_mode_posts).
-- Returns how many events and notifications went.
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
    -- Slow mode waits at most a day (tracks_slow_mode_seconds_range).
    DELETE FROM tracktalk.slow_mode_posts WHERE posted_at < now() - interval '1 day';
    -- The outbox's rows were in the fan-out nodes' hands once in the WAL: a few minutes is plenty.
    DELETE FROM tracktalk.outbox WHERE made_at < now() - interval '5 minutes';
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

INSERT INTO tracktalk.post_stats (post_id, likes)
SELECT post_id, count(*) FROM forum_post_likes GROUP BY post_id
ON CONFLICT (post_id) DO NOTHING;

-- Only tracktalk's owner may put tracktalk's trigger functions on a table (CREATE TRIGGER needs
-- EXECUTE on the function): they run as the owner and publish what their table's rows say, so a
-- role that may use the schema (a DBA granted USAGE on it to call make_live) could put, say,
-- comments_after_insert on a table of its own shaped like comments and forge a track's events.
-- The live tables' trigger is the exception: make_live puts it on a table as the table's owner,
-- and it publishes only for the tables registered in tracktalk.live_tables.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid FROM pg_proc p
         WHERE p.pronamespace = 'tracktalk'::regnamespace AND p.prorettype = 'trigger'::regtype
           AND p.oid <> 'tracktalk.live_rows_changed()'::regprocedure
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$$;

-- The channel key, made once.
SELECT tracktalk.rotate_channel_key() WHERE NOT EXISTS (SELECT 1 FROM tracktalk.channel_key);

-- The fan-out triggers: on where this database is a node with a complete copy, off elsewhere.
SELECT tracktalk.fan_out_triggers();

-- A replica serves a schema of its own version or newer; docs/dba.md lists what each version
-- added, and which upgrades need the old replicas stopped first (2 to 3, 4 to 5, 5 to 6, 10 to 11).
INSERT INTO tracktalk.schema_version (version) VALUES (12)
ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, applied_at = now();
