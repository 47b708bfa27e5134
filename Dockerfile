# tandem container image: a release build of the server on Debian 12 slim, run as uid/gid 10001.
#
#   docker build -t tandem:dev .
#   docker run --rm -p 8080:8080 -e TANDEM_DATABASE_URL=postgres://… tandem:dev
#
# The Helm chart in helm/tandem runs this image with a read-only root filesystem; the server
# writes only to /tmp and TANDEM_DATA_DIR, which the chart mounts as emptyDir volumes.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build -----------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# diesel's PostgreSQL backend links libpq; SQLite is bundled (built from source by libsqlite3-sys).
# Unpinned on purpose: the release's current security updates (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock change.
# Cargo checks that every target the manifest declares exists, so each gets a stub; the test and
# bench stubs stay (tests/ and benches/ are not in the build context, see .dockerignore).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/api benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/api/main.rs \
 && echo 'fn main() {}' > benches/load.rs \
 && echo 'fn main() {}' > benches/baseline.rs \
 && cargo build --release --locked --bin tandem \
 && rm -rf src \
      target/release/tandem target/release/tandem.d \
      target/release/deps/tandem-* target/release/deps/libtandem-* \
      target/release/.fingerprint/tandem-*

# The application: its sources (with the data files they include) and the embedded migrations.
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin tandem \
 && ./target/release/tandem --version

# --- runtime ---------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

LABEL org.opencontainers.image.title="tandem" \
      org.opencontainers.image.description="FHIR R4 server for individual and group therapy" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates: TLS to PostgreSQL (sslmode=verify-full) and to subscription endpoints.
# libpq5: the PostgreSQL client library the binary links.
# Unpinned on purpose: the release's current security updates (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libpq5 \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid (10001) that the Helm chart's securityContext names too.
RUN groupadd --system --gid 10001 tandem \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/tandem --shell /usr/sbin/nologin tandem \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tandem

COPY --from=builder /build/target/release/tandem /usr/local/bin/tandem

WORKDIR /var/lib/tandem

ENV TANDEM_LISTEN=0.0.0.0:8080 \
    TANDEM_LOG_FORMAT=json \
    TANDEM_DATA_DIR=/var/lib/tandem

EXPOSE 8080

USER 10001:10001

ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["serve"]
