"""Property-based fuzzing of ``vilt serve`` from its own OpenAPI schema (schemathesis): no 5xx, ever.

A ``vilt serve`` subprocess (a tiny random model of each head, loopback) is fuzzed by the schemathesis CLI
with every check but ``positive_data_acceptance``: the schema says an image is a string of bytes, and
most such strings are not images, so the server rightly refuses them with 400. The schema's examples
hold a real PNG, so the inference path is exercised too. The reports go to
``artifacts/schemathesis-<architecture>.txt``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from serve_process import serving  # noqa: E402
from tiny_models import save_tiny  # noqa: E402

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
# The command beside this interpreter first: `.venv/bin/pytest` runs without the environment on PATH.
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which(
    "schemathesis"
)


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")
@pytest.mark.parametrize(
    "architecture",
    [
        "ViltForQuestionAnswering",  # /v1/vqa and /v1/explain
        "ViltForImagesAndTextClassification",  # /v1/nlvr2
        "ViltForImageAndTextRetrieval",  # /v1/rank
        "ViltForMaskedLM",  # /v1/fill-mask
    ],
)
def test_fuzzing_the_openapi_schema_finds_no_server_error(tmp_path: Path, architecture: str) -> None:
    model_dir = save_tiny(tmp_path / "model", architecture)
    with serving(model_dir, "--log-level", "warning") as url:
        run = subprocess.run(
            [
                str(SCHEMATHESIS), "run", f"{url}/openapi.json",
                "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                "--max-examples", "40", "--seed", "1", "--no-color",
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"schemathesis-{architecture}.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-4000:]
    assert re.search(r"\d+ generated, \d+ passed", run.stdout), run.stdout[-2000:]
