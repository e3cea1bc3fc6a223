-- Burned-in text found in an instance's pixels by orthanc-anon (pixl_core.dicom.pixels): one row
-- per (instance, kind) with how many text regions of that kind it held. Keyed like
-- instance_refusal (study id + keyed hash of the SOP Instance UID), so a re-sent instance is
-- recorded once. Kinds and counts only: the text read is never stored.
CREATE TABLE instance_pixel_text (
    study_id     bigint NOT NULL REFERENCES study (id),
    instance_key text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('patient_name', 'mrn', 'nhs_number', 'dob',
                     'accession', 'institution', 'date', 'digits', 'other_text', 'benign')),
    regions      integer NOT NULL CHECK (regions > 0),
    masked       boolean NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (study_id, instance_key, kind)
);
