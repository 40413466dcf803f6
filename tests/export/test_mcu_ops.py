"""Microcontroller C (export.mcu) of the ops beyond the PreActResNet's:
CONCATENATION, RESIZE_NEAREST_NEIGHBOR, TRANSPOSE_CONV, REDUCE_MAX,
broadcast MUL / ADD (the converter's BatchNorm form, so the plain ReLU
model reaches the microcontroller), GREATER_EQUAL + SELECT_V2 (the compare
neuron). Each: one- or few-op Keras models through TensorFlow's converter
(int8, a representative dataset), lowered, generated, built for the host and
byte-compared with the tflite-micro interpreter on random inputs; spike
tensors through them (spike-driven layouts downstream, TRANSPOSE_CONV's own);
the models TFLite Micro itself refuses are refused. QEMU: one slow test runs
all of them on both boards."""

import shutil

import numpy as np
import pytest

from export.mcu.build import build_host, run_host
from export.mcu.generate import generate
from export.mcu.lower import UnsupportedModelError, lower
from export.mcu.run import quantize_inputs, spike_codes, tflm_outputs
from tests.export.helpers import plain_tflite

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host C compiler (gcc)")
ARENA = 1 << 21     # TFLite Micro's arena for these small models (no bisection)
N_IMAGES = 24


