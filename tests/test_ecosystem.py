"""The tools that take a transformers model take vilt's: ``transformers.Trainer`` (with gradient
checkpointing), PEFT LoRA, accelerate's ``prepare``, ``torch.compile``. Each flow runs with vilt's classes
and with transformers' classes from the same weights, and both must give the same numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from model_inputs import padded_images, text_inputs
from tiny import MODEL_TESTS, SMALL_VOCAB, tiny_kwargs

import vilt

pytestmark = pytest.mark.usefixtures("one_thread")

QA = "ViltForQuestionAnswering"
LOSS_TOL = 1e-4  # a few optimizer steps apart, float rounding of two implementations


def examples(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """VQA examples as a dataset yields them (the default collator stacks them): text, one 32x32 image,
    soft scores over the 3 labels."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1, SMALL_VOCAB, (7,), generator=generator),
            "attention_mask": torch.ones(7, dtype=torch.long),
            "pixel_values": torch.randn(3, 32, 32, generator=generator),
            "pixel_mask": torch.ones(32, 32, dtype=torch.long),
            "labels": torch.rand(3, generator=generator),
        }
        for _ in range(count)
    ]


def padded_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    pixel_values, pixel_mask = padded_images([(32, 32), (24, 40), (40, 16)], generator)
    return {
        **text_inputs(SMALL_VOCAB, [7, 5, 3], generator),
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask,
    }


def twin_models(transformers: Any, name: str = QA, **changes: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random vilt model and transformers' model of the same class holding the same weights."""
    torch.manual_seed(0)
    ours = getattr(vilt, name)(vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS, **changes)))
    theirs = getattr(transformers, name)(transformers.ViltConfig(**tiny_kwargs(**MODEL_TESTS, **changes)))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(0)  # the reference samples its patch order
    with torch.no_grad():
        return model.eval()(**batch).logits


def training_arguments(transformers: Any, directory: Path, **options: Any) -> Any:
    return transformers.TrainingArguments(
        str(directory),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **options,
    )


# ----------------------------------------------------------------------------- transformers.Trainer


@pytest.mark.slow
@pytest.mark.reference
def test_trainer_with_gradient_checkpointing_trains_saves_and_both_libraries_load(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    runs = {}
    for name, model in zip(("vilt", "transformers"), twin_models(transformers)):
        args = training_arguments(transformers, tmp_path / name, gradient_checkpointing=True, logging_steps=1)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=examples(16, 0), eval_dataset=examples(8, 1)
        )
        losses = [trainer.train().training_loss, trainer.evaluate()["eval_loss"]]
        assert model.is_activation_checkpointing
        trainer.save_model(str(tmp_path / name))
        runs[name] = (model, losses)
    (ours, our_losses), (theirs, their_losses) = runs["vilt"], runs["transformers"]
    assert our_losses == pytest.approx(their_losses, abs=LOSS_TOL)

    # Trainer writes config.json only for transformers' own PreTrainedModel subclasses; for any other
    # model (vilt's) it writes the weights, and the config is one call away (docs/dropin.md)
    saved = tmp_path / "vilt"
    assert (saved / "model.safetensors").is_file() and not (saved / "config.json").exists()
    ours.config.save_pretrained(saved)
    batch = padded_batch()
    trained = logits_of(ours, batch)
    assert (logits_of(theirs, batch) - trained).abs().max() <= 1e-4  # the two trainings agree
    for library in (vilt, transformers):
        reloaded = getattr(library, QA).from_pretrained(saved)
        assert (logits_of(reloaded, batch) - trained).abs().max() <= 1e-5, library.__name__


# ----------------------------------------------------------------------------- PEFT LoRA


