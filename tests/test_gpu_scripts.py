"""The GPU session's scripts (benchmarks/gpu_prepare.sh, benchmarks/gpu_checks.sh) and what they print.

A lent GPU gives one run of gpu_checks.sh (device time is scarce): its parts must run as they are on the machine's
image, and what a part finished before its time limit must be in its log. The smoke run (``-m slow``, about three
minutes on two cores) runs every part of the script on the CPU at a toy size."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prepare_refuses_a_folder_that_is_not_the_references_clone(tmp_path):
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_prepare.sh"), str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2, res
    assert f"{tmp_path} is not a git clone holding the reference's commit 1f074fb" in res.stderr
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_prepare.sh")], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode != 0 and "usage: bash benchmarks/gpu_prepare.sh REFERENCE_GIT" in res.stderr


def test_checks_refuse_a_cpu_device_without_smoke_and_exit_nonzero_naming_the_parts_that_failed(tmp_path):
    """DEVICE=cpu alone would run the parts sized for a GPU: refused. A part that fails does not stop the others,
    and the exit status and the last line say which failed (here every part, with a Python that always fails)."""
    script = os.path.join(ROOT, "benchmarks", "gpu_checks.sh")
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path / "a")}
    res = subprocess.run(["bash", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert res.returncode == 2 and "DEVICE=cpu needs SMOKE=1" in res.stderr, res
    env.update(SMOKE="1", PYTHON="false", PYROD_WHL="", OUT=str(tmp_path / "b"))
    res = subprocess.run(["bash", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert res.returncode == 1, res
    parts = re.findall(r"=== (\w+): exit (\d+) after", res.stdout)
    assert parts == [(p, "1") for p in ("vs_reference", "cuda_tests", "gpu_flows", "hvp_modes", "minibatch")], res
    assert res.stdout.rstrip().endswith("failed or stopped: vs_reference cuda_tests gpu_flows hvp_modes minibatch")


def test_the_full_run_puts_first_what_a_part_cut_at_its_limit_must_keep(tmp_path):
    """Each part of the GPU run is stopped at its own limit, so its order decides what is lost: the central flow's
    host-free test before tests/test_cuda.py (1-2 minutes alone), the widest MLP first against the reference, and
    the CNN and the ViT before the MLP. Read from the commands the full run gives a stand-in Python that prints its
    arguments (no GPU needed)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "ARGS $*"\nexit 1\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(fake), "PYROD_WHL": "", "OUT": str(out)}
    for name in ("DEVICE", "SMOKE"):         # the full run's defaults
        env.pop(name, None)
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_checks.sh")], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=60)
    assert res.returncode == 1, res

    def args(part):
        return (out / f"{part}.log").read_text().split("ARGS ", 1)[1].split()

    tests = [a for a in args("cuda_tests") if a.startswith("tests/")]
    assert tests == ["tests/test_host_sync.py", "tests/test_hvp_modes.py", "tests/test_cuda.py"], tests
    a = args("vs_reference")
    widths = [int(w) for w in a[a.index("--widths") + 1].split(",")]
    assert widths == sorted(widths, reverse=True) and widths[0] == 2048, widths
    for part in ("gpu_flows", "hvp_modes"):
        a = args(part)
        assert a[a.index("--models") + 1].split(",")[:2] == ["cnn", "vit"], (part, a)


def test_vs_reference_table_rows_with_and_without_the_reference(monkeypatch):
    """The table's rows (vs_reference prints each as soon as its width and optimizer are done, then the table), for a
    row with the reference's columns and one without (--skip-reference)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import vs_reference as vr
    entry = {"times": (0.02, 0.05), "eos": True,
             "agree": {"eos_pyrod": True, "eos_ref": False, "pred_rel_median": 3.9e-5, "pred_rel_max": 2e-3,
                       "enter_pyrod": 26, "enter_ref": 27}}
    row = {"width": 32, "dim": 99524, "opt": "gd", "lr": 0.037, "onset": 29, "restart": 26,
           "reference": (0.1, 0.2), "pyrod float32 tol 5e-05": entry}
    assert vr.table_rows(row) == [
        "| 32 (0.0995M) | gd | 0.037 | 29 / 26 | float32 tol 5e-05 | 0.1000 / 0.0200 / 5.00x | "
        "0.2000 / 0.0500 / 4.00x | yes / NO | 3.90e-05 / 2.00e-03 | 26 / 27 |"]
    del row["reference"]
    assert vr.table_rows(row) == [
        "| 32 (0.0995M) | gd | 0.037 | 29 / 26 | float32 tol 5e-05 | - / 0.0200 / - | - / 0.0500 / - | yes / - | - "
        "| - |"]
    assert vr.TABLE_HEADER.count("|") == vr.table_rows(row)[0].count("|")


@pytest.mark.slow
def test_every_part_of_the_gpu_checks_runs_on_the_cpu_at_a_toy_size(tmp_path):
    """DEVICE=cpu SMOKE=1: each part exits 0 and prints its table (the reference's columns where .ref/ holds the
    reference, from benchmarks/gpu_prepare.sh; else pyrod's alone). The CUDA tests are collected and skipped."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SMOKE": "1", "PYROD_WHL": "", "OUT": str(out)}
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "benchmarks", "gpu_checks.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        # the script leads its own session; each part's `timeout` makes a process group of its own inside it
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, log
    parts = re.findall(r"=== (\w+): exit (\d+) after", log)
    assert parts == [(p, "0") for p in ("vs_reference", "cuda_tests", "gpu_flows", "hvp_modes", "minibatch")], log
    vs = (out / "vs_reference.log").read_text()
    rows = [ln for ln in vs.splitlines() if ln.startswith("  [w8 ") and " row | " in ln]
    assert len(rows) == 2, vs                          # one per optimizer as soon as it is done, then the table
    assert all(r.split(" row ", 1)[1] in vs.split("per unit time (steady window)")[1] for r in rows)
    assert "skipped" in (out / "cuda_tests.log").read_text()
    flows = (out / "gpu_flows.log").read_text()
    assert all(f"| {m} |" in flows for m in ("mlp", "cnn", "vit")), flows
    assert "| ref32 |" in (out / "hvp_modes.log").read_text()
    mb = (out / "minibatch.log").read_text()
    assert re.search(r'"mean_wall_s_per_step": [0-9.e-]+', mb), mb
