"""Where published datagrams go: the network (kernel UDP, one sendmmsg per batch, or AF_XDP
frames; chosen per channel), a pcap file, or memory.

One small interface. A transport opens one ``ChannelSender`` per channel; the publisher hands it
the datagrams of a batch, which it sends to the channel's A group and to its B group::

    sender = transport.channel("l3", ChannelGroups(a=("239.192.1.31", 30011), b=(...)))
    sender.send_packets([datagram, ...], ts_ns)   # -> datagrams sent per group
    transport.close()

``ts_ns`` is the publisher's time for the batch (the sequencer's stamp), used by the pcap
transport as the capture time, so that a pcap of a run is a pure function of the run.

UdpTransport uses plain BSD sockets through the C library only (socket, setsockopt, connect,
send), created in the process that uses them: that is what OpenOnload's ``onload`` launcher
accelerates unchanged (``onload --profile=latency matchwire ...``; docs/feeds.md). Every sender
sets IP_MULTICAST_IF to the configured interface address (127.0.0.1 by default) and the
configured TTL (0 by default: the kernel never sends TTL-0 multicast off the host). The
sendmmsg channel uses the same sockets and calls libc's ``sendmmsg`` (feeds/batchsend.py), which
Onload accelerates too. The afxdp channel (feeds/afxdp.py) writes whole frames: every transport
puts the same UDP payloads on the wire, in the same order (A then B per datagram).
"""
from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from feeds.batchsend import BatchSender, sendmmsg_available
from feeds.channels import ChannelGroups, Endpoint, FeedConfig
from feeds.pcap import PcapWriter

__all__ = ["ChannelSender", "Transport", "UdpTransport", "PcapTransport", "MemoryTransport",
           "NullTransport", "multicast_sender", "multicast_receiver", "interface_option", "membership",
           "transport_for", "A", "B"]

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

A = 0  # leg index of the A group
B = 1  # leg index of the B group


class ChannelSender(Protocol):
    def send_packets(self, payloads: list[bytes], ts_ns: int) -> int:
        """Send each datagram to the A and the B group; return how many went to each."""

    def close(self) -> None: ...


class Transport(Protocol):
    def channel(self, name: str, groups: ChannelGroups) -> ChannelSender: ...

    def close(self) -> None: ...


# ================================================================================================
# Kernel UDP multicast
# ================================================================================================

def _is_address(interface: str) -> bool:
    try:
        socket.inet_aton(interface)
    except OSError:
        return False
    return interface.count(".") == 3


def interface_option(interface: str) -> bytes:
    """The IP_MULTICAST_IF value for an interface given by IPv4 address ("127.0.0.1") or by name
    ("lo", "eth1"; Linux ``struct ip_mreqn`` with the interface index)."""
    if _is_address(interface):
        return socket.inet_aton(interface)
    return struct.pack("4s4si", b"\0\0\0\0", b"\0\0\0\0", socket.if_nametoindex(interface))


def membership(group: str, interface: str) -> bytes:
    """The IP_ADD_MEMBERSHIP value: join ``group`` on an interface given by address or by name."""
    if _is_address(interface):
        return struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
    return struct.pack("4s4si", socket.inet_aton(group), b"\0\0\0\0", socket.if_nametoindex(interface))


def multicast_sender(group: Endpoint, interface: str = "127.0.0.1", ttl: int = 0, dscp: int = 0,
                     sndbuf: int = 0, source_port: int = 0) -> socket.socket:
    """A UDP socket connected to ``group``, sending through ``interface`` (address or name) with
    ``ttl`` and DSCP. ``source_port`` (0: the kernel picks one) is bound with SO_REUSEADDR, so
    the senders of several channels (and a restarted sender) share one fixed port that ACLs and
    capture filters can name; the bound address is the interface's (any, for a named one)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if source_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((interface if _is_address(interface) else "0.0.0.0", source_port))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, interface_option(interface))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        if dscp:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)
        if sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        s.connect(group)
    except BaseException:
        s.close()
        raise
    return s


def multicast_receiver(group: Endpoint, interface: str = "127.0.0.1", rcvbuf: int = 8 << 20,
                       blocking: bool = False) -> socket.socket:
    """A UDP socket bound to ``group`` (not 0.0.0.0) that joined it on ``interface`` (address or
    name), with SO_RCVBUF raised (the default holds only a few hundred datagrams)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:   # past net.core.rmem_max when privileged; the plain option is capped by it
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind(group)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership(group[0], interface))
        s.setblocking(blocking)
    except BaseException:
        s.close()
        raise
    return s


