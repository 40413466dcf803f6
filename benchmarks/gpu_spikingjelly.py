"""Training throughput of our Keras/JAX S²NN against SpikingJelly's own
``surrogate.S2NN`` in PyTorch: same network, same batch, same GPU, one
process, interleaved.

The network is PreActResNet18 width 64 (stem 3x3 conv, four stages of two
pre-activation basic blocks ``BN -> neuron -> conv -> BN -> neuron -> conv``
with a 1x1 conv shortcut where the shape changes, head ``BN -> neuron ->
global average pool -> dropout 0.1 -> linear``), as
:func:`s2nn_keras.models.PreActResNet`. Neuron: ``s = H(u - 1)`` with the
S²NN surrogate of Eq. 23 (``tau_s = 1``, ``alpha = 0.2``), which is
SpikingJelly's ``surrogate.S2NN(alpha=1/0.2, beta=1/tau_s)`` applied to
``u - u_th``. Both train with SGD (Nesterov momentum 0.9, weight decay
5e-4), label-smoothed cross-entropy (0.1) and bfloat16 compute (Keras
``mixed_bfloat16``; ``torch.autocast(bfloat16)``, channels-last).

Timed, in ``--rounds`` interleaved rounds of ``--steps`` steps each (seconds
per step: PyTorch between two ``cuda.synchronize()``, Keras between the first
and the last step's completion inside one ``fit`` epoch):

* ``keras_full_recipe``: our trainer's training model -- uint8 batches from
  host memory, per-image crop/flip + RandAugment on the device, the step;
* ``keras_step``: the same without augmentation;
* ``torch_eager`` and ``torch_compile`` (``torch.compile`` of the model):
  batches already on the GPU as float tensors (no input pipeline at all,
  the most favourable setting for PyTorch).

Printed: images/s of each (median block), and ours over the better PyTorch
variant (issue target: >= 1.8). JSON to ``--out/gpu_spikingjelly.json``
(default ``$OUT``). ``--tiny``: a CPU check (width 8, one block per stage,
batch 32, 3 steps, 1 round).

JAX and PyTorch share the GPU: the script sets
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` before JAX starts, so JAX does not
take 75 % of the GPU memory up front.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks import common as C  # noqa: E402  (stdlib only: runs where TensorFlow is absent)

TAU_S, ALPHA, THRESHOLD = 1.0, 0.2, 1.0


def parse_args(argv):
    p = C.OneLineParser(prog="benchmarks.gpu_spikingjelly", description=__doc__.split("\n")[0])
    p.add_argument("--batch_size", type=C.positive_int, default=256)
    p.add_argument("--steps", type=C.positive_int, default=50,
                   help="training steps per timed block (Keras: timed from the first step's end, so >= 2)")
    p.add_argument("--rounds", type=C.positive_int, default=5)
    p.add_argument("--width", type=C.positive_int, default=64)
    p.add_argument("--variants", default="keras_full_recipe,keras_step,torch_eager,torch_compile")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--tiny", action="store_true", help="CPU check at tiny scale")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.steps < 2:
        p.error(f"--steps must be >= 2, got {args.steps}")
    valid = ("keras_full_recipe", "keras_step", "torch_eager", "torch_compile")
    bad = [v for v in args.variants if v not in valid]
    if bad or not args.variants:
        p.error(f"--variants takes a subset of {','.join(valid)}, got {','.join(bad) or 'nothing'}")
    args.blocks = [2, 2, 2, 2]
    if args.tiny:
        args.width, args.blocks, args.batch_size = 8, [1, 1, 1, 1], 32
        args.steps, args.rounds = min(args.steps, 3), 1
    return args


# --------------------------------------------------------------------------
# PyTorch side: the same PreActResNet with SpikingJelly's S2NN surrogate.
# --------------------------------------------------------------------------


def torch_model(width, blocks, num_classes=10, in_channels=1, dropout=0.1):
    import torch
    from torch import nn
    from spikingjelly.activation_based import surrogate

    class Neuron(nn.Module):
        """s = H(u - u_th); backward: SpikingJelly's S2NN surrogate."""

        def __init__(self):
            super().__init__()
            self.surrogate = surrogate.S2NN(alpha=1.0 / ALPHA, beta=1.0 / TAU_S, spiking=True)

        def forward(self, u):
            return self.surrogate(u - THRESHOLD)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.act1 = nn.BatchNorm2d(cin, momentum=0.1, eps=1e-5), Neuron()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2, self.act2 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5), Neuron()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.shortcut = (nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
                             if stride != 1 or cin != cout else None)

        def forward(self, x):
            a = self.act1(self.bn1(x))
            short = self.shortcut(a) if self.shortcut is not None else x
            h = self.conv1(a)
            h = self.conv2(self.act2(self.bn2(h)))
            return short + h

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            layers, cin = [], width
            for stage, n in enumerate(blocks):
                cout = width * 2 ** stage
                for b in range(n):
                    layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*layers)
            self.bn, self.act = nn.BatchNorm2d(cin), Neuron()
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            h = self.act(self.bn(self.blocks(self.stem(x))))
            return self.fc(self.drop(torch.flatten(torch.mean(h, dim=(2, 3)), 1)))

    return Net()


