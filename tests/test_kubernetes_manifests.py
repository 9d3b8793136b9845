"""The Kubernetes recipe (deploy/kubernetes/, docs/kubernetes.md) checked offline: no cluster here.

Each check is a function returning the problems it finds, run once on the real files and once on a modified copy
that must fail:

- every built-in object validates against the pinned Kubernetes versions' OpenAPI schemas (kubernetes-validate,
  strict: an unknown field fails); objects it has no schema for are listed in NOT_IN_THE_SCHEMAS, with what
  checks them instead (the ServiceMonitor: its fields against a list, its selector, port and path);
- the kustomization lists every manifest but the ones it leaves out on purpose;
- the server container runs the image's `vidtrt serve` command (parsed by our CLI, its tritonserver command
  checked against tritonserver 2.51's --help), as args under the image's entrypoint, differing only where
  SERVE_DIFFERENCES says why; ports are serve's defaults, the image's EXPOSE and the Service's;
- probes ask Triton's health endpoints on the HTTP guard's port; the startup probe outwaits --ready-timeout;
- the drain (preStop, --exit-timeout, serve's own limits) fits in terminationGracePeriodSeconds;
- the autoscaler's metric comes from a Prometheus adapter rule that reads only gauges the generation model
  exports (names grepped from its source) or Triton metrics listed in TRITON_METRICS, at least the ones
  `vidtrt serve` drains on, of the generation models only; its target fits the build's concurrency;
- the image is the Dockerfile's tag; the build Job's flags parse with `vidtrt build` and it writes where the
  servers mount; VIDTRT_MODEL_ROOT is where the Job read the checkpoint; /dev/shm, GPUs, selectors;
- the doc's commands and adapter values are the manifests' and parse with our CLI;
- and on a real server (the tiny model on CPU, `@pytest.mark.server`): each probe answers 200, and the adapter
  rule's selector, evaluated on the metrics port, counts 4 with two generations running and two waiting.
"""
from __future__ import annotations

import copy
import inspect
import re
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import pytest

# Shared with the container recipe's test: the Dockerfile parser, our CLI's parsers, tritonserver 2.51's --help.
import test_container_recipe
import yaml
from test_container_recipe import (
    DOCKERFILE,
    check_doc_cli,
    check_server_command,
    doc_commands,
    dockerfile_env,
    parse_dockerfile,
    parse_vidtrt,
    serve_namespace,
    server_command,
)

from vidtrt.config.families import HUNYUAN_VIDEO

# Its fixtures: the bundled tritonserver 2.51 and its --help.
tritonserver_binary = test_container_recipe.tritonserver_binary
server_help = test_container_recipe.server_help

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
DOC = ROOT / "docs" / "kubernetes.md"
MODEL_PY = ROOT / "vidtrt" / "model_repository" / "hunyuan_video" / "model.py"

# The schemas the manifests are validated against (kubernetes-validate 1.37 ships 1.25-1.37): the oldest release
# the recipe claims (autoscaling/v2, policy/v1 and unhealthyPodEvictionPolicy are older) and the newest.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Objects kubernetes-validate has no schema for, and what checks them here instead.
NOT_IN_THE_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "a CRD of the Prometheus Operator: servicemonitor_problems "
                                                    "checks the fields it uses against SERVICEMONITOR_FIELDS",
}
# Files the kustomization leaves out, and why (docs/kubernetes.md says when to apply them).
NOT_IN_THE_KUSTOMIZATION = {
    "upload-pod.yaml": "applied by hand when a checkpoint changes",
    "monitoring/servicemonitor.yaml": "needs the Prometheus Operator's CRDs (monitoring/kustomization.yaml)",
    "monitoring/prometheus-adapter-rules.yaml": "the adapter's config, in its own namespace "
                                                "(monitoring/kustomization.yaml)",
}
# Where the server container's `vidtrt serve` may differ from the image's CMD, and why.
SERVE_DIFFERENCES = {
    "exit_timeout": "a scale-down or rolling update lets the generation in flight finish (the image's 30 s suits "
                    "`docker stop`)",
}
# Triton's HTTP health endpoints (KServe v2 protocol, Triton's HTTP API): which probe asks which.
TRITON_HEALTH = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                 "livenessProbe": "/v2/health/live"}
# Triton metrics the autoscaler may read, and what they say (each seen on the bundled tritonserver 2.51 by
# test_probes_and_autoscaler_metrics_on_a_real_server).
TRITON_METRICS = {
    "nv_inference_pending_request_count": "requests waiting in Triton's queue of a model (the sync model's queue; "
                                          "the streaming model's waiting generations are vidtrt_generations_queued)",
}
# After the drain, TritonServer.stop() waits for tritonserver, then SIGKILLs its process group and waits this long.
STOP_KILL_WAIT_S = 10
# ServiceMonitor fields (monitoring.coreos.com/v1, the Prometheus Operator's API reference) this recipe may use.
SERVICEMONITOR_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"},
    "spec.endpoints[]": {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                         "metricRelabelings"},
}
SHM = "/dev/shm"
GPU = "nvidia.com/gpu"


# ------------------------------------------------------------------------------------------ loading
class Manifests:
    """Every object of deploy/kubernetes/**/*.yaml (kustomization.yaml files aside), by file."""

    def __init__(self, files: dict[str, list[dict]]) -> None:
        self.files = files

    @classmethod
    def load(cls, root: Path = K8S) -> Manifests:
        files = {}
        for path in sorted(root.rglob("*.yaml")):
            if path.name != "kustomization.yaml":
                files[str(path.relative_to(root))] = [d for d in yaml.safe_load_all(path.read_text()) if d]
        return cls(files)

    def copy(self) -> Manifests:
        return Manifests(copy.deepcopy(self.files))

    @property
    def objects(self) -> list[tuple[str, dict]]:
        return [(f, o) for f, objs in self.files.items() for o in objs]

    def find(self, kind: str, name: str | None = None) -> dict:
        found = [o for _, o in self.objects if o.get("kind") == kind and name in (None, o["metadata"]["name"])]
        if len(found) != 1:
            raise AssertionError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return found[0]

    def all(self, kind: str) -> list[dict]:
        return [o for _, o in self.objects if o.get("kind") == kind]


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def containers(obj: dict, init: bool = True) -> list[dict]:
    spec = pod_spec(obj)
    return (spec.get("initContainers", []) if init else []) + spec["containers"]


def server_container(m: Manifests) -> dict:
    return m.find("Deployment")["spec"]["template"]["spec"]["containers"][0]


