"""The report path end to end without Orthanc: synthetic cohort → populate → EMAP → worker
(the Cogstack stand-in's rules, the real checker) → export over FTPS → radiology parquet whose
hashed accession numbers are the ones orthanc-anon writes into DICOM."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from pixl_cli.extract_reader import read_extract
from pixl_cli.populate import populate
from pixl_core.db.connection import connect
from pixl_core.hashing import ProjectHasher, hash_accession_number
from pixl_core.transport.ftps import FtpsClient
from pixl_ehr.report_worker import ReportWorker, ReportWorkerSettings
from pixl_ehr.service import ServiceConfig, create_app
from stack.standins.cogstack_redactor import redact
from stack.standins.emap_load import load_cohort_reports
from stack.synthetic.cohort import generate_cohort
from tests.integration.ehr_fixtures import SECRET


class StandinRules:
    """The Cogstack stand-in's redaction, called in-process."""

    def deidentify(self, text: str) -> str:
        return redact(text)[0]

    def deidentify_bulk(self, texts: list[str]) -> list[str]:
        return [redact(text)[0] for text in texts]


def test_cohort_reports_flow_to_the_dsh(db_url, tmp_path: Path, dsh_ftps_server, monkeypatch):
    monkeypatch.setenv("PIXL_HASH_KEY", SECRET.decode())
    cohort = generate_cohort(tmp_path / "cohort", n_studies=8, image_size=16)
    loaded = load_cohort_reports(db_url, cohort)
    assert loaded.reports == len(cohort.studies) - 1  # the no_report study has none

    conn = connect(db_url)
    try:
        extract = read_extract(cohort.extract_dir)
        populate(conn, extract, tmp_path / "staging")
        worker = ReportWorker(
            db_url,
            StandinRules(),
            ReportWorkerSettings(worker_id="ehr:test", batch_size=4),
            emap_db_url=db_url,
        )
        while worker.run_once(extract.project).claimed:
            pass
        worker.close()

        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT accession_number, state FROM report WHERE project = %s",
                (extract.project,),
            )
            states = dict(cur.fetchall())
        no_report = cohort.by_role("no_report").accession_number
        assert states.pop(no_report) == "missing"
        assert set(states.values()) <= {"checked", "flagged"}
        passed = sorted(a for a, s in states.items() if s == "checked")
        assert passed, "the stand-in and the checker agree on at least one report"

        settings = dsh_ftps_server.settings()
        config = ServiceConfig(
            db_url=db_url, start_worker=False, ftps=lambda project: FtpsClient(settings)
        )
        with TestClient(create_app(config)) as client:
            response = client.post(f"/export/{extract.project}")
        assert response.status_code == 200, response.text
        assert response.json()["reports_exported"] == len(passed)
    finally:
        conn.close()

    folder = dsh_ftps_server.root / extract.project / extract.staging_name / "parquet"
    radiology = pd.read_parquet(folder / "radiology" / "radiology.parquet")
    hasher = ProjectHasher.for_project(extract.project, SECRET)
    assert sorted(radiology["hashed_accession_number"]) == sorted(
        hash_accession_number(hasher, accession) for accession in passed
    )
    # What left holds none of the cohort's patient identifiers.
    texts = "\n".join(radiology["report_text"])
    for study in cohort.studies:
        for value in (study.mrn, study.accession_number, study.nhs_number, study.family_name):
            assert value not in texts
    public = sorted(p.name for p in (folder / "public").iterdir())
    assert public == sorted(p.name for p in (cohort.extract_dir / "public").glob("*.parquet"))
