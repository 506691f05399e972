"""Aligned ranks: every path that turns a budget into ranks gives multiples of ``align`` within the budget."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowrank import allocate, compress, resolve_ranks
from lowrank.alignment import aligned_rank
from lowrank.cli.main import main
from lowrank.info import load_info
from lowrank.layers import max_useful_rank
from lowrank.ranks import fraction_rank, linear_shapes


@settings(max_examples=300, deadline=None)
@given(
    out_f=st.integers(1, 5000),
    in_f=st.integers(1, 5000),
    fraction=st.floats(0.001, 0.999),
    align=st.sampled_from([1, 2, 8, 16, 32, 64]),
)
def test_aligned_fraction_rank_is_a_multiple_within_the_budget(out_f, in_f, fraction, align):
    rank = fraction_rank(out_f, in_f, fraction, align)
    share = fraction * out_f * in_f / (out_f + in_f)
    if align > max_useful_rank(out_f, in_f):
        assert rank is None  # no aligned rank saves parameters: dense
        return
    assert rank % align == 0 and rank <= max_useful_rank(out_f, in_f)
    if share >= align:
        assert rank * (out_f + in_f) <= fraction * out_f * in_f  # rounded down: within the layer's budget
        assert share - rank < align  # and by less than one aligned step
    else:
        assert rank == align  # the smallest factorized form


@pytest.mark.parametrize("align", [1, 8, 16])
def test_every_budget_path_gives_aligned_ranks(tiny_llama, align):
    shapes = linear_shapes(tiny_llama.model)
    for fraction in (0.3, 0.5, 0.8):
        ranks = resolve_ranks(tiny_llama.model, fraction, align)
        assert ranks and all(r % align == 0 for r in ranks.values())
        shares = {n: fraction * o * i / (o + i) for n, (o, i) in shapes.items()}
        if all(share >= align for share in shares.values()):
            kept = sum(r * sum(shapes[n]) for n, r in ranks.items()) + sum(
                o * i for n, (o, i) in shapes.items() if n not in ranks
            )
            assert kept <= fraction * sum(o * i for o, i in shapes.values())
        else:  # the documented exception: a share below one step gets the smallest factorized form
            assert all(ranks[n] == align for n, share in shares.items() if share < align and n in ranks)
        smallest = sum(align * (o + i) if align <= max_useful_rank(o, i) else o * i for o, i in shapes.values())
        if fraction * sum(o * i for o, i in shapes.values()) < smallest:
            with pytest.raises(ValueError, match="smallest possible plan"):  # a global budget is refused instead
                allocate(tiny_llama, fraction, "uniform", align=align)
            continue
        plan = allocate(tiny_llama, fraction, "uniform", align=align)
        assert all(r % align == 0 for r in plan.ranks.values()) and plan.params <= plan.budget
    small = compress(tiny_llama, 0.5, align=align)
    assert small.model.lowrank_info.ranks == resolve_ranks(tiny_llama.model, 0.5, align)


def test_unaligned_rank_is_the_old_floor():
    assert fraction_rank(576, 576, 0.6, align=1) == int(0.6 * 576 * 576 // 1152)
    assert fraction_rank(576, 576, 0.6) == 168  # 172.8 rounded down to a multiple of 8
    assert aligned_rank(3.0, 64, 64, 8) == 8  # below one step: the smallest factorized form
    assert aligned_rank(3.0, 8, 8, 8) is None  # 8 is above break-even of an 8x8 weight: dense


def test_compress_keep_honours_align(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "small"
    assert main(["compress", "--model", str(tiny_bert_dir), "--keep", "0.5", "--align", "16", "--out", str(out)]) == 0
    ranks = load_info(out).ranks
    assert ranks and all(r % 16 == 0 for r in ranks.values())


def test_bad_align_is_refused(tiny_bert):
    with pytest.raises(ValueError, match="align must be a positive integer"):
        resolve_ranks(tiny_bert.model, 0.5, 0)
