"""Checks of an export: the fold against the trained model, and the spike
tensors of a TFLite model against the folded float model and across runtimes.

:func:`verify_fold` -- the folded Keras model against the original
(prediction agreement, logit difference, spike-map mismatches; only float
ties can differ).

:func:`verify_spikes` -- one converted flatbuffer (:class:`export.tflite.convert.Conversion`):

* **two levels**: every value of every spike tensor, in every runtime, is
  one of the two codes of its levels (int8/int16 codes, or the float
  values);
* **runtimes**: LiteRT with XNNPACK, LiteRT builtin kernels and TFLite Micro
  give the same spikes wherever a neuron's input is bit-identical: bit for
  bit in an integer model; in a float32 model up to *rounding ties*, where
  the float potential lies within the float32 summation-error bound of the
  threshold (:func:`rounding_tolerance`: kernels sum in different orders);
* **against the folded float model**, per neuron output:

  - *end to end*: the TFLite spike equals the folded model's spike on the
    same image (differences upstream propagate);
  - *local*: the TFLite spike equals the folded neuron's decision on the
    membrane potential ``u`` the float model computes **from the TFLite
    model's own upstream spikes** (a "teacher-forced" replay of the folded
    graph), so each difference is this neuron's own quantization error;
    its distance to the threshold ``|u - theta|`` is reported in units of
    the neuron's quantization step (:attr:`export.transform.edge.EdgeNeuron.step`:
    the int8 weight step ``max|W_c| / 127`` of a conv neuron, the input
    grid step of a depthwise neuron).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from export.metrics import batches

__all__ = ["verify_fold", "verify_spikes", "teacher_model", "probe_model", "rounding_tolerance"]

_EPS32 = 2.0 ** -24  # float32 unit roundoff


def _single(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


def verify_fold(model, folded, images, batch_size=256) -> Dict:
    """Compares ``model`` (inference mode) and its fold on ``images``.

    Returns prediction agreement, the largest absolute logit difference and,
    per neuron layer (matched by name), the number of spike-map elements
    that differ. Only float ties at a threshold can make spikes differ:
    ``g*u + b`` and ``u`` vs ``(u_th - b)/g`` round differently.
    """
    from s2nn_keras.firing import neuron_layers

    orig_neurons = {l.name: l for l in neuron_layers(model)}
    fold_neurons = {l.name: l for l in neuron_layers(folded)}
    names = [n for n in orig_neurons if n in fold_neurons]
    probe_a = probe_model(model, names)
    probe_b = probe_model(folded, names)
    mismatch = {n: 0 for n in names}
    elements = {n: 0 for n in names}
    logits_a, logits_b = [], []
    for sl in batches(len(images), batch_size):
        x = images[sl]
        outs_a = probe_a(x, training=False)
        outs_b = probe_b(x, training=False)
        logits_a.append(np.asarray(outs_a[0], np.float32))
        logits_b.append(np.asarray(outs_b[0], np.float32))
        for n, sa, sb in zip(names, outs_a[1:], outs_b[1:]):
            sa, sb = np.asarray(sa), np.asarray(sb)
            mismatch[n] += int(np.sum(sa != sb))
            elements[n] += int(sa.size)
    la, lb = np.concatenate(logits_a), np.concatenate(logits_b)
    pa, pb = la.argmax(1), lb.argmax(1)
    return {
        "logits_original": la,
        "logits_folded": lb,
        "prediction_agreement": float(np.mean(pa == pb)),
        "predictions_equal": bool(np.all(pa == pb)),
        "max_logit_abs_diff": float(np.max(np.abs(la - lb))) if la.size else 0.0,
        "spike_mismatches": {n: {"count": mismatch[n], "elements": elements[n]} for n in names},
        "total_spike_mismatches": int(sum(mismatch.values())),
        "neurons_compared": len(names),
    }


def probe_model(model, layer_names):
    """``image -> [model output, output of each named layer]`` (first call),
    built by replaying the graph (works however often the layers were
    reused to build other models)."""
    import keras

    from s2nn_keras.graph import LayerGraph, TensorRef

    replay = LayerGraph(model).replay()
    return keras.Model(_single(replay.inputs),
                       [replay.outputs[0]] + [replay.tensor(TensorRef(n, 0, 0)) for n in layer_names])


def teacher_model(folded):
    """A Keras model ``[image, spikes_1, ..., spikes_n] -> [u_1, ..., u_n]``:
    the folded graph with every neuron's output replaced by an input, and
    every neuron's input potential as an output (neurons in graph order)."""
    import keras

    from s2nn_keras.graph import LayerGraph
    from s2nn_keras.layers import is_spiking_neuron

    graph = LayerGraph(folded)
    neurons = [n for n in graph.nodes if not n.is_input and is_spiking_neuron(n.layer)]
    extra = {}

    def call(node, args, kwargs):
        if node in neurons:
            t = keras.Input(batch_shape=tuple(args[0].shape), dtype="float32", name=f"{node.name}_spikes")
            extra[node.name] = t
            return t
        return node.layer(*args, **kwargs)

    replay = graph.replay(call)
    outputs = [replay.tensor(n.inputs[0]) for n in neurons]
    return keras.Model(list(replay.inputs) + [extra[n.name] for n in neurons], outputs,
                       name=f"{folded.name}_teacher"), [n.name for n in neurons]


