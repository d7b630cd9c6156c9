# The collector-contrib image, plus a static busybox for the compose health check.
#
# The official image is built FROM scratch: no shell, no wget, so a Docker HEALTHCHECK cannot
# reach the health_check extension from inside the container. busybox's musl build is a
# single static binary that runs there; nothing else changes (same entrypoint, user and
# default command). Build arguments pin both versions.
ARG COLLECTOR_VERSION=0.161.0
ARG BUSYBOX_VERSION=1.37.0

FROM busybox:${BUSYBOX_VERSION}-musl AS busybox

FROM otel/opentelemetry-collector-contrib:${COLLECTOR_VERSION}
COPY --from=busybox /bin/busybox /busybox
