-- The EHR module's EMAP query: one radiology report and the identifiers of its patient.
--
-- Configurable: PIXL_EMAP_REPORT_SQL names another file holding a query with the same contract,
-- so a site can point PIXL at its own EMAP without changing code.
--
-- Parameters (psycopg2 named placeholders): %(mrn)s, %(accession_number)s.
-- One row per part of the report text, in reading order (narrative, impression, addenda), with
-- the columns:
--   section_kind   'narrative' | 'impression' | 'addendum'
--   section_text   the text of that part
--   name, given_name, family_name, nhs_number, date_of_birth, address, postcode, phone
--                  the patient's identifiers as EMAP knows them (repeated on every row; NULL
--                  where unknown), used only to check the de-identified text
-- No row means EMAP has no report for this study.
SELECT
    s.section_kind,
    s.section_text,
    nullif(concat_ws(' ', d.firstname, d.middlename, d.lastname), '') AS name,
    d.firstname AS given_name,
    d.lastname AS family_name,
    m.nhs_number,
    d.date_of_birth,
    d.home_address AS address,
    d.home_postcode AS postcode,
    d.home_phone AS phone
FROM emap.mrn AS m
JOIN emap.radiology_report AS r ON r.mrn_id = m.mrn_id
JOIN emap.radiology_report_section AS s ON s.radiology_report_id = r.radiology_report_id
LEFT JOIN emap.core_demographic AS d ON d.mrn_id = m.mrn_id
WHERE m.mrn = %(mrn)s
  AND r.accession_number = %(accession_number)s
ORDER BY
    CASE s.section_kind WHEN 'narrative' THEN 1 WHEN 'impression' THEN 2 ELSE 3 END,
    s.section_order,
    s.radiology_report_section_id
