"""Tests of alexnet_tf.model: Figure 2's shapes and parameters, Section 5's initialization,
tower placement, the variants, and that a small model learns.

The full-size model is only built (no forward pass); everything that runs uses the
small variant on a few images. conftest.py provides two logical CPU devices.
"""

import json
import re
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import conv_gradients, layers, placement
from alexnet_tf import model as alexnet_model
from alexnet_tf import ops
from alexnet_tf.model import build_alexnet

# Figure 2 / PAPER_SPEC.md, per image, both towers together.
PAPER_OUTPUT_SHAPES = {
    "conv1": (55, 55, 96),
    "lrn1": (55, 55, 96),
    "pool1": (27, 27, 96),
    "conv2": (27, 27, 256),
    "lrn2": (27, 27, 256),
    "pool2": (13, 13, 256),
    "conv3": (13, 13, 384),
    "conv4": (13, 13, 384),
    "conv5": (13, 13, 256),
    "pool5": (6, 6, 256),
    "fc6": (4096,),
    "dropout6": (4096,),
    "fc7": (4096,),
    "dropout7": (4096,),
    "fc8": (1000,),
}


def _params(kernel, inputs, filters):
    """Weights and biases of a layer whose kernel sees `inputs` values per output."""
    return kernel * inputs * filters + filters


# The PAPER_SPEC.md table, written out from the paper's kernel shapes.
PAPER_PARAMS = {
    "conv1": _params(11 * 11, 3, 96),  # 34,944
    "conv2": _params(5 * 5, 48, 256),  # 307,456
    "conv3": _params(3 * 3, 256, 384),  # 885,120
    "conv4": _params(3 * 3, 192, 384),  # 663,936
    "conv5": _params(3 * 3, 192, 256),  # 442,624
    "fc6": _params(1, 6 * 6 * 256, 4096),  # 37,752,832
    "fc7": _params(1, 4096, 4096),  # 16,781,312
    "fc8": _params(1, 4096, 1000),  # 4,097,000
}

# Per tower: [height, width, input channels, output channels] and [inputs, units].
PAPER_TOWER_KERNELS = {
    "conv1": (11, 11, 3, 48),
    "conv2": (5, 5, 48, 128),  # its own tower's 48 maps only
    "conv3": (3, 3, 256, 192),  # both towers
    "conv4": (3, 3, 192, 192),  # own tower
    "conv5": (3, 3, 192, 128),  # own tower
    "fc6": (9216, 2048),  # both towers
    "fc7": (4096, 2048),  # both towers
}

BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")
BIAS_ZERO = ("conv1", "conv3", "fc8")

SMALL = dict(size="small", num_classes=10)


@pytest.fixture(scope="module")
def paper_model():
    return build_alexnet(seed=0)


def _shapes(output):
    """Per-image shape of a layer's output, its towers' channels added up."""
    parts = output if isinstance(output, list) else [output]
    for p in parts:
        assert p.shape[:-1] == parts[0].shape[:-1]
    return tuple(parts[0].shape[1:-1]) + (sum(p.shape[-1] for p in parts),)


def _kernels(model, layer_name):
    return [w for w in model.get_layer(layer_name).weights if w.path.endswith("kernel")]


def _biases(model, layer_name):
    return [w for w in model.get_layer(layer_name).weights if w.path.endswith("bias")]


def test_paper_model_has_60965224_parameters(paper_model):
    assert paper_model.count_params() == 60_965_224
    assert sum(int(np.prod(w.shape)) for w in paper_model.trainable_weights) == 60_965_224
    for name, params in PAPER_PARAMS.items():
        assert paper_model.get_layer(name).count_params() == params, name
    assert sum(PAPER_PARAMS.values()) == 60_965_224


def test_paper_model_output_shapes(paper_model):
    assert paper_model.input_shape == (None, 224, 224, 3)
    for name, shape in PAPER_OUTPUT_SHAPES.items():
        assert _shapes(paper_model.get_layer(name).output) == shape, name
    assert paper_model.output_shape == (None, 1000)


def test_paper_model_tower_connectivity(paper_model):
    for name, shape in PAPER_TOWER_KERNELS.items():
        assert [tuple(k.shape) for k in _kernels(paper_model, name)] == [shape, shape], name
    assert [tuple(k.shape) for k in _kernels(paper_model, "fc8")] == [(4096, 1000)]
    # Every layer before conv3 is two towers, conv1 too though both read the images.
    for name in ("conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv4", "conv5"):
        assert len(paper_model.get_layer(name).output) == 2, name
    assert [tuple(x.shape) for x in paper_model.get_layer("conv1").output] == [
        (None, 55, 55, 48)] * 2


