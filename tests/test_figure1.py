"""Figure 1's network and the bookkeeping of its experiment, by hand."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import data, figure1


def test_the_four_layer_net_is_the_authors_cifar_layout():
    model = figure1.build_figure1_net(10, seed=0)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    # 5x5 convolutions with padding 2; 3x3 pools at stride 2 with ceil outputs.
    assert [shapes[n] for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "pool3")] == [
        (32, 32, 32), (16, 16, 32), (16, 16, 32), (8, 8, 32), (8, 8, 64), (4, 4, 64)]
    assert [type(model.get_layer(n)).__name__ for n in ("pool1", "pool2", "pool3")] == [
        "MaxPooling2D", "AveragePooling2D", "AveragePooling2D"]
    # 5*5*3*32+32 + 5*5*32*32+32 + 5*5*32*64+64 + 1024*10+10
    assert model.count_params() == 2432 + 25632 + 51264 + 10250
    for name, stddev in zip(("conv1", "conv2", "conv3", "fc"), (1e-4, 0.01, 0.01, 0.01)):
        kernel, bias = (w.numpy().astype(np.float64) for w in model.get_layer(name).weights)
        assert abs(kernel.std() - stddev) < 6 * stddev / np.sqrt(2 * kernel.size)
        np.testing.assert_array_equal(bias, 0.0)
    for layer in ("conv1", "conv2", "conv3"):
        assert model.get_layer(layer).activation.__name__ == "relu"
    tanh = figure1.build_figure1_net(10, activation="tanh", seed=0)
    assert tanh.get_layer("conv2").activation.__name__ == "tanh"


def test_average_pooling_counts_only_what_is_inside():
    # cuda-convnet's last window at 3x3 stride 2 on 4x4 covers rows 2..3 only.
    x = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
    pooled = tf.keras.layers.AveragePooling2D(3, 2, padding="same")(x).numpy()[0, :, :, 0]
    expected = [[np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]), np.mean([2, 3, 6, 7, 10, 11])],
                [np.mean([8, 9, 10, 12, 13, 14]), np.mean([10, 11, 14, 15])]]
    np.testing.assert_allclose(pooled, expected)


CURVE = [(0, 0.9), (50, 0.5), (100, 0.12), (150, 0.09), (200, 0.05)]


def record(activation, rate, seed, curve, diverged_at=None):
    return dict(activation=activation, learning_rate=rate, seed=seed, curve=curve,
                diverged_at=diverged_at, steps_per_epoch=100)


def test_steps_to_the_threshold_and_the_fastest_rate():
    assert figure1.steps_to(CURVE, 0.1) == 150
    assert figure1.steps_to(CURVE, 0.5) == 50
    assert figure1.steps_to(CURVE, 0.01) is None
    slow = record("relu", 0.001, 0, [(0, 0.9), (200, 0.2)])
    fast = record("relu", 0.01, 0, CURVE)
    diverged = record("relu", 0.1, 0, [(0, 0.9), (50, 0.05)][:1], diverged_at=50)
    assert figure1.best_rate([slow, fast, diverged], 0.1) == 0.01
    # None reaches it: the lowest final error; a diverged run counts as error 1.
    assert figure1.best_rate([slow, diverged], 0.1) == 0.001


def test_neighbour_rates_follow_the_1_3_10_sweep():
    assert [figure1.neighbour_rate(r, up=True) for r in (0.001, 0.003, 0.01, 0.03)] == [
        0.003, 0.01, 0.03, 0.1]
    assert [figure1.neighbour_rate(r, up=False) for r in (0.001, 0.003, 0.01)] == [
        0.0003, 0.001, 0.003]
    assert figure1.neighbour_rate(0.002, up=True) == 0.006


def sweep_with_best_at(best, rates, threshold=0.1):
    """A bracketed_sweep over fake runs whose steps to the threshold grow with the
    rate's distance from `best` (in 1-3-10 steps); returns it and the rates trained."""
    trained = []

    def train(rate):
        trained.append(rate)
        distance = abs(np.log10(rate) - np.log10(best))
        return record("tanh", rate, 0, [(0, 0.9), (int(100 + 200 * distance), 0.05)])

    return figure1.bracketed_sweep(train, rates, threshold, max_extensions=3), trained


