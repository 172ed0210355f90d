-- A failed or cancelled row waits only for the children that registered.
--
-- Until now a row was settled when terminal and children_settled >=
-- greatest(children_expected, children_registered), whatever its status. A
-- row that failed or was cancelled after announcing outputs whose children
-- never ran then held itself, its ancestors and its execution unsettled
-- forever. A completed row still waits for every child it announced
-- (consumer/_fold.py is_settled says the same in Python).
--
-- PostgreSQL 15 cannot change a generated column's expression: the two
-- columns are dropped and added again (a rewrite of the table, which keeps its
-- fillfactor).
ALTER TABLE lineage
    DROP COLUMN children_pending,
    DROP COLUMN settled,
    ADD COLUMN children_pending integer GENERATED ALWAYS AS (
        greatest(
            CASE WHEN status = 'completed' THEN coalesce(children_expected, 0) ELSE 0 END,
            children_registered
        ) - children_settled
    ) STORED,
    ADD COLUMN settled boolean GENERATED ALWAYS AS (
        status <> 'pending'
        AND children_settled >= greatest(
            CASE WHEN status = 'completed' THEN coalesce(children_expected, 0) ELSE 0 END,
            children_registered
        )
    ) STORED;

-- What the fold derived from the old rule: a row that settles now has not
-- been credited to its parent (contrib_settled), which may settle in turn, up
-- the chain; then the executions' unsettled counts. One level per round, as
-- the fold propagates. On a projection built under the new rule this changes
-- nothing.
DO $$
DECLARE
    moved bigint;
BEGIN
    CREATE TEMPORARY TABLE settle_credit (parent uuid PRIMARY KEY, delta integer NOT NULL)
        ON COMMIT DROP;
    LOOP
        WITH changed AS (
            UPDATE lineage c SET contrib_settled = c.settled
            WHERE c.contrib_parent IS NOT NULL AND c.contrib_settled <> c.settled
            RETURNING c.contrib_parent, c.settled
        )
        INSERT INTO settle_credit (parent, delta)
        SELECT contrib_parent, sum(CASE WHEN settled THEN 1 ELSE -1 END)
        FROM changed GROUP BY contrib_parent;
        GET DIAGNOSTICS moved = ROW_COUNT;
        EXIT WHEN moved = 0;
        UPDATE lineage p SET children_settled = p.children_settled + s.delta
        FROM settle_credit s WHERE p.id = s.parent AND s.delta <> 0;
        TRUNCATE settle_credit;
    END LOOP;
    UPDATE executions e SET unsettled = x.unsettled
    FROM (
        SELECT execution_id, count(*) FILTER (WHERE NOT settled) AS unsettled
        FROM lineage WHERE known GROUP BY execution_id
    ) x
    WHERE e.id = x.execution_id AND e.unsettled <> x.unsettled;
END
$$;