def test_paper_initialization(paper_model):
    for name in PAPER_PARAMS:
        for kernel in _kernels(paper_model, name):
            w = kernel.value.numpy().astype(np.float64).ravel()
            # Sampling error of the mean and the standard deviation of n normal draws.
            n = w.size
            assert abs(w.mean()) < 5 * 0.01 / np.sqrt(n), name
            assert abs(w.std() - 0.01) < 5 * 0.01 / np.sqrt(2 * n) + 1e-6, name
        for bias in _biases(paper_model, name):
            expected = 1.0 if name in BIAS_ONE else 0.0
            np.testing.assert_array_equal(bias.value.numpy(), np.full(bias.shape, expected), name)
    assert set(BIAS_ONE) | set(BIAS_ZERO) == set(PAPER_PARAMS)


def test_small_model_keeps_the_paper_gain_per_layer():
    """std * sqrt(fan-in) of each layer equals the paper's 0.01 * sqrt(its fan-in)."""
    model = build_alexnet(**SMALL, seed=0)
    paper_fan_in = {name: int(np.prod(shape[:-1])) for name, shape in PAPER_TOWER_KERNELS.items()}
    paper_fan_in["fc8"] = 4096
    for name, fan_in in paper_fan_in.items():
        for kernel in _kernels(model, name):
            w = kernel.value.numpy().astype(np.float64)
            expected = 0.01 * np.sqrt(fan_in / np.prod(w.shape[:-1]))
            assert abs(w.std() / expected - 1) < 5 / np.sqrt(2 * w.size), name
        for bias in _biases(model, name):
            assert np.all(bias.value.numpy() == (1.0 if name in BIAS_ONE else 0.0)), name


def test_fc7_feature_is_reachable_without_rebuilding(paper_model):
    features = keras.Model(paper_model.inputs, paper_model.get_layer("fc7").output)
    assert features.output_shape == (None, 4096)
    assert alexnet_model.feature_model(paper_model).output_shape == (None, 4096)
    assert features.get_layer("conv1") is paper_model.get_layer("conv1")


def test_one_tower_net_keeps_conv5_and_fc_sizes():
    model = build_alexnet(towers=1)
    per_layer = {
        "conv1": _params(11 * 11, 3, 48),
        "conv2": _params(5 * 5, 48, 128),
        "conv3": _params(3 * 3, 128, 192),
        "conv4": _params(3 * 3, 192, 192),
        "conv5": _params(3 * 3, 192, 256),  # not halved: footnote 2
        "fc6": _params(1, 6 * 6 * 256, 4096),
        "fc7": _params(1, 4096, 4096),
        "fc8": _params(1, 4096, 1000),
    }
    assert model.count_params() == sum(per_layer.values()) == 59_798_312
    shapes = {"conv1": (55, 55, 48), "conv3": (13, 13, 192), "conv5": (13, 13, 256),
              "pool5": (6, 6, 256), "fc7": (4096,)}
    for name, shape in shapes.items():
        assert _shapes(model.get_layer(name).output) == shape, name


@pytest.mark.parametrize(
    "kwargs, params",
    [
        (dict(conv6=True), 60_965_224 + 2 * _params(3 * 3, 128, 128)),
        (dict(overlapping_pooling=False), 60_965_224),
        (dict(input_shape=(227, 227, 3), conv1_padding="valid"), 60_965_224),
    ],
)
def test_paper_variants_keep_figure_2_shapes(kwargs, params):
    model = build_alexnet(**kwargs)
    assert model.count_params() == params
    for name in ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5", "fc7"):
        assert _shapes(model.get_layer(name).output) == PAPER_OUTPUT_SHAPES[name], name
    if kwargs.get("conv6"):
        assert _shapes(model.get_layer("conv6").output) == (6, 6, 256)


