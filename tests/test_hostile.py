"""The trading day survives restarts, floods and hostile clients: `matchwire run` as a real subprocess
(tests/test_fullstack.Stack), probed the way an attacker or a fault injector would. Every wait is
bounded; no test asserts a timing."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from typing import Any, Iterator

import pytest

from appliance.gateway import ouch
from feeds import soupbintcp as soup
from test_fullstack import Fix, Stack, running_stack
from tools.demo import loopback_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def stack(tmp_path: Any) -> Iterator[Stack]:
    with running_stack(str(tmp_path)) as s:
        yield s


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return dict(json.load(f))


# ------------------------------------------------------------------------------------------------
# Defect 1: OUCH order entry after a restart
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["orderly-stop", "partition-crash"])
def test_ouch_order_entry_works_after_a_restart(stack: Stack, how: str) -> None:
    a = stack.ouch("alfa", "alfa-pw")
    a.enter(1, b"B", 100, "ALPH", 1_400_000)
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 1)
    if how == "orderly-stop":
        assert stack.stop() == 0
    else:   # the partition dies: the supervisor stops the gateways in order and exits non-zero
        pid = _read_json(os.path.join(stack.state, "run", "p0.ready.json"))["pid"]
        os.kill(pid, signal.SIGKILL)
        assert stack.proc is not None
        assert stack.proc.wait(60) != 0
        stack.log.close()
    a.sock.close()
    stack.start()
    b = stack.ouch("alfa", "alfa-pw", sequence=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not b.closed:
        b.pump(0.2)
    assert any(isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 1 for _, m in b.messages)
    assert not b.closed and soupbin_end_of_session not in [k for k, _ in b.other], b.other
    # The replay says the gateway stopped ('E') and came back ('S'); order entry is open again.
    events = [m.event_code for _, m in b.messages if isinstance(m, ouch.L.SystemEvent)]
    assert events[-2:] == [b"E", b"S"], events
    b.enter(2, b"B", 100, "ALPH", 1_410_000)
    acc = b.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 2)
    assert isinstance(acc, ouch.L.OrderAccepted), acc
    # A UserRefNum of the day before the stop is still taken as used.
    b.enter(1, b"B", 100, "ALPH", 1_410_000)
    c = stack.ouch("brvo", "brvo-pw")
    c.enter(1, b"S", 100, "ALPH", 1_400_000)
    ex = b.wait_for(lambda m: isinstance(m, ouch.L.OrderExecuted))
    assert ex.quantity == 100 and ex.user_ref_num == 2
    b.close()
    c.close()


soupbin_end_of_session = b"Z"


# ------------------------------------------------------------------------------------------------
# Defect 3: unauthenticated Logons change nothing of the firm's session
# ------------------------------------------------------------------------------------------------

def _closed_without_answer(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded wait)."""
    sock.settimeout(10)
    got = b""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return got
            got += data
    except socket.timeout:
        pytest.fail(f"the gateway kept a failed login open (got {got!r})")
    except ConnectionResetError:
        return got
    finally:
        sock.close()


@pytest.fixture
def roomy_stack(tmp_path: Any) -> Iterator[Stack]:
    """A stack whose per-address connection budget admits every connection a test makes from
    127.0.0.1 (the legitimate clients share the address with the hostile ones)."""
    from appliance.config import SessionLimits
    cfg = loopback_config(str(tmp_path), rng=random.Random(),
                          session_limits=SessionLimits(connections_per_second=1000, connection_burst=2000))
    s = Stack(str(tmp_path), cfg)
    s.start()
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.poll() is None:
            try:
                s.stop(30)
            except subprocess.TimeoutExpired:
                os.killpg(s.proc.pid, signal.SIGKILL)


