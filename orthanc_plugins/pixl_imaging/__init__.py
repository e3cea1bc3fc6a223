"""The imaging services that run inside Orthanc, in the order data flows.

``vna_fetch`` (ask the VNA: C-FIND, C-MOVE) and ``fetch_worker`` (claim studies, fetch, hand
off to orthanc-anon) run in orthanc-raw; ``ingest`` (verify the hand-off, de-identify or
discard each instance) and ``export`` (zip and push each complete study) run in orthanc-anon.
None of them imports ``orthanc``: ``raw.py`` and ``anon.py`` beside this package wire them in,
so each is unit-tested against a fake Orthanc REST API.
"""
