-- Announce each study handed on to orthanc-anon (issue 12, pipeline speed).
--
-- orthanc-anon's exporter slept its poll interval between a hand-off and the export; it now
-- also LISTENs on this channel (pixl_core.db.wakeup) and claims as soon as it hears. The
-- payload is empty: no identifier travels, and Postgres folds a transaction's repeated
-- notifications into one. A notification nobody hears costs nothing; the poll still runs.
CREATE FUNCTION pixl_notify_study_handed_on() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pixl_study_handed_on', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER study_handed_on
    AFTER UPDATE OF state ON study
    FOR EACH ROW
    WHEN (NEW.state = 'anonymising' AND OLD.state IS DISTINCT FROM 'anonymising')
    EXECUTE FUNCTION pixl_notify_study_handed_on();
