-- Archives as hospitals have them (issue 11): a secondary archive beside the VNA, and several
-- studies behind one accession number.
--
--   source_archive    the archive whose C-FIND listed the study and from which it was moved (or
--                     found cached): 'primary' (the VNA) or 'secondary' (e.g. a PACS). Roles,
--                     not AE titles: the AE titles are configuration and may change.
--   awaiting_archive  set while a queued study waits for an archive that may not be asked now
--                     (the primary had no such study and the secondary is outside its hours or
--                     at its rate): the study is claimed again only when that archive may be
--                     asked, and then that archive is asked directly, not the primary again.
--   split_from        a study found behind the same accession number as another (the VNA
--                     answered with several studies): its own work item, with its own
--                     study_uid, exported as its own study. Points at the work item that was
--                     populated from the cohort.
ALTER TABLE study ADD COLUMN source_archive text
    CHECK (source_archive ~ '^[a-z][a-z0-9-]{0,31}$');
ALTER TABLE study ADD COLUMN awaiting_archive text
    CHECK (awaiting_archive ~ '^[a-z][a-z0-9-]{0,31}$');
ALTER TABLE study ADD COLUMN split_from bigint REFERENCES study (id);

-- "One work item per (project, study)": the cohort's own items stay one per accession number
-- and MRN; items split from them are one per Study Instance UID under their parent.
ALTER TABLE study DROP CONSTRAINT study_project_mrn_accession_number_key;
CREATE UNIQUE INDEX study_one_per_accession ON study (project, mrn, accession_number)
    WHERE split_from IS NULL;
CREATE UNIQUE INDEX study_split_once ON study (split_from, study_uid)
    WHERE split_from IS NOT NULL;
CREATE INDEX study_source_archive ON study (project, source_archive)
    WHERE source_archive IS NOT NULL;

-- The secondary archive's hours, pause and rate live in the same rows as the VNA's
-- (fetch_control, fetch_rate), under the scope 'archive:<name>', which no project slug can
-- take (a slug has no ':').
ALTER TABLE fetch_control DROP CONSTRAINT fetch_control_project_check;
ALTER TABLE fetch_control ADD CONSTRAINT fetch_control_project_check CHECK (
    project = '*' OR project ~ '^[a-z0-9][a-z0-9-]*$' OR project ~ '^archive:[a-z][a-z0-9-]{0,31}$');
ALTER TABLE fetch_rate DROP CONSTRAINT fetch_rate_project_check;
ALTER TABLE fetch_rate ADD CONSTRAINT fetch_rate_project_check CHECK (
    project = '*' OR project ~ '^[a-z0-9][a-z0-9-]*$' OR project ~ '^archive:[a-z][a-z0-9-]{0,31}$');
