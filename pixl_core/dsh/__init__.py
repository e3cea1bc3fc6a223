"""What PIXL leaves in the Data Safe Haven for a project's images, and how it is checked.

A project whose images go over FTPS gets, under its DSH root::

    <project>/dicom/<pseudonymised study UID>.zip   one per exported study (pixl_imaging.export)
    <project>/dicom/manifest.json                   every zip above: SHA-256, instances, size

``manifest`` builds and reads the document (pure functions); ``manifest_writer`` decides when it
is written and writes it atomically from Postgres; ``verify`` compares what a destination holds
with the manifest and PIXL's records, through one reader per destination kind
(``ftps_reader`` for FTPS).
"""
