"""The Triton container recipe (deploy/triton/, docs/triton-container.md) kept consistent without docker.

Each check is a function returning the problems it finds, run once on the real files and once on a modified
copy that must fail:

- the Dockerfile parses (a plain parser of the instructions we use; no new dependency for it);
- its FROM tag's NGC release maps to the tritonserver version the suite runs (the bundled binary's own report
  and the nvidia-pytriton pin of requirements/lock.txt agree on it);
- every COPY source exists in the context deploy/triton/build-context.sh makes, and nothing else is in it; its
  wheel carries the model templates;
- pins it installs (inline and deploy/triton/constraints.txt) agree with requirements/lock.txt where both name
  a package, unless the line says why not; numpy is the Python-backend stub's numpy;
- its CMD runs `vidtrt serve` (the HTTP guard and the graceful shutdown come with it): the serve flags parse
  with our CLI's parser; the tritonserver command serve makes of them, plus the flags after `--`, uses only
  flags of the bundled tritonserver 2.51, repeats none of serve's (unless a listed override) and keeps the
  settings the doc promises; the image installs what the guard imports; its health check waits as long as
  serve waits for the models;
- serve gives the image's tritonserver the model processes' environment (PROCESS_ENV_DEFAULTS) and makes no
  stub environment for it (no pip install at start); the ENV lines do not contradict those settings;
- every package a `pip install` of the Dockerfile names is pinned (constraints.txt or inline);
- the doc's vidtrt commands (also those run in the container) parse with our argparse parsers, its
  perf_analyzer flags and model names exist;
- the doc's ports, mounts, image tag, build context and build args match the Dockerfile; docker waits longer
  than serve's shutdown before it kills the container.

The context script runs once per session (the `triton_context` fixture, shared with tests/test_wheel.py).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import os
import re
import shlex
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "triton" / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "triton" / "constraints.txt"
CONTEXT_SCRIPT = "deploy/triton/build-context.sh"
DOC = ROOT / "docs" / "triton-container.md"
LOCK = ROOT / "requirements" / "lock.txt"
PERF_ANALYZER = ROOT / ".tools" / "bin" / "pa"

# NGC release of nvcr.io/nvidia/tritonserver -> the Triton Inference Server version in it. Source: the version
# map in build.py at each vX.Y.Z tag of github.com/triton-inference-server/server ("triton container" /
# "triton_container_version"); the 24.10 row also in README.md at v2.51.0 ("2.51.0 corresponds to the 24.10
# container release") and in Triton's release notes for 24.10. 25.01 and 25.07 are left out: no tag's map
# confirms them.
NGC_TRITON = {
    "24.03": "2.44.0", "24.04": "2.45.0", "24.05": "2.46.0", "24.06": "2.47.0", "24.07": "2.48.0",
    "24.08": "2.49.0", "24.09": "2.50.0", "24.10": "2.51.0", "24.11": "2.52.0", "24.12": "2.53.0",
    "25.02": "2.55.0", "25.03": "2.56.0", "25.04": "2.57.0", "25.05": "2.58.0", "25.06": "2.59.0",
    "25.08": "2.60.0", "25.09": "2.61.0", "25.10": "2.62.0", "25.11": "2.63.0", "25.12": "2.64.0",
}
# nvidia-pytriton release -> the tritonserver its wheel embeds (pytriton's CHANGELOG.md).
PYTRITON_TRITON = {"0.5.13": "2.51.0", "0.5.14": "2.51.0", "0.6.0": "2.51.0", "0.7.0": "2.51.0"}
NGC_IMAGE = re.compile(r"^nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3$")
# The tritonserver of the NGC image: build.py at the server's v2.51.0 tag installs it under /opt/tritonserver
# and puts /opt/tritonserver/bin first on the image's PATH.
NGC_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"
# Flags after the CMD's `--` that may repeat one `vidtrt serve` passes (tritonserver takes the last value), and why.
TRITON_OVERRIDES = {
    "--allow-gpu-metrics": "serve turns Triton's GPU metrics off (meant for machines without a GPU); the "
                           "container runs on GPUs",
}
# Flags after `--` that would break serve itself, and why.
TRITON_FORBIDDEN = {
    "--log-file": "serve reads tritonserver's log from its own file (readiness, the cause of a crash)",
    "--log-info": "serve knows the server started from tritonserver's info lines ('Started HTTPService at ...')",
}
# What the doc promises of the server in the container (a repository with complete configs; a model that fails
# to load stops the server; ready only when every model is).
TRITON_REQUIRED = {"--disable-auto-complete-config": "", "--exit-on-error": "true", "--strict-readiness": "true"}
# What vidtrt.serving.http_guard imports beyond the standard library (aiohttp brings yarl).
GUARD_REQUIRES = "aiohttp"


# ------------------------------------------------------------------------------------------ Dockerfile
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "LABEL", "CMD",
                "ENTRYPOINT", "HEALTHCHECK", "VOLUME", "SHELL", "STOPSIGNAL", "ONBUILD"}


class DockerfileError(ValueError):
    pass


@dataclass
class Instruction:
    name: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD/ENTRYPOINT/RUN ... ["a", "b"], else None."""
        text = self.args.strip()
        if self.name == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip() if "CMD" in text else ""
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DockerfileError(f"line {self.line}: {self.name} is not a valid JSON array: {e}") from None
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DockerfileError(f"line {self.line}: {self.name} must be a JSON array of strings")
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped (as docker reads them)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        name, _, args = buf.strip().partition(" ")
        if name.upper() not in INSTRUCTIONS:
            raise DockerfileError(f"line {start}: unknown instruction {name!r}")
        out.append(Instruction(name.upper(), args.strip(), start))
        buf = ""
    if buf:
        raise DockerfileError(f"line {start}: the last instruction ends with a line continuation")
    names = [i.name for i in out]
    if "FROM" not in names or any(nm != "ARG" for nm in names[:names.index("FROM")]):
        raise DockerfileError("the first instruction (after ARGs) must be FROM")
    for i in out:
        if i.name in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
            i.exec_form()
    return out


def _one(instrs: list[Instruction], name: str) -> Instruction:
    found = [i for i in instrs if i.name == name]
    if len(found) != 1:
        raise DockerfileError(f"expected one {name}, found {len(found)}")
    return found[0]


def dockerfile_env(instrs: list[Instruction]) -> dict[str, str]:
    env = {}
    for i in instrs:
        if i.name == "ENV":
            for tok in shlex.split(i.args):
                key, sep, value = tok.partition("=")
                if not sep:
                    raise DockerfileError(f"line {i.line}: use ENV KEY=VALUE ({tok!r})")
                env[key] = value
    return env


def server_command(instrs: list[Instruction]) -> list[str]:
    cmd = _one(instrs, "CMD").exec_form()
    if not cmd or cmd[:2] != ["vidtrt", "serve"]:
        raise DockerfileError(f"CMD must run `vidtrt serve` in exec form (JSON array), not {cmd!r}: tritonserver "
                              "on its own has neither the HTTP guard nor the graceful shutdown")
    return cmd


