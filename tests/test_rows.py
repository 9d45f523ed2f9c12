"""rows.cpp, the decoding step's kernel for a few rows: the product it computes, in each weight
format and in every instruction-set level this CPU runs (cpu.LEVELS: the generic code, AVX2 + FMA,
AVX-512, AVX-512 with VNNI, each its own build), against the format's product written in PyTorch
(rows.format_product), and so against each other; the float kernel with and without its software
prefetch; bfloat16 and int8 from the weights as stored and from tiles.

Tolerance 1e-5 relative to the size of the terms (sum of |x| |W| per output): both sides add the
same float32 products (for int8, of the same 16-bit-rounded x: the same float32 division and
rounding on both sides), in different orders (rows.cpp over its vector lanes, PyTorch over its own
blocks), so they differ by float32 rounding of a sum of up to a few hundred terms.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.fast.cpu import LEVELS, capabilities
from minigpt.fast.rows import (BLOCK, PREFETCH, TILE, built, fits, format_product, int8_tiles, pair_tiles, quantize_blocks,
                               rows_product, tiles_product, widened)

pytestmark = pytest.mark.skipif(not built(), reason="rows.cpp could not be built here (no C++ compiler)")


def runs(level: str) -> bool:
    return LEVELS.index(level) <= LEVELS.index(capabilities().level)


@pytest.mark.parametrize("level", [pytest.param(level, marks=pytest.mark.skipif(not runs(level), reason=f"this CPU has no {level}"))
                                   for level in LEVELS])
@settings(deadline=None, max_examples=40)
@given(rows=st.integers(1, 9),  # 4 rows at a time, then the 3, 2 or 1 left
       blocks=st.integers(1, 40), out=st.integers(1, 70), bias=st.booleans(),  # 40 blocks: past the 8 and 16 scales read at once
       weights=st.sampled_from(["float32", "bfloat16", "int8"]), ahead=st.sampled_from([0, PREFETCH]), seed=st.integers(0, 2**16))
def test_every_level_computes_the_formats_product(level, rows, blocks, out, bias, weights, ahead, seed):
    torch.manual_seed(seed)
    x, w = torch.randn(rows, blocks * BLOCK), torch.randn(out, blocks * BLOCK)
    b = torch.randn(out) if bias else None
    weight, scales = quantize_blocks(w) if weights == "int8" else (w.to(getattr(torch, weights)), None)
    expected = format_product(x, weight, scales, b)
    scale_of_terms = x.abs() @ widened(weight, scales).abs().T  # (rows out)
    assert ((rows_product(x, weight, scales, b, level=level, ahead=ahead) - expected).abs() <= 1e-5 * (scale_of_terms + 1)).all()


@pytest.mark.parametrize("level", [pytest.param(level, marks=pytest.mark.skipif(not runs(level), reason=f"this CPU has no {level}"))
                                   for level in LEVELS])
@settings(deadline=None, max_examples=40)
@given(rows=st.integers(1, 19),  # 8 (AVX-512) or 4 rows at a time, then those left
       blocks=st.integers(1, 40), out=st.integers(1, 3 * TILE + 5), bias=st.booleans(), ahead=st.sampled_from([0, PREFETCH]),
       weights=st.sampled_from(["bfloat16", "int8"]), seed=st.integers(0, 2**16))
def test_every_level_computes_the_formats_product_from_tiles(level, rows, blocks, out, bias, ahead, weights, seed):
    """The tile kernels: the format's product from the same weights laid out in tiles of 16
    outputs (the last padded with zeros, its padding never written out), int8 with its blocks'
    scales in tiles too."""
    torch.manual_seed(seed)
    x, w = torch.randn(rows, blocks * BLOCK), torch.randn(out, blocks * BLOCK)
    b = torch.randn(out) if bias else None
    weight, scales = quantize_blocks(w) if weights == "int8" else (w.bfloat16(), None)
    tiles, tile_scales = int8_tiles(weight, scales) if weights == "int8" else (pair_tiles(weight), None)
    assert tiles.shape == (-(-out // TILE), blocks * BLOCK // 2, TILE, 2)
    assert tile_scales is None or tile_scales.shape == (-(-out // TILE), blocks, TILE)
    expected = format_product(x, weight, scales, b)
    scale_of_terms = x.abs() @ widened(weight, scales).abs().T  # (rows out)
    got = tiles_product(x, tiles, tile_scales, b, out, level=level, ahead=ahead)
    assert ((got - expected).abs() <= 1e-5 * (scale_of_terms + 1)).all()


def test_leading_axes_are_kept_and_a_row_must_be_whole_blocks():
    w = torch.randn(5, 64)
    x = torch.randn(1, 1, 64)
    assert rows_product(x, w, None, None).shape == (1, 1, 5)
    assert fits(w) and not fits(torch.randn(5, 40))  # a row's width must be whole blocks


def test_a_level_this_cpu_cannot_run_is_refused():
    above = list(LEVELS[LEVELS.index(capabilities().level) + 1:])
    for level in above + ["sse9"]:
        with pytest.raises(ValueError, match="rows.cpp level must be one this CPU runs"):
            built(level)


def test_int8_blocks_are_within_half_a_step_of_the_weights():
    w = torch.randn(7, 4 * BLOCK) * torch.logspace(-3, 1, 4).repeat_interleave(BLOCK)  # blocks of very different size
    q, s = quantize_blocks(w)
    step = s.float().repeat_interleave(BLOCK, dim=1)  # (out in): each weight's block scale
    assert q.dtype == torch.int8 and s.shape == (7, 4)
    assert ((widened(q, s) - w).abs() <= step / 2 + 1e-7).all()