def test_the_sweep_extends_until_its_best_rate_has_a_worse_one_each_side():
    rates = [0.001, 0.003, 0.01]
    (records, best, bracketed), trained = sweep_with_best_at(0.003, rates)
    assert (best, bracketed, trained) == (0.003, True, rates)
    # The best past the largest: 0.03 is tried, then 0.1 which is slower than 0.03.
    (records, best, bracketed), trained = sweep_with_best_at(0.03, rates)
    assert (best, bracketed, trained) == (0.03, True, rates + [0.03, 0.1])
    assert [r["learning_rate"] for r in records] == [0.001, 0.003, 0.01, 0.03, 0.1]
    # Below the smallest.
    (_, best, bracketed), trained = sweep_with_best_at(0.0003, rates)
    assert (best, bracketed, trained) == (0.0003, True, rates + [0.0003, 0.0001])
    # Never bracketed within 3 extensions: it says so.
    (_, best, bracketed), trained = sweep_with_best_at(10.0, rates)
    assert (best, bracketed, trained) == (0.3, False, rates + [0.03, 0.1, 0.3])


def test_summary_ratios_table_and_figure(tmp_path):
    chosen = {
        "relu": [record("relu", 0.01, s, [(0, 0.9), (100 + 50 * s, 0.05)]) for s in (0, 1)],
        "tanh": [record("tanh", 0.003, s, [(0, 0.9), (600, 0.3), (900, 0.05)]) for s in (0, 1)],
    }
    summary = figure1.summarize(chosen, 0.1)
    assert summary["steps"] == {"relu": {0: 100, 1: 150}, "tanh": {0: 900, 1: 900}}
    assert summary["ratios"] == [9.0, 6.0]
    assert summary["ratio_mean"] == 7.5 and summary["ratio_std"] == pytest.approx(np.std([9, 6], ddof=1))
    table = figure1.format_table(summary, chosen)
    assert "| 0 | 100 (1.00) | 900 (9.00) | 9.00 |" in table
    assert "tanh / ReLU: 7.50 ± 2.12 (sd) over 2 seeds" in table
    slow_tanh = dict(chosen, tanh=[record("tanh", 0.003, s, [(0, 0.9), (600, 0.3)])
                                   for s in (0, 1)])
    bounded = figure1.summarize(slow_tanh, 0.1)
    assert bounded["ratios"] == [] and bounded["ratio_bounds"] == {0: 6.0, 1: 4.0}
    bounded_table = figure1.format_table(bounded, slow_tanh)
    assert "| 1 | 150 (1.50) | not reached | > 4.00 |" in bounded_table
    assert "tanh / ReLU above 4.00 there" in bounded_table
    sweeps = {"tanh": dict(bracketed=False, seed=0, runs=[
        dict(learning_rate=0.001, steps=None, final_error=0.178, stuck=False),
        dict(learning_rate=0.003, steps=900, final_error=0.05, stuck=False),
        dict(learning_rate=0.01, steps=None, final_error=0.9, stuck=True)])}
    swept = figure1.format_table(dict(bounded, sweeps=sweeps), slow_tanh)
    assert ("tanh's sweep (seed 0): 0.001: threshold not reached, final 17.8%; 0.003: 900 "
            "steps, final 5.0%; 0.01: stuck at chance; the best is still the sweep's edge: "
            "NOT bracketed.") in swept
    path = str(tmp_path / "figure.png")
    figure1.draw(chosen, summary, path)
    assert tf.io.decode_png(tf.io.read_file(path)).shape[-1] in (3, 4)


def test_one_epoch_runs_end_to_end_on_generated_images(tmp_path):
    data.ensure_synthetic(str(tmp_path / "data"))
    images, labels, classes = figure1.load_training_images(str(tmp_path / "data"))
    assert images.shape == (96, 32, 32, 3) and len(classes) == 4
    np.testing.assert_allclose(images.mean(axis=0), 0.0, atol=1e-3)  # mean subtracted
    settings = dict(epochs=1, eval_every_steps=1, error_examples=32, examples=96)
    figure1.BATCH_SIZE, batch_size = 16, figure1.BATCH_SIZE
    try:
        first = figure1.ensure_run(str(tmp_path), images, labels, "relu", 0.01, 0, settings)
    finally:
        figure1.BATCH_SIZE = batch_size
    assert [step for step, _ in first["curve"]] == list(range(7))  # step 0, then 6 steps
    assert all(0 <= error <= 1 for _, error in first["curve"])
    # Finished runs are read back, not trained again.
    again = figure1.ensure_run(str(tmp_path), images, labels, "relu", 0.01, 0, settings)
    assert again == json.loads(json.dumps(first))
    assert os.path.exists(figure1.run_path(str(tmp_path), "relu", 0.01, 0))