def _flatbuffer(build, input_shape, seed=0, data=None):
    """``keras.Model(x, build(x))`` (batch 1, weights drawn after ``seed``), int8
    through TensorFlow's converter with ``data`` (default: normal) as the
    representative set; returns the flatbuffer and the data."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, batch_size=1)     # static shapes (no SHAPE/PACK for the transpose conv)
    model = keras.Model(inputs, build(inputs))
    if data is None:
        data = np.random.default_rng(seed).normal(size=(64,) + tuple(input_shape)).astype("float32")
    return plain_tflite(model, lambda: ([image[None]] for image in data)), data


def _check(flat, images, tmp_path, codes=None, layouts=("dense",)):
    """Every layout's host build gives TFLM's output bytes on every image;
    returns the lowered program and the per-layer fired counts of the last layout."""
    program = lower(flat, codes)
    inputs = quantize_inputs(flat, images)
    ref, _ = tflm_outputs(flat, inputs, arena_bytes=ARENA)
    fired = None
    for layout in layouts:
        exe = build_host(generate(program, layout, target="host"), str(tmp_path / layout))
        run = run_host(exe, inputs, (ref.shape[1],), layers=len(program.layers))
        assert np.array_equal(run["outputs"], ref), layout
        fired = run["fired"]
    return program, fired


def _ops(program):
    return [l.op for l in program.layers]


# ------------------------------------------------------------------- layers


def _nearest(size, align_corners, half_pixel):
    """TensorFlow's ResizeNearestNeighbor with explicit flags (Keras'
    Resizing writes half-pixel centers only)."""
    import keras
    import tensorflow as tf

    class Nearest(keras.layers.Layer):
        def call(self, x):
            return tf.raw_ops.ResizeNearestNeighbor(images=x, size=size, align_corners=align_corners,
                                                    half_pixel_centers=half_pixel)

        def compute_output_shape(self, shape):
            return (shape[0], size[0], size[1], shape[3])

    return Nearest()


def _random_batchnorm(layer_input, seed):
    """A BatchNormalization with trained-looking statistics (the converter
    writes it as a per-channel MUL + ADD)."""
    import keras

    init = keras.initializers
    return keras.layers.BatchNormalization(
        gamma_initializer=init.RandomUniform(-1.5, 1.5, seed=seed), beta_initializer=init.RandomNormal(0, 0.5, seed),
        moving_mean_initializer=init.RandomNormal(0, 0.3, seed),
        moving_variance_initializer=init.RandomUniform(0.3, 2.0, seed=seed))(layer_input)


def _squeeze_excite(h, first=False):
    """``h`` times its per-channel means: two activations, one broadcast
    (``first``: the broadcast one is MUL's first operand)."""
    import keras

    means = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    return keras.ops.multiply(means, h) if first else keras.ops.multiply(h, means)


def _cases():
    import keras

    L, ops = keras.layers, keras.ops
    conv = lambda n, k=3: L.Conv2D(n, k, padding="same", bias_initializer="random_normal")
    tconv = lambda *a, **k: L.Conv2DTranspose(*a, bias_initializer="random_normal", **k)
    return {
        # CONCATENATION (the converter puts every input on the output's grid)
        "concat_channels_3_inputs": lambda x: L.Concatenate()([conv(2, 1)(x), conv(3)(x), x]),
        "concat_height": lambda x: L.Concatenate(axis=1)([conv(4, 1)(x), conv(4)(x)]),
        "concat_width": lambda x: L.Concatenate(axis=2)([conv(2)(x), L.MaxPooling2D((1, 2))(conv(2)(x))]),
        "concat_rank2": lambda x: L.Concatenate()([L.Dense(3)(L.Flatten()(x)), L.Dense(5)(L.Flatten()(x))]),
        # RESIZE_NEAREST_NEIGHBOR: half-pixel centers (Keras), align corners, neither (up- and downsampling)
        "resize_half_pixel_up": lambda x: L.Resizing(13, 19, interpolation="nearest")(x),
        "resize_half_pixel_down": lambda x: L.Resizing(5, 3, interpolation="nearest")(x),
        "resize_align_corners": lambda x: _nearest((13, 6), True, False)(x),
        "resize_align_corners_to_1": lambda x: _nearest((1, 7), True, False)(x),
        "resize_plain_x2": lambda x: _nearest((22, 18), False, False)(x),
        "resize_plain_odd": lambda x: _nearest((7, 20), False, False)(x),
        # TRANSPOSE_CONV: SAME / VALID, strides, even and odd kernels, output padding, bias, fused ReLU
        "tconv_same_s2": lambda x: tconv(5, 3, strides=2, padding="same")(x),
        "tconv_valid_s2x3_k4x2": lambda x: tconv(4, (4, 2), strides=(2, 3), padding="valid")(x),
        "tconv_same_s1_k2": lambda x: tconv(3, 2, strides=1, padding="same")(x),
        "tconv_output_padding": lambda x: tconv(3, 3, strides=2, padding="same", output_padding=0)(x),
        "tconv_valid_output_padding": lambda x: tconv(2, 4, strides=3, padding="valid", output_padding=2)(x),
        "tconv_relu": lambda x: tconv(6, 3, strides=2, padding="same", activation="relu")(x),
        # REDUCE_MAX
        "global_max_pool": lambda x: L.GlobalMaxPooling2D()(conv(5)(x)),
        "global_max_pool_keepdims": lambda x: conv(3, 1)(L.GlobalMaxPooling2D(keepdims=True)(conv(5)(x))),
        "max_over_channels": lambda x: ops.max(conv(6)(x), axis=-1),
        "max_over_height": lambda x: ops.max(conv(4)(x), axis=1, keepdims=True),
        # broadcast MUL / ADD (on the input or after an add: after a conv the converter folds them into it)
        "batchnorm_relu": lambda x: conv(4)(L.ReLU()(_random_batchnorm(x, 3))),
        "batchnorm_after_add": lambda x: _random_batchnorm(L.Add()([conv(3)(x), x]), 4),
        "scalar_mul_add": lambda x: ops.add(ops.multiply(x, 0.37), 0.5),
        "squeeze_excite_mul": lambda x: _squeeze_excite(conv(4)(x)),
        "add_row_means": lambda x: ops.add(conv(4)(x), ops.mean(conv(4)(x), axis=2, keepdims=True)),
        "mul_const_height_channels": lambda x: ops.multiply(
            conv(3)(x), np.random.default_rng(5).uniform(-2, 2, (11, 1, 3)).astype("float32")),
        "mul_broadcast_operand_first": lambda x: _squeeze_excite(conv(4)(x), first=True),
        "add_const_operand_first": lambda x: ops.add(np.asarray([0.5, -1.0, 2.0], "float32"), x),
    }


CASES = ("concat_channels_3_inputs", "concat_height", "concat_width", "concat_rank2", "resize_half_pixel_up",
         "resize_half_pixel_down", "resize_align_corners", "resize_align_corners_to_1", "resize_plain_x2",
         "resize_plain_odd", "tconv_same_s2", "tconv_valid_s2x3_k4x2", "tconv_same_s1_k2", "tconv_output_padding",
         "tconv_valid_output_padding", "tconv_relu", "global_max_pool", "global_max_pool_keepdims",
         "max_over_channels", "max_over_height", "batchnorm_relu", "batchnorm_after_add", "scalar_mul_add",
         "squeeze_excite_mul", "add_row_means", "mul_const_height_channels", "mul_broadcast_operand_first",
         "add_const_operand_first")
#: the op each case is about (it must be in the lowered program)
CASE_OPS = {"concat": "CONCATENATION", "resize": "RESIZE_NEAREST_NEIGHBOR", "tconv": "TRANSPOSE_CONV",
            "global": "REDUCE_MAX", "max": "REDUCE_MAX", "batchnorm": "MUL", "scalar": "MUL", "squeeze": "MUL",
            "add": "ADD", "mul": "MUL"}


@pytest.mark.parametrize("case", CASES)
def test_ops_are_byte_identical(case, tmp_path):
    """Each op and option against TFLM on random inputs (outside the
    calibration range too, so clamps and saturation are hit)."""
    flat, data = _flatbuffer(_cases()[case], (11, 9, 3))
    images = np.concatenate([data[:N_IMAGES - 4], 3.0 * data[-4:]])
    program, _ = _check(flat, images, tmp_path)
    assert CASE_OPS[case.split("_")[0]] in _ops(program), _ops(program)


def test_broadcast_shapes_are_merged():
    """Broadcasting collapses to 4 dimensions with stride 0 where an operand
    repeats; the activation of the output's shape comes first (in place)."""
    import keras

    flat, _ = _flatbuffer(lambda x: _random_batchnorm(x, 1), (5, 7, 6))
    program = lower(flat)
    mul = next(l for l in program.layers if l.op == "MUL")
    p = mul.params
    assert [p[f"n{i}"] for i in range(4)] == [1, 1, 35, 6]
    assert [p[f"sa{i}"] for i in range(4)] == [0, 0, 6, 1] and [p[f"sb{i}"] for i in range(4)] == [0, 0, 0, 1]
    assert p["a_full"] == 1 and p["b_const"] == 1 and mul.consts["b"].size == 6
    flat, _ = _flatbuffer(lambda x: keras.ops.add(x, keras.ops.mean(x, axis=2, keepdims=True)), (5, 7, 6))
    add = next(l for l in lower(flat).layers if l.op == "ADD")
    p = add.params
    assert [p[f"n{i}"] for i in range(4)] == [1, 5, 7, 6]
    assert [p[f"sa{i}"] for i in range(4)] == [0, 42, 6, 1] and [p[f"sb{i}"] for i in range(4)] == [0, 6, 0, 1]


# ------------------------------------------------------------- spike tensors


def _spike_images(shape, rate, seed, on=6.0):
    """Images of two values, 0 and ``on`` (a spike tensor as the model input:
    its codes are the zero point -128 and 127)."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random((64,) + tuple(shape)) < rate, on, 0.0).astype("float32")


def _input_spikes(flat):
    from export.tflite.flatbuffer import read_model

    graph = read_model(flat).main
    t = graph.inputs[0]
    assert int(graph.tensors[t].quantization.zero_points[0]) == -128
    return {t: (-128, 127)}


def test_transpose_conv_reading_spikes_is_spike_driven(tmp_path):
    """A TRANSPOSE_CONV reading a spike tensor gets the spike layout (sums
    of the fired inputs' weights, times the gain once): byte-identical with
    TFLM, the fired inputs counted."""
    import keras

    data = _spike_images((6, 5, 4), 0.2, 0)
    flat, _ = _flatbuffer(lambda x: keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same",
                                                                 bias_initializer="random_normal")(x),
                          (6, 5, 4), data=data)
    codes = _input_spikes(flat)
    program, fired = _check(flat, data[:N_IMAGES], tmp_path, codes, layouts=("dense", "spike_list"))
    (tconv,) = program.layers
    assert tconv.layouts == ("dense", "spike_list") and tconv.spike == (-128, 127)
    assert np.array_equal(fired[:, 0], (data[:N_IMAGES] > 0).reshape(N_IMAGES, -1).sum(axis=1))


@pytest.mark.parametrize("case", ["resize", "concat", "max_pool"])
def test_spike_tensors_stay_spike_tensors(case, tmp_path):
    """RESIZE_NEAREST_NEIGHBOR, CONCATENATION and REDUCE_MAX of spike tensors
    (on one grid) are spike tensors: the conv or Dense reading them is
    spike-driven, byte-identical with TFLM in every layout."""
    import keras

    L = keras.layers
    builds = {
        "resize": lambda x: L.Conv2D(5, 3)(L.Resizing(12, 10, interpolation="nearest")(x)),
        "concat": lambda x: L.Conv2D(5, 3)(L.Concatenate()([x, L.MaxPooling2D(1)(x)])),
        "max_pool": lambda x: L.Dense(4)(L.GlobalMaxPooling2D()(x)),
    }
    data = _spike_images((6, 5, 4), 0.25, 1)
    flat, _ = _flatbuffer(builds[case], (6, 5, 4), data=data)
    program, fired = _check(flat, data[:N_IMAGES], tmp_path, _input_spikes(flat),
                            layouts=("dense", "spike_list", "spike_mask"))
    last = program.layers[-1]
    assert last.kind == "conv" and last.spike == (-128, 127), _ops(program)
    assert fired[:, last.index].sum() > 0


def test_exported_s2nn_concatenation_upsampling_and_global_max_pool(tmp_path):
    """Through the export (saturate neuron): two neurons' spikes
    concatenated, one neuron's spikes upsampled (``UpSampling2D``, written as
    RESIZE_NEAREST_NEIGHBOR) and one neuron's global max pool (MAX_POOL_2D,
    or the converter's REDUCE_MAX) feed spike-driven layers; every layout
    byte-identical with TFLM."""
    import keras

    from export.tflite.convert import convert
    from s2nn_keras import S2Activation

    L = keras.layers

    def neuron(x, n, name):
        h = L.BatchNormalization(name=f"{name}_bn", beta_initializer="ones")(L.Conv2D(n, 3, padding="same")(x))
        return S2Activation(name=f"{name}_act")(h)

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 2))
    cat = L.Flatten()(L.Conv2D(3, 3)(L.Concatenate()([neuron(x, 6, "n1"), neuron(x, 4, "n2")])))
    pooled = L.Dense(3)(L.GlobalMaxPooling2D()(neuron(x, 5, "n3")))
    up = L.Flatten()(L.Conv2D(2, 3, strides=2)(L.UpSampling2D(2)(neuron(x, 3, "n4"))))
    model = keras.Model(x, L.Dense(4)(L.Concatenate()([cat, pooled, up])))
    data = np.random.default_rng(0).normal(size=(64, 8, 8, 2)).astype("float32")
    conversion = convert(model, "int8", lambda: [[data]])
    program, fired = _check(conversion.flatbuffer, data[:N_IMAGES], tmp_path, spike_codes(conversion),
                            layouts=("dense", "spike_list", "spike_mask"))
    spiking = {program.layers[l.index - 1].op for l in program.spike_layers}
    assert {"CONCATENATION", "RESIZE_NEAREST_NEIGHBOR"} <= spiking and spiking & {"MAX_POOL_2D", "REDUCE_MAX"}, spiking
    assert all(fired[:, l.index].sum() > 0 for l in program.spike_layers)


# ------------------------------------------------ the baselines' op sets


def test_relu_model_without_rewrites_reaches_the_microcontroller(tmp_path):
    """The plain ReLU PreActResNet converted without the default rewrites
    (``--rewrites none``): its BatchNorms are broadcast MUL + ADD with
    per-channel constants (lower refused MUL before); byte-identical."""
    import keras

    from export.tflite.convert import convert
    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(0)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8, dropout=0.0, activation="relu")
    for i, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(i)
            layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.beta.shape).astype("float32"))
    data = np.random.default_rng(0).uniform(0, 1, (64, 28, 28, 1)).astype("float32")
    conversion = convert(model, "int8", lambda: [[data]], rewrites=())
    program, _ = _check(conversion.flatbuffer, data[:N_IMAGES], tmp_path)
    binary = [l for l in program.layers if l.kind == "binary"]
    assert {l.op for l in binary} == {"MUL", "ADD"} and all(l.params["b_const"] for l in binary)


def test_compare_neuron_greater_equal_select(tmp_path):
    """The compare neuron's GREATER_EQUAL (both inputs on TFLite's comparison
    grid) and SELECT_V2 (codes copied): byte-identical with TFLM."""
    from export.tflite.convert import convert
    from export.tflite.flatbuffer import op_counts
    from tests.export.helpers import two_neuron_model

    model = two_neuron_model((9, 9, 1), seed=2)
    data = np.random.default_rng(2).uniform(0, 1, (64, 9, 9, 1)).astype("float32")
    conversion = convert(model, "int8", lambda: [[data]], neuron="compare")
    assert {"GREATER_EQUAL", "SELECT_V2"} <= set(op_counts(conversion.flatbuffer))
    program, _ = _check(conversion.flatbuffer, np.concatenate([data[:20], 2 * data[20:24] - 0.5]), tmp_path)
    assert "bool" in {t.dtype for t in program.tensors.values()}


# --------------------------------------------- what TFLite Micro refuses


def _with_scale(flat, tensor_index, factor):
    """The flatbuffer with one tensor's scale multiplied by ``factor``."""
    import flatbuffers

    from export.tflite.flatbuffer import schema

    s = schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAs(flat, 0))
    q = model.subgraphs[0].tensors[tensor_index].quantization
    q.scale = [float(v) * factor for v in q.scale]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("op", ["CONCATENATION", "REDUCE_MAX"])
