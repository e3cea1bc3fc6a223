-- A project's own rate and in-flight limit, and the secondary archive's rate, shared by every
-- orthanc-raw replica (issue 12).
--
-- Migration 0013 shared the rate of all asking ('*'). The limits `pixl rate --project P` and
-- `pixl rate --archive secondary` set were still kept in each replica's memory, so N replicas
-- asked at N times them. Their next start slots are now rows of fetch_rate_slot as well:
--   '<project>'          a project's own rate: taken by the claim of one of its studies
--                        (work_queue.claim(project_rates=…)), in the transaction that claims
--                        it, so a study is claimed only while its project's slot is due
--   'archive:<name>'     an archive's own rate (fetch_control.archive_scope): taken before the
--                        archive is asked (rate_slot.take)
-- A project's own in-flight limit needs no table: the claim counts the project's studies being
-- fetched under a live lease, under the same lock as the '*' limit.
--
-- The scope's rule widens to the archive scopes, the same rule as fetch_rate's and
-- fetch_control's (migration 0010); a slug has no ':', so no project can take one.
ALTER TABLE fetch_rate_slot DROP CONSTRAINT fetch_rate_slot_scope_check;
ALTER TABLE fetch_rate_slot ADD CONSTRAINT fetch_rate_slot_scope_check CHECK (
    scope = '*' OR scope ~ '^[a-z0-9][a-z0-9-]*$' OR scope ~ '^archive:[a-z][a-z0-9-]{0,31}$');
