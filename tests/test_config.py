import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reid.core import config
from reid.core.errors import ConfigError


@dataclass(frozen=True)
class DemoConfig:
    """A demo job."""

    data: str = "runs/data"
    temperature: float = field(default=0.07, metadata={"help": "NT-Xent temperature"})
    epochs: int = 3
    gpu: bool = False
    checkpoint: str | None = None
    sizes: tuple[int, ...] = (96, 128)

    def __post_init__(self):
        config.check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


def test_defaults_yaml_and_flags_precedence(tmp_path):
    assert config.parse_config(DemoConfig, []) == DemoConfig()
    yml = tmp_path / "c.yaml"
    yml.write_text("temperature: 0.2\nepochs: 5\ngpu: true\nsizes: [32, 48]\n")
    cfg = config.parse_config(DemoConfig, ["--config", str(yml), "--epochs", "7", "--checkpoint", "x.pt"])
    assert cfg == DemoConfig(temperature=0.2, epochs=7, gpu=True, checkpoint="x.pt", sizes=(32, 48))
    assert config.parse_config(DemoConfig, ["--config", str(yml), "--no-gpu"]).gpu is False


def test_round_trip_yaml(tmp_path):
    cfg = DemoConfig(temperature=0.1, checkpoint=None, sizes=(1, 2))
    config.save_yaml(cfg, str(tmp_path / "o.yaml"))
    assert config.parse_config(DemoConfig, ["--config", str(tmp_path / "o.yaml")]) == cfg


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "2.5"], "epochs: '2.5' is not a valid int"),
    (["--temperature", "abc"], "temperature: 'abc' is not a valid float"),
    (["--temperature", "-1"], "temperature must be > 0"),
])
def test_bad_values(argv, message):
    with pytest.raises(ConfigError, match=message):
        config.parse_config(DemoConfig, argv)


def test_bad_yaml(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("temprature: 0.2\n")
    with pytest.raises(ConfigError, match="unknown key.*temprature"):
        config.parse_config(DemoConfig, ["--config", str(yml)])
    yml.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.parse_config(DemoConfig, ["--config", str(yml)])
    with pytest.raises(ConfigError, match="not found"):
        config.parse_config(DemoConfig, ["--config", str(tmp_path / "none.yaml")])


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(DemoConfig, ["--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--temperature", "--epochs", "--gpu", "--checkpoint", "--sizes", "NT-Xent temperature"):
        assert flag in out


def _entry_points() -> list[tuple[str, list[str]]]:
    repo = Path(__file__).resolve().parents[1]
    scripts = sorted([*repo.glob("jobs/*.py"), *repo.glob("tune/*.py")])
    assert len(scripts) >= 9
    out = [(str(s), ["--help"]) for s in scripts]
    if (repo / "jobs/review.py").exists():  # subcommands, each with its own flags
        out += [(str(repo / "jobs/review.py"), [command, "--help"]) for command in ("export", "export-sequences")]
    return out


@pytest.mark.parametrize("script,argv", _entry_points(), ids=lambda v: Path(v).name if isinstance(v, str) else
                         " ".join(v))
def test_every_job_and_sweep_says_each_default_once(script, argv, capsys):
    """`--help` of every job and sweep: each flag's default said once (a help text that names its default in
    words, "(default: RAY_ADDRESS or local)", used to get "(default: None)" after it), every flag listed."""
    spec = importlib.util.spec_from_file_location(f"entry_{Path(script).stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = text.split("options:", 1)[1]
    blocks = re.split(r"\n(?=  -)", options)
    assert len(blocks) > 3
    for block in blocks:
        said = " ".join(block.split()).count("(default")
        assert said <= 1, block
        if block.strip().startswith("--") and not block.strip().startswith(("--config", "--verbose", "--help")):
            assert said == 1, block


def test_relative_paths_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    """A relative path flag (``--ssl-checkpoint runs/demo/...``) names the file the user meant in every Ray
    worker: made absolute against the driver's working directory; URIs, MLflow model URIs and empty values
    are kept as given."""
    from reid.stages.label.config import LabelConfig
    from reid.stages.train.finetune import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    cfg = config.absolute_paths(config.parse_config(FinetuneConfig, [
        "--crops", "runs/demo/crops", "--sequences", "s3://bucket/seq.json", "--ssl-checkpoint",
        "../elsewhere/model.pt", "--storage", "runs/train"]))
    assert cfg.crops == str(tmp_path / "runs/demo/crops")
    assert cfg.ssl_checkpoint == str((tmp_path / "../elsewhere/model.pt").resolve())
    assert (cfg.sequences, cfg.storage) == ("s3://bucket/seq.json", str(tmp_path / "runs/train"))
    label = config.absolute_paths(LabelConfig(model="models:/comic-reid@champion", crops="c", out="o"))
    assert (label.model, label.crops, label.out) == ("models:/comic-reid@champion", str(tmp_path / "c"),
                                                     str(tmp_path / "o"))


def test_a_retired_setting_in_a_saved_config_is_dropped_with_a_warning(tmp_path, caplog):
    """A config file written when a setting still existed (a sweep's best.yaml with ``bf16``) loads without it;
    any other unknown key is still refused."""
    from reid.stages.train.finetune import FinetuneConfig

    saved = tmp_path / "best.yaml"
    saved.write_text("crops: c\nsequences: s.json\nssl_checkpoint: m.pt\nbf16: true\nepochs: 3\n")
    with caplog.at_level("WARNING"):
        cfg = config.parse_config(FinetuneConfig, ["--config", str(saved)])
    assert cfg.epochs == 3 and "ignoring ['bf16']" in caplog.text
    saved.write_text("crops: c\nbf17: true\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bf17'\]"):
        config.parse_config(FinetuneConfig, ["--config", str(saved)])
