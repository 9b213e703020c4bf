"""scripts/benchmark.py: its parse comparison runs end to end on a tiny SegFormer and reports a
well-formed table and JSON. Speed goals live in the benchmark's output, never in assertions here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_parse_comparison_on_a_tiny_parser_writes_one_table_and_its_json(benchmark, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = benchmark.main(["--only", "parse", "--parser", "tiny", "--runs", "2", "--photo", "200x280",
                           "--threads", "1", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert doc["table_markdown"] in printed  # the printed table is the one written
    assert doc["meta"]["photo"] == "200x280" and doc["meta"]["groups"] == ["parse"]
    assert doc["meta"]["machine"]["torch_threads"] == 1

    rows = {r["case"]: r for r in doc["rows"]}
    selfie = "selfie segmenter parse (tiny .tflite; refine at full size)"
    assert list(rows) == ["fashn-human-parser predict", "pack parse", selfie]
    assert rows[selfie]["baseline"] == "fashn-human-parser predict" and rows[selfie]["ratio"] > 0
    fashn, ours = rows["fashn-human-parser predict"], rows["pack parse"]
    for row in (fashn, ours):
        assert row["group"] == "parse" and row["runs"] == 2 and len(row["samples_s"]) == 2
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
    assert ours["baseline"] == "fashn-human-parser predict" and ours["ratio"] > 0
    assert ours["target"] == 0.8 and isinstance(ours["met"], bool)
    assert fashn["ratio"] is None and fashn["baseline"] is None
    # The same random-weight folder and photo: FASHN's package and the pack agree on the labels.
    assert ours["extra"]["agreement"] >= 0.999
    assert "label agreement" in ours["note"]

    table = doc["table_markdown"].splitlines()
    assert table[0].startswith("| group | case | median s |") and len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_repetitions_are_interleaved_and_rotated_and_ratios_are_paired_per_round(benchmark):
    calls = []
    cases = [benchmark.Case("g", name, lambda name=name: calls.append(name)) for name in "abc"]
    cases[1].baseline, cases[1].target = "a", 0.5
    benchmark.measure(cases, runs=2, warmup=1)
    assert "".join(calls) == "abc" + "bca" + "cab"  # one warm-up round, then two timed ones
    assert [len(c.samples) for c in cases] == [2, 2, 2]

    cases[0].samples, cases[1].samples, cases[2].samples = [1.0, 2.0, 10.0], [0.4, 1.2, 3.0], [1.0, 1.0, 1.0]
    rows = benchmark.rows_of(cases)
    assert rows[1].ratio == pytest.approx(0.4)  # median of 0.4, 0.6, 0.3: paired, not 1.2 / 2.0
    assert rows[1].met is True and rows[0].ratio is None and rows[2].met is None
    assert rows[1].median_s == 1.2 and (rows[1].min_s, rows[1].max_s) == (0.4, 3.0)


def test_unknown_group_is_refused_with_the_known_ones(benchmark, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--only", "parse,warp"])
    assert "warp" in capsys.readouterr().err and "nongen" in benchmark.GROUPS


def test_cpu_suite_times_both_engines_against_the_bare_diffusers_call_in_one_table(benchmark, tmp_path, capsys):
    # The suite's CPU form on the tiny models, at the smallest size and one step, so it stays quick;
    # the same code paths run on CUDA with the full-size architectures.
    out = tmp_path / "suite.json"
    code = benchmark.main(["--suite", "--steps", "1", "--gen-size", "64", "--photo", "64x80", "--threads", "1",
                           "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert doc["table_markdown"] in printed
    meta = doc["meta"]
    assert meta["suite"] is True and meta["groups"] == ["parse", "engine", "batch", "modes"]
    assert meta["gen_photo"] == "64x64" and set(meta["engines"]) == {"sdxl", "flux2_klein"}

    rows = {(r["group"], r["case"]): r for r in doc["rows"]}
    assert [g for g, _ in rows] == ["parse"] * 3 + ["engine"] * 6 + ["batch"] * 4 + ["modes"] * 6
    for engine in ("sdxl", "flux2_klein"):
        bare = rows["engine", f"bare diffusers call ({engine})"]
        pack = rows["engine", f"pack generate ({engine})"]
        swap = rows["engine", f"whole swap, balanced ({engine})"]
        assert bare["baseline"] is None and bare["ratio"] is None
        assert pack["baseline"] == bare["case"] and pack["ratio"] > 0
        assert pack["target"] == 1.10 and isinstance(pack["met"], bool)
        assert swap["baseline"] == bare["case"] and swap["ratio"] > 0
        # The whole swap reports its stages, sampling and the face refine included.
        assert {"garment_mask", "identity", "generate", "composite"} <= set(swap["extra"]["stages_s"])
        four = rows["batch", f"4 images ({engine})"]
        assert four["baseline"] == f"1 image ({engine})" and four["ratio"] > 0 and four["target"] == 2.5
        fast = rows["modes", f"fast ({engine})"]
        assert fast["ratio"] is None and "stages_s" in fast["extra"]
        for mode in ("balanced", "quality"):
            row = rows["modes", f"{mode} ({engine})"]
            assert row["baseline"] == fast["case"] and row["ratio"] > 0
    for row in doc["rows"]:
        assert row["runs"] == 1 and 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
    table = doc["table_markdown"].splitlines()
    assert len(table) == 2 + len(rows) and all(line.count("|") == table[0].count("|") for line in table)


def test_the_mode_settings_come_from_the_shipped_generation_modes(benchmark):
    benchmark._import_pack()
    engines = benchmark._engines()

    class Ctx:
        device = "cuda"  # full-size work sizes; nothing is built
        args = benchmark.parse_args(["--suite"])

    from comfyui_model_swap.nodes.pipeline.engines import capabilities

    for engine in ("sdxl", "flux2_klein"):
        for mode, want in capabilities(engine).presets.items():
            options = engines.swap_options(Ctx, engine, mode)
            assert (options.steps, options.refine.steps, options.refine.work_size) == (
                want.steps, want.refine_steps, want.refine_work_size)


def test_cuda_asked_without_cuda_exits_non_zero_with_a_clear_message(benchmark, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert benchmark.main(["--device", "cuda", "--suite"]) != 0
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cuda" in err
