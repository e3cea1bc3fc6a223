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
# An unprivileged user owns the staging folder (a new volume mounted there copies its owner).
RUN useradd --system --home-dir /var/lib/pixl --shell /usr/sbin/nologin pixl \
    && mkdir -p /var/lib/pixl/staging && chown -R pixl:pixl /var/lib/pixl
USER pixl
# Projects and allow-lists are read from /pixl (pixl_core finds them beside its source).
ENV PYTHONPATH=/pixl
# Loopback unless PIXL_EHR_HOST says otherwise: the CLI runs in this container
# (`docker compose exec ehr pixl ...`). Every request but /health needs PIXL_EHR_TOKEN.
ENTRYPOINT ["python", "-m", "pixl_ehr.service", "--port", "8000"]
