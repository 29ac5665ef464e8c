"""scripts/benchmark_load's pure parts: the seeded Poisson arrivals, percentile and SLO arithmetic, the tables and
the docs section writer. No server, no timing."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import statistics
import sys

import pytest

from portrait.settings import PROJECT_ROOT


def load_script():
    path = PROJECT_ROOT / "scripts" / "benchmark_load"
    loader = importlib.machinery.SourceFileLoader("benchmark_load", str(path))
    spec = importlib.util.spec_from_loader("benchmark_load", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_load"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


bl = load_script()
KINDS = [bl.RequestType(steps, size) for size in (256, 128) for steps in (10, 20, 30)]


def test_arrivals_are_seeded_and_bounded():
    a = bl.poisson_arrivals(2.0, KINDS, 50, 1000.0, seed=7)
    assert a == bl.poisson_arrivals(2.0, KINDS, 50, 1000.0, seed=7)
    assert a != bl.poisson_arrivals(2.0, KINDS, 50, 1000.0, seed=8)
    assert len(a) == 50 and all(x.at < y.at for x, y in zip(a, a[1:]))
    short = bl.poisson_arrivals(2.0, KINDS, 10_000, 30.0, seed=7)
    assert short and short[-1].at <= 30.0 and len(short) < 10_000
    with pytest.raises(ValueError):
        bl.poisson_arrivals(0.0, KINDS, 5, 10.0, seed=1)


def test_arrivals_are_poisson_with_the_asked_rate():
    rate = 0.4
    a = bl.poisson_arrivals(rate, KINDS, 20_000, 1e9, seed=3)
    gaps = [y.at - x.at for x, y in zip(a, a[1:])]
    mean = statistics.mean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # exponential gaps: standard deviation = mean, P(gap > mean) = 1/e, memoryless
    assert statistics.pstdev(gaps) == pytest.approx(mean, rel=0.05)
    assert sum(g > mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)
    # counts in windows of 100 s are Poisson: variance = mean = 40
    counts = [0] * int(a[-1].at // 100)
    for x in a:
        if int(x.at // 100) < len(counts):
            counts[int(x.at // 100)] += 1
    assert statistics.mean(counts) == pytest.approx(rate * 100, rel=0.05)
    assert statistics.pvariance(counts) == pytest.approx(rate * 100, rel=0.25)


def test_arrivals_mix_the_types_in_equal_parts():
    a = bl.poisson_arrivals(1.0, KINDS, 60, 1e9, seed=11)
    for start in range(0, 60, len(KINDS)):  # each block of 6 is a permutation of the types
        assert sorted(x.kind for x in a[start:start + len(KINDS)]) == sorted(KINDS)
    assert len({x.seed for x in a}) == len(a)


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert bl.percentile(values, 50) == 50
    assert bl.percentile(values, 90) == 90
    assert bl.percentile(values, 99) == 99
    assert bl.percentile(values, 100) == 100
    assert bl.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert bl.percentile([5.0, 1.0], 99) == 5.0  # fewer than 100 values: p99 is the maximum
    assert bl.percentile([7.0], 1) == 7.0
    assert bl.percentile([], 50) is None
    with pytest.raises(ValueError):
        bl.percentile([1.0], 0)


def outcome(kind, latency=None, error=None, sent=100.0):
    o = bl.Outcome(kind, scheduled=sent - 0.01, sent=sent)
    if error:
        o.error = error
    else:
        o.done = sent + latency
    return o


def test_slo_share_counts_failures_as_misses():
    fast, slow = KINDS[0], KINDS[2]
    single = {fast: 1.0, slow: 2.0}
    assert bl.slo_seconds(slow, single) == 6.0
    outcomes = [outcome(fast, 2.9), outcome(fast, 3.1), outcome(slow, 5.9), outcome(slow, 6.5),
                outcome(fast, error="ServerError: boom")]
    assert bl.within_slo(outcomes, single) == pytest.approx(2 / 5)
    assert bl.within_slo(outcomes, single, factor=10) == pytest.approx(4 / 5)
    assert bl.within_slo([], single) is None


def test_summarize():
    fast = KINDS[0]
    single = {fast: 1.0}
    outcomes = [outcome(fast, 1.0, sent=10.0), outcome(fast, 2.0, sent=11.0), outcome(fast, 4.0, sent=12.0),
                outcome(fast, error="Unavailable: x", sent=13.0)]
    s = bl.summarize(outcomes, single)
    assert (s["sent"], s["completed"], s["failed"]) == (4, 3, 1)
    assert s["images_per_s"] == pytest.approx(3 / (16.0 - 10.0))  # first send to last completion
    assert (s["p50_s"], s["p90_s"], s["p99_s"]) == (2.0, 4.0, 4.0)
    assert s["within_slo"] == pytest.approx(2 / 4)
    assert s["send_lag_max_s"] == pytest.approx(0.01)
    assert s["errors"] == ["Unavailable: x"]
    empty = bl.summarize([outcome(fast, error="e")], single)
    assert empty["images_per_s"] == 0.0 and empty["p99_s"] is None


def test_rows_per_execution_from_triton_statistics():
    before = {"inference_count": "10", "execution_count": "10"}
    after = {"inference_count": "42", "execution_count": "18"}
    assert bl.rows_per_execution(before, after) == pytest.approx(32 / 8)
    assert bl.rows_per_execution({}, {"inference_count": "8", "execution_count": "2"}) == 4.0
    assert bl.rows_per_execution(after, after) is None


def row(policy, load, p99, images=1.0):
    return {"policy": policy, "load": load, "rate": load * 0.5, "sent": 10, "completed": 9, "failed": 1,
            "images_per_s": images, "p50_s": p99 / 2, "p90_s": p99 * 0.9, "p99_s": p99, "within_slo": 0.8,
            "unet_rows_per_forward": None}


def test_markdown_table():
    table = bl.markdown_table([row("continuous", 0.2, 3.0), row("batch", 1.2, 10.0)]).splitlines()
    assert table[0].startswith("| policy | offered load |") and table[0].count("|") == table[1].count("|")
    assert table[2] == ("| continuous | 20% | 0.100 | 10 | 9 | 1 | 1.000 | 1.50 | 2.70 | 3.00 | 80% | - |")
    assert table[3].startswith("| batch | 120% | 0.600 |")
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_goal_lines():
    rows = [row(p, x, {"continuous": 2.0, "batch": 3.0, "sequential": 4.0}[p], images={"batch": 1.0}.get(p, 0.95))
            for p in bl.POLICIES for x in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)]
    lines = bl.goal_lines(rows)
    assert "**met**" in lines[0] and "40%, 60%, 80%" in lines[0]
    assert "**0.95**" in lines[1] and "**met**" in lines[1]
    rows[bl.POLICIES.index("continuous") * 6 + 2]["p99_s"] = 5.0  # continuous at 60%
    assert "missed" in bl.goal_lines(rows)[0] and "(not lowest at 60%)" in bl.goal_lines(rows)[0]


def test_replace_section_keeps_the_rest_of_the_file():
    doc = "# Benchmarks\n\nintro\n\n<!-- benchmark:begin -->\nold table\n<!-- benchmark:end -->\n\nmore text\n"
    first = bl.replace_section(doc, "table one\n", "## Heading")
    assert first.startswith(doc.rstrip("\n")) and "## Heading\n\n" + bl.BEGIN + "\ntable one\n" + bl.END in first
    second = bl.replace_section(first, "table two")
    assert second == first.replace("table one", "table two")
    assert second.count(bl.BEGIN) == 1 and "old table" in second and "more text" in second
    tail = first.replace(bl.END + "\n", bl.END + "\n\nafter\n")
    assert bl.replace_section(tail, "x").endswith(bl.END + "\n\nafter\n")