class _UdpChannel:
    """Two connected sockets (A, B) of one channel; owned by the publishing thread."""

    __slots__ = ("name", "sock_a", "sock_b", "errors", "packets", "last_error")

    def __init__(self, name: str, groups: ChannelGroups, interface: str, ttl: int, dscp: int,
                 source_ports: tuple[int, int] = (0, 0)) -> None:
        self.name = name
        self.sock_a = multicast_sender(groups.a, interface, ttl, dscp, source_port=source_ports[0])
        try:
            self.sock_b = multicast_sender(groups.b, interface, ttl, dscp, source_port=source_ports[1])
        except BaseException:
            self.sock_a.close()
            raise
        self.errors = 0        # datagrams the kernel refused (counted, not raised: a lost datagram)
        self.packets = 0
        self.last_error = 0

    def send_packets(self, payloads: list[bytes], ts_ns: int) -> int:
        send_a = self.sock_a.send
        send_b = self.sock_b.send
        try:
            for p in payloads:
                send_a(p)
                send_b(p)
        except OSError:
            # rare (ENOBUFS, a receiver's ICMP error): fall back to one datagram at a time
            return self._send_slow(payloads)
        n = len(payloads)
        self.packets += n
        return n

    def _send_slow(self, payloads: list[bytes]) -> int:
        ok = 0
        for p in payloads:
            for s in (self.sock_a, self.sock_b):
                try:
                    s.send(p)
                except OSError as e:
                    if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.ENOMEM):
                        raise
                    self.errors += 1
                    self.last_error = e.errno or 0
            ok += 1
        self.packets += ok
        return ok

    def close(self) -> None:
        self.sock_a.close()
        self.sock_b.close()


class _MmsgChannel(_UdpChannel):
    """The two connected sockets of ``_UdpChannel``, sent to with one ``sendmmsg`` call per batch per
    group (feeds/batchsend.py) instead of one ``send`` per datagram per group."""

    __slots__ = ("batch", "pair")

    def __init__(self, name: str, groups: ChannelGroups, interface: str, ttl: int, dscp: int,
                 source_ports: tuple[int, int] = (0, 0)) -> None:
        super().__init__(name, groups, interface, ttl, dscp, source_ports)
        self.batch = BatchSender()
        self.pair = (self.sock_a, self.sock_b)

    def send_packets(self, payloads: list[bytes], ts_ns: int) -> int:
        batch = self.batch
        before = batch.errors
        n = batch.send(self.pair, payloads)
        if batch.errors != before:
            self.errors += batch.errors - before
            self.last_error = batch.last_error
        self.packets += n
        return n