def parse_vidtrt(argv: list[str]) -> argparse.Namespace:
    """``vidtrt ARGV`` parsed by the CLI's own parser (vidtrt.cli.build_parser, whose `serve` subcommand takes
    vidtrt.serving.server.add_serve_arguments); ValueError with argparse's message when it does not parse."""
    from vidtrt.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit:
        raise ValueError((err.getvalue().strip().splitlines() or ["?"])[-1]) from None


def serve_namespace(cmd: list[str]) -> argparse.Namespace:
    """The arguments of ``vidtrt serve ...`` (``cmd`` starts with "vidtrt"); ValueError if it does not parse."""
    from vidtrt.serving.server import serve_main

    args = parse_vidtrt(cmd[1:])
    if getattr(args, "func", None) is not serve_main:
        raise ValueError(f"`{' '.join(cmd[:2])}` is not `vidtrt serve`")
    return args


def serve_server(args: argparse.Namespace):
    """The TritonServer that serve_main builds from ``args`` (caught in its constructor, never started), with the
    binary set to ``args.tritonserver`` (the image's, absent here), so ``command()`` is the container's."""
    from unittest import mock

    from vidtrt.serving import server

    made = []

    class Built(Exception):
        pass

    class Catch(server.TritonServer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)
            raise Built

    args = argparse.Namespace(**{**vars(args), "log_file": os.devnull})  # no temporary log folder
    with mock.patch.object(server, "TritonServer", Catch), contextlib.suppress(Built):
        server.serve_main(args)
    assert made, "serve_main no longer builds a TritonServer first: update serve_server()"
    srv = made[0]
    srv.binary = Path(args.tritonserver or NGC_TRITONSERVER)
    return srv


def serve_args(instrs: list[Instruction]) -> argparse.Namespace:
    try:
        return serve_namespace(server_command(instrs))
    except ValueError as e:
        raise DockerfileError(f"CMD: {e}") from None


def port_roles(instrs: list[Instruction]) -> dict[str, int]:
    return _roles(serve_args(instrs))


def _roles(args: argparse.Namespace) -> dict[str, int]:
    return {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}


def split_commands(line: str) -> list[list[str]]:
    """A shell line as commands of tokens: quotes respected, comments dropped, split at |, ||, &&, ; and &."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    commands: list[list[str]] = [[]]
    for tok in lex:
        if tok in ("|", "||", "&&", ";", "&"):
            commands.append([])
        else:
            commands[-1].append(tok)
    return [c for c in commands if c]


# ------------------------------------------------------------------------------------------ checks
def check_base_release(instrs: list[Instruction], server_version: str) -> list[str]:
    image = _one(instrs, "FROM").args.split()[0]
    m = NGC_IMAGE.match(image)
    if not m:
        return [f"FROM {image}: not an NGC tritonserver image (nvcr.io/nvidia/tritonserver:YY.MM-py3)"]
    release = m.group(1)
    if release not in NGC_TRITON:
        return [f"FROM {image}: NGC release {release} is not in the table NGC_TRITON (add it with its source)"]
    if NGC_TRITON[release] != server_version:
        return [f"FROM {image}: release {release} is Triton {NGC_TRITON[release]}, the tests run {server_version}"]
    return []


def copy_sources(instrs: list[Instruction]) -> list[tuple[str, str]]:
    """(source, destination) of every COPY/ADD from the build context."""
    pairs = []
    for i in instrs:
        if i.name in ("COPY", "ADD"):
            toks = i.exec_form() or shlex.split(i.args)
            if any(t.startswith("--from") for t in toks):
                continue
            toks = [t for t in toks if not t.startswith("--")]
            if len(toks) < 2:
                raise DockerfileError(f"line {i.line}: {i.name} needs a source and a destination")
            pairs += [(src, toks[-1]) for src in toks[:-1]]
    return pairs


def check_copy_sources(instrs: list[Instruction], context: Path) -> list[str]:
    problems, copied = [], []
    files = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    for src, _ in copy_sources(instrs):
        pattern = src.rstrip("/")
        hits = [f for f in files if fnmatch.fnmatch(f, pattern) or f.startswith(pattern + "/")]
        if not hits:
            problems.append(f"COPY {src}: nothing in the build context matches (context: {files})")
        copied += hits
    extra = [f for f in files if f not in copied and f not in ("Dockerfile", ".vidtrt-triton-context")]
    if extra:
        problems.append(f"the build context holds files the Dockerfile never copies: {extra}")
    return problems


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(text: str) -> dict[str, tuple[str, str]]:
    """name -> (version, the line's comment) of 'name==version  # comment' lines."""
    pins = {}
    for raw in text.splitlines():
        body, _, comment = raw.partition("#")
        body = body.strip()
        if body:
            name, sep, version = body.partition("==")
            if not sep:
                raise ValueError(f"{body!r} is not a 'name==version' pin")
            pins[_canonical(name)] = (version.strip(), comment.strip())
    return pins


def pip_installs(instrs: list[Instruction]) -> list[list[str]]:
    """The arguments of every `pip install` in RUN instructions."""
    out = []
    for i in instrs:
        if i.name != "RUN":
            continue
        for toks in split_commands(i.args):
            if "pip" in toks and "install" in toks:
                out.append(toks[toks.index("install") + 1:])
    return out


def check_pins(instrs: list[Instruction], constraints_text: str, lock_text: str, stub_numpy: str) -> list[str]:
    lock = {n: v for n, (v, _) in read_pins(lock_text).items()}
    problems = []
    pins: dict[str, tuple[str, str, str]] = {}  # name -> (version, comment, where)
    constraint_dest = [dest for src, dest in copy_sources(instrs) if Path(src).name == CONSTRAINTS.name]
    for args in pip_installs(instrs):
        if not any(a == "-c" and i + 1 < len(args) and args[i + 1] in constraint_dest for i, a in enumerate(args)):
            problems.append(f"pip install {' '.join(args)}: not under -c {constraint_dest or 'constraints.txt'}")
        for a in args:
            name, sep, version = a.partition("==")
            if sep and not a.startswith("-"):
                pins[_canonical(name)] = (version, "", "the Dockerfile")
    for name, (version, comment) in read_pins(constraints_text).items():
        pins.setdefault(name, (version, comment, CONSTRAINTS.name))
    for name, (version, comment, where) in sorted(pins.items()):
        differs = comment.startswith("differs from the lock:") and len(comment) > len("differs from the lock:") + 5
        if name in lock and version != lock[name] and not differs:
            problems.append(f"{where}: {name}=={version}, the lock has {lock[name]} (say why: "
                            "'# differs from the lock: REASON')")
        if name in lock and version == lock[name] and comment.startswith("differs from the lock"):
            problems.append(f"{where}: {name}=={version} is the lock's version but says it differs")
    numpy = pins.get("numpy", ("", "", ""))[0]
    if f"numpy=={numpy}" != stub_numpy:
        problems.append(f"numpy=={numpy or '?'}: the Python-backend stub needs {stub_numpy} "
                        "(vidtrt.serving.server.STUB_NUMPY)")
    return problems


def check_env(instrs: list[Instruction], defaults: dict[str, str]) -> list[str]:
    """`vidtrt serve` sets ``defaults`` (PROCESS_ENV_DEFAULTS) for the model processes unless the environment
    already has them: an ENV line with another value would win."""
    env = dockerfile_env(instrs)
    problems = [f"ENV {k}={env[k]!r} overrides the {v!r} that `vidtrt serve` gives the model processes "
                "(vidtrt.serving.server.PROCESS_ENV_DEFAULTS)" for k, v in defaults.items() if k in env and env[k] != v]
    if not env.get("VIDTRT_CACHE", "").startswith("/"):
        problems.append("ENV VIDTRT_CACHE: an absolute path in the image is needed (embedded presets go there)")
    return problems


def check_serve_env(binary: Path, base: dict[str, str]) -> list[str]:
    """What `vidtrt serve` runs ``binary`` with (server_env, from the image's environment ``base``): the model
    processes' settings, and no stub environment (that one pip installs numpy<2, and it is only for the
    nvidia-pytriton binary: the image's stub is built for its own Python)."""
    from unittest import mock

    from vidtrt.serving import server

    calls = []

    def stub_env(*a, **kw):
        calls.append(a)
        return None

    with mock.patch.object(server, "stub_python_env", stub_env), \
         mock.patch.object(server.subprocess, "run", side_effect=AssertionError("server_env ran a command")):
        env = server.server_env(binary, dict(base))
    problems = [f"server_env({binary}) makes a stub environment (pip install {server.STUB_NUMPY})"] if calls else []
    problems += [f"server_env({binary}): {k}={env.get(k)!r}, the model processes need {v!r}"
                 for k, v in server.PROCESS_ENV_DEFAULTS.items() if env.get(k) != v]
    return problems


def check_server_command(cmd: list[str], help_text: str, where: str = "CMD") -> list[str]:
    """``vidtrt serve ...`` as the container runs it: parsed by our CLI; its tritonserver command (serve's
    flags, then those after `--`) checked against ``tritonserver --help`` of 2.51."""
    problems = [f"{where}: {p}" for p in vidtrt_flag_problems(cmd[1:])]
    try:
        args = serve_namespace(cmd)
    except ValueError as e:
        return problems + [f"{where}: `{' '.join(cmd)}` does not parse: {e}"]
    if args.address != "0.0.0.0":
        problems.append(f"{where}: --address must be 0.0.0.0 inside a container (docker's port mapping cannot "
                        f"reach a server bound to the container's loopback), not {args.address}")
    if args.tritonserver != NGC_TRITONSERVER:
        problems.append(f"{where}: --tritonserver {args.tritonserver}: the image's binary is {NGC_TRITONSERVER}")
    if not args.max_request_bytes:
        problems.append(f"{where}: --max-request-bytes 0 turns the HTTP guard off (a body of a few MB or an "
                        "impossible shape then kills tritonserver 2.51)")
    srv = serve_server(args)
    full = srv.command()
    extra = list(srv.extra_args)
    own = full[1:len(full) - len(extra)]
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text, re.M))
    own_values = dict(a.partition("=")[::2] for a in own)
    for flag in own_values:
        if flag not in known:
            problems.append(f"{where}: vidtrt serve passes {flag}, which tritonserver 2.51 does not have")
    for tok in extra:
        flag, sep, value = tok.partition("=")
        if not flag.startswith("--") or not sep:
            problems.append(f"{where}: after `--`, write tritonserver flags as --flag=value, not {tok!r}")
        elif flag not in known:
            problems.append(f"{where}: tritonserver 2.51 has no flag {flag}")
        elif flag in TRITON_FORBIDDEN:
            problems.append(f"{where}: {flag} after `--` breaks vidtrt serve: {TRITON_FORBIDDEN[flag]}")
        elif flag in own_values and flag not in TRITON_OVERRIDES:
            problems.append(f"{where}: vidtrt serve already passes {flag}={own_values[flag]}: drop {tok} after `--`")
        elif flag in own_values and value == own_values[flag]:
            problems.append(f"{where}: {tok} after `--` repeats what vidtrt serve passes")
    effective = dict(a.partition("=")[::2] for a in full[1:])  # tritonserver: the last value of a flag wins
    for flag, value in TRITON_REQUIRED.items():
        if effective.get(flag) != value:
            problems.append(f"{where}: tritonserver runs with {flag}={effective.get(flag)}, the doc promises "
                            f"{flag}{'=' + value if value else ''}")
    return problems


