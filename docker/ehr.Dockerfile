# The EHR module (report service and worker) and the `pixl` CLI in production. Only the
# product is copied: stack/ (stand-ins, synthetic data), tests/ and benchmarks/ never enter
# the image.
FROM python:3.11-slim
COPY pyproject.toml /pixl/
COPY pixl_core /pixl/pixl_core
COPY cli /pixl/cli
COPY ehr /pixl/ehr
COPY orthanc_plugins /pixl/orthanc_plugins
COPY projects /pixl/projects
COPY tag_allowlists /pixl/tag_allowlists
RUN pip install --no-cache-dir /pixl
# Projects and allow-lists are read from /pixl (pixl_core finds them beside its source).
ENV PYTHONPATH=/pixl
ENTRYPOINT ["python", "-m", "pixl_ehr.service", "--host", "0.0.0.0", "--port", "8000"]