@pytest.mark.slow
@pytest.mark.reference
def test_peft_lora_trains_saves_loads_and_merges_as_with_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    batch = padded_batch()
    results = {}
    for name, base in zip(("vilt", "transformers"), twin_models(transformers)):
        original = {k: v.clone() for k, v in base.state_dict().items()}
        lora = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
        )
        model = peft.get_peft_model(base, lora)
        trainable, total = model.get_nb_trainable_parameters()
        trainer = transformers.Trainer(
            model=model, args=training_arguments(transformers, tmp_path / name), train_dataset=examples(16, 0)
        )
        loss = trainer.train().training_loss
        trainer.save_model(str(tmp_path / name))
        assert (tmp_path / name / "adapter_model.safetensors").is_file()
        adapted = logits_of(model, batch)

        fresh = type(base)(type(base.config)(**tiny_kwargs(**MODEL_TESTS)))
        fresh.load_state_dict(original)
        loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / name))
        assert (logits_of(loaded, batch) - adapted).abs().max() <= 1e-6
        merged = loaded.merge_and_unload()
        assert type(merged) is type(base) and not [n for n, _ in merged.named_modules() if "lora" in n]
        assert (logits_of(merged, batch) - adapted).abs().max() <= 1e-5
        results[name] = (trainable, total, loss, adapted)
    (*ours, our_logits), (*theirs, their_logits) = results["vilt"], results["transformers"]
    assert ours[:2] == theirs[:2]  # the same parameters were adapted
    assert ours[2] == pytest.approx(theirs[2], abs=LOSS_TOL)
    assert (our_logits - their_logits).abs().max() <= 1e-4


# ----------------------------------------------------------------------------- accelerate


@pytest.mark.slow
@pytest.mark.reference
def test_accelerate_prepare_trains_as_with_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    accelerate = pytest.importorskip("accelerate")
    losses = {}
    for name, model in zip(("vilt", "transformers"), twin_models(transformers)):
        accelerator = accelerate.Accelerator(cpu=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(examples(16, 0), batch_size=4)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        losses[name] = []
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses[name].append(loss.item())
        assert type(accelerator.unwrap_model(model)).__name__ == QA
        accelerator.save_model(model, str(tmp_path / name))
        assert (tmp_path / name / "model.safetensors").is_file()
    assert losses["vilt"] == pytest.approx(losses["transformers"], abs=LOSS_TOL)


# ----------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_torch_compile_in_eval_has_no_graph_break_and_keeps_the_outputs() -> None:
    """Padded batch included: while compiling, no value decides the graph (padding stays in, masked)."""
    torch.manual_seed(0)
    model = vilt.ViltForQuestionAnswering(vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS))).eval()
    batch = padded_batch()
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert (compiled(**batch).logits - model(**batch).logits).abs().max() <= 1e-5
        unpadded = {k: v[:1] for k, v in batch.items()}
        assert (compiled(**unpadded).logits - model(**unpadded).logits).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- attention implementation


@pytest.mark.reference
def test_attn_implementation_is_chosen_as_transformers_spells_it(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS))
    model = vilt.ViltForQuestionAnswering(config)
    assert config._attn_implementation == "sdpa" and model._supports_sdpa
    model.save_pretrained(tmp_path)
    batch = padded_batch()
    sdpa = logits_of(model, batch)
    eager = vilt.ViltForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == eager.vilt.attn_implementation == "eager"
    assert (logits_of(eager, batch) - sdpa).abs().max() <= 1e-5
    built = vilt.ViltForQuestionAnswering._from_config(
        vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS)), attn_implementation="eager"
    )
    assert built.config._attn_implementation == "eager"
    built.set_attn_implementation("sdpa")
    assert built.vilt.attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="'sdpa' or 'eager', got 'flash_attention_2'"):
        vilt.ViltForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="flash_attention_2")
    reference = transformers.ViltForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager")
    assert (logits_of(reference, batch) - sdpa).abs().max() <= 1e-5


def test_the_attention_mask_is_one_additive_form_for_both_kernels() -> None:
    """The explicit softmax and SDPA read the same (B, 1, 1, L) float bias: 0 attends, the lowest value masks."""
    from vilt.modeling import AttentionMask

    mask = torch.tensor([[1, 1, 0]])
    attention = AttentionMask.from_padding(mask, torch.float32, any_padding=True)
    assert attention.additive.dtype == torch.float32 and attention.additive.shape == (1, 1, 1, 3)
    assert attention.additive[0, 0, 0].tolist() == [0.0, 0.0, torch.finfo(torch.float32).min]
    assert AttentionMask.from_padding(mask, torch.float32, any_padding=False).additive is None


