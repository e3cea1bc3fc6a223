-- DICOMweb destinations (issue 11): exactly once per instance, and the destination's last error.
--
-- dicomweb_instance records each instance a DICOMweb destination confirmed storing (its STOW-RS
-- response named it), one row per (study, pseudonymised SOP Instance UID), written after every
-- batch. A study sent again (a crash after a partial batch, a retry after the destination went
-- away) sends only the instances without a row, after asking the destination by QIDO-RS which
-- it already holds (a crash between its answer and this row). The UIDs are the pseudonymised
-- ones that left; the rows go with their study.
CREATE TABLE dicomweb_instance (
    study_id         bigint NOT NULL REFERENCES study (id) ON DELETE CASCADE,
    sop_instance_uid text NOT NULL CHECK (sop_instance_uid ~ '^[0-9][0-9.]{0,63}$'),
    stored_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (study_id, sop_instance_uid)
);

-- The last failure of a project's image destination (FTPS or DICOMweb), for pixl status and
-- /pixl/status; removed when a study of the project is exported again. The message names the
-- server (host:port), the step and a status or error class only, never a path, UID or reply
-- text (pixl_core.transport.ftps.FtpsError, pixl_core.transport.dicomweb.DicomwebError).
CREATE TABLE destination_error (
    project     text PRIMARY KEY CHECK (project ~ '^[a-z0-9][a-z0-9-]*$'),
    destination text NOT NULL CHECK (destination IN ('ftps', 'dicomweb')),
    code        text NOT NULL CHECK (code ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    message     text NOT NULL CHECK (length(message) <= 300),
    at          timestamptz NOT NULL DEFAULT now()
);
