"""vhd-gc as a package: the sdist and wheel `python -m build` makes, what the wheel carries (the
schema migrations, every package of the tree, one version), and the wheel installed into a fresh
virtual environment outside the tree, run from a directory that is not the tree: `db upgrade`,
`scan` and `report` against Azurite and the ARM stand-in. The version in the User-Agent of every
request, ARM and Storage alike, read from the requests themselves (the stand-in's request log and a
recording proxy in front of Azurite), and the vhdgc_build_info metric.

The wheel is built once per session and installed once (dependencies from PyPI, as `make
wheel-check` does); `make wheel-check` (sandbox/wheel_check.py) also runs the installed daemon.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import gc_daemon
from gc_daemon import USER_AGENT, __version__
from sandbox import arm as armlib
from sandbox.faultproxy import Forward, FaultProxy, Rule
from tests.support.estate import SUB

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 600  # only catches a hang: the build and the install fetch from PyPI


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process that must run the installed wheel, not the tree: no PYTHONPATH
    (the tests' own points at the checkout), no virtual environment of ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VHD_GC_CONFIG")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build` of the checkout: an sdist, and a wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=_clean_env(),
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="session")
def installed(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (outside the checkout) with the wheel installed, not editable.
    Returns its bin/ directory."""
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.resolve().is_relative_to(ROOT)
    base_python = getattr(sys, "_base_executable", sys.executable)
    made = subprocess.run([base_python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert made.returncode == 0, made.stderr
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(dist["wheel"])],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=_clean_env(),
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return venv / "bin"


def tree_packages() -> set[str]:
    return {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "gc_daemon").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


# -- what the build makes -------------------------------------------------------------------------


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gc_daemon.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert USER_AGENT == f"vhd-gc/{__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), "CHANGELOG.md has no section for this version"


def test_the_wheel_carries_the_migrations_and_every_package(dist):
    assert dist["wheel"].name == f"vhd_gc-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"vhd_gc-{__version__}.dist-info/METADATA").decode()
        entry_points = whl.read(f"vhd_gc-{__version__}.dist-info/entry_points.txt").decode()
    # Every migration file of the tree, and nothing but them, under gc_daemon/_migrations.
    tree_migrations = {
        "gc_daemon/_migrations/" + p.relative_to(ROOT / "migrations").as_posix()
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "gc_daemon/_migrations/env.py" in tree_migrations
    assert "gc_daemon/_migrations/script.py.mako" in tree_migrations
    assert any(n.startswith("gc_daemon/_migrations/versions/0001_") for n in tree_migrations)
    assert {n for n in names if n.startswith("gc_daemon/_migrations/")} == tree_migrations
    # Every package of the tree, each with all its modules (pyproject lists them by hand).
    for package in tree_packages():
        folder = ROOT.joinpath(*package.split("."))
        for module in folder.glob("*.py"):
            assert f"{package.replace('.', '/')}/{module.name}" in names, f"{package}: {module.name} is not in the wheel"
    # Nothing of the tree that is not the package: tests, sandbox, bench, the top-level migrations.
    tops = {n.split("/")[0] for n in names}
    assert tops == {"gc_daemon", f"vhd_gc-{__version__}.dist-info"}, tops
    assert re.search(rf"^Version: {re.escape(__version__)}$", metadata, re.M)
    assert re.search(r"^vhd-gc = gc_daemon\.cli:main$", entry_points, re.M)


def test_the_sdist_carries_the_migrations_where_the_tree_has_them(dist):
    prefix = f"vhd_gc-{__version__}/"
    with tarfile.open(dist["sdist"]) as sdist:
        names = set(sdist.getnames())
    for needed in ("pyproject.toml", "alembic.ini", "CHANGELOG.md", "migrations/env.py",
                   "migrations/script.py.mako", "gc_daemon/__init__.py", "deploy/systemd/vhd-gc.service",
                   "deploy/container/Dockerfile", "config/example.yaml", "docs/operations.md"):
        assert prefix + needed in names, needed
    assert any(n.startswith(prefix + "migrations/versions/0001_") for n in names)


# -- the installed wheel, run from a directory that is not the tree --------------------------------


def vhd_gc(bin_dir: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "vhd-gc"), *args], capture_output=True, text=True, cwd=cwd, timeout=120, env=_clean_env(**(env or {})),
    )


def test_the_installed_wheel_is_what_runs_and_upgrades_a_database(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(installed / "python"), "-c", "import gc_daemon.state.db as d; print(d.__file__); print(d.migrations_dir())"],
        capture_output=True, text=True, cwd=work, timeout=60, env=_clean_env(),
    )
    assert where.returncode == 0, where.stderr
    module, migrations = where.stdout.split()
    site = installed.parent / "lib"
    assert Path(module).is_relative_to(site) and Path(migrations).is_relative_to(site), where.stdout
    assert Path(migrations).name == "_migrations"

    versioned = vhd_gc(installed, "--version", cwd=work)
    assert versioned.returncode == 0, versioned.stderr
    assert versioned.stdout.strip() == f"vhd-gc, version {__version__}"

    db = work / "state.db"
    config = work / "vhd-gc.yaml"
    config.write_text(yaml.safe_dump({
        "database_url": "sqlite:///state.db",  # relative: in the working directory
        "azure": {
            "credential": "emulator",
            "arm_endpoint": "https://127.0.0.1:9",
            "subscriptions": [SUB],
            "storage_accounts": [{"name": "offacct1", "blob_endpoint": "http://127.0.0.1:9/offacct1"}],
        },
    }))
    from gc_daemon.state.db import head_revision

    head = head_revision()
    upgraded = vhd_gc(installed, "-c", str(config), "db", "upgrade", cwd=work)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database at {head} (was empty)"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    again = vhd_gc(installed, "-c", str(config), "db", "upgrade", cwd=work)
    assert again.returncode == 0, again.stderr
    reported = vhd_gc(installed, "-c", str(config), "report", "--format", "json", cwd=work)
    assert reported.returncode == 0, reported.stderr
    assert json.loads(reported.stdout) == []
    assert not (work / "alembic.ini").exists() and not list(work.glob("migrations"))