def test_one_function_decides_the_explicit_softmax(monkeypatch: pytest.MonkeyPatch) -> None:
    from vilt.modeling import EXPLICIT_TRAINING_MAX_LENGTH, explicit_softmax

    layer = torch.nn.Linear(2, 2)
    x = torch.zeros(1, 8, 2)
    assert explicit_softmax("eager", x, layer, probabilities_needed=False)
    assert explicit_softmax("sdpa", x, layer, probabilities_needed=True)
    assert explicit_softmax("sdpa", x, layer, probabilities_needed=False)  # a CPU backward follows
    with torch.no_grad():
        assert not explicit_softmax("sdpa", x, layer, probabilities_needed=False)
    layer.requires_grad_(False)
    assert not explicit_softmax("sdpa", x, layer, probabilities_needed=False)  # nothing to train
    assert explicit_softmax("sdpa", x.requires_grad_(), layer, probabilities_needed=False)
    long = torch.zeros(1, EXPLICIT_TRAINING_MAX_LENGTH + 1, 2, requires_grad=True)
    assert not explicit_softmax("sdpa", long, layer, probabilities_needed=False)


# ----------------------------------------------------------------------------- the PreTrainedModel surface


@pytest.mark.reference
def test_gradient_checkpointing_switches_as_transformers_does() -> None:
    transformers = pytest.importorskip("transformers")
    for model in twin_models(transformers):
        assert model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        assert model.is_gradient_checkpointing
        model.train()
        batch = {**padded_batch(), "labels": torch.rand(3, 3)}
        model(**batch).loss.backward()  # reentrant: the embeddings' output was made to require grads
        assert model.vilt.embeddings.text_embeddings.word_embeddings.weight.grad is not None
        model.gradient_checkpointing_disable()
        assert not model.is_gradient_checkpointing
    legacy = vilt.ViltConfig(
        **tiny_kwargs(**MODEL_TESTS), gradient_checkpointing=True
    )  # the v4 config switch
    model = vilt.ViltForQuestionAnswering(legacy)
    assert model.is_gradient_checkpointing and "gradient_checkpointing" not in model.config.to_dict()


def test_gradient_checkpointing_every_n_layers_and_offloaded_keeps_the_gradients() -> None:
    """Trainer passes ``every_n_layers`` and ``offload``: layers 0, n, 2n... are checkpointed, their saved
    tensors kept in host memory when offloaded; the gradients stay those of a plain backward."""
    torch.manual_seed(0)
    model = vilt.ViltForQuestionAnswering(vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS))).train()
    batch = {**padded_batch(), "labels": torch.rand(3, 3)}

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable(every_n_layers=2, offload=True)
    assert [layer.gradient_checkpointing for layer in model.vilt.encoder.layer] == [True, False]
    for name, grad in gradients().items():
        assert (grad - plain[name]).abs().max() <= 1e-6, name
    with pytest.raises(ValueError, match="every_n_layers"):
        model.gradient_checkpointing_enable(every_n_layers=0)


@pytest.mark.reference
def test_the_model_attributes_tools_read_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    for name in ("ViltModel", QA, "ViltForMaskedLM", "ViltForTokenClassification"):
        ours, theirs = twin_models(
            transformers, name, tie_word_embeddings=True
        )  # transformers v5 always ties
        assert ours.main_input_name == theirs.main_input_name == "input_ids"
        assert ours.can_generate() is theirs.can_generate() is False
        assert ours.base_model_prefix == theirs.base_model_prefix
        assert type(ours.base_model).__name__ == type(theirs.base_model).__name__
        for only_trainable in (False, True):
            for exclude_embeddings in (False, True):
                options = {"only_trainable": only_trainable, "exclude_embeddings": exclude_embeddings}
                assert ours.num_parameters(**options) == theirs.num_parameters(**options), (name, options)
        assert (ours.get_output_embeddings() is None) == (theirs.get_output_embeddings() is None), name
        assert set(ours._keep_in_fp32_modules) == set(theirs._keep_in_fp32_modules) == set()
        assert dict(ours._tied_weights_keys or {}) == dict(theirs._tied_weights_keys or {}), name


