#!/usr/bin/env bash
# Build (cold) or reuse (warm) the pinned binaries of the local control plane:
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes, version-stamped)
#   etcd                                                     (go.etcd.io/etcd/server/v3)
#   kwok                                                     (sigs.k8s.io/kwok/cmd/kwok)
#   Gateway API standard-channel CRDs                        (sigs.k8s.io/gateway-api config/crd/standard)
# and install Debian's prometheus when it is missing.
#
# Everything lands in ${SENTIMENT_CACHE:-~/.cache/sentiment-rollouts}/controlplane/<name>-<version>/,
# reused when present and `--version` matches. At the end it writes manifest.json there, which
# e2e/cluster reads. When the proxy does not serve a pinned module, the Go error is printed and the
# neighbouring patch releases are tried before giving up.
#
#   usage: build.sh            build or reuse everything
#          build.sh --no-prometheus   skip the apt-get step
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# CONTROLPLANE_VERSIONS points at another pins file (to try a release, or to test the fallback).
versions_file="${CONTROLPLANE_VERSIONS:-$here/versions.env}"
# shellcheck source=versions.env
source "$versions_file"
cache="${SENTIMENT_CACHE:-$HOME/.cache/sentiment-rollouts}/controlplane"
with_prometheus=1
for arg in "$@"; do
  case "$arg" in
    --no-prometheus) with_prometheus=0 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

