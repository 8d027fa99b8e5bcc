"""The seeds' d2l training loop vs `archdsl train`: same spec, recipe, seed and device, one process.

    python benchmarks/bench_train.py                                  # LeNet, its recipe, 10 epochs
    python benchmarks/bench_train.py --repeat 3                       # 3 rounds, 3 processes: medians
    python benchmarks/bench_train.py --epochs 2 --limit 10000         # a shorter look
    python benchmarks/bench_train.py specs/alexnet.arch --device cuda --epochs 1
    python benchmarks/bench_train.py specs/vgg.arch --set ratio=4 --device cuda

The d2l side re-creates the seeds' code faithfully: torchvision's FashionMNIST with PIL
`transforms.Resize` + `ToTensor`, a DataLoader with 4 workers, fp32, a `.to(device)` per
batch, d2l's Accumulator reading every batch's loss and accuracy with float() (a host sync per
batch), d2l's Timer around each step, and d2l's init_weights. One thing is fixed, on both
sides: test accuracy is measured on the whole test set (one seed's evaluate_accuracy_gpu returns
after its first batch), under torch.no_grad as in d2l's book.

The archdsl side is `archdsl.train` as the CLI runs it, run directory (checkpoints, metrics,
curves.png) included, written to a temporary folder.

Printed: wall-clock time of each whole run (data set, workers, model, training, testing),
examples/sec two ways (wall-clock, and d2l's step-only figure), and the final test accuracy.
With --repeat N there are N rounds, each a fresh process that runs the d2l loop and then
archdsl, as above; each figure is the median (wall-clock with its range), and the speed-up is
the median of the N rounds' ratios: on a shared machine whose speed drifts, a pair run back to
back is the fair comparison. A fresh process per round keeps the d2l side from inheriting
the trainer's process-wide malloc setting (which makes any CPU loop faster) from a previous round.
This is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import archdsl  # noqa: E402
from archdsl import data as D  # noqa: E402
from archdsl.api import plan  # noqa: E402
from archdsl.cli import parse_sets  # noqa: E402
from archdsl.progress import PlainReporter  # noqa: E402
from archdsl.devices import resolve_device  # noqa: E402
from archdsl.trainer import DEFAULTS, resized_hw  # noqa: E402


# d2l, as the seeds type it ---------------------------------------------------

class Accumulator:
    """Sums over n variables (d2l)."""

    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def __getitem__(self, idx):
        return self.data[idx]


class Timer:
    """d2l's Timer: start/stop around each step, sum at the end."""

    def __init__(self):
        self.times = []

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def sum(self):
        return sum(self.times)


def accuracy(y_hat, y):
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net, data_iter, device=None):
    """d2l's, over the whole test set (the seeds' copy returns after one batch)."""
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


def train_ch6(net, train_iter, test_iter, num_epochs, lr, device, log=print):
    """d2l's train_ch6, minus the Animator; returns its printed figures."""

    def init_weights(m):
        if type(m) == nn.Linear or type(m) == nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)

    net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    timer = Timer()
    for epoch in range(num_epochs):
        metric = Accumulator(3)
        net.train()
        start = time.perf_counter()
        for i, (X, y) in enumerate(train_iter):
            timer.start()
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric.add(l * X.shape[0], accuracy(y_hat, y), X.shape[0])
            timer.stop()
            train_l = metric[0] / metric[2]
            train_acc = metric[1] / metric[2]
        test_acc = evaluate_accuracy_gpu(net, test_iter)
        log(f"  d2l     epoch {epoch + 1}/{num_epochs}  loss {train_l:.3f}  train acc {train_acc:.3f}  "
            f"test acc {test_acc:.3f}  {time.perf_counter() - start:.1f}s")
    return train_l, train_acc, test_acc, metric[2] * num_epochs / timer.sum()


def run_d2l(args, recipe, params, device):
    import torchvision
    from torch.utils import data
    from torchvision import transforms

    t0 = time.perf_counter()
    trans = [transforms.ToTensor()]
    if recipe["resize"]:
        trans.insert(0, transforms.Resize(recipe["resize"]))
    trans = transforms.Compose(trans)
    root = D.torchvision_root(recipe["dataset"], args.data_root)
    cls = {"fashion-mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST,
           "cifar10": torchvision.datasets.CIFAR10}[recipe["dataset"]]
    train_set = cls(str(root), train=True, transform=trans, download=False)
    test_set = cls(str(root), train=False, transform=trans, download=False)
    if args.limit:
        train_set = data.Subset(train_set, range(min(args.limit, len(train_set))))
    train_iter = data.DataLoader(train_set, recipe["batch_size"], shuffle=True, num_workers=args.workers)
    test_iter = data.DataLoader(test_set, recipe["batch_size"], shuffle=False, num_workers=args.workers)
    torch.manual_seed(recipe["seed"])
    net = archdsl.build(args.spec, input_shape(args, recipe, params), **params)
    loss, train_acc, test_acc, step_rate = train_ch6(net, train_iter, test_iter, recipe["epochs"], recipe["lr"], device)
    wall = time.perf_counter() - t0
    return {"wall": wall, "examples": len(train_set) * recipe["epochs"], "step_rate": step_rate, "loss": loss,
            "train_acc": train_acc, "test_acc": test_acc}