@pytest.mark.reference
@pytest.mark.parametrize("name", ["ViltForMaskedLM", QA])
def test_resize_token_embeddings_as_transformers(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    ours, theirs = twin_models(transformers, name)
    old = ours.get_input_embeddings().weight.detach().clone()
    kept = SMALL_VOCAB
    for size, pad in ((SMALL_VOCAB + 10, None), (SMALL_VOCAB - 15, None), (SMALL_VOCAB, 64)):
        embeddings = ours.resize_token_embeddings(size, pad_to_multiple_of=pad)
        reference = theirs.resize_token_embeddings(size, pad_to_multiple_of=pad)
        assert embeddings is ours.get_input_embeddings() and embeddings.weight.shape == reference.weight.shape
        assert ours.config.vocab_size == theirs.config.vocab_size == embeddings.weight.shape[0]
        kept = min(kept, size)  # the rows that were never dropped
        assert torch.equal(embeddings.weight[:kept], old[:kept])
        if name == "ViltForMaskedLM":
            decoder, their_decoder = ours.get_output_embeddings(), theirs.get_output_embeddings()
            assert (
                decoder.weight.shape == their_decoder.weight.shape
                and decoder.bias.shape == their_decoder.bias.shape
            )
    ours, _ = twin_models(transformers, name)
    ours.resize_token_embeddings(SMALL_VOCAB + 10)
    added = ours.get_input_embeddings().weight[SMALL_VOCAB:]
    assert torch.allclose(added, old.mean(dim=0).expand_as(added), atol=1e-6)  # the mean of the old rows
    with pytest.raises(ValueError, match="multiple of `1.3`"):
        ours.resize_token_embeddings(SMALL_VOCAB, pad_to_multiple_of=1.3)
    batch = padded_batch()
    batch["input_ids"][:, 0] = SMALL_VOCAB + 9  # a new token
    ours.eval()(**batch)


def test_enable_input_require_grads_makes_the_embeddings_output_require_grads() -> None:
    model = vilt.ViltForQuestionAnswering(vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS))).requires_grad_(False)
    seen = []
    model.vilt.embeddings.text_embeddings.register_forward_hook(
        lambda m, i, out: seen.append(out.requires_grad)
    )
    model(**padded_batch())
    model.enable_input_require_grads()
    model(**padded_batch())
    model.disable_input_require_grads()
    model(**padded_batch())
    assert seen == [False, True, False]


@pytest.mark.reference
def test_init_weights_after_building_on_the_meta_device() -> None:
    """Built on the meta device, moved with to_empty and initialised: buffers as built on a CPU, zeros where
    the reference creates zeros, every parameter finite."""
    config = vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS))
    with torch.device("meta"):
        model = vilt.ViltForMaskedLM(config)
    model.to_empty(device="cpu")
    model.init_weights()
    built = vilt.ViltForMaskedLM(config)
    for (name, buffer), (_, expected) in zip(model.named_buffers(), built.named_buffers(), strict=True):
        assert torch.equal(buffer, expected), name
    assert not model.vilt.embeddings.cls_token.any() and not model.vilt.embeddings.position_embeddings.any()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta device context manager"):
        vilt.ViltForMaskedLM.from_pretrained(vilt.hub.BUNDLED)


def test_from_pretrained_with_a_state_dict_and_no_name() -> None:
    config = vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS))
    model = vilt.ViltForQuestionAnswering(config)
    loaded, info = vilt.ViltForQuestionAnswering.from_pretrained(
        None, config=config, state_dict=model.state_dict(), output_loading_info=True
    )
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="together with a model name"):
        vilt.ViltForQuestionAnswering.from_pretrained("bundled", state_dict=model.state_dict())
    with pytest.raises(ValueError, match="needs config="):
        vilt.ViltForQuestionAnswering.from_pretrained(None, state_dict=model.state_dict())


def test_save_pretrained_takes_the_trainers_arguments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = vilt.ViltForQuestionAnswering(vilt.ViltConfig(**tiny_kwargs(**MODEL_TESTS)))
    model.save_pretrained(tmp_path / "other", is_main_process=False)
    assert not (tmp_path / "other").exists()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path, state_dict=state)
    with caplog.at_level(logging.WARNING):
        loaded = vilt.ViltForQuestionAnswering.from_pretrained(tmp_path)
    assert not any(p.any() for p in loaded.parameters())
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [QA]
