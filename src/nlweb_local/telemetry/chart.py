"""`nlweb-local cost report --chart FILE.png`: the cost report as a picture.

Left: daily spend, local and cloud stacked, with the cloud-equivalent cost (the reference model's price
for the same tokens) and the savings as lines. Right: the 3-year TCO projection, all-cloud vs hybrid,
per scale. `chart_data` (pure: the report's own numbers, nothing recomputed) is kept apart from
`render_chart` (matplotlib, Agg backend: no display needed), so tests check the figures without pixels.
Needs the optional extra `charts` (matplotlib).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import BadRequestError

INSTALL_HINT = "pip install 'nlweb-local[charts]'"


@dataclass(frozen=True)
class CostChartData:
    days: list[str]  # YYYY-MM-DD (UTC)
    local_usd: list[float]
    cloud_usd: list[float]
    reference_usd: list[float]  # cloud-equivalent: the reference model's price for the same tokens
    savings_usd: list[float]
    reference_model: str
    scales: list[str]  # 3-year TCO projection, one entry per scale
    tco_all_cloud: list[float]
    tco_hybrid: list[float]


def chart_data(rep: dict[str, Any]) -> CostChartData:
    """The series the chart draws, read from a report of `report.build_report`."""
    daily = rep.get("daily") or []
    proj = rep.get("projection") or []
    return CostChartData(
        days=[d["day"] for d in daily], local_usd=[d["local_usd"] for d in daily],
        cloud_usd=[d["cloud_usd"] for d in daily], reference_usd=[d["reference_usd"] for d in daily],
        savings_usd=[d["savings_usd"] for d in daily], reference_model=rep["assumptions"]["reference_model"],
        scales=[f"{p['scale']}\n{p['calls_per_day']:,} calls/day" for p in proj],
        tco_all_cloud=[p["tco_3y_all_cloud"] for p in proj], tco_hybrid=[p["tco_3y_hybrid"] for p in proj])


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BadRequestError(f"--chart needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _usd(x: float) -> str:
    if abs(x) >= 1_000_000:
        return f"${x / 1e6:,.1f}M"
    if abs(x) >= 1_000:
        return f"${x / 1e3:,.1f}k"
    if x == 0:
        return "$0"
    return f"${x:,.2f}" if abs(x) >= 0.1 else f"${x:.4f}".rstrip("0")


def render_chart(data: CostChartData, path: str | Path, *, title: str = "nlweb-local LLM cost") -> Path:
    """Draw `data` into a PNG at `path`; returns the path."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    with_tco = bool(data.scales)
    fig, axes = plt.subplots(1, 2 if with_tco else 1, figsize=(14 if with_tco else 9, 5.5),
                             gridspec_kw={"width_ratios": [3, 2]} if with_tco else None, squeeze=False)
    money = FuncFormatter(lambda v, _: _usd(v))

    ax = axes[0][0]
    x = list(range(len(data.days)))
    if x:
        ax.bar(x, data.local_usd, color="#2b8a3e", label="local spend")
        ax.bar(x, data.cloud_usd, bottom=data.local_usd, color="#1c6dd0", label="cloud spend")
        ax.plot(x, data.reference_usd, color="#c92a2a", marker="o", linewidth=2,
                label=f"cloud-equivalent ({data.reference_model})")
        ax.plot(x, data.savings_usd, color="#e67700", marker="s", linestyle="--", linewidth=2, label="savings")
        step = max(1, -(-len(x) // 10))  # at most ~10 date labels
        ax.set_xticks(x[::step], data.days[::step], rotation=30, ha="right")
        ax.legend(loc="best", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no calls in the ledger for this period", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0, color="#868e96", linewidth=0.8)
    ax.set_title("Daily spend (UTC days)")
    ax.set_xlabel("day")
    ax.set_ylabel("US dollars per day")
    ax.yaxis.set_major_formatter(money)
    ax.grid(axis="y", alpha=0.3)

    if with_tco:
        ax = axes[0][1]
        pos = list(range(len(data.scales)))
        w = 0.38
        cloud = ax.bar([p - w / 2 for p in pos], data.tco_all_cloud, w, color="#c92a2a", label="all-cloud")
        hybrid = ax.bar([p + w / 2 for p in pos], data.tco_hybrid, w, color="#2b8a3e", label="hybrid (local-first)")
        for bars in (cloud, hybrid):
            ax.bar_label(bars, labels=[_usd(b.get_height()) for b in bars], fontsize=8, padding=2)
        ax.set_xticks(pos, data.scales, fontsize=9)
        positive = [v for v in data.tco_all_cloud + data.tco_hybrid if v > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_yscale("log")  # the scales differ by orders of magnitude
        ax.yaxis.set_major_formatter(money)
        ax.set_title("3-year TCO projection")
        ax.set_ylabel("US dollars over 3 years")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)

    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out
