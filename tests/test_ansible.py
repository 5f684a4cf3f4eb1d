"""ansible/: lint (production profile), syntax, rendering each inventory (golden files for the lab),
and the playbook applied for real to a Debian root made by debootstrap, through Ansible's chroot
connection: venv and units installed, every unit verified by systemd-analyze, the config accepted
by matchwire, `matchwire doctor --json` run inside it, a second run changing nothing, and the
handlers restarting only what a change touched (partitions held back during trading hours).

Needs ansible-core, ansible (for community.general's chroot connection and ansible.posix) and
ansible-lint in MATCHWIRE_ANSIBLE_VENV (default .venv-ansible; .ci/run makes it), debootstrap, and
root. The debootstrap root is cached outside the repo (MATCHWIRE_DEBOOTSTRAP_CACHE, default
/var/cache/matchwire-ci): a clean machine builds it once (about a minute), every run copies it.
Skipped where these are missing, unless MATCHWIRE_REQUIRE_ANSIBLE is set (CI), which makes a
missing piece a failure.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from appliance.config import load

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "ansible"
DATA = Path(__file__).parent / "data" / "ansible"
VAULT_PASS = DATA / "vault-pass.txt"
GOLDEN_LAB = DATA / "golden" / "lab"
VENV = Path(os.environ.get("MATCHWIRE_ANSIBLE_VENV", ROOT / ".venv-ansible"))
REQUIRE = bool(os.environ.get("MATCHWIRE_REQUIRE_ANSIBLE"))
CACHE = Path(os.environ.get("MATCHWIRE_DEBOOTSTRAP_CACHE", "/var/cache/matchwire-ci"))
# What the root holds besides minbase: the interpreter for Ansible's modules (python3, python3-apt),
# venv, the time zones the config names, systemd (units, systemd-analyze), the packages the
# install role asks for.
INCLUDE = "python3,python3-apt,python3-venv,tzdata,systemd,ethtool,irqbalance"
# Variables that keep the play off what a chroot cannot do (sysctl apply, grub, services); their
# files are still written and checked here.
CHROOT_VARS = {"matchwire_host_apply": False, "matchwire_units_manage_services": False,
               "matchwire_doctor_enforce": False}
# Files of the lab host that do not depend on the inventory (not in the golden set).
STATIC = {"etc/systemd/journald.conf.d/60-matchwire.conf", "etc/systemd/system/matchwire-host-tuning.service",
          "usr/local/sbin/matchwire-host-tuning"}


def missing(what: str) -> None:
    if REQUIRE:
        pytest.fail(f"MATCHWIRE_REQUIRE_ANSIBLE is set but {what}")
    pytest.skip(what)


def tool(name: str) -> str:
    path = VENV / "bin" / name
    if not path.exists():
        missing(f"{path} is not installed (.ci/run installs it)")
    return str(path)


def ansible_env() -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PY_COLORS="0", PYTHONWARNINGS="ignore")
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '')}"
    return env


def playbook(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("ansible-playbook"), "--vault-password-file", str(VAULT_PASS), *args],
                          cwd=ANSIBLE, env=ansible_env(), capture_output=True, text=True, timeout=timeout)


def recap(out: str) -> dict[str, int]:
    m = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert m, out[-3000:]
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups())))


def render(inventory: str, out: Path) -> None:
    r = playbook("-i", f"inventories/{inventory}/hosts.yml", "render.yml", "-e", f"render_dir={out}")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def files_under(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


# -- lint and syntax ----------------------------------------------------------------------------------
def test_the_install_role_compiles_with_the_mypy_the_project_pins() -> None:
    """The role compiles the modules appliance/build.py names, with the mypy pyproject.toml pins."""
    pinned = re.search(r'"mypy==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    defaults = (ROOT / "ansible/roles/matchwire_install/defaults/main.yml").read_text()
    assert pinned is not None and f'matchwire_install_mypy_version: "{pinned.group(1)}"' in defaults
    tasks = (ROOT / "ansible/roles/matchwire_install/tasks/main.yml").read_text()
    assert "-m appliance.build modules" in tasks and "-m appliance.build kind" in tasks
    assert "compiled_modules" not in defaults + tasks      # no second list of them


def test_ansible_lint_production_profile() -> None:
    r = subprocess.run([tool("ansible-lint"), "--profile", "production"],      # the whole directory
                       cwd=ANSIBLE, env=ansible_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr


@pytest.mark.parametrize("inventory", ["lab", "production"])
@pytest.mark.parametrize("book", ["site.yml", "render.yml"])
def test_syntax_check(inventory: str, book: str) -> None:
    r = playbook("-i", f"inventories/{inventory}/hosts.yml", book, "--syntax-check")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ERROR" not in r.stderr


# -- rendering each inventory --------------------------------------------------------------------------
def test_lab_inventory_renders_the_golden_files(tmp_path: Path) -> None:
    render("lab", tmp_path)
    got = files_under(tmp_path / "lab1")
    want = files_under(GOLDEN_LAB / "lab1")
    assert set(got) == set(want) | STATIC
    for name, text in want.items():
        assert got[name] == text, name
    cfg = load(str(tmp_path / "lab1" / "etc/matchwire/matchwire.toml"))
    assert [(p.name, p.cpu) for p in cfg.partitions] == [("p0", 2), ("p1", 3)]
    assert {f.name: f.fix.password for f in cfg.firms} == {"ALFA": "alfa-fix-pw", "BRVO": "brvo-fix-pw"}
    assert cfg.warnings == ()


@pytest.mark.timeout(900)
def test_production_inventory_renders_each_host(tmp_path: Path) -> None:
    render("production", tmp_path)
    hosts = {p.name: files_under(p) for p in tmp_path.iterdir()}
    assert set(hosts) == {"gw-a", "gw-b", "mx-primary", "mx-standby", "etcd-1", "etcd-2", "etcd-3"}
    units = {h: sorted(f for f in fs if f.startswith("etc/systemd/system/matchwire-") and "host-tuning" not in f)
             for h, fs in hosts.items()}
    assert units["gw-a"] == ["etc/systemd/system/matchwire-gateway-gwa.service"]
    assert units["gw-b"] == ["etc/systemd/system/matchwire-gateway-gwb.service"]
    assert units["mx-primary"] == [f"etc/systemd/system/matchwire-{u}.service" for u in
                                   ("partition-p0", "partition-p1", "partition-p2", "retransmit", "snapshot")]
    assert units["mx-standby"] == units["mx-primary"]
    for h in ("gw-a", "gw-b", "mx-primary", "mx-standby"):
        cfg = load(str(tmp_path / h / "etc/matchwire/matchwire.toml"))
        addr = {"gw-a": "10.10.0.11", "gw-b": "10.10.0.12", "mx-primary": "10.10.0.21", "mx-standby": "10.10.0.22"}[h]
        assert cfg.market_data.interface == addr and cfg.admin.bind == addr
        assert cfg.market_data.ttl == 16 and any("ttl" in w for w in cfg.warnings)
        assert [g.bind for g in cfg.gateways] == ["10.10.0.11", "10.10.0.12"]
        assert cfg.retransmit.bind == "10.10.0.21"
        assert {f.name: f.ouch.password for f in cfg.firms} == {"ALFA": "alfa-p1", "BRVO": "brvo-p1", "CHRL": "chrl-p1"}
        assert [(p.name, p.cpu, p.idle) for p in cfg.partitions] == [("p0", 2, "busy_spin"), ("p1", 4, "busy_spin"),
                                                                      ("p2", 6, "busy_spin")]
        # production runs the pipelined partition: feed and WAL stages spinning on a core of their own
        assert [(p.feed_stage, p.wal_stage, p.stage_idle, p.stage_cpu) for p in cfg.partitions] == [
            ("process", "process", "busy_spin", c) for c in (3, 5, 7)]
    # the partition host isolates the matchers' and their stages' CPUs; the gateway hosts isolate nothing
    assert "isolcpus=managed_irq,domain,2,3,4,5,6,7 " in hosts["mx-primary"]["etc/default/grub.d/60-matchwire.cfg"]
    assert "etc/default/grub.d/60-matchwire.cfg" not in hosts["gw-a"]
    p0 = hosts["mx-primary"]["etc/systemd/system/matchwire-partition-p0.service"]
    assert "CPUAffinity=2 3\n" in p0 and "RestartPreventExitStatus=74 78\n" in p0 and "LimitMEMLOCK=infinity\n" in p0
    assert "net.ipv4.conf.ens2f0.rp_filter = 2" in hosts["mx-primary"]["etc/sysctl.d/60-matchwire.conf"]
    etcd = hosts["etcd-2"]["etc/default/etcd"]
    assert 'ETCD_NAME="etcd-2"' in etcd
    assert ('ETCD_INITIAL_CLUSTER="etcd-1=http://10.10.0.31:2380,etcd-2=http://10.10.0.32:2380,'
            'etcd-3=http://10.10.0.33:2380"') in etcd


def test_site_refuses_gateways_apart_from_their_partitions() -> None:
    """The production layout puts gateways on their own hosts; the appliance's rings are shared
    memory, so the play stops before touching any host and says why."""
    r = playbook("-i", "inventories/production/hosts.yml", "site.yml")
    assert r.returncode != 0
    assert "shared-memory rings" in r.stdout and "gateway gwa on gw-a" in r.stdout
    assert recap(r.stdout)["changed"] == 0


# -- applied to a debootstrap root -----------------------------------------------------------------------
def debian_mirror() -> tuple[str, str]:
    """The Debian mirror apt uses here (sources.list or deb822 .sources) and this host's suite."""
    suite = "bookworm"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                suite = line.split("=", 1)[1].strip('"') or suite
    except OSError:
        pass
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(p.read_text())
        except OSError:
            continue
    for text in texts:
        for block in text.split("\n\n"):
            uris = re.findall(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.findall(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and suite in suites[0].split() and "security" not in uris[0]:
                return uris[0], suite
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == suite and "security" not in m.group(1):
                return m.group(1), suite
    return "http://deb.debian.org/debian", suite


def debootstrap_root() -> Path:
    """The cached minbase root (built once, atomically; a lock keeps two builders apart)."""
    if os.geteuid() != 0:
        missing("chroot and debootstrap need root")
    if not shutil.which("debootstrap"):
        missing("debootstrap is not installed (.ci/run installs it)")
    mirror, suite = debian_mirror()
    key = hashlib.sha256(f"{suite} {mirror} {INCLUDE}".encode()).hexdigest()[:12]
    root = CACHE / f"debootstrap-{suite}-minbase-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            tmp = root.with_name(root.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            t0 = time.monotonic()
            r = subprocess.run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", suite, str(tmp), mirror],
                               capture_output=True, text=True, timeout=1200)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            (tmp / ".complete").write_text(f"{suite} {mirror} {INCLUDE} built in {time.monotonic() - t0:.0f} s\n")
            tmp.rename(root)
            print(f"debootstrap {suite} minbase from {mirror}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return root


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tool("ansible-playbook")
    cache = debootstrap_root()
    work = tmp_path_factory.mktemp("chroot")
    root = work / "root"
    subprocess.run(["cp", "-a", str(cache), str(root)], check=True, timeout=600)
    inv = work / "chroot.yml"
    inv.write_text("all:\n  hosts:\n    lab1:\n      ansible_connection: community.general.chroot\n"
                   f"      ansible_host: {root}\n      ansible_python_interpreter: /usr/bin/python3\n")
    state: dict[str, object] = {"root": root, "inv": inv}

    def apply(**extra: object) -> subprocess.CompletedProcess[str]:
        return playbook("-i", "inventories/lab/hosts.yml", "-i", str(inv), "site.yml",
                        "-e", json.dumps({**CHROOT_VARS, "matchwire_units_in_trading_hours": False, **extra}))

    state["apply"] = apply
    t0 = time.monotonic()
    first = apply()
    state["first"] = first
    print(f"first apply: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    try:
        yield state
    finally:
        shutil.rmtree(work, ignore_errors=True)


def in_root(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(1500)   # the fixture builds the debootstrap root on a clean machine
def test_apply_installs_the_venv_and_units(chroot: dict[str, object]) -> None:
    first = chroot["first"]
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    assert recap(first.stdout)["failed"] == 0 and recap(first.stdout)["changed"] > 0
    root = Path(str(chroot["root"]))
    venv = root / "opt/matchwire/venv"
    assert venv.is_symlink() and os.readlink(venv).startswith("/opt/matchwire/venvs/")
    assert (root / os.readlink(venv).lstrip("/") / "bin/matchwire").exists()
    r = in_root(root, "/opt/matchwire/venv/bin/python", "-c", "import appliance, feeds, retransmit, psutil; print('ok')")
    assert r.stdout.strip() == "ok", r.stderr
    units = sorted(p.name for p in (root / "etc/systemd/system").glob("matchwire*"))
    assert units == ["matchwire-gateway-gw0.service", "matchwire-host-tuning.service", "matchwire-partition-p0.service",
                     "matchwire-partition-p1.service", "matchwire-retransmit.service", "matchwire-snapshot.service",
                     "matchwire.target", "matchwire.target.wants"]
    assert sorted(p.name for p in (root / "etc/systemd/system/matchwire.target.wants").iterdir()) == [
        "matchwire-gateway-gw0.service", "matchwire-partition-p0.service", "matchwire-partition-p1.service",
        "matchwire-retransmit.service", "matchwire-snapshot.service"]
    # the installed files are the lab's golden files
    for name, text in files_under(GOLDEN_LAB / "lab1").items():
        assert (root / name).read_text() == text, name
    assert "matchwire:" in (root / "etc/passwd").read_text()
    assert (root / "var/lib/matchwire/state").is_dir()


@pytest.mark.timeout(1500)
def test_systemd_analyze_verifies_every_unit(chroot: dict[str, object]) -> None:
    root = Path(str(chroot["root"]))
    units = sorted((root / "etc/systemd/system").glob("matchwire*.service")) + [root / "etc/systemd/system/matchwire.target"]
    assert len(units) == 7
    for u in units:
        inside = "/" + str(u.relative_to(root))
        r = in_root(root, "systemd-analyze", "verify", inside)      # the Debian systemd the units run under
        assert r.returncode == 0 and r.stderr.strip() == "", (inside, r.stderr)
        if shutil.which("systemd-analyze"):                           # and the host's, over the root
            r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(u)],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0 and r.stderr.strip() == "", (inside, r.stderr)


@pytest.mark.timeout(1500)
def test_rendered_config_passes_matchwire_validation(chroot: dict[str, object]) -> None:
    root = Path(str(chroot["root"]))
    r = in_root(root, "/opt/matchwire/venv/bin/matchwire", "config", "check", "/etc/matchwire/matchwire.toml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok: 3 instruments, 2 partitions, 1 gateways, 2 firms"
    mode = (root / "etc/matchwire/matchwire.toml").stat().st_mode & 0o777
    assert mode == 0o640     # secrets: root and the matchwire group only


@pytest.mark.timeout(1500)
def test_doctor_runs_inside_the_root(chroot: dict[str, object]) -> None:
    root = Path(str(chroot["root"]))
    r = in_root(root, "/opt/matchwire/venv/bin/matchwire", "doctor", "--json", "--config", "/etc/matchwire/matchwire.toml")
    out = json.loads(r.stdout)
    assert r.returncode == out["exit"] and len(out["checks"]) == 11
    by = {c["check"]: c for c in out["checks"]}
    # no /proc or /sys in the root: the doctor says what it could not read instead of guessing
    assert by["smt_siblings"]["unread"] and by["smt_siblings"]["status"] == "warn"
    first = chroot["first"]
    assert isinstance(first, subprocess.CompletedProcess)
    assert "TASK [matchwire_doctor : Run matchwire doctor against the installed configuration]" in first.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_second_run_changes_nothing_and_handlers_restart_only_what_changed(chroot: dict[str, object]) -> None:
    apply = chroot["apply"]
    root = Path(str(chroot["root"]))
    assert callable(apply)
    second = apply()
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout)["changed"] == 0, [ln for ln in second.stdout.splitlines() if ln.startswith(("TASK", "changed"))]
    assert "matchwire restart:" not in second.stdout

    # A change to the partitions' units and to the gateway/server units, during trading hours:
    # the gateway and servers restart, the partitions wait for the close (remembered on the host).
    wheels = {"matchwire_install_wheels_from": str(ROOT / "build" / "wheelhouse")}   # built by the first run
    third = apply(**wheels, matchwire_units_rt_priority=11, matchwire_housekeeping_cpus=[0],
                  matchwire_units_in_trading_hours=True)
    assert third.returncode == 0, third.stdout[-4000:]
    msg = " ".join(third.stdout.split())
    assert ("matchwire restart: [matchwire-gateway-gw0.service, matchwire-retransmit.service, "
            "matchwire-snapshot.service]; after the close: [matchwire-partition-p0.service, "
            "matchwire-partition-p1.service]") in msg
    pending = root / "var/lib/matchwire/state/restart-pending"
    assert pending.read_text().split() == ["matchwire-partition-p0.service", "matchwire-partition-p1.service"]

    # After the close the next run does the restarts that waited, and forgets them.
    fourth = apply(**wheels, matchwire_units_rt_priority=11, matchwire_housekeeping_cpus=[0])
    assert fourth.returncode == 0, fourth.stdout[-4000:]
    assert not pending.exists()
    assert recap(fourth.stdout)["changed"] == 1      # the pending file removed; nothing else
