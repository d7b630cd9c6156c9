# sel-otel for the tests' containers, built with no registry and no network. scripts/docker-setup.sh
# builds it as sel-otel/app:test; deploy/Dockerfile is the image to deploy.
#
# BASE is the Debian root filesystem that scripts/docker-setup.sh makes with mmdebstrap
# (sel-otel/python:test: python3, python3-venv, procps, iproute2). The build context holds only
# wheels/: sel-otel (with its shipped agents) and its dependencies at the versions of
# constraints.txt, built on the host by `pip wheel` with the host's own pip configuration.
# By hand:
#   .venv/bin/pip wheel -c constraints.txt -w DIR/wheels .
#   docker build --network none -f deploy/app-offline.Dockerfile -t sel-otel/app:test DIR
ARG BASE=sel-otel/python:test
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/sel-otel/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

COPY wheels /tmp/wheels
RUN python3 -m venv /opt/sel-otel \
    && /opt/sel-otel/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir \
        --disable-pip-version-check sel-otel \
    && rm -rf /tmp/wheels

# An unprivileged user (the root filesystem has no useradd); the installed agents are
# read-only for it.
RUN echo 'sel:x:10001:10001::/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'sel:x:10001:' >>/etc/group
USER sel
WORKDIR /tmp

ENTRYPOINT ["sel-otel"]
CMD ["bot"]
