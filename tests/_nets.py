"""Small networks shared by the test modules (imported as ``from _nets import ...``: pytest puts tests/ on
``sys.path``)."""
import torch
from torch import nn


def small_cnn(seed: int = 0, C: int = 3) -> nn.Sequential:
    """Two conv–BatchNorm–ReLU blocks, global pooling and a linear head: ``(n, 1, h, w) -> (n, C)``.

    BatchNorm gets non-trivial running statistics and affine weights, so eval-mode BatchNorm is not the
    identity. Returned in training mode (callers pick ``.eval()`` / ``.train()``).
    """
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, C),
    )
    with torch.no_grad():
        for b in (m[1], m[4]):
            b.running_mean.uniform_(-0.5, 0.5)
            b.running_var.uniform_(0.5, 2.0)
            b.weight.uniform_(0.5, 1.5)
            b.bias.uniform_(-0.2, 0.2)
    return m
