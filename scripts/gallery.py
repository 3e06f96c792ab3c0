"""Make (or refresh) an experiment's figures in the docs gallery: docs/gallery/NAME/*.png and docs/gallery/gallery.json.

    python scripts/gallery.py aeos --scale small --jobs 2        # runs the experiment, then files its figures
    python scripts/gallery.py demo                               # the demo's figure (python -m pyrod demo)
    python scripts/gallery.py aeos --scale small --from DIR --wall 310 --load "6.1 5.9 5.2"   # an earlier run's

Figures are resized to at most 1000 px wide (the gallery shows them, the experiment writes the full size).
``gallery.json`` records for each experiment the command, the figures, the scale, the wall time, the machine's load
and the date, which the docs site's gallery page shows (scripts/docs_hooks.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"
WIDTH = 1000


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def command_for(name: str, scale: str, jobs: int) -> str:
    if name == "demo":
        return "python -m pyrod demo"
    return f"python -m pyrod experiments run {name} --scale {scale}" + (f" --jobs {jobs}" if jobs != 1 else "")


def file_figures(name: str, src: Path, command: str, scale: str, wall: float, load: str) -> dict:
    from PIL import Image

    dest = GALLERY / name
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.png"):
        old.unlink()
    figures = []
    for png in sorted(src.glob("*.png")):
        img = Image.open(png)
        if img.width > WIDTH:
            img = img.resize((WIDTH, round(img.height * WIDTH / img.width)), Image.LANCZOS)
        img.convert("RGB").save(dest / png.name, optimize=True)
        figures.append(f"{name}/{png.name}")
    scale_text = "" if name == "demo" else f"at `--scale {scale}` "
    note = (f"Made {scale_text}on {date.today().isoformat()} on a 2-core CPU shared with other work (load average "
            f"{load} at the start), in {wall:.0f} s.")
    return {"command": command, "figures": figures, "scale": scale, "wall_s": round(wall, 1), "load": load,
            "note": note}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="experiment name, or demo")
    ap.add_argument("--scale", default="small", help="tiny, small or paper (default: small)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    ap.add_argument("--from", dest="src", default=None, help="file the figures of an earlier run from this folder")
    ap.add_argument("--wall", type=float, default=None, help="with --from: its wall time in seconds")
    ap.add_argument("--load", default=None, help="with --from: the load average at its start")
    args = ap.parse_args(argv)
    command = command_for(args.name, args.scale, args.jobs)
    if args.src:
        src, wall, load = Path(args.src), args.wall or float("nan"), args.load or "unknown"
    else:
        src = Path(tempfile.mkdtemp(prefix="pyrod-gallery-"))
        load, t0 = _load(), time.perf_counter()
        extra = ["--out", str(src)] + (["--no-progress"] if args.name == "demo" else ["--no-progress"])
        subprocess.run([sys.executable, *command.split()[1:], *extra], check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    index = GALLERY / "gallery.json"
    made = json.loads(index.read_text()) if index.exists() else {}
    made[args.name] = file_figures(args.name, src, command, args.scale, wall, load)
    index.write_text(json.dumps(made, indent=2, sort_keys=True) + "\n")
    print(json.dumps(made[args.name], indent=2))


if __name__ == "__main__":
    main()
