"""ONNX and OpenVINO export and their backends, on tiny random-weight models (and the bundled model).

Exporting takes tens of seconds even for a tiny model (torch.export traces the graph), so one tiny VQA
export per format, made through the ``vilt export`` command, is shared by the fast tests; the other
heads, int8, other opsets and the bundled model are ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import BUNDLED, random_image, save_tiny

import vilt
from vilt.cli import main as vilt_main
from vilt.export import OnnxModel, OpenVinoModel, export_model, export_onnx
from vilt.export.graph import INPUT_NAMES, TASKS
from vilt.heads import MODEL_CLASSES

pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4
# padded image batches at sizes the export never traced (it traces a 40x24 batch with patch 8): the
# issue's 64x64, 96x160 and 384x576 at patch 32, scaled to patch 8
TINY_SIZES = [(16, 16), (24, 40), (96, 144)]


def padded_batch(
    config: vilt.ViltConfig,
    sizes: list[tuple[int, int]],
    text_lengths: list[int],
    num_images: int | None = None,
) -> dict[str, torch.Tensor]:
    """Random images of the given sizes padded to the largest, and texts of the given lengths padded."""
    generator = torch.Generator().manual_seed(0)
    batch, longest = len(sizes), max(text_lengths)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = () if num_images is None else (num_images,)
    pixel_values = torch.zeros(batch, *images, config.num_channels, height, width)
    pixel_mask = torch.zeros(batch, *images, height, width, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        pixel_values[i, ..., :h, :w] = torch.randn(*images, config.num_channels, h, w, generator=generator)
        pixel_mask[i, ..., :h, :w] = 1
    input_ids = torch.randint(1, config.vocab_size, (batch, longest), generator=generator)
    attention_mask = (torch.arange(longest)[None, :] < torch.tensor(text_lengths)[:, None]).long()
    return {
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch, longest, dtype=torch.long),
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
    }


def assert_matches_torch(
    export_dir: Path, model: torch.nn.Module, inputs: dict[str, torch.Tensor], exported: type = OnnxModel
) -> None:
    options = {"dtype": "float32"} if exported is OpenVinoModel else {}
    runner = exported.from_pretrained(export_dir, **options)
    with torch.no_grad():
        expected = model(**inputs)
    name = "pooler_output" if isinstance(model, vilt.ViltModel) else "logits"
    got = getattr(runner(**inputs), name)
    assert got.shape == getattr(expected, name).shape
    torch.testing.assert_close(got, getattr(expected, name), atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def tiny_vqa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint directory, its export made with the ``vilt export`` command)."""
    root = tmp_path_factory.mktemp("export")
    source = save_tiny(root / "vqa", "ViltForQuestionAnswering")
    output = root / "vqa-onnx"
    code = vilt_main(["export", "--model", str(source), "--format", "onnx", "--output", str(output)])
    assert code == 0
    return source, output


