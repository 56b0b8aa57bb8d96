"""Reference intervals of the white-cell differential and the flags they give.

The default ranges are the adult "normal results" of MedlinePlus, Blood
differential test (U.S. National Library of Medicine,
https://medlineplus.gov/ency/article/003657.htm). A laboratory sets its own
with ``HEMATOVISION_REFERENCE_INTERVALS`` ("class=low-high;..." in percent of
white cells) and names them with ``HEMATOVISION_REFERENCE_SOURCE``. A class
without a range (immature granulocytes here: the source gives none) is shown
without a flag.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INTERVALS = "neutrophil=40-60;lymphocyte=20-40;monocyte=2-8;eosinophil=1-4;basophil=0.5-1"
DEFAULT_SOURCE = "MedlinePlus, Blood differential test, adult normal results (https://medlineplus.gov/ency/article/003657.htm)"
MIN_WHITE_CELLS = 100  # fewer counted white cells than a manual 100-cell differential: say so


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def flag(self, percent: float) -> str | None:
        """"low" / "high" when outside the interval (rounded to the one decimal shown), else None."""
        value = round(percent, 1)
        return "low" if value < self.low else "high" if value > self.high else None


def parse_intervals(text: str) -> dict[str, Interval]:
    """Parse ``"neutrophil=40-60;lymphocyte=20-40"``; raise ValueError with the bad part named."""
    out: dict[str, Interval] = {}
    for part in filter(None, (p.strip() for p in text.replace(",", ";").split(";"))):
        try:
            name, rng = part.split("=", 1)
            low, high = (float(v) for v in rng.split("-", 1))
        except ValueError:
            raise ValueError(f"reference interval {part!r} must look like 'neutrophil=40-60'") from None
        if not 0 <= low <= high <= 100:
            raise ValueError(f"reference interval {part!r} must satisfy 0 <= low <= high <= 100")
        out[name.strip()] = Interval(low, high)
    return out


def reference_block(differential: list[dict], intervals: dict[str, Interval], source: str) -> dict:
    """The report's ``reference_intervals`` block: each class's range and its flag, if any."""
    rows = {}
    for row in differential:
        interval = intervals.get(row["cell_type"])
        rows[row["cell_type"]] = ({"low": interval.low, "high": interval.high, "flag": interval.flag(row["percent"])}
                                  if interval else {"low": None, "high": None, "flag": None})
    return {"source": source, "by_type": rows}


def warnings_for(summary: dict) -> list[str]:
    """Sentences a reader must see before trusting the numbers."""
    out = []
    if summary["white_cell_total"] < MIN_WHITE_CELLS:
        out.append(f"only {summary['white_cell_total']} white cells were counted (fewer than {MIN_WHITE_CELLS}): "
                   "the percentages are imprecise, see the 95 % intervals")
    return out
