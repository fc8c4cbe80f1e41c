"""One PNG per run: the ceilings side by side, and rate, lag, queue depth and RSS over the e2e run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(result: dict[str, Any], path: Path) -> Path | None:
    """Write the chart; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    (ax_bars, ax_rate), (ax_lag, ax_depth) = axes
    fig.suptitle(f"orderflow bench {result['started']}  ({result['mode']}; {result['machine']['cores']} cores, "
                 f"shared machine: compare ratios, not absolute rates)", fontsize=11)
    target = result["targets"]["e2e_rate_per_s"]

    # ceilings and what reaches them
    labels, values, colors = [], [], []
    ingest, store, e2e = result.get("ingest"), result.get("store"), result.get("e2e")
    if ingest:
        labels += ["bare aiohttp", "receiver"]
        values += [ingest["bare"]["rate_per_s"], ingest["receiver"]["rate_per_s"]]
        colors += ["#9ecae1", "#3182bd"]
    if store:
        labels += ["COPY 5 tables", "worker"]
        values += [store["copy"]["rate_per_s"], store["worker"]["rate_per_s"]]
        colors += ["#a1d99b", "#31a354"]
    if e2e:
        labels += ["e2e accepted", "e2e stored"]
        values += [e2e["accepted_rate_per_s"], e2e["stored_rate_per_s"]]
        colors += ["#fdae6b", "#e6550d"]
    if labels:
        bars = ax_bars.bar(labels, values, color=colors)
        ax_bars.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax_bars.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:,}/s")
        ax_bars.set_ylabel("orders/s")
        ax_bars.legend(loc="upper right", fontsize=8)
        notes = []
        if ingest and ingest.get("ratio") is not None:
            notes.append(f"receiver/bare {ingest['ratio']:.2f} (target ≥ 0.8)")
        if store and store.get("ratio") is not None:
            notes.append(f"worker/COPY {store['ratio']:.2f} (target ≥ 0.5)")
        ax_bars.set_title("ceilings (same run, same machine)\n" + "; ".join(notes), fontsize=9)
        ax_bars.tick_params(axis="x", labelsize=8, rotation=15)

    if e2e:
        s = e2e["series"]
        load_s = s["load_s"]
        rx = [r[0] for r in s["received"]]
        sx = [r[0] for r in s["stored"]]
        ax_rate.plot(rx, [r[1] for r in s["received"]], label="accepted (202)/s", color="#3182bd")
        ax_rate.plot(sx, [r[1] for r in s["stored"]], label="stored/s", color="#e6550d")
        ax_rate.axhline(target, color="red", linestyle="--", linewidth=1, label="target")
        ax_rate.axvspan(0, load_s, color="grey", alpha=0.08, label="load on")
        ax_rate.set_title(f"end to end: offered {e2e['offered_rate_per_s']:,.0f}/s for {load_s:.0f} s", fontsize=9)
        ax_rate.set_xlabel("s since load start")
        ax_rate.set_ylabel("orders/s")
        ax_rate.legend(fontsize=8)

        ax_lag.plot(rx, [r[2] for r in s["received"]], label="lag p50", color="#31a354")
        ax_lag.plot(rx, [r[3] for r in s["received"]], label="lag p99", color="#756bb1")
        ax_lag.axhline(1.0, color="red", linestyle="--", linewidth=1, label="p99 target 1 s")
        ax_lag.set_yscale("log")
        ax_lag.set_title("ingest lag by second received (202 → stored_at)", fontsize=9)
        ax_lag.set_xlabel("s since load start (when received)")
        ax_lag.set_ylabel("seconds (log)")
        ax_lag.legend(fontsize=8)

        samples = s["samples"]
        tx = [x["t"] for x in samples]
        ax_depth.plot(tx, [(x["ready"] or 0) + (x["leased"] or 0) for x in samples], color="black",
                      label="queue (ready + leased)")
        ax_depth.set_xlabel("s since load start")
        ax_depth.set_ylabel("payloads in Redis")
        ax_rss = ax_depth.twinx()
        names = list(samples[0]["rss_kb"]) if samples else []
        for name in names:
            ax_rss.plot(tx, [(x["rss_kb"].get(name) or 0) / 1024 for x in samples], linestyle=":",
                        label=f"RSS {name}")
        ax_rss.set_ylabel("RSS MiB")
        lines = ax_depth.get_legend_handles_labels()
        lines2 = ax_rss.get_legend_handles_labels()
        ax_depth.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
        ax_depth.set_title("queue depth and process RSS", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
