"""benchmarks/gpu.py, the command behind docs/howto/cost.md: its cost table's arithmetic, and the whole command on
the CPU at a tiny size (every run kind of ``--flows`` timed beside the discrete run)."""
import os
import re
import sys

import pytest
import torch

import pyrod

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu  # noqa: E402


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _seconds(duration):
    value, unit = duration.split()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


def test_cost_table_sums_the_discrete_and_central_columns_and_scales_them_linearly_in_n():
    rows = [("cnn", 60362, 200, "eos", 0.5, 0.25, {"stable": 0.1, "rod": 1.5, "central": 13.75}),
            ("mlp", 855050, 200, "eos", 0.2, 0.02, {"stable": 0.05, "rod": 0.2, "central": 0.1})]
    lines = gpu.summary_table(rows, ["stable", "rod", "central"], project_n=5000).splitlines()
    head = _cells(lines[0])
    assert head[-3:] == ["central / rod", "1,000 steps discrete + central",
                         "the same at n = 5000 (linear in n, extrapolated)"]
    # the central flow's floor, where a row has it: its seconds and floor / rod after central / rod
    floored = [r[:6] + ({**r[6], gpu.FLOOR: f},) for r, f in zip(rows, (6.0, 0.05), strict=True)]
    fhead, frow = (_cells(ln) for ln in gpu.summary_table(floored, ["stable", "rod", "central"]).splitlines()[::2])
    cnn = dict(zip(fhead, frow, strict=True))
    assert cnn[f"{gpu.FLOOR} s/unit time"] == "6" and cnn["floor / rod"] == "4.00"   # 6 / 1.5
    assert fhead.index("floor / rod") == fhead.index("central / rod") + 2
    # a start-regime row (below the EoS, where the floor bounds nothing) has no floor: "–"
    mixed = [floored[0], rows[0][:3] + ("start",) + rows[0][4:]]
    mlines = gpu.summary_table(mixed, ["stable", "rod", "central"]).splitlines()
    start = dict(zip(_cells(mlines[0]), _cells(mlines[3]), strict=True))
    assert start["regime"] == "start" and start["floor / rod"] == "–" and start["central / rod"] == "9.17"
    cnn = dict(zip(head, _cells(lines[2]), strict=True))
    assert cnn["rod s/unit time"] == "1.5" and cnn["central / rod"] == "9.17"     # 13.75 / 1.5
    assert cnn["1,000 steps discrete + central"] == "3.9 h"                     # 1000 × 14.0 s = 14,000 s
    assert cnn["the same at n = 5000 (linear in n, extrapolated)"] == "97.2 h"  # × 5000 / 200
    mlp = dict(zip(head, _cells(lines[3]), strict=True))
    assert mlp["1,000 steps discrete + central"] == "2.0 min"                   # 1000 × 0.12 s = 120 s
    # without the central flow there is no 1,000-step column; without the rod no ratio
    lines = gpu.summary_table([r[:6] + ({"stable": 0.1},) for r in rows], ["stable"]).splitlines()
    assert _cells(lines[0])[-1] == "stable s/unit time" and len(_cells(lines[2])) == 7


def test_cost_table_command_rejects_a_name_that_is_not_a_flow_and_a_chunk_that_leaves_nothing_timed():
    with pytest.raises(SystemExit, match="not flows: \\['rodd'\\]"):
        gpu.main(["--device", "cpu", "--flows", "rod,rodd"])
    with pytest.raises(SystemExit, match="not flows: \\['midpoint'\\]"):     # a run kind, but not a flow
        gpu.main(["--device", "cpu", "--flows", "midpoint"])
    with pytest.raises(SystemExit, match="--chunk 6: must be >= 1 and below --flow-steps 6"):
        gpu.main(["--device", "cpu", "--chunk", "6"])
    for warmup in ("1", "3", "6", "0"):          # not a multiple of --chunk 2, or nothing left to time
        with pytest.raises(SystemExit, match=f"--warmup {warmup}: must be a multiple of --chunk 2"):
            gpu.main(["--device", "cpu", "--warmup", warmup])


