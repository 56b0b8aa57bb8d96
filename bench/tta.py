"""What test-time augmentation costs on the whole path: one view, where unsure, every image, side by side in one run.

``python -m bench.tta --source DIR [--images N] [--stack redis-postgres|embedded] [--out FILE]``

Rule G (model card) lets ``HEMATOVISION_TTA=2`` become the default only if
the whole path keeps at least 0.85 of one view's rate. The figure depends on
how many images the model is unsure of, so ``--source`` should be held-out
images like a laboratory's (validation images, not training images, on which
the model is surer). Each setting gets its own worker process (the setting is
read at start-up) on the same API and database; the folder job is timed from
submission to the report in hand, after a warm-up batch. One view is timed
before and after the gated runs, and the ratio is to their mean, so a drift
of the machine during the run shows instead of biasing the ratio.
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import tempfile
from pathlib import Path

from bench.stack import bench_settings, running_api, running_workers, timed_job
from bench.throughput import collect_images
from pipeline.manifest import ModelManifest
from pipeline.settings import Settings
from pipeline.views import tta_gate

#: the order of the timed jobs: one view around the gated runs, full TTA last (it is the slowest)
ORDER = (0, 2, 0, 2, 1)
NAMES = {0: "one view", 1: "8 views, every image (HEMATOVISION_TTA=1)", 2: "8 views where unsure (HEMATOVISION_TTA=2)"}


def whole_path_rate(client, settings: Settings, tta: int, folder: Path, warm: Path, n: int, log: Path) -> float:
    """Images/s of one folder job through one worker process started with ``HEMATOVISION_TTA=tta``."""
    with running_workers(Settings(**{**settings.__dict__, "tta": tta}), 1, log):
        timed_job(client, lambda: client.submit_server_folder(str(warm)), len(list(warm.rglob("*.*"))))  # warm-up
        return n / timed_job(client, lambda: client.submit_server_folder(str(folder)), n)


def run(source: Path, n: int | None, stack: str, order: tuple[int, ...] = ORDER) -> tuple[dict[int, list[float]], int]:
    base = Settings.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-tta-"))
    try:
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not found:
            raise SystemExit(f"error: no .jpg/.jpeg/.png images under {source}")
        n = n or len(found)
        paths = collect_images(n, tmp / "allowed" / "images", source)
        warm = tmp / "allowed" / "warm"
        for p in paths[: base.batch_size]:
            (warm / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, warm / p.parent.name / p.name)
        rates: dict[int, list[float]] = {}
        with contextlib.ExitStack() as stack_:
            settings = stack_.enter_context(bench_settings(base, tmp, stack))
            client = stack_.enter_context(running_api(settings, tmp / "api.log"))
            for i, tta in enumerate(order):
                rate = whole_path_rate(client, settings, tta, tmp / "allowed" / "images", warm, n, tmp / f"worker-{i}.log")
                rates.setdefault(tta, []).append(rate)
                print(f"  whole path, folder job, 1 worker process, {NAMES[tta]}: {rate:,.1f} images/s", flush=True)
        return rates, n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render(rates: dict[int, list[float]], n: int, source: Path, model_dir: str, stack: str) -> str:
    manifest = ModelManifest.load(model_dir)
    if 0 not in rates:
        raise ValueError("the table's ratios need one-view runs (setting 0)")
    one = sum(rates[0]) / len(rates[0])
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; model {manifest.label}, TTA gate {tta_gate(manifest)}; "
             f"stack {stack}; {n} images from {source}",
             "| whole path, folder job, 1 worker process | images/s (each run) | ratio to one view |", "|---|---|---|"]
    for tta in sorted(rates, key=ORDER.index):
        runs = ", ".join(f"{r:,.1f}" for r in rates[tta])
        lines.append(f"| {NAMES[tta]} | {runs} | {sum(rates[tta]) / len(rates[tta]) / one:.2f} |")
    if 2 in rates and tta_gate(manifest) is None:
        lines.append("the model carries no gate: setting 2 read one view, so its ratio says nothing about rule G")
    elif 2 in rates:
        ratio = sum(rates[2]) / len(rates[2]) / one
        lines.append(f"rule G (g3): where unsure / one view = {ratio:.2f} (needs >= 0.85): {'met' if ratio >= 0.85 else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tta", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder of held-out cell images (e.g. both validation splits)")
    parser.add_argument("--images", type=int, help="images per job (default: every image under --source once)")
    parser.add_argument("--stack", choices=("redis-postgres", "embedded"), default="redis-postgres")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    rates, n = run(args.source, args.images, args.stack)
    text = render(rates, n, args.source, Settings.from_env().model_dir, args.stack)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
