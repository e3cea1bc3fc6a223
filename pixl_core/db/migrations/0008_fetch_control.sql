-- The operator's hand on orthanc-raw (issue 10): pausing, the VNA's hours, and priority.
--
-- fetch_control holds, for '*' (all of orthanc-raw's asking) and for any project with a row of
-- its own, whether asking the VNA is paused and in which hours it may be asked at all. It lives
-- here, not in a process, so every orthanc-raw replica and the CLI see the same thing: a
-- paused or out-of-hours worker claims nothing, and the queued studies stay queued (never
-- failed). A project is held back by the '*' row and by its own.
--   paused         asking is stopped until someone resumes it (pixl pause / resume, the page)
--   paused_by      who paused it: a staff user name or "page:<orthanc>", not patient data
--   vna_hours      the daily window in which the VNA may be asked, "HH:MM-HH:MM" in the local
--                  time of the machine running orthanc-raw (it may run over midnight); NULL is
--                  any time
--   vna_weekends   Saturdays and Sundays are open all day as well
CREATE TABLE fetch_control (
    project      text PRIMARY KEY CHECK (project = '*' OR project ~ '^[a-z0-9][a-z0-9-]*$'),
    paused       boolean NOT NULL DEFAULT false,
    paused_at    timestamptz,
    paused_by    text CHECK (paused_by ~ '^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$'),
    vna_hours    text CHECK (
        vna_hours ~ '^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$'),
    vna_weekends boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Which queued work is claimed first: higher priority first, then the oldest due
-- (pixl populate --priority N, or the project's `priority:`). Reports carry it too, so the
-- report worker follows the same order.
ALTER TABLE study ADD COLUMN priority integer NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -1000 AND 1000);
ALTER TABLE report ADD COLUMN priority integer NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -1000 AND 1000);
DROP INDEX study_queued;
CREATE INDEX study_queued ON study (priority DESC, next_attempt_at, id) WHERE state = 'queued';
DROP INDEX report_queued;
CREATE INDEX report_queued ON report (priority DESC, next_attempt_at, id) WHERE state = 'queued';
