"""Feed store: appends by datagram, reads any range by sequence, survives torn tails and a lagging index."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from feeds.moldudp64 import PacketBuilder, Session
from feeds.store import FILE_HEADER_SIZE, INDEX_ENTRY, FeedStore, StoreError

SESSION = b"2311140130"


def messages(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [bytes([65 + i % 26]) + rnd.randbytes(rnd.randint(0, 60)) for i in range(n)]


def packets_of(msgs: list[bytes], first: int = 1, max_payload: int = 300) -> list[bytes]:
    b = PacketBuilder(Session(SESSION, first), max_payload)
    b.add_many(msgs)
    return b.flush()


def test_append_and_read_any_range(tmp_path: Path) -> None:
    msgs = messages(2000)
    with FeedStore(str(tmp_path), SESSION) as store:
        store.append_packets(packets_of(msgs[:700]))
        store.append_packets(packets_of(msgs[700:], first=701))
        assert store.count == 2000
        assert store.read(1, 2000) == msgs
        rnd = random.Random(5)
        for _ in range(200):
            first = rnd.randint(1, 2000)
            count = rnd.randint(1, 300)
            assert store.read(first, count) == msgs[first - 1:first - 1 + count]
        assert store.read(2001, 5) == [] and store.read(0, 5) == [] and store.read(5, 0) == []
        assert store.read(1999, 100) == msgs[-2:]
        assert store.last_message() == msgs[-1]
        assert store.read_blocks(3, 2) == b"".join(len(m).to_bytes(2, "big") + m for m in msgs[2:4])
    # the data file is the header then the MoldUDP64 blocks; the index one entry per datagram
    data = Path(store.data_path).read_bytes()
    assert data[FILE_HEADER_SIZE:] == b"".join(len(m).to_bytes(2, "big") + m for m in msgs)
    n_packets = len(packets_of(msgs[:700])) + len(packets_of(msgs[700:], first=701))
    assert os.path.getsize(store.index_path) == n_packets * INDEX_ENTRY.size


def test_a_datagram_that_does_not_continue_the_sequence_is_refused(tmp_path: Path) -> None:
    with FeedStore(str(tmp_path), SESSION) as store:
        store.append_packets(packets_of(messages(10)))
        with pytest.raises(ValueError, match="seq 12"):
            store.append_packets(packets_of(messages(3), first=12))
        assert store.count == 10
        store.append_packets(packets_of(messages(3), first=11))
        assert store.count == 13


def test_reopen_finds_the_count_and_appends_after_it(tmp_path: Path) -> None:
    msgs = messages(500)
    with FeedStore(str(tmp_path), SESSION) as store:
        store.append_packets(packets_of(msgs[:300]))
    with FeedStore(str(tmp_path), SESSION) as store:
        assert store.count == 300 and not store.notes
        store.append_packets(packets_of(msgs[300:], first=301))
    with FeedStore(str(tmp_path), SESSION) as store:
        assert store.read(1, 500) == msgs


def test_a_torn_last_block_is_cut_and_a_lagging_index_is_walked(tmp_path: Path) -> None:
    msgs = messages(400)
    with FeedStore(str(tmp_path), SESSION) as store:
        store.append_packets(packets_of(msgs))
        data_path, index_path = store.data_path, store.index_path
    # the process died inside the last data write, before its index write
    os.truncate(data_path, os.path.getsize(data_path) - 3)
    os.truncate(index_path, os.path.getsize(index_path) - INDEX_ENTRY.size - 7)
    with FeedStore(str(tmp_path), SESSION) as store:
        assert store.count == 399
        assert any("torn" in n for n in store.notes)
        assert store.read(1, 400) == msgs[:399]
        assert os.path.getsize(index_path) % INDEX_ENTRY.size == 0
        store.append_packets(packets_of(msgs[399:], first=400))
        assert store.read(390, 20) == msgs[389:]


def test_index_entries_pointing_past_the_data_are_dropped(tmp_path: Path) -> None:
    msgs = messages(100)
    with FeedStore(str(tmp_path), SESSION) as store:
        store.append_packets(packets_of(msgs))
        data_path, index_path = store.data_path, store.index_path
    with open(index_path, "ab") as f:
        f.write(INDEX_ENTRY.pack(101, os.path.getsize(data_path) + 50))
    with FeedStore(str(tmp_path), SESSION) as store:
        assert store.count == 100
        assert store.read(1, 100) == msgs


def test_a_reader_in_another_process_sees_new_appends_after_refresh(tmp_path: Path) -> None:
    msgs = messages(300)
    writer = FeedStore(str(tmp_path), SESSION)
    writer.append_packets(packets_of(msgs[:100]))
    reader = FeedStore.open_reader(str(tmp_path), SESSION)
    assert reader.count == 100
    writer.append_packets(packets_of(msgs[100:], first=101))
    assert reader.count == 100 and reader.refresh() == 300
    assert reader.read(95, 10) == msgs[94:104]
    writer.close()
    reader.close()


def test_files_of_another_session_or_format_are_refused(tmp_path: Path) -> None:
    FeedStore(str(tmp_path), SESSION).close()
    os.rename(tmp_path / "2311140130.feed", tmp_path / "2311140131.feed")
    with pytest.raises(StoreError, match="holds session"):
        FeedStore(str(tmp_path), b"2311140131")
    (tmp_path / "2311140132.feed").write_bytes(b"not a feed store at all, really no" * 2)
    with pytest.raises(StoreError, match="not a matchwire feed store"):
        FeedStore(str(tmp_path), b"2311140132")
    with pytest.raises(ValueError):
        FeedStore(str(tmp_path), b"SHORT")
