"""Code shared by the CLI, the Orthanc plugins and the EHR module.

Nothing in this package imports ``orthanc``: the plugins translate between Orthanc and these
plain functions, so the same logic runs (and is tested) inside and outside Orthanc.
"""
