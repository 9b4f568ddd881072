#!/usr/bin/env bash
# Print the `replace` block a wrapper module needs to import k8s.io/kubernetes at VERSION.
#
# Upstream's go.mod points every staging module (k8s.io/api, k8s.io/client-go, ...) at
# ./staging/src/..., which a consumer cannot follow; each staging module is published on its own as
# v0.<minor>.<patch>. This reads upstream's go.mod from the module proxy and maps every such line.
#
#   usage: gen-replaces.sh v1.37.2 > replaces.txt
set -euo pipefail

version="${1:?usage: gen-replaces.sh vMAJOR.MINOR.PATCH (e.g. v1.37.2)}"
if [[ ! "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]]; then
  echo "gen-replaces.sh: '$version' is not a Kubernetes release like v1.37.2" >&2
  exit 2
fi
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# `go mod download` needs a module context; an empty one is enough and touches nothing of ours.
(cd "$tmp" && go mod init tmp >/dev/null 2>&1)
if ! json="$(cd "$tmp" && go mod download -json "k8s.io/kubernetes@${version}" 2>&1)"; then
  echo "gen-replaces.sh: the Go module proxy did not serve k8s.io/kubernetes@${version}:" >&2
  echo "$json" >&2
  exit 1
fi
gomod="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
[[ -f "$gomod" ]] || { echo "gen-replaces.sh: no go.mod in the proxy's answer: $json" >&2; exit 1; }

lines="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._/-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*$#\1#p' "$gomod" | sort -u)"
[[ -n "$lines" ]] || { echo "gen-replaces.sh: no staging replaces found in $gomod" >&2; exit 1; }
echo "replace ("
while read -r mod; do
  printf '\t%s => %s %s\n' "$mod" "$mod" "$staging"
done <<<"$lines"
echo ")"
