"""Draws the paper's Fig. 1/2: forward step and surrogate gradient per surrogate.

    python -m s2nn_keras.plot --output surrogates.png [--surrogates s2nn,slayer] [--u_min -2 --u_max 4]
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "s2nn_keras.plot needs matplotlib: pip install 's2nn_keras[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_surrogates(output, names=None, u_min=-2.0, u_max=4.0, points=1201):
    """Writes a PNG with one panel per surrogate (forward in blue, dS/du in
    orange, threshold dashed), each at its default parameters. Runs on any
    Keras backend; needs matplotlib (the ``plot`` extra)."""
    from keras import ops

    from s2nn_keras import surrogates

    names = names or surrogates.available_surrogates()
    for name in names:
        surrogates.get_surrogate(name)  # ValueError with the valid names
    plt = _pyplot()
    u = np.linspace(u_min, u_max, points, dtype=np.float32)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        entry = surrogates.get_surrogate(name)
        s = ops.convert_to_numpy(surrogates.spike(u, name))
        # The backward pass of spike() is upstream * surrogate_gradient(u).
        grad = ops.convert_to_numpy(surrogates.surrogate_gradient(u, name))
        ax.plot(u, s, color="tab:blue", label="forward s = H(u - u_th)")
        ax.plot(u, grad, color="tab:orange", label="surrogate dS/du")
        ax.axvline(entry.threshold, color="gray", ls="--", lw=0.8)
        params = ", ".join(f"{k}={v:g}" for k, v in entry.params.items())
        ax.set_title(f"{name}  (u_th={entry.threshold:g}{', ' + params if params else ''})", fontsize=9)
        ax.set_xlabel("u")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="surrogates.png", help="PNG path to write")
    parser.add_argument("--surrogates", default="", help="comma-separated names (default: all registered)")
    parser.add_argument("--u_min", type=float, default=-2.0)
    parser.add_argument("--u_max", type=float, default=4.0)
    args = parser.parse_args(argv)
    if not args.u_min < args.u_max:
        parser.exit(2, f"error: --u_min ({args.u_min}) must be smaller than --u_max ({args.u_max})\n")
    names = [n for n in args.surrogates.split(",") if n] or None
    try:
        path = plot_surrogates(args.output, names, args.u_min, args.u_max)
    except (ValueError, OSError, ImportError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
