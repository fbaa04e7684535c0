"""Test session set-up.

Two logical CPU devices are created before TensorFlow initialises its devices, so
that the model-parallel placement of the two towers can be checked on a CPU-only
machine exactly as it would run on two GPUs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
