# orthanc-raw and orthanc-anon in production: the official Orthanc image (with its Python
# plugin) plus PIXL's Python packages. Built by docker-compose.yml; not used by the local stack.
FROM orthancteam/orthanc:24.10.3
COPY pyproject.toml /pixl/
COPY pixl_core /pixl/pixl_core
COPY cli /pixl/cli
COPY ehr /pixl/ehr
COPY orthanc_plugins /pixl/orthanc_plugins
COPY projects /pixl/projects
COPY tag_allowlists /pixl/tag_allowlists
RUN pip install --no-cache-dir --break-system-packages /pixl
ENV PYTHONPATH=/pixl
