"""The two towers' placement: every op of tower k on device k, forward and backward.

With `tower_devices`, tensors cross between devices only where the paper's GPUs
talk (Section 3.2: the inputs of conv3 and of the fully connected layers). A
`with tf.device(...)` around the model's construction would not do this: Keras does
not replay it when the model runs, and a `tf.GradientTape` creates gradient ops with
no device at all, so the default placer would put both towers' backward passes on
one device. Each tower's computation is therefore a `tf.custom_gradient` function
that runs its forward ops and its gradient ops under the tower's device
(`call_on_device`), in `TowerParallel`, the layer that holds one of Figure 2's layers
for every tower.
"""

import contextlib

import keras
import tensorflow as tf

from alexnet_tf import conv_gradients
from alexnet_tf.settings import PAPER_TOWERS


def device_scope(device):
    return contextlib.nullcontext() if device is None else tf.device(device)


def call_on_device(device, fn, inputs):
    """fn(list of tensors) -> list of tensors, with its forward and gradient ops on device.

    The gradient ops come from a tape recorded inside the forward pass, replayed in
    the gradient function under the same device scope, so no op is left for the
    default placer. Variables read by fn get their gradients the same way.
    """
    if device is None:
        return fn(inputs)

    scope = tf.get_current_name_scope()

    @tf.custom_gradient
    def forward(*xs):
        with tf.device(device):
            # Persistent so that an outer persistent tape may ask for gradients twice.
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(xs)
                ys = fn(list(xs))

        def backward(*dys, variables=None):
            sources = list(xs) + list(variables or ())
            # Absolute, so that sums of gradients are named after the layer they belong to.
            name_scope = (
                tf.name_scope(f"gradient_tape/{scope}/") if scope else contextlib.nullcontext()
            )
            with tf.device(device), name_scope:
                grads = tape.gradient(ys, sources, output_gradients=list(dys))
            if variables is None:
                return grads
            return grads[: len(xs)], grads[len(xs) :]

        return ys, backward

    with tf.device(device):
        return list(forward(*inputs))


# Arguments of TowerParallel in the configs of models saved before conv1's towers
# always ran apart; ignored when such a model is loaded.
_RETIRED_TOWER_ARGUMENTS = ("fuse_unplaced", "channelwise", "split_output")


