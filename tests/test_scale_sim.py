"""bench/scale_sim.py's pure parts on made-up numbers: the CPU arithmetic, the table and
targets of issue 15, /proc and CLUSTER NODES parsing, and its WebSocket framing."""

from __future__ import annotations

import pytest

from bench import scale_sim as sim


def run(nodes: int, node_cpu_s: list[float], redis_cpu_s: float, wall_s: float, messages: int = 5000) -> sim.RoomRun:
    return sim.RoomRun(nodes, messages, wall_s, node_cpu_s, redis_cpu_s)


# issue 15's "before" table, as the CPU seconds 5,000 messages would have taken
ISSUE_RUNS = [
    run(2, [0.650, 0.430], 0.250, 0.9),
    run(4, [1.230, 0.550, 0.485, 0.485], 0.470, 5000 / 2430),
    run(8, [1.240, 0.580] + [0.490] * 6, 0.610, 5000 / 1561),
]


def test_cpu_seconds_become_milliseconds_per_thousand_messages() -> None:
    assert sim.per_1000_ms(0.5, 5000) == pytest.approx(100.0)
    assert sim.per_1000_ms(0.01, 1000) == pytest.approx(10.0)


def test_a_row_splits_sender_deliverer_and_the_mean_of_the_others() -> None:
    row = sim.row_of(run(4, [1.0, 0.5, 0.1, 0.3], 0.25, 2.0))
    assert (row.sender_ms, row.delivering_ms, row.redis_ms) == pytest.approx((200.0, 100.0, 50.0))
    assert row.other_ms == pytest.approx(40.0)  # mean of 20 and 60, not their sum or one of them
    assert row.other_ratio == pytest.approx(0.4)
    assert row.messages_per_s == pytest.approx(2500.0)
    assert sim.row_of(run(2, [1.0, 0.5], 0.25, 2.0)).other_ms is None


def test_the_issue_table_comes_out_as_the_issue_wrote_it() -> None:
    table = sim.room_table(sim.summarize(ISSUE_RUNS)).splitlines()
    assert table[2] == "| 2 | 130 ms | 86 ms | – | 50 ms | 5,556 |"
    assert table[3] == "| 4 | 246 ms | 110 ms | 97 ms | 94 ms | 2,430 |"
    assert table[4] == "| 8 | 248 ms | 116 ms | 98 ms | 122 ms | 1,561 |"
    assert sim.ms(4.25) == "4.2 ms"  # small figures (an idle node after routing) keep a decimal


def test_the_before_figures_miss_both_targets() -> None:
    t = sim.targets(sim.summarize(ISSUE_RUNS))
    assert t.other_ratio == pytest.approx({4: 97 / 110, 8: 98 / 116})
    assert t.other_ok is False
    assert t.redis_growth == pytest.approx((8, 2, 122 / 50))
    assert t.redis_ok is False
    text = sim.targets_text(t)
    assert "4 nodes 88%, 8 nodes 84% (target ≤ 5%): not met" in text
    assert "8 vs 2 nodes: 2.44× (target ≤ 1.2×): not met" in text


def test_targets_are_met_at_and_below_their_limits() -> None:
    after = [
        run(2, [0.6, 0.4], 0.250, 1.0),
        run(8, [0.6, 0.4] + [0.02] * 6, 0.300, 1.0),  # others exactly 5%, Redis exactly 1.2x
    ]
    t = sim.targets(sim.summarize(after))
    assert (t.other_ok, t.redis_ok) == (True, True)
    worse = sim.targets(sim.summarize([after[0], run(8, [0.6, 0.4] + [0.0201] * 6, 0.3001, 1.0)]))
    assert (worse.other_ok, worse.redis_ok) == (False, False)


def test_one_node_count_has_no_growth_and_two_nodes_no_ratio() -> None:
    t = sim.targets(sim.summarize([run(2, [0.6, 0.4], 0.25, 1.0)]))
    assert (t.other_ratio, t.other_ok, t.redis_growth, t.redis_ok) == ({}, None, None, None)
    assert "n/a" in sim.targets_text(t)


def test_repeats_are_summarised_by_their_median() -> None:
    rows = sim.summarize([run(4, [1.0, c, c, c], 0.1 * c, 1.0) for c in (0.1, 0.5, 0.2)])
    assert len(rows) == 1
    assert rows[0].delivering_ms == pytest.approx(40.0)
    assert rows[0].other_ms == pytest.approx(40.0)
    assert rows[0].redis_ms == pytest.approx(4.0)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(x) for x in range(1, 11)]
    assert sim.percentile(values, 50) == 5.0
    assert sim.percentile(values, 90) == 9.0
    assert sim.percentile(values, 100) == 10.0
    assert sim.percentile([3.0], 50) == 3.0


def test_fanout_table_shows_milliseconds_and_subscribers_per_node() -> None:
    table = sim.fanout_table([sim.FanoutRun(4, "redis", 1000, [0.010, 0.020, 0.030, 0.040])])
    assert table.splitlines()[2] == "| 4 | redis | 1,000 (250) | 4 | 20.0 ms | 40.0 ms | 40.0 ms |"


def test_proc_stat_cpu_is_utime_plus_stime_past_a_command_name_with_parentheses() -> None:
    stat = "4242 (gunicorn: a) b) S 4200 4200 4200 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 3 0 978503 0"
    assert sim.stat_cpu_ticks(stat) == 1234 + 56
    assert sim.stat_ppid(stat) == 4200


def test_cluster_masters_are_the_live_masters() -> None:
    text = (
        "a1 127.0.0.1:30002@40002 master - 0 1 2 connected 5461-10922\n"
        "b2 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460\n"
        "c3 127.0.0.1:30004@40004 slave b2 0 1 1 connected\n"
        "d4 127.0.0.1:30005@40005 master,fail - 0 1 4 disconnected\n"
    )
    assert sim.cluster_masters(text) == [("127.0.0.1", 30001), ("127.0.0.1", 30002)]


def test_client_frame_masks_as_rfc_6455_shows() -> None:
    # RFC 6455 5.7: a masked text frame holding "Hello"
    frame = sim.client_frame(b"Hello", mask=bytes.fromhex("37fa213d"))
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")
    assert sim.client_frame(b"x" * 200, mask=b"\0\0\0\0")[:4] == bytes([0x81, 0xFE, 0, 200])


def test_take_frames_leaves_a_partial_frame_in_the_buffer() -> None:
    long = b"y" * 300
    data = bytes.fromhex("810548656c6c6f") + bytes([0x89, 0]) + bytes([0x81, 126]) + len(long).to_bytes(2, "big")
    buf = bytearray(data + long[:100])
    assert sim.take_frames(buf) == [(0x1, b"Hello"), (0x9, b"")]
    assert len(buf) == 4 + 100
    buf += long[100:]
    assert sim.take_frames(buf) == [(0x1, long)]
    assert buf == bytearray()


def test_take_frames_refuses_fragments_and_masked_server_frames() -> None:
    with pytest.raises(ValueError):
        sim.take_frames(bytearray(bytes.fromhex("010548656c6c6f")))  # FIN clear
    with pytest.raises(ValueError):
        sim.take_frames(bytearray(bytes.fromhex("818537fa213d7f9f4d5158")))  # masked
