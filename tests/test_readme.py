"""Every ```python block of README.md runs as written, and states how long it takes.

Each block is written to a file and run with ``python`` in a fresh temporary directory (blocks that write
files write them there), with ``MPLBACKEND=Agg`` and one thread. Its expected time is read from the README:
``~N s`` / ``~N min`` (or ``≈``) in the block's comments (summed: a block may time its lines), or else the
first such statement in the prose just before the block, or "a few seconds" (= 5 s). Blocks stated to take
more than ``SLOW_S`` are marked ``slow``; the default suite runs the others. A block may be skipped by an HTML
comment on the line before its fence: ``<!-- readme-test: skip REASON -->`` (e.g. it needs a cluster).
A run must also finish within ``4 × stated + 60 s`` (start-up and a busy machine), so stated times can't rot.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SLOW_S = 20.0
_TIME = re.compile(r"[~≈]\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds|min|minutes)\b")
_FEW = re.compile(r"\ba few seconds\b")
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b\s*(.*?)\s*-->")


def _seconds(m) -> float:
    return float(m.group(1)) * (60.0 if m.group(2).startswith("min") else 1.0)


def stated_time(code: str, prose: str) -> float | None:
    """Seconds a block says it takes: the sum over its comments, else the first statement in ``prose``."""
    comments = [line.split("#", 1)[1] for line in code.splitlines() if "#" in line]
    found = [_seconds(m) for c in comments for m in _TIME.finditer(c)]
    found += [5.0 for c in comments if _FEW.search(c)]
    if found:
        return sum(found)
    m = _TIME.search(prose)
    if m:
        return _seconds(m)
    return 5.0 if _FEW.search(prose) else None


def readme_blocks(text: str) -> list[dict]:
    """The ```python blocks of ``text``: code, section heading, index within it, stated time, skip reason."""
    lines = text.splitlines()
    blocks, section, counts, prose, i = [], "top", {}, [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section, prose = line.lstrip("#").strip(), []
        elif line.strip().startswith("```"):
            lang = line.strip()[3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            if lang == "python":
                code = "\n".join(lines[i + 1:j]) + "\n"
                before = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
                skip = _SKIP.search(before)
                counts[section] = counts.get(section, 0) + 1
                blocks.append({"code": code, "section": section, "index": counts[section],
                               "stated_s": stated_time(code, "\n".join(prose)),
                               "skip": (skip.group(1) or "marked skip") if skip else None})
            prose, i = [], j
        else:
            prose.append(line)
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _id(b) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", b["section"].lower()).strip("-")[:40]
    return f"{slug}-{b['index']}"


def _params():
    out = []
    for b in BLOCKS:
        marks = []
        if b["stated_s"] is None or b["stated_s"] > SLOW_S:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(b, id=_id(b), marks=marks))
    return out


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4, [(_id(b)) for b in BLOCKS]


@pytest.mark.parametrize("block", [pytest.param(b, id=_id(b)) for b in BLOCKS])
def test_block_states_its_time(block):
    assert block["skip"] or block["stated_s"] is not None, (
        f"README block {_id(block)} states no time: add a comment such as '# ~10 s on a 2-core CPU'")


@pytest.mark.parametrize("block", _params())
def test_block_runs_as_written(block, tmp_path):
    if block["skip"]:
        pytest.skip(f"README marks it: {block['skip']}")
    script = tmp_path / "snippet.py"
    script.write_text(block["code"], encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    stated = block["stated_s"] or 60.0
    limit = 4 * stated + 60
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"README block {_id(block)} ran past {limit:.0f} s (it states ~{stated:.0f} s)")
    wall = time.perf_counter() - t0
    print(f"{_id(block)}: {wall:.1f} s (stated ~{stated:.0f} s)\n{r.stdout[-3000:]}")
    assert r.returncode == 0, f"README block {_id(block)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


def test_parser_on_a_small_readme():
    text = ("# A\n\nIt takes ~2 min:\n\n```python\nx = 1\n```\n\n## B\n```bash\necho no\n```\n"
            "```python\ny = 2   # ~3 s\nz = 3   # ~1.5 min\n```\n<!-- readme-test: skip needs SLURM -->\n"
            "```python\nimport dask_jobqueue\n```\n```python\nprint(1)\n```\n")
    bs = readme_blocks(text)
    assert [(b["section"], b["index"]) for b in bs] == [("A", 1), ("B", 1), ("B", 2), ("B", 3)]
    assert [b["stated_s"] for b in bs] == [120.0, 93.0, None, None]
    assert [b["skip"] for b in bs] == [None, None, "needs SLURM", None]
    assert bs[0]["code"] == "x = 1\n"
