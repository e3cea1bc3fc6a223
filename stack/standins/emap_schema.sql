-- A small, EMAP-shaped schema holding synthetic radiology reports for the demo and the tests.
--
-- In the hospital, EMAP is a separate Postgres that PIXL only reads; here it is the schema
-- `emap` inside PIXL's own database, so the stack needs no second server. The table and column
-- names follow EMAP's star schema (`mrn`, `core_demographic`, one row per patient keyed by
-- `mrn_id`) so that ehr/pixl_ehr/sql/report.sql reads like the query that runs against the
-- real EMAP; only the radiology tables are simplified: one `radiology_report` per accession
-- number and its text split into `radiology_report_section` rows (narrative, impression,
-- addenda), which is how reports reach EMAP from the radiology system.
--
-- Idempotent (IF NOT EXISTS everywhere), so the loader can apply it on every run.

CREATE SCHEMA IF NOT EXISTS emap;

-- One row per hospital number.
CREATE TABLE IF NOT EXISTS emap.mrn (
    mrn_id        bigserial PRIMARY KEY,
    mrn           text NOT NULL UNIQUE,
    nhs_number    text,
    source_system text NOT NULL DEFAULT 'EPIC',
    stored_from   timestamptz NOT NULL DEFAULT now()
);

-- The patient's current demographics (EMAP keeps one live row per mrn_id).
CREATE TABLE IF NOT EXISTS emap.core_demographic (
    core_demographic_id bigserial PRIMARY KEY,
    mrn_id              bigint NOT NULL UNIQUE REFERENCES emap.mrn (mrn_id),
    firstname           text,
    middlename          text,
    lastname            text,
    date_of_birth       date,
    home_address        text,
    home_postcode       text,
    home_phone          text,
    sex                 text,
    alive               boolean NOT NULL DEFAULT true,
    stored_from         timestamptz NOT NULL DEFAULT now()
);

-- One report per (patient, accession number).
CREATE TABLE IF NOT EXISTS emap.radiology_report (
    radiology_report_id bigserial PRIMARY KEY,
    mrn_id              bigint NOT NULL REFERENCES emap.mrn (mrn_id),
    accession_number    text NOT NULL,
    report_status       text NOT NULL DEFAULT 'final',
    report_datetime     timestamptz,
    stored_from         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (mrn_id, accession_number)
);
CREATE INDEX IF NOT EXISTS radiology_report_accession
    ON emap.radiology_report (accession_number);

-- The parts of a report's text. `section_order` orders the addenda (and, were there several,
-- the other kinds); the reading order is narrative, impression, then addenda.
CREATE TABLE IF NOT EXISTS emap.radiology_report_section (
    radiology_report_section_id bigserial PRIMARY KEY,
    radiology_report_id         bigint NOT NULL
        REFERENCES emap.radiology_report (radiology_report_id) ON DELETE CASCADE,
    section_kind                text NOT NULL
        CHECK (section_kind IN ('narrative', 'impression', 'addendum')),
    section_order               integer NOT NULL DEFAULT 0,
    section_text                text NOT NULL,
    stored_from                 timestamptz NOT NULL DEFAULT now(),
    UNIQUE (radiology_report_id, section_kind, section_order)
);