def run_archdsl(args, recipe, params, device):
    class Lines(PlainReporter):
        def start(self, info):  # only what differs from a plain torch loop
            if info.tuning is not None:
                self._out(f"tuning: {info.tuning}")

        def end(self, history):
            pass

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="archdsl-bench-") as tmp:
        h = archdsl.train(args.spec, params=params, dataset=recipe["dataset"], epochs=recipe["epochs"],
                          batch_size=recipe["batch_size"], lr=recipe["lr"], resize=recipe["resize"],
                          seed=recipe["seed"], limit=args.limit, device=str(device), data_root=args.data_root,
                          out=os.path.join(tmp, "run"),
                          progress=Lines(write=lambda line: print("  archdsl " + line, flush=True)))
    wall = time.perf_counter() - t0
    return {"wall": wall, "examples": sum(r.examples for r in h), "step_rate": h.examples_per_sec,
            "loss": h.train_loss, "train_acc": h.train_acc, "test_acc": h.test_acc}


def input_shape(args, recipe, params):
    """The spec's input, or the data set's image shape after the resize (as the trainer derives it)."""
    p = plan(args.spec, **params)
    if p.input_shape is not None:
        return p.input_shape
    c, h, w = {"cifar10": (3, 32, 32)}.get(recipe["dataset"], (1, 28, 28))
    return (c, *(resized_hw(h, w, recipe["resize"]) if recipe["resize"] else (h, w)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "lenet.arch"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a spec param, NAME=VALUE")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--limit", type=int, help="use only the first N training examples")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--resize", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers on the d2l side (the seeds use 4)")
    ap.add_argument("--data-root")
    ap.add_argument("--skip", choices=["d2l", "archdsl"], help="run only the other side")
    ap.add_argument("--repeat", type=int, default=1, help="N rounds, each in a fresh process; report medians")
    ap.add_argument("--round-json", help=argparse.SUPPRESS)  # a round run by --repeat writes its results here
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 workers on a small machine

    params = parse_sets(args.sets)
    spec_recipe = plan(args.spec, **params).recipe
    recipe = dict(DEFAULTS)
    if spec_recipe is not None:
        recipe.update(spec_recipe.to_dict())
    for key in ("epochs", "batch_size", "lr", "resize", "seed"):
        if getattr(args, key) is not None:
            recipe[key] = getattr(args, key)
    device = resolve_device(args.device)
    n_threads = torch.get_num_threads()
    print(f"{args.spec} on {device} ({n_threads} CPU threads): {recipe['dataset']}, batch {recipe['batch_size']}, "
          f"lr {recipe['lr']}, {recipe['epochs']} epochs, resize {recipe['resize']}, seed {recipe['seed']}"
          + (f", first {args.limit:,} training examples" if args.limit else ""), flush=True)

    sides = [(name, fn) for name, fn, skip in (("d2l loop (seeds)", run_d2l, "d2l"),
                                               ("archdsl train", run_archdsl, "archdsl")) if args.skip != skip]
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    if args.repeat > 1:
        for i in range(args.repeat):
            print(f"round {i + 1}/{args.repeat}, a fresh process:", flush=True)
            for name, result in run_round(args).items():
                runs[name].append(result)
    else:
        for name, fn in sides:
            print(f"{name}:", flush=True)
            runs[name].append(fn(args, recipe, params, device))
    if args.round_json:
        Path(args.round_json).write_text(json.dumps(runs))
        return

    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    print()
    print(f"{'':<18} {'wall-clock':>11} {'examples/sec':>13} {'examples/sec':>13} {'train loss':>11} "
          f"{'test acc':>9}" + (f"  {'wall-clock range':>17}" if args.repeat > 1 else ""))
    print(f"{'':<18} {'':>11} {'(wall-clock)':>13} {'(steps, d2l)':>13} {'':>11} {'':>9}")
    for name, rs in runs.items():
        rates = [r["examples"] / r["wall"] for r in rs]
        line = (f"{name:<18} {med(rs, 'wall'):>10.1f}s {statistics.median(rates):>13,.0f} "
                f"{med(rs, 'step_rate'):>13,.0f} {med(rs, 'loss'):>11.3f} {med(rs, 'test_acc'):>9.3f}")
        if args.repeat > 1:
            line += f"  {min(r['wall'] for r in rs):>7.1f}s-{max(r['wall'] for r in rs):.1f}s"
        print(line)
    if len(runs) == 2:
        d2l, ours = runs.values()
        wall = statistics.median(a["wall"] / b["wall"] for a, b in zip(d2l, ours))
        step = statistics.median(b["step_rate"] / a["step_rate"] for a, b in zip(d2l, ours))
        pairs = ", ".join(f"{a['wall'] / b['wall']:.2f}x" for a, b in zip(d2l, ours))
        print(f"{'archdsl / d2l':<18} {wall:>10.1f}x {'':>13} {step:>12.1f}x"
              + (f"   (pairs: {pairs})" if args.repeat > 1 else ""))

def run_round(args) -> dict[str, dict]:
    """This script once more, in a new process, without --repeat; its results by side."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--repeat":
            skip = True
        elif not a.startswith("--repeat="):
            argv.append(a)
    with tempfile.TemporaryDirectory(prefix="archdsl-bench-") as tmp:
        out = Path(tmp) / "round.json"
        subprocess.run([sys.executable, __file__, *argv, "--round-json", str(out)], check=True)
        return {name: rs[0] for name, rs in json.loads(out.read_text()).items()}


if __name__ == "__main__":
    main()
