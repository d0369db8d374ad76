"""Fine-tune a small ViLT VQA model on easy-VQA with ``transformers.Trainer``, vilt's classes in the place of
transformers' (the flow of transformers' VQA task guide, with ``from vilt import ...``), and report its
accuracy on the easy-VQA test split.

The model is new and CPU-friendly (a small config: 64x64 images in 16x16 patches, a 4x4 grid, 96 wide,
3 layers; the report gives the wall time). After
training, the saved folder is loaded back with vilt's and with transformers' ``ViltForQuestionAnswering``,
and both are evaluated too: the three accuracies must agree.

    pip install -e ".[test]"        # transformers, accelerate (Trainer's dependency) and easy-vqa
    OMP_NUM_THREADS=1 python examples/trainer_easy_vqa.py [--epochs 1] [--output-dir runs/trainer-easy-vqa]
        [--results results/trainer_easy_vqa.json] [--gradient-checkpointing]

The report (JSON, also printed) holds the accuracies, the training loss, the sizes and the wall time,
with the CPU and thread count it ran with (results/trainer_easy_vqa.json: the command above, on a shared
2-core machine busy with other work).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import easy_vqa
import torch
import transformers

from vilt import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor, ViltProcessor
from vilt.devices import cpu_name

logger = logging.getLogger("trainer_easy_vqa")

# the model: small enough to train on a laptop CPU in minutes
MODEL = {
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 384,
    "initializer_range": 0.08,  # a wider init than BERT's 0.02 grounds colours sooner from scratch
}


class EasyVQA(torch.utils.data.Dataset):
    """One split of easy-VQA as model inputs: each image preprocessed once, each question tokenised to a
    fixed length (so that Trainer's default collator stacks them), the answer as one-hot VQA scores."""

    def __init__(self, split: str, processor: ViltProcessor, answers: list[str], text_length: int) -> None:
        questions, answer_names, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
        paths = getattr(easy_vqa, f"get_{split}_image_paths")()
        ids = sorted(paths)
        images = processor.image_processor([paths[i] for i in ids], return_tensors="pt")
        self.pixel_values = dict(zip(ids, images["pixel_values"]))  # id -> (3, 64, 64)
        self.pixel_mask = dict(zip(ids, images["pixel_mask"]))  # id -> (64, 64)
        self.text = processor.tokenizer(
            questions, padding="max_length", max_length=text_length, truncation=True, return_tensors="pt"
        )  # each (N, text_length)
        self.image_ids = image_ids
        self.scores = torch.nn.functional.one_hot(
            torch.tensor([answers.index(a) for a in answer_names]), len(answers)
        ).float()  # (N, answers)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.image_ids[index]
        return {
            **{name: values[index] for name, values in self.text.items()},
            "pixel_values": self.pixel_values[image],
            "pixel_mask": self.pixel_mask[image],
            "labels": self.scores[index],
        }


def accuracy(model: torch.nn.Module, dataset: EasyVQA, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (argmax of the logits is the answer)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    correct = 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            labels = batch.pop("labels").argmax(dim=-1)
            correct += int((model(**batch).logits.argmax(dim=-1) == labels).sum())
    return correct / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.2e-3)
    parser.add_argument("--output-dir", default="runs/trainer-easy-vqa")
    parser.add_argument("--results", default="results/trainer_easy_vqa.json")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    transformers.logging.set_verbosity_warning()
    start = time.time()

    answers = easy_vqa.get_answers()
    processor = ViltProcessor(
        image_processor=ViltImageProcessor(size=MODEL["image_size"], size_divisor=MODEL["patch_size"])
    )
    text_length = 13  # the longest easy-VQA question, with [CLS] and [SEP]
    train, test = (EasyVQA(split, processor, answers, text_length) for split in ("train", "test"))
    logger.info(
        "easy-VQA: %d training and %d test questions, %d answers", len(train), len(test), len(answers)
    )

    config = ViltConfig(**MODEL, vocab_size=processor.tokenizer.vocab_size, id2label=dict(enumerate(answers)))
    model = ViltForQuestionAnswering(config)
    training_args = transformers.TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        warmup_steps=0.05,  # a fraction of the steps
        weight_decay=0.01,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        gradient_checkpointing=args.gradient_checkpointing,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=train)
    result = trainer.train()

    # Trainer writes config.json only for transformers' own model classes: add it (docs/dropin.md)
    trainer.save_model(args.output_dir)
    model.config.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    accuracies = {"trained model": accuracy(model, test)}
    for name, library in (("reloaded with vilt", None), ("reloaded with transformers", transformers)):
        cls = ViltForQuestionAnswering if library is None else library.ViltForQuestionAnswering
        torch.manual_seed(0)  # transformers shuffles the image tokens; the answer does not depend on it
        accuracies[name] = accuracy(cls.from_pretrained(args.output_dir), test)

    report = {
        "test_accuracy": accuracies,
        "training_loss": result.training_loss,
        "epochs": args.epochs,
        "steps": result.global_step,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "gradient_checkpointing": args.gradient_checkpointing,
        "train_questions": len(train),
        "test_questions": len(test),
        "model": {**MODEL, "parameters": model.num_parameters()},
        "wall_seconds": round(time.time() - start, 1),
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text + "\n")


if __name__ == "__main__":
    main()
