"""Any text in, an ArchError or a result out: never another exception, never a hang."""

import random
from pathlib import Path

import pytest

import archdsl
from archdsl import ArchError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(ROOT.glob("specs/**/*.arch")) + sorted(ROOT.glob("archdsl/stdlib/*.arch"))
PIECES = list("()[]{},=*/+-;#\n x0123456789kspdg._\"<>!") + [
    "conv", "relu", "if", "else", "block", "param", "input", "include", "train", "concat", "add", "[identity]",
    "1x8x8", "true", "//", "e5", "99999999999", "linear(0)", "maxpool(9)", "flatten", "*", " * 3",
    # the constructs of today's networks
    "relu6", "silu", "hardswish", "gelu(approximate=tanh)", "activation(act)", "mul", "split", "k1x7", "p0x3", "s2x1",
    "(1, 7)", "padding=same", '"same"', "default conv(bias=false)\n", "default batchnorm(eps=1e-3)", "input.channels",
    "input.height", " and ", " or ", "not ", "max(1, 2)", "min(", "round(", "make_divisible(9, 8)", " as i", "i",
    " * 0", "permute(0, 2, 3, 1)", "transpose(1, 2)", "flatten(2)", "reshape(-1)", "unflatten(1, (2, 2))",
    "mean(2, 3)", "channelshuffle(2)", "layernorm(over=channels)", "groupnorm(2)", "batchnorm(16)",
    "linear(8, pointwise=true)", "droppath(0.1)", "layerscale(1e-6)", "classtoken", "posembedding",
    "attention(2)", "token(0)", "include mobilenet\n", "include transformer\n"]


def mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(text) + 1)
        roll = rng.random()
        if roll < 0.4:
            text = text[:pos] + rng.choice(PIECES) + text[pos:]
        elif roll < 0.8:
            text = text[:pos] + text[pos + rng.randint(1, 6):]
        else:
            start = rng.randrange(len(text) + 1)
            text = text[:pos] + text[start:start + 24] + text[pos:]
    return text


@pytest.mark.parametrize("seed", range(4))
def test_mutated_specs_give_errors_not_crashes(seed):
    rng = random.Random(seed)
    texts = [p.read_text() for p in SOURCES]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(150):
        text = mutate(rng, rng.choice(texts))
        try:
            archdsl.trace(text, input_shape=rng.choice([None, (1, 16, 16), (3, 64, 64)]))
            outcomes["ok"] += 1
        except ArchError as e:
            report = e.render()
            assert "error:" in report and "Traceback" not in report
            outcomes["error"] += 1
    assert outcomes["error"] > 0  # the mutations do reach the error paths
