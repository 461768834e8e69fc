"""The SSL4MIS 2D U-Net timed in PyTorch the way `atso bench` times it in the harness.

Same network (channels, dropout, 3x3 conv + BN + LeakyReLU blocks, max-pool down, 1x1 conv +
bilinear x2 + concat up, 3x3 head), same loss (0.5 * (CE + Dice on softmax)), SGD with momentum
0.9 and weight decay 1e-4; a train step is forward, backward, update and reading the loss back.
Median of `--steps` steps after `--warmup`; inference is a batch in eval mode without gradients.

    pip install torch          # CPU wheels install by package name
    python3 benchmarks/pytorch_unet.py --batch-size 8 --resolution 128 --threads 2

`atso bench --vs-pytorch` runs it with the same settings and prints the ratio. Optional for
users; no test needs it.
"""
import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, cin, cout, dropout):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU())

    def forward(self, x):
        return self.body(x)


class UpBlock(nn.Module):
    def __init__(self, deep, skip):
        super().__init__()
        self.reduce = nn.Conv2d(deep, skip, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.block = ConvBlock(2 * skip, skip, 0.0)

    def forward(self, deep, skip):
        return self.block(torch.cat([skip, self.up(self.reduce(deep))], dim=1))


class UNet(nn.Module):
    def __init__(self, channels, dropout, classes, in_channels=1):
        super().__init__()
        self.input = ConvBlock(in_channels, channels[0], dropout[0])
        self.down = nn.ModuleList(ConvBlock(channels[i - 1], channels[i], dropout[i]) for i in range(1, len(channels)))
        self.up = nn.ModuleList(UpBlock(channels[i], channels[i - 1]) for i in reversed(range(1, len(channels))))
        self.head = nn.Conv2d(channels[0], classes, 3, padding=1)

    def forward(self, x):
        skips = [self.input(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)

# The variables that cap the instruction sets PyTorch's CPU code uses: ATen's dispatch, oneDNN's
# JIT kernels (the convolutions) and MKL's (the GEMM).
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_capability():
    """ATen's CPU instruction set (`AVX512`, `AVX2`, `DEFAULT`), where this PyTorch reports it."""
    report = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return report() if report else None


def loss_fn(logits, labels, classes):
    ce = F.cross_entropy(logits, labels)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, classes).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1e-5) / ((probs * probs).sum(dim=(0, 2, 3)) + (onehot * onehot).sum(dim=(0, 2, 3)) + 1e-5)
    return 0.5 * (ce + dice.mean())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--channels", default="16,32,64,128,256")
    parser.add_argument("--dropout", default="0.05,0.1,0.2,0.3,0.5", help="encoder dropout per level")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    channels = [int(c) for c in args.channels.split(",")]
    dropout = [float(p) for p in args.dropout.split(",")]
    if len(dropout) != len(channels):
        parser.error(f"--dropout has {len(dropout)} values for {len(channels)} levels")
    classes = 4
    device = torch.device(args.device)
    model = UNet(channels, dropout, classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.rand(args.batch_size, 1, args.resolution, args.resolution, device=device)
    labels = torch.randint(0, classes, (args.batch_size, args.resolution, args.resolution), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    train = []
    model.train()
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels, classes)
        loss.backward()
        optimizer.step()
        loss.item()
        sync()
        if i >= args.warmup:
            train.append(time.perf_counter() - start)
    inference = []
    model.eval()
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            probs = torch.softmax(model(images), dim=1).cpu()
            sync()
            if i >= args.warmup:
                inference.append(time.perf_counter() - start)
    # PyTorch's own fp32 GEMM rate on the same device and threads, as `atso bench` measures
    # flex's (1024^3, median of 5 after 2): a reference that uses every instruction set the
    # CPU has (oneDNN / MKL), where flex's GEMM crate may not.
    n = 1024
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    gemm = []
    for i in range(7):
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        if i >= 2:
            gemm.append(time.perf_counter() - start)
    result = {
        "version": torch.__version__,
        "gemm_gflops": 2 * n**3 / statistics.median(gemm) / 1e9,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "train_seconds": statistics.median(train),
        "inference_seconds": statistics.median(inference),
        # The process's peak resident memory (Linux reports ru_maxrss in KiB).
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # The instruction set ATen's CPU kernels dispatched to, and the caps on it and on oneDNN's
        # and MKL's code this process was given (`atso bench` sets them to compare like with like
        # when its own kernels are capped).
        "cpu_capability": cpu_capability() if device.type == "cpu" else None,
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if name in os.environ},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"PyTorch {result['version']} on {args.device} ({result['threads']} threads, "
              f"ATen {result['cpu_capability']}, caps {result['isa_caps'] or 'none'}): "
              f"train step {1e3 * result['train_seconds']:.1f} ms, inference batch {1e3 * result['inference_seconds']:.1f} ms")


if __name__ == "__main__":
    main()
