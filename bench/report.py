"""The benchmark's table: every figure, its ratio to the classifier alone, and the issue's targets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pipeline.settings import Settings


@dataclass
class Row:
    section: str
    what: str
    value: float
    unit: str
    ref: float | None  # the classifier alone, measured just before and after this figure
    ref_name: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.ref if self.ref else float("nan")


@dataclass
class Report:
    args: object
    settings: Settings
    rows: list[Row] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # classifier alone, per backend, at the start of the run
    profile: list[str] = field(default_factory=list)
    large_job_id: str = ""
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def add(self, section: str, what: str, value: float, unit: str = "images/s", ref: float | None = None, ref_name: str = "") -> None:
        self.rows.append(Row(section, what, value, unit, ref, ref_name))
        print(f"  {what}: {value:,.1f} {unit}" + (f" (classifier alone meanwhile {ref:,.1f})" if ref else ""), flush=True)

    def row(self, prefix: str) -> Row | None:
        return next((r for r in self.rows if r.what.startswith(prefix)), None)

    def value(self, prefix: str) -> float:
        row = self.row(prefix)
        return row.value if row else float("nan")

    def ratio(self, prefix: str) -> float:
        row = self.row(prefix)
        return row.ratio if row else float("nan")

    def _targets(self) -> list[tuple[str, float, str, bool]]:
        int8 = self.rates.get("litert-int8", float("nan"))
        measured = [
            ("folder job, 1 process / classifier alone (fp32)", self.ratio("whole path, folder job, 1 worker process"), 0.85, True),
            ("upload, 1 process / classifier alone (fp32)", self.ratio("whole path, upload, 1"), 0.75, True),
            ("folder job, 2 processes / 1 process (each as a ratio to the classifier alone)",
             self.ratio("whole path, folder job, 2 worker processes") / self.ratio("whole path, folder job, 1 worker process"), 1.0, True),
            (f"int8 whole path, images/s (classifier alone int8: {int8:.0f})", self.value("whole path, folder job, 1 worker process, LiteRT int8"),
             600, True),
            ("status p99 under load (asyncio client), ms", self._latency("p99"), 20, False),
            ("finalise the large job, ms", self.value("finalise"), 200, False),
            ("GET the large job's report, ms", self.value("GET /report"), 200, False),
            ("worker cold start, 1 process, s", self.value("worker cold start, 1 process"), 3, False),
            ("peak RSS per worker process, MiB", self.value("peak RSS per worker process, 1 worker process"), 1024, False),
        ]
        compared = next((r for r in self.rows if r.section == "compare" and r.what.startswith("whole path")), None)
        if compared is not None:  # issue 9: the new recipe keeps the whole path within 15 % of the older model's
            measured.append((f"whole path, folder job, 1 process: shipped / {compared.what.split(', ')[-1]}",
                             self.value("whole path, folder job, 1 worker process") / compared.value, 0.85, True))
        return [(what, value, f"{'>=' if at_least else '<='} {limit:g}", value >= limit if at_least else value <= limit)
                for what, value, limit, at_least in measured]

    def sharing_bounds(self) -> list[tuple[str, float, float]]:
        """What the whole path could reach if preparation and the model shared this machine's cores perfectly.

        Why: on a CPU-only host the crop and the network run on the same cores. Per image, preparation costs
        ``1 / prep`` core-seconds (its 1-thread rate) and the model ``budget / model`` (its rate with the thread
        budget's cores). At best the two fill ``budget`` cores together, so the classifier-alone ratio cannot
        exceed ``1 / (1 + model / (budget * prep))``. Each row: (figure, that bound, measured ÷ bound). A measured
        ratio near its bound says the time goes to the CPU the two share, not to waiting; the bound rises only
        when preparation gets cheaper, or when the model runs elsewhere (a GPU host).
        """
        prep = self.value("read + decode + preprocess alone (1 thread")
        budget = max(1, self.settings.thread_budget)
        rows = []
        for what, prefix, backend in (("in-process loop, no database, broker or API", "read + decode + preprocess + classifier", "litert"),
                                      ("whole path, folder job, 1 worker process", "whole path, folder job, 1 worker process", "litert"),
                                      ("whole path, upload, 1 worker process", "whole path, upload, 1", "litert"),
                                      ("whole path, int8, 1 worker process", "whole path, folder job, 1 worker process, LiteRT int8", "litert-int8")):
            model = self.rates.get(backend, float("nan"))
            row = next((r for r in self.rows if r.what.startswith(prefix) and (backend != "litert" or "int8" not in r.what)), None)
            if row is None or not prep > 0 or not model > 0:
                continue
            bound = 1.0 / (1.0 + model / (budget * prep))
            rows.append((what, bound, row.ratio / bound))
        return rows

    def _latency(self, which: str) -> float:
        return next((r.value for r in self.rows if r.section == "latency" and "during a job" in r.what
                     and "asyncio client" in r.what and r.what.endswith(which)), float("nan"))

    def render(self, header: str) -> str:
        load = ", ".join(f"{x:.1f}" for x in self.load_before), ", ".join(f"{x:.1f}" for x in os.getloadavg())
        lines = [header, f"load average (1, 5, 15 min): {load[0]} at the start, {load[1]} at the end",
                 "ratios: to the classifier alone measured in this process right before and right after each figure", ""]
        width = max(len(r.what) for r in self.rows)
        for r in self.rows:
            ratio = f"  {r.ratio:.2f} of the classifier alone ({r.ref_name}: {r.ref:,.1f})" if r.ref else ""
            lines.append(f"{r.what:<{width}}  {r.value:>10,.1f} {r.unit}{ratio}")
        lines += ["", "targets (issue 12), measured in this run:"]
        for what, value, target, ok in self._targets():
            lines.append(f"  {what:<62} {value:>9.2f}  target {target:<8} {'met' if ok else 'MISSED'}")
        bounds = self.sharing_bounds()
        if bounds:
            cores = max(1, self.settings.thread_budget)
            lines += ["", f"CPU-sharing bound (preparation and model on the same {cores} cores; Report.sharing_bounds):"]
            for what, bound, share in bounds:
                lines.append(f"  {what:<62} bound {bound:.2f} of the classifier alone; measured {share:.2f} of the bound")
        if self.profile:
            lines += ["", "profile of the 1-process worker during the folder job (py-spy):", *("  " + p for p in self.profile)]
        return "\n".join(lines)