def test_wrong_password_logons_change_nothing_of_the_firms_sessions(roomy_stack: Stack) -> None:
    stack = roomy_stack
    f = Fix(stack.gw.fix_port, "BRVO")
    assert f.logon("brvo-pw").get(35) == b"A"
    f.order("W1", "1", 10, "140.00")
    f.wait(lambda m: m.get(35) == b"8")
    f.send("5")
    f.wait(lambda m: m.get(35) == b"5")
    f.close()
    next_in = f.seq
    last_out = max(int(m.get(34)) for m in f.msgs)
    sess = lambda: next(s for s in stack.admin("GET", "/status")["gateways"]["gw0"]["sessions"]  # noqa: E731
                        if s["name"] == "FIX BRVO")
    before = sess()
    jpath = os.path.join(stack.state, "gateways", "gw0", "journal.bin")
    journal_before = os.path.getsize(jpath)
    for i in range(30):
        x = Fix(stack.gw.fix_port, "BRVO", next_out=next_in + i)
        x.send("A", (98, 0), (108, 30), (554, f"guess{i}"))
        assert _closed_without_answer(x.sock) == b""
    for i in range(10):   # OUCH: a wrong password is refused 'A' and touches nothing either
        s = socket.create_connection(("127.0.0.1", stack.gw.ouch_port), timeout=10)
        s.sendall(soup.encode_login_request("brvo", f"guess{i}", "", 1))
        assert _closed_without_answer(s) == soup.encode_login_rejected(soup.REJECT_NOT_AUTHORIZED)
    after = sess()
    assert (after["next_in"], after["next_out"]) == (before["next_in"], before["next_out"])
    assert os.path.getsize(jpath) == journal_before
    # The real firm logs on again: its next message number is the one after its last, no gap.
    g = Fix(stack.gw.fix_port, "BRVO", next_out=next_in)
    logon = g.logon("brvo-pw")
    assert logon.get(35) == b"A" and int(logon.get(34)) == last_out + 1
    g.order("W2", "1", 10, "140.00")
    rep = g.wait(lambda m: m.get(35) == b"8")
    assert int(rep.get(34)) == last_out + 2
    assert not [m for m in g.msgs if m.get(35) in (b"2", b"5")]
    counters = stack.admin("GET", "/status")["gateways"]["gw0"]["counters"]
    assert counters.get("login_rejected", 0) >= 40
    g.close()


# ------------------------------------------------------------------------------------------------
# Defect 4: Account Query after the last UserRefNum
# ------------------------------------------------------------------------------------------------

ACCOUNT_QUERY = soup.encode_unsequenced_data(ouch.L.encode(ouch.L.ACCOUNT_QUERY, ouch.L.AccountQuery()))


def test_account_query_after_the_last_user_ref_num_is_answered(stack: Stack) -> None:
    a = stack.ouch("alfa", "alfa-pw")
    a.send(ACCOUNT_QUERY)
    q = a.wait_for(lambda m: isinstance(m, ouch.L.AccountQueryResponse))
    assert q.next_user_ref_num == 1
    a.enter(0xFFFF_FFFF, b"B", 100, "ALPH", 1_400_000)
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted) and m.user_ref_num == 0xFFFF_FFFF)
    a.send(ACCOUNT_QUERY)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not a.closed and not any(k == soup.DEBUG for k, _ in a.other):
        a.pump(0.2)
    assert not a.closed, stack.output()
    text = next(p for k, p in a.other if k == soup.DEBUG)
    assert b"UserRefNum" in text, text
    # The connection and the gateway go on: the order is still cancellable on the same connection.
    a.cancel(0xFFFF_FFFF)
    c = a.wait_for(lambda m: isinstance(m, ouch.L.OrderCanceled))
    assert c.user_ref_num == 0xFFFF_FFFF
    assert "Traceback" not in stack.output() and "struct.error" not in stack.output()
    a.close()


# ------------------------------------------------------------------------------------------------
# Defect 6: a Logon and a malformed message in one TCP write
# ------------------------------------------------------------------------------------------------

def _fix_raw(comp: str, seq: int, msg_type: str, *pairs: tuple[int, Any]) -> bytes:
    import simplefix
    m = simplefix.FixMessage()
    m.append_pair(8, "FIX.4.4", header=True)
    m.append_pair(35, msg_type, header=True)
    m.append_pair(49, comp, header=True)
    m.append_pair(56, "MATCHWIRE", header=True)
    m.append_pair(34, seq, header=True)
    m.append_utc_timestamp(52, header=True)
    for tag, v in pairs:
        m.append_pair(tag, v)
    return bytes(m.encode())


