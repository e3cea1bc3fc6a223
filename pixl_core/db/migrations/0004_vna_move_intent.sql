-- The VNA audit records every C-MOVE request the archive is sent, as its own log counts them
-- (fault F3): a row is written as 'pending' BEFORE the request and set to 'completed' or
-- 'failed' after it, so a crash or a database outage in between leaves a pending row rather
-- than no row. A top-up after a partial transfer is a request of its own (level 'series' or
-- 'instance'), so a study may now have more than one completed row.
DROP INDEX vna_move_completed_once;
ALTER TABLE vna_move ADD COLUMN level text NOT NULL DEFAULT 'study'
    CHECK (level IN ('study', 'series', 'instance'));