def _seconds(duration: str) -> float:
    """A docker duration ("600s", "10m", "1h30m") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise DockerfileError(f"not a docker duration: {duration!r}")
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def check_healthcheck(instrs: list[Instruction]) -> list[str]:
    """The health check (its port: check_doc_deployment) gives the models as long to load as serve does
    (--ready-timeout): docker does not count failures during the start period."""
    health = next((i for i in instrs if i.name == "HEALTHCHECK"), None)
    if health is None:
        return ["no HEALTHCHECK"]
    args = serve_args(instrs)
    m = re.search(r"--start-period=(\S+)", health.args)
    start = _seconds(m.group(1)) if m else 0.0
    if start < args.ready_timeout:
        return [f"HEALTHCHECK --start-period is {start:g} s, shorter than the {args.ready_timeout:g} s that "
                "`vidtrt serve --ready-timeout` lets the models load: a loading server would show unhealthy"]
    return []


def requirements_named(instrs: list[Instruction]) -> dict[str, tuple[set[str], str]]:
    """Every package a `pip install` of the Dockerfile names: name -> (extras, the version pinned inline or "");
    the vidtrt wheel as "vidtrt"."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                   "-t", "--target", "-f", "--find-links"}
    out: dict[str, tuple[set[str], str]] = {}
    for args in pip_installs(instrs):
        skip = False
        for a in args:
            if skip or a.startswith("-"):
                skip = not skip and a in takes_value
                continue
            m = re.match(r"^([^\[=<>~!]+)(?:\[([^\]]*)\])?(?:==(.+))?$", a)
            if not m:
                continue
            name, extras, version = m.group(1), m.group(2) or "", m.group(3) or ""
            if name.startswith("$"):  # a shell variable: the wheel, or an option spliced in by ${VAR:+...}
                if "wheel" not in name and ".whl" not in name:
                    continue
                name = "vidtrt"
            prev = out.get(_canonical(name), (set(), ""))
            out[_canonical(name)] = (prev[0] | {e.strip() for e in extras.split(",") if e.strip()},
                                     version or prev[1])
    return out


def check_named_packages_pinned(instrs: list[Instruction], constraints_text: str) -> list[str]:
    pins = read_pins(constraints_text)
    return [f"the Dockerfile installs {name}, which {CONSTRAINTS.name} does not pin (nor the Dockerfile inline)"
            for name, (_, version) in sorted(requirements_named(instrs).items())
            if name != "vidtrt" and not version and name not in pins]


def check_serve_dependencies(instrs: list[Instruction]) -> list[str]:
    """`vidtrt serve` with its HTTP guard imports aiohttp, which the wheel's [kernels] extra does not bring."""
    if not serve_args(instrs).max_request_bytes:
        return []
    named = requirements_named(instrs)
    if GUARD_REQUIRES in named or "serve" in named.get("vidtrt", (set(), ""))[0]:
        return []
    return [f"the CMD's `vidtrt serve` runs the HTTP guard (vidtrt.serving.http_guard), which imports "
            f"{GUARD_REQUIRES}: no pip install of the Dockerfile names it"]


