"""Energy report of a single-step SNN (paper Appendix B, Eqs. B.1-B.4), Keras side.

For every convolution and linear layer ``l`` (FLOPs from
:mod:`s2nn_keras.flops`, Eq. B.1):

* **R(l)**, Eq. B.2: the firing rate of the spikes layer ``l`` *receives*,
  ``E_data[#spikes / #neurons]`` measured on its input over every example
  (a spike is a value ``> 0``: 1 for {0, 1} neurons, +1 for the {-1, +1}
  ``ste_b`` neuron). The source of each input is found by walking the
  graph back (:func:`resolve_inputs`):

  ============== ==========================================================
  input kind     what the layer receives
  ============== ==========================================================
  image          a model input (real-valued pixels)
  spikes         {0, 1} spikes: a neuron output, possibly through
                 Dropout / Reshape / Flatten / Permute / ZeroPadding /
                 Cropping / UpSampling, a 1-element AveragePooling
                 (subsampling), or MaxPooling / Concatenate of spikes
                 (then R is measured on the pooled/concatenated map)
  signed_spikes  {-1, +1} spikes (``ste_b``)
  pooled_spikes  an (global) average of spikes; its mean equals the
                 source neuron's rate, which is the R reported
  real           anything else (ReLU outputs, sums of spike maps, ...)
  ============== ==========================================================

* **E_Full**, Eq. B.3, and **E_Method**, Eq. B.4, per inference::

      E_Full   = E_MAC * sum_l FLOPs(l)
      E_Method = E_AC  * sum_l FLOPs(l) * R(l)

  and ``efficiency = E_Full / E_Method``.

Accounting conventions (``CONVENTIONS``; every report states its own):

``"default"``
  Only layers fed by {0, 1} spikes are event-driven accumulates,
  ``E_AC * FLOPs * R``. Layers fed by real values (the image, pooled
  spikes, ReLU outputs, sums) do MACs at full rate, ``E_MAC * FLOPs``. A
  {-1, +1} input is never silent (a -1 is subtracted): ``E_AC * FLOPs``.
``"paper"``
  Eq. B.4 literally: ``E_AC * FLOPs * R`` for every layer, with R the +1
  rate for {-1, +1} spikes, the source neuron's rate for pooled spikes and
  R = 1 for the image; inputs that are neither spikes nor the image are
  MACs at full rate.

A network without spiking neurons is the full-precision network in both:
every layer a MAC at full rate, ``E_Full / E_Method = 1.00`` (the ReLU rows
of the paper's Table 2).

Energy presets (``PRESETS``) from M. Horowitz, "1.1 Computing's energy
problem (and what we can do about it)", IEEE ISSCC 2014, pp. 10-14,
doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V): a MAC is one multiply plus
one add of the same type, an AC one add; or your own ``e_mac_pj`` /
``e_ac_pj``.

Backend-agnostic: the rates are counted on the device by
:class:`s2nn_keras.firing.SpikeCounter`. The TFLite side of the report
lives in ``export.energy.tflite``.

Example::

    from s2nn_keras.energy import energy_report

    rep = energy_report(model, x_test[:1000], convention="default", preset="45nm_fp32")
    rep["efficiency"], rep["e_full_pj"], rep["e_method_pj"]
    [(r["name"], r["input_kind"], r["firing_rate"]) for r in rep["layers"]]
"""

from __future__ import annotations

import collections
import math
from typing import Dict, List, Optional, Tuple

import keras

from s2nn_keras.firing import DEFAULT_BATCH_SIZE, SpikeCounter, neuron_outputs
from s2nn_keras.flops import node_flops
from s2nn_keras.graph import LayerGraph, TensorRef
from s2nn_keras.layers import is_spiking_neuron
from s2nn_keras import layer_roles

__all__ = ["HOROWITZ_2014", "PRESETS", "CONVENTIONS", "INPUT_KINDS", "SPIKE_KINDS", "energies", "charge",
           "assemble_report", "resolve_inputs", "measure_rates", "energy_report"]

HOROWITZ_2014 = (
    'M. Horowitz, "1.1 Computing\'s energy problem (and what we can do about it)", '
    "IEEE ISSCC 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V)"
)