@pytest.mark.parametrize("second, answer", [
    # a NewOrderSingle without Symbol (55): a session Reject naming the tag
    ("missing-tag", b"3"),
    # a message whose field has no tag number: a session Reject (373=0)
    ("bad-field", b"3"),
    # bytes that are not FIX framing at all: Logout with the reason, then close
    ("framing", b"5"),
])
def test_a_logon_and_a_malformed_message_in_one_write_are_both_answered(stack: Stack, second: str,
                                                                       answer: bytes) -> None:
    logon = _fix_raw("BRVO", 1, "A", (98, 0), (108, 30), (554, "brvo-pw"))
    if second == "missing-tag":
        bad = _fix_raw("BRVO", 2, "D", (11, "M1"), (54, "1"), (60, "20240131-14:05:09.123"), (38, 10), (40, "2"),
                       (44, "140.00"), (59, "0"))
    elif second == "bad-field":
        bad = _fix_raw("BRVO", 2, "0").replace(b"\x0152=", b"\x01x52=")
        body = bad[bad.index(b"\x0135=") + 1:bad.index(b"10=")]
        head = b"8=FIX.4.4\x019=%d\x01" % len(body)
        bad = head + body + b"10=%03d\x01" % (sum(head + body) % 256)
    else:
        bad = b"8=FIX.4.4\x019=12\x01this is not FIX at all\x01"
    f = Fix(stack.gw.fix_port, "BRVO")
    f.sock.sendall(logon + bad)
    first = f.wait(lambda m: True)
    assert first.get(35) == b"A", first
    nxt = f.wait(lambda m: m.get(35) != b"A")
    assert nxt.get(35) == answer, nxt
    if answer == b"3":
        assert nxt.get(45) == b"2"
        f.seq = 3
        f.order("M2", "1", 10, "140.00")     # the session goes on
        assert f.wait(lambda m: m.get(35) == b"8").get(150) == b"0"
    else:
        assert b"framing" in (nxt.get(58) or b"")
    f.close()


# ------------------------------------------------------------------------------------------------
# Defect 5: a restart while the disk is still full
# ------------------------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    from test_recovery import _can_mount_tmpfs as can
    return can()


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and tmpfs mounts")
def test_a_restart_on_a_full_disk_exits_74_with_one_line(tmp_path: Any) -> None:
    from appliance.wal import EXIT_DURABILITY_FAILURE
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt], check=True)
    st: Stack | None = None
    try:
        cfg = loopback_config(mnt, rng=random.Random())
        st = Stack(str(tmp_path), cfg)           # config and log outside, WAL and state on the tmpfs
        st.state = os.path.join(mnt, "state")
        st.start()
        a = st.ouch("alfa", "alfa-pw")
        a.enter(1, b"B", 100, "ALPH", 1_400_000)
        a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
        a.close()
        assert st.stop() == 0
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:            # the disk fills up while the appliance is down
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        with pytest.raises(AssertionError):
            st.start(timeout=60)
        assert st.proc is not None
        rc = st.proc.wait(60)
        st.log.close()
        out = st.output()
        assert rc == EXIT_DURABILITY_FAILURE, out
        assert "Traceback" not in out, out
        assert [ln for ln in out.splitlines() if "DURABILITY FAILURE" in ln and "No space left" in ln], out
        # Room again: the next start recovers and takes orders.
        os.unlink(filler)
        st.start()
        b = st.ouch("alfa", "alfa-pw")
        b.enter(2, b"B", 100, "ALPH", 1_400_000)
        assert isinstance(b.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 2), ouch.L.OrderAccepted)
        b.close()
        assert st.stop() == 0
    finally:
        if st is not None and st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)
        subprocess.run(["umount", "-l", mnt], check=True)


