-- A person's review of a flagged report, recorded (issue 9, "Reviewed reports").
--
-- Every decision on a flagged report is one row of report_review: who (the operator: the
-- PIXL_OPERATOR setting or the operating-system user), when, the decision, the reason they
-- gave, the findings counted by kind (kinds and counts only, never text), and for a release
-- the SHA-256 of the exact text released and of the de-identified text it was made from. The
-- export carries a flagged report's text only when the text it would write has the released
-- digest and the report's de-identified text still has the source digest: a report whose text
-- changed after the decision is withheld until someone decides again.
--
-- report.released_text is that released text: the de-identified text itself when approved as
-- it is, or the text with every finding masked when redacted.
CREATE TABLE report_review (
    id               bigserial PRIMARY KEY,
    report_id        bigint NOT NULL REFERENCES report (id),
    project          text NOT NULL CHECK (project ~ '^[a-z0-9][a-z0-9-]*$'),
    decision         text NOT NULL CHECK (decision IN ('approved', 'redacted', 'rejected')),
    -- a staff user name, not patient data
    reviewed_by      text NOT NULL CHECK (reviewed_by ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    reviewed_at      timestamptz NOT NULL DEFAULT now(),
    reason           text NOT NULL CHECK (
        length(btrim(reason)) >= 3 AND length(reason) <= 500 AND reason !~ '[[:cntrl:]]'),
    -- {"kind": count} of the findings the reviewer was shown
    findings_by_kind jsonb NOT NULL CHECK (jsonb_typeof(findings_by_kind) = 'object'),
    source_sha256    text CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
    released_sha256  text CHECK (released_sha256 ~ '^[0-9a-f]{64}$'),
    CHECK ((decision = 'rejected') = (released_sha256 IS NULL)),
    CHECK ((decision = 'rejected') = (source_sha256 IS NULL))
);
CREATE INDEX report_review_report ON report_review (report_id, id);
CREATE INDEX report_review_project ON report_review (project, reviewed_at);

ALTER TABLE report ADD COLUMN released_text text;

-- Approvals made before this migration recorded no reason and no digest of what they
-- released: those reports go back to flagged, to be decided again with both.
UPDATE report SET state = 'flagged' WHERE state = 'approved';