# ------------------------------------------------------------------------------------------ the doc
def doc_commands(text: str) -> list[list[str]]:
    """Each shell command of the doc's fenced code blocks as tokens (continuations joined, comments dropped,
    split at |, &&, ;)."""
    commands = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if lang not in ("", "bash", "sh", "shell"):  # a yaml block, say
            continue
        for line in block.replace("\\\n", " ").splitlines():
            commands += split_commands(line)
    return commands


def inline_vidtrt(text: str) -> list[list[str]]:
    """`vidtrt ...` inline code spans outside fenced blocks (flags checked, not parsed: they may be partial)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [shlex.split(span) for span in re.findall(r"`(vidtrt [^`]+)`", prose)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def vidtrt_flag_problems(argv: list[str]) -> list[str]:
    """Flags of ``vidtrt ARGV`` that its subcommand lacks, spelled out in full (argparse would also take an
    abbreviation); those after `--` are not vidtrt's."""
    from vidtrt.cli import build_parser

    subs = _subparsers(build_parser())
    if not argv or argv[0] not in subs:
        return [f"`vidtrt {argv[0] if argv else ''}` is not a subcommand ({list(subs)})"]
    known = subs[argv[0]]._option_string_actions
    problems = []
    for tok in argv[1:]:
        if tok == "--":
            break
        if tok.startswith("-") and len(tok) > 1 and not re.match(r"^-\d", tok):
            flag = tok.split("=", 1)[0]
            if flag not in known:
                problems.append(f"`vidtrt {argv[0]}` has no flag {flag}")
    return problems


def check_doc_cli(text: str) -> list[str]:
    problems = []
    commands = []
    for cmd in doc_commands(text):
        if cmd[:2] == ["docker", "run"]:  # the command a container runs
            with contextlib.suppress(ValueError):  # an unknown docker option: check_doc_deployment says so
                cmd = parse_docker_run(cmd[2:]).command or ["-"]
        if cmd[0] == "vidtrt":
            commands.append(cmd)
    for cmd in commands:
        where = "`" + " ".join(cmd) + "`"
        problems += [f"{where}: {p}" for p in vidtrt_flag_problems(cmd[1:])]
        try:
            parse_vidtrt(cmd[1:])
        except ValueError as e:
            problems.append(f"{where}: does not parse: {e}")
    for argv in inline_vidtrt(text):
        problems += [f"inline `{' '.join(argv)}`: {p}" for p in vidtrt_flag_problems(argv[1:])]
    return problems


def doc_server_commands(text: str, tags: set[str] | None = None) -> list[list[str]]:
    """The `vidtrt serve` commands the doc runs in a container (instead of the image's CMD)."""
    out = []
    for cmd in doc_commands(text):
        if cmd[:2] == ["docker", "run"]:
            with contextlib.suppress(ValueError):
                run = parse_docker_run(cmd[2:])
                if run.command[:2] == ["vidtrt", "serve"] and (tags is None or run.image in tags):
                    out.append(run.command)
    return out


DOCKER_RUN_VALUES = {"-p", "--publish", "-v", "--volume", "-e", "--env", "--name", "--gpus", "--shm-size",
                     "--ulimit", "--net", "--network", "-u", "--user", "--entrypoint", "-w", "--workdir",
                     "--ipc", "--env-file", "--mount", "--stop-timeout"}
DOCKER_RUN_FLAGS = {"--rm", "-d", "--detach", "-i", "-t", "-it", "-ti", "--init", "--interactive", "--tty"}


@dataclass
class DockerRun:
    options: list[tuple[str, str | None]]
    image: str
    command: list[str]

    def values(self, *names: str) -> list[str]:
        return [v for k, v in self.options if k in names and v is not None]


def parse_docker_run(args: list[str]) -> DockerRun:
    options, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        key, sep, value = args[i].partition("=")
        if key in DOCKER_RUN_VALUES:
            if not sep:
                i += 1
                value = args[i]
            options.append((key, value))
        elif key in DOCKER_RUN_FLAGS:
            options.append((key, None))
        else:
            raise ValueError(f"docker run option {key} is not in this test's table: add it to DOCKER_RUN_VALUES "
                             "or DOCKER_RUN_FLAGS")
        i += 1
    if i >= len(args):
        raise ValueError(f"docker run {' '.join(args)}: no image")
    return DockerRun(options, args[i], args[i + 1:])


def _mounts(run: DockerRun) -> dict[str, str]:
    """container path -> host path (or volume name) of -v SRC:DEST[:ro]."""
    out = {}
    for v in run.values("-v", "--volume"):
        parts = v.split(":")
        out[parts[1]] = parts[0]
    return out


def _option(argv: list[str], *names: str, default: str | None = None) -> str | None:
    for i, tok in enumerate(argv):
        key, sep, value = tok.partition("=")
        if key in names:
            return value if sep else (argv[i + 1] if i + 1 < len(argv) else None)
    return default


def _host_port(url: str) -> int | None:
    m = re.match(r"^(?:https?://)?(localhost|127\.0\.0\.1):(\d+)", url)
    return int(m.group(2)) if m else None