def _codes(flatbuffer, spike_tensors, levels):
    """Per neuron ``(code_off, code_on)`` of its spike tensor."""
    from export.tflite.flatbuffer import read_model

    from export.tflite.convert import level_codes

    graph = read_model(flatbuffer).main
    out = {}
    for name, t in spike_tensors.items():
        q = graph.tensors[t].quantization
        out[name] = tuple(levels[name]) if q is None else level_codes(q, graph.tensors[t].dtype, levels[name])
    return out


def _neuron_inputs(conversion):
    """Per neuron, the tensor its first operator reads (the conv's input
    for a neuron fused into a conv, the depthwise neuron's input)."""
    from export.tflite.flatbuffer import read_model
    from export.tflite.convert import decision_op

    graph = read_model(conversion.flatbuffer).main
    plan = conversion.plan
    out = {}
    for name in conversion.spike_tensors:
        producer = plan.neurons[name].producer if plan is not None else None
        out[name] = decision_op(graph, name, producer).inputs[0]
    return out


def _same_inputs(a, b, conversion, name, spike_shape):
    """Boolean mask over the spike tensor: positions whose whole receptive
    field is bit-identical in the two runs -- all input channels and, for a
    neuron fused into a Conv/Depthwise, that layer's kernel window; for a
    Dense, the input vector of the same position; anything else, the whole
    example."""
    import tensorflow as tf

    differ = a != b
    plan = conversion.plan
    layer = None
    if plan is not None and plan.neurons[name].kind == "conv":
        layer = plan.model.get_layer(plan.neurons[name].producer)
    window = getattr(layer, "kernel_size", None)
    if differ.ndim == 4 and len(spike_shape) == 4:
        mask = differ.any(axis=-1, keepdims=True).astype(np.float32)
        if window is not None and (tuple(window) != (1, 1) or tuple(layer.strides) != (1, 1)):
            mask = tf.nn.max_pool2d(mask, tuple(window), tuple(layer.strides), layer.padding.upper()).numpy()
        if mask.shape[1:3] == tuple(spike_shape[1:3]):
            return np.broadcast_to(mask == 0, spike_shape)
    elif differ.shape[:-1] == tuple(spike_shape[:-1]):   # each position reads its own input vector
        return np.broadcast_to(~differ.any(axis=-1, keepdims=True), spike_shape)
    per_image = differ.reshape(len(differ), -1).any(axis=1)
    return np.broadcast_to(~per_image.reshape((-1,) + (1,) * (len(spike_shape) - 1)), spike_shape)


def rounding_tolerance(folded, plan, name, u) -> np.ndarray:
    """Bound on the float32 rounding error of neuron ``name``'s potential.

    Two float32 evaluations of the same sum in different orders differ by at
    most ``2 gamma_K S`` with ``gamma_K ~ K eps`` (``eps = 2**-24``, ``K``
    terms) and ``S`` the sum of the terms' magnitudes. For a neuron written
    into its producer conv/dense (``plan`` kind ``conv``) ``K`` is the
    kernel's fan-in plus one and ``S <= ||W_c||_1 max|x| + |b_c| + |theta_c|``
    with ``max|x| = 1`` for spikes and [0, 1] images; for a neuron on a shared
    tensor (one multiply-add) ``S = |u| + |theta|``. Returns the bound,
    broadcast to ``u``'s shape, in the units of ``u``.
    """
    from s2nn_keras import layer_roles

    layer = folded.get_layer(name)
    theta = np.abs(layer.thresholds.astype(np.float64))
    neuron = plan.neurons[name] if plan is not None and name in plan.neurons else None
    if neuron is not None and neuron.kind == "conv" and neuron.producer is not None:
        producer = folded.get_layer(neuron.producer)
        kernel = np.abs(np.asarray(producer.kernel, np.float64))
        channels = kernel.shape[-2] * kernel.shape[-1] if layer_roles.is_depthwise(type(producer).__name__) \
            else kernel.shape[-1]
        rows = kernel.reshape(-1, channels)
        fan_in = int(rows.shape[0])
        l1 = rows.sum(axis=0)
        bias = np.abs(np.asarray(producer.bias, np.float64)) if getattr(producer, "use_bias", False) else 0.0
        bound = 2.0 * (fan_in + 1) * _EPS32 * (l1 + bias + theta)
        return np.broadcast_to(bound, np.shape(u))
    return 4.0 * _EPS32 * (np.abs(u) + theta)


