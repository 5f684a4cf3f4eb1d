"""`matchwire doctor`: each sans-IO check over files captured from a real host (tests/data/doctor/
firecracker-2cpu: a 2-CPU Firecracker guest, eth0 on virtio2) and crafted variants; the command
end to end on this machine."""
from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import doctor as D

HOST = Path(__file__).parent / "data" / "doctor" / "firecracker-2cpu"
ROOT = Path(__file__).resolve().parents[1]


def real(path: str) -> str:
    return (HOST / path.lstrip("/")).read_text()


def test_cpu_lists_round_trip() -> None:
    assert D.cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert D.cpu_list("") == set() and D.cpu_list(None) == set()
    assert D.fmt_cpus({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert D.isolcpus_list("managed_irq,domain,2-3,5") == {2, 3, 5}
    assert D.cmdline_params("quiet isolcpus=2 -- --init-arg=1")["isolcpus"] == "2"
    assert "--init-arg" not in D.cmdline_params("quiet isolcpus=2 -- --init-arg=1")


# -- isolated CPUs ---------------------------------------------------------------------------------
def test_isolated_cpus_real_host_has_none() -> None:
    f = D.check_isolated_cpus({"p0": -1}, real("/proc/cmdline"), real("/sys/devices/system/cpu/isolated"),
                              None, real("/sys/devices/system/cpu/online"))
    assert f.status == D.WARN
    assert "p0 on CPU 1" in f.detail and "no CPU is isolated" in f.detail
    assert "isolcpus=managed_irq,domain,1 nohz_full=1 rcu_nocbs=1" in f.fix


def test_isolated_cpus_busy_spin_on_a_shared_core_fails() -> None:
    f = D.check_isolated_cpus({"p0": 1}, real("/proc/cmdline"), "\n", None, "0-1\n", busy_spin=("p0",))
    assert f.status == D.FAIL and "busy-spin" in f.detail


def test_isolated_cpus_fully_isolated_passes() -> None:
    cmd = "BOOT_IMAGE=/vmlinuz isolcpus=managed_irq,domain,2-3 nohz_full=2-3 rcu_nocbs=2-3 quiet\n"
    f = D.check_isolated_cpus({"p0": 2, "p1": 3}, cmd, "2-3\n", "2-3\n", "0-3\n")
    assert f.status == D.PASS, f
    # -1 resolves to the last isolated CPU, as the daemon does
    assert D.check_isolated_cpus({"p0": -1}, cmd, "2-3\n", "2-3\n", "0-3\n").detail.startswith("p0 on CPU 3")


def test_isolated_cpus_without_nohz_full_warns() -> None:
    f = D.check_isolated_cpus({"p0": 3}, "isolcpus=3\n", "3\n", "\n", "0-3\n")
    assert f.status == D.WARN and "nohz_full" in f.detail


def test_isolated_cpus_from_the_command_line_when_sys_lacks_the_file() -> None:
    f = D.check_isolated_cpus({"p0": 3}, "isolcpus=domain,3 nohz_full=3 rcu_nocbs=3", None, None, "0-3")
    assert f.status == D.PASS


def test_isolated_cpus_offline_or_shared_cpu_fails() -> None:
    assert D.check_isolated_cpus({"p0": 7}, "", "", None, "0-1").status == D.FAIL
    f = D.check_isolated_cpus({"p0": 3, "p1": 3}, "", "3", "3", "0-3")
    assert f.status == D.FAIL and "several partitions" in f.detail
    assert D.check_isolated_cpus({"p0": 0}, "", "", None, "0-3").status == D.WARN


# -- SMT, governor ----------------------------------------------------------------------------------
def test_smt_siblings() -> None:
    sib = real("/sys/devices/system/cpu/cpu1/topology/thread_siblings_list")
    assert D.check_smt_siblings([1], {1: sib}, set()).status == D.PASS
    f = D.check_smt_siblings([2], {2: "2,6\n"}, {2})
    assert f.status == D.WARN and "CPU 6" in f.detail and "cpu6/online" in f.fix
    assert D.check_smt_siblings([2], {2: "2,6\n"}, {2, 6}).status == D.PASS   # idle isolated sibling
    assert "pinned CPU 3" in D.check_smt_siblings([2, 3], {2: "2-3", 3: "2-3"}, {2, 3}).detail
    assert D.check_smt_siblings([1], {1: None}, set()).unread


def test_governor() -> None:
    assert D.check_cpu_governor([1], {}, cpufreq_present=False).status == D.PASS   # this host: no cpufreq
    f = D.check_cpu_governor([2, 3], {2: "performance\n", 3: "powersave\n"}, True)
    assert f.status == D.WARN and f.fix == "cpupower -c 3 frequency-set -g performance"
    assert D.check_cpu_governor([2], {2: "performance\n"}, True).status == D.PASS


# -- IRQ affinity ---------------------------------------------------------------------------------
def test_irqs_of_the_real_nic_found_by_device_name() -> None:
    irqs = D.interface_irqs(real("/proc/interrupts"), ("eth0", "virtio2"), ())
    assert irqs == [37, 38, 39]     # virtio2-config, virtio2-input.0, virtio2-output.0
    assert D.interface_irqs("  CPU0\n 90: 1 PCI-MSI eth1-TxRx-0\n 91: 1 PCI-MSI eth10-TxRx-0\n", ("eth1",), ()) == [90]
    assert D.interface_irqs("  CPU0\n", ("eth1",), (120, 121)) == [120, 121]


def test_irq_affinity_on_a_pinned_cpu_fails() -> None:
    aff = {38: real("/proc/irq/38/smp_affinity_list"), 39: real("/proc/irq/39/smp_affinity_list")}
    f = D.check_irq_affinity("eth0", [1], [38, 39], aff)    # 0-1: may run on the matcher's CPU
    assert f.status == D.FAIL and "IRQ 38" in f.detail and "/proc/irq/38/smp_affinity_list" in f.fix
    assert D.check_irq_affinity("eth0", [1], [38, 39], {38: "0\n", 39: "0\n"}).status == D.PASS
    assert D.check_irq_affinity("lo", [1], [], {}).status == D.PASS
    assert D.check_irq_affinity(None, [1], [], {}).status == D.WARN
    assert D.check_irq_affinity("eth0", [1], [38], {38: None}).unread


# -- network sysctls ------------------------------------------------------------------------------
def test_rp_filter() -> None:
    f = D.check_rp_filter("eth0", real("/proc/sys/net/ipv4/conf/all/rp_filter"),
                          real("/proc/sys/net/ipv4/conf/eth0/rp_filter"))
    assert f.status == D.PASS and "off" in f.detail
    strict = D.check_rp_filter("eth0", "1\n", "0\n")   # the kernel uses max(all, IF)
    assert strict.status == D.WARN and "net.ipv4.conf.eth0.rp_filter=2" in strict.fix
    assert D.check_rp_filter("eth0", "0\n", "2\n").status == D.PASS


def test_multicast_route_follows_the_real_default_route() -> None:
    routes = real("/proc/net/route")
    assert D.route_for(routes, "239.192.0.31") == "eth0"          # the default route
    assert D.route_for(routes, "192.0.2.77") == "eth0"
    groups = ("239.192.0.31", "239.192.1.31")
    assert D.check_multicast_route("eth0", groups, routes, real("/proc/sys/net/ipv4/igmp_max_memberships")
                                   ).status == D.PASS
    routed = routes + "eth1\t000000E0\t00000000\t0001\t0\t0\t0\t000000F0\t0\t0\t0\n"   # 224.0.0.0/4 dev eth1
    assert D.route_for(routed, "239.192.0.31") == "eth1"
    f = D.check_multicast_route("eth0", groups, routed, "20\n")
    assert f.status == D.WARN and f.fix == "ip route add 224.0.0.0/4 dev eth0"
    many = tuple(f"239.192.{i}.1" for i in range(30))
    f = D.check_multicast_route("eth0", many, routes, real("/proc/sys/net/ipv4/igmp_max_memberships"))
    assert f.status == D.FAIL and "igmp_max_memberships=64" in f.fix


def test_socket_buffers() -> None:
    f = D.check_socket_buffers(real("/proc/sys/net/core/rmem_max"), real("/proc/sys/net/core/wmem_max"),
                               real("/proc/sys/net/ipv4/tcp_wmem"), 4 << 20)
    assert f.status == D.WARN and "net.core.rmem_max=4194304 < 8388608" in f.detail
    assert D.check_socket_buffers("16777216\n", "16777216\n", "4096 16384 16777216\n", 4 << 20).status == D.PASS
    f = D.check_socket_buffers("16777216\n", "16777216\n", "4096 16384 4194304\n", 8 << 20)
    assert f.status == D.WARN and "retransmit.send_buffer_bytes" in f.detail


# -- limits, clock, THP, offloads -----------------------------------------------------------------------
def test_memlock() -> None:
    limits = real("/proc/self/limits")
    no_caps = "Name:\tpython\nCapEff:\t0000000000000000\n"
    f = D.check_memlock(limits, no_caps)
    assert f.status == D.WARN and "8388608" in f.detail and "LimitMEMLOCK=infinity" in f.fix
    assert D.check_memlock(limits, "CapEff:\t0000000000004000\n").status == D.PASS     # CAP_IPC_LOCK
    unlimited = limits.replace("Max locked memory         8388608              8388608",
                               "Max locked memory         unlimited            unlimited")
    assert unlimited != limits
    assert D.check_memlock(unlimited, no_caps).status == D.PASS
    assert D.check_memlock(None, None).unread


def test_clocksource() -> None:
    avail = real("/sys/devices/system/clocksource/clocksource0/available_clocksource")
    assert D.check_clocksource(real("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
                               avail).status == D.PASS
    assert D.check_clocksource("kvm-clock\n", avail).status == D.WARN      # tsc is there: use it
    assert D.check_clocksource("kvm-clock\n", "kvm-clock\n").status == D.PASS
    f = D.check_clocksource("hpet\n", "tsc hpet acpi_pm\n")
    assert f.status == D.FAIL and "echo tsc >" in f.fix


def test_transparent_hugepages() -> None:
    assert D.check_thp(real("/sys/kernel/mm/transparent_hugepage/enabled"),
                       real("/sys/kernel/mm/transparent_hugepage/defrag")).status == D.PASS
    f = D.check_thp("[always] madvise never\n", "[always] defer madvise never\n")
    assert f.status == D.WARN and "echo never" in f.fix
    assert D.check_thp(None, None).status == D.PASS


ETHTOOL_K = """Features for eth1:
rx-checksumming: on
tx-checksumming: on
generic-segmentation-offload: on
generic-receive-offload: on
large-receive-offload: off [fixed]
rx-vlan-offload: on
"""


def test_nic_offloads() -> None:
    f = D.check_nic_offloads("eth1", ETHTOOL_K, True)
    assert f.status == D.WARN and f.fix == "ethtool -K eth1 gro off"
    off = ETHTOOL_K.replace("generic-receive-offload: on", "generic-receive-offload: off")
    assert D.check_nic_offloads("eth1", off, True).status == D.PASS
    f = D.check_nic_offloads("eth1", None, False)
    assert f.status == D.WARN and f.fix == "apt-get install ethtool" and f.unread
    assert D.check_nic_offloads("lo", None, False).status == D.PASS


# -- the whole set over the captured host ------------------------------------------------------------
def test_run_checks_over_the_captured_host() -> None:
    files: dict[str, str | None] = {"/" + str(p.relative_to(HOST)): p.read_text() for p in HOST.rglob("*") if p.is_file()}
    h = D.Host(files=files, ifname="eth0", if_irq_names=("eth0", "virtio2"))
    plan = D.Plan(pinned={"p0": -1}, interface="192.0.2.2", groups=("239.192.0.31", "239.192.1.31"),
                  send_buffer_bytes=4 << 20)
    by = {f.check: f for f in D.run_checks(plan, h)}
    assert set(by) == {"isolated_cpus", "smt_siblings", "cpu_governor", "irq_affinity", "rp_filter",
                       "multicast_route", "socket_buffers", "memlock", "clocksource",
                       "transparent_hugepages", "nic_offloads"}
    assert by["irq_affinity"].status == D.FAIL            # virtio2 IRQs may run on CPU 1
    assert by["isolated_cpus"].status == D.WARN
    assert by["multicast_route"].status == D.PASS
    assert by["nic_offloads"].status == D.WARN            # no ethtool in this Host
    assert D.exit_status(list(by.values())) == 1
    for f in by.values():
        assert f.status in (D.PASS, D.WARN, D.FAIL)
        assert "\n" not in f.detail and "\n" not in f.fix
        assert f.status == D.PASS or f.fix, f


# -- end to end ------------------------------------------------------------------------------------------
def matchwire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_doctor_json_on_this_host(tmp_path: Path) -> None:
    r = matchwire("doctor", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == out["exit"] == (1 if out["counts"]["fail"] else 0)
    assert len(out["checks"]) == 11 and r.stderr == ""
    text = matchwire("doctor")
    assert text.returncode == r.returncode
    assert ("fix:" in text.stdout) == any(c["fix"] for c in out["checks"])
    assert text.stdout.splitlines()[-1] == f"{out['counts']['pass']} pass, {out['counts']['warn']} warn, " \
                                           f"{out['counts']['fail']} fail"


def test_doctor_config_pinned_to_a_missing_cpu_fails(tmp_path: Path) -> None:
    from appliance.config import DEFAULT
    cfg = tmp_path / "c.toml"
    text = DEFAULT.replace("cpu = -1 ", "cpu = 1000 ", 1)
    assert text != DEFAULT
    cfg.write_text(text)
    r = matchwire("doctor", "--json", "--config", str(cfg))
    out = json.loads(r.stdout)
    iso = next(c for c in out["checks"] if c["check"] == "isolated_cpus")
    assert iso["status"] == "fail" and "CPU 1000" in iso["detail"]
    assert r.returncode == 1


def test_doctor_bad_config_is_one_line(tmp_path: Path) -> None:
    r = matchwire("doctor", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == D.EXIT_CONFIG
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[appliance]\nnmae = 1\n")
    r = matchwire("doctor", "--config", str(bad))
    assert r.returncode == D.EXIT_CONFIG and "nmae" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- matchwire config check (what deployment runs before installing a rendered config) ---------------
def test_config_check(tmp_path: Path) -> None:
    from appliance.config import DEFAULT
    good = tmp_path / "good.toml"
    good.write_text(DEFAULT.replace("ttl = 0", "ttl = 4", 1))
    r = matchwire("config", "check", str(good))
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[-1] == "ok: 3 instruments, 1 partitions, 1 gateways, 3 firms"
    assert any(ln.startswith("warning: ") and "ttl" in ln for ln in lines[:-1])
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT.replace('wal_dir = "var/p0/wal"', 'wal_dir = 7', 1))
    r = matchwire("config", "check", str(bad))
    assert r.returncode == 78 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "partitions[0].wal_dir" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop capabilities")
def test_doctor_without_capabilities() -> None:
    """Without CAP_IPC_LOCK (every capability dropped) the memlock check goes by the limit alone."""
    r = subprocess.run(["setpriv", "--bounding-set=-all", sys.executable, "-m", "tools.cli", "doctor", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    mem = next(c for c in out["checks"] if c["check"] == "memlock")
    limit = next(ln for ln in Path("/proc/self/limits").read_text().splitlines() if ln.startswith("Max locked memory"))
    if "unlimited" in limit.split()[3]:
        assert mem["status"] == "pass"
    else:
        assert mem["status"] == "warn" and "CAP_IPC_LOCK" not in mem["detail"] and "LimitMEMLOCK" in mem["fix"]
    assert r.returncode == out["exit"]