@pytest.fixture(scope="module")
def tiny_vqa_openvino(tiny_vqa: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint exported to OpenVINO with the ``vilt export`` command."""
    pytest.importorskip("openvino")
    output = tmp_path_factory.mktemp("export") / "vqa-openvino"
    assert (
        vilt_main(["export", "--model", str(tiny_vqa[0]), "--format", "openvino", "--output", str(output)])
        == 0
    )
    return output


# ----------------------------------------------------------------------------- the export itself


def test_cli_writes_graph_config_and_processor_files(tiny_vqa: tuple[Path, Path]) -> None:
    import onnx

    _, output = tiny_vqa
    assert {"model.onnx", "config.json", "preprocessor_config.json", "vocab.txt"} <= {
        p.name for p in output.iterdir()
    }
    graph = onnx.load(str(output / "model.onnx"))
    assert [i.name for i in graph.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.graph.output] == ["logits"]
    pixel_dims = graph.graph.input[3].type.tensor_type.shape.dim
    assert pixel_dims[1].dim_value == 3
    assert all(pixel_dims[i].dim_param for i in (0, 2, 3))  # batch, height and width are dynamic
    assert vilt.ViltConfig.from_pretrained(output).architectures == ["ViltForQuestionAnswering"]
    vilt.ViltProcessor.from_pretrained(output)  # the processor files load


@pytest.mark.parametrize(
    "sizes,text_lengths",
    [(TINY_SIZES, [3, 11, 7]), ([(16, 16)] * 2, [40, 2]), ([(32, 32)], [5])],
    ids=["mixed-sizes", "small-long-text", "one-unpadded"],
)
def test_onnxruntime_matches_torch_at_unseen_sizes(
    tiny_vqa: tuple[Path, Path], sizes: list[tuple[int, int]], text_lengths: list[int]
) -> None:
    source, output = tiny_vqa
    model = vilt.ViltForQuestionAnswering.from_pretrained(source)
    assert_matches_torch(output, model, padded_batch(model.config, sizes, text_lengths))


def test_pipeline_on_onnxruntime_answers_like_torch(tiny_vqa: tuple[Path, Path]) -> None:
    source, output = tiny_vqa
    images = [random_image(h, w, seed) for seed, (h, w) in enumerate([(24, 40), (64, 30), (32, 32)])]
    questions = ["what shape is it?", "is it red?", "what color is the big shape on the left?"]
    torch_vqa = vilt.pipeline("vqa", model=str(source), device="cpu", dtype="float32")
    onnx_vqa = vilt.pipeline("vqa", model=str(output), backend="onnxruntime")
    items = [{"image": i, "question": q} for i, q in zip(images, questions)]
    expected, got = torch_vqa(items, top_k=3), onnx_vqa(items, top_k=3)
    assert [[a["answer"] for a in row] for row in got] == [[a["answer"] for a in row] for row in expected]
    for row, expected_row in zip(got, expected):
        np.testing.assert_allclose([a["score"] for a in row], [a["score"] for a in expected_row], atol=1e-5)


def test_openvino_export_matches_torch(tiny_vqa: tuple[Path, Path], tiny_vqa_openvino: Path) -> None:
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "vocab.txt"} <= {
        p.name for p in tiny_vqa_openvino.iterdir()
    }
    assert not (tiny_vqa_openvino / "model.onnx").exists()  # the IR replaces the intermediate ONNX graph
    model = vilt.ViltForQuestionAnswering.from_pretrained(tiny_vqa[0])
    inputs = padded_batch(model.config, TINY_SIZES, [3, 11, 7])
    assert_matches_torch(tiny_vqa_openvino, model, inputs, OpenVinoModel)


def test_openvino_reads_the_onnx_export_too(tiny_vqa: tuple[Path, Path]) -> None:
    pytest.importorskip("openvino")
    source, output = tiny_vqa
    model = vilt.ViltForQuestionAnswering.from_pretrained(source)
    assert_matches_torch(output, model, padded_batch(model.config, TINY_SIZES, [3, 11, 7]), OpenVinoModel)


def test_pipeline_on_openvino_answers_like_torch(
    tiny_vqa: tuple[Path, Path], tiny_vqa_openvino: Path
) -> None:
    images = [random_image(h, w, seed) for seed, (h, w) in enumerate([(24, 40), (64, 30), (32, 32)])]
    items = [
        {"image": i, "question": q} for i, q in zip(images, ["what shape?", "is it red?", "what color?"])
    ]
    torch_vqa = vilt.pipeline("vqa", model=str(tiny_vqa[0]), device="cpu", dtype="float32")
    expected = torch_vqa(items, top_k=3)
    for dtype in ("float32", "bfloat16"):
        openvino_vqa = vilt.pipeline("vqa", model=str(tiny_vqa_openvino), backend="openvino", dtype=dtype)
        assert openvino_vqa.dtype == torch.float32  # the graph's inputs; bfloat16 is how the CPU computes
        got = openvino_vqa(items, top_k=3)
        tolerance = 1e-5 if dtype == "float32" else 3e-2
        for row, expected_row in zip(got, expected):
            np.testing.assert_allclose(
                [a["score"] for a in row], [a["score"] for a in expected_row], atol=tolerance
            )
            if dtype == "float32":
                assert [a["answer"] for a in row] == [a["answer"] for a in expected_row]


def test_backends_name_what_is_missing(tmp_path: Path, tiny_vqa: tuple[Path, Path]) -> None:
    with pytest.raises(
        ValueError, match="unknown backend 'tensorrt'; use one of torch, onnxruntime, openvino"
    ):
        vilt.pipeline("vqa", model=str(tiny_vqa[1]), backend="tensorrt")
    with pytest.raises(FileNotFoundError, match="has no openvino_model.xml or model.onnx.*--format openvino"):
        OpenVinoModel.from_pretrained(tiny_vqa[0])
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(tiny_vqa[0], tmp_path / "out", format="tflite")


# ----------------------------------------------------------------------------- runtime input checks


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda b: {
                **b,
                "pixel_values": b["pixel_values"][..., :20],
                "pixel_mask": b["pixel_mask"][..., :20],
            },
            "multiples of the 8-pixel patch",
        ),
        (lambda b: {**b, "input_ids": torch.ones(1, 41, dtype=torch.long)}, "at most 40"),
        (lambda b: {**b, "pixel_mask": torch.zeros_like(b["pixel_mask"])}, "no patch of image"),
        (lambda b: {**b, "attention_mask": b["attention_mask"][:, :2]}, "attention_mask must have shape"),
        (lambda b: {**b, "pixel_values": b["pixel_values"][0]}, "pixel_values must have shape"),
        (lambda b: {**b, "input_ids": None}, "pass input_ids"),
    ],
    ids=["size-not-multiple", "text-too-long", "empty-image", "mask-shape", "3d-pixels", "no-text"],
)
def test_runtime_rejects_bad_inputs(tiny_vqa: tuple[Path, Path], change, message: str) -> None:  # type: ignore[no-untyped-def]
    _, output = tiny_vqa
    model = OnnxModel.from_pretrained(output)
    batch = padded_batch(model.config, [(16, 24)], [4])
    inputs = change(batch)
    with pytest.raises(ValueError, match=message):
        model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_mask")})


def test_runtime_defaults_masks_and_accepts_numpy(tiny_vqa: tuple[Path, Path]) -> None:
    source, output = tiny_vqa
    model = vilt.ViltForQuestionAnswering.from_pretrained(source)
    batch = padded_batch(model.config, [(16, 24), (16, 24)], [6, 6])
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
    got = OnnxModel.from_pretrained(output)(
        input_ids=batch["input_ids"].numpy(), pixel_values=batch["pixel_values"].numpy()
    ).logits
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_runtime_needs_an_exported_directory(tmp_path: Path) -> None:
    source = save_tiny(tmp_path / "vqa", "ViltForQuestionAnswering")
    with pytest.raises(FileNotFoundError, match="has no model.onnx.*vilt export"):
        OnnxModel.from_pretrained(source)


# ----------------------------------------------------------------------------- errors before exporting


@pytest.mark.parametrize("opset", [16, 23, "18"])
def test_unsupported_opset(tmp_path: Path, opset: object) -> None:
    with pytest.raises(ValueError, match=r"opset .* is not supported; choose 17\.\.22"):
        export_onnx(save_tiny(tmp_path / "m", "ViltForQuestionAnswering"), tmp_path / "out", opset=opset)  # type: ignore[arg-type]


def test_unknown_task_and_quantization(tmp_path: Path) -> None:
    source = save_tiny(tmp_path / "m", "ViltForQuestionAnswering")
    with pytest.raises(ValueError, match="unknown task 'caption'"):
        export_onnx(source, tmp_path / "out", task="caption")
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        export_onnx(source, tmp_path / "out", quantize="int4")


def test_model_without_the_requested_head(tmp_path: Path) -> None:
    source = save_tiny(tmp_path / "mlm", "ViltForMaskedLM")
    with pytest.raises(ValueError, match="has no vqa head: the ViltForQuestionAnswering weights classifier"):
        export_onnx(source, tmp_path / "out", task="vqa")
    with pytest.raises(ValueError, match="is a ViltForMaskedLM, which has no itm head"):
        export_onnx(vilt.ViltForMaskedLM.from_pretrained(source), tmp_path / "out", task="itm")
    assert not (tmp_path / "out").exists()


def test_existing_output_directory_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny(tmp_path / "m", "ViltForQuestionAnswering")
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not empty; pass --force"):
        export_onnx(source, output)
    code = vilt_main(["export", "--model", str(source), "--format", "onnx", "--output", str(output)])
    assert code == 2
    assert "vilt export: error:" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_cli_rejects_unknown_task_and_opset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny(tmp_path / "m", "ViltForQuestionAnswering")
    code = vilt_main(["export", "--model", str(source), "--output", str(tmp_path / "o"), "--opset", "12"])
    assert code == 2
    assert "opset 12 is not supported" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vilt_main(["export", "--model", str(source), "--output", str(tmp_path / "o"), "--task", "caption"])


# ----------------------------------------------------------------------------- slow: every head, int8, opsets


@pytest.mark.slow
@pytest.mark.parametrize("task", [None, *TASKS])
def test_every_head_matches_torch(tmp_path: Path, task: str | None) -> None:
    architecture = TASKS[task] if task else "ViltModel"
    source = save_tiny(tmp_path / "m", architecture)
    result = export_onnx(source, tmp_path / "onnx", task=task)
    assert result.architecture == architecture and result.max_abs_diff <= TOLERANCE
    model = MODEL_CLASSES[architecture].from_pretrained(source)
    num_images = model.config.num_images if task == "nlvr2" else None
    inputs = padded_batch(model.config, TINY_SIZES, [3, 11, 7], num_images)
    assert_matches_torch(tmp_path / "onnx", model, inputs)


@pytest.mark.slow
def test_int8_is_smaller_and_close(tmp_path: Path) -> None:
    source = save_tiny(tmp_path / "m", "ViltForQuestionAnswering")
    fp32 = export_onnx(source, tmp_path / "fp32")
    int8 = export_onnx(source, tmp_path / "int8", quantize="int8")
    assert int8.quantize == "int8" and int8.size_bytes < 0.5 * fp32.size_bytes
    # quantized, but still the same model: 7-bit weights per channel and 8-bit activations round each
    # product by ~1%, and the tiny model's logits (within about +-3) move by ~0.09. The integer sums
    # cannot saturate (reduce_range), so that holds on every CPU class; 0.15 leaves room for rounding order
    assert 0 < int8.max_abs_diff < 0.15


@pytest.mark.slow
def test_openvino_int8_is_smaller_and_close(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    source = save_tiny(tmp_path / "m", "ViltForQuestionAnswering")
    fp32 = export_model(source, tmp_path / "fp32", format="openvino")
    int8 = export_model(source, tmp_path / "int8", format="openvino", quantize="int8")
    assert int8.quantize == "int8" and int8.size_bytes < 0.5 * fp32.size_bytes
    # int8 weights (asymmetric, per channel) decompressed to float: ~0.4% per weight, the tiny model's
    # logits move by ~0.06; the computation is float, the same on every CPU class up to rounding order
    assert fp32.max_abs_diff <= TOLERANCE and 0 < int8.max_abs_diff < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("opset", [17, 22])
def test_opset_range_ends(tmp_path: Path, opset: int) -> None:
    import onnx

    source = save_tiny(tmp_path / "m", "ViltForQuestionAnswering")
    result = export_onnx(source, tmp_path / "onnx", opset=opset)
    graph = onnx.load(str(result.path))
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == opset
    model = vilt.ViltForQuestionAnswering.from_pretrained(source)
    assert_matches_torch(tmp_path / "onnx", model, padded_batch(model.config, TINY_SIZES, [3, 11, 7]))


@pytest.mark.slow
def test_optimized_instance_exports_and_stays_untouched(tmp_path: Path) -> None:
    model = vilt.ViltForImageTextMatching.from_pretrained(
        save_tiny(tmp_path / "m", "ViltForImageTextMatching")
    )
    model.optimize_for_inference().train().to(torch.bfloat16)  # the export traces the plain layers, in fp32
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "old.txt").write_text("old")
    export_onnx(model, tmp_path / "onnx", force=True, processor=vilt.ViltProcessor())
    assert model.training and model.dtype == torch.bfloat16
    assert (tmp_path / "onnx" / "vocab.txt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not (BUNDLED / "config.json").is_file(), reason="the bundled easy-VQA model is not built yet"
)
def test_bundled_model_matches_torch(tmp_path: Path) -> None:
    export_onnx(BUNDLED, tmp_path / "onnx")
    model = vilt.ViltForQuestionAnswering.from_pretrained(BUNDLED, torch_dtype=torch.float32)
    p = model.config.patch_size
    sizes = [(2 * p, 2 * p), (3 * p, 5 * p), (12 * p, 18 * p)]  # 64x64, 96x160, 384x576 at patch 32
    assert_matches_torch(tmp_path / "onnx", model, padded_batch(model.config, sizes, [4, 12, 9]))
