-- Which consumer group projects into this schema, and from which topic.
--
-- Two projectors of two groups over one schema each receive every partition;
-- the offset fence keeps their effect exactly-once, but they fight over every
-- batch, and whichever an operator stops, the other one goes on unnoticed. So a
-- schema has one owner: `factflow projector run` claims it at start when it is
-- unowned, refuses when another group owns it, and replaces the owner only when
-- asked (`--take-over`). Every batch transaction reads this row (FOR SHARE,
-- after its offset move), so the previous owner stops at its next batch.
-- A rebuild copies the row into the schema it swaps in.
CREATE TABLE projection_owner (
    -- One row at most: the primary key can only be true.
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    group_id   text        NOT NULL CHECK (group_id <> ''),
    topic      text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
