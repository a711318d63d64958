"""Core pieces that need no tuning library: names, batching limits, safety, packaging."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.utils import validation

from mlflow_hpo import names
from mlflow_hpo._core import batch as _batch
from mlflow_hpo._core.models import ModelPolicy, validate_policy
from mlflow_hpo._core.safety import Safety
from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning

ROOT = Path(__file__).resolve().parents[1]


def test_readme_what_gets_logged_table_lists_every_name() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## What gets logged", 1)[1].split("\n## ", 1)[0]
    for attr in dir(names):
        if not attr.startswith(("TAG_", "METRIC_", "ARTIFACT_", "PARAM_", "MODEL_ARTIFACT")):
            continue
        value = re.sub(r"\{\w+\}", "<i>", getattr(names, attr))
        shown = value.rstrip(".").rstrip("_") if value.endswith((".", "_")) else value
        assert shown in table, f"names.{attr} = {value!r} is missing from the README table"


def test_quickstart_is_exactly_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", quickstart, flags=re.S)
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_import_stays_light() -> None:
    code = (
        "import sys, mlflow_hpo; heavy = [m for m in ('optuna', 'tensorflow', 'keras', "
        "'sklearn') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_truncation_follows_mlflow_limits() -> None:
    (param,) = _batch.params({"k": "x" * (validation.MAX_PARAM_VAL_LENGTH + 10)})
    assert len(param.value) == validation.MAX_PARAM_VAL_LENGTH
    assert param.value.endswith(_batch.TRUNCATION_MARKER)
    (tag,) = _batch.tags({"t" * 300: "short"})
    assert len(tag.key) == validation.MAX_ENTITY_KEY_LENGTH
    # Two long keys that share their start stay two keys, each valid for MLflow.
    long_a, long_b = "k" * 260 + "a", "k" * 260 + "b"
    keys = {_batch.key(long_a), _batch.key(long_b)}
    assert len(keys) == 2
    assert all(validation.validate_param_and_metric_name(k) for k in keys)
    assert _batch.params({"ok": 3})[0].value == "3"


def test_safety_warns_counts_and_strict_raises() -> None:
    safety = Safety(strict=False)
    with pytest.warns(MlflowHpoWarning, match="writing x failed"), safety.guard("writing x"):
        raise OSError("disk full")
    assert safety.warning_count == 1
    with pytest.raises(OSError), Safety(strict=True).guard("writing y"):
        raise OSError("disk full")
    with pytest.raises(KeyboardInterrupt), Safety(strict=False).guard("z"):
        raise KeyboardInterrupt


@pytest.mark.parametrize("bad", ["best-ish", -1, 0, True, 2.5, None])
def test_log_models_policy_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"[Ee]xpected .* Received"):
        validate_policy(bad)


def test_policy_best_all_and_top_k() -> None:
    best = ModelPolicy("best")
    best.directions = ["maximize"]
    assert [best.decide(str(i), [v]) for i, v in enumerate([0.5, 0.4, 0.7, 0.7])] == [
        True,
        False,
        True,
        False,
    ]
    top2 = ModelPolicy(2)
    top2.directions = ["minimize"]
    evicted = []
    for i, value in enumerate([3.0, 2.0, 5.0, 1.0]):  # decide, then log, as the tracker does
        if top2.decide(str(i), [value]):
            evicted.append(top2.kept(str(i), f"trial:{i}"))
    assert evicted == [[], [], ["trial:0"]]  # 5.0 is not kept; 1.0 pushes 3.0 out of the top 2
    every = ModelPolicy("all")
    every.directions = ["maximize"]
    assert [every.decide(str(i), [v]) for i, v in enumerate([0.9, 0.1, 0.5])] == [True] * 3
    none = ModelPolicy("none")
    assert not none.enabled and not none.decide("0", [1.0])
    pareto = ModelPolicy("best")
    pareto.directions = ["maximize", "minimize"]
    assert pareto.decide("0", [0.5, 10.0])
    assert pareto.decide("1", [0.4, 5.0])  # a trade-off, not dominated
    assert not pareto.decide("2", [0.3, 11.0])  # dominated by trial 0
