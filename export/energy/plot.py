"""Fig. B.5-style plot of an energy report (:func:`s2nn_keras.energy.energy_report`,
:func:`export.energy.tflite.tflite_energy_report`); needs matplotlib (the
``plot`` extra): :func:`export.energy.report.write_plot` checks for it.

Top panel: R(l), the firing rate of the spikes each Conv/Dense layer
receives (hatched bars where the layer is fed real values and charged at
full rate). Bottom panel: each layer's share of E_Method (Eq. B.4).
"""

from __future__ import annotations

import os


def plot_report(report: dict, path: str) -> str:
    """Writes the plot of ``report`` to ``path`` (PNG) and returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    names = [r["name"] if len(r["name"]) <= 32 else "..." + r["name"][-29:] for r in rows]
    xs = range(len(rows))
    measured = [r["firing_rate"] is not None for r in rows]
    rates = [r["firing_rate"] if r["firing_rate"] is not None else r["charged_rate"] for r in rows]
    shares = [100.0 * r["energy_share"] for r in rows]
    width = max(6.0, 0.28 * len(rows) + 2.0)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width, 7.0), sharex=True)
    colors = ["tab:blue" if m else "lightgray" for m in measured]
    bars = ax1.bar(xs, rates, color=colors, edgecolor="black", linewidth=0.4)
    for bar, m in zip(bars, measured):
        if not m:
            bar.set_hatch("//")
    ax1.set_ylabel("R(l): input firing rate")
    ax1.set_ylim(0, max(1.0, max(rates) * 1.05) if rates else 1.0)
    eff = report.get("efficiency")
    ax1.set_title(
        f"{report['model']} ({report['source']}): E_Full/E_Method = "
        + ("undefined" if eff is None else f"{eff:.2f}")
        + f"  [{report['convention']} convention, {report['preset']}]",
        fontsize=9,
    )
    ax2.bar(xs, shares, color=["tab:orange" if r["op"] == "AC" else "tab:red" for r in rows],
            edgecolor="black", linewidth=0.4)
    ax2.set_ylabel("share of E_Method [%]")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(names, rotation=90, fontsize=6)
    from matplotlib.patches import Patch

    ax1.legend(handles=[Patch(color="tab:blue", label="measured R(l) (spike input)"),
                        Patch(facecolor="lightgray", hatch="//", label="real-valued input (rate 1)")],
               fontsize=7, loc="upper right")
    ax2.legend(handles=[Patch(color="tab:orange", label="AC (E_AC)"), Patch(color="tab:red", label="MAC (E_MAC)")],
               fontsize=7, loc="upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
