"""`make wheel-check`: the wheel as an operator installs it, doing a real pass.

    python -m sandbox.wheel_check [--wheel PATH] [--keep]

1. builds the sdist and, from it, the wheel (`python -m build`), unless ``--wheel`` names one;
2. creates a fresh virtual environment in a temporary directory outside the checkout and installs
   the wheel there (not editable; dependencies from PyPI);
3. starts Azurite and the ARM stand-in (HTTPS) with a small estate: a VM's disk in use, a leftover;
4. from a temporary working directory, with no PYTHONPATH, runs the installed ``vhd-gc`` by its
   absolute path: ``db upgrade``; a complete ``scan`` in delete mode (the leftover is gone from
   Azurite, the VM's disk is not); ``report`` and ``passes``; then ``run`` until its first pass
   completes (read from its log), scrapes ``/metrics`` (``vhdgc_build_info`` with this version) and
   ``/healthz``, and stops it with SIGTERM (exit 0).

Run with the repository's virtual environment (it imports the sandbox, and ``build``). Every wait is
on an event (a process exiting, a log line, an HTTP answer); the limits only catch a hang. Exit
status 0 when every check held, 1 otherwise. Nothing is left running; the temporary directory is
removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from sandbox import arm as armlib
from sandbox import seed
from sandbox.arm import ArmStandIn
from sandbox.azurite import Azurite, free_port

ROOT = Path(__file__).resolve().parent.parent
SUB = "00000000-0000-0000-0000-0000000000c1"
RG = "wheel-rg"
ACCOUNT = "wheelacct1"
# Limits that only catch a hang (a build or an install fetches from PyPI).
BUILD_LIMIT = 900
COMMAND_LIMIT = 600
OK, FAIL = "\u2714", "\u2718"


class CheckFailed(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH or virtual environment of the checkout: the installed wheel must stand alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VHD_GC_CONFIG")}
    env.update(extra)
    return env


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], limit: float = COMMAND_LIMIT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=limit)


def expect(condition: bool, what: str, detail: str = "") -> None:
    if not condition:
        raise CheckFailed(f"{what}" + (f"\n{detail.rstrip()}" if detail else ""))
    say(f"   {OK} {what}")


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="vhd-gc-wheel-check-"))
        if self.tmp.resolve().is_relative_to(ROOT):
            raise SystemExit(f"the temporary directory {self.tmp} is inside the checkout {ROOT}")
        self.work = self.tmp / "work"
        self.work.mkdir()
        self.azurite = Azurite([ACCOUNT], self.tmp / "azurite")
        self.arm = ArmStandIn(page_size=2, cert_dir=str(self.tmp / "arm-cert"))
        self.daemon: subprocess.Popen[str] | None = None

    # -- build and install ------------------------------------------------------------------------

    def wheel(self) -> Path:
        if self.args.wheel:
            return Path(self.args.wheel).resolve()
        say("== build")
        out = self.tmp / "dist"
        built = run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=ROOT, env=clean_env(), limit=BUILD_LIMIT)
        wheels = sorted(out.glob("*.whl"))
        expect(built.returncode == 0 and len(wheels) == 1 and len(list(out.glob("*.tar.gz"))) == 1,
               "python -m build made an sdist and a wheel", built.stdout[-3000:] + built.stderr[-3000:])
        return wheels[0]

    def install(self, wheel: Path) -> Path:
        say(f"== install {wheel.name} into a fresh virtual environment")
        venv = self.tmp / "venv"
        base = getattr(sys, "_base_executable", sys.executable)
        made = run([base, "-m", "venv", str(venv)], cwd=self.tmp, env=clean_env(), limit=BUILD_LIMIT)
        expect(made.returncode == 0, f"python -m venv {venv}", made.stderr)
        pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                  cwd=self.tmp, env=clean_env(), limit=BUILD_LIMIT)
        expect(pip.returncode == 0, "pip install of the wheel (not editable)", pip.stdout[-3000:] + pip.stderr[-3000:])
        where = run([str(venv / "bin" / "python"), "-c", "import gc_daemon.state.db as d; print(d.__file__); print(d.migrations_dir())"],
                    cwd=self.work, env=clean_env())
        lines = where.stdout.split()
        expect(where.returncode == 0 and len(lines) == 2 and all(Path(p).is_relative_to(venv) for p in lines),
               "gc_daemon and its migrations come from the virtual environment, not the checkout", where.stdout + where.stderr)
        return venv / "bin" / "vhd-gc"

    # -- the sandbox ------------------------------------------------------------------------------

    def start_sandbox(self) -> None:
        say("== sandbox: Azurite and the ARM stand-in")
        self.azurite.start()
        self.arm.start()
        endpoint = self.azurite.blob_endpoint(ACCOUNT)
        with self.azurite.service_client(ACCOUNT) as svc:
            seed.page_blob(svc, "vhds", "app-osdisk.vhd", size=4 * 1024 * 1024, written=[(0, 65536)])
            seed.page_blob(svc, "vhds", "leftover.vhd", size=4 * 1024 * 1024, written=[(0, 65536)])
        self.arm.set_estate(armlib.build_estate(
            armlib.vm(SUB, RG, "app", os_vhd=f"{endpoint}/vhds/app-osdisk.vhd"),
            armlib.storage_account(SUB, RG, ACCOUNT, blob_endpoint=endpoint),
            subscriptions=[SUB],
        ))
        self.port = free_port()
        self.config = self.work / "vhd-gc.yaml"
        self.config.write_text(yaml.safe_dump({
            "database_url": "sqlite:///vhd-gc.db",  # relative: the working directory
            "mode": "delete",
            "grace_period": "0s",
            "min_sightings": 1,
            "min_age": "0s",
            "interval": "1h",
            "metrics_listen": f"127.0.0.1:{self.port}",
            "log_format": "json",
            "log_level": "info",
            "blast_radius": {"max_new_share": 1.0},
            "azure": {
                "credential": "emulator",
                "arm_endpoint": self.arm.url,
                "subscriptions": [SUB],
                "storage_accounts": [{"name": ACCOUNT, "blob_endpoint": endpoint, "key_env": "WHEELACCT1_KEY"}],
            },
        }, sort_keys=False))
        self.env = clean_env(WHEELACCT1_KEY=self.azurite.key(ACCOUNT), REQUESTS_CA_BUNDLE=str(self.arm.cert_path))
        say(f"   {OK} Azurite {endpoint}, ARM stand-in {self.arm.url}, working directory {self.work}")

    def exists(self, blob: str) -> bool:
        with self.azurite.service_client(ACCOUNT) as svc:
            return svc.get_blob_client("vhds", blob).exists()

    # -- the installed vhd-gc ---------------------------------------------------------------------

    def vhd_gc(self, exe: Path, *args: str) -> subprocess.CompletedProcess:
        return run([str(exe), "-c", str(self.config), *args], cwd=self.work, env=self.env)

    def commands(self, exe: Path) -> None:
        from gc_daemon import __version__

        say(f"== {exe} from {self.work}")
        version = run([str(exe), "--version"], cwd=self.work, env=self.env)
        expect(version.returncode == 0 and version.stdout.strip() == f"vhd-gc, version {__version__}",
               f"vhd-gc --version: {version.stdout.strip()}", version.stderr)
        upgraded = self.vhd_gc(exe, "db", "upgrade")
        expect(upgraded.returncode == 0 and "(was empty)" in upgraded.stdout,
               f"vhd-gc db upgrade: {upgraded.stdout.strip()}", upgraded.stderr)
        scanned = self.vhd_gc(exe, "scan", "--no-progress")
        complete = [line for line in scanned.stdout.splitlines() if line.startswith("pass ") and " complete: " in line]
        expect(scanned.returncode == 0 and len(complete) == 1,
               f"vhd-gc scan exits 0: {complete[0] if complete else '(no complete pass)'}", scanned.stdout + scanned.stderr)
        expect(not self.exists("leftover.vhd"), "the leftover is gone from Azurite")
        expect(self.exists("app-osdisk.vhd"), "the VM's disk is still in Azurite")
        reported = self.vhd_gc(exe, "report", "--format", "json")
        rows = {r["blob"]: r["state"] for r in json.loads(reported.stdout)} if reported.returncode == 0 else {}
        expect(rows.get("leftover.vhd") == "deleted" and "app-osdisk.vhd" not in rows,
               f"vhd-gc report: {rows}", reported.stderr)
        passes = self.vhd_gc(exe, "passes")
        outcomes = [line.split()[2] for line in passes.stdout.splitlines() if line.startswith("#")]
        expect(passes.returncode == 0 and outcomes == ["complete"], f"vhd-gc passes: {outcomes}", passes.stdout + passes.stderr)

    def daemon_run(self, exe: Path) -> None:
        from gc_daemon import __version__

        say("== vhd-gc run")
        events: queue.Queue[dict | None] = queue.Queue()
        self.daemon = subprocess.Popen([str(exe), "-c", str(self.config), "run"], cwd=self.work, env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        log: list[str] = []

        def read() -> None:
            assert self.daemon is not None and self.daemon.stderr is not None
            for line in self.daemon.stderr:
                log.append(line)
                try:
                    events.put(json.loads(line))
                except ValueError:
                    pass
            events.put(None)  # the process closed its stderr: it ended

        threading.Thread(target=read, name="daemon-log", daemon=True).start()

        def wait_for(name: str) -> dict:
            deadline = time.monotonic() + COMMAND_LIMIT
            while True:
                try:
                    event = events.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise CheckFailed(f"no {name} in {COMMAND_LIMIT} s", "".join(log[-40:])) from None
                if event is None:
                    raise CheckFailed(f"vhd-gc run ended before {name}", "".join(log[-40:]))
                if event.get("event") in ("pass_incomplete", "pass_failed_end", "pass_crashed"):
                    raise CheckFailed(f"vhd-gc run: {event.get('event')}", "".join(log[-40:]))
                if event.get("event") == name:
                    return event

        started = wait_for("daemon_started")
        expect(started.get("listen") == f"127.0.0.1:{self.port}", f"daemon_started, listening on {started.get('listen')}")
        done = wait_for("pass_complete")
        expect(True, f"pass_complete (pass {done.get('pass_id')})")
        local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
        metrics = local.open(f"http://127.0.0.1:{self.port}/metrics", timeout=60).read().decode()
        info = [line for line in metrics.splitlines() if line.startswith("vhdgc_build_info{")]
        expect(len(info) == 1 and f'version="{__version__}"' in info[0] and info[0].endswith(" 1.0"),
               f"/metrics: {info[0] if info else '(no vhdgc_build_info)'}", metrics[-2000:])
        with local.open(f"http://127.0.0.1:{self.port}/healthz", timeout=60) as health:
            expect(health.status == 200, f"/healthz: {health.status}")
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(timeout=COMMAND_LIMIT)
        expect(code == 0, f"SIGTERM: vhd-gc run exits {code}", "".join(log[-40:]))
        self.daemon = None

    # -- all --------------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        self.arm.stop()
        self.azurite.stop()
        if self.args.keep:
            say(f"   kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def main(self) -> int:
        t0 = time.monotonic()
        try:
            exe = self.install(self.wheel())
            self.start_sandbox()
            self.commands(exe)
            self.daemon_run(exe)
        except CheckFailed as exc:
            say(f"   {FAIL} {exc}")
            say(f"wheel check FAILED after {time.monotonic() - t0:.0f} s")
            return 1
        finally:
            self.stop()
        say(f"wheel check passed in {time.monotonic() - t0:.0f} s")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help="install this wheel instead of building one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return Check(parser.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