def test_grids_tflite_micro_refuses_are_refused(op):
    """An int8 CONCATENATION input or a REDUCE_MAX output on another grid
    than TFLM requires: TFLM's Prepare fails, and lower says why."""
    import keras

    from export.tflite.flatbuffer import read_model

    L = keras.layers
    build = {"CONCATENATION": lambda x: L.Concatenate()([L.Conv2D(2, 1)(x), L.Conv2D(3, 1)(x)]),
             "REDUCE_MAX": lambda x: L.GlobalMaxPooling2D()(x)}[op]
    flat, data = _flatbuffer(build, (6, 6, 3))
    graph = read_model(flat).main
    target = next(o for o in graph.operators if o.name == op)
    bad = _with_scale(flat, target.inputs[0] if op == "CONCATENATION" else target.outputs[0], 1.5)
    with pytest.raises(UnsupportedModelError, match=rf"\({op}\).*TFLite Micro's int8 {op} requires"):
        lower(bad)
    with pytest.raises(Exception):
        tflm_outputs(bad, quantize_inputs(bad, data[:1]), arena_bytes=ARENA)


def test_upsampling2d_tile_is_refused():
    """TensorFlow's converter writes Keras' UpSampling2D as RESHAPE + TILE,
    for which the tflite-micro interpreter has no kernel (nothing to be
    bit-exact with): one clear error naming TILE. (The export writes it as
    RESIZE_NEAREST_NEIGHBOR: export.transform.rewrites.upsampling_as_resize.)"""
    import keras

    flat, _ = _flatbuffer(lambda x: keras.layers.UpSampling2D(2)(x), (4, 4, 2))
    with pytest.raises(UnsupportedModelError, match=r"\(TILE\) has no microcontroller kernel"):
        lower(flat)