def serve_cmd(m: Manifests) -> list[str]:
    return list(server_container(m).get("args") or [])


def job_argv(m: Manifests) -> list[str]:
    return list(m.find("Job")["spec"]["template"]["spec"]["containers"][0].get("args") or [])


def build_args(m: Manifests):
    """The Job's `vidtrt build ...` parsed by our CLI (ValueError with argparse's message if it does not parse)."""
    argv = job_argv(m)
    if argv[:2] != ["vidtrt", "build"]:
        raise ValueError(f"the Job runs {argv[:2]}, not `vidtrt build`")
    return parse_vidtrt(argv[1:])


def dockerfile_instrs():
    return parse_dockerfile(DOCKERFILE.read_text())


def image_tag() -> str:
    """The tag the Dockerfile's header tells users to build (`docker build -t TAG ...`)."""
    tags = set(re.findall(r"docker build -t (\S+)", DOCKERFILE.read_text()))
    assert len(tags) == 1, tags
    return tags.pop()


def mounts(obj: dict, container: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (the volumeMount, the pod's volume) of ``container``."""
    volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
    return {vm["mountPath"]: (vm, volumes.get(vm["name"], {})) for vm in container.get("volumeMounts", [])}


def claim_path(obj: dict, container: dict, path: str) -> tuple[str, str] | None:
    """(PVC name, path inside the claim) of ``path`` in ``container``, or None if no claim is mounted there."""
    p = PurePosixPath(path)
    for mount_path, (vm, vol) in sorted(mounts(obj, container).items(), key=lambda kv: -len(kv[0])):
        claim = vol.get("persistentVolumeClaim", {}).get("claimName")
        mp = PurePosixPath(mount_path)
        if claim and (p == mp or mp in p.parents):
            inside = str(PurePosixPath(vm.get("subPath", "")) / p.relative_to(mp))
            return claim, "" if inside == "." else inside
    return None


def quantity(text: str | int) -> float:
    """A Kubernetes quantity ("64Gi", "8", "100m") as a number (bytes, cores)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, f"not a quantity: {text!r}"
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * scale


def exported_metrics(source: str) -> dict[str, str]:
    """name -> kind (GAUGE, COUNTER, HISTOGRAM) of every pb_utils.MetricFamily in the generation model's source."""
    return dict(re.findall(r'MetricFamily\(\s*name="(vidtrt_\w+)".*?kind=pb_utils\.MetricFamily\.(\w+)\)',
                           source, re.S))


def drained_metrics(names: list[str]) -> set[str]:
    """Of ``names``, those TritonServer.generations_pending sums (what `vidtrt serve` waits on when it drains)."""
    from vidtrt.serving.server import TritonServer

    pattern = re.search(r'r"\^(vidtrt_[^"]+?)\\\{', inspect.getsource(TritonServer.generations_pending))
    assert pattern, "generations_pending no longer reads vidtrt_* gauges with one regex: update drained_metrics()"
    return {n for n in names if re.fullmatch(pattern.group(1), n)}


def adapter_rules(m: Manifests) -> list[dict]:
    cm = next(o for _, o in m.objects if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {}))
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


def rule_selector(rule: dict) -> tuple[str, list[tuple[str, str, str]]]:
    """The series selector of a Prometheus adapter rule's metricsQuery (the braces holding <<.LabelMatchers>>):
    the __name__ regex ("" if none) and the other label matchers (label, operator, value)."""
    query = rule["metricsQuery"]
    m = re.search(r"(\w*)\{([^{}]*<<\.LabelMatchers>>[^{}]*)\}", query)
    if not m:
        return "", []
    name, matchers = re.escape(m.group(1)) if m.group(1) else "", []
    for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(2)):
        if label == "__name__" and op in ("=", "=~"):
            name = value if op == "=~" else re.escape(value)
        else:
            matchers.append((label, op, value))
    return name, matchers


def rule_metrics(rule: dict) -> set[str]:
    """Metric names a Prometheus adapter rule reads: its seriesQuery's, and the alternatives of its metricsQuery's
    name (an alternation of plain names: anything else is reported as itself)."""
    names = set(re.findall(r"^(\w+)\{", rule["seriesQuery"]))
    name, _ = rule_selector(rule)
    return names | {n.replace("\\", "") for n in name.split("|") if n}


def selected(rule: dict, text: str) -> list[tuple[str, dict[str, str], float]]:
    """The series of one pod's Prometheus text exposition that the rule's metricsQuery selects (<<.LabelMatchers>>
    aside: Prometheus adds namespace and pod when it scrapes). PromQL matchers are anchored: re.fullmatch."""
    name, matchers = rule_selector(rule)
    ops = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b,
           "=~": lambda a, b: re.fullmatch(b, a) is not None, "!~": lambda a, b: re.fullmatch(b, a) is None}
    out = []
    for series, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if re.fullmatch(name, series) and all(ops[op](have.get(k, ""), v) for k, op, v in matchers):
            out.append((series, have, float(value)))
    return out


# ------------------------------------------------------------------------------------------ checks
def schema_problems(m: Manifests, versions=KUBERNETES_VERSIONS) -> list[str]:
    from kubernetes_validate import utils

    problems = []
    for path, obj in m.objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in NOT_IN_THE_SCHEMAS:
            continue
        for version in versions:
            try:
                utils.validate(obj, version, strict=True)
            except utils.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                problems.append(f"{path}: {obj['kind']} {obj['metadata'].get('name')}: Kubernetes {version}: "
                                f"{where}: {e.message}")
            except utils.SchemaNotFoundError as e:
                problems.append(f"{path}: {e.message} (add it to NOT_IN_THE_SCHEMAS with what checks it instead)")
    return problems


def kustomization_problems(root: Path = K8S) -> list[str]:
    problems = []
    listed = set()
    for kust in sorted(root.rglob("kustomization.yaml")):
        data = yaml.safe_load(kust.read_text())
        for res in data.get("resources", []):
            path = kust.parent / res
            if not path.is_file():
                problems.append(f"{kust.relative_to(root)}: resource {res} does not exist")
            listed.add(str(path.relative_to(root)))
    top = yaml.safe_load((root / "kustomization.yaml").read_text())
    top_listed = {str(PurePosixPath(r)) for r in top.get("resources", [])}
    for path in sorted(root.rglob("*.yaml")):
        rel = str(path.relative_to(root))
        if path.name == "kustomization.yaml":
            continue
        if rel not in top_listed and rel in NOT_IN_THE_KUSTOMIZATION and "/" in rel and rel not in listed:
            problems.append(f"{rel}: in no kustomization of its folder")
        if rel not in top_listed and rel not in NOT_IN_THE_KUSTOMIZATION:
            problems.append(f"{rel}: not in kustomization.yaml (nor in NOT_IN_THE_KUSTOMIZATION with a reason)")
    return problems