@pytest.mark.filterwarnings("ignore:central flow. more than max_track")
def test_cost_table_command_times_every_run_kind_on_the_cpu(capsys, monkeypatch):
    threads = torch.get_num_threads()
    calls, simulate = [], pyrod.simulate

    def recording(*args, **kw):
        calls.append(kw)
        return simulate(*args, **kw)
    monkeypatch.setattr(pyrod, "simulate", recording)
    try:
        gpu.main(["--device", "cpu", "--n", "4", "--cpu-n", "0", "--models", "cnn", "--regimes", "eos",
                  "--flows", "stable,rod,central", "--backend", "default", "--flow-steps", "4", "--project-n", "40",
                  "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines() if ln.startswith("|")]
    head, row = _cells(table[0]), dict(zip(_cells(table[0]), _cells(table[2]), strict=True))
    assert head[:6] == ["model", "d", "n", "regime", "1 cold λmax solve s", "discrete s/step (no eigs)"]
    assert row["model"] == "cnn" and row["n"] == "4" and row["regime"] == "eos"
    for flow in ("stable", "rod", "central"):
        assert float(row[f"{flow} s/unit time"]) > 0, row
    disc, central = float(row["discrete s/step (no eigs)"]), float(row["central s/unit time"])
    assert float(row["central / rod"]) == pytest.approx(central / float(row["rod s/unit time"]), rel=0.02)
    # the floor: four right-hand sides' gradient graph, HVP and third-derivative pair, below what the flow costs
    floor = float(row[f"{gpu.FLOOR} s/unit time"])
    assert 0 < floor < central
    assert float(row["floor / rod"]) == pytest.approx(floor / float(row["rod s/unit time"]), rel=0.02)
    assert _seconds(row["1,000 steps discrete + central"]) == pytest.approx(1000 * (disc + central), rel=0.05)
    assert "(ok) critical 100% of steps" in out        # η = 2.05/λ0: the central flow is critical from its start
    # the model's table is printed as soon as the model is done too (a run cut at a time limit keeps it)
    assert [ln[len("[cnn] "):] for ln in out.splitlines() if ln.startswith("[cnn] |")] == table[:3]
    # each flow's own counters over the timed chunks: the rod flow two gradients per right-hand side and no HVPs;
    # the central flow at least Euler ×4's four gradients, and HVPs (tracking, third derivatives) as it is critical
    counts = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in
              re.finditer(r"eos (\w+) s/unit time .*per unit time ([\d.]+) gradients, ([\d.]+) HVPs", out)}
    assert set(counts) == {"stable", "rod", "central"}, out
    assert counts["rod"][0] >= 2 and counts["rod"][1] == 0
    assert counts["central"][0] >= 4 and counts["central"][1] > 0
    # what the central flow's HVPs went to, over the same chunks: the parts add up to its HVP count (a
    # third-derivative pair is two backward passes), one right-hand side per Euler substep
    m = re.search(r"of which, per unit time (.*)", out)
    assert m is not None and out.count("of which, per unit time") == 1, out     # the central row only
    work = {label.strip(): float(v) for label, v in re.findall(r"([A-Za-z -]+?) ([\d.]+)(?:, |$)", m.group(1))}
    assert set(work) == set(gpu.WORK_COUNTERS.values()), work
    hvp_parts = sum(v for label, v in work.items() if label.endswith("HVPs"))
    assert hvp_parts + 2 * work["third-derivative pairs"] == pytest.approx(counts["central"][1], abs=0.1)
    assert work["right-hand sides"] == 4 and work["third-derivative pairs"] >= 4      # critical at every one
    # the runs use --threads (not pyrod.threads' own choice), --chunk and, with --backend default, pyrod's backend
    assert len(calls) == 3 and all(c["threads"] == 1 and c["chunk"] == 2 and c["backend"] is None for c in calls)


@pytest.mark.filterwarnings("ignore:central flow. more than max_track")
def test_vs_reference_times_pyrods_chunks_through_the_shared_chunk_timer():
    import vs_reference as vr
    X, y = vr.make_data(200)
    _, chunks = vr.run_pyrod("gd", X, y, 8, 3, "float32", 1, vr.GD_LR, 0, "cpu")
    for run in ("discrete", "central"):             # one entry per chunk of one step: (k0, steps, s, grads, HVPs)
        assert [c[:2] for c in chunks[run]] == [(0, 1), (1, 1), (2, 1)], chunks
        assert all(c[2] > 0 for c in chunks[run])
    assert all(c[3] >= 4 for c in chunks["central"])   # Euler ×4: four right-hand-side gradients per step
    steady = [c[2] for c in chunks["central"][1:]]     # the steady window from step 1: the median s per step
    assert vr.steady_pyrod(chunks["central"], 1) == pytest.approx(sorted(steady)[0] / 2 + sorted(steady)[1] / 2)


def test_work_breakdown_is_the_counters_per_unit_time_after_the_first_chunk():
    rows = [(2, {"rr_hvp": 10, "expand_hvp": 4, "refresh_hvp": 50, "refine_hvp": 0, "n_t3": 8, "n_rhs": 8}),
            (4, {"rr_hvp": 20, "expand_hvp": 8, "refresh_hvp": 50, "refine_hvp": 0, "n_t3": 16, "n_rhs": 16}),
            (6, {"rr_hvp": 34, "expand_hvp": 8, "refresh_hvp": 70, "refine_hvp": 2, "n_t3": 24, "n_rhs": 24})]
    assert gpu.work_breakdown(rows) == {"rr_hvp": 6.0, "expand_hvp": 1.0, "refresh_hvp": 5.0, "refine_hvp": 0.5,
                                        "n_t3": 4.0, "n_rhs": 4.0}
    assert gpu.work_breakdown(rows[:1]) is None and gpu.work_breakdown(None) is None   # nothing timed
    other = [(2, {"n_jacobian": 3, "n_rhs": 4}), (4, {"n_jacobian": 9, "n_rhs": 8})]   # a flow counting other things
    assert gpu.work_breakdown(other) is None


def test_warmup_times_only_the_chunks_from_that_step_on():
    """``--warmup W``: the seconds, counts and work breakdown come from the chunks that start at step W or later
    (the default, one chunk, as before)."""
    chunks = [(0, 2, 9.0, 40, 90), (2, 2, 5.0, 20, 40), (4, 2, 3.0, 12, 20), (6, 2, 3.5, 12, 24)]
    assert gpu._timed_totals(chunks) == (6, 11.5, 44, 84)
    assert gpu._timed_totals(chunks, 4) == (4, 6.5, 24, 44)
    rows = [(2, {"rr_hvp": 32, "n_rhs": 8}), (4, {"rr_hvp": 52, "n_rhs": 16}), (6, {"rr_hvp": 66, "n_rhs": 24}),
            (8, {"rr_hvp": 80, "n_rhs": 32})]
    rows = [(k, {key: c.get(key, 0) for key in gpu.WORK_COUNTERS} | c) for k, c in rows]
    assert gpu.work_breakdown(rows)["rr_hvp"] == 8.0              # (80 - 32) / 6
    assert gpu.work_breakdown(rows, 4)["rr_hvp"] == 7.0           # (80 - 52) / 4
    assert gpu.work_breakdown(rows, 4)["n_rhs"] == 4.0
    assert gpu.work_breakdown(rows, 8) is None                    # nothing after the warm-up


def test_central_floor_times_one_right_hand_sides_least_derivative_work(monkeypatch):
    """Each timed call builds the graph of ∇L at a new point and does one HVP and one third-derivative pair (three
    backward passes on the problem's counter); the floor is substeps × the seconds of one call."""
    prob = gpu._problem("cnn", 4, "cpu", "float32", None)
    calls = []

    def one_call_rate(fn, device):
        for _ in range(2):
            n0, graph0 = prob.n_hvp, prob._hcache.entry
            fn()
            calls.append((prob.n_hvp - n0, prob._hcache.entry is not graph0))
        return 2.0                                   # calls per second
    monkeypatch.setattr(gpu, "_rate", one_call_rate)
    assert gpu._central_rhs_floor(prob, "cpu", substeps=4) == pytest.approx(4 / 2.0)
    assert calls == [(3, True), (3, True)]           # a new graph at each call, 1 + 2 backward passes
