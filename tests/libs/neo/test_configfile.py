"""neo.configfile: the one reader of run/job config files (dataproc jobs and trainer runs both use it)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from neo.configfile import ConfigError, read_config_file, validate


class Train(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(gt=0)


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    train: Train


def test_yaml_and_json_files_read_as_mappings(tmp_path):
    (tmp_path / "a.yaml").write_text("name: x\ntrain:\n  lr: 0.1\n")
    (tmp_path / "a.json").write_text('{"name": "x", "train": {"lr": 0.1}}')
    assert read_config_file(tmp_path / "a.yaml") == read_config_file(tmp_path / "a.json") == {
        "name": "x", "train": {"lr": 0.1}}


def test_bad_files_give_one_error_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        read_config_file(tmp_path / "none.yaml", "job config")
    assert (missing.value.strerror, missing.value.filename) == ("job config not found", str(tmp_path / "none.yaml"))
    (tmp_path / "bad.json").write_text('{"name": ')
    with pytest.raises(ConfigError, match=r"job config .*bad\.json is not valid JSON"):
        read_config_file(tmp_path / "bad.json", "job config")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        read_config_file(tmp_path / "list.yaml")


def test_validate_names_every_bad_field():
    assert validate(Run, {"name": "x", "train": {"lr": 0.5}}, "invalid run").train.lr == 0.5
    with pytest.raises(ConfigError) as err:
        validate(Run, {"train": {"lr": -1, "lrr": 2}}, "invalid run")
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid run:"
    assert "  name: Field required" in lines
    assert any(line.startswith("  train.lr: Input should be greater than 0") for line in lines)
    assert "  train.lrr: Extra inputs are not permitted" in lines
    with pytest.raises(ConfigError, match="invalid run: expected a mapping at the top level, got str"):
        validate(Run, "name: x", "invalid run")
