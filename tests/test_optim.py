"""The paper's update, schedules and error rates against NumPy and by-hand values."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import optim


def numpy_paper_update(weights, velocities, gradients, lr, decays, momentum=0.9):
    """Section 5, float64: v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v."""
    new_w, new_v = [], []
    for w, v, g, d in zip(weights, velocities, gradients, decays):
        v = momentum * v - d * lr * w - lr * g
        new_v.append(v)
        new_w.append(w + v)
    return new_w, new_v


@pytest.mark.parametrize("decay_biases", [False, True])
def test_several_steps_match_numpy(decay_biases):
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 2, 4), (4,), (6, 5), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    variables = [tf.Variable(w, dtype=tf.float32) for w in init]
    sgd = optim.PaperMomentumSGD(variables, decay_biases=decay_biases)
    step = tf.function(lambda grads, lr: sgd.apply(grads, variables, lr))

    weights = [w.astype(np.float32).astype(np.float64) for w in init]
    velocities = [np.zeros(s) for s in shapes]
    decays = [0.0005 if (len(s) > 1 or decay_biases) else 0.0 for s in shapes]
    for lr in (0.01, 0.01, 0.001, 0.01, 0.1):
        grads = [rng.standard_normal(s) for s in shapes]
        step([tf.constant(g, tf.float32) for g in grads], tf.constant(lr))
        weights, velocities = numpy_paper_update(weights, velocities, grads, lr, decays)
    for variable, w in zip(variables, weights):
        np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)
    for velocity, v in zip(sgd.velocities, velocities):
        np.testing.assert_allclose(velocity.numpy(), v, rtol=1e-4, atol=1e-7)


def test_first_step_by_hand():
    # w = 2, g = 1, lr = 0.1: v = -0.0005 * 0.1 * 2 - 0.1 * 1 = -0.1001; w = 1.8999.
    w = tf.Variable([[2.0]])
    b = tf.Variable([2.0])
    sgd = optim.PaperMomentumSGD([w, b])
    sgd.apply([tf.constant([[1.0]]), tf.constant([1.0])], [w, b], 0.1)
    np.testing.assert_allclose(w.numpy(), [[1.8999]], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [1.9], rtol=1e-6)  # no decay on the bias


def test_wrong_number_of_gradients_is_an_error():
    w = tf.Variable([1.0])
    with pytest.raises(ValueError, match="Got 2 gradients for 1 variables"):
        optim.PaperMomentumSGD([w]).apply([tf.ones(1), tf.ones(1)], [w], 0.1)


def test_plateau_schedule_divides_by_ten_after_patience_at_most_three_times():
    schedule = optim.PlateauSchedule(0.01, patience=2, min_delta=0.01)
    errors = [0.9, 0.8, 0.795, 0.792,  # 0.795, 0.792 are within min_delta of 0.8: reduce
              0.7, 0.71, 0.70,         # no improvement twice: reduce
              0.70, 0.70,              # reduce (third time)
              0.70, 0.70, 0.70, 0.70]  # no more reductions
    rates, reduced = [], []
    for epoch, error in enumerate(errors):
        reduced.append(schedule.end_epoch(epoch, error))
        rates.append(float(schedule.learning_rate))
    assert [i for i, r in enumerate(reduced) if r] == [3, 6, 8]
    np.testing.assert_allclose(rates[3], 1e-3, rtol=1e-6)
    np.testing.assert_allclose(rates[6], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(rates[-1], 1e-5, rtol=1e-6)
    assert int(schedule.reductions) == 3
    np.testing.assert_allclose(float(schedule.best_error), 0.7)


def test_plateau_schedule_state_survives_a_checkpoint(tmp_path):
    schedule = optim.PlateauSchedule(0.01, patience=1)
    schedule.end_epoch(0, 0.5)
    schedule.end_epoch(1, 0.6)  # reduce
    path = tf.train.Checkpoint(schedule=schedule).write(str(tmp_path / "ckpt"))
    restored = optim.PlateauSchedule(0.01, patience=1)
    tf.train.Checkpoint(schedule=restored).read(path).assert_consumed()
    np.testing.assert_allclose(float(restored.learning_rate), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(restored.best_error), 0.5)
    assert int(restored.reductions) == 1


def test_step_schedule():
    schedule = optim.StepSchedule(0.01, boundaries=(2, 4))
    rates = []
    for epoch in range(6):
        rates.append(float(schedule.learning_rate))
        schedule.end_epoch(epoch, 0.0)
    np.testing.assert_allclose(rates, [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)


def test_top_k_error_by_hand():
    logits = tf.constant([[0.1, 0.5, 0.2, 0.0],   # label 1: top-1 hit
                          [0.9, 0.05, 0.03, 0.02],  # label 2: top-1 miss, top-3 hit
                          [0.1, 0.2, 0.3, 0.4]])    # label 0: misses top-3
    labels = tf.constant([1, 2, 0])
    np.testing.assert_allclose(optim.top_k_error(logits, labels, 1), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(optim.top_k_error(logits, labels, 3), 1 / 3, rtol=1e-6)
