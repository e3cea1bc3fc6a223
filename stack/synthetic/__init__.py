"""Synthetic data for the demo, the tests and the benchmarks: DICOM, reports, OMOP ES extracts."""
