"""What only HunyuanVideo has so far (sequence parallelism, TensorRT plans) is refused for another
family in one line, exit 2, before any weight loads or anything is written; cache-bench checks its --json folder
first."""

from __future__ import annotations

import time

import pytest

from vidtrt.cli import main


def _one_line_exit_2(argv, capsys) -> str:
    t0 = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidtrt: error: ") and "\n" not in err, err
    assert time.perf_counter() - t0 < 30  # refused before weights (the model takes longer to load and run)
    return err


# FP8 (run / build --precision fp8, quantize) runs CogVideoX too: tests/test_cogvideox_fp8.py.
@pytest.mark.parametrize("argv, needle", [
    (["run", "a cat", "--model", "tiny-cogvideox", "--nproc-per-node", "2"], "sequence parallelism runs HunyuanVideo"),
    (["build", "--model", "tiny-cogvideox", "--sp-degree", "2"], "sequence parallelism runs HunyuanVideo"),
    # the family, not TensorRT's install hint (TensorRT is not installed here): installing it would not help
    (["build", "--model", "tiny-cogvideox", "--engine", "tensorrt"], "TensorRT plans are built for HunyuanVideo only"),
])
def test_hunyuan_only_features_refuse_cogvideox(argv, needle, tmp_path, capsys):
    out = tmp_path / ("x.npy" if argv[0] == "run" else "out")
    err = _one_line_exit_2([*argv, "-o" if argv[0] == "run" else "--out", str(out)], capsys)
    assert needle in err and "cogvideox" in err
    assert not out.exists()


def test_cache_bench_checks_its_json_folder_first(tmp_path, capsys):
    err = _one_line_exit_2(["cache-bench", "--model", "tiny", "--json", str(tmp_path / "missing" / "x.json")], capsys)
    assert "--json" in err and "does not exist" in err


def test_tensorrt_plans_refuse_cogvideox(tmp_path):
    """The onnxruntime engine serves CogVideoX (FP8 DiT included: tests/test_cogvideox_fp8.py); TensorRT plans are
    HunyuanVideo's only (one line, before TensorRT is imported or anything is built)."""
    from vidtrt.export.tensorrt_build import TensorRTBuildError, build_plans
    from vidtrt.source.model_source import ModelSource

    source = ModelSource.open("tiny-cogvideox")
    with pytest.raises(TensorRTBuildError, match="HunyuanVideo only.*not cogvideox"):
        build_plans(source, "bf16", tmp_path / "trt", trt=object())
    assert not (tmp_path / "trt").exists()
