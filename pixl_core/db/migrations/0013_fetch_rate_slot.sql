-- The VNA's rate, shared by every orthanc-raw replica (issue 12).
--
-- Each orthanc-raw used to keep its next start time in memory, so N replicas asked the VNA at N
-- times the rate `pixl rate` set. The next start of all asking ('*') lives here instead: a
-- replica takes a slot with one conditional UPDATE (rate_slot.take), which Postgres serialises
-- on the row, so the replicas together start at most `studies_per_second` studies a second.
--   scope       '*' (all of orthanc-raw's asking); per-project scopes may be added later
--   next_start  the earliest time the next study may be started
CREATE TABLE fetch_rate_slot (
    scope      text PRIMARY KEY CHECK (scope = '*' OR scope ~ '^[a-z0-9][a-z0-9-]*$'),
    next_start timestamptz NOT NULL DEFAULT now()
);
