-- PIXL work state: extracts, the imaging and report work queues, the VNA audit, fetch rates
-- and report-check metrics. Postgres is the one source of truth and is also the queue: workers
-- claim rows with SELECT ... FOR UPDATE SKIP LOCKED and hold them with a lease (claimed_until).
--
-- Identifiers (MRN, accession number, study UID) are stored here because this database lives
-- inside the hospital network; they must never be copied into logs, metrics or error codes.
-- last_error_code is constrained to short lowercase codes so that an identifier cannot end up
-- there by accident.

CREATE FUNCTION pixl_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- One OMOP ES extract (or CSV cohort) loaded by `pixl populate`.
CREATE TABLE extract (
    id                  bigserial PRIMARY KEY,
    project             text NOT NULL CHECK (project ~ '^[a-z0-9][a-z0-9-]*$'),
    extract_datetime    timestamptz NOT NULL,
    omop_es_hash        text,
    source_path         text NOT NULL,
    public_staging_path text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, extract_datetime)
);

-- Imaging work items: one per (project, study), so "the VNA is asked at most once per
-- project" is a fact of the schema. States:
--   queued       waiting to be claimed (next_attempt_at says when)
--   fetching     claimed by orthanc-raw: C-FIND/C-MOVE from the VNA or found in its cache
--   anonymising  handed to orthanc-anon, being de-identified and uploaded
--   exported     arrived in the DSH (terminal)
--   not_found    the VNA has no such study (terminal)
--   refused      nothing in the study may leave, e.g. unexpected modality (terminal)
--   failed       gave up after max attempts; last_error_code says why (terminal)
CREATE TABLE study (
    id                      bigserial PRIMARY KEY,
    project                 text NOT NULL CHECK (project ~ '^[a-z0-9][a-z0-9-]*$'),
    extract_id              bigint REFERENCES extract (id),
    procedure_occurrence_id bigint,
    mrn                     text NOT NULL,
    accession_number        text NOT NULL,
    study_uid               text,
    -- local wall-clock time of the procedure as OMOP ES gives it (DICOM StudyDate is local too)
    study_datetime          timestamp,
    state                   text NOT NULL DEFAULT 'queued' CHECK (state IN (
        'queued', 'fetching', 'anonymising', 'exported', 'not_found', 'refused', 'failed')),
    attempts                integer NOT NULL DEFAULT 0,
    next_attempt_at         timestamptz NOT NULL DEFAULT now(),
    claimed_by              text,
    claimed_until           timestamptz,
    last_error_code         text CHECK (last_error_code ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    pseudo_study_uid        text,
    -- instances orthanc-raw handed to orthanc-anon, so the anon side knows when it has them all
    instances_sent          integer,
    exported_at             timestamptz,
    -- instances in the zip that reached the DSH, and the zip's checksum
    instance_count          integer,
    sha256                  text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, mrn, accession_number)
);
CREATE INDEX study_queued ON study (next_attempt_at) WHERE state = 'queued';
CREATE INDEX study_leased ON study (claimed_until) WHERE state IN ('fetching', 'anonymising');
CREATE INDEX study_project_state ON study (project, state);
CREATE TRIGGER study_touch BEFORE UPDATE ON study
    FOR EACH ROW EXECUTE FUNCTION pixl_touch_updated_at();