class UdpTransport:
    """The network transports, chosen per channel (``kinds``: channel -> "udp", "sendmmsg" or
    "afxdp"; channels not named use ``batched``: sendmmsg if true, else udp).

    udp: one ``send`` per datagram per group on connected kernel sockets (see the module docstring
    for Onload). sendmmsg: the same sockets, one ``sendmmsg`` per batch per group. afxdp: Ethernet
    frames through one AF_XDP socket on the interface (feeds/afxdp.py), shared by its channels.
    Where the host refuses AF_XDP, its channels send through kernel udp and ``notes`` says so in
    one line, or with ``afxdp_required`` opening the channel raises ``XdpUnavailable``.
    ``source_ports``: the fixed source ports of every kernel A and B sender (0: ephemeral).
    """

    def __init__(self, interface: str = "127.0.0.1", ttl: int = 0, dscp: int = 0, *,
                 batched: bool = False, kinds: dict[str, str] | None = None, source_port: int = 29999,
                 afxdp_mode: str = "auto", afxdp_required: bool = False, afxdp_queue: int = 0,
                 afxdp_checksum_offload: bool = True, source_ports: tuple[int, int] = (0, 0)) -> None:
        self.interface = interface
        self.source_ports = source_ports
        self.ttl = ttl
        self.dscp = dscp
        self.batched = batched
        self.kinds = dict(kinds or {})
        self.source_port = source_port
        self.afxdp_mode = afxdp_mode
        self.afxdp_required = afxdp_required
        self.afxdp_queue = afxdp_queue
        self.afxdp_checksum_offload = afxdp_checksum_offload   # False: Python computes UDP checksums
        self.channels: dict[str, Any] = {}
        self.xsk: Any = None                     # the AF_XDP socket, opened with the first channel
        self.xdp_interface: Any = None
        self.fallbacks: dict[str, str] = {}      # channel -> why it sends through kernel udp
        self._xdp_refusal: str | None = None

    def kind_of(self, name: str) -> str:
        """The transport a channel was asked for."""
        return self.kinds.get(name, "sendmmsg" if self.batched else "udp")

    def _open_xdp(self) -> str | None:
        """Open the AF_XDP socket once; the reason it cannot be opened, or None."""
        if self.xsk is not None or self._xdp_refusal is not None:
            return self._xdp_refusal
        from feeds.afxdp import XdpSocket, XdpUnavailable, interface_info
        try:
            if self.ttl == 0:
                raise XdpUnavailable("ttl 0: AF_XDP frames bypass the IP stack, TTL 0 would not keep them "
                                     "on the host")
            info = interface_info(self.interface)
            try:
                self.xsk = XdpSocket(info.index, self.afxdp_queue, self.afxdp_mode,
                                     checksum_offload=self.afxdp_checksum_offload)
            except XdpUnavailable as e:
                raise XdpUnavailable(f"{info.name} queue {self.afxdp_queue}: {e}") from None
            self.xdp_interface = info
        except XdpUnavailable as e:
            self._xdp_refusal = str(e)
        except OSError as e:
            self._xdp_refusal = f"{self.interface}: {e.strerror or e}"
        return self._xdp_refusal

    def channel(self, name: str, groups: ChannelGroups) -> Any:
        kind = self.kind_of(name)
        ch: Any
        if kind == "afxdp":
            refusal = self._open_xdp()
            if refusal is None:
                from feeds.afxdp import XdpChannel
                ch = XdpChannel(name, groups, self.xsk, self.xdp_interface, self.source_port, self.ttl,
                                self.dscp)
                self.channels[name] = ch
                return ch
            if self.afxdp_required:
                from feeds.afxdp import XdpUnavailable
                raise XdpUnavailable(f"feed: AF_XDP required for channel {name} but unavailable: {refusal}")
            self.fallbacks[name] = "afxdp unavailable (" + refusal + ")"
            kind = "udp"
        if kind == "sendmmsg" and not sendmmsg_available():
            self.fallbacks[name] = "the C library has no sendmmsg"
            kind = "udp"
        maker = _MmsgChannel if kind == "sendmmsg" else _UdpChannel
        ch = maker(name, groups, self.interface, self.ttl, self.dscp, self.source_ports)
        self.channels[name] = ch
        return ch

    @property
    def notes(self) -> list[str]:
        """One line per distinct reason a channel does not use the transport it asked for, and the
        AF_XDP mode in use."""
        out: list[str] = []
        reasons: dict[str, list[str]] = {}
        for ch, why in self.fallbacks.items():
            reasons.setdefault(why, []).append(ch)
        for why, chs in reasons.items():
            out.append(f"{why}: channel {', '.join(chs)} falls back to kernel udp")
        if self.xsk is not None:
            xdp = [n for n, c in self.channels.items() if self.kind_of(n) == "afxdp" and n not in self.fallbacks]
            zc = f" (zero-copy refused: {self.xsk.zerocopy_refusal})" if self.xsk.zerocopy_refusal else ""
            csum = "kernel" if self.xsk.checksum_offload else "python"
            out.append(f"afxdp on {self.xdp_interface.name} queue {self.afxdp_queue}, {self.xsk.mode} mode{zc}, "
                       f"UDP checksums by {csum}: "
                       f"channel {', '.join(xdp)}")
        return out

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()
        if self.xsk is not None:
            self.xsk.close()
            self.xsk = None


# ================================================================================================
# pcap
# ================================================================================================

class _PcapChannel:
    __slots__ = ("writer", "src_ip", "src_port", "src_port_b", "groups", "ttl", "packets")

    def __init__(self, writer: PcapWriter, src_ip: str, src_port: int, groups: ChannelGroups, ttl: int,
                 src_port_b: int) -> None:
        self.writer = writer
        self.src_ip = src_ip
        self.src_port = src_port
        self.src_port_b = src_port_b
        self.groups = groups
        self.ttl = ttl
        self.packets = 0

    def send_packets(self, payloads: list[bytes], ts_ns: int) -> int:
        w = self.writer.write_udp
        (ga, pa), (gb, pb) = self.groups
        for p in payloads:
            w(ts_ns, self.src_ip, self.src_port, ga, pa, p, ttl=self.ttl)
            w(ts_ns, self.src_ip, self.src_port_b, gb, pb, p, ttl=self.ttl)
        self.packets += len(payloads)
        return len(payloads)

    def close(self) -> None:
        self.writer.flush()


