# mv-refresher: a fully static (musl) binary on a distroless base with CA
# certificates, running as a non-root user, no shell. JSON logs by default.
#   docker build -t mv-refresher .
#   docker run --rm -e DATABASE_URL=postgres://... mv-refresher            # refresh
#   docker run --rm -e DATABASE_URL=postgres://... mv-refresher status

FROM rust:1.95-bookworm AS build
# musl-gcc builds ring's C and assembly for the musl target; libclang, with
# which pg_query compiles PostgreSQL's parser (libpg_query) and its bindings.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools libclang-dev \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/mv-refresher /usr/local/bin/mv-refresher
USER 65532:65532
ENV MV_REFRESHER_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/mv-refresher"]
CMD ["refresh"]
