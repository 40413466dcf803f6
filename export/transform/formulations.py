"""How a folded spiking neuron is written in TFLite: the registered formulations.

A folded neuron (:class:`export.transform.neurons.ThresholdNeuron`) fires iff
``u' >= 0`` with ``u'_c = p_c (u_c - theta_c)`` (paper Eq. 27). The same
step function can be written with different TFLite ops; each way is a
:class:`Formulation`, registered by name like the surrogates of
:mod:`s2nn_keras.surrogates`:

============  =========  ==============  ===============================================
name          levels     formats         ops, and how each neuron is placed
============  =========  ==============  ===============================================
``saturate``  {0, 6},    float32, int8,  a ``RELU6`` / ``RELU_N1_TO_1`` clamp of a large
              {-1, +1}   int16x8         multiple of ``u'``, fused into the Conv/Depthwise/
                                         Dense that computes ``u`` ("conv" placement) or
                                         into one 1x1 ``DEPTHWISE_CONV_2D`` of a shared
                                         tensor ("tensor" placement): edge ops only
                                         (:mod:`export.transform.edge`)
``compare``   {0, 1},    float32, int8   ``GREATER_EQUAL``/``LESS_EQUAL`` (logical ops for
              {-1, +1}                   mixed polarities) and one ``SELECT_V2``
``ramp``      {0, 1},    int16x8         a per-channel affine (1x1 ``DEPTHWISE_CONV_2D``)
              {-1, +1}                   and ``clip(g z, 0, 1)`` (``RELU`` + ``MINIMUM``);
                                         the int16 quantizer has no comparison ops
============  =========  ==============  ===============================================

``--neuron`` / ``neuron=`` chooses among the *selectable* ones (``saturate``,
the default, and ``compare``, the ablation); ``compare`` is written as
``ramp`` in int16x8 (:meth:`Formulation.for_format`).

Spike levels: the saturate clamps can only output ``{0, 6}`` (RELU6) or
``{-1, +1}``; a {0, 1} neuron's spikes are therefore 6 times the reference
ones, a factor every reader of the spikes absorbs (docs/EXPORT.md, "Levels").
:func:`spike_levels` is the one place these values are written down.

Nothing here imports TensorFlow (the command lines validate ``--neuron``
before it loads).

Example:
  >>> from export.transform.formulations import get_formulation, spike_levels
  >>> spike_levels("saturate", 0.0), spike_levels("compare", -1.0)
  ((0.0, 6.0), (-1.0, 1.0))
  >>> get_formulation("compare").for_format("int16x8").name
  'ramp'
"""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

__all__ = ["Formulation", "register_formulation", "get_formulation", "available_formulations",
           "selectable_formulations", "spike_levels", "reference_levels", "DEFAULT_FORMULATION"]

_FORMATS = ("float32", "int8", "int16x8")


@dataclasses.dataclass(frozen=True)
class Formulation:
    """One way to write a folded neuron in TFLite.

    Attributes:
      name: registry key (``ThresholdNeuron(formulation=...)``).
      levels: ``{off value: (off, on)}``: the two real values its spikes
        take, by the neuron's off value (0 for {0, 1} neurons, -1 for
        ``ste_b``).
      formats: the TFLite formats it writes.
      ops: the TFLite builtin ops its neurons use (besides the producer
        Conv/Depthwise/Dense they may be fused into).
      placements: how a neuron can be placed (``"conv"``: fused into the
        layer computing its input; ``"tensor"``: its own op on the tensor;
        ``"compare"``: comparison and select ops).
      edge: True if its neurons use only :data:`export.formats.EDGE_OPS`.
      selectable: offered as ``--neuron`` / ``neuron=``.
      substitutes: ``{format: formulation}`` written instead in that format
        (``compare`` is ``ramp`` in int16x8).
      description: one line for docs.
    """

    name: str
    levels: Mapping[float, Tuple[float, float]]
    formats: Tuple[str, ...]
    ops: FrozenSet[str]
    placements: Tuple[str, ...]
    edge: bool = False
    selectable: bool = False
    substitutes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""

    def levels_for(self, off_value: float) -> Tuple[float, float]:
        """``(off, on)`` spike values for a neuron with this off value."""
        key = float(off_value)
        if key not in self.levels:
            raise ValueError(f"formulation {self.name!r} has no levels for off value {off_value!r} "
                             f"(valid: {sorted(self.levels)})")
        return tuple(float(v) for v in self.levels[key])

    def for_format(self, quantization: str) -> "Formulation":
        """The formulation actually written in ``quantization``."""
        if quantization not in _FORMATS:
            raise ValueError(f"quantization must be one of {', '.join(_FORMATS)}; got {quantization!r}")
        name = self.substitutes.get(quantization, self.name)
        entry = get_formulation(name)
        if quantization not in entry.formats:
            raise ValueError(f"formulation {self.name!r} does not write {quantization}")
        return entry


