"""Synthetic data for the demo, the tests and the benchmarks, each kind built in one place.

- ``dicom_builder``: DICOM instances (a base radiograph, pixel arrays, Part 10 output);
- ``reports``: radiology reports with planted identifiers (``write_report``, ``generate``);
- ``omop_es``: OMOP ES extracts (public and private parquet files, summary JSON);
- ``cohort``: the demo's cohort, built from the three above (VNA files, extracts, reports);
- ``phi_corpus``: instances with an identifier planted wherever one can hide (leak tests).
"""