# ------------------------------------------------------------------------------------------------
# Defect 8: `matchwire run ... | tee log`, then Ctrl-C
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("piped", ["stdout", "stdout-and-stderr"])
def test_ctrl_c_on_run_piped_into_tee_stops_cleanly(tmp_path: Any, piped: str) -> None:
    import sys

    from test_fullstack import subscriber
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    st = Stack(str(tmp_path), cfg)
    err_path = os.path.join(str(tmp_path), "stderr.log")
    tee_log = os.path.join(str(tmp_path), "tee.log")
    with open(err_path, "wb") as err:
        run = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", st.path, "--state-dir", st.state, "--no-realtime"],
            stdout=subprocess.PIPE, stderr=err if piped == "stdout" else subprocess.STDOUT,
            process_group=0, cwd=st.root)
        assert run.stdout is not None
        try:
            # tee in the same process group, as a shell pipeline in the foreground puts it
            tee = subprocess.Popen(["tee", tee_log], stdin=run.stdout, stdout=subprocess.DEVNULL,
                                   process_group=run.pid)
            run.stdout.close()
            ready = os.path.join(st.state, "run", "gw0.ready.json")
            deadline = time.monotonic() + 60
            while not os.path.exists(ready):
                assert run.poll() is None and time.monotonic() < deadline, open(err_path).read()
                time.sleep(0.05)
            # the servers are up and printing to the pipe
            deadline = time.monotonic() + 30
            while open(tee_log).read().count('"listening"') < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            sub = subscriber(cfg)
            a = st.ouch("alfa", "alfa-pw")
            a.enter(1, b"B", 100, "ALPH", 1_400_000)
            a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
            # Ctrl-C: the whole foreground group gets SIGINT; tee dies of it first here, so that the
            # children's next writes surely find a broken pipe.
            os.kill(tee.pid, signal.SIGINT)
            assert tee.wait(10) != 0
            os.killpg(run.pid, signal.SIGINT)
            rc = run.wait(60)
            deadline = time.monotonic() + 20
            l3 = sub.receivers["l3"]
            while not l3.ended and time.monotonic() < deadline:
                sub.poll(0.05)
            sub.close()
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)
    out = open(err_path if piped == "stdout" else tee_log).read()
    assert rc == 0, out
    assert "Traceback" not in out and "BrokenPipeError" not in out, out
    assert l3.ended, "no End of Session on the feed"
    assert os.path.exists(os.path.join(st.state, "run", "p0.stats.json")), out
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(cfg.appliance.name)]


# ------------------------------------------------------------------------------------------------
# Defect 9: state files private to the service's user
# ------------------------------------------------------------------------------------------------

def test_state_files_and_the_control_socket_are_private(stack: Stack) -> None:
    import stat
    a = stack.ouch("alfa", "alfa-pw")
    a.enter(1, b"B", 100, "ALPH", 1_400_000)
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
    a.enter(2, b"B", 99_999, "ALPH", 1_400_000)     # refused by risk: a row in rejects.jsonl
    a.wait_for(lambda m: isinstance(m, ouch.L.OrderRejected))
    f = Fix(stack.gw.fix_port, "BRVO")
    f.logon("brvo-pw")
    f.order("P1", "2", 10, "140.00")
    f.wait(lambda m: m.get(35) == b"8")
    deadline = time.monotonic() + 10
    gwdir = os.path.join(stack.state, "gateways", "gw0")
    while not os.path.exists(os.path.join(gwdir, "fix-BRVO.feed")) and time.monotonic() < deadline:
        time.sleep(0.05)
    roots = [stack.state, stack.config.partitions[0].wal_dir]
    files: dict[str, int] = {}
    dirs: dict[str, int] = {}
    for root in roots:
        for d, dnames, fnames in os.walk(root):
            dirs[d] = stat.S_IMODE(os.stat(d).st_mode)
            for n in fnames:
                p = os.path.join(d, n)
                files[p] = os.lstat(p).st_mode
    names = {os.path.basename(p) for p in files}
    assert {"journal.bin", "fix-BRVO.feed", "fix-BRVO.idx", "rejects.jsonl", "EPOCH", "FENCE", "gw0.ctl"} <= names, names
    assert any(n.endswith(".wal") or n.startswith("wal") or "seg" in n for n in names), names
    loose = {p: oct(stat.S_IMODE(m)) for p, m in files.items() if stat.S_IMODE(m) & 0o077}
    assert not loose, loose
    sock = next(p for p in files if p.endswith("gw0.ctl"))
    assert stat.S_ISSOCK(files[sock]) and stat.S_IMODE(files[sock]) == 0o600
    assert not {d: oct(m) for d, m in dirs.items() if m & 0o077 and d.startswith(stack.state + os.sep)}
    shm = [p for p in os.listdir("/dev/shm") if p.startswith(stack.config.appliance.name)]
    assert shm and not {p: oct(stat.S_IMODE(os.stat(os.path.join("/dev/shm", p)).st_mode)) for p in shm
                        if stat.S_IMODE(os.stat(os.path.join("/dev/shm", p)).st_mode) & 0o077}
    a.close()
    f.close()