def _neuron_levels(conversion, folded):
    levels = {}
    for name in conversion.spike_tensors:
        if conversion.plan is not None:
            levels[name] = tuple(conversion.plan.neurons[name].levels)
        else:
            layer = folded.get_layer(name)
            levels[name] = (float(layer.off_value), 1.0)
    return levels


def verify_spikes(conversion, folded, images, runtimes: Sequence[str] = ("litert", "litert_builtin", "tflm"),
                  max_tflm_examples: Optional[int] = None, batch_size: int = 256) -> Dict:
    """Checks the spike tensors of ``conversion`` (module docstring).

    Args:
      conversion: an :class:`export.tflite.convert.Conversion` of a spiking model.
      folded: the folded float model it was made from (compare neurons).
      images: float32 images in the model's input convention.
      runtimes: subset of :data:`export.tflite.spikes.RUNTIMES`; the first LiteRT
        one (else the first) is the one compared with the float model.
      max_tflm_examples: cap on the images TFLite Micro runs (slow).

    Returns:
      A JSON-friendly dict (see docs/EXPORT.md, "Report").
    """

    from export.tflite.spikes import run_spikes

    names = list(conversion.spike_tensors)
    levels = _neuron_levels(conversion, folded)
    codes = _codes(conversion.flatbuffer, conversion.spike_tensors, levels)
    inputs = _neuron_inputs(conversion)
    probe = dict(conversion.spike_tensors)
    probe.update({f"{n}:input": t for n, t in inputs.items()})
    runs = {}
    for rt in runtimes:
        n = len(images)
        if rt == "tflm" and max_tflm_examples is not None:
            n = min(n, int(max_tflm_examples))
        logits, spikes = run_spikes(conversion.flatbuffer, probe, images[:n], rt)
        for name in names:   # a 2-D neuron's spikes can come out of its 4-D depthwise op
            shape = (len(spikes[name]),) + tuple(folded.get_layer(name).output.shape[1:])
            if spikes[name].shape != shape and spikes[name].size == int(np.prod(shape)):
                spikes[name] = spikes[name].reshape(shape)
        runs[rt] = (logits, spikes)

    nonbinary = {rt: {n: int(np.sum((s[n] != codes[n][0]) & (s[n] != codes[n][1]))) for n in names}
                 for rt, (_, s) in runs.items()}
    pairs = {}
    order = list(runs)
    ref_rt = next((r for r in order if r.startswith("litert")), order[0])
    float_model = conversion.quantization == "float32"
    # Float32 only: {(pair, neuron): mask of differences given equal inputs
    # whose potential the teacher-forced replay below (fed with ref_rt's
    # spikes) computes, to tell rounding ties from real disagreements.
    tie_candidates = {}
    for a, b in zip(order, order[1:]):
        k = min(len(runs[a][0]), len(runs[b][0]))
        sa, sb = runs[a][1], runs[b][1]
        diff = sum(int(np.sum(sa[n][:k] != sb[n][:k])) for n in names)
        compared = given = 0
        for n in names:
            same = _same_inputs(sa[f"{n}:input"][:k], sb[f"{n}:input"][:k], conversion, n, sa[n][:k].shape)
            compared += int(np.sum(same))
            differ = (sa[n][:k] != sb[n][:k]) & same
            given += int(np.sum(differ))
            if float_model and differ.any():
                if a != ref_rt:
                    sr = runs[ref_rt][1]
                    differ = differ & _same_inputs(sr[f"{n}:input"][:k], sa[f"{n}:input"][:k], conversion, n,
                                                   sa[n][:k].shape)
                tie_candidates[(f"{a}_vs_{b}", n)] = differ
        pairs[f"{a}_vs_{b}"] = {"images": k, "spike_differences": diff,
                                "outputs_bit_equal": bool(np.array_equal(runs[a][0][:k], runs[b][0][:k])),
                                "elements_with_equal_inputs": compared,
                                "spike_differences_given_equal_inputs": given,
                                "rounding_ties_given_equal_inputs": 0}

    _, spikes = runs[ref_rt]
    fires = {n: spikes[n] == codes[n][1] for n in names}
    on_value = {n: 1.0 for n in names}
    off_value = {n: float(folded.get_layer(n).off_value) for n in names}

    # End to end: the folded model's own spikes.
    probe = probe_model(folded, names)
    teacher, order_t = teacher_model(folded)
    e2e = {n: 0 for n in names}
    local = {n: 0 for n in names}
    elements = {n: 0 for n in names}
    worst = {n: 0.0 for n in names}
    within = {n: 0 for n in names}
    plan = conversion.plan
    for sl in batches(len(images), batch_size):
        x = images[sl]
        ref = list(probe(x, training=False))[1:]
        feed = [x] + [np.where(fires[n][sl], on_value[n], off_value[n]).astype(np.float32) for n in order_t]
        us = teacher(feed, training=False)
        us = us if isinstance(us, (list, tuple)) else [us]
        u_of = dict(zip(order_t, us))
        for n, r in zip(names, ref):
            f = fires[n][sl]
            e2e[n] += int(np.sum((np.asarray(r) == on_value[n]) != f))
            elements[n] += int(f.size)
            layer = folded.get_layer(n)
            u = np.asarray(u_of[n], np.float64)
            th, pol = layer.thresholds.astype(np.float64), layer.polarity
            for (pair, name), candidates in tie_candidates.items():
                if name != n or sl.start >= len(candidates):
                    continue
                m = candidates[sl.start:min(sl.stop, len(candidates))]
                if m.any():
                    ub = u[:len(m)]
                    near = np.abs(ub - th) <= rounding_tolerance(folded, plan, n, ub)
                    pairs[pair]["rounding_ties_given_equal_inputs"] += int(np.sum(m & near))
            fire_local = np.where(pol > 0, u >= th, np.where(pol < 0, u <= th, th == 1.0))
            miss = fire_local != f
            local[n] += int(np.sum(miss))
            if miss.any():
                step = plan.neurons[n].step if plan is not None and plan.neurons[n].step is not None else None
                dist = np.abs(u - th)
                if step is not None:
                    dist = dist / np.broadcast_to(np.asarray(step, np.float64), th.shape)
                d = dist[miss]
                worst[n] = max(worst[n], float(np.max(d)))
                within[n] += int(np.sum(d <= 1.0))
    total = sum(elements.values())
    total_e2e = sum(e2e.values())
    total_local = sum(local.values())
    return {
        "runtimes": {rt: {"images": int(len(r[0]))} for rt, r in runs.items()},
        "reference_runtime": ref_rt,
        "levels": {n: list(levels[n]) for n in names},
        "codes": {n: list(codes[n]) for n in names},
        "nonbinary_values": {rt: int(sum(v.values())) for rt, v in nonbinary.items()},
        "two_level": all(v == 0 for per in nonbinary.values() for v in per.values()),
        "runtime_agreement": pairs,
        "runtimes_bit_equal": all(p["spike_differences"] == 0 and p["outputs_bit_equal"] for p in pairs.values()),
        "neurons_equal_given_equal_inputs": all(
            p["spike_differences_given_equal_inputs"] == p["rounding_ties_given_equal_inputs"]
            for p in pairs.values()),
        "elements": int(total),
        "end_to_end_agreement": 1.0 - total_e2e / total if total else 1.0,
        "local_agreement": 1.0 - total_local / total if total else 1.0,
        "local_mismatches": int(total_local),
        "local_mismatches_within_one_step": int(sum(within.values())),
        "local_max_distance_steps": float(max(worst.values())) if names else 0.0,
        "step_units": "quantization steps" if plan is not None else "units of u",
        "per_neuron": {n: {"kind": plan.neurons[n].kind if plan is not None else "compare",
                           "elements": elements[n], "end_to_end_mismatches": e2e[n],
                           "local_mismatches": local[n], "local_within_one_step": within[n],
                           "local_max_distance": worst[n],
                           "nonbinary_values": {rt: nonbinary[rt][n] for rt in nonbinary}}
                       for n in names},
    }
