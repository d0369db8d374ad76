"""Run every benchmark side by side with transformers and write benchmarks/RESULTS.md.

One command regenerates the whole file: ``python benchmarks/run_all.py`` (``--quick``: fewer repetitions;
``--parallel``: section 1 beside the others, for a machine too busy to run them in turn). The sections:

1. model forward (bench_forward.py), 2. end-to-end VQA on 64 photographs (bench_e2e.py),
3. a fine-tuning step (bench_train.py), 4. retrieval scoring (bench_retrieval.py),
5. peak memory of 2 and 3 (bench_memory.py), 6. optional speed features: torch.compile and int8
dynamic quantization against the default fast path (bench_options.py), 7. every backend (PyTorch,
onnxruntime, OpenVINO, int8) side by side (bench_backends.py), 8. the forward and end-to-end VQA with
the cores shared with a background load (bench_contention.py), then a profile of where our remaining
forward time goes (``torch.profiler``, bfloat16, batch 8 and 1), the kernel measurements behind the fast
path's choices (bench_kernels.py) and a summary against the targets of issues 7, 18 and 22. Timings are
medians of alternating repetitions; the machine's load average is recorded at the start and at the end.

The CPU model changes between machines, so each run also keeps its report in
``benchmarks/results/machines/<cpu>.md``, and RESULTS.md shows the summary of every machine type seen.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import bench_backends
import bench_contention
import bench_e2e
import bench_forward
import bench_kernels
import bench_memory
import bench_options
import bench_retrieval
import bench_train
import torch
from common import Section, forward_inputs, load_models, machine_info, model_dir, set_threads, table
from torch.profiler import ProfilerActivity, profile

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MACHINES = RESULTS.parent / "results" / "machines"  # one report per CPU model: <slug>.md
SECTIONS = (1, 2, 3, 4, 5, 6, 7, 8)  # section 9 holds the other benchmarks' own output files
PROFILE_TOP = 12

# (what, section, figure, target): the floor each figure must reach
TARGETS = (
    ("bf16 forward, batch 8, 384x384: speed vs reference bf16 (median of repeated runs)", 1, "bfloat16 batch 8 384x384: optimized / reference, median run", 1.5),
    ("bf16 forward, batch 8, 384x384: % of measured bf16 peak", 1, "bfloat16 batch 8 384x384: optimized % of peak", 50),
    ("fp32 forward, batch 8, 384x384: speed vs reference (ours as loaded)", 1, "float32 batch 8 384x384: ours / reference", 1.05),
    ("fp32 forward, batch 8, 384x384: speed vs reference (optimized, median of repeated runs)", 1, "float32 batch 8 384x384: optimized / reference, median run", 1.05),
    ("bf16 batch-1 latency, 384x384: speed vs reference bf16 (median of repeated runs)", 1, "bfloat16 batch 1 384x384: optimized / reference, median run", 2.0),
    ("end-to-end VQA, 64 photographs: ours (defaults) vs reference (defaults)", 2, "ours / reference", 4.0),
    ("fine-tuning step: ours vs reference, same AdamW", 3, "ours, same AdamW / reference", 1.3),
    ("fine-tuning step: ours with vilt train's fused AdamW vs reference", 3, "ours, fused AdamW / reference", 1.3),
    ("issue 18: fp32 forward, batch 8: ours as loaded vs reference", 1, "float32 batch 8 384x384: ours / reference", 1.8),
    ("issue 18: fp32 forward, batch 8: ours as loaded vs ours optimized (>= 0.97: within 3%)", 1, "float32 batch 8 384x384: as loaded / optimized", 0.97),
    ("issue 18: bf16 forward, batch 8: ours as loaded vs ours optimized (>= 0.97: within 3%)", 1, "bfloat16 batch 8 384x384: as loaded / optimized", 0.97),
    ("issue 18: bf16 forward, batch 8: ours vs OpenVINO bf16", 7, "bfloat16 batch 8: vilt / OpenVINO", 1.0),
    ("issue 18: bf16 forward, batch 1: ours vs OpenVINO bf16", 7, "bfloat16 batch 1: vilt / OpenVINO", 1.0),
    ("issue 18: bf16 batch 1 under contention: our ratio to the reference, loaded / quiet (>= 0.8: within 20%)", 8, "bf16 forward, batch 1: vilt (as loaded) loaded / quiet ratio", 0.8),
    ("issue 18: end-to-end VQA under contention: our ratio to the reference, loaded / quiet (>= 0.8)", 8, "end-to-end VQA, 64 photographs: vilt pipeline loaded / quiet ratio", 0.8),
    ("issue 22: fp32 forward, batch 1: ours as loaded vs our plain path (>= 0.97: never slower)", 7, "float32 batch 1: vilt as loaded / plain path", 0.97),
    ("issue 22: fp32 forward, batch 8: ours as loaded vs our plain path (>= 0.97: never slower)", 7, "float32 batch 8: vilt as loaded / plain path", 0.97),
    ("issue 22: fp32 forward, batch 1: ours as loaded vs reference", 7, "float32 batch 1: vilt (as loaded) / reference", 1.0),
    ("issue 22: fp32 forward, batch 8: ours as loaded vs reference", 7, "float32 batch 8: vilt (as loaded) / reference", 1.0),
    ("issue 22: int8 (dtype='int8') forward, batch 1: vs reference float32", 7, "float32 batch 1: vilt int8 / reference", 2.0),
    ("issue 22: int8 (dtype='int8') forward, batch 8: vs reference float32", 7, "float32 batch 8: vilt int8 / reference", 2.0),
)  # fmt: skip


def profile_rows(model: torch.nn.Module, batch: int) -> tuple[list[list[str]], float]:
    """Top operators of one forward at ``batch`` (after two warm-ups), and the profiled total in ms."""
    inputs = forward_inputs(batch, 384, 384, torch.bfloat16)
    with torch.inference_mode():
        for _ in range(2):
            model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**inputs)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        [
            f"`{e.key}`",
            f"{e.self_cpu_time_total / 1e3:.1f}",
            f"{100 * e.self_cpu_time_total / total:.1f}%",
            str(e.count),
        ]
        for e in events[:PROFILE_TOP]
    ]
    return rows, total / 1e3


def copy_bandwidth_gbs(megabytes: int = 256, repetitions: int = 5) -> float:
    """Measured memory bandwidth: bytes read plus written by a large tensor copy, per second (median)."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - start)
    return 2 * source.nbytes / sorted(times)[repetitions // 2] / 1e9


def profile_section() -> Section:
    """Top operators of our optimized bfloat16 forward at batch 8 and 1, by self CPU time, and the
    memory-bandwidth floor of batch 1 (every matrix-product weight is read once per forward)."""
    set_threads()
    model, _ = load_models(model_dir(), torch.bfloat16)
    model.optimize_for_inference()
    lines = ["## Where the remaining time goes (ours optimized, bfloat16, 384x384)", ""]
    totals = {}
    for batch in (8, 1):
        rows, total_ms = profile_rows(model, batch)
        totals[batch] = total_ms
        lines += [
            f"### Batch {batch}",
            "",
            f"`torch.profiler`, one forward after two warm-ups, top {PROFILE_TOP} operators by self CPU "
            f"time (total {total_ms:.0f} ms, profiler overhead included). `mkldnn::_linear_pointwise` is "
            "the oneDNN matrix product with its fused bias, GELU or residual add.",
            "",
            table(["operator", "self ms", "share", "calls"], rows),
            "",
        ]
    products = (torch.nn.Linear, torch.nn.Conv2d)  # the weights a forward reads in full
    weight_mb = sum(m.weight.nbytes for m in model.modules() if isinstance(m, products)) / 1e6
    bandwidth = copy_bandwidth_gbs()
    floor_ms = weight_mb / bandwidth
    lines.append(
        f"Batch 1 reads every matrix-product weight once per forward: {weight_mb:.0f} MB in bfloat16. At the "
        f"measured copy bandwidth of {bandwidth:.1f} GB/s (read + write of a 256 MiB tensor) that "
        f"would take {floor_ms:.0f} ms of the {totals[1]:.0f} ms profiled forward. The oneDNN products stream "
        "their weights far slower than that, though: the batch-1 table of the kernel measurements below "
        "times each product with its weight in cache and streamed as in a forward."
    )
    return Section("\n".join(lines) + "\n", {})


def run_section(number: int, quick: bool) -> Section:
    """Benchmark section ``number``; ``quick`` takes fewer repetitions."""
    if number == 1:
        return bench_forward.run(quick)
    if number == 2:
        return bench_e2e.run(2 if quick else 3)
    if number == 3:
        return bench_train.run(2 if quick else 3)
    if number == 4:
        return bench_retrieval.run(repetitions=2 if quick else 3)
    if number == 5:
        return bench_memory.run()
    if number == 6:
        return bench_options.run(3 if quick else 5)
    if number == 7:
        return bench_backends.run(3 if quick else 5)
    return bench_contention.run(3 if quick else 5)


def run_sections(numbers: list[int], quick: bool) -> dict[int, Section]:
    sections = {}
    for number in numbers:
        print(f"--- section {number}", flush=True)
        sections[number] = run_section(number, quick)
        print(sections[number].markdown, flush=True)
    return sections


def summary_row(what: str, value: float, figure: str, floor: float) -> str:
    """One Markdown row of the summary table."""
    unit = "%" if "%" in figure else "x"
    met = "yes" if value >= floor else "**no**"
    return f"| {what} | {value:.2f}{unit} | >= {floor}{unit} | {met} |"


def summary(sections: dict[int, Section]) -> str:
    rows = [
        summary_row(what, sections[n].figures[figure], figure, floor) for what, n, figure, floor in TARGETS
    ]
    header = table(["figure", "measured", "target", "met"], [])
    return "## Summary against the targets (issues 7, 18 and 22)\n\n" + header + "\n" + "\n".join(rows) + "\n"


def update_sections(numbers: list[int], quick: bool) -> None:
    """Rerun sections ``numbers`` and replace them, and their rows of the summary, in RESULTS.md.

    Each replaced section says when and under which load it was regenerated; RESULTS.md is rewritten
    after every section, so a finished section is kept even if a later one fails.
    """
    for number in numbers:
        section = run_section(number, quick)
        load = machine_info()["load average (1, 5, 15 min)"]
        note = (
            f"\n_Regenerated alone by `python benchmarks/run_all.py --update {number}"
            f"{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"load average {load}._\n"
        )
        text = current_report()
        start = text.index(f"\n## {number}. ") + 1
        end = text.find("\n## ", start)
        text = text[:start] + section.markdown + note + (text[end:] if end >= 0 else "")
        for what, section_number, figure, floor in TARGETS:
            if section_number == number:
                old = next(line for line in text.splitlines() if line.startswith(f"| {what} |"))
                text = text.replace(old, summary_row(what, section.figures[figure], figure, floor))
        publish(text)
        print(section.markdown, flush=True)


OTHER_RESULTS = {  # benchmarks that write their own output file: script -> file under benchmarks/results
    "bench_preprocess.py": "preprocess.txt",
    "load.py": "load.txt",
    "attack.py": "attack.txt",
    "bench_cli.py": "cli.txt",
    "bench_revisions.py --other <the tree before issue 17> --out benchmarks/results/revisions.txt": "revisions.txt",
}


def other_results_section() -> str:
    """Section 9: the latest output of the benchmarks that keep their own result file, verbatim."""
    parts = ["## 9. Other benchmarks (each script's latest output file, verbatim)\n"]
    for script, name in OTHER_RESULTS.items():
        path = RESULTS.parent / "results" / name
        text = path.read_text(encoding="utf-8").strip() if path.exists() else "(not run yet)"
        parts.append(
            f"### `python benchmarks/{script}` -> `benchmarks/results/{name}`\n\n```text\n{text}\n```\n"
        )
    return "\n".join(parts)


def update_other_results() -> None:
    """Replace (or add) section 9 of this machine's report with the current result files."""
    text = current_report()
    start = text.find("\n## 9. ")
    publish((text if start < 0 else text[:start]).rstrip("\n") + "\n\n" + other_results_section())


# ----------------------------------------------------------------------------- one report per machine type


def machine_slug() -> str:
    """The file name of this CPU model's report, e.g. ``amd-epyc-avx512-bf16``, ``intel-xeon-amx``."""
    from vilt.devices import cpu_features

    features = cpu_features()
    words = re.sub(r"\(r\)|\(tm\)|processor|cpu|@.*", " ", features.name.lower()).split()
    feature = next(
        (name for name, present in (("amx", features.amx), ("avx512-bf16", features.avx512_bf16),
         ("avx512", features.avx512), ("avx2", features.avx2), ("arm-bf16", features.arm_bf16)) if present),
        "baseline",
    )  # fmt: skip
    return "-".join(re.sub(r"[^a-z0-9]+", "-", " ".join(words[:3])).strip("-").split("-") + [feature])


def current_report() -> str:
    """This machine type's report as last published (RESULTS.md without the machine-types section)."""
    path = MACHINES / f"{machine_slug()}.md"
    if path.exists():
        return path.read_text(encoding="utf-8")
    text = RESULTS.read_text(encoding="utf-8")
    start = text.find(MACHINE_TYPES_HEADING)
    end = text.find("\n## ", start + 1)
    return text if start < 0 else text[:start] + text[end + 1 :]


MACHINE_TYPES_HEADING = "## Machine types seen"


def machine_types_section() -> str:
    """The summary of every machine type's latest report, with a link to the whole report."""
    parts = [MACHINE_TYPES_HEADING, ""]
    for path in sorted(MACHINES.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        generated = next((line for line in text.splitlines() if line.startswith("Generated by")), "")
        cpu = next((line for line in text.splitlines() if line.startswith("| cpu |")), "| cpu | ? |")
        start = text.find("## Summary")
        end = text.find("\n## ", start + 1)
        summary_table = text[text.index("\n", start) : end].strip() if start >= 0 else "(no summary)"
        parts += [
            f"### {cpu.split('|')[2].strip()}: [results/machines/{path.name}](results/machines/{path.name})",
            "",
            generated,
            "",
            summary_table,
            "",
        ]
    return "\n".join(parts)


def publish(report: str) -> None:
    """Keep ``report`` as this machine type's, and write RESULTS.md: it, after the header, the summaries of
    every machine type seen."""
    MACHINES.mkdir(parents=True, exist_ok=True)
    (MACHINES / f"{machine_slug()}.md").write_text(report, encoding="utf-8")
    first_section = report.index("\n## ") + 1
    RESULTS.write_text(
        report[:first_section] + machine_types_section() + "\n" + report[first_section:], encoding="utf-8"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (batch 32: one)")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="run section 1 beside the other sections (two processes; for a busy machine)",
    )
    parser.add_argument(
        "--update",
        type=int,
        nargs="+",
        choices=SECTIONS,
        metavar="N",
        help="rerun only sections N, in RESULTS.md",
    )
    parser.add_argument(
        "--others", action="store_true", help="only refresh section 7 from benchmarks/results/*.txt"
    )
    args = parser.parse_args()
    if args.update or args.others:
        if args.update:
            update_sections(args.update, args.quick)
        update_other_results()
        return
    started = time.time()
    info_before = machine_info()
    if args.parallel:  # section 1 in one process, the others in a second one, at the same time
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [
                pool.submit(run_sections, [1], args.quick),
                pool.submit(run_sections, list(SECTIONS[1:]), args.quick),
            ]
            sections = {number: section for job in jobs for number, section in job.result().items()}
    else:
        sections = run_sections(list(SECTIONS), args.quick)
    profiled = profile_section()
    kernels = bench_kernels.run(args.quick)
    info_after = machine_info()
    command = " ".join(["python benchmarks/run_all.py"] + sys.argv[1:])
    header = [
        "# Benchmarks: vilt against transformers, side by side",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} "
        f"in {(time.time() - started) / 60:.0f} minutes. Do not edit by hand.",
        "",
        "Each case runs ours and the reference (`transformers`) in one process, on the same weights (a "
        "random-weight ViLT-B/32 saved by transformers and loaded by both) and the same inputs, alternating "
        "within every repetition; figures are medians. The machine is shared, so the load average is "
        "recorded; ratios are more stable than absolute times."
        + (
            " With `--parallel`, section 1 ran at the same time as the other sections (two processes), so "
            "absolute times include that contention too; each ratio still compares contestants that "
            "alternated under the same load."
            if args.parallel
            else ""
        ),
        "",
        table(["", "value"], [[k, v] for k, v in info_before.items() if "load" not in k])
        + f"\n| load average at start | {info_before['load average (1, 5, 15 min)']} |"
        + f"\n| load average at end | {info_after['load average (1, 5, 15 min)']} |",
        "",
        "No GPU was available to this run; `benchmarks/gpu.sh` runs the CUDA comparison where one is.",
        "",
        "Commands (each also runs alone): `python benchmarks/bench_forward.py`, `bench_e2e.py`, "
        "`bench_train.py`, `bench_retrieval.py`, `bench_memory.py`, `bench_options.py`, `bench_backends.py`, "
        "`bench_contention.py`, `bench_kernels.py`; `bash benchmarks/gpu.sh` on a GPU.",
        "",
    ]
    body = (
        [summary(sections)]
        + [sections[n].markdown for n in sorted(sections)]
        + [profiled.markdown, kernels.markdown]
    )
    body.append(other_results_section())
    publish("\n".join(header) + "\n" + "\n".join(body))
    print(f"wrote {RESULTS} and {MACHINES / (machine_slug() + '.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
