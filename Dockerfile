# tracktalk: one replica. `docker compose up` (docker-compose.yml) runs two behind nginx.
#
#   docker build -t tracktalk .
#   docker run --rm -e DATABASE_URL=postgresql://… -e TRACKTALK_SECRET=… -p 8000:8000 tracktalk
#   docker run --rm -e DATABASE_URL=postgresql://… tracktalk migrate      # any `tracktalk` command
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed uid (so that runAsNonRoot-style checks can verify it).
RUN groupadd --system --gid 10001 tracktalk \
 && useradd --system --uid 10001 --gid tracktalk --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin tracktalk

WORKDIR /srv/tracktalk
COPY pyproject.toml README.md ./
COPY app ./app
COPY sql ./sql
# Editable on purpose: `tracktalk migrate` reads sql/ beside the app package (app/data/db.py), which a
# plain install into site-packages would leave behind. The files stay root-owned and read-only
# for the user that runs the service. psycopg[binary] brings its own libpq: no apt packages.
RUN pip install -e .

USER 10001:10001
EXPOSE 8000
# exec form: tracktalk is PID 1 and gets the SIGTERM (it closes sockets with 1001, then stops).
ENTRYPOINT ["tracktalk"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
