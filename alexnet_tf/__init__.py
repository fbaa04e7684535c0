"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) in TensorFlow.

    import alexnet_tf
    model = alexnet_tf.AlexNet(weights="runs/bvlc_alexnet")
    alexnet_tf.decode_predictions(model.predict(images))

`import alexnet_tf` loads TensorFlow and Keras and registers the package's layers
with Keras, so that `keras.models.load_model` reads `.keras` files of its models.
Its commands (`python -m alexnet_tf.train`, ...) load them only when they need them,
so that `--help` answers at once: Python imports this package before running the
command's module, while `sys.argv[0]` is still "-m".
"""

import sys

__version__ = "0.1.0"

if sys.argv[:1] != ["-m"]:
    from alexnet_tf.applications import AlexNet, SubtractMean, decode_predictions  # noqa: F401


def __getattr__(name):
    if name in ("AlexNet", "SubtractMean", "decode_predictions"):
        from alexnet_tf import applications

        return getattr(applications, name)
    raise AttributeError(f"module 'alexnet_tf' has no attribute {name!r}")