#: name -> (E_MAC pJ, E_AC pJ, description). MAC = mult + add, AC = add.
PRESETS = collections.OrderedDict(
    [
        ("45nm_fp32", (round(3.7 + 0.9, 6), 0.9,
                       "fp32: MAC = mult 3.7 + add 0.9 = 4.6 pJ, AC = add 0.9 pJ (the paper's values)")),
        ("45nm_fp16", (round(1.1 + 0.4, 6), 0.4,
                       "fp16: MAC = mult 1.1 + add 0.4 = 1.5 pJ, AC = add 0.4 pJ")),
        ("45nm_int32", (round(3.1 + 0.1, 6), 0.1,
                        "int32: MAC = mult 3.1 + add 0.1 = 3.2 pJ, AC = add 0.1 pJ")),
        ("45nm_int8", (round(0.2 + 0.03, 6), 0.03,
                       "int8: MAC = mult 0.2 + add 0.03 = 0.23 pJ, AC = add 0.03 pJ")),
        ("45nm_int8_acc32", (round(0.2 + 0.1, 6), 0.1,
                             "int8 weights, int32 accumulator: MAC = int8 mult 0.2 + int32 add 0.1 "
                             "= 0.3 pJ, AC = int32 add 0.1 pJ")),
    ]
)

CONVENTIONS = collections.OrderedDict(
    [
        ("default",
         "default: layers fed by {0,1} spikes cost E_AC*FLOPs*R (R = measured input firing rate); "
         "layers fed by real values (the image, pooled spikes, ReLU outputs, sums) cost "
         "E_MAC*FLOPs (MACs at full rate); {-1,+1} inputs cost E_AC*FLOPs (never silent)"),
        ("paper",
         "paper: Eq. B.4 literally, every layer costs E_AC*FLOPs*R; R = input +1-spike rate "
         "(source neuron rate for pooled spikes), R = 1 for the image; "
         "inputs from non-spiking layers cost E_MAC*FLOPs"),
    ]
)

INPUT_KINDS = ("image", "spikes", "signed_spikes", "pooled_spikes", "pooled_signed_spikes", "real")
SPIKE_KINDS = ("spikes", "signed_spikes", "pooled_spikes", "pooled_signed_spikes")


# --------------------------------------------------------------------------
# Energies and charging (B.3, B.4).
# --------------------------------------------------------------------------