class PcapTransport:
    """Writes every datagram, A then B, as an Ethernet/IPv4/UDP frame of a nanosecond pcap, as
    tcpdump would capture it on the sending host (source ``src_ip:src_port``, ``src_port_b`` for
    the B groups when given, destination the group)."""

    def __init__(self, out: str | Path | BinaryIO, src_ip: str = "127.0.0.1", src_port: int = 29999,
                 ttl: int = 0, src_port_b: int | None = None) -> None:
        if isinstance(out, (str, Path)):
            self.writer = PcapWriter.open(out)
        else:
            self.writer = PcapWriter(out)
        self.src_ip = src_ip
        self.src_port = src_port
        self.src_port_b = src_port if src_port_b is None else src_port_b
        self.ttl = ttl
        self.channels: dict[str, _PcapChannel] = {}

    def channel(self, name: str, groups: ChannelGroups) -> _PcapChannel:
        ch = _PcapChannel(self.writer, self.src_ip, self.src_port, groups, self.ttl, self.src_port_b)
        self.channels[name] = ch
        return ch

    def close(self) -> None:
        self.writer.close()


# ================================================================================================
# memory (tests)
# ================================================================================================

class _MemoryChannel:
    __slots__ = ("name", "groups", "transport")

    def __init__(self, name: str, groups: ChannelGroups, transport: MemoryTransport) -> None:
        self.name = name
        self.groups = groups
        self.transport = transport

    def send_packets(self, payloads: list[bytes], ts_ns: int) -> int:
        t = self.transport
        if t.paused:
            return 0
        sent = t.sent
        for p in payloads:
            sent.append((self.name, A, ts_ns, p))
            sent.append((self.name, B, ts_ns, p))
        return len(payloads)

    def close(self) -> None:
        pass


class MemoryTransport:
    """Keeps ``(channel, leg, ts_ns, datagram)`` in ``sent``; ``paused`` drops everything (a
    crashed sender in tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, int, bytes]] = []
        self.paused = False
        self.channels: dict[str, _MemoryChannel] = {}

    def channel(self, name: str, groups: ChannelGroups) -> _MemoryChannel:
        ch = _MemoryChannel(name, groups, self)
        self.channels[name] = ch
        return ch

    def of(self, channel: str, leg: int | None = A) -> list[bytes]:
        """The datagrams sent on a channel (one leg, or both with leg=None)."""
        return [p for ch, lg, _, p in self.sent if ch == channel and (leg is None or lg == leg)]

    def close(self) -> None:
        pass


class _NullChannel:
    __slots__ = ("packets",)

    def __init__(self) -> None:
        self.packets = 0

    def send_packets(self, payloads: list[bytes], ts_ns: int) -> int:
        self.packets += len(payloads)
        return len(payloads)

    def close(self) -> None:
        pass


class NullTransport:
    """Counts datagrams and sends nothing (benchmarks of the encoder and packetizer alone)."""

    def __init__(self) -> None:
        self.channels: dict[str, _NullChannel] = {}

    def channel(self, name: str, groups: ChannelGroups) -> _NullChannel:
        ch = _NullChannel()
        self.channels[name] = ch
        return ch

    def close(self) -> None:
        pass


def transport_for(config: FeedConfig, kind: str = "udp", pcap_path: str | Path | None = None) -> Transport:
    """The transport a configuration asks for: "udp", the network (interface, TTL, DSCP and each
    channel's transport, udp, sendmmsg or afxdp, from the config); "sendmmsg" or "afxdp" (every
    channel so); "pcap" (to ``pcap_path``), "memory" or "null"."""
    if kind in ("udp", "sendmmsg", "afxdp"):
        kinds = dict(config.transports or {})
        if kind != "udp":
            kinds = dict.fromkeys(config.channels, kind)
        return UdpTransport(config.interface, config.ttl, config.dscp, kinds=kinds,
                            source_port=config.source_port, afxdp_mode=config.afxdp_mode,
                            afxdp_required=config.afxdp_required, afxdp_queue=config.afxdp_queue,
                            source_ports=(config.source_port_a, config.source_port_b))
    if kind == "pcap":
        if pcap_path is None:
            raise ValueError("feed: the pcap transport needs a file")
        return PcapTransport(pcap_path, ttl=config.ttl, src_port=config.source_port_a or config.source_port,
                             src_port_b=config.source_port_b or config.source_port)
    if kind == "memory":
        return MemoryTransport()
    if kind == "null":
        return NullTransport()
    raise ValueError(f"feed: unknown transport {kind!r} (udp, sendmmsg, afxdp, pcap, memory, null)")