def _reference_logits(model, images, towers=2, weights=None):
    """Figure 2 from the model's weights (or `weights`, by variable path) with tf.nn ops,
    towers meeting at conv3, fc6, fc7."""
    w = weights or {v.path: tf.constant(v.value.numpy()) for v in model.weights}

    def conv(x, name, k):
        y = tf.nn.conv2d(x, w[f"{name}/{name}_tower{k}/kernel"], 1, "SAME")
        return tf.nn.relu(y + w[f"{name}/{name}_tower{k}/bias"])

    def dense(x, name, k, relu=True):
        y = x @ w[f"{name}/{name}_tower{k}/kernel"] + w[f"{name}/{name}_tower{k}/bias"]
        return tf.nn.relu(y) if relu else y

    def lrn(x):
        return tf.nn.local_response_normalization(x, 2, bias=2.0, alpha=1e-4, beta=0.75)

    def pool(x):
        return tf.nn.max_pool2d(x, 3, 2, "VALID")

    ks = range(towers)
    t = [pool(lrn(conv(images, "conv1", k))) for k in ks]
    t = [pool(lrn(conv(x, "conv2", k))) for k, x in zip(ks, t)]
    both = tf.concat(t, -1)
    t = [conv(both, "conv3", k) for k in ks]
    t = [pool(conv(conv(x, "conv4", k), "conv5", k)) for k, x in zip(ks, t)]
    flat = tf.reshape(tf.concat(t, -1), [images.shape[0], -1])
    fc6 = tf.concat([dense(flat, "fc6", k) for k in ks], -1)
    fc7 = tf.concat([dense(fc6, "fc7", k) for k in ks], -1)
    return dense(fc7, "fc8", 0, relu=False)