def energies(preset: str = "45nm_fp32", e_mac_pj: Optional[float] = None,
             e_ac_pj: Optional[float] = None) -> Tuple[str, float, float, str]:
    """``(preset name, E_MAC, E_AC, description)`` of a preset or of user
    values (``preset`` is then ``"custom"``).

    Raises:
      ValueError: only one of the user values, a non-positive or non-finite
        one, or an unknown preset.
    """
    if (e_mac_pj is None) != (e_ac_pj is None):
        raise ValueError("give both e_mac_pj and e_ac_pj, or neither")
    if e_mac_pj is not None:
        for key, value in (("e_mac_pj", e_mac_pj), ("e_ac_pj", e_ac_pj)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive finite number, got {value!r}")
        return "custom", float(e_mac_pj), float(e_ac_pj), "user-supplied values"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    mac, ac, desc = PRESETS[preset]
    return preset, round(mac, 6), round(ac, 6), f"{desc}; {HOROWITZ_2014}"


def _check_convention(convention):
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


def charge(row: dict, convention: str, spiking: bool) -> Tuple[str, float]:
    """``(op, charged_rate)`` of one report row: ``"AC"`` or ``"MAC"``, and
    the rate its FLOPs are multiplied by, under ``convention``."""
    kind = row["input_kind"]
    if not spiking:
        return "MAC", 1.0
    if convention == "default":
        if kind == "spikes":
            return "AC", row["firing_rate"]
        if kind == "signed_spikes":
            return "AC", 1.0
        return "MAC", 1.0
    if kind in SPIKE_KINDS:
        return "AC", row["firing_rate"]
    if kind == "image":
        return "AC", 1.0
    return "MAC", 1.0


def assemble_report(rows: List[dict], *, convention: str, preset: str, e_mac_pj: Optional[float],
                    e_ac_pj: Optional[float], spiking: bool, source: str, model_name: str, n_examples: int,
                    extra_notes=()) -> "collections.OrderedDict":
    """Eqs. B.3/B.4 over measured rows (each with ``name``, ``type``,
    ``flops``, ``input_kind``, ``input_source``, ``firing_rate``); adds
    ``op``, ``charged_rate``, ``energy_full_pj``, ``energy_pj``,
    ``energy_share`` to every row and returns the report dict (the format
    of :func:`energy_report`, shared by the TFLite report)."""
    _check_convention(convention)
    preset_name, mac, ac, preset_desc = energies(preset, e_mac_pj, e_ac_pj)
    e_full = e_method = 0.0
    total_flops = 0
    for row in rows:
        op, rate = charge(row, convention, spiking)
        row["op"] = op
        row["charged_rate"] = float(rate)
        row["energy_full_pj"] = mac * row["flops"]
        row["energy_pj"] = (mac if op == "MAC" else ac) * row["flops"] * rate
        e_full += row["energy_full_pj"]
        e_method += row["energy_pj"]
        total_flops += row["flops"]
    for row in rows:
        row["energy_share"] = row["energy_pj"] / e_method if e_method > 0 else 0.0
    notes = list(extra_notes)
    if not spiking:
        notes.append("no spiking neurons: the model is the full-precision network, every layer is a MAC "
                     "at full rate and E_Full/E_Method = 1.00")
    else:
        for row in rows:
            if row["op"] == "MAC":
                notes.append(f"{row['name']}: input is {row['input_kind']} ({row['input_source']}); "
                             "charged as MACs at full rate")
            elif row["input_kind"] == "image":
                notes.append(f"{row['name']}: input is the image; charged E_AC*FLOPs*1 (paper convention)")
            elif row["input_kind"] == "signed_spikes" and convention == "default":
                notes.append(f"{row['name']}: {{-1,+1}} input; charged as accumulates at rate 1")
    report = collections.OrderedDict(
        source=source,
        model=model_name,
        convention=convention,
        convention_description=CONVENTIONS[convention],
        preset=preset_name,
        preset_description=preset_desc,
        e_mac_pj=mac,
        e_ac_pj=ac,
        num_examples=int(n_examples),
        units="pJ per inference (one example); FLOPs per inference",
        layers=rows,
        total_flops=int(total_flops),
        e_full_pj=e_full,
        e_method_pj=e_method,
        efficiency=(e_full / e_method) if e_method > 0 else None,
        notes=notes,
    )
    if e_method == 0:
        report["notes"].append("E_Method = 0 (no layer received a spike): efficiency undefined (null)")
    return report


# --------------------------------------------------------------------------
# Which spikes each layer receives.
# --------------------------------------------------------------------------

def _resolve(graph: LayerGraph, ref: TensorRef):
    """``(kind, rate_ref, description)`` for a tensor feeding a Conv/Dense."""
    node = graph.producer(ref)
    op = node.layer
    if node.is_input:
        return "image", None, f"model input '{node.name}'"
    if is_spiking_neuron(op):
        signed = float(getattr(op, "off_value", 0.0)) == -1.0
        return ("signed_spikes" if signed else "spikes"), ref, f"neuron '{node.key}'"
    if not node.inputs:
        return "real", None, f"output of {node.class_name} '{node.key}' (real-valued)"
    first = node.inputs[0]
    if isinstance(op, keras.layers.Activation) and getattr(op.activation, "__name__", "") == "linear":
        return _resolve(graph, first)
    kind_of_layer = layer_roles.role(node.class_name, op)
    if layer_roles.is_rate_transparent(node.class_name, op):
        return _resolve(graph, first)
    if kind_of_layer == "subsample":
        # A 1-element window only subsamples (PreActResNet's strided
        # shortcut): the output is still binary, R is measured on it.
        kind, _, desc = _resolve(graph, first)
        if kind in ("spikes", "signed_spikes"):
            return kind, ref, f"{desc} via subsampling {type(op).__name__} '{node.key}'"
        if kind.startswith("pooled_"):
            return _resolve(graph, first)
        return "real", None, f"output of {type(op).__name__} '{node.key}' of non-spikes"
    if kind_of_layer == "max_pool":
        kind, _, desc = _resolve(graph, first)
        if kind in ("spikes", "signed_spikes"):
            return kind, ref, f"{desc} via {type(op).__name__} '{node.key}'"
        return "real", None, f"output of {type(op).__name__} '{node.key}' of non-spikes"
    if kind_of_layer == "average":
        kind, rate_ref, desc = _resolve(graph, first)
        if kind in ("spikes", "signed_spikes"):
            return "pooled_" + kind, rate_ref, f"{desc} via {type(op).__name__} '{node.key}' (average)"
        if kind.startswith("pooled_"):
            return kind, rate_ref, f"{desc} via {type(op).__name__} '{node.key}' (average)"
        return "real", None, f"output of {type(op).__name__} '{node.key}' of non-spikes"
    if isinstance(op, keras.layers.Concatenate):
        kinds = [_resolve(graph, r)[0] for r in node.inputs]
        if len(set(kinds)) == 1 and kinds[0] in ("spikes", "signed_spikes"):
            return kinds[0], ref, f"concatenated spikes '{node.key}'"
        return "real", None, f"output of Concatenate '{node.key}' (not all {{0,1}} spikes)"
    return "real", None, f"output of {node.class_name} '{node.key}' (real-valued)"


def resolve_inputs(model, graph: Optional[LayerGraph] = None) -> List[dict]:
    """Per Conv/Dense row of ``model``: its FLOPs and the source of its input.

    Returns dicts with ``name`` (the call key of
    :func:`s2nn_keras.flops.layer_flops`, ``:depthwise``/``:pointwise`` for
    the two parts of a separable conv), ``type``, ``flops``, ``input_kind``
    (one of ``INPUT_KINDS``), ``input_source`` (words) and ``rate_ref`` (the
    :class:`~s2nn_keras.graph.TensorRef` whose ``> 0`` fraction is R(l), or
    ``None``). Nested models are expanded.

    Raises:
      ValueError: no graph, a kernel without FLOPs rule, or no Conv/Dense.
    """
    graph = graph or LayerGraph(model, expand_nested=True)
    rows = []
    for node in graph.nodes:
        entries = node_flops(graph, node)
        if not entries:
            continue
        kind, rate_ref, desc = _resolve(graph, node.inputs[0])
        for entry in entries:
            row = {"name": node.key + entry.suffix, "type": entry.type, "flops": int(entry.flops),
                   "input_kind": kind, "input_source": desc, "rate_ref": rate_ref}
            if entry.input_override == "real":
                row.update(input_kind="real", input_source=f"depthwise output of '{node.key}'", rate_ref=None)
            rows.append(row)
    if not rows:
        raise ValueError(f"model {model.name!r} has no Conv or Dense layer to report on")
    return rows


# --------------------------------------------------------------------------
# The Keras report.
# --------------------------------------------------------------------------


def measure_rates(graph: LayerGraph, rows: List[dict], data, *, batch_size: int = DEFAULT_BATCH_SIZE):
    """One pass over ``data``: sets ``firing_rate`` of every row (``None``
    for rows without ``rate_ref``; the ``rate_ref`` key is removed) and
    returns ``(num_examples, {neuron call key: R})``.

    Raises:
      ValueError: empty data, or a tensor read as spikes holds values
        outside {-1, 0, 1} (names the layer).
    """
    neurons = neuron_outputs(graph)
    refs = list(dict.fromkeys([r["rate_ref"] for r in rows if r["rate_ref"] is not None]
                              + list(neurons.values())))
    try:
        counts = SpikeCounter(graph, refs, count_nonbinary=True).count(data, batch_size=batch_size)
    except ValueError as err:
        if "empty data set" in str(err):
            raise ValueError("energy report got an empty data set") from None
        raise
    index = {ref: i for i, ref in enumerate(refs)}
    for row in rows:
        ref = row.pop("rate_ref")
        if ref is None:
            row["firing_rate"] = None
            continue
        i = index[ref]
        if counts.nonbinary[i]:
            raise ValueError(f"layer {row['name']!r} receives '{row['input_source']}', which is not binary "
                             f"({int(counts.nonbinary[i])} values outside {{-1, 0, 1}})")
        row["firing_rate"] = float(counts.fired[i] / counts.total[i])
    neuron_rates = collections.OrderedDict(
        (key, float(counts.fired[index[ref]] / counts.total[index[ref]])) for key, ref in neurons.items())
    return counts.num_examples, neuron_rates


def energy_report(model, data, convention: str = "default", preset: str = "45nm_fp32", *,
                  e_mac_pj: Optional[float] = None, e_ac_pj: Optional[float] = None,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> Dict:
    """Appendix B energy report of a Keras model over ``data``.

    Args:
      model: a functional (or built Sequential) Keras model with one input.
      data: inputs as an array, a ``keras.utils.PyDataset``, a
        ``tf.data.Dataset`` or an iterable of ``x`` / ``(x, y[, w])`` batches.
      convention: ``"default"`` or ``"paper"`` (module docstring).
      preset: a key of :data:`PRESETS`; ignored when ``e_mac_pj`` and
        ``e_ac_pj`` are given.
      e_mac_pj, e_ac_pj: your energies per MAC / per accumulate in pJ.
      batch_size: slice size for array data.

    Returns:
      A dict with ``layers`` (per Conv/Dense: ``name``, ``type``, ``flops``
      (B.1), ``input_kind``, ``input_source``, ``firing_rate`` (B.2, the
      measured rate of the spikes it receives; ``None`` for real-valued
      inputs), ``op``, ``charged_rate``, ``energy_full_pj``, ``energy_pj``,
      ``energy_share``), ``total_flops``, ``e_full_pj`` (B.3),
      ``e_method_pj`` (B.4), ``efficiency`` (= E_Full / E_Method),
      ``neuron_firing_rates`` (R of every neuron call, as in Fig. B.5), the
      convention, the energies and their citation, and ``notes``.
    """
    _check_convention(convention)
    energies(preset, e_mac_pj, e_ac_pj)
    graph = LayerGraph(model, expand_nested=True)
    if len(graph.input_refs) != 1:
        raise ValueError(f"model {model.name!r} has {len(graph.input_refs)} inputs; "
                         "the energy report supports single-input models")
    rows = resolve_inputs(model, graph)
    n, neuron_rates = measure_rates(graph, rows, data, batch_size=batch_size)
    report = assemble_report(rows, convention=convention, preset=preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                             spiking=bool(neuron_rates), source="keras", model_name=model.name, n_examples=n)
    report["neuron_firing_rates"] = dict(neuron_rates)
    return report
