"""Run the examples of the transformers ViLT documentation with transformers and with vilt, side by side.

The examples are read from the installed transformers' ``modeling_vilt.py`` (the ``>>>`` code of each
forward's docstring), and changed only where they cannot run here: each image URL becomes a local
photograph from scikit-image (``skimage.data``), opened with ``Image.open(path)`` instead of an HTTP
download. The vilt run also replaces ``from transformers import`` by ``from vilt import``.

Run in a fresh process by ``tests/test_hub_cache.py``, with ``HF_HUB_CACHE`` pointing at a cache laid
out like the published dandelin repos and ``HF_HUB_OFFLINE=1``::

    python doc_examples.py OUT.pt

writes ``{library: {example: {"stdout": str, "values": {name: tensor}}}}`` for both libraries.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path
from typing import Any

import torch

PHOTOS = Path(__import__("skimage.data").data.__file__).parent
# the documentation's image URLs -> local photographs of the same kind of scene
LOCAL_IMAGES = {
    "http://images.cocodataset.org/val2017/000000039769.jpg": PHOTOS / "chelsea.png",  # a cat
    "https://lil.nlp.cornell.edu/nlvr/exs/ex0_0.jpg": PHOTOS / "motorcycle_left.png",  # an NLVR2 pair
    "https://lil.nlp.cornell.edu/nlvr/exs/ex0_1.jpg": PHOTOS / "motorcycle_right.png",
}
_DOWNLOAD = re.compile(
    r'with httpx\.stream\("GET", (\w+)\) as response:\n\s+(\w+) = Image\.open\(BytesIO\(response\.read\(\)\)\)'
)


def documented_examples() -> dict[str, str]:
    """{model class: the code of its documentation example}, from the installed transformers."""
    from transformers.models.vilt import modeling_vilt

    source = Path(modeling_vilt.__file__).read_text(encoding="utf-8")
    examples = {}
    for block in re.findall(r"```python\n(.*?)```", source, re.S):
        lines = [line.strip() for line in block.splitlines()]
        code = "\n".join(line[4:] for line in lines if line.startswith((">>> ", "... ")))
        model_class = re.search(r"from transformers import ViltProcessor, (\w+)", code)
        if model_class:
            examples[model_class.group(1)] = code
    return examples


def localized(code: str) -> str:
    """The example with its images read from local files instead of downloaded."""
    for url, path in LOCAL_IMAGES.items():
        code = code.replace(f'"{url}"', repr(str(path)))
    code = _DOWNLOAD.sub(r"\2 = Image.open(\1)", code)
    if re.search(r"https?://", code):
        raise ValueError(f"an example still reads from the network:\n{code}")
    return code


def _tensors(name: str, value: Any) -> dict[str, torch.Tensor]:
    """The tensors a variable of an example holds: a tensor, a model output, a batch, a dict of scores."""
    if isinstance(value, torch.Tensor):
        return {name: value.detach()}
    if isinstance(value, dict) or hasattr(value, "keys"):
        found: dict[str, torch.Tensor] = {}
        for key in value.keys():
            item = value[key]
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                item = torch.tensor(float(item))
            found.update(_tensors(f"{name}.{key}", item))
        return found
    return {}


def run(code: str, library: str) -> dict[str, Any]:
    """Execute one example; its printed lines and every tensor its variables hold."""
    if library == "vilt":
        code = code.replace("from transformers import", "from vilt import")
    namespace: dict[str, Any] = {}
    stdout = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, f"<{library} example>", "exec"), namespace)
    values: dict[str, torch.Tensor] = {}
    for name, value in namespace.items():
        if not name.startswith("_") and name not in ("model", "processor"):
            values.update(_tensors(name, value))
    return {"stdout": stdout.getvalue(), "values": values}


def in_order(weights: torch.Tensor, num_samples: int, replacement: bool = False, **_: Any) -> torch.Tensor:
    """transformers picks the order of the image tokens at random on every forward (hf-vilt.md §3.4);
    taking them in row-major order, as vilt's eval does, makes every hidden state comparable."""
    return torch.arange(num_samples) % weights.numel()


def main(out: str) -> None:
    from transformers.models.vilt import modeling_vilt

    results: dict[str, dict[str, Any]] = {"transformers": {}, "vilt": {}}
    for model_class, code in documented_examples().items():
        code = localized(code)
        original = modeling_vilt.torch.multinomial
        modeling_vilt.torch.multinomial = in_order
        try:
            results["transformers"][model_class] = run(code, "transformers")
        finally:
            modeling_vilt.torch.multinomial = original
        results["vilt"][model_class] = run(code, "vilt")
    torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1])
