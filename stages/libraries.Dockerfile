# A libraries image: what a runtime image (stages/Dockerfile) starts FROM. Domino's job user, the settings a
# stage runs with, the runtime's libraries (stages/requirements.txt) and, built with REQUIREMENTS (`make images`
# passes a stage's requirements.txt when it has one: train), that stage's own libraries. No code: an edit of
# the code never rebuilds this image, so it never installs a library again. The shared libraries' layer is the
# same in every libraries image, so Docker stores it once.
# Build context: the repository root with the wheels of the stages' locks. Classic builder, no BuildKit
# features, so it builds with docker-compose v1 and the Docker SDK too.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The libraries, from the host-side wheelhouse only (no index: this is also how air-gapped sites build), in
# build stages, which keep the wheelhouse out of the final image's layers.
# A stage's own libraries go to /opt/stage; the .pth file puts them on the venv's path, so they are found
# whatever PYTHONPATH says (Domino's environment layers restate it).
FROM ${BASE_IMAGE} AS shared
COPY wheels/ /tmp/wheels/
COPY stages/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/tmp/wheels -r /tmp/requirements.txt \
 && echo /opt/stage/lib/python3.11/site-packages > /opt/venv/lib/python3.11/site-packages/stage.pth

# pip skips what the shared libraries already hold. Without REQUIREMENTS it reads the shared list again: nothing.
FROM shared AS own
ARG REQUIREMENTS=stages/requirements.txt
COPY ${REQUIREMENTS} /tmp/own-requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/tmp/wheels --prefix=/opt/stage \
        -r /tmp/own-requirements.txt \
 && mkdir -p /opt/stage
# The classic builder keeps the build stages as untagged images (the build cache). The label names the image
# they were built for, so that `stageflow gc` finds them, and only them, once that image is gone (`make images`
# sets IMAGE). It comes last: a label above the libraries would make each image install them again.
ARG IMAGE=
LABEL io.stageflow.build-stage-of=${IMAGE}

FROM ${BASE_IMAGE}
ARG UID=12574
# Domino runs jobs as user ubuntu (uid/gid 12574, home /mnt); a stage image works as that user.
RUN groupadd --gid ${UID} ubuntu && useradd --uid ${UID} --gid ${UID} --home-dir /mnt --no-create-home ubuntu
ENV PATH=/opt/stage/bin:/opt/venv/bin:$PATH PYTHONPATH=/opt/stageflow PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 WORKFLOW_ROOT=/workflow
COPY --from=shared /opt/venv /opt/venv
COPY --from=own /opt/stage /opt/stage