-- Radiology report work items, one per (project, study). States:
--   queued         waiting to be claimed
--   fetching       claimed: reading the report from EMAP
--   deidentifying  sent to the de-identification API, then checked by the second method
--   checked        the check found nothing: ready for export
--   flagged        the check found something: withheld until a person reviews it
--   approved       reviewed and released for export
--   rejected       reviewed and withheld for good (terminal)
--   missing        EMAP has no report for this study (terminal)
--   exported       written to the radiology parquet sent to the DSH (terminal)
--   failed         gave up after max attempts (terminal)
CREATE TABLE report (
    id                      bigserial PRIMARY KEY,
    project                 text NOT NULL CHECK (project ~ '^[a-z0-9][a-z0-9-]*$'),
    extract_id              bigint REFERENCES extract (id),
    study_id                bigint REFERENCES study (id),
    procedure_occurrence_id bigint,
    mrn                     text NOT NULL,
    accession_number        text NOT NULL,
    study_datetime          timestamp,
    state                   text NOT NULL DEFAULT 'queued' CHECK (state IN (
        'queued', 'fetching', 'deidentifying', 'checked', 'flagged', 'approved', 'rejected',
        'missing', 'exported', 'failed')),
    attempts                integer NOT NULL DEFAULT 0,
    next_attempt_at         timestamptz NOT NULL DEFAULT now(),
    claimed_by              text,
    claimed_until           timestamptz,
    last_error_code         text CHECK (last_error_code ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    deidentified_text       text,
    -- the checker's verdict: findings are [{"kind", "start", "end"}], offsets never text
    check_flagged           boolean,
    check_findings          jsonb,
    checked_at              timestamptz,
    -- who reviewed a flagged report (a staff user name, not patient data) and when
    reviewed_by             text,
    reviewed_at             timestamptz,
    exported_at             timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project, mrn, accession_number),
    CHECK (check_findings IS NULL OR jsonb_typeof(check_findings) = 'array')
);
CREATE INDEX report_queued ON report (next_attempt_at) WHERE state = 'queued';
CREATE INDEX report_leased ON report (claimed_until) WHERE state IN ('fetching', 'deidentifying');
CREATE INDEX report_project_state ON report (project, state);
CREATE INDEX report_study ON report (study_id);
CREATE TRIGGER report_touch BEFORE UPDATE ON report
    FOR EACH ROW EXECUTE FUNCTION pixl_touch_updated_at();

-- Audit: one row per C-MOVE asked of the VNA. It references the study row instead of
-- repeating identifiers; at most one move per study may be recorded as completed.
CREATE TABLE vna_move (
    id             bigserial PRIMARY KEY,
    study_id       bigint NOT NULL REFERENCES study (id),
    project        text NOT NULL,
    requested_by   text NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    outcome        text NOT NULL DEFAULT 'pending' CHECK (outcome IN (
        'pending', 'completed', 'not_found', 'failed')),
    error_code     text CHECK (error_code ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    instance_count integer
);
CREATE INDEX vna_move_study ON vna_move (study_id);
CREATE INDEX vna_move_requested_at ON vna_move (requested_at);
CREATE UNIQUE INDEX vna_move_completed_once ON vna_move (study_id) WHERE outcome = 'completed';

-- How fast orthanc-raw may ask the VNA, changeable while it runs. The row with project '*'
-- is the default for projects without a row of their own.
CREATE TABLE fetch_rate (
    project            text PRIMARY KEY CHECK (project = '*' OR project ~ '^[a-z0-9][a-z0-9-]*$'),
    studies_per_second double precision NOT NULL CHECK (studies_per_second > 0),
    max_in_flight      integer NOT NULL CHECK (max_in_flight > 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
INSERT INTO fetch_rate (project, studies_per_second, max_in_flight) VALUES ('*', 1.0, 2);

-- Metrics of each run of the report checker: how many reports it saw and how many it flagged
-- for each kind of finding ({"kind": count}), so the share flagged by kind can be followed.
CREATE TABLE check_run (
    id               bigserial PRIMARY KEY,
    project          text,
    checker_version  text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    reports_checked  integer NOT NULL DEFAULT 0 CHECK (reports_checked >= 0),
    reports_flagged  integer NOT NULL DEFAULT 0 CHECK (reports_flagged >= 0),
    flagged_by_kind  jsonb NOT NULL DEFAULT '{}'::jsonb
        CHECK (jsonb_typeof(flagged_by_kind) = 'object')
);
CREATE INDEX check_run_project ON check_run (project, started_at);
