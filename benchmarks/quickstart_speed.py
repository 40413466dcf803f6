"""Training speed of quickstart variants, measured side by side in one
process: XLA (``jit_compile=True``) against TensorFlow graph mode, and
recipe candidates that could give the quickstart more margin.

``python -m benchmarks.quickstart_speed`` builds the quickstart network
(``trainers/configs/quickstart.cfg`` plus each variant's flag overrides)
once per variant, compiles it with the trainer's recipe, then runs
``--rounds`` rounds; in each round every variant trains ``--steps`` steps
(one ``fit`` epoch over the same real Fashion-MNIST images through the
trainer's own input pipeline), in turn. Reported per variant: median
images/s, the ratio to the first variant (time per image; > 1 = slower),
and the projected training time of the variant's full recipe
(``epochs x 60000 / images/s``; evaluation and export not included).

Variants are ``name=flag,flag,...`` (``--variant`` repeatable); default:

* ``quickstart``: the quickstart as it is (stride-2 stem, width 32, XLA);
* ``graph``: the same network in TensorFlow graph mode (``--nojit_compile``);
* ``previous``: the quickstart before the strided stem (stride-1 stem,
  width 24, dropout 0.1, graph mode).

Accuracy is not measured here (a full run is needed): see
docs/TRAINING.md for the candidates and the commands that measure them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "trainers", "configs", "quickstart.cfg")
DEFAULT_VARIANTS = [
    "quickstart=",
    "graph=--nojit_compile",
    "previous=--stem_stride=1,--width=24,--dropout=0.1,--nojit_compile",
]


def parse_args(argv):
    p = C.OneLineParser(prog="benchmarks.quickstart_speed", description=__doc__.split("\n")[0])
    p.add_argument("--variant", action="append", default=None,
                   help="NAME=--flag,--flag,... over quickstart.cfg (repeatable; default: graph, xla, ...)")
    p.add_argument("--steps", type=C.positive_int, default=40, help="training steps per timed block")
    p.add_argument("--rounds", type=C.positive_int, default=5, help="interleaved rounds")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "quickstart_speed.json"))
    args = p.parse_args(argv)
    variants = []
    for spec in args.variant or DEFAULT_VARIANTS:
        name, sep, flags = spec.partition("=")
        if not sep or not name.strip():
            p.error(f"--variant must look like NAME=--flag,--flag, got {spec!r}")
        variants.append((name.strip(), [f for f in flags.split(",") if f.strip()]))
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        p.error(f"--variant names must be distinct, got {', '.join(names)}")
    args.variants = variants
    return args


def _config(extra, data_dir):
    from trainers import flags as trainer_flags

    argv = ["quickstart_speed", f"--flagfile={QUICKSTART}", "--output_dir=/tmp/unused", "--noexport"] + extra
    if data_dir:
        argv.append(f"--data_dir={data_dir}")
    fv = trainer_flags.new_flag_values()
    try:
        trainer_flags.parse_argv(argv, fv)
        return trainer_flags.validate(fv)
    except trainer_flags.UsageError as err:
        C.fail("benchmarks.quickstart_speed", str(err))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from trainers.backend import import_keras_quietly

    backend = import_keras_quietly()
    from trainers import data as data_lib
    from trainers import distribute, inputs, recipe

    configs = {name: _config(extra, args.data_dir) for name, extra in args.variants}
    try:
        full_x, full_y = data_lib.load_arrays("fashion_mnist", "train", args.data_dir)
    except data_lib.DatasetNotFoundError as err:
        C.fail("benchmarks.quickstart_speed", str(err))
    runners = {}
    for name, config in configs.items():
        f = config["flags"]
        n = f["batch_size"] * args.steps
        pipeline = inputs.resolve_pipeline(f["input_pipeline"], backend)
        run_inputs = inputs.make_inputs(pipeline, full_x[:n], full_y[:n], full_x[:256], full_y[:256], 10, f,
                                        seed=0, crop_flip=False, distribution=distribute.Distribution())
        network = recipe.build_model(config, full_x.shape[1:], 10)
        model = (recipe.training_model(network, run_inputs.augmentation)
                 if run_inputs.augmentation is not None else network)
        recipe.compile_model(model, config, total_steps=f["epochs"] * 469)
        t0 = time.perf_counter()
        model.fit(run_inputs.train, epochs=1, verbose=0)
        runners[name] = (model, run_inputs.train, n, time.perf_counter() - t0)
        print(f"{name}: first block (tracing/compilation included) {runners[name][3]:.1f}s", flush=True)
    times = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, (model, data, n, _) in runners.items():
            t0 = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - t0)
    first = args.variants[0][0]
    ips = {name: runners[name][2] / statistics.median(t) for name, t in times.items()}
    rows = {}
    for name, _ in args.variants:
        f = configs[name]["flags"]
        rows[name] = {
            "images_per_s": ips[name],
            "time_per_image_vs_" + first: ips[first] / ips[name],
            "per_round_ratio_vs_" + first: [t / t0 * runners[first][2] / runners[name][2]
                                           for t, t0 in zip(times[name], times[first])],
            "projected_train_s": f["epochs"] * len(full_x) / ips[name],
            "flags": dict(args.variants)[name],
            "first_block_s": runners[name][3],
        }
        print(f"{name:14s} {ips[name]:8.0f} img/s  time/image vs {first}: "
              f"{rows[name]['time_per_image_vs_' + first]:.3f}  projected training "
              f"{rows[name]['projected_train_s']:.0f}s ({f['epochs']} epochs)", flush=True)
    payload = {"benchmark": "quickstart_speed", "command": C.command_line(), "backend": backend,
               "steps": args.steps, "rounds": args.rounds, "variants": rows, "block_seconds": times,
               "load_avg_end": C.load()}
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
