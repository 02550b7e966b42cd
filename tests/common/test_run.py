"""The run contract's results writer."""

import json

import pytest

from common import run
from common.errors import ConfigError


def test_results_need_the_comparable_metrics(tmp_path):
    with pytest.raises(ConfigError, match="t2i_map_all"):
        run.write_results(str(tmp_path), dataset="d", method="m", seed=0, flag_dict={},
                          metrics={"i2t_map_all": 0.5})
    assert not (tmp_path / "results.json").exists()
    run.write_results(str(tmp_path), dataset="d", method="zscrgan", seed=1, flag_dict={"a": 1},
                      metrics={"t2i_map_all": 0.4, "p50_best": 0.6}, text_to_image_only=True)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["t2i_map_all"] == 0.4 and r["metrics"]["p50_best"] == 0.6 and r["flags"] == {"a": 1}
    assert json.loads((tmp_path / "flags.json").read_text()) == {"a": 1}