@keras.saving.register_keras_serializable(package="alexnet_tf")
class TowerParallel(keras.layers.Layer):
    """One layer of Figure 2: a stack of Keras layers per tower, each on its own device.

    Args:
      stacks: one list of layers per tower, applied in order.
      devices: one device name (or None: no placement) per tower.
      merge_inputs: every tower takes the channel concatenation of all towers'
        inputs (conv3 and the fully connected layers); otherwise tower k takes
        input k, or the one input tensor all towers share.
      concat_outputs: return the towers' outputs concatenated on devices[0] (fc7,
        whose 4096-d output is the feature of Figure 4) instead of a list.

    With placement, each input part j is first copied once per tower on device j,
    so that the gradients coming back from the towers are summed on device j too.
    Without it, the towers' ops are the same, unplaced, and TensorFlow runs two at
    once where they are independent. conv1's towers too, though they read the same
    images: one convolution of both towers' kernels, with the LRN and pooling run
    once on its output, made the training step slower (BENCHMARKS.md, "The training
    step").
    """

    def __init__(
        self, stacks, devices, merge_inputs=False, concat_outputs=False, **kwargs,
    ):
        super().__init__(**kwargs)
        if len(stacks) != len(devices):
            raise ValueError(f"{len(stacks)} stacks for {len(devices)} devices {devices}")
        self.stacks = [list(stack) for stack in stacks]
        # Also each layer as an attribute: TensorFlow's checkpoints and SavedModels
        # follow attributes, not layers inside nested lists.
        for layer in (layer for stack in self.stacks for layer in stack):
            setattr(self, layer.name, layer)
        self.devices = tuple(devices)
        self.merge_inputs = bool(merge_inputs)
        self.concat_outputs = bool(concat_outputs)
        self._placed = any(d is not None for d in self.devices)

    @property
    def towers(self):
        return len(self.stacks)

    def _tower_input_shapes(self, input_shape):
        # One shape (a tuple, or a list once saved as JSON), or one shape per tower.
        if not isinstance(input_shape[0], (list, tuple)):
            return [tuple(input_shape)] * self.towers
        parts = input_shape
        if self.merge_inputs:
            merged = tuple(parts[0][:-1]) + (sum(p[-1] for p in parts),)
            return [merged] * self.towers
        return [tuple(p) for p in parts]

    def build(self, input_shape):
        for device, stack, shape in zip(
            self.devices, self.stacks, self._tower_input_shapes(input_shape)
        ):
            with device_scope(device):
                for layer in stack:
                    if not layer.built:  # layers loaded from a saved model come built
                        layer.build(shape)
                    shape = layer.compute_output_shape(shape)

    def _run_stack(self, k, x, training):
        for layer in self.stacks[k]:
            if (isinstance(layer, keras.layers.Conv2D) and layer.use_bias and layer.built
                    and layer.data_format == "channels_last"):
                x = conv_gradients.call_conv(layer, x)
            else:
                x = layer(x, training=training)
        return x

    def _fan_out(self, parts):
        """copies[k][j]: input part j as tower k sees it (a copy made on device j)."""
        per_part = [
            call_on_device(
                self.devices[j], lambda xs: [tf.identity(xs[0]) for _ in self.stacks], [p]
            )
            for j, p in enumerate(parts)
        ]
        return [[copies[k] for copies in per_part] for k in range(self.towers)]

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            inputs = inputs[0]  # how a reloaded model passes one tensor
        if not isinstance(inputs, (list, tuple)):
            tower_inputs = [[inputs]] * self.towers
        elif not self.merge_inputs:
            tower_inputs = [[x] for x in inputs]
        elif self._placed:
            tower_inputs = self._fan_out(inputs)
        else:
            # One device: concatenate once for all towers.
            tower_inputs = [[tf.concat(list(inputs), axis=-1)]] * self.towers

        def tower_fn(k):
            def fn(xs):
                with tf.name_scope(f"tower{k}"):
                    x = xs[0] if len(xs) == 1 else tf.concat(xs, axis=-1)
                    return [self._run_stack(k, x, training)]

            return fn

        outputs = [
            call_on_device(self.devices[k], tower_fn(k), tower_inputs[k])[0]
            for k in range(self.towers)
        ]
        if self.concat_outputs and len(outputs) > 1:
            return call_on_device(
                self.devices[0], lambda xs: [tf.concat(xs, axis=-1)], outputs
            )[0]
        return outputs if len(outputs) > 1 else outputs[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            stacks=[[keras.saving.serialize_keras_object(l) for l in s] for s in self.stacks],
            devices=list(self.devices),
            merge_inputs=self.merge_inputs,
            concat_outputs=self.concat_outputs,
            autocast=self.autocast,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = {k: v for k, v in config.items() if k not in _RETIRED_TOWER_ARGUMENTS}
        devices = config.pop("devices")
        stacks = []
        for device, stack in zip(devices, config.pop("stacks")):
            with device_scope(device):
                stacks.append([keras.saving.deserialize_keras_object(l) for l in stack])
        return cls(stacks, devices, **config)


def resolve_tower_devices(tower_devices, towers=PAPER_TOWERS):
    """The device of each tower; None for a tower left to TensorFlow's placer.

    Default (tower_devices=None): the first two GPUs if two towers are asked for and
    two GPUs are visible, else no placement at all.

    Raises:
      ValueError: for a device count other than `towers`, or a name that is not a
        device or not one of the visible logical devices.
    """
    if tower_devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        if towers > 1 and len(gpus) >= towers:
            return tuple(g.name for g in gpus[:towers])
        return (None,) * towers
    if isinstance(tower_devices, str) or len(tower_devices) != towers:
        raise ValueError(
            f"tower_devices must name one device per tower ({towers}), got {tower_devices!r}"
        )
    check_visible_devices([name for name in tower_devices if name is not None], "tower device")
    return tuple(tower_devices)


def check_visible_devices(names, what="device"):
    """Raises ValueError for a name that is not a device, or not a visible logical one:
    TensorFlow's soft placement would otherwise run its ops elsewhere, silently."""
    logical = [d.name for d in tf.config.list_logical_devices()]

    def type_and_index(name):
        spec = tf.DeviceSpec.from_string(name)
        return spec.device_type, spec.device_index or 0

    visible = {type_and_index(name) for name in logical}
    for name in names:
        try:
            requested = type_and_index(name)
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{what} {name!r} is not a device name: {e}") from e
        if requested not in visible:
            raise ValueError(f"{what} {name!r} is not one of the visible devices {logical}")
