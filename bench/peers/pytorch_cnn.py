#!/usr/bin/env python3
"""`bnlab cnn` on PyTorch CPU: the same net, initialisation and training, timing an epoch.

Usage: python bench/peers/pytorch_cnn.py [--arch convnet|resnet] [--epochs 1] [--threads 1] [--lr 0.05]
                                         [--batch-size 60] [--data data/mnist] [--json]
Needs: pip install torch numpy   (not needed by the project's tests; not run in CI)

Net: conv3x3(1->8, padding 1)-[BatchNorm2d]-ReLU-maxpool2, conv3x3(8->16, padding 1)-[BatchNorm2d]-
ReLU-maxpool2, flatten, linear(784, 10); conv weights N(0, 2/fan_in), linear N(0, 1/784), biases 0
(as bnlab; the random numbers differ, so accuracies agree only statistically). With --arch resnet,
`bnlab cnn --arch resnet`'s residual net: conv3x3(1->8)-[BN]-ReLU, three basic blocks
(conv3x3-[BN]-ReLU-conv3x3-[BN]-add-ReLU, torchvision's BasicBlock) at 8, 16 and 32 channels, the
last two with stride 2 and a conv1x1-[BN] projection, global average pool, linear(32, 10); conv
weights N(0, 2/fan_out), linear N(0, 1/32), biases 0 (convolutions have biases only without BN). Plain SGD (no
momentum, no weight decay), softmax cross-entropy, batches of 60 from a fresh permutation each
epoch, pixels / 255. Each network trains alone, on --threads intra-op threads (bnlab trains the two
networks at once, one thread each). Reported per network: seconds per epoch (training only:
batch gathering, forward, backward, update), milliseconds per step, test accuracy after training
(BN in eval mode: running statistics).
"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
from torch import nn


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir, name):
    for suffix in (".gz", ""):
        p = os.path.join(data_dir, name + suffix)
        if os.path.exists(p):
            return read_idx(p)
    raise FileNotFoundError(os.path.join(data_dir, name))


def net(batch_norm):
    layers = []
    for c_in, c_out in [(1, 8), (8, 16)]:
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        nn.init.normal_(conv.weight, 0.0, (2.0 / (9 * c_in)) ** 0.5)
        nn.init.zeros_(conv.bias)
        layers.append(conv)
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    linear = nn.Linear(784, 10)
    nn.init.normal_(linear.weight, 0.0, (1.0 / 784) ** 0.5)
    nn.init.zeros_(linear.bias)
    layers += [nn.Flatten(), linear]
    return nn.Sequential(*layers)


def conv(c_in, c_out, k, stride, bias):
    c = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)
    nn.init.normal_(c.weight, 0.0, (2.0 / (c_out * k * k)) ** 0.5)
    if bias:
        nn.init.zeros_(c.bias)
    return c


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, with or without BN."""

    def __init__(self, c_in, c_out, stride, batch_norm):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = conv(c_in, c_out, 3, stride, not batch_norm)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, 1, not batch_norm)
        self.bn2 = norm(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(conv(c_in, c_out, 1, stride, not batch_norm), norm(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


def resnet(batch_norm):
    linear = nn.Linear(32, 10)
    nn.init.normal_(linear.weight, 0.0, (1.0 / 32) ** 0.5)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(
        conv(1, 8, 3, 1, not batch_norm), nn.BatchNorm2d(8) if batch_norm else nn.Identity(), nn.ReLU(),
        BasicBlock(8, 8, 1, batch_norm), BasicBlock(8, 16, 2, batch_norm), BasicBlock(16, 32, 2, batch_norm),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["convnet", "resnet"], default="convnet")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "data", "mnist"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x_train = torch.from_numpy(load(a.data, "train-images-idx3-ubyte").astype(np.float32) / 255.0).unsqueeze(1)
    y_train = torch.from_numpy(load(a.data, "train-labels-idx1-ubyte").astype(np.int64))
    x_test = torch.from_numpy(load(a.data, "t10k-images-idx3-ubyte").astype(np.float32) / 255.0).unsqueeze(1)
    y_test = torch.from_numpy(load(a.data, "t10k-labels-idx1-ubyte").astype(np.int64))
    n, bs = len(y_train), a.batch_size
    results = []
    for batch_norm in (True, False):
        model = net(batch_norm) if a.arch == "convnet" else resnet(batch_norm)
        opt = torch.optim.SGD(model.parameters(), lr=a.lr)
        loss_fn = nn.CrossEntropyLoss()
        epoch_seconds = []
        for _ in range(a.epochs):
            model.train()
            order = torch.randperm(n)
            t = time.perf_counter()
            for s in range(n // bs):
                idx = order[s * bs:(s + 1) * bs]
                xb, yb = x_train[idx], y_train[idx]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
            epoch_seconds.append(time.perf_counter() - t)
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
                          for i in range(0, len(y_test), 1000))
        sec = sorted(epoch_seconds)[len(epoch_seconds) // 2]
        results.append({
            "net": "bn" if batch_norm else "plain",
            "seconds_per_epoch": sec,
            "ms_per_step": 1e3 * sec / (n // bs),
            "epoch_seconds": epoch_seconds,
            "test_accuracy": correct / len(y_test),
            "threads": a.threads,
            "arch": a.arch,
            "torch": torch.__version__,
        })
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['net']:>6}: {r['seconds_per_epoch']:.2f} s per epoch ({r['ms_per_step']:.2f} ms per step), "
                  f"test accuracy {r['test_accuracy']:.4f} after {a.epochs} epoch(s); torch {r['torch']}, "
                  f"{r['threads']} thread(s)")


if __name__ == "__main__":
    main()
