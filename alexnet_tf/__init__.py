"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) in TensorFlow."""

__version__ = "0.1.0"
