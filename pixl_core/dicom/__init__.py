"""DICOM code shared by orthanc-anon and the CLI: header parsing, the de-identification engine,
the before → after preview, and the signed hand-off block from orthanc-raw to orthanc-anon."""
