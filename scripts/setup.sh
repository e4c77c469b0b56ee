#!/usr/bin/env bash
# Installs what korvid needs beyond the Rust toolchain, once, into a cache outside the checkout:
#   - the Kafka-protocol broker tansu 0.6.0 (from crates.io) for `korvid up` and the tests;
#   - the ONNX Runtime shared library 1.31.1 (from PyPI) for the model stage;
#   - Debian packages the integration tests drive as real peers: rsyslog with its GnuTLS driver
#     (notify's syslog sink) and postgresql-client (psql against `korvid sql --serve`). The tests
#     start their own rsyslogd on loopback ports; the system's syslog service is not used.
# Safe to run again: anything already installed is kept. Says what it installs.
set -euo pipefail

TOOLS="${KORVID_TOOLS:-$HOME/.cache/korvid/tools}"
TANSU_VERSION=0.6.0
ORT_VERSION=1.31.1

say() { printf 'setup: %s\n' "$*"; }

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# librdkafka's TLS and SASL/SCRAM use the system OpenSSL.
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
[ -x /usr/sbin/rsyslogd ] || need_apt+=(rsyslog)
compgen -G '/usr/lib/*/rsyslog/lmnsd_gtls.so' >/dev/null || need_apt+=(rsyslog-gnutls)
[ -x /usr/bin/psql ] || need_apt+=(postgresql-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  as_root=()
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  if command -v apt-get >/dev/null 2>&1 && { [ ${#as_root[@]} = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    say "installing Debian packages: ${need_apt[*]}"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  else
    say "missing packages: ${need_apt[*]} (install them with your package manager)" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { say "cargo not found: install Rust 1.94 or newer (rustup)" >&2; exit 1; }

mkdir -p "$TOOLS"

# The broker. Without a storage feature it starts and exits at once, hence the features.
if "$TOOLS/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  say "tansu $TANSU_VERSION already in $TOOLS/bin"
else
  say "installing tansu $TANSU_VERSION into $TOOLS (from crates.io; ~11 minutes on 2 cores, once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$TOOLS" --quiet
fi

# ONNX Runtime: only the shared library is used (ort's load-dynamic), so no Python deps.
ORT_DIR="$TOOLS/onnxruntime-$ORT_VERSION"
ORT_LIB="$ORT_DIR/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
if [ -f "$ORT_LIB" ]; then
  say "ONNX Runtime $ORT_VERSION already in $ORT_DIR"
else
  say "installing ONNX Runtime $ORT_VERSION into $ORT_DIR (from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$ORT_DIR" "onnxruntime==$ORT_VERSION"
  [ -f "$ORT_LIB" ] || { say "ONNX Runtime library not found at $ORT_LIB after install" >&2; exit 1; }
fi

say "ready: broker $TOOLS/bin/tansu, ONNX Runtime $ORT_LIB"