def check_doc_deployment(text: str, instrs: list[Instruction]) -> list[str]:
    problems = []
    roles = port_roles(instrs)
    exposed = {int(p.split("/")[0]) for i in instrs if i.name == "EXPOSE" for p in i.args.split()}
    if exposed != set(roles.values()):
        problems.append(f"Dockerfile: EXPOSE {sorted(exposed)} but the server listens on {roles}")
    health = next((i for i in instrs if i.name == "HEALTHCHECK"), None)
    if health and f":{roles['http']}/v2/health/ready" not in health.args:
        problems.append(f"Dockerfile: HEALTHCHECK does not ask the HTTP port {roles['http']} for /v2/health/ready "
                        "(serve's HTTP guard, which forwards it to tritonserver)")
    env = dockerfile_env(instrs)
    image_args = serve_args(instrs)
    build_args = {i.args.split("=")[0].strip() for i in instrs if i.name == "ARG"}

    commands = doc_commands(text)
    tags, contexts, made, built_out = set(), [], [], set()
    for cmd in commands:
        if cmd[0] == "bash" and len(cmd) > 1:
            if not (ROOT / cmd[1]).is_file():
                problems.append(f"`{' '.join(cmd)}`: {cmd[1]} does not exist")
            if cmd[1] == CONTEXT_SCRIPT:
                made.append(cmd[2] if len(cmd) > 2 else "build/triton-context")
        if cmd[:2] == ["docker", "build"]:
            tags.add(_option(cmd, "-t", "--tag"))
            contexts.append(cmd[-1])
            for i, tok in enumerate(cmd):
                name = cmd[i + 1].split("=")[0] if tok == "--build-arg" else None
                if name is not None and name not in build_args:
                    problems.append(f"`docker build`: --build-arg {name} is no ARG of the Dockerfile")
        if cmd[:2] == ["vidtrt", "build"]:
            built_out.add(_option(cmd, "--out", "-o", default="build/model_repository"))
    if not tags or not contexts:
        problems.append("the doc has no `docker build -t TAG CONTEXT`")
    for ctx in contexts:
        if ctx not in made:
            problems.append(f"`docker build ... {ctx}`: not the folder the doc makes with {CONTEXT_SCRIPT} ({made})")

    published: dict[int, int] = {}
    runs = []
    for cmd in commands:
        if cmd[:2] != ["docker", "run"]:
            continue
        try:
            run = parse_docker_run(cmd[2:])
        except ValueError as e:
            problems.append(str(e))
            continue
        runs.append(run)
        if run.image not in tags:
            continue
        where = f"`docker run ... {run.image}`"
        args = image_args
        if run.command:
            if run.command[:2] != ["vidtrt", "serve"]:
                problems.append(f"{where} runs `{' '.join(run.command[:2])}`, not `vidtrt serve`: no HTTP guard, "
                                "no graceful shutdown")
                continue
            try:
                args = serve_namespace(run.command)
            except ValueError as e:
                problems.append(f"{where}: `{' '.join(run.command)}` does not parse ({e})")
                continue
        run_roles, repository = _roles(args), args.repository
        # On SIGTERM serve waits this long for tritonserver before it kills it (TritonServer.stop); docker
        # kills the whole container --stop-timeout seconds (default 10) after its SIGTERM.
        serve_wait = serve_server(args).exit_timeout_s + 10
        stop = run.values("--stop-timeout")
        if not stop or not stop[-1].isdigit() or int(stop[-1]) <= serve_wait:
            problems.append(f"{where}: --stop-timeout {stop[-1] if stop else '(docker: 10)'}: docker must wait "
                            f"longer than serve's {serve_wait} s shutdown (--exit-timeout {args.exit_timeout} + 10)")
        ports = {}
        for spec in run.values("-p", "--publish"):
            parts = spec.split(":")
            host, container = int(parts[-2]), int(parts[-1].split("/")[0])
            ports[container] = host
            if published.get(host, container) != container:
                problems.append(f"{where}: host port {host} is published for two container ports")
            published[host] = container
        if set(ports) != set(run_roles.values()):
            problems.append(f"{where}: publishes container ports {sorted(ports)}, the server listens on {run_roles}")
        mounts = _mounts(run)
        if repository not in mounts:
            problems.append(f"{where}: nothing is mounted at {repository} (vidtrt serve --repository)")
        elif mounts[repository].removeprefix("$PWD/") not in built_out:
            problems.append(f"{where}: mounts {mounts[repository]} at {repository}, not a repository the doc "
                            f"builds with `vidtrt build --out` ({sorted(built_out)})")
        for e in run.values("-e", "--env"):
            key, _, value = e.partition("=")
            if key == "VIDTRT_MODEL_ROOT" and value not in mounts:
                problems.append(f"{where}: VIDTRT_MODEL_ROOT={value} is not a mounted path ({sorted(mounts)})")
        for target in mounts:
            if target.startswith("/var/cache") and target != env.get("VIDTRT_CACHE"):
                problems.append(f"{where}: cache volume at {target}, the image's VIDTRT_CACHE is "
                                f"{env.get('VIDTRT_CACHE')}")
        if not run.values("--gpus") or not run.values("--shm-size"):
            problems.append(f"{where}: needs --gpus and --shm-size (the Python backend's tensors go through /dev/shm)")
    if not published:
        problems.append("the doc never runs the image it builds with published ports")

    def expect(port: int | None, role: str, where: str) -> None:
        if port is None:
            problems.append(f"{where}: no localhost:PORT to check")
        elif published.get(port) != roles[role]:
            problems.append(f"{where}: host port {port} reaches container port {published.get(port)}, "
                            f"the {role} port is {roles[role]}")

    client_cmds = [(c, None) for c in commands] + [(r.command, r) for r in runs if r.command]
    for cmd, run in client_cmds:
        where = "`" + " ".join(cmd) + "`"
        if cmd[:2] == ["vidtrt", "generate"]:
            role = "http" if _option(cmd, "--protocol") == "http" else "grpc"
            expect(_host_port(_option(cmd, "--url", default="localhost:8001")), role, where)
        elif cmd[0] == "curl":
            url = next((t for t in cmd[1:] if _host_port(t)), None)
            if url:
                expect(_host_port(url), "metrics" if "/metrics" in url else "http", where)
        elif Path(cmd[0]).name in ("pa", "perf_analyzer"):
            role = "grpc" if _option(cmd, "-i", "--protocol") == "grpc" else "http"
            expect(_host_port(_option(cmd, "-u", "--url") or ""), role, where)
            data = _option(cmd, "--input-data")
            if data and run is not None:
                for target, source in _mounts(run).items():
                    if data.startswith(target + "/"):
                        data = source.removeprefix("$PWD/") + data[len(target):]
            if data and not (ROOT / data).is_file():
                problems.append(f"{where}: --input-data {data} does not exist in the checkout")
    return problems


def check_doc_server_commands(text: str, instrs: list[Instruction], help_text: str) -> list[str]:
    """The doc shows the image's command as it is, and every `vidtrt serve` it runs in the container instead
    passes the same checks as the CMD."""
    cmd = server_command(instrs)
    shown = [c for c in doc_commands(text) if c[:2] == ["vidtrt", "serve"]]
    problems = [] if cmd in shown else [f"the doc never shows the image's command `{' '.join(cmd)}` "
                                        f"(it shows {[' '.join(c) for c in shown]})"]
    for run_cmd in doc_server_commands(text):
        problems += check_server_command(run_cmd, help_text, where="`docker run ... " + " ".join(run_cmd) + "`")
    return problems


def check_doc_perf_analyzer(text: str, help_text: str, model_names: list[str]) -> list[str]:
    known = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])", help_text))
    problems = []
    commands = doc_commands(text)
    for cmd in commands:
        if cmd[:2] == ["docker", "run"]:
            cmd = parse_docker_run(cmd[2:]).command or ["-"]
        if Path(cmd[0]).name not in ("pa", "perf_analyzer"):
            continue
        where = "`" + " ".join(cmd) + "`"
        for tok in cmd[1:]:
            if tok.startswith("-") and tok.split("=")[0] not in known:
                problems.append(f"{where}: perf_analyzer 2.51 has no flag {tok.split('=')[0]}")
        model = _option(cmd, "-m")
        if model not in model_names:
            problems.append(f"{where}: -m {model} is not a model of the repository ({model_names})")
    return problems


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def instrs() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def tritonserver_binary() -> Path:
    from vidtrt.serving.server import bundled_tritonserver

    binary = bundled_tritonserver()
    assert binary is not None, "the suite runs the tritonserver bundled in nvidia-pytriton (scripts/setup.sh)"
    return binary


