"""`matchwire doctor [--config CONFIG] [--json]`: is this host ready to run the appliance?

    check              reads                                                      fails when
    isolated_cpus      /proc/cmdline, /sys/devices/system/cpu/{isolated,nohz_full} a pinned CPU is not isolated
    smt_siblings       /sys/devices/system/cpu/cpuN/topology/thread_siblings_list  (warns only)
    cpu_governor       /sys/devices/system/cpu/cpuN/cpufreq/scaling_governor       (warns only)
    irq_affinity       /proc/interrupts, /proc/irq/N/smp_affinity_list             a feed-NIC IRQ may run on a pinned CPU
    rp_filter          /proc/sys/net/ipv4/conf/{all,IF}/rp_filter                  (warns only)
    multicast_route    /proc/net/route, /proc/sys/net/ipv4/igmp_max_memberships    too few IGMP memberships
    socket_buffers     /proc/sys/net/core/{r,w}mem_max, /proc/sys/net/ipv4/tcp_wmem (warns only)
    memlock            /proc/self/status (CapEff), /proc/self/limits              (warns only)
    clocksource        /sys/devices/system/clocksource/clocksource0/*              a clock read is a system call
    transparent_hugepages /sys/kernel/mm/transparent_hugepage/{enabled,defrag}      (warns only)
    nic_offloads       `ethtool -k IF`                                             (warns only)

Every check is a sans-IO function: the text of the files it needs in (``None`` when a file could
not be read), one ``Finding`` out: pass, warn or fail, a one-line detail and a one-line fix. The
I/O shell (``read_host``) reads /proc, /sys, psutil and ethtool, unprivileged where it can, and a
check whose input it could not read says so (``unread``) instead of guessing.

Exit status: 0 no check failed (warnings allowed; ``--strict``: none either), 1 a check failed,
78 the config could not be loaded.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Final, Mapping, Sequence

from tools import jsonio

PASS: Final = "pass"
WARN: Final = "warn"
FAIL: Final = "fail"
EXIT_CONFIG: Final = 78
# The buffers the appliance asks for (feeds/transport.py multicast_receiver: 8 MiB for the snapshot
# server's and subscribers' receivers; retransmit/rerequest.py: 4 MiB for the re-request sender).
RCVBUF_BYTES: Final = 8 << 20
SNDBUF_BYTES: Final = 4 << 20


@dataclass(frozen=True)
class Finding:
    check: str
    status: str                     # pass | warn | fail
    detail: str                     # one line: what was found
    fix: str = ""                   # one line: what to do (empty on pass)
    unread: tuple[str, ...] = ()    # inputs that could not be read (path: reason)


@dataclass(frozen=True)
class Plan:
    """What the config asks of the host (from appliance/config.py's Config)."""
    pinned: dict[str, int]          # partition name -> CPU (-1: the daemon chooses, see resolve_cpu)
    interface: str                  # market_data.interface (IPv4 address or interface name)
    groups: tuple[str, ...]         # every multicast group of every channel (A and B)
    send_buffer_bytes: int          # retransmit.send_buffer_bytes (per SoupBinTCP client)
    busy_spin: tuple[str, ...] = ()  # partitions with idle = busy_spin


def plan_from_config(cfg: Any) -> Plan:
    groups: list[str] = []
    for p in cfg.partitions:
        for ch in p.feeds.values():
            groups += [ch.a_group, ch.b_group]
    return Plan(pinned={p.name: p.cpu for p in cfg.partitions}, interface=cfg.market_data.interface,
                groups=tuple(groups), send_buffer_bytes=cfg.retransmit.send_buffer_bytes,
                busy_spin=tuple(p.name for p in cfg.partitions if p.idle == "busy_spin"))


# ================================================================================================
# Parsing helpers (pure)
# ================================================================================================
def cpu_list(text: str | None) -> set[int]:
    """'0-3,8,10-11' -> {0,1,2,3,8,10,11}; the kernel's list format (empty or None: none)."""
    out: set[int] = set()
    for part in (text or "").strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.update(range(int(a), int(b.split(":")[0]) + 1))
        else:
            out.add(int(part))
    return out


def fmt_cpus(cpus: set[int] | Sequence[int]) -> str:
    """{0,1,2,5} -> '0-2,5'."""
    xs = sorted(set(cpus))
    runs: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        runs.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(runs)


def cmdline_params(cmdline: str | None) -> dict[str, str]:
    """Kernel parameters before a `--` (the rest belongs to init)."""
    out: dict[str, str] = {}
    for word in (cmdline or "").split():
        if word == "--":
            break
        k, _, v = word.partition("=")
        out[k] = v
    return out


def isolcpus_list(value: str) -> set[int]:
    """isolcpus=[flag,...,]cpu-list: the flags (domain, managed_irq, nohz) come first."""
    parts = [p for p in value.split(",") if p and not p[0].isalpha()]
    return cpu_list(",".join(parts))


def resolve_cpu(configured: int, isolated: set[int], online: set[int]) -> int:
    """The CPU a partition pins itself to (appliance/daemon.py choose_cpu, over these facts)."""
    if configured >= 0:
        return configured
    iso = sorted(isolated & online)
    return (iso or sorted(online) or [0])[-1]


def sysctl_int(text: str | None) -> int | None:
    try:
        return int((text or "").split()[-1]) if text else None
    except (ValueError, IndexError):
        return None


def bracketed(text: str | None) -> str | None:
    """'always [madvise] never' -> 'madvise'."""
    if not text:
        return None
    for w in text.split():
        if w.startswith("[") and w.endswith("]"):
            return w[1:-1]
    return text.strip() or None


def hex_route(h: str) -> int:
    """/proc/net/route writes addresses as little-endian hex."""
    return int.from_bytes(bytes.fromhex(h), "little")


def ipv4(addr: str) -> int:
    a, b, c, d = (int(x) for x in addr.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


# ================================================================================================
# The checks (sans-IO)
# ================================================================================================
def check_isolated_cpus(pinned: Mapping[str, int], cmdline: str | None, isolated: str | None,
                        nohz_full: str | None, online: str | None, busy_spin: Sequence[str] = ()) -> Finding:
    name = "isolated_cpus"
    unread = tuple(f"{p}: unreadable" for p, t in (("/proc/cmdline", cmdline), ("/sys/devices/system/cpu/online",
                                                                                 online)) if t is None)
    params = cmdline_params(cmdline)
    iso = cpu_list(isolated) if isolated is not None else isolcpus_list(params.get("isolcpus", ""))
    nohz = cpu_list(nohz_full) if nohz_full else cpu_list(params.get("nohz_full", ""))
    rcu = cpu_list(params.get("rcu_nocbs", ""))
    on = cpu_list(online)
    cpus = {n: resolve_cpu(c, iso, on) for n, c in pinned.items()}
    where = ", ".join(f"{n} on CPU {c}" for n, c in cpus.items())
    want = fmt_cpus(set(cpus.values()))
    fix_line = (f"kernel command line: isolcpus=managed_irq,domain,{want} nohz_full={want} rcu_nocbs={want} "
                "(or tuned's cpu-partitioning profile), then reboot")
    if on and (bad := {n: c for n, c in cpus.items() if c not in on}):
        return Finding(name, FAIL, "pinned to a CPU this host does not have online: "
                       + ", ".join(f"{n} on CPU {c}" for n, c in bad.items())
                       + f" (online: {fmt_cpus(on)})", "set partitions[].cpu to an online CPU", unread)
    shared = [c for c in set(cpus.values()) if list(cpus.values()).count(c) > 1]
    if shared:
        return Finding(name, FAIL, f"several partitions pinned to CPU {fmt_cpus(set(shared))} ({where})",
                       "give every partition its own cpu", unread)
    if 0 in cpus.values():
        return Finding(name, WARN, f"a partition is pinned to CPU 0, the housekeeping CPU ({where})",
                       "pin partitions to CPUs other than 0 and isolate them", unread)
    not_iso = {n: c for n, c in cpus.items() if c not in iso}
    if not_iso:
        spin = [n for n in not_iso if n in busy_spin]
        status = FAIL if spin or iso else WARN
        return Finding(name, status, "pinned CPU not isolated: "
                       + ", ".join(f"{n} on CPU {c}" for n, c in not_iso.items())
                       + (f" (isolated: {fmt_cpus(iso)})" if iso else " (no CPU is isolated)")
                       + (f"; {', '.join(spin)} busy-spin" if spin else ""), fix_line, unread)
    missing = [c for c in cpus.values() if c not in nohz or c not in rcu]
    if missing:
        return Finding(name, WARN, f"{where} isolated, but CPU {fmt_cpus(set(missing))} lacks nohz_full or "
                       "rcu_nocbs (timer ticks and RCU callbacks still interrupt the matcher)", fix_line, unread)
    return Finding(name, PASS, f"{where}: isolated, nohz_full, rcu_nocbs", "", unread)


def check_smt_siblings(cpus: Sequence[int], siblings: Mapping[int, str | None], isolated: set[int]) -> Finding:
    """siblings: CPU -> the text of its topology/thread_siblings_list."""
    name = "smt_siblings"
    unread = tuple(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list: unreadable"
                   for c in cpus if siblings.get(c) is None)
    busy: list[str] = []
    for c in cpus:
        others = cpu_list(siblings.get(c)) - {c}
        for s in sorted(others):
            if s in cpus:
                busy.append(f"CPU {c} shares its core with pinned CPU {s}")
            elif s not in isolated:
                busy.append(f"CPU {c} shares its core with CPU {s}, which runs other tasks")
    if busy:
        sib = sorted({s for c in cpus for s in cpu_list(siblings.get(c)) - {c}})
        return Finding(name, WARN, "; ".join(busy),
                       f"take the siblings offline (echo 0 > /sys/devices/system/cpu/cpu{sib[0]}/online, "
                       f"CPUs {fmt_cpus(sib)}) or boot with nosmt", unread)
    if unread and len(unread) == len(cpus):
        return Finding(name, WARN, "could not read the CPU topology", "run where /sys is mounted", unread)
    return Finding(name, PASS, f"pinned CPU {fmt_cpus(list(cpus))}: no busy SMT sibling", "", unread)


def check_cpu_governor(cpus: Sequence[int], governors: Mapping[int, str | None], cpufreq_present: bool) -> Finding:
    name = "cpu_governor"
    if not cpufreq_present:
        return Finding(name, PASS, "no cpufreq driver: the frequency is set by the platform or hypervisor")
    unread = tuple(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor: unreadable"
                   for c in cpus if governors.get(c) is None)
    slow = {c: (governors.get(c) or "").strip() for c in cpus
            if governors.get(c) is not None and (governors.get(c) or "").strip() != "performance"}
    if slow:
        return Finding(name, WARN, "governor not performance: "
                       + ", ".join(f"CPU {c} {g}" for c, g in sorted(slow.items())),
                       f"cpupower -c {fmt_cpus(list(slow))} frequency-set -g performance", unread)
    if unread:
        return Finding(name, WARN, "could not read the governor of a pinned CPU", "run as root", unread)
    return Finding(name, PASS, f"CPU {fmt_cpus(list(cpus))}: performance", "", unread)


def interface_irqs(interrupts: str, names: Sequence[str], msi_irqs: Sequence[int]) -> list[int]:
    """The IRQ numbers of a NIC: its MSI vectors, and every /proc/interrupts line whose action
    names the interface or its device (``eth0-TxRx-0``, ``virtio2-input.0``)."""
    out = set(msi_irqs)
    for line in interrupts.splitlines()[1:]:
        head, _, rest = line.partition(":")
        if not head.strip().isdigit():
            continue
        action = rest.split()[-1] if rest.split() else ""
        if any(action == n or action.startswith(n + "-") or action.startswith(n + "@") for n in names if n):
            out.add(int(head))
    return sorted(out)


def check_irq_affinity(ifname: str | None, cpus: Sequence[int], irqs: Sequence[int],
                       affinity: Mapping[int, str | None]) -> Finding:
    name = "irq_affinity"
    if ifname is None:
        return Finding(name, WARN, "the feed interface was not found on this host",
                       "set market_data.interface to an address or name of a local interface")
    if ifname == "lo":
        return Finding(name, PASS, "feed interface is loopback: no NIC interrupts")
    if not irqs:
        return Finding(name, WARN, f"no interrupt of {ifname} found in /proc/interrupts",
                       "check the NIC driver's IRQ names; set their affinity off the pinned CPUs")
    unread = tuple(f"/proc/irq/{i}/smp_affinity_list: unreadable" for i in irqs if affinity.get(i) is None)
    hit = {i: cpu_list(affinity[i]) & set(cpus) for i in irqs if affinity.get(i) is not None}
    hit = {i: c for i, c in hit.items() if c}
    if hit:
        first = sorted(hit)[0]
        return Finding(name, FAIL, f"{ifname} IRQ " + ", ".join(f"{i} (CPU {fmt_cpus(c)})" for i, c in sorted(hit.items()))
                       + f" may run on pinned CPU {fmt_cpus(list(cpus))}",
                       f"echo <housekeeping CPUs> > /proc/irq/{first}/smp_affinity_list (each listed IRQ) and "
                       f"IRQBALANCE_BANNED_CPULIST={fmt_cpus(list(cpus))}", unread)
    if unread and len(unread) == len(irqs):
        return Finding(name, WARN, f"could not read the affinity of {ifname}'s IRQs", "run as root", unread)
    return Finding(name, PASS, f"{ifname}: {len(irqs)} IRQs, none on pinned CPU {fmt_cpus(list(cpus))}", "", unread)


def check_rp_filter(ifname: str | None, all_value: str | None, if_value: str | None) -> Finding:
    name = "rp_filter"
    if ifname is None:
        return Finding(name, WARN, "the feed interface was not found on this host",
                       "set market_data.interface to an address or name of a local interface")
    a, i = sysctl_int(all_value), sysctl_int(if_value)
    unread = tuple(f"/proc/sys/net/ipv4/conf/{n}/rp_filter: unreadable"
                   for n, v in (("all", a), (ifname, i)) if v is None)
    if a is None and i is None:
        return Finding(name, WARN, "could not read rp_filter", "run where /proc/sys is mounted", unread)
    eff = max(a or 0, i or 0)      # the kernel uses the larger of conf/all and conf/IF
    if eff == 1:
        return Finding(name, WARN, f"strict reverse-path filter on {ifname} (all={a}, {ifname}={i}): multicast "
                       "and re-requests from sources not routed back through it are dropped",
                       f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{ifname}.rp_filter=2", unread)
    return Finding(name, PASS, f"rp_filter on {ifname}: {eff} ({'off' if eff == 0 else 'loose'})", "", unread)


def route_for(route_table: str, addr: str) -> str | None:
    """The interface /proc/net/route sends ``addr`` through (longest prefix, then lowest metric)."""
    dst = ipv4(addr)
    best: tuple[int, int, str] | None = None
    for line in route_table.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        net, mask, metric = hex_route(f[1]), hex_route(f[7]), int(f[6])
        if int(f[3], 16) & 1 == 0 or dst & mask != net & mask:
            continue
        plen = bin(mask).count("1")
        if best is None or (plen, -metric) > (best[0], -best[1]):
            best = (plen, metric, f[0])
    return best[2] if best else None


def check_multicast_route(ifname: str | None, groups: Sequence[str], route_table: str | None,
                          max_memberships: str | None) -> Finding:
    name = "multicast_route"
    if ifname is None:
        return Finding(name, WARN, "the feed interface was not found on this host",
                       "set market_data.interface to an address or name of a local interface")
    limit = sysctl_int(max_memberships)
    # A receiver of every channel (the snapshot server) joins each group once on the interface.
    if limit is not None and limit < len(set(groups)):
        return Finding(name, FAIL, f"net.ipv4.igmp_max_memberships is {limit}, the feeds have "
                       f"{len(set(groups))} groups (A and B)",
                       f"sysctl -w net.ipv4.igmp_max_memberships={max(64, 2 * len(set(groups)))}")
    if ifname == "lo":
        return Finding(name, PASS, "feed interface is loopback: senders and receivers name it, TTL 0")
    if route_table is None:
        return Finding(name, WARN, "could not read /proc/net/route", "run where /proc is mounted",
                       ("/proc/net/route: unreadable",))
    elsewhere = sorted({f"{g} via {route_for(route_table, g) or 'no route'}" for g in groups
                        if route_for(route_table, g) != ifname})
    if elsewhere:
        return Finding(name, WARN, f"multicast not routed to {ifname}: " + ", ".join(elsewhere[:4])
                       + (" ..." if len(elsewhere) > 4 else "") + " (a receiver joining without naming the "
                       "interface, or IGMP, goes elsewhere)", f"ip route add 224.0.0.0/4 dev {ifname}")
    return Finding(name, PASS, f"{len(set(groups))} groups route to {ifname}; igmp_max_memberships {limit}")


def check_socket_buffers(rmem_max: str | None, wmem_max: str | None, tcp_wmem: str | None,
                         send_buffer_bytes: int) -> Finding:
    name = "socket_buffers"
    r, w, t = sysctl_int(rmem_max), sysctl_int(wmem_max), sysctl_int(tcp_wmem)
    unread = tuple(p + ": unreadable" for p, v in (("/proc/sys/net/core/rmem_max", r),
                                                   ("/proc/sys/net/core/wmem_max", w),
                                                   ("/proc/sys/net/ipv4/tcp_wmem", t)) if v is None)
    low = []
    if r is not None and r < RCVBUF_BYTES:
        low.append(f"net.core.rmem_max={r} < {RCVBUF_BYTES}")
    if w is not None and w < SNDBUF_BYTES:
        low.append(f"net.core.wmem_max={w} < {SNDBUF_BYTES}")
    if t is not None and t < send_buffer_bytes:
        low.append(f"net.ipv4.tcp_wmem max={t} < retransmit.send_buffer_bytes {send_buffer_bytes}")
    if low:
        return Finding(name, WARN, "; ".join(low) + " (unprivileged sockets are capped there)",
                       f"sysctl -w net.core.rmem_max={max(RCVBUF_BYTES, r or 0)} "
                       f"net.core.wmem_max={max(SNDBUF_BYTES, w or 0)} "
                       f"net.ipv4.tcp_wmem='4096 16384 {max(send_buffer_bytes, t or 0)}'", unread)
    if len(unread) == 3:
        return Finding(name, WARN, "could not read the socket buffer limits", "run where /proc/sys is mounted",
                       unread)
    return Finding(name, PASS, f"rmem_max {r}, wmem_max {w}, tcp_wmem max {t}", "", unread)


def has_cap(status: str | None, bit: int) -> bool:
    for line in (status or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def check_memlock(limits: str | None, status: str | None) -> Finding:
    name = "memlock"
    if limits is None:
        return Finding(name, WARN, "could not read /proc/self/limits", "run where /proc is mounted",
                       ("/proc/self/limits: unreadable",))
    soft = None
    for line in limits.splitlines():
        if line.startswith("Max locked memory"):
            soft = line[len("Max locked memory"):].split()[0]
    if soft == "unlimited":
        return Finding(name, PASS, "memlock unlimited: mlockall can lock the matcher's memory")
    if has_cap(status, 14):        # CAP_IPC_LOCK: mlockall ignores RLIMIT_MEMLOCK
        return Finding(name, PASS, f"memlock {soft} bytes, but CAP_IPC_LOCK lets mlockall lock everything")
    return Finding(name, WARN, f"memlock limit {soft} bytes here: mlockall of a partition is refused "
                   "(its memory can be paged out)",
                   "LimitMEMLOCK=infinity in the partition units (or '* - memlock unlimited' in "
                   "/etc/security/limits.d/)")


def check_clocksource(current: str | None, available: str | None) -> Finding:
    name = "clocksource"
    cur = (current or "").strip()
    if not cur:
        return Finding(name, WARN, "could not read the clock source", "run where /sys is mounted",
                       ("/sys/devices/system/clocksource/clocksource0/current_clocksource: unreadable",))
    avail = (available or "").split()
    if cur == "tsc":
        return Finding(name, PASS, "tsc: clock reads stay in the vDSO")
    if cur in ("kvm-clock", "hyperv_clocksource_tsc_page", "arch_sys_counter"):
        return Finding(name, PASS if "tsc" not in avail else WARN,
                       f"{cur}: vDSO clock reads" + ("; tsc is available" if "tsc" in avail else ""),
                       "" if "tsc" not in avail else
                       "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource")
    return Finding(name, FAIL, f"{cur}: every clock read is a system call (microseconds per duty cycle)",
                   "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource "
                   "(kernel command line: clocksource=tsc tsc=reliable)" if "tsc" in avail else
                   "use a host whose clock source is tsc (or kvm-clock in a guest)")


def check_thp(enabled: str | None, defrag: str | None) -> Finding:
    name = "transparent_hugepages"
    en = bracketed(enabled)
    if en is None:
        return Finding(name, PASS, "transparent huge pages not built into this kernel")
    if en == "always":
        return Finding(name, WARN, f"THP enabled=always (defrag={bracketed(defrag)}): compaction stalls "
                       "and khugepaged scans touch the matcher's memory",
                       "echo never > /sys/kernel/mm/transparent_hugepage/enabled (or transparent_hugepage=never)")
    return Finding(name, PASS, f"THP enabled={en}, defrag={bracketed(defrag)}")


OFFLOADS_OFF: Final = ("large-receive-offload", "generic-receive-offload")


def check_nic_offloads(ifname: str | None, ethtool_k: str | None, has_ethtool: bool) -> Finding:
    name = "nic_offloads"
    if ifname is None:
        return Finding(name, WARN, "the feed interface was not found on this host",
                       "set market_data.interface to an address or name of a local interface")
    if ifname == "lo":
        return Finding(name, PASS, "feed interface is loopback: no NIC offloads")
    if not has_ethtool:
        return Finding(name, WARN, f"ethtool is not installed: offloads of {ifname} not checked",
                       "apt-get install ethtool", ("ethtool: not installed",))
    if ethtool_k is None:
        return Finding(name, WARN, f"ethtool -k {ifname} failed", f"run ethtool -k {ifname} by hand",
                       (f"ethtool -k {ifname}: failed",))
    feats = {}
    for line in ethtool_k.splitlines():
        k, sep, v = line.partition(":")
        if sep and v.split():
            feats[k.strip()] = v.split()[0]
    on = [k for k in OFFLOADS_OFF if feats.get(k) == "on"]
    if on:
        short = {"large-receive-offload": "lro", "generic-receive-offload": "gro"}
        return Finding(name, WARN, f"{ifname}: {', '.join(on)} on (received datagrams are coalesced: "
                       "added latency, merged packets in captures)",
                       f"ethtool -K {ifname} " + " ".join(f"{short[k]} off" for k in on))
    return Finding(name, PASS, f"{ifname}: lro and gro off")


# ================================================================================================
# The I/O shell
# ================================================================================================
@dataclass
class Host:
    """What ``read_host`` read: path -> text (None: could not be read), and a few derived facts."""
    files: dict[str, str | None] = field(default_factory=dict)
    ifname: str | None = None
    if_irq_names: tuple[str, ...] = ()
    msi_irqs: tuple[int, ...] = ()
    cpufreq_present: bool = False
    has_ethtool: bool = False
    ethtool_k: str | None = None

    def get(self, path: str) -> str | None:
        return self.files.get(path)


def _read(path: str, root: str) -> str | None:
    try:
        with open(root + path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def find_interface(spec: str, addrs: Mapping[str, Sequence[str]]) -> str | None:
    """market_data.interface (an IPv4 address or an interface name) -> the interface name."""
    if spec in addrs:
        return spec
    for name, xs in addrs.items():
        if spec in xs:
            return name
    return None


def read_host(plan: Plan, root: str = "") -> Host:
    """Read every input of the checks. ``root`` prefixes /proc and /sys paths (tests)."""
    h = Host()
    paths = ["/proc/cmdline", "/sys/devices/system/cpu/isolated", "/sys/devices/system/cpu/nohz_full",
             "/sys/devices/system/cpu/online", "/proc/interrupts", "/proc/net/route",
             "/proc/sys/net/ipv4/igmp_max_memberships", "/proc/sys/net/core/rmem_max",
             "/proc/sys/net/core/wmem_max", "/proc/sys/net/ipv4/tcp_wmem", "/proc/self/limits",
             "/proc/self/status", "/sys/devices/system/clocksource/clocksource0/current_clocksource",
             "/sys/devices/system/clocksource/clocksource0/available_clocksource",
             "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/mm/transparent_hugepage/defrag",
             "/proc/sys/net/ipv4/conf/all/rp_filter"]
    for p in paths:
        h.files[p] = _read(p, root)
    for c in range(os.cpu_count() or 1):
        for p in (f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list",
                  f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"):
            h.files[p] = _read(p, root)
    h.cpufreq_present = os.path.isdir(root + "/sys/devices/system/cpu/cpufreq") and bool(
        glob.glob(root + "/sys/devices/system/cpu/cpu*/cpufreq"))
    try:
        import psutil
        addrs = {n: [a.address for a in xs] for n, xs in psutil.net_if_addrs().items()}
    except (ImportError, OSError):
        addrs = {n: [] for n in os.listdir(root + "/sys/class/net")} if os.path.isdir(root + "/sys/class/net") else {}
    if plan.interface.startswith("127.") and "lo" in addrs:
        h.ifname = "lo"
    else:
        h.ifname = find_interface(plan.interface, addrs)
    if h.ifname:
        h.files[f"/proc/sys/net/ipv4/conf/{h.ifname}/rp_filter"] = _read(
            f"/proc/sys/net/ipv4/conf/{h.ifname}/rp_filter", root)
    if h.ifname and h.ifname != "lo":
        dev = os.path.realpath(f"{root}/sys/class/net/{h.ifname}/device")
        h.if_irq_names = (h.ifname, os.path.basename(dev)) if os.path.exists(dev) else (h.ifname,)
        msi: set[int] = set()
        for d in (dev, os.path.dirname(dev)):
            try:
                msi.update(int(x) for x in os.listdir(os.path.join(d, "msi_irqs")))
            except (OSError, ValueError):
                pass
        h.msi_irqs = tuple(sorted(msi))
        ethtool = shutil.which("ethtool") or next((p for p in ("/usr/sbin/ethtool", "/sbin/ethtool")
                                                   if os.access(p, os.X_OK)), None)
        h.has_ethtool = ethtool is not None
        if ethtool:
            try:
                r = subprocess.run([ethtool, "-k", h.ifname], capture_output=True, text=True, timeout=10)
                h.ethtool_k = r.stdout if r.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                h.ethtool_k = None
    irqs = interface_irqs(h.get("/proc/interrupts") or "", h.if_irq_names, h.msi_irqs) if h.if_irq_names else []
    for i in irqs:
        h.files[f"/proc/irq/{i}/smp_affinity_list"] = _read(f"/proc/irq/{i}/smp_affinity_list", root)
    return h


def run_checks(plan: Plan, h: Host) -> list[Finding]:
    g = h.get
    iso_text = g("/sys/devices/system/cpu/isolated")
    iso = cpu_list(iso_text) if iso_text is not None else isolcpus_list(
        cmdline_params(g("/proc/cmdline")).get("isolcpus", ""))
    on = cpu_list(g("/sys/devices/system/cpu/online"))
    cpus = sorted({resolve_cpu(c, iso, on) for c in plan.pinned.values()})
    irqs = interface_irqs(g("/proc/interrupts") or "", h.if_irq_names, h.msi_irqs) if h.if_irq_names else []
    checks: list[Callable[[], Finding]] = [
        lambda: check_isolated_cpus(plan.pinned, g("/proc/cmdline"), iso_text,
                                    g("/sys/devices/system/cpu/nohz_full"), g("/sys/devices/system/cpu/online"),
                                    plan.busy_spin),
        lambda: check_smt_siblings(cpus, {c: g(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
                                          for c in cpus}, iso),
        lambda: check_cpu_governor(cpus, {c: g(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
                                          for c in cpus}, h.cpufreq_present),
        lambda: check_irq_affinity(h.ifname, cpus, irqs, {i: g(f"/proc/irq/{i}/smp_affinity_list") for i in irqs}),
        lambda: check_rp_filter(h.ifname, g("/proc/sys/net/ipv4/conf/all/rp_filter"),
                                g(f"/proc/sys/net/ipv4/conf/{h.ifname}/rp_filter")),
        lambda: check_multicast_route(h.ifname, plan.groups, g("/proc/net/route"),
                                      g("/proc/sys/net/ipv4/igmp_max_memberships")),
        lambda: check_socket_buffers(g("/proc/sys/net/core/rmem_max"), g("/proc/sys/net/core/wmem_max"),
                                     g("/proc/sys/net/ipv4/tcp_wmem"), plan.send_buffer_bytes),
        lambda: check_memlock(g("/proc/self/limits"), g("/proc/self/status")),
        lambda: check_clocksource(g("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
                                  g("/sys/devices/system/clocksource/clocksource0/available_clocksource")),
        lambda: check_thp(g("/sys/kernel/mm/transparent_hugepage/enabled"),
                          g("/sys/kernel/mm/transparent_hugepage/defrag")),
        lambda: check_nic_offloads(h.ifname, h.ethtool_k, h.has_ethtool),
    ]
    return [c() for c in checks]


def exit_status(findings: Sequence[Finding], strict: bool = False) -> int:
    bad = (FAIL, WARN) if strict else (FAIL,)
    return 1 if any(f.status in bad for f in findings) else 0


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this host for the appliance: CPUs, IRQs, sysctls, limits, clocks")
    p.add_argument("--config", help="the appliance's TOML config (default: the demo's built-in config)")
    p.add_argument("--json", action="store_true", help="one JSON object: every check and the exit status")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too")
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, default, load
    try:
        cfg = load(args.config) if args.config else default()
    except (ConfigError, OSError) as e:
        print(f"matchwire doctor: {e}", file=sys.stderr)
        return EXIT_CONFIG
    plan = plan_from_config(cfg)
    findings = run_checks(plan, read_host(plan))
    rc = exit_status(findings, args.strict)
    if args.json:
        print(jsonio.dumps({"config": args.config or "<built-in demo config>", "interface": plan.interface,
                            "checks": [asdict(f) for f in findings], "exit": rc,
                            "counts": {s: sum(f.status == s for f in findings) for s in (PASS, WARN, FAIL)}},
                           sort_keys=True))
        return rc
    for f in findings:
        print(f"{f.status.upper():4}  {f.check:22} {f.detail}")
        if f.fix:
            print(f"{'':4}  {'':22} fix: {f.fix}")
        for u in f.unread:
            print(f"{'':4}  {'':22} could not read {u}")
    n = {s: sum(f.status == s for f in findings) for s in (PASS, WARN, FAIL)}
    print(f"{n[PASS]} pass, {n[WARN]} warn, {n[FAIL]} fail")
    return rc
