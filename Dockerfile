# syntax=docker/dockerfile:1
# The korvid image: one binary, every service a subcommand (`korvid ingest`, `korvid detect`, ...).
#
#   docker build -t korvid .
#   docker build --build-arg CARGO_PROFILE=dist -t korvid .    # whole-program optimised, slower build
#
# Runs as uid 10001 on a read-only root filesystem: state goes to /var/lib/korvid (a volume) and
# scratch to /tmp (mount an emptyDir or tmpfs there).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
# ONNX Runtime for the graph model, the release scripts/setup.sh installs: the shared library from
# the onnxruntime wheel on PyPI (only the library is used; korvid loads it at run time).
ARG ORT_VERSION=1.31.1

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
ARG CARGO_PROFILE=release
WORKDIR /src
COPY . .
# librdkafka is built from source by rdkafka-sys (no cmake needed). The target directory is a
# cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --profile "${CARGO_PROFILE}" --locked --bin korvid \
    && install -m 0755 "target/${CARGO_PROFILE}/korvid" /usr/local/bin/korvid

FROM debian:${DEBIAN_RELEASE}-slim AS onnxruntime
ARG ORT_VERSION
ARG TARGETARCH
# The wheels' addresses and digests; override all three for another version.
ARG ORT_WHEEL_URL_AMD64=https://files.pythonhosted.org/packages/b4/1d/0f85ee31a3d93f2243a5cc29252becf858f53ac5cfa6c9c15d9ffe107eea/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
ARG ORT_WHEEL_SHA256_AMD64=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ARG ORT_WHEEL_URL_ARM64=https://files.pythonhosted.org/packages/02/ee/b173a49293b146b54bd057bf8681a015aef764d8f56d999ad8c6e53ab18d/onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_aarch64.whl
ARG ORT_WHEEL_SHA256_ARM64=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl unzip \
    && rm -rf /var/lib/apt/lists/*
RUN set -eu; \
    case "${TARGETARCH:-amd64}" in \
      amd64) url="${ORT_WHEEL_URL_AMD64}"; sum="${ORT_WHEEL_SHA256_AMD64}" ;; \
      arm64) url="${ORT_WHEEL_URL_ARM64}"; sum="${ORT_WHEEL_SHA256_ARM64}" ;; \
      *) echo "no ONNX Runtime wheel configured for ${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    curl -fsSL --retry 3 -o /tmp/onnxruntime.whl "${url}"; \
    echo "${sum}  /tmp/onnxruntime.whl" | sha256sum -c -; \
    mkdir -p /out; \
    unzip -j /tmp/onnxruntime.whl "onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" -d /out; \
    rm /tmp/onnxruntime.whl

FROM debian:${DEBIAN_RELEASE}-slim
ARG ORT_VERSION
# ca-certificates: TLS to sinks, registries and OTLP; libssl3: librdkafka's TLS and SASL/SCRAM
# (rdkafka's `ssl` feature links the system OpenSSL); libstdc++6: ONNX Runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 korvid \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/korvid --no-create-home \
       --shell /usr/sbin/nologin korvid \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/korvid
COPY --from=onnxruntime /out/libonnxruntime.so.${ORT_VERSION} /usr/local/lib/
COPY --from=builder /usr/local/bin/korvid /usr/local/bin/korvid
# detect finds the library here (detect.model.runtime_library overrides it).
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.${ORT_VERSION}
WORKDIR /var/lib/korvid
VOLUME ["/var/lib/korvid"]
USER 10001:10001
# 9440: ingest's audit webhook; 9464: /metrics, /healthz, /readyz (with telemetry.listen and
# ingest.audit_webhook.listen set to 0.0.0.0, as the Helm chart and manifests do).
EXPOSE 9440 9464
ENTRYPOINT ["korvid"]
CMD ["--help"]
