"""Word heatmaps: IPOT, attention rollout, word grouping, the grid mapping, drawing, and (with the
bundled model) that the heat of the word naming an easy-VQA shape lies on the shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import BUNDLED, random_image, save_tiny

import vilt
from vilt.explain import (
    _min_max,
    _token_patch_scores,
    _words,
    _z_clamped,
    attention_rollout,
    draw,
    explain,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_rollout_of_identity_attention_is_identity_and_rows_sum_to_one() -> None:
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout((eye, eye)), torch.eye(5))
    random = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(1)).softmax(-1)
    torch.testing.assert_close(attention_rollout((random, random)).sum(-1), torch.ones(5))


def test_word_pieces_are_grouped_into_words() -> None:
    assert _words(["is", "the", "tri", "##ang", "##le", "red", "?"]) == [
        ("is", [0]),
        ("the", [1]),
        ("triangle", [2, 3, 4]),
        ("red", [5]),
        ("?", [6]),
    ]


def test_ipot_scaling_keeps_only_clearly_hot_patches() -> None:
    grid = torch.zeros(1, 4, 4)
    grid[0, 1, 2] = 10.0
    heat = _z_clamped(grid)
    assert float(heat.max()) == 1.0 and float(heat[0, 1, 2]) == 1.0
    assert float(heat.sum()) == 1.0  # every other patch is below mean + 1 std


def test_rollout_scaling_spans_zero_to_one() -> None:
    grid = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])
    torch.testing.assert_close(_min_max(grid), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))


def test_ipot_heat_lands_on_the_patch_that_matches_the_word() -> None:
    """A fake encoder output: text token 2 has the features of patch 5, so its heat is highest there."""
    generator = torch.Generator().manual_seed(0)
    text_length, patches = 5, 9  # [CLS] w1 w2 w3 [SEP], then image [CLS] and a 3x3 grid
    hidden = torch.randn(1, text_length + 1 + patches, 16, generator=generator)
    hidden[0, 2] = hidden[0, text_length + 1 + 5] * 3.0
    out = SimpleNamespace(last_hidden_state=hidden, image_mask=torch.ones(1, 1 + patches, dtype=torch.long))
    scores = _token_patch_scores(out, text_length, "ipot")  # (3 words, 9 patches)
    assert scores.shape == (3, 9)
    # each token ships 1/3 of the mass and each patch takes 1/9, so the token spreads over 3 patches
    assert float(scores[1, 5]) == pytest.approx(float(scores[1].max()))
    assert float(scores[1].sum()) == pytest.approx(1.0, abs=1e-3)  # rows are scaled by the 3 tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> vilt.pipelines.Pipeline:
    directory = save_tiny(tmp_path_factory.mktemp("explain") / "vqa", "ViltForQuestionAnswering")
    return vilt.pipeline("vqa", model=str(directory), device="cpu", dtype="float32")


@pytest.mark.parametrize("method", ["ipot", "rollout"])
def test_explain_gives_one_image_sized_map_per_word(tiny: vilt.pipelines.Pipeline, method: str) -> None:
    image = random_image(40, 56, 3)
    explanation = explain(tiny.model, tiny.processor, image, "is the triangle red?", method=method)
    assert explanation.words == ["is", "the", "triangle", "red", "?"]
    assert explanation.heatmaps.shape == (5, 40, 56)
    assert explanation.heatmaps.min() >= 0.0 and explanation.heatmaps.max() <= 1.0
    assert explanation.heatmap("Triangle") is not None
    assert explanation.image.size == (56, 40)
    with pytest.raises(KeyError, match="circle"):
        explanation.heatmap("circle")


def test_patch_heat_lands_on_its_pixels(
    tiny: vilt.pipelines.Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heat on the 8th image token (row 1, column 1 of the 4x6 grid of a 32x48 image) covers pixels 8-15."""

    def one_hot(out, text_length, method):  # type: ignore[no-untyped-def]
        scores = torch.zeros(text_length - 2, int(out.image_mask[0, 1:].sum()))
        scores[:, 7] = 1.0
        return scores

    monkeypatch.setattr(vilt.explain, "_token_patch_scores", one_hot)
    explanation = explain(tiny.model, tiny.processor, random_image(32, 48, 6), "a circle", method="rollout")
    expected = np.zeros((32, 48), dtype=np.float32)
    expected[8:16, 8:16] = 1.0
    np.testing.assert_array_equal(explanation.heatmap("circle"), expected)


def test_explain_rejects_bad_input(tiny: vilt.pipelines.Pipeline) -> None:
    image = random_image(32, 32, 4)
    with pytest.raises(ValueError, match="unknown method"):
        explain(tiny.model, tiny.processor, image, "a circle", method="gradcam")
    with pytest.raises(ValueError, match="empty"):
        explain(tiny.model, tiny.processor, image, "  ")


def test_draw_saves_one_panel_per_word(tiny: vilt.pipelines.Pipeline, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    explanation = explain(tiny.model, tiny.processor, random_image(32, 48, 5), "a blue square")
    draw(explanation, tmp_path / "words.png", columns=2)
    with Image.open(tmp_path / "words.png") as picture:
        assert picture.height > picture.width  # 4 panels in 2 columns: 2 rows


def _evaluation_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("eval_explain", EXAMPLES / "eval_explain.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_shape_pixels_are_found_from_the_image() -> None:
    pixels = Image.new("RGB", (64, 64), (230, 240, 250))
    pixels.paste((255, 0, 0), (10, 20, 30, 40))  # a 20x20 red square
    mask = _evaluation_script().shape_mask(pixels)
    assert mask.sum() == 400 and mask[25, 15] and not mask[0, 0]


@pytest.mark.skipif(not (BUNDLED / "config.json").is_file(), reason="bundled model not built yet")
def test_bundled_model_looks_at_the_named_shape() -> None:
    pytest.importorskip("easy_vqa")
    report = _evaluation_script().evaluate(num_images=20, methods=("rollout",))
    assert report["rollout"]["hits"] >= 18  # the full run (examples/eval_explain.py) uses 100 images
