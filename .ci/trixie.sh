#!/usr/bin/env bash
# CI's second job: the test suite on Debian 13 "trixie" (Python 3.13, OpenSSL 3.5), in a
# chroot built with debootstrap. Root only. `.ci/run` calls it after the host job; by hand:
#
#     sudo bash .ci/trixie.sh                      # the README's test command inside
#     sudo bash .ci/trixie.sh -k verify -x         # arguments go to pytest
#     sudo bash .ci/trixie.sh --run bash           # a shell in /src instead (venv on PATH)
#
# What it does:
#  1. Finds or builds the chroot: $CERTSCAN_CI_CACHE (default /var/cache/certscan-ci)
#     /trixie-<hash of the suite, the package list and this recipe's revision>. A build
#     goes into a temporary folder beside it and is renamed into place only once complete,
#     so a killed build is never taken for a chroot. Downloaded .debs are kept in debs/.
#     A complete chroot is never deleted by this script.
#  2. Copies the project in: the files git knows of in this checkout (tracked, plus
#     untracked ones that are not ignored, so a by-hand run sees the work tree; a fresh
#     clone has only committed files), into /src of the chroot. No bind mount of the tree.
#  3. In a private mount namespace (unshare), so that no mount is ever visible on the host
#     and all of them go away with the job: the chroot onto itself (so that "/" is a mount
#     point, which `unshare --mount` in the tests needs), a fresh proc, a tmpfs on /dev/shm, a
#     devpts instance of its own for ptys (the other device nodes are debootstrap's), and the
#     pip cache (pip/ in the cache folder). Nothing of the host's is bind-mounted but that
#     cache. Then, chrooted: a fresh venv, `pip install -e '.[test]'`, and pytest.
#  4. On every exit path a trap kills any process left rooted in the chroot and unmounts
#     anything the host still sees under it (only when unshare was not available).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

SUITE=trixie
# Essential packages come with minbase (bash, coreutils for head, util-linux for unshare,
# dash); the suite also needs: python3 + venv (3.13), mount (tests mount a tmpfs, and
# bind-mount a resolv.conf in a private namespace), ca-certificates (pip, the "system"
# store), openssl (a test asks the CLI for a subject hash).
PACKAGES=python3,python3-venv,ca-certificates,openssl,mount
RECIPE=1   # bump when the build steps below change in a way the package list does not show
CACHE=${CERTSCAN_CI_CACHE:-/var/cache/certscan-ci}

