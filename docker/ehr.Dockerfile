# The EHR module (report service and worker) and the `pixl` CLI in production.
FROM python:3.11-slim
COPY . /pixl
RUN pip install --no-cache-dir /pixl
ENV PYTHONPATH=/pixl
ENTRYPOINT ["python", "-m", "pixl_ehr.service", "--host", "0.0.0.0", "--port", "8000"]