def torch_trainer(args, compiled, device):
    import torch

    model = torch_model(args.width, args.blocks).to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    net = torch.compile(model) if compiled else model
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand((args.batch_size, 1, 28, 28), generator=gen).to(device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    dtype = torch.bfloat16

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=dtype):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    def block(n):
        """Seconds per step over ``n`` steps (synchronised at both ends)."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step()
        float(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    return block


# --------------------------------------------------------------------------
# Keras side: the trainer's model and training model.
# --------------------------------------------------------------------------


def keras_trainer(args, augment):
    import numpy as np

    from trainers import flags as trainer_flags
    from trainers import inputs, recipe
    from trainers.augment import DeviceAugmentation

    argv = ["gpu_spikingjelly", "--dataset=fashion_mnist", "--model=custom",
            f"--blocks={','.join(map(str, args.blocks))}", f"--width={args.width}", "--activation=s2nn",
            f"--tau_s={TAU_S}", f"--alpha={ALPHA}", f"--threshold={THRESHOLD}", "--optimizer=sgd",
            "--nesterov", "--learning_rate=0.05", "--weight_decay=0.0005", "--label_smoothing=0.1",
            "--dropout=0.1", f"--batch_size={args.batch_size}", "--dtype_policy=mixed_bfloat16",
            "--output_dir=/tmp/unused"]
    fv = trainer_flags.new_flag_values()
    trainer_flags.parse_argv(argv, fv)
    config = trainer_flags.validate(fv)
    recipe.set_dtype_policy("mixed_bfloat16")
    network = recipe.build_model(config, (28, 28, 1), 10)
    aug = DeviceAugmentation(crop_flip=augment, padding=2, randaugment_ops=2 if augment else 0,
                             randaugment_magnitude=0.3, seed=0)
    model = recipe.training_model(network, aug)
    recipe.compile_model(model, config, total_steps=1000)
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    y = inputs.one_hot(rng.integers(0, 10, size=n), 10)

    from benchmarks.gpu_table5 import step_clock

    def block(_n):
        """Seconds per step between the first and the last step's completion in one fit epoch."""
        clock = step_clock()
        model.fit(inputs.array_batches(x, y, args.batch_size, shuffle=True), epochs=1, verbose=0,
                  callbacks=[clock])
        return clock.seconds_per_step()

    return block


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import logging

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    try:
        import torch
        import spikingjelly  # noqa: F401
    except ImportError as err:
        sys.stderr.write(f"benchmarks.gpu_spikingjelly: error: {err.name} is not installed "
                         "(pip install torch spikingjelly; see docs/GPU.md)\n")
        return 2
    from trainers.backend import device_names, import_keras_quietly

    import_keras_quietly()
    import keras

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__} on {device} "
          f"({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}); "
          f"keras {keras.__version__} on {keras.backend.backend()} {device_names()}", flush=True)
    makers = {
        "keras_full_recipe": lambda: keras_trainer(args, augment=True),
        "keras_step": lambda: keras_trainer(args, augment=False),
        "torch_eager": lambda: torch_trainer(args, False, device),
        "torch_compile": lambda: torch_trainer(args, True, device),
    }
    blocks, warm = {}, {}
    for name in args.variants:
        t0 = time.perf_counter()
        blocks[name] = makers[name]()
        blocks[name](args.steps)  # tracing / compilation
        warm[name] = time.perf_counter() - t0
        print(f"{name}: built and compiled in {warm[name]:.1f}s", flush=True)
    times = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            times[name].append(blocks[name](args.steps))
    ips = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    for name in args.variants:
        print(f"{name:18s} {ips[name]:>10,.0f} img/s", flush=True)
    result = {"benchmark": "gpu_spikingjelly", "command": " ".join(["python -m benchmarks.gpu_spikingjelly"]
                                                                    + sys.argv[1:]),
              "tiny": args.tiny, "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "width": args.width, "blocks": args.blocks, "torch": torch.__version__,
              "keras": keras.__version__, "device": (torch.cuda.get_device_name(0) if device.type == "cuda"
                                                     else "cpu"),
              "images_per_s": ips, "seconds_per_step": times, "first_block_s_including_compile": warm}
    torch_best = max((ips[n] for n in ("torch_eager", "torch_compile") if n in ips), default=None)
    if torch_best:
        for ours in ("keras_full_recipe", "keras_step"):
            if ours in ips:
                result[f"{ours}_over_best_torch"] = ips[ours] / torch_best
                print(f"{ours} / best SpikingJelly: {ips[ours] / torch_best:.2f}x (target >= 1.8)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_spikingjelly.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