started=$SECONDS
log() { printf '[%s] controlplane: %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[%s] controlplane: ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# --- toolchain ------------------------------------------------------------------------------------
export GOTOOLCHAIN=local   # never fetch another toolchain behind the user's back
export GOFLAGS="-mod=readonly -buildvcs=false"
command -v go >/dev/null || die "Go is not installed: install Go >= ${GO_MIN_VERSION} (https://go.dev/dl/) and put it on PATH"
go_version="$(go env GOVERSION)"            # e.g. go1.26.8
if ! printf '%s\n%s\n' "go${GO_MIN_VERSION}" "$go_version" | sort -V -C; then
  die "Go ${go_version} is too old: these modules need Go >= ${GO_MIN_VERSION}"
fi
mkdir -p "$cache"
# One build at a time per cache (two shells, a test run and `make cluster-up`); after the lock,
# leftovers of an interrupted build are safe to remove.
exec 9>"$cache/.build.lock"
if ! flock -n 9; then log "waiting for another build.sh on $cache to finish"; flock 9; fi
rm -rf "$cache"/*.tmp.*
scratch="$(mktemp -d)"   # generated wrapper modules; go build's own temp dirs live in $outdir.tmp.*
trap 'rm -rf "$scratch"' EXIT

# --- helpers --------------------------------------------------------------------------------------

# neighbours v1.37.2 -> "v1.37.1 v1.37.3": what to try when the pinned patch release is not served.
neighbours() {
  local v="$1" prefix patch
  prefix="${v%.*}"; patch="${v##*.}"
  if (( patch > 0 )); then printf '%s.%d ' "$prefix" $((patch - 1)); fi
  printf '%s.%d\n' "$prefix" $((patch + 1))
}

# reusable DIR EXPECT BIN... : every BIN exists in DIR and its --version output contains EXPECT.
reusable() {
  local dir="$1" expect="$2" bin out; shift 2
  for bin in "$@"; do
    [[ -x "$dir/$bin" ]] || return 1
    out="$("$dir/$bin" --version 2>&1)" || return 1
    [[ "$out" == *"$expect"* ]] || { log "$dir/$bin reports '$out', expected '$expect': rebuilding"; return 1; }
  done
}

# go_build MODDIR OUTDIR LDFLAGS BINS PKG... : one `go build` for all PKGs (they share compiled
# packages), into a temporary directory first so an interrupted build never leaves a half binary.
# A single package is written as the single BIN (etcd's main package is named after .../v3).
# Prints a progress line every 30 s: packages compiled so far out of the dependency graph.
go_build() {
  local moddir="$1" outdir="$2" ldflags="$3" bins="$4"; shift 4
  local tmp out total vlog ticker rc=0 t0=$SECONDS
  tmp="$(mktemp -d "${outdir}.tmp.XXXXXX")"
  out="$tmp/"
  (( $# == 1 )) && out="$tmp/$bins"
  vlog="$tmp/.build.log"
  total="$(cd "$moddir" && go list -deps "$@" 2>/dev/null | grep -c '\.' || true)"
  (
    while sleep "${PROGRESS_EVERY:-30}"; do
      done_pkgs="$(grep -c '\.' "$vlog" 2>/dev/null)" || true
      log "  ... $(basename "$outdir"): ${done_pkgs:-0} of ~${total} non-std packages compiled (cached ones are skipped), $(( (SECONDS - t0) / 60 )) min elapsed"
    done
  ) &
  ticker=$!
  (cd "$moddir" && go build -v -trimpath -ldflags "$ldflags" -o "$out" "$@") >"$vlog" 2>&1 || rc=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  if (( rc != 0 )); then
    tail -n 40 "$vlog" >&2
    rm -rf "$tmp"
    return "$rc"
  fi
  rm -f "$vlog"
  mkdir -p "$outdir"
  mv -f "$tmp"/* "$outdir"/
  rmdir "$tmp"
  log "  built $(cd "$outdir" && echo *) in $(( SECONDS - t0 )) s"
}

# fetch MODDIR: download what the build needs; on failure print Go's own error and return 1.
fetch() {
  local moddir="$1" out
  if ! out="$(cd "$moddir" && go mod download 2>&1)"; then
    printf '%s\n' "$out" | tail -n 20 >&2
    return 1
  fi
}

# wrapper_for NAME VERSION: the module directory to build VERSION from. The committed wrapper for the
# pinned version; for a neighbouring release, a temporary copy re-pointed at it (go.sum regenerated).
wrapper_for() {
  local name="$1" version="$2" pinned="$3" module="$4" dir
  if [[ "$version" == "$pinned" ]]; then
    if grep -q "^require ${module} ${version}\$" "$here/gomod/$name/go.mod"; then
      echo "$here/gomod/$name"; return 0
    fi
    log "WARNING: gomod/$name/go.mod does not require ${module} ${version}; using a generated wrapper (commit one: see gen-replaces.sh)" >&2
  fi
  dir="$(mktemp -d "$scratch/$name.XXXXXX")"
  cp "$here/gomod/$name/tools.go" "$dir/"
  if [[ "$name" == kubernetes ]]; then
    printf 'module github.com/sentiment-rollouts/controlplane/kubernetes\n\ngo 1.26.0\n\nrequire %s %s\n\n' "$module" "$version" >"$dir/go.mod"
    "$here/gen-replaces.sh" "$version" >>"$dir/go.mod" || return 1
  else
    cp "$here/gomod/$name/go.mod" "$dir/"
    (cd "$dir" && go mod edit -require="${module}@${version}") || return 1
  fi
  (cd "$dir" && GOFLAGS=-mod=mod go mod tidy >&2) || return 1
  echo "$dir"
}

# subst TEMPLATE VERSION: {v} -> v1.37.2, {bare} -> 1.37.2, {minor} -> 37
subst() {
  local t="$1" v="$2" minor
  minor="$(echo "$v" | cut -d. -f2)"
  t="${t//\{v\}/$v}"; t="${t//\{bare\}/${v#v}}"; echo "${t//\{minor\}/$minor}"
}

# component NAME CACHE_PREFIX PINNED MODULE EXPECT BINS PKGS LDFLAGS
#   EXPECT (a substring of `BIN --version`) and LDFLAGS are subst templates.
# Sets $resolved to the version actually used.
resolved=""
component() {
  local name="$1" prefix="$2" pinned="$3" module="$4" expect_t="$5" bins="$6" pkgs="$7" ldflags_t="$8"
  local version dir moddir expect
  for version in "$pinned" $(neighbours "$pinned"); do
    dir="$cache/$prefix-$version"
    expect="$(subst "$expect_t" "$version")"
    # shellcheck disable=SC2086
    if reusable "$dir" "$expect" $bins; then
      log "$name $version: cached in $dir (reused)"
      resolved="$version"; return 0
    fi
    [[ "$version" == "$pinned" ]] || log "$name: trying the neighbouring patch release $version"
    log "$name $version: not cached; fetching $module@$version"
    if ! moddir="$(wrapper_for "$name" "$version" "$pinned" "$module")"; then
      log "$name $version: could not prepare a module for it (error above)"; continue
    fi
    if ! fetch "$moddir"; then
      log "$name $version: the Go module proxy did not serve everything $module@$version needs (Go's error above)"
      continue
    fi
    log "$name $version: building $bins (cold builds take minutes; progress every 30 s)"
    # shellcheck disable=SC2086
    go_build "$moddir" "$dir" "$(subst "$ldflags_t" "$version")" "$bins" $pkgs || die "$name $version: go build failed (Go's error above)"
    # shellcheck disable=SC2086
    reusable "$dir" "$expect" $bins || die "$name $version: the built binaries do not report '$expect'"
    [[ "$version" == "$pinned" ]] || log "WARNING: $name $pinned was not served; using $version instead"
    resolved="$version"; return 0
  done
  die "$name: neither $pinned nor its neighbouring patch releases ($(neighbours "$pinned")) could be fetched from the Go module proxy ($(go env GOPROXY)); see Go's errors above"
}

# --- Kubernetes -----------------------------------------------------------------------------------
# gitVersion etc. make `--version` truthful; without them the binaries say v0.0.0-master, and clients
# that gate features on the server version misbehave.
k8s_ldflags='-s -w -X k8s.io/component-base/version.gitVersion={v} -X k8s.io/component-base/version.gitMajor=1'
k8s_ldflags+=' -X k8s.io/component-base/version.gitMinor={minor} -X k8s.io/component-base/version.gitTreeState=clean'
k8s_ldflags+=' -X k8s.io/client-go/pkg/version.gitVersion={v}'
component kubernetes k8s "$K8S_VERSION" k8s.io/kubernetes 'Kubernetes {v}' \
  "kube-apiserver kube-controller-manager kube-scheduler" \
  "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler" \
  "$k8s_ldflags"
k8s_resolved="$resolved"

# --- etcd -----------------------------------------------------------------------------------------
component etcd etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 'etcd Version: {bare}' etcd \
  go.etcd.io/etcd/server/v3 '-s -w'
etcd_resolved="$resolved"

# --- KWOK -----------------------------------------------------------------------------------------
component kwok kwok "$KWOK_VERSION" sigs.k8s.io/kwok '{v} ' kwok sigs.k8s.io/kwok/cmd/kwok \
  '-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={bare}'
kwok_resolved="$resolved"

# module_dir MODULE@VERSION: the module's extracted source in the module cache (downloaded if
# needed); on failure prints Go's answer and returns 1. For modules we take files from, not code.
module_dir() {
  local tmp json dir
  tmp="$(mktemp -d "$scratch/dl.XXXXXX")"
  (cd "$tmp" && go mod init tmp >/dev/null 2>&1)
  json="$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$1" 2>&1)" || true
  dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
  if [[ -z "$dir" || ! -d "$dir" ]]; then printf '%s\n' "$json" >&2; return 1; fi
  echo "$dir"
}

# KWOK's binary has no built-in stages (kwokctl passes them): keep the node stages of the same
# release next to the binary. Pods get none, on purpose: e2e/podrunner runs them.
kwok_dir="$cache/kwok-$kwok_resolved"
if [[ ! -f "$kwok_dir/stages/node-heartbeat-with-lease.yaml" ]]; then
  src="$(module_dir "sigs.k8s.io/kwok@$kwok_resolved")" || die "kwok $kwok_resolved: could not fetch its module for the node stages (Go's answer above)"
  mkdir -p "$kwok_dir/stages"
  cp "$src/kustomize/stage/node/fast/node-initialize.yaml" \
     "$src/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" "$kwok_dir/stages/"
  chmod u+w "$kwok_dir"/stages/*.yaml
  log "kwok $kwok_resolved: node stages copied to $kwok_dir/stages"
fi

# --- Gateway API CRDs -----------------------------------------------------------------------------
gateway_crds() {
  local version dir tmp src
  for version in "$GATEWAY_API_VERSION" $(neighbours "$GATEWAY_API_VERSION"); do
    dir="$cache/gateway-api-$version"
    if [[ -f "$dir/gateway.networking.k8s.io_httproutes.yaml" ]]; then
      log "gateway-api $version: CRDs cached in $dir (reused)"; resolved="$version"; return 0
    fi
    log "gateway-api $version: fetching the standard-channel CRDs from sigs.k8s.io/gateway-api"
    if ! src="$(module_dir "sigs.k8s.io/gateway-api@$version")" || [[ ! -d "$src/config/crd/standard" ]]; then
      log "gateway-api $version: not served (Go's answer above)"; continue
    fi
    tmp="$(mktemp -d "$dir.tmp.XXXXXX")"
    cp "$src"/config/crd/standard/*.yaml "$tmp"/
    chmod u+w "$tmp"/*.yaml
    rm -rf "$dir"; mv "$tmp" "$dir"
    [[ "$version" == "$GATEWAY_API_VERSION" ]] || log "WARNING: gateway-api $GATEWAY_API_VERSION was not served; using $version instead"
    log "gateway-api $version: $(ls "$dir" | wc -l) files in $dir"
    resolved="$version"; return 0
  done
  die "gateway-api: neither $GATEWAY_API_VERSION nor its neighbours could be fetched from the Go module proxy"
}
gateway_crds
gateway_resolved="$resolved"

# --- Prometheus (Debian's package) ----------------------------------------------------------------
if (( with_prometheus )) && ! command -v prometheus >/dev/null; then
  log "prometheus: not installed; installing Debian's package with apt-get"
  sudo=""
  if (( EUID != 0 )); then
    command -v sudo >/dev/null || die "prometheus is missing and this user cannot install it: run 'sudo apt-get install prometheus'"
    sudo="sudo -n"
  fi
  $sudo apt-get update -q || die "apt-get update failed (see above)"
  # No recommends: they pull in exporters and services that nothing here uses.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus \
    || die "apt-get install prometheus failed (see above)"
fi
prometheus_bin="$(command -v prometheus || true)"
if (( with_prometheus )); then
  [[ -n "$prometheus_bin" ]] || die "prometheus is still not on PATH after installing it"
  log "prometheus: $("$prometheus_bin" --version 2>&1 | head -n1)"
fi

# --- manifest -------------------------------------------------------------------------------------
k8s_dir="$cache/k8s-$k8s_resolved"
tmp_manifest="$(mktemp "$cache/manifest.json.XXXXXX")"
cat >"$tmp_manifest" <<JSON
{
  "pins": {"kubernetes": "$K8S_VERSION", "etcd": "$ETCD_VERSION", "kwok": "$KWOK_VERSION", "gateway_api": "$GATEWAY_API_VERSION"},
  "versions": {"kubernetes": "$k8s_resolved", "etcd": "$etcd_resolved", "kwok": "$kwok_resolved", "gateway_api": "$gateway_resolved"},
  "binaries": {
    "kube-apiserver": "$k8s_dir/kube-apiserver",
    "kube-controller-manager": "$k8s_dir/kube-controller-manager",
    "kube-scheduler": "$k8s_dir/kube-scheduler",
    "etcd": "$cache/etcd-$etcd_resolved/etcd",
    "kwok": "$kwok_dir/kwok",
    "prometheus": "$prometheus_bin"
  },
  "kwok_stages": "$kwok_dir/stages",
  "gateway_api_crds": "$cache/gateway-api-$gateway_resolved"
}
JSON
mv -f "$tmp_manifest" "$cache/manifest.json"
log "ready in $(( SECONDS - started )) s: manifest $cache/manifest.json"
