"""tools.report: results.json files -> one markdown table with the published numbers and sources."""

import json

from tools.report import report


def _write(folder, **r):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(r))


def test_report_places_published_numbers_next_to_ours(tmp_path):
    _write(tmp_path / "jfse" / "standard", method="jfse", dataset="wikipedia", scenario="standard",
           i2t_map_all=0.51, t2i_map_all=0.47)
    _write(tmp_path / "jfse" / "zs", method="jfse", dataset="wikipedia", scenario="zs", i2t_map_all=0.30,
           t2i_map_all=0.29, seen_i2t_map_all=0.70, seen_t2i_map_all=0.88)
    _write(tmp_path / "hash", method="cmhash", dataset="iapr", i2t_map={"32": 0.55, "16": 0.5},
           t2i_map={"32": 0.56, "16": 0.52})
    _write(tmp_path / "syn", method="acmr_simple", dataset="synthetic-small", i2t_map_all=0.2, t2i_map_all=0.3,
           seed=4, provenance={"git_commit": "0123456789abcdef", "git_dirty": True, "ended": "2026-11-30T01:02:03"})
    text = report([str(tmp_path)])
    lines = text.splitlines()
    row = next(line for line in lines if "| jfse | wikipedia | standard |" in line)
    assert "0.5100 / 0.4700" in row and "JFSE 0.527 / 0.484" in row
    ref = row.split(" | ")[-2]  # the source's footnote number (the last column is the run)
    assert any(line.startswith(f"{ref} Xu et al.") for line in lines)
    seen = next(line for line in lines if "zs (seen classes)" in line)
    assert "0.7000 / 0.8800" in seen and "0.708 / 0.906" in seen
    unseen = next(line for line in lines if "| jfse | wikipedia | zs |" in line)
    assert "0.343 / 0.314" in unseen
    h32 = next(line for line in lines if "| cmhash | iapr | 32 bits |" in line)
    assert "CMHASH 0.5986 / 0.6035" in h32 and "DCMH 0.4732 / 0.5378" in h32
    h16 = next(line for line in lines if "| cmhash | iapr | 16 bits |" in line)
    assert "CMHASH" not in h16 and "DCMH 0.4526 / 0.5185" in h16  # the release reported 32 bits only
    syn = next(line for line in lines if "synthetic-small" in line)
    assert syn.endswith(f"| — | — | {tmp_path / 'syn'}, seed 4, 01234567+, 2026-11-30 01:02 |"), syn
