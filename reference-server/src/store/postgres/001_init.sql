-- Migration 1: the tables and the accept function. Never edit once shipped;
-- add a new file and list it in MIGRATIONS.
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    last_active_at BIGINT,
    inbox_head BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE devices (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id),
    name TEXT,
    UNIQUE (user_id, name)
);
CREATE TABLE tokens (
    token TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    device_id BIGINT NOT NULL
);
CREATE TABLE friends (
    user_id BIGINT NOT NULL,
    friend_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);
CREATE TABLE groups (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE group_members (
    group_id BIGINT NOT NULL REFERENCES groups (id),
    user_id BIGINT NOT NULL,
    joined BIGSERIAL,
    PRIMARY KEY (group_id, user_id)
);
CREATE TABLE channels (channel_id TEXT PRIMARY KEY, head BIGINT NOT NULL);
CREATE TABLE messages (
    channel_id TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    from_user BIGINT NOT NULL,
    from_device BIGINT NOT NULL,
    client_msg_id TEXT NOT NULL,
    body TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (channel_id, message_id)
);
CREATE TABLE inbox (
    user_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    channel_id TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE TABLE dedupe (
    user_id BIGINT NOT NULL,
    client_msg_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    sender_seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_msg_id)
);
-- status: 0 accepted, 1 duplicate, 2 unknown member. seqs follow p_members' order.
CREATE FUNCTION chatscale_accept(p_channel TEXT, p_members BIGINT[], p_from BIGINT,
    p_device BIGINT, p_cmid TEXT, p_text TEXT, p_ts BIGINT,
    OUT o_status INT, OUT o_channel TEXT, OUT o_id BIGINT, OUT o_ts BIGINT,
    OUT o_sender_seq BIGINT, OUT o_seqs BIGINT[])
LANGUAGE plpgsql AS $$
DECLARE
    d RECORD;
    found_users INT;
BEGIN
    -- A resend first, without locks: dedupe rows are final once committed, and a
    -- call that writes nothing makes its batch's commit free (no WAL flush).
    SELECT * INTO d FROM dedupe x WHERE x.user_id = p_from AND x.client_msg_id = p_cmid;
    IF NOT FOUND THEN
        PERFORM 1 FROM users u WHERE u.id = ANY (p_members || p_from) ORDER BY u.id FOR UPDATE;
        -- Again under the sender's lock: a concurrent first send may have committed.
        SELECT * INTO d FROM dedupe x WHERE x.user_id = p_from AND x.client_msg_id = p_cmid;
    END IF;
    IF FOUND THEN
        o_status := 1; o_channel := d.channel_id; o_id := d.message_id; o_ts := d.ts;
        o_sender_seq := d.sender_seq;
        RETURN;
    END IF;
    SELECT count(*) INTO found_users FROM users u WHERE u.id = ANY (p_members);
    IF found_users <> cardinality(p_members) THEN
        o_status := 2;
        RETURN;
    END IF;
    INSERT INTO channels AS c (channel_id, head) VALUES (p_channel, 1)
        ON CONFLICT (channel_id) DO UPDATE SET head = c.head + 1
        RETURNING c.head INTO o_id;
    INSERT INTO messages VALUES (p_channel, o_id, p_from, p_device, p_cmid, p_text, p_ts);
    UPDATE users u SET inbox_head = u.inbox_head + 1 WHERE u.id = ANY (p_members);
    INSERT INTO inbox SELECT u.id, u.inbox_head, p_channel, o_id
        FROM users u WHERE u.id = ANY (p_members);
    SELECT array_agg(u.inbox_head ORDER BY m.ord) INTO o_seqs
        FROM unnest(p_members) WITH ORDINALITY AS m (uid, ord) JOIN users u ON u.id = m.uid;
    o_sender_seq := coalesce((SELECT u.inbox_head FROM users u
        WHERE u.id = p_from AND p_from = ANY (p_members)), 0);
    INSERT INTO dedupe VALUES (p_from, p_cmid, p_channel, o_id, o_sender_seq, p_ts);
    o_status := 0; o_channel := p_channel; o_ts := p_ts;
END $$;
