# orthanc-raw and orthanc-anon in production: the official Orthanc image (with its Python
# plugin) plus PIXL's Python packages. Built by docker-compose.yml; not used by the local stack.
# docker-compose.yml mounts orthanc-config/<raw|anon>.json as /etc/orthanc/orthanc.json and runs
# the container as the image's own unprivileged user `orthanc`.
FROM orthancteam/orthanc:24.10.3
COPY pyproject.toml /pixl/
COPY pixl_core /pixl/pixl_core
COPY cli /pixl/cli
COPY ehr /pixl/ehr
COPY orthanc_plugins /pixl/orthanc_plugins
COPY projects /pixl/projects
COPY tag_allowlists /pixl/tag_allowlists
# The Lua filter that makes the user `operator` read-only (the configs name it by ${REPO_DIR}).
COPY orthanc-config/operator-read-only.lua /pixl/orthanc-config/
RUN pip install --no-cache-dir --break-system-packages /pixl
ENV PYTHONPATH=/pixl
