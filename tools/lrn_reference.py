"""The paper's local response normalization and its gradient in NumPy float64.

The independent reference for the compiled kernels: written from the formula of
Section 3.3, one window per channel, with no code shared with the kernels. It
imports only NumPy so that it also runs on a GPU machine without TensorFlow.
"""

import numpy as np


def window_sums(values, depth_radius):
    """sum_{j = max(0, i - r)}^{min(C - 1, i + r)} values[..., j] for every channel i."""
    channels = values.shape[-1]
    out = np.zeros_like(values)
    for i in range(channels):
        lo, hi = max(0, i - depth_radius), min(channels - 1, i + depth_radius)
        out[..., i] = values[..., lo : hi + 1].sum(axis=-1)
    return out


def lrn(x, depth_radius, bias, alpha, beta):
    x = np.asarray(x, np.float64)
    norm = bias + alpha * window_sums(x * x, depth_radius)
    return x * norm**-beta


def lrn_grad(dy, x, depth_radius, bias, alpha, beta):
    """d LRN(x) / dx applied to dy:
    dx_j = dy_j n_j^-beta - 2 alpha beta x_j sum_{i in W(j)} dy_i x_i n_i^(-beta - 1)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    norm = bias + alpha * window_sums(x * x, depth_radius)
    cross = window_sums(dy * x * norm ** (-beta - 1), depth_radius)
    return dy * norm**-beta - 2 * alpha * beta * x * cross