@pytest.mark.parametrize("towers", [2, 1])
def test_small_model_computes_figure_2(towers):
    model = build_alexnet(**SMALL, towers=towers, seed=3)
    images = tf.random.stateless_normal([2, 32, 32, 3], seed=[1, 2])
    np.testing.assert_allclose(
        model(images, training=False).numpy(),
        _reference_logits(model, images, towers).numpy(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_small_model_gradients_are_tensorflows():
    """The convolutions' own gradient (bias summed apart from the kernel) gives the
    gradients of stock TensorFlow ops on the same weights."""
    model = build_alexnet(**SMALL, dropout_rate=0.0, seed=5)
    images = tf.random.stateless_normal([4, 32, 32, 3], seed=[3, 4])
    labels = tf.constant([1, 7, 3, 0])

    def loss_of(logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    weights = {v.path: tf.constant(v.value.numpy()) for v in model.trainable_variables}
    with tf.GradientTape() as tape:
        tape.watch(list(weights.values()))
        reference_loss = loss_of(_reference_logits(model, images, weights=weights))
    reference = dict(zip(weights, tape.gradient(reference_loss, list(weights.values()))))
    with tf.GradientTape() as tape:
        loss = loss_of(model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    np.testing.assert_allclose(loss.numpy(), reference_loss.numpy(), rtol=1e-5)
    for v, g in zip(model.trainable_variables, grads):
        scale = np.abs(reference[v.path].numpy()).max()
        np.testing.assert_allclose(g.numpy(), reference[v.path].numpy(), rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=v.path)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_overhang_conv_gradients_are_tensorflows(activation, graph):
    """conv1 of the paper's geometry (stride 4, zeros hanging over the bottom and right
    edges): its own gradient, the kernel's on a padded copy, against TensorFlow's."""
    conv = layers.OverhangConv2D(4, 5, strides=4, overhang=(2, 2), activation=activation)
    conv.build((None, 19, 19, 3))
    x = tf.random.stateless_normal([2, 19, 19, 3], seed=[5, 6])
    kernel = tf.random.stateless_normal([5, 5, 3, 4], seed=[7, 8])
    bias = tf.constant([0.5, -0.5, 0.0, 1.0])
    dy = tf.random.stateless_normal([2, 5, 5, 4], seed=[9, 10])

    def stock(x, kernel, bias):
        z = tf.nn.conv2d(x, kernel, 4, [[0, 0], [0, 2], [0, 2], [0, 0]])
        return getattr(tf.nn, activation)(z + bias)

    def with_gradients(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel, bias])
            y = fn(x, kernel, bias)
        return (y, *tape.gradient(y, [x, kernel, bias], output_gradients=dy))

    grads = {}
    for name, fn in (("own", lambda *a: conv_gradients.conv_bias_activation(conv, *a)),
                     ("stock", stock)):
        grads[name] = (tf.function(with_gradients) if graph else with_gradients)(fn)
    assert grads["own"][0].shape == (2, 5, 5, 4)
    for own, stock_value in zip(grads["own"], grads["stock"]):
        np.testing.assert_allclose(own.numpy(), stock_value.numpy(), rtol=1e-5, atol=1e-5)


def test_paper_conv1_kernel_gradient_has_no_explicit_padding(paper_model):
    """TensorFlow's CPU kernel gradient with explicit padding is its generic one: the
    paper net's conv1 (the overhang as padding) takes it on a padded copy instead."""
    step = _paper_train_step(paper_model, 0.01)
    graph = step.get_concrete_function(
        tf.TensorSpec((2, 224, 224, 3)), tf.TensorSpec([2], tf.int32)).graph
    filters = [op for op in _live_ops(graph) if op.type == "Conv2DBackpropFilter"]
    assert len(filters) == 10
    assert [op.name for op in filters if op.get_attr("padding") == b"EXPLICIT"] == []


def test_conv_bias_gradients_are_not_left_to_bias_add_grad():
    """oneDNN fuses BiasAddGrad into the kernel gradient, slower than the two apart
    (BENCHMARKS.md): the training graph's conv layers have no BiasAddGrad."""
    model = build_alexnet(**SMALL, seed=0)
    step = _paper_train_step(model, 0.01)
    graph = step.get_concrete_function(
        tf.TensorSpec((4, 32, 32, 3)), tf.TensorSpec([4], tf.int32)).graph
    live = _live_ops(graph)
    filters = [op for op in live if op.type == "Conv2DBackpropFilter"]
    assert len(filters) == 10  # conv1 .. conv5, per tower
    assert [op.name for op in live if op.type == "BiasAddGrad" and "conv" in op.name] == []


def _gradients_in_a_graph(model, images, labels, fuse, monkeypatch):
    """The model's weight gradients from a tf.function, with or without ReLU gradients
    taken in the LRN gradient op (None for TensorSpecs), and the live ops of that
    function's graph."""
    if not fuse:
        monkeypatch.setattr(ops, "relu_gradient_through_lrn", lambda gradient, relu_output: None)

    @tf.function
    def gradients(images, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels, model(images, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    graph = gradients.get_concrete_function(images, labels).graph
    values = ([g.numpy() for g in gradients(images, labels)]
              if isinstance(images, tf.Tensor) else None)
    monkeypatch.undo()
    return values, _live_ops(graph)


def test_relu_gradients_before_an_lrn_are_taken_in_its_gradient(monkeypatch):
    """conv1's and conv2's ReLU gradients happen in the LRN gradient op, with the very
    values (bit for bit) of a separate ReluGrad; the other conv layers keep theirs."""
    model = build_alexnet(**SMALL, dropout_rate=0.0, seed=5)
    images = tf.random.stateless_normal([4, 32, 32, 3], seed=[3, 4])
    labels = tf.constant([1, 7, 3, 0])
    fused, live = _gradients_in_a_graph(model, images, labels, True, monkeypatch)
    apart, live_apart = _gradients_in_a_graph(model, images, labels, False, monkeypatch)
    # Also with the batch size unknown when traced, the LRNs' own gradients are gone.
    _, live_any_batch = _gradients_in_a_graph(
        model, tf.TensorSpec([None, 32, 32, 3]), tf.TensorSpec([None], tf.int32), True,
        monkeypatch)
    for ops_ in (live, live_any_batch):
        lrn_gradients = [op for op in ops_ if op.type == "AlexnetTf>LocalResponseNormGrad"]
        # LRN1 and LRN2 per tower: all four through the ReLU.
        assert [op.get_attr("through_relu") for op in lrn_gradients] == [True] * 4
    relu_gradients = [op.name for op in live if op.type == "ReluGrad"]
    assert len([op for op in live_apart if op.type == "ReluGrad"]) == len(relu_gradients) + 4
    assert not any("conv1" in name or "conv2" in name for name in relu_gradients)
    assert any("conv3" in name for name in relu_gradients)
    for a, b in zip(fused, apart):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_relu_gradient_stays_apart_where_the_output_has_another_use():
    """A conv output read by the LRN and by something else gets the sum of both
    gradients: that sum, not the LRN's gradient alone, goes through the ReLU."""
    conv = keras.layers.Conv2D(8, 3, padding="same", activation="relu")
    conv.build((None, 6, 6, 3))
    x = tf.random.stateless_normal([2, 6, 6, 3], seed=[1, 1])

    def loss_of(y, lrn, other_use):
        loss = tf.reduce_sum(lrn(y) ** 2)
        return loss + tf.reduce_sum(y * tf.range(8.0)) if other_use else loss

    def own(other_use):
        with tf.GradientTape() as tape:
            y = conv_gradients.conv_bias_activation(conv, x, conv.kernel, conv.bias)
            loss = loss_of(y, ops.local_response_normalization, other_use)
        return tape.gradient(loss, conv.kernel)

    def stock(other_use):
        with tf.GradientTape() as tape:
            y = tf.nn.relu(tf.nn.conv2d(x, conv.kernel, 1, "SAME") + conv.bias)
            loss = loss_of(y, lambda t: tf.nn.local_response_normalization(t, 2, 2.0, 1e-4, 0.75),
                           other_use)
        return tape.gradient(loss, conv.kernel)

    for other_use in (False, True):
        step = tf.function(lambda: own(other_use))
        types = [op.type for op in _live_ops(step.get_concrete_function().graph)]
        assert types.count("ReluGrad") == int(other_use)
        expected = stock(other_use).numpy()
        np.testing.assert_allclose(step().numpy(), expected, rtol=1e-4,
                                   atol=1e-6 * np.abs(expected).max())


VARIANTS = {
    "paper_defaults": dict(),
    "tanh": dict(activation="tanh"),
    "no_lrn": dict(lrn=False),
    "non_overlapping_pooling": dict(overlapping_pooling=False),
    "one_tower": dict(towers=1),
    "conv6": dict(conv6=True),
    "no_dropout": dict(dropout_rate=0.0),
    "lrn_reference": dict(lrn_use_reference=True),
    "paper_init": dict(weight_init="paper"),
    "fashion_mnist_28": dict(input_shape=(28, 28, 3)),
    "input_64": dict(input_shape=(64, 64, 3)),
    "mixed_bfloat16": dict(dtype_policy="mixed_bfloat16"),
    "mixed_float16": dict(dtype_policy="mixed_float16"),
}


def _forward_backward(model, batch=2):
    images = tf.random.stateless_normal((batch,) + model.input_shape[1:], seed=[0, 1])
    labels = tf.constant([1, 7][:batch])
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    return logits, loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_runs_forward_and_backward(variant):
    model = build_alexnet(**SMALL, seed=0, **VARIANTS[variant])
    logits, loss, grads = _forward_backward(model)
    assert logits.shape == (2, 10)
    assert logits.dtype == tf.float32
    assert np.isfinite(loss.numpy())
    assert len(grads) == len(model.trainable_variables) > 0
    for v, g in zip(model.trainable_variables, grads):
        assert g is not None, v.path
        assert np.all(np.isfinite(g.numpy())), v.path
    conv1_grad = grads[0].numpy()
    assert np.any(conv1_grad != 0)


@pytest.mark.parametrize(
    "policy, low", [("mixed_bfloat16", tf.bfloat16), ("mixed_float16", tf.float16)]
)
def test_mixed_precision_runs_lrn_low_and_returns_float32_logits(policy, low):
    model = build_alexnet(**SMALL, dtype_policy=policy)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    graph = (
        tf.function(lambda x: model(x, training=True))
        .get_concrete_function(tf.TensorSpec([2, 32, 32, 3]))
        .graph
    )
    lrn_ops = [op for op in graph.get_operations() if op.type == "AlexnetTf>LocalResponseNorm"]
    assert len(lrn_ops) == 4  # lrn1 and lrn2, per tower
    assert all(op.get_attr("T") == low for op in lrn_ops)
    convs = [op for op in graph.get_operations() if op.type == "Conv2D"]
    assert convs and all(op.get_attr("T") == low for op in convs)
    assert graph.outputs[0].dtype == tf.float32


# Ops that TensorFlow places with their consumer or their resource variable.
_COLOCATED_TYPES = {"Const", "Placeholder", "ReadVariableOp", "Identity", "NoOp"}
# Where the paper's GPUs talk: the inputs of conv3 and of the fully connected layers.
_MERGE_SCOPE = re.compile(r"/(conv3|fc6|fc7)(_\d+)?/")
_TOWER_SCOPE = re.compile(r"/tower(\d)/")
# The loss, its gradient and the weight update belong to the training step, not the model.
_CALLER_SCOPE = re.compile(r"(gradient_tape/)?(loss|update)/")


def _live_ops(graph):
    """The ops that the function's outputs and side effects depend on."""
    live, stack = set(), [t.op for t in graph.outputs] + list(graph.control_outputs)
    while stack:
        op = stack.pop()
        if op not in live:
            live.add(op)
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return live


def _paper_train_step(model, learning_rate):
    """The paper's momentum update (Section 5), v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v."""
    weights = model.trainable_variables
    velocities = [tf.Variable(tf.zeros(w.shape), trainable=False) for w in weights]

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            with tf.name_scope("loss"):
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                )
        grads = tape.gradient(loss, weights)
        with tf.name_scope("update"):
            for w, v, g in zip(weights, velocities, grads):
                step = 0.9 * v - learning_rate * g
                if len(w.shape) > 1:
                    step -= 0.0005 * learning_rate * w.value
                v.assign(step)
                w.assign_add(step)
        return loss

    return train_step


def _placement_violations(model, devices=("CPU:0", "CPU:1")):
    """What breaks 'tower k on device k, crossing only at merges' in a traced training step."""
    step = _paper_train_step(model, 0.01)
    graph = step.get_concrete_function(
        tf.TensorSpec((4,) + model.input_shape[1:]), tf.TensorSpec([4], tf.int32)
    ).graph
    problems = []
    for op in _live_ops(graph):
        if _CALLER_SCOPE.match(op.name) or op.type in _COLOCATED_TYPES:
            continue
        if not op.device:
            problems.append(f"{op.name} ({op.type}) has no device")
            continue
        tower = _TOWER_SCOPE.search(op.name)
        if tower and not op.device.endswith(devices[int(tower.group(1))]):
            problems.append(f"{op.name} ({op.type}) of tower {tower.group(1)} is on {op.device}")
        for t in op.inputs:
            if t.op.device and t.op.device != op.device and not _MERGE_SCOPE.search(op.name):
                problems.append(f"{op.name} on {op.device} reads {t.name} from {t.op.device}")
    counts = {}
    for op in graph.get_operations():
        if op in _live_ops(graph) and op.device:
            key = (op.type, op.device[-5:])
            counts[key] = counts.get(key, 0) + 1
    return problems, counts


def test_towers_are_placed_forward_and_backward_on_two_devices():
    devices = ("/CPU:0", "/CPU:1")
    model = build_alexnet(**SMALL, tower_devices=devices, seed=0)
    problems, counts = _placement_violations(model)
    assert problems == []
    for k, device in enumerate(("CPU:0", "CPU:1")):
        # Five conv layers per tower: forward, weight gradient, and input gradient for
        # conv2 .. conv5 (the images need none); LRN after conv1 and conv2, its
        # gradient also taking the ReLU's before it.
        assert counts[("Conv2D", device)] == 5
        assert counts[("Conv2DBackpropFilter", device)] == 5
        assert counts[("Conv2DBackpropInput", device)] == 4
        assert counts[("AlexnetTf>LocalResponseNorm", device)] == 2
        assert counts[("AlexnetTf>LocalResponseNormGrad", device)] == 2
        assert counts[("MaxPoolGrad", device)] == 3
        # conv3, conv4, conv5, fc6, fc7; conv1's and conv2's are in the LRN gradients.
        assert counts[("ReluGrad", device)] == 5
    placed = 0
    for layer in model.layers[1:]:
        for k, stack in enumerate(layer.stacks):
            for v in (v for sublayer in stack for v in sublayer.variables):
                assert v.value.device.endswith(devices[k][1:]), v.path
                placed += 1
    assert placed == len(model.variables)


def test_placement_check_catches_gradients_left_without_device(monkeypatch):
    """A plain tf.device around each tower places its forward ops only (the bug fixed)."""

    def forward_only(device, fn, inputs):
        with placement.device_scope(device):
            return fn(inputs)

    monkeypatch.setattr(placement, "call_on_device", forward_only)
    model = build_alexnet(**SMALL, tower_devices=("/CPU:0", "/CPU:1"))
    problems, counts = _placement_violations(model)
    assert any("Conv2DBackpropFilter) has no device" in p for p in problems)
    assert ("Conv2D", "CPU:1") in counts and ("Conv2DBackpropFilter", "CPU:1") not in counts


def test_placement_does_not_change_the_numbers():
    placed = build_alexnet(**SMALL, tower_devices=("/CPU:1", "/CPU:0"), dropout_rate=0.0, seed=7)
    plain = build_alexnet(**SMALL, dropout_rate=0.0, seed=7)
    logits_p, loss_p, grads_p = _forward_backward(placed)
    logits, loss, grads = _forward_backward(plain)
    np.testing.assert_allclose(logits_p.numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
    for gp, g in zip(grads_p, grads):
        np.testing.assert_allclose(gp.numpy(), g.numpy(), rtol=1e-4, atol=1e-6)


def test_default_placement_is_the_first_two_gpus_else_none():
    gpus = [g.name for g in tf.config.list_logical_devices("GPU")]
    expected = tuple(gpus[:2]) if len(gpus) >= 2 else (None, None)
    assert placement.resolve_tower_devices(None) == expected
    assert placement.resolve_tower_devices(None, towers=1) == (None,)
    assert placement.resolve_tower_devices((None, None)) == (None, None)
    assert placement.resolve_tower_devices(("/CPU:0", "/device:CPU:1")) == (
        "/CPU:0",
        "/device:CPU:1",
    )


def _quadrant_images(n):
    """Class c lights up quadrant c of the image, under noise: mean-subtracted 0-255 scale."""
    labels = tf.range(n) % 4
    quadrant = tf.reshape(tf.one_hot(labels, 4), [n, 2, 1, 2, 1, 1])
    masks = tf.reshape(tf.tile(quadrant, [1, 1, 16, 1, 16, 3]), [n, 32, 32, 3])
    noise = tf.random.stateless_normal([n, 32, 32, 3], seed=[8, 9])
    return 100 * (masks - 0.25) + 30 * noise, labels


def test_small_model_learns_a_tiny_batch():
    model = build_alexnet(num_classes=4, size="small", dropout_rate=0.0, seed=0)
    images, labels = _quadrant_images(16)
    step = _paper_train_step(model, 0.003)
    losses = [float(step(images, labels)) for _ in range(30)]
    assert abs(losses[0] - np.log(4)) < 0.3, losses
    assert losses[-1] < 0.5 * losses[0], losses


def test_save_and_load_round_trip(tmp_path):
    model = build_alexnet(**SMALL, seed=0)
    path = str(tmp_path / "small.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    images = tf.random.stateless_normal([2, 32, 32, 3], seed=[3, 3])
    np.testing.assert_allclose(
        loaded(images, training=False).numpy(), model(images, training=False).numpy(), rtol=1e-6
    )


def test_a_model_saved_with_the_retired_tower_arguments_loads(tmp_path):
    """Models saved when conv1's towers could run as one convolution carry
    fuse_unplaced, channelwise and split_output in their layers' configs."""
    model = build_alexnet(**SMALL, seed=0)
    path = tmp_path / "small.keras"
    model.save(str(path))
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    retired = dict(fuse_unplaced=False, channelwise=True, split_output=False)
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "TowerParallel":
            layer["config"].update(retired, fuse_unplaced=layer["name"] == "conv1")
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    loaded = keras.models.load_model(str(tmp_path / "old.keras"))
    images = tf.random.stateless_normal([2, 32, 32, 3], seed=[3, 3])
    np.testing.assert_array_equal(
        loaded(images, training=False).numpy(), model(images, training=False).numpy())
    assert "fuse_unplaced" not in loaded.get_layer("conv1").get_config()


def test_checkpoint_moves_between_placed_and_unplaced_builds(tmp_path):
    placed = build_alexnet(**SMALL, tower_devices=("/CPU:1", "/CPU:0"), seed=1)
    path = tf.train.Checkpoint(model=placed).write(str(tmp_path / "ckpt"))
    unplaced = build_alexnet(**SMALL, seed=2)
    tf.train.Checkpoint(model=unplaced).read(path).assert_existing_objects_matched()
    for a, b in zip(placed.trainable_variables, unplaced.trainable_variables):
        np.testing.assert_array_equal(a.value.numpy(), b.value.numpy(), a.path)


def _size(**changes):
    fields = dict(alexnet_model.SMALL_SIZE.__dict__)
    fields.update(changes)
    return alexnet_model.AlexNetSize(**fields)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_shape=(32, 32)), r"\(32, 32\)"),
        (dict(input_shape=(32, 32, 1)), r"\(32, 32, 1\)"),
        (dict(input_shape=(8, 8, 3)), r"\(8, 8, 3\)"),
        (dict(size=_size(conv_filters=(31, 64, 96, 96, 64))), "conv1 filters=31"),
        (dict(size=_size(conv_filters=(32, 64, 96, 96, 63))), "conv5 filters=63"),
        (dict(size=_size(fc_units=(512, 511))), "fc7 units=511"),
        (dict(tower_devices=("/GPU:64", "/GPU:65")), "'/GPU:64'"),
        (dict(tower_devices=("/CPU:0", "/CPU:7")), "'/CPU:7'"),
        (dict(tower_devices=("/CPU:0", "nonsense")), "'nonsense'"),
        (dict(tower_devices=("/CPU:0",)), r"\('/CPU:0',\)"),
        (dict(tower_devices="/CPU:0"), "'/CPU:0'"),
        (dict(activation="sigmoid"), "'sigmoid'"),
        (dict(dtype_policy="float8"), "'float8'"),
        (dict(conv1_padding="reflect"), "'reflect'"),
        (dict(weight_init="he"), "'he'"),
        (dict(size="huge"), "'huge'"),
        (dict(towers=3), "3"),
        (dict(dropout_rate=1.0), "1.0"),
        (dict(num_classes=0), "0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, message):
    kwargs = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_alexnet(**kwargs)


def test_paper_size_rejects_a_small_input():
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        build_alexnet(input_shape=(32, 32, 3))


def _logit_spread_across_images(model, images):
    """The standard deviation of each logit across images, over the mean absolute logit:
    how much the logits depend on the image, as a fraction of their size."""
    logits = model(images, training=False).numpy().astype(np.float64)
    return logits.std(axis=0).mean() / (np.abs(logits).mean() + 1e-12)


@pytest.mark.parametrize("size, shape", [("small", (32, 32, 3)), ("paper", (224, 224, 3))])
def test_a_tanh_network_is_initialized_for_tanh(size, shape):
    # Mean-subtracted pixels: images of 0..255 less their mean, about 60 apart.
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(0.0, 60.0, (8,) + shape).astype(np.float32))
    tanh = build_alexnet(10, size=size, activation="tanh", seed=0)
    # No bias of 1 anywhere: those are for ReLUs (Section 5).
    for layer_name in BIAS_ONE:
        for bias in _biases(tanh, layer_name):
            np.testing.assert_array_equal(bias.value.numpy(), 0.0)
    # conv1's units are not saturated, and the logits depend on the image: their
    # spread across these images is 0.2 (small) and 0.06 (paper) of their size.
    conv1 = np.concatenate(
        keras.Model(tanh.inputs, tanh.get_layer("conv1").output)(images), axis=-1)
    assert np.mean(np.abs(conv1) > 0.99) < 0.05
    assert _logit_spread_across_images(tanh, images) > 0.02

    # The ReLU net's initialization (its weights, biases of 1) on tanh units and raw
    # pixels: every biased unit sits near tanh(1), and the variation across images
    # dies out before the logits (1e-5 of their size).
    relu_init = build_alexnet(10, size=size, activation="tanh", seed=0,
                              weight_init=alexnet_model.SIZES[size].weight_init)
    for layer_name in BIAS_ONE:
        for bias in _biases(relu_init, layer_name):
            bias.assign(np.ones(bias.shape, np.float32))
    raw_pixels = images / alexnet_model.TANH_INPUT_SCALE  # undoes the net's input scale
    assert _logit_spread_across_images(relu_init, raw_pixels) < 1e-3


def test_ceil_pooling_keeps_the_last_window_that_hangs_over_the_edge():
    # 6 -> ceil((6 - 3) / 2) + 1 = 3 outputs, the last window over rows 4, 5 (and 6).
    x = tf.reshape(tf.range(36, dtype=tf.float32), [1, 6, 6, 1]) * tf.constant(
        [1.0, -1.0], shape=[1, 1, 1, 2])
    pooled = layers.CeilMaxPooling2D(3, 2)(x).numpy()
    image = np.arange(36, dtype=np.float64).reshape(6, 6)
    for channel, sign in ((0, 1.0), (1, -1.0)):
        expected = [[(sign * image[r:r + 3, c:c + 3]).max() for c in (0, 2, 4)] for r in (0, 2, 4)]
        np.testing.assert_array_equal(pooled[0, :, :, channel], expected)
    assert keras.layers.MaxPooling2D(3, 2)(x).shape[1] == 2  # floor: the window is dropped
    model = build_alexnet(**SMALL, pooling_rule="ceil")
    assert tuple(model.get_layer("pool1").output[0].shape[1:3]) == (16, 16)  # 32 -> 16


def test_lrn_across_towers_normalizes_both_towers_maps_together():
    settings = alexnet_model.LRNSettings(bias=1.0, alpha_convention="authors_code",
                                         across_towers=True)
    model = build_alexnet(**SMALL, lrn_settings=settings, seed=0)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(0, 50, (2, 32, 32, 3)).astype(np.float32))
    conv1, lrn1 = (np.concatenate(keras.Model(model.inputs, model.get_layer(name).output)(
        images), axis=-1) for name in ("conv1", "lrn1"))
    # Caffe's cross-channel LRN over all 32 maps: alpha / 5 per term, k = 1.
    squares = np.pad(conv1.astype(np.float64) ** 2, [(0, 0)] * 3 + [(2, 2)])
    sums = sum(squares[..., i:i + 32] for i in range(5))
    expected = conv1 * (1.0 + 1e-4 / 5 * sums) ** -0.75
    np.testing.assert_allclose(lrn1, expected, rtol=1e-5, atol=1e-6)
    # The window crosses the towers' boundary: maps 15 and 16 see each other.
    per_tower = build_alexnet(**SMALL, seed=0, lrn_settings=alexnet_model.LRNSettings(
        bias=1.0, alpha_convention="authors_code"))
    apart = np.concatenate(keras.Model(per_tower.inputs, per_tower.get_layer("lrn1").output)(
        images), axis=-1)
    assert np.abs(apart[..., 15] - lrn1[..., 15]).max() > 0
    np.testing.assert_allclose(apart[..., 8], lrn1[..., 8], rtol=1e-6)