def serve_problems(m: Manifests, help_text: str) -> list[str]:
    """The server container runs the image's `vidtrt serve` (as args: the NGC entrypoint stays), a valid one."""
    c = server_container(m)
    if c.get("command"):
        return [f"container {c['name']}: sets command {c['command']}: that replaces the image's entrypoint (NGC's "
                "CUDA compatibility set-up); pass `vidtrt serve ...` as args"]
    cmd = serve_cmd(m)
    problems = check_server_command(cmd, help_text, where=f"container {c['name']} args")
    if problems:
        return problems
    ours, image = vars(serve_namespace(cmd)), vars(serve_namespace(server_command(dockerfile_instrs())))
    for key in sorted(set(ours) | set(image)):
        if key != "func" and ours.get(key) != image.get(key) and key not in SERVE_DIFFERENCES:
            problems.append(f"container {c['name']} args: {key} = {ours.get(key)!r}, the image's CMD has "
                            f"{image.get(key)!r} (or add it to SERVE_DIFFERENCES with a reason)")
    return problems


def roles(m: Manifests) -> dict[str, int]:
    args = serve_namespace(serve_cmd(m))
    return {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}


def port_problems(m: Manifests) -> list[str]:
    problems = []
    want = roles(m)
    defaults = vars(parse_vidtrt(["serve", "--repository", "x"]))
    default_roles = {"http": defaults["http_port"], "grpc": defaults["grpc_port"], "metrics": defaults["metrics_port"]}
    if want != default_roles:
        problems.append(f"`vidtrt serve` listens on {want}, not its defaults {default_roles} (the README's ports)")
    exposed = {int(p.split("/")[0]) for i in dockerfile_instrs() if i.name == "EXPOSE" for p in i.args.split()}
    if exposed != set(want.values()):
        problems.append(f"the Dockerfile EXPOSEs {sorted(exposed)}, the pods' serve listens on {want}")
    c = server_container(m)
    named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if named != want:
        problems.append(f"container ports {named}, serve listens on {want} (name them http, grpc, metrics)")
    svc = m.find("Service")
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        number = named.get(target) if isinstance(target, str) else target
        if number is None:
            problems.append(f"Service port {p.get('name')}: targetPort {target!r} is no container port's name")
        elif p.get("name") not in want or want[p["name"]] != number or p["port"] != number:
            problems.append(f"Service port {p.get('name')} {p['port']} -> {target}: not serve's "
                            f"{p.get('name')} port {want.get(p.get('name'))} on both sides")
    if {p.get("name") for p in svc["spec"]["ports"]} != set(want):
        problems.append(f"the Service has ports {[p.get('name') for p in svc['spec']['ports']]}, serve {list(want)}")
    ann = m.find("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") != str(want["metrics"]) or ann.get("prometheus.io/path") != "/metrics":
        problems.append(f"scrape annotations {ann}: port {want['metrics']} and path /metrics expected")
    return problems


def probe_problems(m: Manifests) -> list[str]:
    problems = []
    c = server_container(m)
    named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    http = roles(m)["http"]
    for kind, path in TRITON_HEALTH.items():
        probe = c.get(kind)
        if not probe or "httpGet" not in probe:
            problems.append(f"{kind}: missing, or not an httpGet probe")
            continue
        get = probe["httpGet"]
        port = named.get(get["port"]) if isinstance(get["port"], str) else get["port"]
        if get.get("path") != path:
            problems.append(f"{kind}: path {get.get('path')!r}, Triton's health endpoint for it is {path}")
        if port != http:
            problems.append(f"{kind}: port {get['port']!r} ({port}) is not serve's HTTP port {http} (its guard, "
                            "which forwards /v2/health/* to tritonserver; nothing else answers HTTP there)")
    startup = c.get("startupProbe") or {}
    budget = (startup.get("initialDelaySeconds", 0)
              + startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3))
    ready_timeout = serve_namespace(serve_cmd(m)).ready_timeout
    if budget <= ready_timeout:
        problems.append(f"startupProbe allows {budget} s, not more than serve's --ready-timeout {ready_timeout:g} s: "
                        "Kubernetes would restart a server that is still loading its models")
    return problems


def prestop_seconds(c: dict) -> float:
    pre = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    return float(cmd[1]) if cmd[:1] == ["sleep"] and len(cmd) == 2 else 0.0


def shutdown_bound(m: Manifests) -> float:
    """Seconds from Kubernetes' decision to stop a pod to `vidtrt serve`'s exit, as the code bounds it: the preStop
    hook, the drain (--exit-timeout for the generations in flight, then DRAIN_GRACE_S for cancelled ones to reach a
    step or tile and the generation models to unload), then tritonserver unloads the components (serve never gives
    it less than MIN_TRITON_EXIT_TIMEOUT_S), then the process-group kill and its wait."""
    from vidtrt.serving.server import DRAIN_GRACE_S, MIN_TRITON_EXIT_TIMEOUT_S

    args = serve_namespace(serve_cmd(m))
    return (prestop_seconds(server_container(m)) + args.exit_timeout + DRAIN_GRACE_S + MIN_TRITON_EXIT_TIMEOUT_S
            + STOP_KILL_WAIT_S)


