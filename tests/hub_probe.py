"""Load models, configs and processors with vilt or transformers and print what came back, as JSON.

Run in a fresh process by the hub tests, so that the environment (``HF_ENDPOINT``, ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) is read as a user's process reads it::

    python hub_probe.py vilt|transformers '[{"what": "config", "repo": "dandelin/x", "kwargs": {}}, ...]'

Each call gives ``{"class": ..., ...a few values}`` or ``{"error": type name, "message": ...}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# what -> class name in both libraries
CLASSES = {
    "config": "ViltConfig",
    "model": "ViltForQuestionAnswering",
    "processor": "ViltProcessor",
    "image_processor": "ViltImageProcessor",
    "tokenizer": {"vilt": "ViltTokenizer", "transformers": "BertTokenizer"},
}


def summary(loaded: Any) -> dict[str, Any]:
    """A few values that tell two loads apart (and the same load by both libraries together)."""
    config = getattr(loaded, "config", loaded)
    out: dict[str, Any] = {"class": type(loaded).__name__}
    if hasattr(config, "hidden_size"):
        out["hidden_size"] = config.hidden_size
        out["labels"] = [config.id2label[i] for i in range(len(config.id2label))]
    if hasattr(loaded, "state_dict"):
        out["weight_sum"] = round(float(sum(t.double().sum() for t in loaded.state_dict().values())), 4)
    image_processor = getattr(loaded, "image_processor", loaded)
    if hasattr(image_processor, "size_divisor"):
        out["size"] = dict(image_processor.size)
    tokenizer = getattr(loaded, "tokenizer", loaded)
    if hasattr(tokenizer, "model_max_length"):
        out["model_max_length"] = tokenizer.model_max_length
    return out


def main(library: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    module = __import__(library)
    results = []
    for call in calls:
        name = CLASSES[call["what"]]
        cls = getattr(module, name if isinstance(name, str) else name[library])
        try:
            results.append(summary(cls.from_pretrained(call["repo"], **call.get("kwargs", {}))))
        except Exception as err:  # the test compares the failures of both libraries
            results.append({"error": type(err).__name__, "message": str(err)[:2000]})
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]))))
