# Sourced by bench/run and bench/setup.sh: which Python runs the benchmark.
# $PYTHON if set; else the active virtualenv; else a venv in or beside the repo; else the
# interpreter of a `certscan` on PATH; else python3.
bench_python() {
    local here repo candidate shebang
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname "$here")
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        echo "$VIRTUAL_ENV/bin/python"; return
    fi
    for candidate in "$repo/.venv" "$repo/venv" "$(dirname "$repo")/venv"; do
        if [ -x "$candidate/bin/python" ]; then echo "$candidate/bin/python"; return; fi
    done
    if command -v certscan >/dev/null 2>&1; then
        shebang=$(head -1 "$(command -v certscan)")
        candidate=${shebang#\#!}
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    fi
    echo python3
}