# ------------------------------------------------------------------------------------------------
# Defect 10: the retransmission and snapshot servers are required parts
# ------------------------------------------------------------------------------------------------

def _ready_pid(stack: Stack, name: str) -> int:
    try:
        return int(_read_json(os.path.join(stack.state, "run", f"{name}.ready.json"))["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_a_crashed_server_is_restarted_and_reported(stack: Stack) -> None:
    for name in ("retransmit-server", "snapshot-server"):
        deadline = time.monotonic() + 30
        while not _ready_pid(stack, name) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = _ready_pid(stack, name)
        assert pid, name
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _ready_pid(stack, name) in (0, pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        new = _ready_pid(stack, name)
        assert new not in (0, pid), stack.output()
        status = stack.admin("GET", "/status")
        s = status["servers"][name]
        assert s["restarts"] == 1 and s["running"] and s["pid"] == new and s["last_exit"] == -signal.SIGKILL
    assert status["ok"]
    # The restarted retransmission server answers on its port.
    r = stack.config.retransmit
    c = socket.create_connection((r.bind if r.bind not in ("", "0.0.0.0") else "127.0.0.1", r.replay_port),
                                 timeout=10)
    c.sendall(soup.encode_login_request(r.username, r.password, "", 1))
    c.settimeout(10)
    assert c.recv(64)[2:3] in (soup.LOGIN_ACCEPTED, soup.LOGIN_REJECTED)
    c.close()
    assert stack.stop() == 0


def test_a_server_that_does_not_import_is_a_start_up_failure_in_one_line(tmp_path: Any) -> None:
    import sys
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'retransmit.snapshot_server':\n"
        "            raise ImportError('a broken build')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Broken())\n")
    cfg = loopback_config(str(tmp_path), rng=random.Random())
    st = Stack(str(tmp_path), cfg)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), os.getcwd()]))
    p = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", st.path, "--state-dir", st.state,
                          "--no-realtime"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                         cwd=os.getcwd(), process_group=0)
    try:
        _, err_bytes = p.communicate(timeout=120)
    finally:
        if p.poll() is None:   # it ran on without the server: stop it the ordinary way
            os.killpg(p.pid, signal.SIGTERM)
            p.communicate(timeout=60)
    err = err_bytes.decode()
    assert p.returncode == 1, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "retransmit.snapshot_server" in ln]
    assert len(lines) == 1 and "start-up failed" in lines[0] and "a broken build" in lines[0], err
    assert not [x for x in os.listdir("/dev/shm") if x.startswith(cfg.appliance.name)]


# ------------------------------------------------------------------------------------------------
# Defect 2 and the session budget: floods and clients that never read
# ------------------------------------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class _Flood:
    """A client that writes ``make_chunk(i)`` for i = 0, 1, ... and never reads, until the gateway
    drops it or ``seconds`` pass (bounded); the gateway's peak RSS is sampled meanwhile."""

    def __init__(self, sock: socket.socket, make_chunk: Any, seconds: float, gw_pid: int) -> None:
        import threading
        self.sock = sock
        self.make_chunk = make_chunk
        self.seconds = seconds
        self.gw_pid = gw_pid
        self.dropped = False
        self.sent = 0
        self.peak_rss_kb = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        self.sock.settimeout(1.0)
        i = 0
        chunk = self.make_chunk(0)
        while time.monotonic() < deadline:
            try:
                self.sock.sendall(chunk)
                self.sent += len(chunk)
                i += 1
                chunk = self.make_chunk(i)
            except socket.timeout:
                pass
            except OSError:          # reset or broken pipe: the gateway dropped the connection
                self.dropped = True
                break
            self.peak_rss_kb = max(self.peak_rss_kb, _rss_kb(self.gw_pid))
        self.sock.close()


def _fix_block(comp: str, first_seq: int, n: int, msg_type: str, *pairs: tuple[int, Any]) -> bytes:
    from appliance.gateway.fixcodec import encode
    return b"".join(encode(msg_type, [(49, comp), (56, "MATCHWIRE"), (34, first_seq + i),
                                      (52, "20240131-14:05:09.123"), *pairs]) for i in range(n))


