from pathlib import Path

import pytest

from tops.config import TopsConfig, load_config
from tops.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_shipped_configs_validate():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "smoke.yaml", "qwen7b-gsm8k.yaml"}
    for path in CONFIGS:
        cfg = load_config(path)
        assert isinstance(cfg, TopsConfig)


def test_real_gpu_config_reads_hub_dataset():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "qwen7b-gsm8k.yaml")
    assert cfg.model.base == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.problems.source.kind == "hf" and cfg.problems.source.answer_format == "gsm8k"


def test_overrides_are_typed():
    cfg = load_config(None, ["generate.n_samples=4", "generate.sampling.temperature=0.5",
                             "generate.efforts=[low, high]"])
    assert cfg.generate.n_samples == 4
    assert cfg.generate.sampling.temperature == 0.5
    assert cfg.generate.efforts == ["low", "high"]


@pytest.mark.parametrize("override, field", [
    ("generate.n_samples=abc", "generate.n_samples"),
    ("generate.n_samples=0", "generate.n_samples"),
    ("engine.kind=tgi", "engine.kind"),
    ("generate.sampling.tempreature=1", "generate.sampling.tempreature"),
    ("generate.efforts=[low, extreme]", "extreme"),
    ("problems.source.kind=csv", "problems.source"),
    ("generate.n_samples_by_effort={lwo: 4}", "generate.n_samples_by_effort: unknown effort 'lwo'"),
    ("generate.n_samples_by_effort={low: 0}", "generate.n_samples_by_effort.low"),
    ("select.min_effort_accuracy=0", "select.min_effort_accuracy"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert field in message and "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(listy)


def test_override_without_equals():
    with pytest.raises(UserError, match="KEY=VALUE"):
        load_config(None, ["generate.n_samples"])


def test_openai_engine_needs_base_url():
    with pytest.raises(UserError, match="base_url"):
        load_config(None, ["engine.kind=openai"])