def drain_problems(m: Manifests) -> list[str]:
    spec = m.find("Deployment")["spec"]["template"]["spec"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    bound = shutdown_bound(m)
    exit_timeout = serve_namespace(serve_cmd(m)).exit_timeout
    problems = []
    if grace < bound:
        problems.append(f"terminationGracePeriodSeconds {grace} < {bound:g} s: preStop + --exit-timeout "
                        f"{exit_timeout} + serve's drain grace, unload and kill: Kubernetes would kill the pod "
                        "before the drain ends")
    if not prestop_seconds(server_container(m)):
        problems.append("no preStop sleep: the drain would answer UNAVAILABLE to requests kube-proxy still sends")
    return problems


def hpa_problems(m: Manifests, model_source: str) -> list[str]:
    problems = []
    exported = exported_metrics(model_source)
    hpa, dep = m.find("HorizontalPodAutoscaler"), m.find("Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
        problems.append(f"HPA scales {ref['kind']} {ref['name']}, not the Deployment {dep['metadata']['name']}")
    if "replicas" in dep["spec"]:
        problems.append(f"the Deployment sets replicas: {dep['spec']['replicas']}: every `kubectl apply` would reset "
                        "what the HPA chose")
    if hpa["spec"].get("minReplicas", 1) < 2:
        problems.append(f"HPA minReplicas {hpa['spec'].get('minReplicas', 1)}: the PodDisruptionBudget's one "
                        "evictable replica would then be the only one")
    rules = adapter_rules(m)
    build = build_args(m)
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] != "Pods":
            problems.append(f"HPA metric of type {metric['type']}: this recipe serves per-pod metrics only")
            continue
        name = metric["pods"]["metric"]["name"]
        made = [r for r in rules if r.get("name", {}).get("as") == name
                or re.fullmatch(r.get("name", {}).get("matches", "^$").strip("^$"), name)]
        if len(made) != 1:
            problems.append(f"HPA metric {name}: {len(made)} Prometheus adapter rules make it (one expected)")
            continue
        rule = made[0]
        reads = rule_metrics(rule)
        missing = sorted(n for n in reads if n not in exported and n not in TRITON_METRICS)
        drained = drained_metrics(list(exported))
        if missing:
            problems.append(f"HPA metric {name}: the adapter rule reads {missing}, which neither the generation model "
                            f"exports ({sorted(exported)}) nor TRITON_METRICS lists")
        elif any(exported.get(n, "GAUGE") != "GAUGE" for n in reads):
            problems.append(f"HPA metric {name}: reads {sorted(reads)}, not all gauges: a counter only grows")
        elif not drained <= reads:
            problems.append(f"HPA metric {name}: sums {sorted(reads)}, without all of {sorted(drained)} (what "
                            "`vidtrt serve` drains on)")
        labels = dict((k, (op, v)) for k, op, v in rule_selector(rule)[1])
        op, value = labels.get("model", ("", ""))
        chosen = [mod for mod in HUNYUAN_VIDEO.triton_models() if op in ("=", "=~") and re.fullmatch(
            value if op == "=~" else re.escape(value), mod)]
        generation = [HUNYUAN_VIDEO.stream_model, HUNYUAN_VIDEO.sync_model]
        if chosen != generation:
            problems.append(f"adapter rule for {name}: its model matcher {op}{value!r} selects {chosen} of the "
                            f"repository's models, not the generation models {generation} (a component's calls "
                            "belong to generations already counted)")
        overrides = rule.get("resources", {}).get("overrides", {})
        if overrides.get("pod", {}).get("resource") != "pod" or overrides.get("namespace", {}).get("resource") \
                != "namespace":
            problems.append(f"adapter rule for {name}: the namespace and pod labels must map to those resources "
                            "(a Pods metric)")
        for macro in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
            if macro not in rule["metricsQuery"]:
                problems.append(f"adapter rule for {name}: metricsQuery lacks {macro} (it would not be per pod)")
        target = metric["pods"]["target"]
        value = quantity(target.get("averageValue", 0))
        if target["type"] != "AverageValue" or not (build.max_concurrent <= value < build.max_concurrent +
                                                     (build.max_queue or 16)):
            problems.append(f"HPA target {target}: a replica runs --max-concurrent {build.max_concurrent} with "
                            f"--max-queue {build.max_queue} waiting: an average of pending generations in "
                            f"[{build.max_concurrent}, {build.max_concurrent + (build.max_queue or 16)}) scales "
                            "when requests wait")
    return problems


def image_problems(m: Manifests) -> list[str]:
    from vidtrt import __version__

    tag = image_tag()
    problems = [] if tag == f"vidtrt-triton:{__version__}" else [f"the Dockerfile's tag {tag} is not vidtrt's "
                                                                  f"version {__version__}"]
    for path, obj in m.objects:
        if obj["kind"] in ("Deployment", "Job", "Pod"):
            for c in containers(obj):
                if c["image"] != tag:
                    problems.append(f"{path}: container {c['name']} runs {c['image']}, the image is {tag} "
                                    "(kustomization.yaml `images:` renames it for a registry)")
    return problems


def volume_problems(m: Manifests) -> list[str]:
    from vidtrt.export.repository import MARKER
    from vidtrt.source.model_source import MODEL_ROOT_ENV

    problems = []
    claims = {o["metadata"]["name"]: o for o in m.all("PersistentVolumeClaim")}
    for name, pvc in claims.items():
        if not set(pvc["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}:
            problems.append(f"PVC {name}: {pvc['spec']['accessModes']}: replicas on several nodes need ReadWriteMany "
                            "or ReadOnlyMany")
    dep, job = m.find("Deployment"), m.find("Job")
    for obj in (dep, job, *m.all("Pod")):
        for v in pod_spec(obj).get("volumes", []):
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{obj['kind']} {obj['metadata']['name']}: volume {v['name']} claims {claim}, which "
                                f"no manifest makes ({sorted(claims)})")
    c = server_container(m)
    serve = serve_namespace(serve_cmd(m))
    # The repository: the Job writes --out, the servers mount that folder at --repository, read-only.
    served = claim_path(dep, c, serve.repository)
    build = build_args(m)
    jc = job["spec"]["template"]["spec"]["containers"][0]
    written = claim_path(job, jc, build.out)
    if served is None:
        problems.append(f"no volume holds serve's --repository {serve.repository}")
    elif written != served:
        problems.append(f"the Job writes {build.out} = {written}, the servers serve {serve.repository} = {served}")
    elif not mounts(dep, c)[serve.repository][0].get("readOnly"):
        problems.append(f"{serve.repository}: mount it readOnly (the servers only read the repository)")
    for init in pod_spec(dep).get("initContainers", []):
        script = " ".join(init.get("command", []) + init.get("args", []))
        waited = [claim_path(dep, init, p.rsplit("/", 1)[0]) for p in re.findall(rf"(/\S+/{MARKER})", script)]
        if served and (served[0], served[1]) not in waited:
            problems.append(f"init container {init['name']} does not wait for {MARKER} of the served repository "
                            f"{served} (it waits for {waited}): servers would start on an empty folder")
    # The checkpoint: where the Job read it is where the servers find it (VIDTRT_MODEL_ROOT).
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    root = env.get(MODEL_ROOT_ENV)
    if build.model == "tiny":
        pass
    elif root is None:
        problems.append(f"{MODEL_ROOT_ENV} is not set: the servers would look for the checkpoint where the Job saw it")
    else:
        at, read = claim_path(dep, c, root), claim_path(job, jc, build.model)
        if at is None or at != read:
            problems.append(f"{MODEL_ROOT_ENV}={root} is {at}, the Job built from {build.model} = {read}")
        if build.model != root:
            problems.append(f"the Job builds from {build.model}, the servers set {MODEL_ROOT_ENV}={root}: use one path")
    if build.device != "cuda":
        problems.append(f"the Job builds with --device {build.device}: the servers' GPUs would go unused")
    # The image's VIDTRT_CACHE, shared memory, GPUs.
    cache = dockerfile_env(dockerfile_instrs()).get("VIDTRT_CACHE")
    for path in mounts(dep, c):
        if path.startswith("/var/cache/") and path != cache:
            problems.append(f"a volume at {path}: the image's VIDTRT_CACHE is {cache}")
    shm = mounts(dep, c).get(SHM)
    limits, requests = c["resources"].get("limits", {}), c["resources"].get("requests", {})
    if not shm or shm[1].get("emptyDir", {}).get("medium") != "Memory" or "sizeLimit" not in shm[1]["emptyDir"]:
        problems.append(f"{SHM}: mount a memory-backed emptyDir with a sizeLimit (a container's default is 64 MB; "
                        "the Python backend moves every tensor through it)")
    elif quantity(limits.get("memory", 0)) <= quantity(shm[1]["emptyDir"]["sizeLimit"]):
        problems.append(f"memory limit {limits.get('memory')} does not exceed the {SHM} sizeLimit "
                        f"{shm[1]['emptyDir']['sizeLimit']} it counts against")
    if GPU not in limits or quantity(limits[GPU]) < 1 or requests.get(GPU, limits[GPU]) != limits[GPU]:
        problems.append(f"{GPU}: requests {requests.get(GPU)}, limits {limits.get(GPU)}: at least 1, and equal")
    for obj in (job, *m.all("Pod")):
        for cc in containers(obj):
            if cc.get("command") and obj is job:
                problems.append(f"Job container {cc['name']} sets command: that replaces the NGC entrypoint")
    return problems


def selector_problems(m: Manifests) -> list[str]:
    dep = m.find("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    problems = []

    def selects(what: str, sel: dict) -> None:
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            problems.append(f"{what} selects {sel}, the server pods are labelled {labels}")

    selects("the Deployment", dep["spec"]["selector"]["matchLabels"])
    selects("the Service", m.find("Service")["spec"]["selector"])
    selects("the PodDisruptionBudget", m.find("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    for t in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        selects("a topology spread constraint", t["labelSelector"]["matchLabels"])
    namespaces = {o["metadata"].get("namespace") for _, o in m.objects
                  if o["kind"] not in ("Namespace", "ConfigMap")}
    ns = {o["metadata"]["name"] for o in m.all("Namespace")}
    if namespaces != ns:
        problems.append(f"objects in namespaces {namespaces}, the recipe makes {ns}")
    return problems


def servicemonitor_problems(m: Manifests) -> list[str]:
    problems = []
    sm, svc = m.find("ServiceMonitor"), m.find("Service")

    def fields(where: str, obj: dict) -> None:
        extra = set(obj) - SERVICEMONITOR_FIELDS[where]
        if extra:
            problems.append(f"ServiceMonitor {where or '(top)'}: fields {sorted(extra)} are not in "
                            "SERVICEMONITOR_FIELDS (check the Prometheus Operator's API reference, then add them)")

    if (sm.get("apiVersion"), sm.get("kind")) not in NOT_IN_THE_SCHEMAS:
        problems.append(f"ServiceMonitor apiVersion {sm.get('apiVersion')}: monitoring.coreos.com/v1 expected")
    fields("", sm)
    fields("spec", sm["spec"])
    if sm["metadata"].get("namespace") != svc["metadata"]["namespace"] and "namespaceSelector" not in sm["spec"]:
        problems.append("the ServiceMonitor is in another namespace than the Service and has no namespaceSelector")
    sel = sm["spec"].get("selector", {}).get("matchLabels", {})
    if not sel or any(svc["metadata"].get("labels", {}).get(k) != v for k, v in sel.items()):
        problems.append(f"the ServiceMonitor selects {sel}, the Service is labelled {svc['metadata'].get('labels')}")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for ep in sm["spec"].get("endpoints", []):
        fields("spec.endpoints[]", ep)
        p = svc_ports.get(ep.get("port"))
        if p is None or p["port"] != roles(m)["metrics"]:
            problems.append(f"ServiceMonitor endpoint port {ep.get('port')!r}: not the Service's metrics port")
        if ep.get("path", "/metrics") != "/metrics":
            problems.append(f"ServiceMonitor endpoint path {ep.get('path')}: Triton serves /metrics")
    return problems


def doc_problems(text: str, m: Manifests) -> list[str]:
    problems = list(check_doc_cli(text))
    commands = doc_commands(text)
    for cmd in commands:
        if cmd[0] == "kubectl" and ("-f" in cmd or "-k" in cmd):
            for i, tok in enumerate(cmd):
                if tok in ("-f", "-k") and not (ROOT / cmd[i + 1]).exists():
                    problems.append(f"`{' '.join(cmd)}`: {cmd[i + 1]} does not exist")
        if cmd[:2] == ["vidtrt", "serve"] and cmd != serve_cmd(m):
            problems.append(f"the doc's `{' '.join(cmd)}` is not the Deployment's args `{' '.join(serve_cmd(m))}`")
        if cmd[:2] == ["vidtrt", "build"] and cmd != job_argv(m):
            problems.append(f"the doc's `{' '.join(cmd)}` is not the Job's args `{' '.join(job_argv(m))}`")
        if cmd[:2] == ["docker", "build"] and image_tag() not in cmd:
            problems.append(f"`{' '.join(cmd)}`: the image is {image_tag()}")
    if not any(c[:2] == ["vidtrt", "serve"] for c in commands) or not any(c[:2] == ["vidtrt", "build"]
                                                                           for c in commands):
        problems.append("the doc shows neither the servers' `vidtrt serve` nor the Job's `vidtrt build`")
    values = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S) if "rules:" in b]
    if [v["rules"]["custom"] for v in values] != [adapter_rules(m)]:
        problems.append("the doc's prometheus-adapter values (rules.custom) differ from "
                        "monitoring/prometheus-adapter-rules.yaml")
    grace = m.find("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    exit_timeout = serve_namespace(serve_cmd(m)).exit_timeout
    for said in re.findall(r"terminationGracePeriodSeconds: (\d+)", text):
        if int(said) != grace:
            problems.append(f"the doc says terminationGracePeriodSeconds: {said}, the Deployment has {grace}")
    for said in re.findall(r"--exit-timeout`? \(?(\d+)", text):
        if int(said) != exit_timeout:
            problems.append(f"the doc says --exit-timeout {said}, the servers run {exit_timeout}")
    versions = " and ".join(v.rsplit(".", 1)[0] for v in KUBERNETES_VERSIONS)
    if f"Kubernetes {versions}" not in text:
        problems.append(f"the doc does not say which schemas the manifests are checked against (Kubernetes {versions})")
    return problems


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return Manifests.load()


def _deployment_spec(m: Manifests) -> dict:
    return m.find("Deployment")["spec"]["template"]["spec"]


def test_builtin_objects_validate_against_the_pinned_kubernetes_schemas(manifests):
    from kubernetes_validate import utils

    assert set(KUBERNETES_VERSIONS) <= set(utils.all_versions())
    kinds = {o["kind"] for _, o in manifests.objects}
    assert {"Deployment", "Service", "Job", "PersistentVolumeClaim", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ServiceMonitor", "ConfigMap"} <= kinds, kinds
    assert schema_problems(manifests) == []
    for edit, message in [
        (lambda s: s.__setitem__("terminationGracePeriodSecond", s.pop("terminationGracePeriodSeconds")),
         "'terminationGracePeriodSecond' was unexpected"),
        (lambda s: s["containers"][0]["ports"][0].__setitem__("containerPort", "8000"), "is not of type 'integer'"),
        (lambda s: s["containers"][0]["livenessProbe"]["httpGet"].__setitem__("paht", "/v2/health/live"),
         "'paht' was unexpected"),
    ]:
        bad = manifests.copy()
        edit(_deployment_spec(bad))
        assert message in " ".join(schema_problems(bad, KUBERNETES_VERSIONS[:1])), message
    # a field newer than the oldest pinned release: PDB's unhealthyPodEvictionPolicy is in 1.30, not in 1.25
    pdb_only = Manifests({"pdb.yaml": [manifests.find("PodDisruptionBudget")]})
    assert "'unhealthyPodEvictionPolicy' was unexpected" in " ".join(schema_problems(pdb_only, ("1.25.0",)))
    # an object of no known schema must be named, with what checks it instead
    crd = Manifests({"x.yaml": [{"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}]})
    assert "NOT_IN_THE_SCHEMAS" in " ".join(schema_problems(crd))


def test_kustomization_lists_every_manifest(tmp_path):
    import shutil

    assert kustomization_problems() == []
    copy_root = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy_root)
    (copy_root / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    text = (copy_root / "kustomization.yaml").read_text()
    (copy_root / "kustomization.yaml").write_text(text.replace("  - pdb.yaml\n", "  - pdp.yaml\n"))
    problems = " ".join(kustomization_problems(copy_root))
    assert "extra.yaml: not in kustomization.yaml" in problems and "resource pdp.yaml does not exist" in problems


def test_server_runs_the_images_vidtrt_serve(manifests, server_help):
    assert serve_problems(manifests, server_help) == []
    for edit, message in [
        (lambda c: c.__setitem__("command", ["vidtrt"]), "replaces the image's entrypoint"),
        (lambda c: c["args"].__setitem__(c["args"].index("--exit-timeout"), "--exit-timout"),
         "has no flag --exit-timout"),
        (lambda c: c["args"].__setitem__(c["args"].index("--address") + 1, "127.0.0.1"), "--address must be 0.0.0.0"),
        (lambda c: c["args"].__setitem__(c["args"].index("--ready-timeout") + 1, "600"),
         "ready_timeout = 600.0, the image's CMD has 1800.0"),
        (lambda c: c["args"].extend(["--log-file=/tmp/x"]), "--log-file after `--` breaks vidtrt serve"),
    ]:
        bad = manifests.copy()
        edit(server_container(bad))
        assert message in " ".join(serve_problems(bad, server_help)), message


def test_ports_are_serves_the_images_and_the_services(manifests):
    assert roles(manifests) == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert port_problems(manifests) == []
    for edit, message in [
        (lambda m: server_container(m)["ports"][1].__setitem__("containerPort", 9001), "container ports"),
        (lambda m: m.find("Service")["spec"]["ports"][0].__setitem__("targetPort", "grpc"), "Service port http"),
        (lambda m: m.find("Service")["spec"]["ports"][2].__setitem__("targetPort", "metric"), "no container port's"),
        (lambda m: m.find("Deployment")["spec"]["template"]["metadata"]["annotations"].__setitem__(
            "prometheus.io/port", "8000"), "scrape annotations"),
        (lambda m: server_container(m)["args"].__setitem__(server_container(m)["args"].index("--grpc-port") + 1,
                                                          "9001"), "not its defaults"),
    ]:
        bad = manifests.copy()
        edit(bad)
        assert message in " ".join(port_problems(bad)), message


def test_probes_ask_tritons_health_endpoints_through_the_guard(manifests):
    assert probe_problems(manifests) == []
    for edit, message in [
        (lambda c: c["readinessProbe"]["httpGet"].__setitem__("path", "/v2/health/live"), "readinessProbe: path"),
        (lambda c: c["livenessProbe"]["httpGet"].__setitem__("port", "grpc"), "livenessProbe: port 'grpc'"),
        (lambda c: c["livenessProbe"]["httpGet"].__setitem__("port", 8002), "livenessProbe: port 8002"),
        (lambda c: c["startupProbe"].__setitem__("failureThreshold", 30), "startupProbe allows 300 s"),
        (lambda c: c.pop("startupProbe"), "startupProbe: missing"),
    ]:
        bad = manifests.copy()
        edit(server_container(bad))
        assert message in " ".join(probe_problems(bad)), message


def test_the_drain_fits_in_the_grace_period(manifests):
    assert drain_problems(manifests) == []
    spec = _deployment_spec(manifests)
    assert spec["terminationGracePeriodSeconds"] >= shutdown_bound(manifests) > 1800
    bad = manifests.copy()
    _deployment_spec(bad)["terminationGracePeriodSeconds"] = 1830  # --exit-timeout plus a little: not enough
    assert "terminationGracePeriodSeconds 1830 < 1910 s" in " ".join(drain_problems(bad))
    longer = manifests.copy()
    args = server_container(longer)["args"]
    args[args.index("--exit-timeout") + 1] = "3600"
    assert "--exit-timeout 3600" in " ".join(drain_problems(longer))
    no_sleep = manifests.copy()
    server_container(no_sleep).pop("lifecycle")
    assert "no preStop sleep" in " ".join(drain_problems(no_sleep))


def test_autoscaler_metric_is_what_the_generation_model_exports(manifests):
    source = MODEL_PY.read_text()
    exported = exported_metrics(source)
    assert exported["vidtrt_generations_in_flight"] == exported["vidtrt_generations_queued"] == "GAUGE", exported
    assert drained_metrics(list(exported)) == {"vidtrt_generations_in_flight", "vidtrt_generations_queued"}
    assert hpa_problems(manifests, source) == []
    # the model renames a gauge
    renamed = source.replace('name="vidtrt_generations_queued"', 'name="vidtrt_generations_waiting"')
    assert "neither the generation model exports" in " ".join(hpa_problems(manifests, renamed))

    def rule(m):
        return m.find("ConfigMap", "adapter-config")["data"]

    for edit, message in [
        (lambda m: m.find("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"].__setitem__(
            "name", "vidtrt_generations_running"), "0 Prometheus adapter rules make it"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            "vidtrt_generations_in_flight|vidtrt_generations_queued", "vidtrt_generations_in_flight|vidtrt_queue")),
         "the adapter rule reads ['vidtrt_queue']"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            "|vidtrt_generations_queued", "|vidtrt_denoising_steps_total")), "not all gauges"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            "|vidtrt_generations_queued", "")), "without all of"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            'model=~"hunyuan_video|hunyuan_video_sync"', 'model=~"hunyuan_video.*"')),
         "selects ['hunyuan_video', 'hunyuan_video_sync', 'hunyuan_video_text_encoder'"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            'model=~"hunyuan_video|hunyuan_video_sync",', '')), "its model matcher '' selects []"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            "nv_inference_pending_request_count", "nv_inference_queue_duration_us")),
         "nor TRITON_METRICS lists"),
        (lambda m: rule(m).__setitem__("config.yaml", rule(m)["config.yaml"].replace(
            "sum by (<<.GroupBy>>) ", "sum ")), "lacks <<.GroupBy>>"),
        (lambda m: m.find("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"].__setitem__(
            "averageValue", "500m"), "HPA target"),
        (lambda m: m.find("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"].__setitem__(
            "averageValue", "3"), "HPA target"),
        (lambda m: m.find("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].__setitem__("name", "vidtrt"),
         "HPA scales Deployment vidtrt"),
        (lambda m: m.find("Deployment")["spec"].__setitem__("replicas", 2), "the Deployment sets replicas: 2"),
        (lambda m: m.find("HorizontalPodAutoscaler")["spec"].__setitem__("minReplicas", 1), "HPA minReplicas 1"),
    ]:
        bad = manifests.copy()
        edit(bad)
        assert message in " ".join(hpa_problems(bad, source)), message


