"""Paper Table 5 on one GPU in minutes: PreActResNet18 (width 64) S²NN and
ReLU on the full Fashion-MNIST with the paper's recipe, on Keras/JAX,
without TensorFlow.

``python -m benchmarks.gpu_table5`` runs, in one process:

1. **Input pipeline vs train step**, side by side: host loader alone (NumPy
   batches of uint8 images to the device), the per-image augmentation alone
   (crop/flip + RandAugment, jitted, on the device), and whole training steps
   (loader + augmentation + forward/backward/update, bf16) -- images/s of
   each, so the pipeline is seen not to be the bottleneck;
2. **S²NN/ReLU step-time ratio**, interleaved: ``--bench_rounds`` rounds, each
   timing ``--bench_steps`` training steps of the S²NN network, then of the
   ReLU network (seconds per step between the first and the last step's
   completion inside one ``fit`` epoch); the ratio is the median of the
   per-round ratios;
3. **Two full training runs** (``trainers.run.train`` with
   ``trainers/configs/gpu_table5_fashion_mnist_resnet18_{s2nn,relu}.cfg``:
   110 epochs, batch 256, mixed_bfloat16, SGD Nesterov 0.05 cosine, weight
   decay 5e-4, label smoothing 0.1, dropout 0.1, crop (pad 2) + flip,
   RandAugment 2 ops / 0.3), each printing test and flip-TTA accuracy,
   training images/s (median over epochs 2..E), the per-layer firing rates
   and E_Full/E_Method (Appendix B).

Everything goes to ``--out/gpu_table5_<parts>.json`` (default ``$OUT``, else
``benchmarks/results``) plus each run's ``metrics.json``, energy report and
TensorBoard events under ``--out/runs/<activation>/``; the run folders
themselves (models, checkpoints) stay in ``--run_dir``.

``--tiny``: a CPU check of the whole command in a minute or two (512/256
images, a one-block width-8 network, 2 epochs, batch 64, float32).

See docs/GPU.md for the wheels to carry and the exact command.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from benchmarks import common as C  # noqa: E402  (stdlib only: runs where TensorFlow is absent)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {act: os.path.join(REPO, "trainers", "configs", f"gpu_table5_fashion_mnist_resnet18_{act}.cfg")
           for act in ("s2nn", "relu")}
TINY_FLAGS = ["--max_train_examples=512", "--max_test_examples=256", "--model=custom", "--blocks=1",
              "--width=8", "--epochs=2", "--batch_size=64", "--dtype_policy=float32",
              "--firing_rate_batches=1"]
PAPER_TABLE5 = {"s2nn": 94.81, "relu": 95.03}


def parse_args(argv):
    p = C.OneLineParser(prog="benchmarks.gpu_table5", description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=None,
                   help="folder with the four Fashion-MNIST IDX files (default: .gpu_carry/fashion-mnist "
                        "if present, else Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "benchmarks", "results"),
                   help="where gpu_table5.json and the run summaries go (default: $OUT)")
    p.add_argument("--run_dir", default="/tmp/gpu_table5_runs", help="training run folders (models, checkpoints)")
    p.add_argument("--runs", default="s2nn,relu", help="which full runs: s2nn, relu, both, or none")
    p.add_argument("--epochs", type=C.positive_int, default=None, help="override the configs' 110 epochs")
    p.add_argument("--bench_steps", type=C.positive_int, default=60,
                   help="training steps per timed block (>= 2; the first is not timed)")
    p.add_argument("--bench_rounds", type=C.positive_int, default=5, help="interleaved rounds")
    p.add_argument("--skip_bench", action="store_true", help="skip parts 1-2 (pipeline, step ratio)")
    p.add_argument("--tiny", action="store_true", help="CPU check at tiny scale")
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if runs == ["none"]:
        runs = []
    bad = [r for r in runs if r not in CONFIGS]
    if bad:
        p.error(f"--runs takes s2nn, relu or none, got {args.runs!r}")
    args.runs = runs
    if args.bench_steps < 2:
        p.error(f"--bench_steps must be >= 2 (the first step is not timed), got {args.bench_steps}")
    if args.data_dir is None:
        carried = os.path.join(REPO, ".gpu_carry", "fashion-mnist")
        args.data_dir = carried if os.path.isdir(carried) else None
    if args.tiny:
        args.bench_steps = min(args.bench_steps, 4)
        args.bench_rounds = min(args.bench_rounds, 2)
    return args


def _versions():
    import keras

    info = {"keras": keras.__version__, "backend": keras.backend.backend()}
    for name in ("jax", "jaxlib", "numpy", "torch"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def _git_commit():
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - git is optional (the GPU machine gets a copy of the tree)
        return None


def machine_info():
    from trainers.backend import device_names

    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        gpu = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "python": platform.python_version(), "platform": platform.platform(), "cpu_cores": os.cpu_count(),
            "nvidia_smi": gpu, "devices": device_names(), "git_commit": _git_commit(), **_versions()}


def trainer_config(activation, args, output_dir, extra=()):
    """The validated trainer configuration of one run (flags of the config file + overrides)."""
    from trainers import flags as trainer_flags

    argv = ["gpu_table5", f"--flagfile={CONFIGS[activation]}", f"--output_dir={output_dir}"]
    if args.data_dir:
        argv.append(f"--data_dir={args.data_dir}")
    if args.tiny:
        argv += TINY_FLAGS
    if args.epochs:
        argv.append(f"--epochs={args.epochs}")
    argv += list(extra)
    fv = trainer_flags.new_flag_values()
    try:
        trainer_flags.parse_argv(argv, fv)
        return trainer_flags.validate(fv)
    except trainer_flags.UsageError as err:
        sys.stderr.write(f"benchmarks.gpu_table5: error: {err}\n")
        raise SystemExit(2) from None


def _block(x):
    """Waits for a backend array (JAX dispatch is asynchronous)."""
    import keras

    return keras.ops.convert_to_numpy(x)


def step_clock():
    """A callback timing the steps of one ``fit`` epoch between the first and
    the last step's completion (Keras hands over a step's logs once it has
    run; ``async_safe`` lets it do so off the training loop), so ``fit``'s
    start-up and epoch-end work are not counted."""
    import keras

    class StepClock(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.stamps = {}

        def on_train_batch_end(self, batch, logs=None):
            if logs:
                float(logs.get("loss", 0.0))  # the step's values are ready
            self.stamps[batch] = time.perf_counter()

        def seconds_per_step(self):
            first, last = min(self.stamps), max(self.stamps)
            if last == first:
                raise ValueError("--bench_steps must be >= 2 to time steps")
            return (self.stamps[last] - self.stamps[first]) / (last - first)

    return StepClock()


def measure_pipeline_and_steps(args, train_x, train_y):
    """Host loader, augmentation and whole train steps (images/s), and the
    interleaved S²NN/ReLU step-time ratio."""
    import keras

    from trainers import inputs, recipe
    from trainers.augment import DeviceAugmentation

    configs = {act: trainer_config(act, args, os.path.join(args.run_dir, "bench")) for act in ("s2nn", "relu")}
    f = configs["s2nn"]["flags"]
    batch = f["batch_size"]
    recipe.set_dtype_policy(f["dtype_policy"])
    n = min(len(train_x), batch * args.bench_steps)
    x, y = train_x[:n], inputs.one_hot(train_y[:n], 10)
    steps = -(-n // batch)

    # 1a. Host loader alone: shuffled NumPy batches to the device.
    loader = inputs.array_batches(x, y, batch, shuffle=True, seed=0)
    _block(keras.ops.convert_to_tensor(loader[0][0]))
    t0 = time.perf_counter()
    for i in range(len(loader)):
        bx, _ = loader[i]
        last = keras.ops.convert_to_tensor(bx)
    _block(last)
    loader_ips = n / (time.perf_counter() - t0)

    # 1b. Augmentation alone, jitted, on the device (stateless call).
    aug = DeviceAugmentation(crop_flip=f["crop_flip"], padding=f["crop_padding"],
                             randaugment_ops=f["randaugment_ops"],
                             randaugment_magnitude=f["randaugment_magnitude"], seed=0)
    aug.build(x.shape)
    batch_x = keras.ops.convert_to_tensor(x[:batch])
    state = [v.value for v in aug.non_trainable_variables]
    if keras.backend.backend() == "jax":
        import jax

        run_aug = jax.jit(lambda s, im: aug.stateless_call([], s, im, training=True))
    else:
        def run_aug(s, im):
            return aug.stateless_call([], s, im, training=True)
    out, state = run_aug(state, batch_x)
    _block(out)
    t0 = time.perf_counter()
    for _ in range(steps):
        out, state = run_aug(state, batch_x)
    _block(out)
    aug_ips = steps * batch / (time.perf_counter() - t0)

    # 2. Whole training steps, both networks, interleaved.
    models = {}
    for act, config in configs.items():
        network = recipe.build_model(config, x.shape[1:], 10)
        augmentation = DeviceAugmentation(crop_flip=f["crop_flip"], padding=f["crop_padding"],
                                          randaugment_ops=f["randaugment_ops"],
                                          randaugment_magnitude=f["randaugment_magnitude"], seed=0)
        model = recipe.training_model(network, augmentation)
        recipe.compile_model(model, config, total_steps=10 * steps)
        t0 = time.perf_counter()
        model.fit(inputs.array_batches(x, y, batch, shuffle=True, seed=1), epochs=1, verbose=0)  # compile
        models[act] = (model, time.perf_counter() - t0)
    times = {"s2nn": [], "relu": []}
    for r in range(args.bench_rounds):
        for act in ("s2nn", "relu"):
            data = inputs.array_batches(x, y, batch, shuffle=True, seed=2 + r)
            clock = step_clock()
            models[act][0].fit(data, epochs=1, verbose=0, callbacks=[clock])
            times[act].append(clock.seconds_per_step())
    ratios = [a / b for a, b in zip(times["s2nn"], times["relu"])]
    result = {
        "batch_size": batch, "steps_per_block": steps, "rounds": args.bench_rounds,
        "dtype_policy": f["dtype_policy"],
        "host_loader_images_per_s": loader_ips,
        "augmentation_images_per_s": aug_ips,
        "train_step_images_per_s": {act: batch / statistics.median(t) for act, t in times.items()},
        "first_fit_s_including_compile": {act: m[1] for act, m in models.items()},
        "seconds_per_step": times,
        "s2nn_over_relu_step_time": statistics.median(ratios),
        "s2nn_over_relu_per_round": ratios,
    }
    step_ips = result["train_step_images_per_s"]["s2nn"]
    print(f"input pipeline: host loader {loader_ips:,.0f} img/s, augmentation {aug_ips:,.0f} img/s; "
          f"train step (loader+aug+step) s2nn {step_ips:,.0f} img/s, relu "
          f"{result['train_step_images_per_s']['relu']:,.0f} img/s "
          f"(loader/step {loader_ips / step_ips:.1f}x, augmentation/step {aug_ips / step_ips:.1f}x)", flush=True)
    print(f"S2NN/ReLU step time {result['s2nn_over_relu_step_time']:.3f} (median of "
          f"{', '.join(f'{r:.3f}' for r in ratios)})", flush=True)
    return result


def full_run(activation, args):
    from trainers.run import train

    output_dir = os.path.join(args.run_dir, activation)
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)  # always a fresh run: never resume an older one
    config = trainer_config(activation, args, output_dir)
    t0 = time.perf_counter()
    metrics = train(config)
    wall = time.perf_counter() - t0
    rates = [h["train_images_per_s"] for h in metrics["history"] if "train_images_per_s" in h]
    steady = statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else None
    summary = {
        "activation": activation, "flags": config["flags"], "wall_s": wall,
        "train_s": metrics["session_train_time_s"],
        "test_accuracy": metrics["test_accuracy"], "tta_accuracy": metrics["tta_accuracy"],
        "paper_table5_accuracy": PAPER_TABLE5[activation],
        "train_images_per_s_median_after_epoch_1": steady,
        "firing_rates": metrics["firing_rates"], "energy": metrics.get("energy"),
        "epochs": metrics["epochs_completed"], "num_parameters": metrics["num_parameters"],
    }
    dest = os.path.join(args.out, "runs", activation)
    os.makedirs(dest, exist_ok=True)
    for name in ("metrics.json", os.path.join("energy", "energy_report.json"),
                 os.path.join("energy", "energy_layers.csv")):
        src = os.path.join(output_dir, name)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(dest, os.path.basename(name)))
    if os.path.isdir(os.path.join(output_dir, "tensorboard")):
        shutil.copytree(os.path.join(output_dir, "tensorboard"), os.path.join(dest, "tensorboard"),
                        dirs_exist_ok=True)
    eff = (summary["energy"] or {}).get("efficiency")
    tta = summary["tta_accuracy"]
    tta_text = f"TTA {100 * tta:.2f}%" if tta is not None else "TTA skipped (trained without flips)"
    print(f"[{activation}] test {100 * summary['test_accuracy']:.2f}%  {tta_text}  "
          f"(paper {PAPER_TABLE5[activation]:.2f}%)  {steady or 0:,.0f} img/s  train {summary['train_s']:.0f}s  "
          f"wall {wall:.0f}s" + (f"  E_Full/E_Method {eff:.2f}" if eff else ""), flush=True)
    if summary["firing_rates"]:
        print(f"[{activation}] firing rates: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["firing_rates"].items()),
              flush=True)
    return summary


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import logging

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from trainers.backend import import_keras_quietly

    import_keras_quietly()
    from trainers import data as data_lib

    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    machine = machine_info()
    print(f"devices: {machine['devices']}  ({machine.get('nvidia_smi') or 'no nvidia-smi'}); "
          f"keras {machine['keras']} on {machine['backend']}", flush=True)
    # Validate both configurations before any work.
    for act in ("s2nn", "relu"):
        trainer_config(act, args, os.path.join(args.run_dir, act))
    try:
        train_x, train_y = data_lib.load_arrays("fashion_mnist", "train", args.data_dir,
                                                512 if args.tiny else None)
    except data_lib.DatasetNotFoundError as err:
        sys.stderr.write(f"benchmarks.gpu_table5: error: {err}\n")
        return 2
    payload = {"benchmark": "gpu_table5", "command": " ".join(["python -m benchmarks.gpu_table5"] + sys.argv[1:]),
               "tiny": args.tiny, "machine": machine}
    if not args.skip_bench:
        payload["pipeline_and_steps"] = measure_pipeline_and_steps(args, train_x, train_y)
        _write(args, payload)
    payload["runs"] = {}
    for act in args.runs:
        payload["runs"][act] = full_run(act, args)
        _write(args, payload)
    payload["total_s"] = time.perf_counter() - t_start
    _write(args, payload)
    print(f"total {payload['total_s']:.0f}s -> {_json_path(args)}", flush=True)
    return 0


def _json_path(args):
    """``gpu_table5[_bench][_s2nn][_relu].json``: calls that run different parts do not collide."""
    parts = ([] if args.skip_bench else ["bench"]) + list(args.runs)
    return os.path.join(args.out, "gpu_table5" + "".join("_" + p for p in parts) + ".json")


def _write(args, payload):
    path = _json_path(args)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
