"""Example PyTorch factories for `model.name = "torch"` (docs/torch.md).

A factory is called as `factory(input_shape, n_outputs)` and returns an
`nn.Module` that maps a batch of shape (B, *input_shape) to (B, n_outputs).

    [model]
    name = "torch"
    factory = "torch_models:cnn"
    path = "examples"
"""
from math import prod

from torch import nn


def mlp(input_shape, n_outputs, hidden=(256, 256)):
    """The quickstart-shaped MLP: dense-ReLU hidden layers, linear output."""
    layers, width = [nn.Flatten()], prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def cnn(input_shape, n_outputs, channels=(8, 16)):
    """A small CNN for 28x28 images (or 784 flat features): two conv-BatchNorm-ReLU-pool
    blocks and a linear head."""
    side = int(round(prod(input_shape) ** 0.5))
    c1, c2 = channels
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)) if len(input_shape) == 1 else nn.Identity(),
        nn.Conv2d(1 if len(input_shape) == 1 else input_shape[0], c1, 3, padding=1),
        nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, n_outputs))
