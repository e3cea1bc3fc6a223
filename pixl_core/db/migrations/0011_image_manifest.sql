-- The images' manifest on the DSH (issue 11): `<project>/dicom/manifest.json` lists every zip
-- PIXL exported for the project, with its SHA-256, instance count and size, and is rebuilt
-- from these rows (pixl_core.dsh.manifest_writer), never from the DSH's own listing.
--
-- study.zip_bytes: the size of the zip that reached the DSH, recorded with its SHA-256 and
-- instance count when the study turns 'exported' (NULL for studies exported before 0011).
ALTER TABLE study ADD COLUMN zip_bytes bigint CHECK (zip_bytes >= 0);
CREATE INDEX study_exported ON study (project) WHERE state = 'exported';

-- One row per project whose manifest PIXL has written: a fingerprint of the exported rows it
-- was built from, so a writer (any orthanc-anon replica, or `pixl manifest`) can tell in one
-- query whether the manifest on the DSH still says what Postgres says. Counts and a digest of
-- pseudonymised names only.
CREATE TABLE dsh_manifest (
    project     text PRIMARY KEY CHECK (project ~ '^[a-z0-9][a-z0-9-]*$'),
    fingerprint text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{32}$'),
    zips        integer NOT NULL CHECK (zips >= 0),
    written_at  timestamptz NOT NULL DEFAULT now(),
    written_by  text NOT NULL CHECK (written_by ~ '^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$')
);
