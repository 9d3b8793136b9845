"""``vidtrt run``: in process through ``vidtrt.cli.main`` and once through the installed console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtrt.cli import build_parser, main
from vidtrt.runtime.pipeline import HunyuanVideoPipeline
from vidtrt.source.model_source import ModelSource
from vidtrt.video_io import decode_mp4

PROMPT = "a cat walks on the grass"
ARGS = ["--frames", "5", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    return HunyuanVideoPipeline.from_model("tiny").generate(PROMPT, num_frames=5, num_inference_steps=2, seed=3)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _only_progress(err: str) -> bool:
    """True when stderr holds nothing but tqdm's "denoising" bar, then its "decoding" bar (VAE tiles),
    redrawn with carriage returns."""
    chunks = [c.strip() for c in re.split(r"[\r\n]", err) if c.strip()]
    return bool(chunks) and all(c.startswith(("denoising", "decoding")) for c in chunks) and \
        chunks[0].startswith("denoising")


def test_run_npy_equals_pipeline(tmp_path, capsys, expected):
    out_path = tmp_path / "out.npy"
    code, out, err = _run(capsys, ["run", PROMPT, "-o", str(out_path), *ARGS])
    assert code == 0, err
    frames = np.load(out_path)
    assert frames.dtype == np.uint8 and frames.shape == (5, 64, 96, 3)
    assert np.array_equal(frames, expected)
    # stdout: the one "wrote ..." line; stderr: the progress bar and nothing else
    assert out.count("\n") == 1 and out.startswith(f"wrote {out_path} (5 frames, 96x64)"), out
    assert _only_progress(err) and "2/2 [" in err and "decoding: 100%" in err and "tile" in err, err


def test_no_progress_means_silent_stderr(tmp_path, capsys):
    code, out, err = _run(capsys, ["run", PROMPT, "-o", str(tmp_path / "o.npy"), *ARGS, "--no-progress"])
    assert code == 0 and err == "" and out.startswith("wrote ")


def test_run_mp4_decodes_back(tmp_path, capsys, expected):
    out_path = tmp_path / "out.mp4"
    code, out, err = _run(capsys, ["run", PROMPT, "-o", str(out_path), *ARGS, "--no-progress"])
    assert code == 0, err
    assert out_path.read_bytes()[4:8] == b"ftyp"  # an ISO-BMFF (mp4) file
    back = decode_mp4(out_path)
    assert back.shape == expected.shape == (5, 64, 96, 3)
    assert np.abs(back.astype(int) - expected.astype(int)).mean() < 12  # lossy H.264


def test_model_path_accepts_a_diffusers_folder(tmp_path, capsys, expected):
    folder = tmp_path / "my-checkpoint"
    shutil.copytree(ModelSource.open("tiny").folder, folder)  # a diffusers-layout folder, used as it is
    out_path = tmp_path / "out.npy"
    code, _, err = _run(capsys, ["run", PROMPT, "-o", str(out_path), *ARGS, "--model", str(folder), "--no-progress"])
    assert code == 0, err
    assert np.array_equal(np.load(out_path), expected)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--frames", "8"], ("--frames", "num_frames")),
        (["--height", "100"], ("--height", "height")),
        (["--steps", "0"], ("--steps", "num_inference_steps")),
        (["--seed", "-1"], ("--seed", "seed")),
        (["--prompt", ""], ("prompt",)),
        (["-o", "out.gif"], ("--output", "-o")),
        (["--model", "/nonexistent"], ("/nonexistent",)),
        (["--guidance", "nan"], ("--guidance", "embedded_guidance_scale")),
    ],
    ids=["frames", "height", "steps", "seed", "empty-prompt", "gif", "model", "guidance-nan"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, names):
    prompt = PROMPT
    if argv[0] == "--prompt":
        prompt, argv = argv[1], []
    out_path = tmp_path / "out.npy"
    if "-o" in argv:
        argv = ["-o", str(tmp_path / argv[1])]
    else:
        argv = ["-o", str(out_path), *argv]
    code, out, err = _run(capsys, ["run", prompt, *argv, "--no-progress"])
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidtrt: error:"), err
    assert any(n in lines[0] for n in names), lines[0]
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = [s for action in run_parser._actions for s in action.option_strings]
    for flag in ("-o", "--output", "--height", "--width", "--frames", "--steps", "--guidance", "--flow-shift",
                 "--seed", "--negative-prompt", "--true-cfg-scale", "--prompt-policy", "--fps", "--no-progress",
                 "--model", "--engine", "--artifacts", "--attention"):
        assert flag in flags, flag
    for flag in flags:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", text), f"{flag} missing from --help"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "run" in capsys.readouterr().out


@pytest.mark.parametrize("value,want", [("bf16", "bf16"), ("bfloat16", "bf16"), ("float32", "fp32"),
                                        ("auto", "auto"), ("fp16", "fp16"), ("fp8", "fp8")])
def test_precision_is_one_vocabulary(value, want):
    """`vidtrt run --precision` takes `vidtrt build`'s names; --dtype and torch's names stay as aliases."""
    from vidtrt.config.model_config import resolve_precision

    for flag in ("--precision", "--dtype"):
        assert build_parser().parse_args(["run", "a cat", flag, value]).precision == want
    assert resolve_precision(value, "cpu") == ("fp32" if want == "auto" else want)
    assert resolve_precision(value, "cuda:0") == ("bf16" if want == "auto" else want)


def test_bad_precision_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "a cat", "--precision", "int8"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid precision 'int8'" in err and "['auto', 'fp32', 'bf16', 'fp16', 'fp8']" in err, err


def _console_script() -> str:
    script = Path(sys.executable).with_name("vidtrt")
    if script.exists():
        return str(script)
    found = shutil.which("vidtrt")
    if found is None:
        pytest.skip(reason="the vidtrt console script is not installed")
    return found


@pytest.mark.slow
def test_console_script_first_run(tmp_path, expected):
    """The installed ``vidtrt`` in a fresh process and a fresh cache (the tiny model is written on this
    first run), with transformers' progress bars enabled as they are for users: stdout is the one
    "wrote" line and stderr only our progress bar (no "Writing model shards" / "Loading weights")."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRITON_INTERPRET")}
    # compared bit for bit with `expected`: BLAS libraries may split sums by thread count, so the same as here
    env.update(VIDTRT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    out_path = tmp_path / "out.npy"
    proc = subprocess.run([_console_script(), "run", PROMPT, "-o", str(out_path), *ARGS], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith(f"wrote {out_path}"), proc.stdout
    assert _only_progress(proc.stderr), proc.stderr[-3000:]
    assert np.array_equal(np.load(out_path), expected)

    bad = subprocess.run([_console_script(), "run", PROMPT, "--frames", "8"], capture_output=True, text=True,
                         env=env, timeout=600, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("vidtrt: error:"), bad.stderr


TORCH_FREE_CHILD = r"""
import contextlib, io, json, sys, time
t0 = time.process_time()
from vidtrt.cli import build_parser, main
parser = build_parser()
for argv in (["--help"], ["generate", "--help"], ["run", "--help"], ["export", "--help"], ["build", "--help"],
             ["serve", "--help"], ["cache-bench", "--help"], ["quantize", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
help_s = time.process_time() - t0
with contextlib.redirect_stderr(io.StringIO()) as err:  # the client, against a closed loopback port (exit 3)
    rc = main(["generate", "a cat", "--url", "127.0.0.1:9", "-o", sys.argv[1], "--frames", "5"])
print(json.dumps(dict(help_s=help_s, rc=rc, err=err.getvalue(), torch="torch" in sys.modules)))
"""


def test_help_and_client_need_no_torch(tmp_path):
    """Every subcommand's --help, and `vidtrt generate` itself, run without importing torch (the client
    machine needs none): the help pages in < 1 s of CPU after interpreter start (~0.3-0.53 s measured as
    subcommands were added; importing torch alone costs seconds, so the bound still catches it). CPU seconds of
    this process, so other work on a busy machine (CI, parallel jobs) does not fail it."""
    out = subprocess.run([sys.executable, "-c", TORCH_FREE_CHILD, str(tmp_path / "x.npy")], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert got["rc"] == 3 and got["err"].startswith("vidtrt: error:") and got["err"].count("\n") == 1, got
    assert got["help_s"] < 1.0, got


def test_non_finite_generation_is_exit_1_one_line_nothing_written(tmp_path, capsys, monkeypatch):
    """The request was fine, the generation overflowed: exit 1 (not 2, a bad request), one line, no file."""
    import dataclasses

    import vidtrt.cli as cli

    pipe = HunyuanVideoPipeline.from_model("tiny")
    dit = pipe.components.dit
    pipe.components = dataclasses.replace(pipe.components, dit=lambda *args: dit(*args) * float("nan"))
    monkeypatch.setattr(cli, "_load_pipeline", lambda args, source, *_: pipe)
    out_path = tmp_path / "out.mp4"
    code, out, err = _run(capsys, ["run", PROMPT, "-o", str(out_path), *ARGS, "--no-progress"])
    assert code == 1 and out == "", (code, out, err)
    assert err.count("\n") == 1 and err.startswith("vidtrt: error: the DiT produced NaN/inf at denoising step 1"), err
    assert not out_path.exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--attention", "triton"], "runs on CUDA only"),  # without the Triton interpreter
        (["--device", "cuda"], "has no CUDA"),
        (["--device", "tpu"], "invalid device 'tpu'"),
        (["--attention", "triton-fp8", "interpreter"], "head dim 16"),  # tiny's heads are 16 wide; FP8 takes 64/128
        (["--attention", "flash"], "unknown attention backend 'flash'"),
        (["--fps", "0"], "invalid --fps 0: accepted 1..240"),
        (["-o", "missing/out.mp4"], "does not exist"),
        (["-o", "folder.mp4"], "a folder"),
    ],
    ids=["triton-on-cpu", "cuda-here", "unknown-device", "fp8-head-dim", "unknown-backend", "fps", "no-folder",
         "output-is-folder"],
)
def test_choices_are_checked_before_any_weights_load(tmp_path, capsys, monkeypatch, argv, fragment):
    """Kernel, device, output and fps choices: one line, exit 2, before the model loads (loading would fail
    the test) and with nothing written."""
    import vidtrt.cli as cli

    monkeypatch.setattr(cli, "_load_pipeline", lambda *a: pytest.fail("weights loaded before the check"))
    if "interpreter" in argv:
        argv = argv[:-1]
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    (tmp_path / "folder.mp4").mkdir()
    if argv[0] == "-o":
        argv = ["-o", str(tmp_path / argv[1])]
    else:
        argv = ["-o", str(tmp_path / "out.npy"), *argv]
    code, out, err = _run(capsys, ["run", PROMPT, *argv, *ARGS, "--no-progress"])
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vidtrt: error:") and fragment in lines[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["folder.mp4"]  # nothing written


def test_generate_checks_the_output_before_contacting_the_server(tmp_path, capsys):
    """A bad output or fps fails before any request is sent (the closed port would say otherwise)."""
    for argv, fragment in ((["-o", str(tmp_path / "missing" / "x.mp4")], "does not exist"),
                           (["-o", str(tmp_path / "x.mp4"), "--fps", "1000"], "invalid --fps 1000")):
        code, out, err = _run(capsys, ["generate", PROMPT, "--url", "127.0.0.1:9", *argv])
        assert code == 2 and err.count("\n") == 1 and fragment in err, err


@pytest.mark.parametrize("argv,fragment", [
    (["run", PROMPT, "--height", "abc"], "argument --height: invalid int value: 'abc'"),
    (["run", PROMPT, "--prompt-policy", "maybe"], "argument --prompt-policy: invalid choice: 'maybe'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required: command"),
])
def test_argument_errors_are_one_line(capsys, argv, fragment):
    """argparse's own errors (types, choices, missing arguments) follow the project's style: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "", (e.value.code, out, err)
    assert err.count("\n") == 1 and err.startswith("vidtrt") and fragment in err and "--help" in err, err


def test_serve_refuses_a_folder_without_models(tmp_path, capsys):
    """`vidtrt serve` on a folder that holds no Triton model (e.g. a `vidtrt export` folder), or on a missing one:
    one line, exit 2, before tritonserver starts (it would start on an empty folder and serve nothing)."""
    export_like = tmp_path / "export"
    (export_like / "sub").mkdir(parents=True)
    (export_like / "manifest.json").write_text("{}")
    for repo, words in ((export_like, "holds no Triton model"), (tmp_path / "missing", "is not a directory")):
        code, out, err = _run(capsys, ["serve", "--repository", str(repo)])
        assert code == 2 and out == "" and err.count("\n") == 1 and words in err and "starting" not in err, err