@pytest.mark.parametrize("kind", ["ouch-account-query", "ouch-heartbeat", "fix-test-request"])
def test_a_flooding_client_is_throttled_then_dropped_and_memory_stays_bounded(stack: Stack, kind: str) -> None:
    gw_pid = _read_json(os.path.join(stack.state, "run", "gw0.ready.json"))["pid"]
    legit = stack.ouch("brvo", "brvo-pw")
    legit.enter(1, b"B", 100, "ALPH", 1_400_000)
    legit.wait_for(lambda m: isinstance(m, ouch.L.OrderAccepted))
    rss_before = _rss_kb(gw_pid)
    if kind.startswith("ouch"):
        flooder = stack.ouch("alfa", "alfa-pw")
        one = ACCOUNT_QUERY if kind == "ouch-account-query" else soup.encode_client_heartbeat()
        block = one * (65536 // len(one))
        flood = _Flood(flooder.sock, lambda i: block, 30.0, gw_pid)
    else:
        f = Fix(stack.gw.fix_port, "CHRL")
        assert f.logon("chrl-pw").get(35) == b"A"
        seq0 = f.seq
        n = 1000
        flood = _Flood(f.sock, lambda i: _fix_block("CHRL", seq0 + i * n, n, "1", (112, "T")), 30.0, gw_pid)
    flood.thread.start()
    # A legitimate session trades meanwhile and gets its acks.
    for urn in range(2, 12):
        legit.enter(urn, b"B", 100, "ALPH", 1_400_000)
        acc = legit.wait_for(lambda m, u=urn: getattr(m, "user_ref_num", 0) == u, timeout=30)
        assert isinstance(acc, ouch.L.OrderAccepted)
    flood.thread.join(40)
    assert flood.dropped, f"the flooding client was not dropped ({flood.sent} bytes sent)"
    grown_mb = (max(flood.peak_rss_kb, _rss_kb(gw_pid)) - rss_before) / 1024
    print(f"{kind}: {flood.sent} bytes sent; gateway RSS grew {grown_mb:.1f} MB")
    assert grown_mb < 48, f"gateway RSS grew {grown_mb:.0f} MB"
    # the gateway says why
    counters = stack.admin("GET", "/status")["gateways"]["gw0"]["counters"]
    assert counters.get("throttled", 0) > 0 and counters.get("throttle_disconnects", 0) == 1, counters
    legit.enter(20, b"B", 100, "ALPH", 1_400_000)
    assert isinstance(legit.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 20), ouch.L.OrderAccepted)
    legit.close()


def test_a_client_that_never_reads_is_dropped_at_the_outbound_bound(tmp_path: Any) -> None:
    from appliance.config import SessionLimits
    cfg = loopback_config(str(tmp_path), rng=random.Random(),
                          session_limits=SessionLimits(max_queued_bytes=65536))
    st = Stack(str(tmp_path), cfg)
    st.start()
    try:
        gw_pid = _read_json(os.path.join(st.state, "run", "gw0.ready.json"))["pid"]
        legit = st.ouch("alfa", "alfa-pw")
        # BRVO's FIX session stores some reports, then asks for all of them again and again
        # (well under its message rate) on a connection it never reads.
        f = Fix(st.gw.fix_port, "BRVO")
        f.logon("brvo-pw")
        for i in range(60):
            f.order(f"R{i}", "1", 10, "140.00")
        f.wait(lambda m: m.get(11) == b"R59")
        f.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rss_before = _rss_kb(gw_pid)
        seq0 = f.seq
        def slow_block(i: int) -> bytes:
            time.sleep(0.02)
            return _fix_block("BRVO", seq0 + i, 1, "2", (7, 1), (16, 0))

        flood = _Flood(f.sock, slow_block, 60.0, gw_pid)
        flood.thread.start()
        for urn in range(1, 6):
            legit.enter(urn, b"B", 100, "ALPH", 1_400_000)
            assert isinstance(legit.wait_for(lambda m, u=urn: getattr(m, "user_ref_num", 0) == u, timeout=30),
                              ouch.L.OrderAccepted)
        flood.thread.join(70)
        assert flood.dropped, f"a client that never reads was not dropped ({flood.sent} bytes sent)"
        grown_mb = (max(flood.peak_rss_kb, _rss_kb(gw_pid)) - rss_before) / 1024
        print(f"never reads: {flood.sent} bytes sent; gateway RSS grew {grown_mb:.1f} MB")
        assert grown_mb < 48, f"gateway RSS grew {grown_mb:.0f} MB"
        status = st.admin("GET", "/status")["gateways"]["gw0"]
        assert status["counters"].get("slow_consumer_disconnects") == 1, status["counters"]
        assert "does not read): disconnected" in st.output()
        legit.enter(10, b"B", 100, "ALPH", 1_400_000)
        assert isinstance(legit.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 10), ouch.L.OrderAccepted)
        legit.close()
        assert st.stop() == 0
    finally:
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)


