-- orthanc-raw → orthanc-anon hand-off and the export retry state.
--   export_attempts  failed FTPS export tries, for the exporter's backoff (the study stays
--                    'anonymising' while the DSH is unreachable).
ALTER TABLE study ADD COLUMN export_attempts integer NOT NULL DEFAULT 0;

-- One row per instance orthanc-anon refused (discarded), keyed by a keyed hash of its UID so
-- that a re-sent instance is counted once and no identifier is stored twice.
CREATE TABLE instance_refusal (
    study_id     bigint NOT NULL REFERENCES study (id),
    instance_key text NOT NULL,
    reason       text NOT NULL CHECK (reason ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    refused_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (study_id, instance_key)
);
