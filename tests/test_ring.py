"""The shared ring that carries task reports from an engine's process to its recording process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lineage_ledger._capture.ring import _FRAME, Ring

SIZE = 1 << 16


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=3000), st.integers(0, 3)), min_size=1, max_size=120))
def test_frames_come_out_in_order_across_laps_whatever_the_readers_pace(steps):
    """Frames of any size, the reader taking after every few puts: all come out, in order,
    however the ring wraps; a full ring refuses instead of overwriting."""
    ring = Ring.create(SIZE)
    try:
        sent: list[bytes] = []
        got: list[bytes] = []
        for payload, takes in steps:
            if not ring.put(b"R", payload):
                assert ring.pending() > 0  # an empty ring takes any frame up to half its size
                got.extend(p for _, p in ring.take())
                assert ring.put(b"R", payload)  # room after the reader took everything
            sent.append(payload)
            for _ in range(takes):
                got.extend(p for _, p in ring.take(limit=2))
        got.extend(p for _, p in ring.take())
        assert got == sent
        assert ring.left() == 0 and ring.pending() == 0
    finally:
        ring.close()


def test_a_full_ring_refuses_and_takes_again_once_read():
    ring = Ring.create(SIZE)
    try:
        payload = b"x" * 1000
        count = 0
        while ring.put(b"R", payload):
            count += 1
        assert count == SIZE // (1000 + _FRAME.size)
        assert not ring.put(b"R", payload)  # still full: nothing was overwritten
        assert len(ring.take(limit=3)) == 3
        for _ in range(3):
            assert ring.put(b"F", payload)
        frames = ring.take()
        assert len(frames) == count and frames[-1] == (b"F", payload)
    finally:
        ring.close()


def test_a_frame_too_large_for_the_ring_is_refused():
    ring = Ring.create(SIZE)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            ring.put(b"R", b"x" * SIZE)
        with pytest.raises(ValueError, match="multiple of the page size"):
            Ring.create(SIZE + 1)
    finally:
        ring.close()


def test_bytes_from_an_earlier_lap_are_never_taken_as_new():
    """A reader that sees the new end counter before the new bytes (possible on weakly
    ordered CPUs) must wait for them, not take what the last lap left there."""
    ring = Ring.create(SIZE)
    try:
        frame = 1024  # frames that tile the ring: the next lap starts where frame 0 is
        lap = [(b"%05d" % i).ljust(frame - _FRAME.size, b".") for i in range(SIZE // frame)]
        for payload in lap:
            assert ring.put(b"R", payload)
        assert [p for _, p in ring.take()] == lap
        # Publish the next frame's end without writing the frame: frame 0 is still there,
        # whole and with a CRC that matched at its old position.
        ring._map[0:8] = (SIZE + frame).to_bytes(8, sys.byteorder)
        assert ring.take() == []
        assert ring.left() == frame
        ring._tail = SIZE  # the writer now writes it: the reader takes the new frame
        assert ring.put(b"R", b"new")
        assert ring.take() == [(b"R", b"new")]
    finally:
        ring.close()


def test_another_process_reads_what_a_killed_writer_published(tmp_path):
    """The mapping outlives the writer: kill -9 it, and a reader started afterwards on the
    same descriptor takes every frame it had published."""
    ring = Ring.create(SIZE)
    try:
        writer = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import os, sys, time
                from lineage_ledger._capture.ring import Ring
                ring = Ring({ring.fd}, {SIZE})
                for i in range(500):
                    assert ring.put(b"R", b"report %d" % i)
                print("published", flush=True)
                time.sleep(60)
            """)],
            pass_fds=(ring.fd,), stdout=subprocess.PIPE, text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "published"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(10)
        reader = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                from lineage_ledger._capture.ring import Ring
                ring = Ring({ring.fd}, {SIZE})
                frames = ring.take()
                print(len(frames), frames[0][1].decode(), frames[-1][1].decode(), ring.left())
            """)],
            pass_fds=(ring.fd,), capture_output=True, text=True, timeout=60, check=True,
        )
        assert reader.stdout.split() == ["500", "report", "0", "report", "499", "0"]
    finally:
        ring.close()