# ------------------------------------------------------------------------------------------------
# Unauthenticated traffic: connection rate per source address, login timeout
# ------------------------------------------------------------------------------------------------

def test_connections_beyond_the_address_rate_are_closed_and_silent_ones_time_out(tmp_path: Any) -> None:
    from appliance.config import SessionLimits
    cfg = loopback_config(str(tmp_path), rng=random.Random(), session_limits=SessionLimits(
        connections_per_second=1, connection_burst=3, login_timeout_ms=500))
    st = Stack(str(tmp_path), cfg)
    st.start()
    try:
        socks = []
        for i in range(10):
            port = st.gw.ouch_port if i % 2 else st.gw.fix_port
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for s in socks:               # every one is closed: 3 by the login timeout, 7 at once
            assert _closed_without_answer(s) == b""
        counters = st.admin("GET", "/status")["gateways"]["gw0"]["counters"]
        # 3 from the bucket (a loaded machine may add one a second of refill), the rest refused
        refused, timed_out = counters.get("connections_refused_rate", 0), counters.get("login_timeouts", 0)
        assert refused + timed_out == 10 and refused >= 5 and timed_out >= 3, counters
        assert "connections from" in st.output()
        time.sleep(1.5)               # the address's bucket refills: a firm logs in as usual
        a = st.ouch("alfa", "alfa-pw")
        a.enter(1, b"B", 100, "ALPH", 1_400_000)
        assert isinstance(a.wait_for(lambda m: getattr(m, "user_ref_num", 0) == 1), ouch.L.OrderAccepted)
        a.close()
        assert st.stop() == 0
    finally:
        if st.proc is not None and st.proc.poll() is None:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(10)


# ------------------------------------------------------------------------------------------------
# Re-request answers bounded in bytes
# ------------------------------------------------------------------------------------------------

def test_one_rerequest_draws_a_bounded_answer(stack: Stack) -> None:
    from feeds.moldudp64 import encode_rerequest, parse_packet
    from test_fullstack import subscriber
    sub = subscriber(stack.config)
    a = stack.ouch("alfa", "alfa-pw")
    n = 480                                      # ~480 Add Orders (36 bytes each) on the L3 feed
    a.send(b"".join(a.enter_packet(u, b"B", 100, "ALPH", 1_300_000 + u * 100) for u in range(1, n + 1)))
    a.wait_for(lambda m: getattr(m, "user_ref_num", 0) == n, timeout=60)
    deadline = time.monotonic() + 10
    l3 = sub.receivers["l3"]
    while (not l3.session or l3.expected < n) and time.monotonic() < deadline:
        sub.poll(0.05)
    session = l3.session if isinstance(l3.session, bytes) else str(l3.session).encode()
    sub.close()
    r = stack.config.retransmit
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    request = encode_rerequest(session, 1, 4096)
    got: list[bytes] = []
    for _ in range(5):               # UDP: ask again if nothing came back
        u.sendto(request, ("127.0.0.1", r.rerequest_port))
        u.settimeout(5.0)
        try:
            while True:
                got.append(u.recv(65536))
                u.settimeout(1.0)
        except socket.timeout:
            pass
        if got:
            break
    u.close()
    assert got, f"no answer to {request!r}"
    total = sum(len(d) for d in got)
    msgs = [m for d in got for m in parse_packet(d).messages]
    assert parse_packet(got[0]).sequence == 1 and len(msgs) >= 100
    assert sum(2 + len(m) for m in msgs) <= r.max_request_bytes
    assert total <= r.max_request_bytes + 20 * len(got), total
    print(f"re-request of {len(request)} bytes: {total} bytes in {len(got)} datagrams "
          f"({total / len(request):.0f}x)")
    a.close()
