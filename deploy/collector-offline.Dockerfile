# An OTLP collector for the tests' and the load test's containers, built with no registry and
# no network. scripts/docker-setup.sh builds it as sel-otel/collector:test.
#
# rotel (PyPI) is a small OpenTelemetry collector whose Rust binary ships inside its wheel. The
# build context holds wheels/, with the rotel wheel that scripts/docker-setup.sh downloads with
# the host's own pip configuration, and debs/, with Debian's libpython of the image's Python
# (the binary links it), downloaded with the host's apt sources. It receives OTLP over gRPC (4317) and HTTP (4318) and,
# by default, drops what it receives (the blackhole exporter): a collector to export to, to
# stop and to restart, at a collector's cost. By hand:
#   .venv/bin/pip download --no-deps --only-binary :all: -d DIR/wheels rotel==0.0.1a15
#   (cd DIR/debs && apt-get download libpython3.11)
#   docker build --network none -f deploy/collector-offline.Dockerfile -t sel-otel/collector:test DIR
ARG BASE=sel-otel/python:test
FROM ${BASE}

COPY debs /tmp/debs
COPY wheels /tmp/wheels
RUN dpkg -i /tmp/debs/*.deb \
    && python3 -m venv /opt/rotel \
    && /opt/rotel/bin/pip install --no-index --find-links /tmp/wheels --no-deps --no-cache-dir \
        --disable-pip-version-check rotel \
    && ln -s /opt/rotel/lib/python3*/site-packages/rotel/rotel-agent /usr/local/bin/rotel-agent \
    && rm -rf /tmp/debs /tmp/wheels

USER 10001:10001
EXPOSE 4317 4318
ENTRYPOINT ["rotel-agent", "start"]
CMD ["--otlp-grpc-endpoint", "0.0.0.0:4317", "--otlp-http-endpoint", "0.0.0.0:4318", \
     "--exporter", "blackhole"]
