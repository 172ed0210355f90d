-- The lineage projection: one row per adapter invocation, one per execution, and
-- per-(execution, route, adapter) counts. Written only by the projector
-- (factflow_lineage.consumer.Projection), read by the query side.
--
-- Every column is a function of the set of events seen, never of their order:
-- the *_event_id columns record which event won each merge (the earliest
-- start, the most severe and then latest terminal event) so that a later,
-- losing duplicate changes nothing, and the contrib_* columns record what a
-- row currently adds to its parent's counters so that only differences are
-- propagated up the chain.

CREATE TABLE lineage (
    id                  uuid PRIMARY KEY,
    execution_id        uuid,         -- NULL only for a placeholder parent nothing but children named
    root_id             uuid,
    parent_id           uuid,
    route_id            text,
    adapter_name        text,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
    input_hash          text,
    output_hash         text,
    error               jsonb,        -- {"class", "message", "traceback"} of a failed row
    cancel_reason       text,
    started_at          timestamptz,
    completed_at        timestamptz,
    batch_id            uuid,
    input_key           text,
    metadata            jsonb,        -- includes "input_key" when the row has one
    -- Children: expected is NULL until a terminal event announces the count.
    children_expected   integer,
    children_registered integer NOT NULL DEFAULT 0,
    children_settled    integer NOT NULL DEFAULT 0,
    descendants_failed  integer NOT NULL DEFAULT 0,
    start_event_id      uuid,
    terminal_event_id   uuid,
    contrib_parent      uuid,
    contrib_settled     boolean NOT NULL DEFAULT false,
    contrib_failed      integer NOT NULL DEFAULT 0,
    known               boolean GENERATED ALWAYS AS (start_event_id IS NOT NULL) STORED,
    children_pending    integer GENERATED ALWAYS AS (
        greatest(coalesce(children_expected, 0), children_registered) - children_settled
    ) STORED,
    settled             boolean GENERATED ALWAYS AS (
        status <> 'pending'
        AND children_settled >= greatest(coalesce(children_expected, 0), children_registered)
    ) STORED,
    -- completed_at of a failed row, NULL otherwise: what the failure indexes
    -- are built on, so that no index mentions status or completed_at.
    failed_at           timestamptz GENERATED ALWAYS AS (
        CASE WHEN status = 'failed' THEN completed_at END
    ) STORED
-- Free space on each page for the new versions of its rows (HOT updates).
) WITH (fillfactor = 70);

-- Indexes and HOT updates: a row is updated several times after its insert
-- (its completion, its children's counters), and an update that changes no
-- indexed column stays on its page without touching any index. So no index
-- mentions status, completed_at or a counter: the failure indexes use
-- failed_at, which only a failure sets. Keyset order everywhere: (started_at, id).
CREATE INDEX lineage_parent_idx ON lineage (parent_id, started_at, id)
    WHERE parent_id IS NOT NULL;
CREATE INDEX lineage_execution_idx ON lineage (execution_id, started_at, id);
CREATE INDEX lineage_execution_adapter_idx ON lineage (execution_id, adapter_name, started_at, id);
CREATE INDEX lineage_execution_route_idx ON lineage (execution_id, route_id, started_at, id);
CREATE INDEX lineage_batch_idx ON lineage (batch_id, started_at, id)
    WHERE batch_id IS NOT NULL;
-- Failures: most recent first, overall and per execution; and failed rows of an
-- execution in list order (`list --status failed`).
CREATE INDEX lineage_failures_idx ON lineage (failed_at, id)
    WHERE failed_at IS NOT NULL;
CREATE INDEX lineage_execution_failures_idx ON lineage (execution_id, failed_at, id)
    WHERE failed_at IS NOT NULL;
CREATE INDEX lineage_execution_failed_idx ON lineage (execution_id, started_at, id)
    WHERE failed_at IS NOT NULL;

CREATE TABLE executions (
    id                uuid PRIMARY KEY,
    pipeline          text,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    started_at        timestamptz,
    finished_at       timestamptz,
    replay_of         uuid,
    replay_from_stage text,
    error             text,
    metadata          jsonb,
    start_event_id    uuid,
    finish_event_id   uuid,
    -- Known lineage rows of the execution, by status; unsettled = not settled.
    total             bigint NOT NULL DEFAULT 0,
    completed         bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    cancelled         bigint NOT NULL DEFAULT 0,
    pending           bigint NOT NULL DEFAULT 0,
    unsettled         bigint NOT NULL DEFAULT 0,
    known             boolean GENERATED ALWAYS AS (start_event_id IS NOT NULL) STORED,
    settled           boolean GENERATED ALWAYS AS (status <> 'running' AND unsettled = 0) STORED
-- Every batch bumps the counters of the executions it touches.
) WITH (fillfactor = 50);

CREATE INDEX executions_started_idx ON executions (started_at, id);

CREATE TABLE lineage_stats (
    execution_id uuid NOT NULL,
    route_id     text NOT NULL,
    adapter_name text NOT NULL,
    count        bigint NOT NULL,
    completed    bigint NOT NULL,
    failed       bigint NOT NULL,
    cancelled    bigint NOT NULL,
    pending      bigint NOT NULL,
    PRIMARY KEY (execution_id, route_id, adapter_name)
) WITH (fillfactor = 50);
