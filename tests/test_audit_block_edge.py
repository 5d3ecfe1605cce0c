"""The block-edge ratio in ``lumo_uti.metrics`` and in ``lumo audit`` (metric, rows, gate, report)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lumo_uti import metrics
from lumo_uti.audit import gates as gates_mod
from lumo_uti.audit.quality import DEFAULT_BLOCK, block_size, measure_images
from lumo_uti.audit.report import to_markdown
from lumo_uti.audit.results import AuditResult
from lumo_uti.audit.roundtrip import Roundtrip


def _smooth(side: int = 64, seed: int = 0) -> torch.Tensor:
    """``[1, 3, side, side]`` in [0, 1]: bicubic upsampling of a 9 x 9 grid (no structure with period 8)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, 9, 9, generator=g), size=side, mode="bicubic",
                         align_corners=False).clamp(0, 1)


def _blocky(image: torch.Tensor, block: int) -> torch.Tensor:
    """Each ``block x block`` tile replaced by its mean (a planted block grid), plus faint noise inside."""
    g = torch.Generator().manual_seed(1)
    flat = F.interpolate(F.avg_pool2d(image, block), scale_factor=block, mode="nearest")
    return (flat + 0.01 * torch.randn(flat.shape, generator=g)).clamp(0, 1)


def test_smooth_image_is_about_one_and_a_planted_grid_is_clearly_more():
    smooth = _smooth()
    assert 0.8 < metrics.block_edge_ratio(smooth) < 1.25
    blocky = _blocky(smooth, 8)
    assert metrics.block_edge_ratio(blocky) > 3
    # The same grid moved off the 8-pixel lines: the edges now fall inside blocks.
    assert metrics.block_edge_ratio(torch.roll(blocky, (4, 4), dims=(2, 3))) < 1
    # A 4-pixel grid is seen on the 4-pixel grid, and only faintly on the 8-pixel one (half its edges are inside).
    four = _blocky(smooth, 4)
    assert metrics.block_edge_ratio(four, 4) > 3
    assert metrics.block_edge_ratio(four, 4) > 1.5 * metrics.block_edge_ratio(four, 8)
    # Scale-free and dtype-independent (computed in float64).
    assert metrics.block_edge_ratio(blocky * 255) == pytest.approx(metrics.block_edge_ratio(blocky), rel=1e-6)
    assert metrics.block_edge_ratio(blocky.float()) == pytest.approx(metrics.block_edge_ratio(blocky.double()),
                                                                     rel=1e-6)


def test_the_codec_module_re_exports_the_same_function():
    from lumo_model.codec import image_quality

    assert image_quality.block_edge_ratio is metrics.block_edge_ratio
    assert image_quality.LUMA == metrics.LUMA


@pytest.mark.parametrize("bad, patch, error, match", [
    (torch.rand(3, 64, 64), 8, ValueError, r"expected images \[B, 3, H, W\]"),
    (torch.rand(1, 1, 64, 64), 8, ValueError, r"expected images \[B, 3, H, W\]"),
    (torch.rand(0, 3, 64, 64), 8, ValueError, "at least one image"),
    (torch.rand(1, 3, 8, 64), 8, ValueError, "at least 16 pixels"),
    (torch.rand(1, 3, 64, 64), 1, ValueError, "patch >= 2"),
    (torch.rand(1, 3, 64, 64), 8.0, TypeError, "integer patch"),
    (torch.rand(1, 3, 64, 64, dtype=torch.cfloat), 8, TypeError, "real tensor"),
])
def test_bad_input_is_an_error_that_names_it(bad, patch, error, match):
    with pytest.raises(error, match=match):
        metrics.block_edge_ratio(bad, patch)


def test_block_size_is_the_codec_downsample_factor():
    assert block_size({"model_size": [256, 128], "code_shape": [16, 32]}) == 8
    assert block_size({"model_size": [8, 8], "code_shape": [2, 4, 4]}) == 2  # layered codes [L, H', W']
    assert block_size({"model_size": [30, 30], "code_shape": [4, 4]}) == DEFAULT_BLOCK  # not a whole factor
    assert block_size({"model_size": [64, 32], "code_shape": [4, 4]}) == DEFAULT_BLOCK  # not square
    assert block_size({}) == DEFAULT_BLOCK


def _trip(name: str, reference: torch.Tensor, reconstruction: torch.Tensor, block: int) -> Roundtrip:
    h, w = reference.shape[-2:]
    codes = torch.zeros(h // block, w // block, dtype=torch.int64)
    info = {"input_size": [w, h], "model_size": [w, h], "code_shape": list(codes.shape)}
    return Roundtrip(name, None, reference, codes, reconstruction, reconstruction, info)


def test_audit_rows_summary_gate_and_report_carry_the_ratio():
    photos = [_smooth(64, seed)[0].double() for seed in (2, 3)]
    trips = [_trip(f"p{i}.png", x, _blocky(x[None], 8)[0], 8) for i, x in enumerate(photos)]
    values, rows, _ = measure_images(trips, codebook_size=4)
    per_image = [metrics.block_edge_ratio(rt.reconstruction[None], 8) for rt in trips]
    assert [r["block_edge_ratio"] for r in rows] == pytest.approx(per_image)
    assert values["image.block_edge_ratio"] == pytest.approx(sum(per_image) / 2)
    assert values["image.block_edge_ratio"] > 3
    assert all(0.8 < r["block_edge_ratio_reference"] < 1.25 and r["block_edge_px"] == 8 for r in rows)
    assert set(values) == {m for m in gates_mod.GATE_METRICS if m.startswith("image.")}

    # The grid follows the codec's factor: a 4-pixel codec's grid is measured at 4.
    four = _trip("q.png", photos[0], _blocky(photos[0][None], 4)[0], 4)
    (row,) = measure_images([four], codebook_size=4)[1]
    assert row["block_edge_px"] == 4
    assert row["block_edge_ratio"] == pytest.approx(metrics.block_edge_ratio(four.reconstruction[None], 4))

    # A lower-is-better gate: --update-gates writes a max above today's value; a worse grid fails it.
    gates = gates_mod.gates_from_metrics(values)
    bound = gates.gates["image.block_edge_ratio"]["max"]
    assert values["image.block_edge_ratio"] < bound <= 1.1 * values["image.block_edge_ratio"] + 1e-4
    checks = {c.name: c for c in gates_mod.evaluate(gates, {"image.block_edge_ratio": bound * 1.5})}
    assert checks["image.block_edge_ratio"].verdict == "fail"

    result = AuditResult()
    result.metrics.update(values)
    result.samples["image"] = rows
    md = to_markdown(result)
    assert "| sample | psnr_db | ssim | block_edge_ratio | block_edge_ratio_reference |" in md
    assert f"{rows[0]['block_edge_ratio']:.4g}" in md


def test_images_too_small_for_two_blocks_have_no_ratio():
    tiny = torch.rand(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    trip = _trip("tiny.png", tiny, tiny, 8)
    trip.info["code_shape"] = [1, 1]  # factor 8: one block, no edge
    values, rows, _ = measure_images([trip], codebook_size=4)
    assert rows[0]["block_edge_ratio"] is None and rows[0]["block_edge_ratio_reference"] is None
    assert "image.block_edge_ratio" not in values
    gates = gates_mod.Gates({"image.block_edge_ratio": {"max": 1.5}})
    (check,) = [c for c in gates_mod.evaluate(gates, values) if c.name == "image.block_edge_ratio"]
    assert check.verdict == "skipped"
    result = AuditResult()
    result.samples["image"] = rows
    assert "| tiny.png |" in to_markdown(result) and "| – |" in to_markdown(result)
