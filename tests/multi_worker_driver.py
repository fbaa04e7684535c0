"""One worker of a MultiWorkerMirroredStrategy run on fixed batches, for test_distribute.

    TF_CONFIG=... python tests/multi_worker_driver.py OUT_DIR STEPS

Trains the small network (no dropout) for STEPS steps of the trainer's own train step,
each on the global batch `fixed_batch(step)`, of which this worker's replica takes its
rows, and writes the weights after each step to OUT_DIR/worker{task}_step{k}.npz.
"""

import os
import sys

import numpy as np

GLOBAL_BATCH = 8
NUM_CLASSES = 4
CROP = 32
LEARNING_RATE = 0.01


def model_config():
    from alexnet_tf import trainer

    return trainer.TrainConfig(model_size="small", image_size=36, crop_size=CROP,
                               dropout_rate=0.0, seed=0)


def fixed_batch(step):
    """The global batch of a step: images of the scale of mean-subtracted pixels."""
    rng = np.random.default_rng(step)
    images = rng.normal(0.0, 50.0, (GLOBAL_BATCH, CROP, CROP, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32)
    return images, labels


def main(out_dir, steps):
    from alexnet_tf import distribute

    distribution = distribute.create_distribution(distribute.MULTI_WORKER,
                                                  collective_timeout_s=120)

    import tensorflow as tf

    from alexnet_tf import model_dir, optim, trainer

    strategy = distribution.strategy
    with strategy.scope():
        model = model_dir.create_model(model_config(), NUM_CLASSES,
                                     tower_devices=distribution.tower_devices)
        optimizer = optim.PaperMomentumSGD(model.trainable_variables)
    train_step = trainer.make_train_step(model, optimizer, strategy, GLOBAL_BATCH)
    learning_rate = tf.Variable(LEARNING_RATE, trainable=False)
    for step in range(steps):
        images, labels = distribute.split_global_batch(strategy, *fixed_batch(step))
        loss, _, _, _, _ = train_step(images, labels, learning_rate, tf.constant(0.0))
        weights = {f"w{i}": v.numpy() for i, v in enumerate(model.trainable_variables)}
        np.savez(os.path.join(out_dir, f"worker{distribution.task_id}_step{step}.npz"),
                 loss=float(loss), **weights)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