def test_images_are_the_dockerfiles_tag(manifests):
    assert image_tag() == "vidtrt-triton:0.1.0"
    assert image_problems(manifests) == []
    bad = manifests.copy()
    bad.find("Job")["spec"]["template"]["spec"]["containers"][0]["image"] = "vidtrt:latest"
    assert "container build runs vidtrt:latest" in " ".join(image_problems(bad))
    init = manifests.copy()
    init.find("Deployment")["spec"]["template"]["spec"]["initContainers"][0]["image"] = "busybox"
    assert "container wait-for-repository runs busybox" in " ".join(image_problems(init))


def test_volumes_repository_checkpoint_shm_and_gpus(manifests):
    build = build_args(manifests)  # the Job's flags parse with `vidtrt build`
    assert (build.device, build.max_concurrent, build.max_queue) == ("cuda", 1, 2)
    assert volume_problems(manifests) == []

    def mount(m, path):
        return next(vm for vm in server_container(m)["volumeMounts"] if vm["mountPath"] == path)

    def job_args(m):
        return m.find("Job")["spec"]["template"]["spec"]["containers"][0]["args"]

    def init_cmd(m):
        return _deployment_spec(m)["initContainers"][0]["command"]

    for edit, message in [
        (lambda m: mount(m, "/models").__setitem__("subPath", "hunyuan-video-2"), "the Job writes"),
        (lambda m: job_args(m).__setitem__(job_args(m).index("--out") + 1, "/tmp/repo"), "the Job writes /tmp/repo"),
        (lambda m: mount(m, "/models").pop("readOnly"), "mount it readOnly"),
        (lambda m: init_cmd(m).__setitem__(2, init_cmd(m)[2].replace("hunyuan-video/", "hunyuan/")),
         "does not wait for vidtrt-repository.json"),
        (lambda m: server_container(m)["env"][0].__setitem__("value", "/checkpoint/HunyuanVideo"),
         "VIDTRT_MODEL_ROOT=/checkpoint/HunyuanVideo is None"),
        (lambda m: server_container(m).pop("env"), "VIDTRT_MODEL_ROOT is not set"),
        (lambda m: job_args(m).__setitem__(job_args(m).index("--model") + 1, "/checkpoints/HunyuanVideo-fp8"),
         "the Job built from /checkpoints/HunyuanVideo-fp8"),
        (lambda m: job_args(m).__setitem__(job_args(m).index("--device") + 1, "cpu"), "--device cpu"),
        (lambda m: next(v for v in _deployment_spec(m)["volumes"] if v["name"] == "dshm").__setitem__(
            "emptyDir", {}), "/dev/shm: mount a memory-backed emptyDir"),
        (lambda m: server_container(m)["resources"]["limits"].__setitem__("memory", "8Gi"), "does not exceed"),
        (lambda m: server_container(m)["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu: requests 1"),
        (lambda m: m.find("PersistentVolumeClaim", "vidtrt-checkpoints")["spec"].__setitem__(
            "accessModes", ["ReadWriteOnce"]), "replicas on several nodes"),
        (lambda m: m.find("Job")["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"].__setitem__(
            "claimName", "vidtrt-repository"), "which no manifest makes"),
        (lambda m: m.find("Job")["spec"]["template"]["spec"]["containers"][0].__setitem__("command", ["vidtrt"]),
         "replaces the NGC entrypoint"),
    ]:
        bad = manifests.copy()
        edit(bad)
        assert message in " ".join(volume_problems(bad)), message


def test_selectors_and_namespaces(manifests):
    assert selector_problems(manifests) == []
    for edit, message in [
        (lambda m: m.find("Service")["spec"]["selector"].__setitem__("app.kubernetes.io/component", "server"),
         "the Service selects"),
        (lambda m: m.find("PodDisruptionBudget")["spec"]["selector"].__setitem__(
            "matchLabels", {"app.kubernetes.io/name": "other"}), "the PodDisruptionBudget selects"),
        (lambda m: m.find("HorizontalPodAutoscaler")["metadata"].__setitem__("namespace", "default"),
         "objects in namespaces"),
    ]:
        bad = manifests.copy()
        edit(bad)
        assert message in " ".join(selector_problems(bad)), message


def test_servicemonitor_fields_and_target(manifests):
    assert servicemonitor_problems(manifests) == []
    for edit, message in [
        (lambda sm: sm["spec"]["endpoints"][0].__setitem__("port", "http"), "not the Service's metrics port"),
        (lambda sm: sm["spec"]["endpoints"][0].__setitem__("targetPort", 8002), "fields ['targetPort']"),
        (lambda sm: sm["spec"]["selector"]["matchLabels"].__setitem__("app", "vidtrt"), "the ServiceMonitor selects"),
        (lambda sm: sm["metadata"].__setitem__("namespace", "monitoring"), "has no namespaceSelector"),
    ]:
        bad = manifests.copy()
        edit(bad.find("ServiceMonitor"))
        assert message in " ".join(servicemonitor_problems(bad)), message


def test_doc_matches_the_manifests_and_parses(manifests):
    text = DOC.read_text()
    assert doc_problems(text, manifests) == []
    for old, new, message in [
        ("--exit-timeout 1800 -- --allow", "--exit-timeout 300 -- --allow", "is not the Deployment's args"),
        ("--max-queue 2 --out", "--max-queue 4 --out", "is not the Job's args"),
        ("--max-queue 2 --out", "--max-queues 2 --out", "has no flag --max-queues"),
        ("kubectl apply -f deploy/kubernetes/upload-pod.yaml", "kubectl apply -f deploy/kubernetes/upload.yaml",
         "upload.yaml does not exist"),
        ('as: "vidtrt_generations_pending"\n      metricsQuery', 'as: "vidtrt_pending"\n      metricsQuery',
         "values (rules.custom) differ"),
        ("`terminationGracePeriodSeconds: 1920`", "`terminationGracePeriodSeconds: 1800`", "says terminationGrace"),
        ("docker build -t vidtrt-triton:0.1.0", "docker build -t vidtrt:0.1.0", "the image is vidtrt-triton:0.1.0"),
    ]:
        assert old in text, old
        assert message in " ".join(doc_problems(text.replace(old, new, 1), manifests)), (old, new)


def test_readme_links_the_recipe():
    assert "docs/kubernetes.md" in (ROOT / "README.md").read_text()


@pytest.mark.server
def test_probes_and_autoscaler_metrics_on_a_real_server(manifests, tmp_path):
    """A real server (TritonServer, what `vidtrt serve` runs; the tiny model on CPU, its repository built with the
    Job's flags): every probe's path answers 200 on the HTTP guard's port and a wrong one does not; with one
    streaming generation running and one waiting for a worker, one sync (HTTP) generation running and one in
    Triton's queue, the series the adapter rule selects on the metrics port sum to 4 (before Prometheus adds the
    namespace and pod labels), the Triton metrics it reads included."""
    from test_serving_lifecycle import BIG, PROMPT, Generation, wait_for

    from vidtrt.config.request import GenerationRequest
    from vidtrt.export.repository import build_repository
    from vidtrt.serving.server import TritonServer

    build = build_args(manifests)
    repo = build_repository("tiny", tmp_path / "repo", max_concurrent_generations=build.max_concurrent,
                            max_queue_size=build.max_queue)
    c = server_container(manifests)
    rule = adapter_rules(manifests)[0]

    def pending(srv) -> tuple[float, list]:
        series = selected(rule, urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode())
        return sum(v for _, _, v in series), series

    def value(srv, name: str, model: str) -> float:
        text = urllib.request.urlopen(srv.metrics_url, timeout=10).read().decode()
        found = re.findall(rf'^{name}\{{model="{model}"[^}}]*\}} (\S+)$', text, re.M)
        return float(found[0]) if found else -1.0

    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as srv:
        for kind, path in TRITON_HEALTH.items():
            assert c[kind]["httpGet"]["path"] == path
            with urllib.request.urlopen(f"http://{srv.http_url}{path}", timeout=10) as r:
                assert r.status == 200, (kind, path)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://{srv.http_url}/v2/health/readyz", timeout=10)

        total, series = pending(srv)
        assert total == 0 and {n for n, _, _ in series} == rule_metrics(rule), series
        assert {labels["model"] for _, labels, _ in series} == {"hunyuan_video", "hunyuan_video_sync"}, series

        held = [Generation(srv.grpc_url, GenerationRequest(PROMPT, seed=s, num_inference_steps=200, **BIG))
                for s in (1, 2)]
        sync = [Generation(srv.http_url, GenerationRequest(PROMPT, seed=s, num_inference_steps=60), "http")
                for s in (3, 4)]
        try:
            held[0].start()
            wait_for(lambda: held[0].progress, what="a running streaming generation")
            held[1].start()
            wait_for(lambda: value(srv, "vidtrt_generations_queued", "hunyuan_video") == 1, what="one waiting")
            sync[0].start()
            wait_for(lambda: value(srv, "vidtrt_generations_in_flight", "hunyuan_video_sync") == 1,
                     what="the sync model running one request")
            sync[1].start()
            wait_for(lambda: value(srv, "nv_inference_pending_request_count", "hunyuan_video_sync") == 1,
                     what="one request in the sync model's Triton queue")
            total, series = pending(srv)
            assert total == 4, series
            assert not held[1].progress and sync[0].result is None
        finally:
            for g in held:
                g.cancel.set()
            for g in held + sync:
                g.join(120)
        assert all(g.error is None for g in sync), [g.error for g in sync]
        wait_for(lambda: pending(srv)[0] == 0, what="nothing pending")


def test_init_container_waits_for_the_repository_then_exits(manifests, tmp_path):
    """The init container's script, run by sh against a folder standing in for its mount: it keeps waiting while
    the repository's manifest is missing and exits 0 once `vidtrt build` has written it."""
    import subprocess

    from vidtrt.export.repository import MARKER

    init = _deployment_spec(manifests)["initContainers"][0]
    mount = init["volumeMounts"][0]["mountPath"]
    argv = [a.replace(mount, str(tmp_path / "volume")) for a in init["command"]]
    folder = tmp_path / "volume" / "hunyuan-video"
    folder.mkdir(parents=True)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(argv, capture_output=True, timeout=1.5)
    (folder / MARKER).write_text("{}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