# --------------------------------------------------------------------- QEMU


def _qemu_models():
    """``{name: (flatbuffer, images, spike codes, layout)}``: every new op in
    one plain model, the compare neuron, a spike-driven transpose conv."""
    import keras

    from export.tflite.convert import convert
    from tests.export.helpers import two_neuron_model

    L = keras.layers

    def build(x):
        h = L.ReLU()(_random_batchnorm(x, 7))                                   # MUL + ADD, broadcast
        h = L.Concatenate()([L.Conv2D(4, 3, padding="same")(h), L.Conv2D(3, 1)(h)])
        h = keras.ops.multiply(L.Resizing(9, 7, interpolation="nearest")(h), 0.75)      # scalar MUL
        h = L.Conv2DTranspose(4, 3, strides=2, padding="same", bias_initializer="random_normal")(h)
        return L.Dense(5)(L.GlobalMaxPooling2D()(h))

    plain, data = _flatbuffer(build, (6, 5, 3))
    spikes = _spike_images((6, 5, 4), 0.2, 3)
    tconv, _ = _flatbuffer(lambda x: L.Conv2DTranspose(6, 3, strides=2, padding="same")(x), (6, 5, 4), data=spikes)
    neurons = two_neuron_model((9, 9, 1), seed=2)
    images = np.random.default_rng(2).uniform(0, 1, (64, 9, 9, 1)).astype("float32")
    compare = convert(neurons, "int8", lambda: [[images]], neuron="compare").flatbuffer
    return {"all_new_ops": (plain, data, None, "dense"), "compare_neuron": (compare, images, None, "dense"),
            "spike_tconv": (tconv, spikes, _input_spikes(tconv), "spike_list")}