def test_the_installed_wheel_runs_a_complete_pass(installed, gc, tmp_path):
    """A scan by the installed wheel's console script, from a directory of its own, against Azurite
    and the ARM stand-in: exit 0, a complete pass, and the leftover reported due."""
    kept = gc.page("vhds", "in-use.vhd")
    left = gc.page("vhds", "left.vhd")
    gc.compute(armlib.vm(SUB, "rg1", "vm1", os_vhd=kept))
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {f"{a.upper()}_KEY": gc.azurite.key(a) for a in ("gcacct1", "gcacct2")}
    env["REQUESTS_CA_BUNDLE"] = str(gc.arm.cert_path)
    scanned = vhd_gc(installed, "-c", str(gc.config_path), "scan", "--no-progress", cwd=work, env=env)
    assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    assert re.search(r"^pass \d+ complete: ", scanned.stdout, re.M), scanned.stdout
    reported = vhd_gc(installed, "-c", str(gc.config_path), "report", "--format", "json", cwd=work, env=env)
    assert reported.returncode == 0, reported.stderr
    states = {r["url"]: r["state"] for r in json.loads(reported.stdout)}
    assert states.get(left) == "due" and kept not in states, states
    passes = vhd_gc(installed, "-c", str(gc.config_path), "passes", cwd=work, env=env)
    assert passes.returncode == 0 and re.search(r"^#\d+\s+\d+\s+complete\b", passes.stdout, re.M), passes.stdout


# -- the version on the wire and in the metrics ---------------------------------------------------


@pytest.mark.parametrize("reader", ["lean", "sdk"])
def test_every_request_carries_the_version_in_its_user_agent(gc, reader):
    """A delete-mode scan (a separate process) reads ARM through the management SDK and arm_list, and
    Storage through the lean reader or the SDK, and deletes through the SDK: every request, as the
    stand-in and a recording proxy in front of Azurite received it, starts its User-Agent with
    vhd-gc/<version>."""
    seen: list[tuple[str, str, str | None]] = []

    def record(request) -> None:
        ua = next((v for k, v in request.headers if k.lower() == "user-agent"), None)
        seen.append((request.method, request.path, ua))

    with FaultProxy(("127.0.0.1", gc.azurite.port)) as proxy:
        proxy.add(Rule(Forward(), times=None, on_request=record))
        gc.configure(mode="delete", azure={
            "storage_reader": reader,
            "storage_accounts": [
                {"name": a, "blob_endpoint": proxy.endpoint(a), "key_env": f"{a.upper()}_KEY"} for a in ("gcacct1", "gcacct2")
            ],
        })
        kept = gc.page("vhds", "in-use.vhd")
        left = gc.page("vhds", "left.vhd")
        gc.compute(
            armlib.vm(SUB, "rg1", "vm1", os_vhd=kept.replace(gc.azurite.blob_endpoint("gcacct1"), proxy.endpoint("gcacct1"))),
            armlib.recovery_vault(SUB, "rg1", "vault1"),
        )
        gc.arm.clear_requests()
        scanned = subprocess.run(
            [sys.executable, "-m", "gc_daemon", "-c", str(gc.config_path), "scan", "--no-progress"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )
        assert scanned.returncode == 0, scanned.stdout + scanned.stderr
    assert not gc.exists("vhds", "left.vhd") and gc.exists("vhds", "in-use.vhd"), left

    prefix = USER_AGENT + " "
    storage = list(seen)
    assert storage, "no Storage request went through the proxy"
    assert any(m == "GET" and "comp=list" in p for m, p, _ in storage), storage
    assert any(m == "DELETE" for m, _, _ in storage), storage
    for method, path, ua in storage:
        assert ua and ua.startswith(prefix), (method, path, ua)
    assert any("azsdk-python-storage-blob/" in ua for _, _, ua in storage)

    arm_requests = list(zip(gc.arm.requests, gc.arm.user_agents, strict=True))
    assert any("/virtualMachines" in p for (_, p), _ in arm_requests), arm_requests  # the SDK's operations
    assert any("Microsoft.RecoveryServices/vaults" in p for (_, p), _ in arm_requests), arm_requests  # arm_list
    for (method, path), ua in arm_requests:
        assert ua and ua.startswith(prefix), (method, path, ua)
    assert any("azsdk-python-mgmt-compute/" in ua for _, ua in arm_requests)


def test_build_info_metric(tmp_path):
    from gc_daemon.config import Config
    from gc_daemon.metrics import Metrics
    from gc_daemon.wiring import open_store

    config = Config.model_validate({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"subscriptions": [SUB], "storage_accounts": [{"name": "gcacct1"}]},
    })
    metrics = Metrics(open_store(config), config)
    labels = {"version": __version__, "python": platform.python_version()}
    assert metrics.registry.get_sample_value("vhdgc_build_info", labels) == 1
    families = [f for f in metrics.registry.collect() if f.name == "vhdgc_build_info"]
    assert len(families) == 1 and [s.labels for s in families[0].samples] == [labels]
    assert gc_daemon.__version__ == __version__
