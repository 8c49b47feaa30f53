"""Synthetic data: deterministic by seed, generated in fixed chunks.

Sample i of a split lives in chunk i // CHUNK, and every chunk is drawn from
its own generator seeded by (seed, split stream, chunk index). So sample i is
the same whatever the world size, and a rank generates only the chunks that
cover its own samples: a weak-scaling run on many ranks never builds the
whole set anywhere.

Tasks (the "teacher" is fixed by the seed alone)
  classification  a Gaussian mixture with CLUSTERS_PER_CLASS clusters per
                  class in a random INFORMATIVE-dimensional subspace (below).
  binary          label 1[x·w* > 0] of a random linear teacher w*, x ~ N(0, I).
  regression      y = x·w* + noise·N(0, 1), x ~ N(0, I).
A fraction `noise` of TRAINING labels is replaced by a class drawn uniformly
at random (classification) or flipped (binary). Test labels and targets are
noise-free, so test accuracy (MSE) measures how well the rule was learned and
differences between algorithms are not hidden under a label-noise floor.

The classification teacher
  k = min(INFORMATIVE, d); Q a random orthonormal d x k basis; cluster
  centres m_j = CLASS_SEP * (distinct random vertices of {-1, 1}^k),
  j = 0 .. C*CLUSTERS_PER_CLASS - 1; a sample draws a cluster j uniformly,
  x = Q m_j + N(0, I_d), label j mod C.
Each class is a union of separated blobs, so no linear model can fit it,
while an MLP can; neighbouring blobs overlap, so the best possible accuracy is
below 100 %, and cube vertices keep that overlap about the same for every
seed. CLASS_SEP is the difficulty knob (larger = easier). Measured with the
defaults (d = 64, 10 classes, noise 0.1, 32768 samples; an MLP with 128 ReLU
units, plain SGD lr 0.1, batch 128 = 4 ranks x 32, 5 epochs; seeds 0-2):

  CLASS_SEP   MLP test accuracy   linear softmax
  1.25        78-82 %             63-67 %
  1.5         87-91 %             72-75 %   (default; still rising at epoch 5)
  1.75        92-95 %             79-82 %

(Random MLP teachers with argmax labels were tried first: after a few epochs
an MLP student trailed a linear one on them, so they could not tell models,
let alone algorithms, apart.)
"""
from __future__ import annotations

import numpy as np

CHUNK = 1024              # samples per generator chunk (changing it changes the data)
CLASS_SEP = 1.5           # half the cube edge between cluster centres: the difficulty knob
CLUSTERS_PER_CLASS = 2    # blobs per class; 1 makes the task nearly linear
INFORMATIVE = 8           # dimension of the subspace holding the cluster centres

# generator stream tags: every random stream of the synthetic data has its own
TRAIN, TEST, TEACHER = 0x7A1, 0x7E5, 0x7EA
_SPLITS = {"train": TRAIN, "test": TEST}


class Teacher:
    """The fixed rule behind the labels; built from the seed alone."""

    def __init__(self, seed: int, task: str, n_features: int, n_classes: int):
        self.task = task
        self.n_classes = n_classes
        self.n_clusters = n_classes * CLUSTERS_PER_CLASS
        rng = np.random.default_rng([seed, TEACHER])
        d = n_features
        k = min(INFORMATIVE, d)
        # an orthonormal basis of a random k-dim subspace, and the centres in it
        self.Q = np.linalg.qr(rng.standard_normal((d, k)))[0]
        self.centres = _vertices(rng, self.n_clusters, k) * CLASS_SEP
        # unit-variance linear score for the binary and regression tasks
        self.w = rng.standard_normal(d) / np.sqrt(d)

    def sample(self, rng, n, d):
        """n draws: (X float64 (n, d), clean y, uniform u, random class r, normal e).

        Every draw is taken for every task and split, in a fixed order, so
        the inputs of a chunk never depend on the task or the noise level.
        """
        cluster = rng.integers(0, self.n_clusters, n)
        X = rng.standard_normal((n, d))
        u = rng.random(n)
        r = rng.integers(0, self.n_classes, n)
        e = rng.standard_normal(n)
        if self.task == "classification":
            X += self.centres[cluster] @ self.Q.T
            y = cluster % self.n_classes
        elif self.task == "binary":
            y = (X @ self.w > 0).astype(np.int64)
        else:
            y = X @ self.w
        return X, y, u, r, e


def _vertices(rng, n, k):
    """n distinct vertices of the cube {-1, 1}^k (repeats only if 2^k < n)."""
    if 2 ** k >= n:
        codes = rng.choice(2 ** k, size=n, replace=False)
    else:
        codes = rng.integers(0, 2 ** k, n)
    bits = (codes[:, None] >> np.arange(k)) & 1
    return 2.0 * bits - 1.0


def _chunk(teacher, seed, split, c, d, noise):
    """(X, y) of chunk c of a split, float64 inputs."""
    rng = np.random.default_rng([seed, _SPLITS[split], c])
    X, y, u, r, e = teacher.sample(rng, CHUNK, d)
    if split == "train" and noise > 0:
        if teacher.task == "classification":
            y = np.where(u < noise, r, y)
        elif teacher.task == "binary":
            y = np.where(u < noise, 1 - y, y)
        else:
            y = y + noise * e
    return X, y


def generate(data_cfg, seed: int, start: int, stop: int, split: str = "train", teacher=None):
    """Samples [start, stop) of a synthetic split: float64 X (n, d) and y
    (int64 labels, float64 regression targets).

    Only the chunks covering [start, stop) are drawn. `data_cfg` is a
    DataConfig (task, n_features, n_classes and noise are read); without a
    `teacher`, data.task = auto draws the classification task.
    """
    d = data_cfg.n_features
    if teacher is None:
        task = "classification" if data_cfg.task == "auto" else data_cfg.task
        teacher = Teacher(seed, task, d, data_cfg.n_classes)
    ydtype = np.float64 if teacher.task == "regression" else np.int64
    if stop <= start:
        return np.empty((0, d)), np.empty(0, ydtype)
    first, last = start // CHUNK, (stop - 1) // CHUNK
    parts = [_chunk(teacher, seed, split, c, d, data_cfg.noise) for c in range(first, last + 1)]
    lo = start - first * CHUNK
    X = np.concatenate([p[0] for p in parts])[lo:lo + stop - start]
    y = np.concatenate([p[1] for p in parts])[lo:lo + stop - start].astype(ydtype)
    return X, y
