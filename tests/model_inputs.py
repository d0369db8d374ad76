"""Random model inputs (padded texts and images), the reference's class names and a pickle that must
not be run, shared by the model tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

# (height, width) of the images of a padded batch: patch grids 4x4, 3x5, 5x2 and, for a size that is
# not a multiple of the patch, 4x5 (the patch mask samples the top-left pixel of each patch)
PADDED_SIZES = [(32, 32), (24, 40), (40, 16), (30, 37)]
TEXT_LENGTHS = [7, 5, 3, 7]


def text_inputs(vocab_size: int, lengths: list[int], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (1 on the first ``lengths[b]`` tokens of row b) and token_type_ids."""
    longest = max(lengths)
    batch = len(lengths)
    return {
        "input_ids": torch.randint(1, vocab_size, (batch, longest), generator=generator),
        "attention_mask": (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long(),
        "token_type_ids": torch.randint(0, 2, (batch, longest), generator=generator),
    }


def padded_images(
    sizes: list[tuple[int, int]], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values (B, 3, H, W), pixel_mask (B, H, W)): random images padded bottom-right with zeros to the
    largest height and width, as the image processor pads them."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    pixel_mask = torch.zeros(len(sizes), height, width, dtype=torch.long)
    for mask, (h, w) in zip(pixel_mask, sizes):
        mask[:h, :w] = 1
    pixel_values = torch.randn(len(sizes), 3, height, width, generator=generator) * pixel_mask[:, None]
    return pixel_values, pixel_mask


# every class the reference has (ViltForImageTextMatching is ours only)
REFERENCE_CLASSES = [
    "ViltModel",
    "ViltForQuestionAnswering",
    "ViltForMaskedLM",
    "ViltForImagesAndTextClassification",
    "ViltForImageAndTextRetrieval",
    "ViltForTokenClassification",
]


class WritesAFile:
    """A pickle payload that creates ``path`` when unpickled: loading it must be refused."""

    def __init__(self, path: object) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))