log() { printf '[trixie %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mounts)"
T0=$SECONDS

mkdir -p "$CACHE/debs" "$CACHE/pip"
exec 9>"$CACHE/lock"
flock -w 900 9 || die "another run holds $CACHE/lock"

# --- safety: mounts and processes under a chroot -------------------------------------------
mounts_under() {  # mount points the host's namespace has at or under $1, deepest first
    awk -v root="$1" '{ gsub(/\\040/, " ", $2) } $2 == root || index($2, root "/") == 1 { print $2 }' \
        /proc/mounts | sort -r
}
kill_rooted_in() {  # processes (left by a test, say) whose root directory is the chroot $1
    local dir pid
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid != "$$" && "$(readlink "$dir/root" 2>/dev/null)" == "$1" ]] || continue
        log "killing process $pid left in the chroot: $(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null)"
        kill -KILL "$pid" 2>/dev/null || true
    done
}
release() {  # nothing may stay mounted under $1 or running in it
    local root=$1 point
    kill_rooted_in "$root"
    for point in $(mounts_under "$root"); do
        umount "$point" 2>/dev/null || umount -l "$point" || true
    done
}
remove_tree() {  # rm -rf, only when nothing is mounted under it, and never across filesystems
    local dir=$1
    [[ -n $dir && $dir == "$CACHE"/* ]] || die "refusing to remove $dir"
    release "$dir"
    if [[ -n "$(mounts_under "$dir")" ]]; then
        die "still mounted under $dir, not removing it: $(mounts_under "$dir" | tr '\n' ' ')"
    fi
    rm -rf --one-file-system -- "$dir"
}
ACTIVE=()
JOB_PID=
cleanup() {
    local root i
    if [[ -n $JOB_PID ]] && kill -TERM "$JOB_PID" 2>/dev/null; then  # timeout passes it on
        log "stopping the job"
        for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$JOB_PID" 2>/dev/null && sleep 1; done
    fi
    for root in "${ACTIVE[@]}"; do release "$root"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- host configuration carried into the chroot --------------------------------------------
debian_mirror() {  # the host's Debian archive (not -security), else deb.debian.org
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
            | grep -E '/debian/?$' | head -1 || true)
    [[ -n $uri ]] || uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -E '/debian/?$' | head -1 || true)
    echo "${CERTSCAN_CI_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}
apt_proxy() {  # the host apt's HTTP proxy, if it has one
    local proxy=""
    eval "$(apt-config shell proxy Acquire::http::Proxy 2>/dev/null || true)"
    echo "$proxy"
}
pip_index_env() {
    # The host pip's index settings, as PIP_* variables for pip in the chroot. Only http(s)
    # addresses carry over: file:// indexes and find-links are folders of this host that the
    # chroot does not have (and their wheels are built for the host's Python).
    local host_python
    host_python=$(command -v python3 || true)
    [[ -n $host_python ]] || return 0
    "$host_python" - <<'EOF' 2>/dev/null || true
import shlex, subprocess, sys
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, timeout=60).stdout
except Exception:
    sys.exit(0)
rank = {":env:": 0, "site": 1, "user": 2, "global": 3}
best = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    variant, _, name = key.rpartition(".")
    if name not in ("index-url", "extra-index-url", "trusted-host") or variant not in rank:
        continue
    value = value.strip().strip("'\"")
    if name not in best or rank[variant] < best[name][0]:
        best[name] = (rank[variant], value)
for name, (_, value) in sorted(best.items()):
    words = value.split()
    if name != "trusted-host":
        words = [w for w in words if w.startswith(("http://", "https://"))]
    if words:
        print(f"PIP_{name.upper().replace('-', '_')}={shlex.quote(' '.join(words))}")
EOF
}

# --- the chroot -----------------------------------------------------------------------------
KEY=$(printf '%s\n' "$SUITE" minbase "$PACKAGES" "$RECIPE" | sha256sum | cut -c1-16)
ROOT=$CACHE/$SUITE-$KEY
MARK=.certscan-ci-complete

for stale in "$CACHE"/.build-*; do  # left by a build that was killed (we hold the lock)
    [[ -e $stale ]] || continue
    log "removing an unfinished build: $stale"
    remove_tree "$stale"
done

if [[ -f $ROOT/$MARK ]]; then
    log "cached chroot: $ROOT ($(head -1 "$ROOT/$MARK"))"
else
    if ! command -v debootstrap > /dev/null; then
        log "installing debootstrap"
        timeout 600 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq debootstrap > /dev/null
    fi
    mirror=$(debian_mirror)
    proxy=$(apt_proxy)
    BUILD=$(mktemp -d "$CACHE/.build-$SUITE-$KEY.XXXXXX")
    ACTIVE+=("$BUILD")
    log "building the chroot with debootstrap from $mirror (cold: a minute or two)"
    t=$SECONDS
    # debootstrap mounts proc and sys in the target while it works: in a namespace of its
    # own those mounts can never outlive it on the host (release() covers the fallback).
    private=()
    unshare --mount true 2> /dev/null && private=(unshare --mount --propagation private)
    if ! http_proxy=${http_proxy:-$proxy} timeout 900 "${private[@]}" debootstrap \
            --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
            "$SUITE" "$BUILD" "$mirror" > "$CACHE/debootstrap.log" 2>&1 9>&-; then
        tail -30 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE/debootstrap.log; the partial build is removed next run)"
    fi
    versions=$(chroot "$BUILD" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c \
        'python3 -c "import ssl, sys, venv, ensurepip; print(\"Python\", sys.version.split()[0] + \",\", ssl.OPENSSL_VERSION)"')
    for node in null zero full random urandom tty; do
        [[ -c $BUILD/dev/$node ]] || die "debootstrap made no /dev/$node"
    done
    printf '%s\nbuilt %(%F %T)T from %s in %ss\n' "$versions" -1 "$mirror" $((SECONDS - t)) \
        > "$BUILD/$MARK"
    release "$BUILD"
    mv -T "$BUILD" "$ROOT"   # atomic: the chroot is either complete or not there at all
    ACTIVE=()
    log "built $ROOT in $((SECONDS - t))s: $versions"
fi
ACTIVE+=("$ROOT")
release "$ROOT"   # a run killed without its trap may have left something

# Name resolution and the CA bundle for pip: the host's, fresh each run.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] &&
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"

# The project: the checkout's files as git lists them (a file deleted in the work tree is
# skipped), never the host's venv or caches.
[[ -d $SRC/.git || -f $SRC/.git ]] || die "$SRC is not a git checkout"
remove_tree "$ROOT/src"
mkdir -p "$ROOT/src"
git -C "$SRC" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done \
    | xargs -0 -r cp -a --parents -t "$ROOT/src"
mkdir -p "$ROOT/var/cache/pip"

# --- the job, inside --------------------------------------------------------------------------
ENVIRONMENT=(
    HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LANG=C.UTF-8 TERM=dumb CI="${CI:-}"
    PIP_CACHE_DIR=/var/cache/pip PIP_CERT=/etc/ssl/certs/ca-certificates.crt
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
    PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}"
)
while IFS= read -r line; do
    [[ -n $line ]] && ENVIRONMENT+=("$(eval "printf '%s' $line")")
done < <(pip_index_env)
[[ -n ${PYTEST_ADDOPTS:-} ]] && ENVIRONMENT+=("PYTEST_ADDOPTS=$PYTEST_ADDOPTS")

# shellcheck disable=SC2016  # expanded by the inner shells
JOB='
    set -euo pipefail
    cd /src
    t=$SECONDS
    python3 -m venv .venv
    .venv/bin/pip install --quiet -e ".[test]"
    echo "[trixie] venv and pip install -e .[test]: $((SECONDS - t))s" >&2
    .venv/bin/python -c "import ssl, sys; print(\"[trixie]\", \"Python\", sys.version.split()[0] + \",\", ssl.OPENSSL_VERSION)" >&2
    if [[ ${1:-} == --run ]]; then  # by hand: any command, in /src, with the venv first on PATH
        shift
        PATH=/src/.venv/bin:$PATH exec "$@"
    fi
    # The README s test command:
    exec .venv/bin/pytest "$@"
'
# shellcheck disable=SC2016
SETUP='
    set -euo pipefail
    root=$1 cache=$2; shift 2
    mount --bind "$root" "$root"    # "/" a mount point: `unshare --mount` in a test needs it
    mount -t proc proc "$root/proc"
    mkdir -p "$root/dev/shm" "$root/dev/pts"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
    mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx"   # a pty (pty.openpty) from that instance
    mount --bind "$cache" "$root/var/cache/pip"
    exec chroot "$root" "$@"
'
if unshare --mount true 2> /dev/null; then
    ISOLATE=(unshare --mount --propagation private)
else
    log "unshare --mount is not permitted: mounting in the host's namespace (the trap unmounts)"
    ISOLATE=()
fi

log "running the suite in the chroot (setup so far: $((SECONDS - T0))s)"
INNER=("${ISOLATE[@]}" /bin/bash -c "$SETUP" setup "$ROOT" "$CACHE/pip"
       /usr/bin/env -i "${ENVIRONMENT[@]}" /bin/bash -c "$JOB" job "$@")
set +e
if [[ ${1:-} == --run ]]; then  # by hand, in the foreground: a terminal for a shell
    timeout --foreground 7200 "${INNER[@]}" 9>&-
    status=$?
else
    # In the background, so that a signal to this script is handled at once (bash runs a
    # trap only between commands, and `wait` is one): the trap stops the job. The lock's
    # descriptor is not inherited: a job that outlived us must not hold the next run up.
    timeout --kill-after=30 1500 "${INNER[@]}" 9>&- < /dev/null &
    JOB_PID=$!
    wait "$JOB_PID"
    status=$?
    JOB_PID=
fi
set -e
[[ $status == 124 ]] && log "timed out"
log "done in $((SECONDS - T0))s, exit status $status"
exit "$status"
