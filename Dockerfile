# syntax=docker/dockerfile:1
# A static log-socket (and k8stail) in a minimal, non-root image:
#   docker build -t log-socket:0.1.0 .
# Both binaries are linked statically against musl, so the image needs no libc.

FROM rust:1.89-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# `k8stail --version` names the commit; there is no .git in the build context:
#   docker build --build-arg LOG_SOCKET_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" ...
ARG LOG_SOCKET_GIT_COMMIT=unknown
ENV LOG_SOCKET_GIT_COMMIT=${LOG_SOCKET_GIT_COMMIT}
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# The manifest declares the bench target, and the workspace its other members (the fuzz entry
# points, the test kit), so their files must exist for any build.
COPY benches ./benches
COPY fuzz ./fuzz
COPY testkit ./testkit
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bins \
    && cp target/x86_64-unknown-linux-musl/release/log-socket target/x86_64-unknown-linux-musl/release/k8stail /

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /log-socket /k8stail /usr/local/bin/
# 10000 ingest, 10001 listeners and /metrics, 10002 health.
EXPOSE 10000 10001 10002
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/log-socket"]
CMD ["run"]
