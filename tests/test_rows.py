"""rows.cpp, the decoding step's kernel for a few rows: the product it computes, in each
weight format, against the same product in PyTorch with the weights widened to float32 (for
int8, x too is rounded to 16-bit integers with one scale per row by quantize_blocks, as rows.cpp
rounds it: the same float32 division and rounding, so both sides multiply the same numbers).

Tolerance 1e-5 relative to the size of the terms (sum of |x| |W| per output): both sides add the
same float32 products, in different orders (rows.cpp over 32 lanes, PyTorch over its own blocks),
so they differ by float32 rounding of a sum of up to a few hundred terms.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.fast.rows import BLOCK, built, fits, quantize_blocks, rows_product

pytestmark = pytest.mark.skipif(not built(), reason="rows.cpp could not be built here (no C++ compiler)")


def widened(weight: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """The (out in) weight as float32, each int8 block times its scale."""
    if scales is None:
        return weight.float()
    return (weight.float().view(weight.shape[0], -1, BLOCK) * scales[..., None]).view(weight.shape)


@settings(deadline=None, max_examples=60)
@given(rows=st.integers(1, 9),  # 4 rows at a time, then the 3, 2 or 1 left
       blocks=st.integers(1, 8), out=st.integers(1, 70), bias=st.booleans(),
       weights=st.sampled_from(["float32", "bfloat16", "int8"]), seed=st.integers(0, 2**16))
def test_the_product_equals_pytorchs_on_the_widened_weights(rows, blocks, out, bias, weights, seed):
    torch.manual_seed(seed)
    x, w = torch.randn(rows, blocks * BLOCK), torch.randn(out, blocks * BLOCK)
    b = torch.randn(out) if bias else None
    weight, scales = quantize_blocks(w) if weights == "int8" else (w.to(getattr(torch, weights)), None)
    if weights == "int8":  # x as rows.cpp multiplies it: 16-bit integers, one scale per row
        q, s = quantize_blocks(x, block=x.shape[1], scales=torch.float32, bits=16)
        seen = q.float() * s
    else:
        seen = x
    expected = seen @ widened(weight, scales).T + (0 if b is None else b)
    scale_of_terms = seen.abs() @ widened(weight, scales).abs().T  # (rows out)
    assert ((rows_product(x, weight, scales, b) - expected).abs() <= 1e-5 * (scale_of_terms + 1)).all()


def test_leading_axes_are_kept_and_a_row_must_be_whole_blocks():
    w = torch.randn(5, 64)
    x = torch.randn(1, 1, 64)
    assert rows_product(x, w, None, None).shape == (1, 1, 5)
    assert fits(w) and not fits(torch.randn(5, 40))  # a row's width must be whole blocks


def test_int8_blocks_are_within_half_a_step_of_the_weights():
    w = torch.randn(7, 4 * BLOCK) * torch.logspace(-3, 1, 4).repeat_interleave(BLOCK)  # blocks of very different size
    q, s = quantize_blocks(w)
    step = s.repeat_interleave(BLOCK, dim=1)  # (out in): each weight's block scale
    assert q.dtype == torch.int8 and s.shape == (7, 4)
    assert ((widened(q, s) - w).abs() <= step / 2 + 1e-7).all()
