"""Unmasking client frames: the C helper wsapp uses and its pure-Python fallback agree."""

from __future__ import annotations

import os

import pytest
from websockets.speedups import apply_mask

from wsapp import frames

LENGTHS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 125, 126, 4095, 65_000, 65_536, 100_003]


def test_frames_unmask_with_the_c_helper() -> None:
    # the pure-Python XOR made 64 KiB messages CPU-bound (issue 14): the fast one is in use
    assert frames._apply_mask is apply_mask


@pytest.mark.parametrize("n", LENGTHS)
def test_the_fallback_agrees_with_the_c_helper(n: int) -> None:
    data, mask = os.urandom(n), os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 200 else apply_mask(data, mask)
    assert frames._unmask_py(data, mask) == expected
    assert frames.unmask(data, mask) == expected


@pytest.mark.parametrize("n", LENGTHS)
def test_unmask_reads_a_slice_of_a_buffer_in_place(n: int) -> None:
    buf = bytearray(os.urandom(n + 10))
    mask = os.urandom(4)
    with memoryview(buf) as view:
        got = frames.unmask(view[6 : 6 + n], mask)
        fallback = frames._unmask_py(view[6 : 6 + n], mask)
    assert got == fallback == apply_mask(bytes(buf[6 : 6 + n]), mask)
    assert isinstance(got, bytes) and isinstance(fallback, bytes)
    del buf[:3]  # no view left behind: the parse buffer can still be resized
