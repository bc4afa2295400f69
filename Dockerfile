# deployd in a container: a small Debian image running as an unprivileged user, the data
# directory a volume.
#
#   docker build --build-arg DEPLOYD_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t deployd .
#   docker run -d --name deployd -p 8080:8080 -v deployd-data:/data deployd
#   docker exec deployd cat /data/admin-token
#
# Every configuration key is also a DEPLOYD_SECTION_KEY variable: `docker run -e …`.

FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
# The build context has no .git (.dockerignore): build.rs takes the commit from here.
ARG DEPLOYD_GIT_COMMIT=unknown
ENV DEPLOYD_GIT_COMMIT=${DEPLOYD_GIT_COMMIT}
COPY Cargo.toml Cargo.lock build.rs ./
COPY build ./build
COPY vendor ./vendor
COPY src ./src
COPY ui ./ui
COPY benches ./benches
RUN cargo build --release --locked --bin deployd

FROM debian:bookworm-slim
# ca-certificates: fetching https sources. tini: PID 1 that forwards SIGTERM to deployd (for its
# graceful stop) and reaps whatever stage processes leave behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin deployd \
    && install -d -o deployd -g deployd -m 0700 /data
COPY --from=build /src/target/release/deployd /usr/local/bin/deployd
USER 10001:10001
# In a container the server must listen on every interface to be reachable through -p;
# set DEPLOYD_PUBLIC_URL to the address clients use.
ENV DEPLOYD_DATA_DIR=/data \
    DEPLOYD_LISTEN=0.0.0.0:8080
VOLUME ["/data"]
WORKDIR /data
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/deployd"]
CMD ["serve"]