@pytest.fixture(scope="module")
def server_version(tritonserver_binary, tmp_path_factory) -> str:
    """The version the bundled binary reports (its start-up table; the repository path does not exist, so it
    stops at once), checked against the nvidia-pytriton pin of the lock."""
    missing = tmp_path_factory.mktemp("no-repo") / "absent"
    r = subprocess.run([str(tritonserver_binary), f"--model-repository={missing}", "--allow-http=false",
                        "--allow-grpc=false", "--allow-metrics=false"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    m = re.search(r"\|\s*server_version\s*\|\s*([0-9.]+)\s*\|", r.stdout + r.stderr)
    assert m, (r.stdout + r.stderr)[-2000:]
    pytriton = read_pins(LOCK.read_text())["nvidia-pytriton"][0]
    assert PYTRITON_TRITON.get(pytriton) == m.group(1), (pytriton, m.group(1))
    return m.group(1)


@pytest.fixture(scope="module")
def server_help(tritonserver_binary) -> str:
    r = subprocess.run([str(tritonserver_binary), "--help"], capture_output=True, text=True, timeout=60)
    assert "--model-repository" in r.stdout + r.stderr, (r.stdout + r.stderr)[-1000:]
    return r.stdout + r.stderr


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is not in the text this negative test modifies"
    return text.replace(old, new, 1)


# ------------------------------------------------------------------------------------------ tests
def test_dockerfile_parses(instrs):
    assert [i.name for i in instrs][0] == "FROM"
    assert server_command(instrs)[:2] == ["vidtrt", "serve"]
    text = DOCKERFILE.read_text()
    for broken, message in [(_edit(text, "\nEXPOSE", "\nEXPSOE"), "unknown instruction"),
                            (text.rstrip() + " \\\n", "line continuation"),
                            (_edit(text, '"--allow-gpu-metrics=true"]', '"--allow-gpu-metrics=true"'), "JSON array"),
                            (_edit(text, "FROM nvcr", "RUN true\nFROM nvcr"), "must be FROM")]:
        with pytest.raises(DockerfileError, match=message):
            parse_dockerfile(broken)
    # the CMD must be `vidtrt serve` in exec form: not tritonserver on its own, not a shell line
    bare = parse_dockerfile(_edit(text, 'CMD ["vidtrt", "serve", ', 'CMD ["tritonserver", '))
    with pytest.raises(DockerfileError, match="must run `vidtrt serve`"):
        server_command(bare)
    shell = re.sub(r'(?ms)^CMD \[.*?\]$', "CMD vidtrt serve --repository /models", text)
    with pytest.raises(DockerfileError, match="exec form"):
        server_command(parse_dockerfile(shell))


def test_base_image_is_the_release_of_the_bundled_server(instrs, server_version):
    assert check_base_release(instrs, server_version) == []
    for image, message in [("nvcr.io/nvidia/tritonserver:24.09-py3", "is Triton 2.50.0"),
                           ("nvcr.io/nvidia/tritonserver:99.01-py3", "not in the table"),
                           ("ubuntu:22.04", "not an NGC tritonserver image")]:
        other = parse_dockerfile(_edit(DOCKERFILE.read_text(), "nvcr.io/nvidia/tritonserver:24.10-py3", image))
        assert message in " ".join(check_base_release(other, server_version))


def test_copy_sources_are_the_build_context(instrs, triton_context):
    assert check_copy_sources(instrs, triton_context) == []
    # the script copies this checkout's Dockerfile and constraints unchanged
    for name in ("Dockerfile", "constraints.txt"):
        assert (triton_context / name).read_bytes() == (ROOT / "deploy" / "triton" / name).read_bytes()
    missing = parse_dockerfile(_edit(DOCKERFILE.read_text(), "COPY wheels/", "COPY vidtrt.whl /opt/\nCOPY wheels/"))
    assert "COPY vidtrt.whl: nothing in the build context" in " ".join(check_copy_sources(missing, triton_context))
    unused = parse_dockerfile(_edit(DOCKERFILE.read_text(), "COPY wheels/ /opt/vidtrt/wheels/\n", ""))
    assert "never copies" in " ".join(check_copy_sources(unused, triton_context))


def check_wheel_templates(wheel: Path) -> list[str]:
    """Every file of vidtrt/model_repository (the templates `vidtrt build` renders in the image) is in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = ROOT / "vidtrt" / "model_repository"
    want = {str(p.relative_to(ROOT)) for p in templates.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return [f"{wheel.name} lacks {name}" for name in sorted(want - names)] or (
        [] if "vidtrt/export/repository.py" in names else [f"{wheel.name} lacks vidtrt/export/repository.py"])


def test_context_wheel_holds_the_model_templates(triton_context, tmp_path):
    (wheel,) = (triton_context / "wheels").glob("vidtrt-*.whl")
    assert check_wheel_templates(wheel) == []
    stripped = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if item.filename != "vidtrt/model_repository/component/model.py":
                dst.writestr(item, src.read(item))
    assert check_wheel_templates(stripped) == [f"{wheel.name} lacks vidtrt/model_repository/component/model.py"]


def test_pins_agree_with_the_lock(instrs):
    from vidtrt.serving.server import STUB_NUMPY

    dockerfile, constraints, lock = DOCKERFILE.read_text(), CONSTRAINTS.read_text(), LOCK.read_text()
    assert check_pins(instrs, constraints, lock, STUB_NUMPY) == []
    # a pin that differs from the lock without saying why
    unexplained = re.sub(r"(?m)^transformers==5\.20\.2 .*$", "transformers==5.20.2", constraints)
    assert "transformers==5.20.2, the lock has 5.24.0" in " ".join(check_pins(instrs, unexplained, lock, STUB_NUMPY))
    # an inline pin in the Dockerfile is held to the same rule
    inline = parse_dockerfile(_edit(dockerfile, "} torch \\", "} torch==2.12.0 \\"))
    assert "torch==2.12.0, the lock has 2.13.0" in " ".join(check_pins(inline, constraints, lock, STUB_NUMPY))
    # a "differs" note on the lock's own version
    stale = _edit(constraints, "safetensors==0.8.0", "safetensors==0.8.0  # differs from the lock: no reason")
    assert "is the lock's version but says it differs" in " ".join(check_pins(instrs, stale, lock, STUB_NUMPY))
    # numpy must be the stub's
    numpy2 = re.sub(r"(?m)^numpy==1\.26\.4", "numpy==2.2.6", constraints)
    assert "vidtrt.serving.server.STUB_NUMPY" in " ".join(check_pins(instrs, numpy2, lock, STUB_NUMPY))
    # every pip install runs under the constraints
    loose = parse_dockerfile(_edit(dockerfile, "pip install --no-cache-dir -c /opt/vidtrt/constraints.txt numpy",
                                   "pip install --no-cache-dir numpy"))
    assert "not under -c" in " ".join(check_pins(loose, constraints, lock, STUB_NUMPY))


def test_env_does_not_contradict_what_vidtrt_serve_sets(instrs):
    from vidtrt.serving.server import PROCESS_ENV_DEFAULTS

    assert check_env(instrs, PROCESS_ENV_DEFAULTS) == []
    text = DOCKERFILE.read_text()
    busy = parse_dockerfile(_edit(text, "ENV VIDTRT_CACHE=", "ENV OMP_WAIT_POLICY=ACTIVE\nENV VIDTRT_CACHE="))
    assert "ENV OMP_WAIT_POLICY='ACTIVE' overrides" in " ".join(check_env(busy, PROCESS_ENV_DEFAULTS))
    relative = parse_dockerfile(_edit(text, "VIDTRT_CACHE=/var/cache/vidtrt", "VIDTRT_CACHE=cache"))
    assert "absolute path" in " ".join(check_env(relative, PROCESS_ENV_DEFAULTS))


def test_vidtrt_serve_sets_the_model_process_env_and_installs_nothing(instrs, tritonserver_binary):
    """For the image's binary serve's server_env sets PROCESS_ENV_DEFAULTS and makes no stub environment (no
    pip install at start: none is needed, and many deployments have no network). Only the nvidia-pytriton
    binary gets one, and only under NumPy 2 (the image has 1.26.4)."""
    base = {"PATH": "/opt/tritonserver/bin:/usr/local/bin:/usr/bin:/bin", **dockerfile_env(instrs)}
    assert check_serve_env(Path(NGC_TRITONSERVER), base) == []
    # the same check sees a stub environment being made: for the bundled binary server_env asks for one
    assert "makes a stub environment" in " ".join(check_serve_env(tritonserver_binary, base))
    # and a setting the image's environment overrides
    assert "OMP_WAIT_POLICY='ACTIVE'" in " ".join(check_serve_env(Path(NGC_TRITONSERVER),
                                                                  {**base, "OMP_WAIT_POLICY": "ACTIVE"}))


def test_cmd_is_vidtrt_serve_with_flags_of_our_cli_and_of_tritonserver(instrs, server_help):
    cmd = server_command(instrs)
    assert check_server_command(cmd, server_help) == []
    srv = serve_server(serve_namespace(cmd))
    assert srv.max_request_bytes and srv.address == "0.0.0.0"  # the HTTP guard on the public port
    assert srv.command()[0] == NGC_TRITONSERVER and srv.extra_args  # what the comment says it passes
    text = DOCKERFILE.read_text()
    for old, new, message in [
        # vidtrt serve's flags, by the CLI's parser
        ('"--exit-timeout", "30"', '"--exit-timout", "30"', "`vidtrt serve` has no flag --exit-timout"),
        ('"--exit-timeout", "30"', '"--exit-time", "30"', "has no flag --exit-time"),  # abbreviations too
        ('"--http-port", "8000"', '"--http-port", "http"', "does not parse: vidtrt serve: error: argument "
                                                            "--http-port: invalid int value: 'http'"),
        ('"--repository", "/models", ', "", "does not parse"),
        ('"--exit-timeout", "30", \\\n     "--", ', '"--exit-timeout", "30", \\\n     ', "does not parse"),
        ('"--address", "0.0.0.0"', '"--address", "127.0.0.1"', "--address must be 0.0.0.0"),
        ('"--tritonserver", "/opt/tritonserver/bin/tritonserver"', '"--tritonserver", "tritonserver"',
         "the image's binary is /opt/tritonserver/bin/tritonserver"),
        ('"--exit-timeout", "30"', '"--exit-timeout", "30", "--max-request-bytes", "0"', "turns the HTTP guard off"),
        # the flags after `--`, by tritonserver 2.51's --help and by what serve already passes
        ('"--allow-gpu-metrics=true"', '"--allow-gpu-metric=true"', "tritonserver 2.51 has no flag --allow-gpu-metric"),
        ('"--allow-gpu-metrics=true"', '"--allow-gpu-metrics=true", "--exit-timeout-secs=30"',
         "vidtrt serve already passes --exit-timeout-secs=30: drop --exit-timeout-secs=30"),
        ('"--allow-gpu-metrics=true"', '"--allow-gpu-metrics=true", "--strict-readiness=false"',
         "already passes --strict-readiness=true"),
        ('"--allow-gpu-metrics=true"', '"--allow-gpu-metrics=false"', "repeats what vidtrt serve passes"),
        ('"--allow-gpu-metrics=true"', '"--allow-gpu-metrics", "true"', "as --flag=value"),
        ('"--allow-gpu-metrics=true"', '"--log-file=/var/log/triton.log"', "--log-file after `--` breaks vidtrt serve"),
    ]:
        changed = server_command(parse_dockerfile(_edit(text, old, new)))
        assert message in " ".join(check_server_command(changed, server_help)), (old, new)


def test_cmd_keeps_the_settings_the_doc_promises(instrs, server_help, monkeypatch):
    """If serve stopped passing a flag the doc relies on, the CMD would have to pass it (after `--`)."""
    from vidtrt.serving import server

    command = server.TritonServer.command
    monkeypatch.setattr(server.TritonServer, "command",
                        lambda self: [a for a in command(self) if not a.startswith("--exit-on-error")])
    assert "tritonserver runs with --exit-on-error=None" in " ".join(
        check_server_command(server_command(instrs), server_help))


def test_healthcheck_waits_as_long_as_serve_lets_the_models_load(instrs):
    assert check_healthcheck(instrs) == []
    short = parse_dockerfile(_edit(DOCKERFILE.read_text(), "--start-period=1800s", "--start-period=10m"))
    assert "--start-period is 600 s, shorter than the 1800 s" in " ".join(check_healthcheck(short))
    with pytest.raises(DockerfileError, match="not a docker duration"):
        _seconds("10 min")


def test_the_image_installs_what_serve_imports(instrs):
    assert check_serve_dependencies(instrs) == []
    text = DOCKERFILE.read_text()
    without = parse_dockerfile(_edit(text, '"${wheel}[kernels]" aiohttp', '"${wheel}[kernels]"'))
    assert "imports aiohttp" in " ".join(check_serve_dependencies(without))
    extra = parse_dockerfile(_edit(text, '"${wheel}[kernels]" aiohttp', '"${wheel}[kernels,serve]"'))
    assert check_serve_dependencies(extra) == []


def test_every_package_the_dockerfile_names_is_pinned(instrs):
    named = requirements_named(instrs)
    assert {"numpy", "torch", "aiohttp", "vidtrt"} <= set(named) and named["vidtrt"][0] == {"kernels"}, named
    assert check_named_packages_pinned(instrs, CONSTRAINTS.read_text()) == []
    unpinned = parse_dockerfile(_edit(DOCKERFILE.read_text(), '[kernels]" aiohttp', '[kernels]" aiohttp psutil'))
    assert check_named_packages_pinned(unpinned, CONSTRAINTS.read_text()) == [
        "the Dockerfile installs psutil, which constraints.txt does not pin (nor the Dockerfile inline)"]
    inline = parse_dockerfile(_edit(DOCKERFILE.read_text(), '[kernels]" aiohttp', '[kernels]" aiohttp psutil==7.2.2'))
    assert check_named_packages_pinned(inline, CONSTRAINTS.read_text()) == []


def test_doc_vidtrt_commands_parse_with_our_cli():
    text = DOC.read_text()
    assert sum(c[0] == "vidtrt" for c in doc_commands(text)) >= 3
    assert check_doc_cli(text) == []
    for old, new, message in [
        ("--device cuda --out build/model_repository", "--devices cuda --out build/model_repository",
         "has no flag --devices"),
        ("--device cuda --out build/model_repository", "--device gpu --out build/model_repository",
         "invalid choice: 'gpu'"),
        ("vidtrt generate \"a cat walks on the grass\" --url", "vidtrt gen \"a cat walks on the grass\" --url",
         "is not a subcommand"),
        ("`vidtrt build --max-concurrent`", "`vidtrt build --max-concurrency`", "has no flag --max-concurrency"),
    ]:
        assert message in " ".join(check_doc_cli(_edit(text, old, new))), (old, new)


def test_doc_server_commands_are_the_cmd_and_valid(instrs, server_help):
    text = DOC.read_text()
    assert doc_server_commands(text), "the doc shows no `vidtrt serve` run in the container (--max-request-bytes)"
    assert check_doc_server_commands(text, instrs, server_help) == []
    for old, new, message in [
        ("--model-load-thread-count=8", "--model-load-threads=8", "tritonserver 2.51 has no flag --model-load-threads"),
        ("--max-request-bytes 2097152 --", "--max-request-bytes 2097152 --max-body 1 --", "has no flag --max-body"),
        ("--max-request-bytes 2097152 --", "--max-request-bytes 0 --", "turns the HTTP guard off"),
        ("--exit-timeout 30 -- --allow-gpu-metrics=true\n", "--exit-timeout 60 -- --allow-gpu-metrics=true\n",
         "never shows the image's command"),
    ]:
        assert message in " ".join(check_doc_server_commands(_edit(text, old, new), instrs, server_help)), (old, new)


def test_doc_perf_analyzer_commands():
    from vidtrt.config.families import HUNYUAN_VIDEO

    if not PERF_ANALYZER.is_file():
        pytest.skip("perf_analyzer is not installed (bash scripts/install_perf_analyzer.sh)")
    r = subprocess.run([str(PERF_ANALYZER), "--help"], capture_output=True, text=True, timeout=60)
    help_text = r.stdout + r.stderr
    assert "--concurrency-range" in help_text, help_text[-1000:]
    text, names = DOC.read_text(), HUNYUAN_VIDEO.triton_models()
    assert sum("perf_analyzer" in c or ".tools/bin/pa" in c for c in doc_commands(text)) >= 2
    assert check_doc_perf_analyzer(text, help_text, names) == []
    typo = _edit(text, "-u localhost:8001 --streaming", "-u localhost:8001 --stream")
    assert "no flag --stream" in " ".join(check_doc_perf_analyzer(typo, help_text, names))
    model = _edit(text, "-m hunyuan_video_sync", "-m hunyuan_video_async")
    assert "is not a model of the repository" in " ".join(check_doc_perf_analyzer(model, help_text, names))


def test_doc_ports_and_paths_match_the_dockerfile(instrs):
    text, dockerfile = DOC.read_text(), DOCKERFILE.read_text()
    assert check_doc_deployment(text, instrs) == []
    cases = [
        (text, dockerfile.replace("EXPOSE 8000 8001 8002", "EXPOSE 8000 8001"), "EXPOSE [8000, 8001]"),
        (text, dockerfile.replace("127.0.0.1:8000/v2/health/ready", "127.0.0.1:8001/v2/health/ready"), "HEALTHCHECK"),
        (_edit(text, "-p 127.0.0.1:8001:8001", "-p 127.0.0.1:8001:8005"), dockerfile, "publishes container ports"),
        (_edit(text, "--url localhost:8001 -o cat.mp4", "--url localhost:8000 -o cat.mp4"), dockerfile,
         "the grpc port is 8001"),
        (_edit(text, "--protocol http --url localhost:8000", "--protocol http --url localhost:8001"), dockerfile,
         "the http port is 8000"),
        (_edit(text, "curl -s localhost:8002/metrics", "curl -s localhost:8000/metrics"), dockerfile,
         "the metrics port is 8002"),
        (_edit(text, "-i grpc -u localhost:8001 --streaming", "-i grpc -u localhost:8002 --streaming"), dockerfile,
         "the grpc port is 8001"),
        (_edit(text, "model_repository:/models:ro", "model_repository:/model:ro"), dockerfile,
         "nothing is mounted at /models"),
        (_edit(text, '-v "$PWD/build/model_repository:/models', '-v "$PWD/build/repo:/models'), dockerfile,
         "not a repository the doc builds"),
        (_edit(text, "VIDTRT_MODEL_ROOT=/checkpoints/HunyuanVideo", "VIDTRT_MODEL_ROOT=/checkpoint/HunyuanVideo"),
         dockerfile, "is not a mounted path"),
        (_edit(text, "vidtrt-cache:/var/cache/vidtrt", "vidtrt-cache:/var/cache/vidtrt-x"), dockerfile,
         "the image's VIDTRT_CACHE"),
        (_edit(text, "docker build -t vidtrt-triton:0.1.0 build/triton-context",
               "docker build -t vidtrt-triton:0.1.0 build/context"), dockerfile, "not the folder the doc makes"),
        (_edit(text, "--build-arg TORCH_INDEX_URL=", "--build-arg TORCH_INDEX="), dockerfile, "is no ARG"),
        (_edit(text, "--input-data /bench/perf_analyzer_inputs.json", "--input-data /bench/inputs.json"),
         dockerfile, "does not exist in the checkout"),
        (_edit(text, "--shm-size=8g ", ""), dockerfile, "needs --gpus and --shm-size"),
        (_edit(text, "docker run --rm --name vidtrt", "docker run --rm --privileged --name vidtrt"), dockerfile,
         "not in this test's table"),
        # docker must outwait serve's shutdown, for the image's command and for one the doc runs instead
        (_edit(text, "--stop-timeout 120 ", ""), dockerfile, "--stop-timeout (docker: 10): docker must wait longer"),
        (_edit(text, "--stop-timeout 120 ", "--stop-timeout 30 "), dockerfile, "longer than serve's 40 s shutdown"),
        (_edit(text, "--ready-timeout 1800 --exit-timeout 30 \\\n", "--ready-timeout 1800 --exit-timeout 300 \\\n"),
         dockerfile, "--exit-timeout 300 + 10"),
        # a command run instead of the image's: vidtrt serve, its repository mounted, its ports published
        (_edit(text, "vidtrt-triton:0.1.0 \\\n  vidtrt serve", "vidtrt-triton:0.1.0 \\\n  tritonserver serve"),
         dockerfile, "not `vidtrt serve`: no HTTP guard"),
        (_edit(text, "  vidtrt serve --repository /models", "  vidtrt serve --repository /model"), dockerfile,
         "nothing is mounted at /model "),
        (_edit(text, "  vidtrt serve --repository /models --address 0.0.0.0 --http-port 8000",
               "  vidtrt serve --repository /models --address 0.0.0.0 --http-port 8080"), dockerfile,
         "publishes container ports [8000, 8001, 8002], the server listens on {'http': 8080"),
    ]
    for doc_text, docker_text, message in cases:
        problems = check_doc_deployment(doc_text, parse_dockerfile(docker_text))
        assert message in " ".join(problems), (message, problems)


def test_readme_links_the_recipe():
    assert "docs/triton-container.md" in (ROOT / "README.md").read_text()
