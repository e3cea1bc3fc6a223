-- Crashes per study: how many times a worker died (or was killed) while this study was its
-- work. orthanc-raw's worker counts one when it takes over a study whose lease ran out (the
-- worker holding it stopped renewing it: it is gone) and when orthanc-anon drops the connection
-- while receiving one of the study's instances. A study that crashed a worker twice ends
-- 'failed' with last_error_code 'worker_crashed' instead of being tried again, so one poisonous
-- instance cannot take a service down over and over. `pixl retry` resets the count.
ALTER TABLE study ADD COLUMN crash_count integer NOT NULL DEFAULT 0 CHECK (crash_count >= 0);
