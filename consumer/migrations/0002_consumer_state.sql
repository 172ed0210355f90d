-- The projector's own state, kept beside the projection it describes.
--
-- consumer_offsets is the position of the projection in the topic: the next
-- offset to apply, per partition. It is written in the same transaction as the
-- rows the events produced, which is what makes the effect exactly-once: after a
-- crash the projector resumes from here, never from Kafka's committed offsets
-- (those are advisory, for lag dashboards only).
CREATE TABLE consumer_offsets (
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- Messages the projector could not use (undecodable bytes, unknown writer
-- schema, invalid values). Their offsets still advance, so one bad message
-- never stops its partition; the raw bytes are kept for forensics and replay.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea,
    raw         bytea,
    error       text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- A message is rejected once: the offsets make that so, the constraint proves it.
    UNIQUE (topic, partition, "offset")
);

CREATE INDEX dead_letters_recent ON dead_letters (received_at DESC, id DESC);
