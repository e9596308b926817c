#!/usr/bin/env bash
# Install what bench/run.py needs; idempotent, and quick when everything is there.
#   nginx (Debian's nginx-light, else nginx), GNU time, openssl, iproute2 (ip, tc),
#   Debian's golang-go (the Go baseline bench/goscan, built here with the standard library
#   only), and certscan with its deps (cryptography, uvloop) into the chosen Python.
# The Python is $PYTHON, else the one bench/run picks (see there).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# shellcheck source=bench/python.sh
. "$here/python.sh"
py=$(bench_python)

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/time ] || missing+=(time)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || missing+=(iproute2)
command -v go >/dev/null 2>&1 || missing+=(golang-go)  # the Go baseline, bench/goscan
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    $sudo apt-get update -qq
    packages=()
    for name in "${missing[@]}"; do
        if [ "$name" = nginx ]; then packages+=(nginx-light); else packages+=("$name"); fi
    done
    # nginx-light is gone from newer Debian releases: fall back to the full package.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" \
        || $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${packages[@]/nginx-light/nginx}"
fi

if ! "$py" -c 'import cryptography, uvloop, rtls, scanner' >/dev/null 2>&1; then
    echo "setup: pip install -e $repo[rustls] into $py" >&2
    "$py" -m pip install -q -e "$repo[rustls]"
fi

# Byte-compile certscan and the bench's own scripts, as `pip install .` does at install
# time: with an editable install and PYTHONDONTWRITEBYTECODE set (it is on some machines),
# every run would otherwise compile the package from source, ~60 ms of start-up CPU that
# no installed copy pays. compileall writes the caches whatever that variable says.
"$py" -m compileall -q "$repo/scanner" "$repo/bench" >/dev/null

# The Go baseline: bench/goscan/goscan, built again only when its sources are newer. Its
# build cache goes under bench/out (gitignored), so this works as root with no $HOME; no
# module is downloaded (standard library only, GOPROXY=off); CGO_ENABLED=0 as Go
# scanners' release builds are (a static binary, Go's own resolver).
goscan="$here/goscan"
if command -v go >/dev/null 2>&1; then
    if [ ! -x "$goscan/goscan" ] || [ "$goscan/main.go" -nt "$goscan/goscan" ] \
        || [ "$goscan/go.mod" -nt "$goscan/goscan" ]; then
        echo "setup: go build bench/goscan ($(go version))" >&2
        mkdir -p "$here/out/go"
        (cd "$goscan" && env HOME="${HOME:-$here/out/go}" GOCACHE="$here/out/go/cache" \
            GOPATH="$here/out/go/path" GOFLAGS= GOPROXY=off CGO_ENABLED=0 \
            go build -o goscan .)
    fi
else
    echo "setup: no go: the go-stdlib baseline will be skipped" >&2
fi
