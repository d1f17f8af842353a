"""The report's kernel counters over big allowlists: growth inside the window and the netflow
listing step only the entries with traffic and sort only those; the results are the plain
definitions (every entry stepped, every entry sorted by its key), checked here against them
over random readings, resets and re-applies included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_ipsetdump import entry as kernel_entry

from sentinel.enforce import ipsetdump
from sentinel.evidence import counters
from sentinel.evidence.counters import netflow, window_counters
from sentinel.evidence.window import Window
from sentinel.store.events import Event

ENTRIES = [f"198.18.0.{i},tcp:{port}" for i in range(6) for port in (443, 8443)]


def plain_growth(readings: list[dict]) -> dict[str, list[int]]:
    """`increase` of each entry over the readings, every entry stepped (the definition)."""
    totals: dict[str, list[float]] = {}
    previous: dict | None = None
    for r in readings:
        for entry, pb in r["sets"].items():
            total = totals.setdefault(entry, [0.0, 0.0])
            if previous is not None:
                before = previous["sets"].get(entry, [0, 0])
                for i in (0, 1):
                    same = pb[i] >= before[i] and previous["applied_at"] == r["applied_at"]
                    total[i] += pb[i] - before[i] if same else pb[i]
        previous = r
    return {e: [int(pb[0]), int(pb[1])] for e, pb in sorted(totals.items())}


def plain_busiest(entries, window, now, limit):
    def busy(entry):
        pb, kb = window.get(entry, [0, 0]), now.get(entry, (0, 0))
        return (-pb[0], -pb[1], -(kb[0] or 0), entry)

    return sorted(sorted(entries, key=busy)[:limit])


counts = st.sampled_from([0, 0, 0, 1, 5, 70]) | st.integers(0, 10**12)
reading = st.fixed_dictionaries(
    {
        "applied_at": st.sampled_from([1.0, 2.0]),
        "sets": st.dictionaries(st.sampled_from(ENTRIES), st.tuples(counts, counts).map(list)),
    }
)


def dumped(sets: dict[str, list[int]]) -> ipsetdump.Counters:
    """The kernel's counters as the netlink dump reader holds them (decoded on first use)."""
    out = ipsetdump.Counters()
    adt = b"".join(
        kernel_entry(e.split(",")[0], 32, int(e.split(":")[1]), 6, pb[0], pb[1])
        for e, pb in sets.items()
    )
    assert ipsetdump._entries(adt, 4, "sentinel-allow4", [], out)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(reading, min_size=1, max_size=5),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, 1, 2]),
)
def test_growth_and_netflow_are_the_plain_definitions(
    readings, in_window_baseline, with_kernel, from_dump, sorted_sets
):
    start = 1000.0
    snaps = [
        Event(
            layer="netfilter",
            kind="counters",
            ts=start + 10 * i + (0 if in_window_baseline else 5),
            detail={**r, "nflog": {"4": 0, "6": 0}},
        )
        for i, r in enumerate(readings)
    ]
    window = Window(start + 1, start + 1000)
    kernel_sets = readings[-1]["sets"] if with_kernel else {}
    kernel = {
        "read_at": window.until,
        "nflog_packets": {4: 0, 6: 0},
        "set_counters": {("sentinel-allow4", e): tuple(pb) for e, pb in kernel_sets.items()},
    }
    if from_dump:
        kernel["set_counters"] = dumped(kernel_sets)
        assert dict(kernel["set_counters"]) == {
            ("sentinel-allow4", e): tuple(pb) for e, pb in kernel_sets.items()
        }
    if sorted_sets:  # the kernel's sets, sorted (kernel_facts), split in one or two sets
        ordered = sorted(kernel_sets)
        cut = len(ordered) // 2 if sorted_sets == 2 else len(ordered)
        kernel["set_entries"] = [tuple(ordered[: cut + 1]), tuple(ordered[cut:])]  # one in both
    applied = {"applied_at": 0.5}
    series = [r for r, s in zip(readings, snaps, strict=True) if s.ts >= window.since]
    before = [r for r, s in zip(readings, snaps, strict=True) if s.ts < window.since][-1:]
    now = {
        "applied_at": applied["applied_at"],
        "sets": {e: list(pb) for e, pb in kernel_sets.items()},
    }
    expected = plain_growth(before + series + [now])
    got = window_counters(snaps, window, kernel, applied)
    assert got["sets"] == expected

    for limit in (1, 3, 100):
        counters.MAX_NETFLOW, saved = limit, counters.MAX_NETFLOW
        try:
            rows, summary = netflow(kernel, applied, got)
            plain = netflow(kernel, applied, {**got, "sets": dict(got["sets"])})
        finally:
            counters.MAX_NETFLOW = saved
        everything = set(expected) | set(kernel_sets)
        want = plain_busiest(everything, expected, kernel_sets, limit)
        assert (rows, summary) == plain  # the same from a plain dict of every entry
        assert [r["entry"] for r in rows] == want
        assert summary["entries"] == len(everything)
        assert summary["packets"] == sum(pb[0] for pb in expected.values())
        assert summary["bytes_since_apply"] == sum(pb[1] for pb in kernel_sets.values())
        for row in rows:
            assert [row["packets"], row["bytes"]] == expected.get(row["entry"], [0, 0])
            since = kernel_sets.get(row["entry"], (None, None))
            assert (row["packets_since_apply"], row["bytes_since_apply"]) == tuple(since)
