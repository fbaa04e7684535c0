"""The training command on a machine whose CPU is split into two logical devices,
/cpu:0 and /cpu:1, as tests/conftest.py does for the test process, so that a test can
run `--strategy=towers --tower_devices=/cpu:0,/cpu:1` (or mirrored) in a subprocess,
where it can be killed.

    python tests/train_with_two_cpus.py --flagfile=configs/smoke.flags [--flag=value ...]
"""

import os

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402

from alexnet_tf import config, train  # noqa: E402

if __name__ == "__main__":
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    config.define_flags()
    app.run(train.main)