@pytest.mark.slow
def test_new_ops_on_both_boards(tmp_path):
    """CONCATENATION, RESIZE_NEAREST_NEIGHBOR, TRANSPOSE_CONV (dense and
    spike-driven), REDUCE_MAX, broadcast MUL / ADD, GREATER_EQUAL + SELECT_V2
    as firmware on the Cortex-M4 and Cortex-M55 QEMU boards: byte-identical
    with TFLM on every image."""
    from export.mcu.firmware import available, build_firmware, run_qemu

    if not available():
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")
    ops = set()
    for name, (flat, images, codes, layout) in _qemu_models().items():
        program = lower(flat, codes)
        ops |= set(_ops(program))
        inputs = quantize_inputs(flat, images[:8])
        ref, _ = tflm_outputs(flat, inputs, arena_bytes=ARENA)
        for core in ("cortex-m4", "cortex-m55"):
            fw = build_firmware(generate(program, layout, target=core), core, str(tmp_path / name / core))
            run = run_qemu(fw, inputs, len(program.layers), ref.shape[1])
            assert np.array_equal(run.outputs, ref), (name, core)
            if layout != "dense":
                assert run.fired[:, 0].sum() > 0
    assert {"CONCATENATION", "RESIZE_NEAREST_NEIGHBOR", "TRANSPOSE_CONV", "REDUCE_MAX", "MUL", "ADD",
            "GREATER_EQUAL", "SELECT_V2"} <= ops, ops