_REGISTRY: Dict[str, Formulation] = {}


def register_formulation(name: str, *, levels: Mapping[float, Tuple[float, float]], formats, ops, placements,
                         edge: bool = False, selectable: bool = False,
                         substitutes: Optional[Mapping[str, str]] = None, description: str = "",
                         overwrite: bool = False) -> Formulation:
    """Adds a formulation to the registry (see :class:`Formulation` for the
    arguments) and returns it. Levels must be two distinct finite values,
    ``off`` first, for off values 0.0 and/or -1.0."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"formulation name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"formulation {name!r} is already registered; pass overwrite=True to replace it")
    levels = {float(k): (float(v[0]), float(v[1])) for k, v in dict(levels).items()}
    for off, (lo, hi) in levels.items():
        if off not in (0.0, -1.0) or lo != off or not hi > lo:
            raise ValueError(f"formulation {name!r}: levels must map an off value (0.0 or -1.0) to (off, on) "
                             f"with on > off, got {off!r}: {(lo, hi)!r}")
    formats = tuple(formats)
    if not formats or any(f not in _FORMATS for f in formats):
        raise ValueError(f"formulation {name!r}: formats must be among {_FORMATS}, got {formats!r}")
    entry = Formulation(name, levels, formats, frozenset(ops), tuple(placements), bool(edge), bool(selectable),
                        dict(substitutes or {}), description)
    _REGISTRY[name] = entry
    return entry


def get_formulation(name: str) -> Formulation:
    """The registered :class:`Formulation` ``name`` (ValueError listing the valid names)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown neuron formulation {name!r}; valid: {', '.join(available_formulations())}")
    return _REGISTRY[name]


def available_formulations() -> Tuple[str, ...]:
    """Every registered formulation name."""
    return tuple(_REGISTRY)


def selectable_formulations() -> Tuple[str, ...]:
    """The names ``--neuron`` / ``neuron=`` accept."""
    return tuple(n for n, f in _REGISTRY.items() if f.selectable)


def spike_levels(formulation: str, off_value: float) -> Tuple[float, float]:
    """``(off, on)``: the real values of a neuron's spikes in ``formulation``."""
    return get_formulation(formulation).levels_for(off_value)


def reference_levels(off_value: float) -> Tuple[float, float]:
    """The trained model's spike values: ``(0, 1)`` or ``(-1, 1)`` (``ste_b``)."""
    return spike_levels("compare", off_value)


DEFAULT_FORMULATION = "saturate"

register_formulation(
    "saturate", levels={0.0: (0.0, 6.0), -1.0: (-1.0, 1.0)}, formats=_FORMATS,
    ops={"RELU6", "RELU_N1_TO_1", "DEPTHWISE_CONV_2D", "RESHAPE"}, placements=("conv", "tensor"), edge=True,
    selectable=True,
    description="clip(G p (u - theta), off, on), fused into the Conv/Depthwise/Dense computing u or into "
                "one 1x1 depthwise conv; int16x8 adds a 1x1 depthwise level stage")
register_formulation(
    "compare", levels={0.0: (0.0, 1.0), -1.0: (-1.0, 1.0)}, formats=("float32", "int8"),
    ops={"GREATER_EQUAL", "LESS_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "SELECT_V2"}, placements=("compare",),
    selectable=True, substitutes={"int16x8": "ramp"},
    description="GREATER_EQUAL / LESS_EQUAL against theta and SELECT_V2 of the two levels (the ablation)")
register_formulation(
    "ramp", levels={0.0: (0.0, 1.0), -1.0: (-1.0, 1.0)}, formats=("int16x8",),
    ops={"DEPTHWISE_CONV_2D", "RELU", "MINIMUM", "QUANTIZE", "MUL", "ADD", "RESHAPE"}, placements=("tensor",),
    description="clip(g p (u - theta), 0, 1) with g = 32767 / max|u - theta| (int16x8 compare ablation)")
