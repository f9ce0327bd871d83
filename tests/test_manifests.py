"""Deployment files: the GKE manifests, the container images and `make images`.

All offline: every manifest validates against the Kubernetes 1.33 schemas (kubernetes-validate,
strict), the executor's Role grants exactly the Kubernetes API calls found in the source of both
executor plugins (upstream's and storyreel's), the node pool script gives nodes the Local SSD
ephemeral storage the executor selects, and every image is built from its envs/<family>.yaml,
as a non-root user, with pinned versions (and passes hadolint where it is installed).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONTAINERS = REPO / "containers"
DEPLOY = REPO / "deploy" / "gke"
PLUGIN = REPO / "plugins" / "snakemake-executor-plugin-storyreel"
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "storyreel"


def venv_tool(name: str) -> str | None:
    """A command installed beside this Python (the project venv), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


EXECUTOR = "storyreel-executor"
JOB_ACCOUNT = "storyreel-job"

# Every Kubernetes API call the executor plugin makes, as (API group, resource) -> verbs: the
# upstream Kubernetes executor's calls (the run's Secret, each Job, its status, its pods by
# label, a failed pod's log, deleting pods, Job and Secret) plus storyreel's (the events of a
# pod stuck Pending). rbac.yaml must grant exactly these: a missing verb fails jobs at run time,
# an extra one is a permission nobody needs. test_executor_permissions_are_the_calls_in_the_source
# derives the same table from both plugins' source, so a new call fails until it is granted.
EXECUTOR_PERMISSIONS = {
    ("", "secrets"): {"create", "delete"},
    ("batch", "jobs"): {"create", "delete"},
    ("batch", "jobs/status"): {"get"},
    ("", "pods"): {"list", "delete"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"list"},
}
# Commands the plugins run with subprocess, and why none needs a grant: upstream runs `kubectl
# get nodes` after re-reading the kubeconfig on a 401, as a connectivity check whose outcome it
# ignores (rbac.yaml).
EXECUTOR_COMMANDS = {("kubectl", "get", "nodes")}

# Image families whose image also carries another family's packages.
IMAGE_ENVS = {"video": ["face", "video"], "video-gpu": ["face", "video", "video-gpu"]}

# pip options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {
    "-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-t", "--target",
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
}  # fmt: skip


def load_requirements_module():
    spec = importlib.util.spec_from_file_location("requirements", CONTAINERS / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = load_requirements_module()
FAMILIES = requirements.families()


# --- Kubernetes manifests -----------------------------------------------------------------


def manifests() -> list[tuple[str, dict]]:
    """Every Kubernetes object in a YAML file under deploy/. Documents without apiVersion and
    kind are other YAML, e.g. gke/cluster-spec.yaml (a GKE API Cluster, not a manifest)."""
    found = []
    for path in sorted(DEPLOY.parent.rglob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and {"apiVersion", "kind"} <= set(document):
                base = DEPLOY if path.is_relative_to(DEPLOY) else REPO
                found.append((path.relative_to(base).as_posix(), document))
    return found


MANIFESTS = manifests()


def manifest_id(entry: tuple[str, dict]) -> str:
    name, document = entry
    return f"{name}:{document.get('kind')}/{document.get('metadata', {}).get('name')}"


def only(kind: str) -> dict:
    matches = [document for _, document in MANIFESTS if document.get("kind") == kind]
    assert len(matches) == 1, f"expected one {kind} under deploy/gke/, found {len(matches)}"
    return matches[0]


def test_the_manifests_a_newsroom_applies_are_there():
    kinds = sorted((name, document["kind"]) for name, document in MANIFESTS)
    assert kinds == [
        ("gentle.yaml", "Deployment"),
        ("gentle.yaml", "Service"),
        ("namespace.yaml", "Namespace"),
        ("rbac.yaml", "Role"),
        ("rbac.yaml", "RoleBinding"),
        ("serviceaccount.yaml", "ServiceAccount"),
        ("serviceaccount.yaml", "ServiceAccount"),
    ]


@pytest.mark.parametrize("entry", MANIFESTS, ids=manifest_id)
def test_manifest_validates_against_kubernetes_1_33(entry):
    validator = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    try:
        validator.validate(entry[1], KUBERNETES_VERSION, strict=True)
    except validator.ValidationError as error:
        pytest.fail(f"{'.'.join(map(str, error.path))}: {error.message}")
    except validator.SchemaNotFoundError as error:
        pytest.fail(error.message)


def test_the_validator_rejects_a_misspelt_field():
    # Strict mode must catch a typo, or the test above proves nothing.
    validator = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate")
    role = copy.deepcopy(only("Role"))
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")
    with pytest.raises(validator.ValidationError):
        validator.validate(role, KUBERNETES_VERSION, strict=True)


def test_namespaced_objects_live_in_the_storyreel_namespace():
    assert only("Namespace")["metadata"]["name"] == NAMESPACE
    for _, document in MANIFESTS:
        if document["kind"] == "Namespace":
            assert "namespace" not in document["metadata"]
        else:
            assert document["metadata"].get("namespace") == NAMESPACE, manifest_id(("", document))


def test_the_namespace_refuses_privileged_pods():
    labels = only("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in {"baseline", "restricted"}


def granted(role: dict) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        # A name restriction would break `create`, a URL rule is not for the API's objects.
        assert not {"resourceNames", "nonResourceURLs"} & set(rule), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_the_role_grants_exactly_what_the_executor_calls():
    role = only("Role")
    assert role["metadata"]["name"] == EXECUTOR
    assert granted(role) == EXECUTOR_PERMISSIONS


def plugin_sources() -> list[Path]:
    """The Python files of the upstream Kubernetes executor (installed) and of storyreel's."""
    upstream = importlib.util.find_spec("snakemake_executor_plugin_kubernetes")
    assert upstream is not None and upstream.origin, "snakemake-executor-plugin-kubernetes"
    ours = PLUGIN / "snakemake_executor_plugin_storyreel"
    return sorted(Path(upstream.origin).parent.glob("*.py")) + sorted(ours.glob("*.py"))


def api_classes(trees: list[ast.Module]) -> dict[str, type]:
    """The kubernetes.client API classes the sources instantiate (kubernetes.client.XApi())."""
    import kubernetes.client

    names = {
        node.func.attr
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.endswith("Api")
        and ast.unparse(node.func.value) == "kubernetes.client"
    }
    return {name: getattr(kubernetes.client, name) for name in sorted(names)}


# The path and HTTP method a generated client method sends.
CALL_API = re.compile(r"call_api\(\s*'(?P<path>[^']+)',\s*'(?P<method>[A-Z]+)'")
PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/\{namespace\}/"
    r"(?P<resource>[a-z]+)(?P<name>/\{name\})?(?:/(?P<subresource>[a-z]+))?$"
)


def permission(api: type, method: str) -> tuple[tuple[str, str], str]:
    """(API group, resource) and RBAC verb of one client method, read from the request it
    sends: e.g. CoreV1Api.read_namespaced_pod_log -> GET /api/v1/namespaces/{ns}/pods/{name}/log
    -> (("", "pods/log"), "get")."""
    source = inspect.getsource(getattr(api, f"{method}_with_http_info"))
    request = CALL_API.search(source)
    assert request, f"{api.__name__}.{method}: no call_api in the generated client"
    path = PATH.match(request["path"])
    # A cluster-scoped call would need a ClusterRole, which deploy/ does not hold.
    assert path, f"{api.__name__}.{method} is not namespaced: {request['path']}"
    resource = path["resource"] + (f"/{path['subresource']}" if path["subresource"] else "")
    verb = {
        "GET": "get" if path["name"] else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if path["name"] else "deletecollection",
    }[request["method"]]
    return (path["group"] or "", resource), verb


def calls_in_source() -> tuple[dict[tuple[str, str], set[str]], set[tuple[str, ...]]]:
    """The permissions behind every Kubernetes API client call in both plugins' source, and the
    commands they run as argument lists (subprocess.run(["kubectl", ...]))."""
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in plugin_sources()]
    apis = api_classes(trees)
    assert set(apis) == {"CoreV1Api", "BatchV1Api"}, sorted(apis)
    methods: dict[str, list[type]] = {}
    for api in apis.values():
        for name in dir(api):
            if not name.startswith("_") and not name.endswith("_with_http_info"):
                methods.setdefault(name, []).append(api)
    needed: dict[tuple[str, str], set[str]] = {}
    commands: set[tuple[str, ...]] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Attribute) and node.func.attr in methods:
                (api,) = methods[node.func.attr]  # a name on two classes would be ambiguous
                key, verb = permission(api, node.func.attr)
                needed.setdefault(key, set()).add(verb)
            first = node.args[0] if node.args else None
            if isinstance(first, ast.List) and all(
                isinstance(word, ast.Constant) and isinstance(word.value, str)
                for word in first.elts
            ):
                words = tuple(word.value for word in first.elts)
                if words and words[0] == "kubectl":
                    commands.add(words)
    return needed, commands


def test_executor_permissions_are_the_calls_in_the_source():
    needed, commands = calls_in_source()
    assert needed == EXECUTOR_PERMISSIONS
    assert commands == EXECUTOR_COMMANDS


def test_the_permission_reader_knows_the_client():
    # Spot checks of the path parsing, on calls the plugins do not all make.
    import kubernetes.client as client

    assert permission(client.CoreV1Api, "read_namespaced_pod_log") == (("", "pods/log"), "get")
    assert permission(client.BatchV1Api, "read_namespaced_job_status") == (
        ("batch", "jobs/status"),
        "get",
    )
    assert permission(client.CoreV1Api, "list_namespaced_event") == (("", "events"), "list")
    assert permission(client.BatchV1Api, "delete_collection_namespaced_job") == (
        ("batch", "jobs"),
        "deletecollection",
    )
    assert permission(client.CoreV1Api, "patch_namespaced_secret") == (("", "secrets"), "patch")
    with pytest.raises(AssertionError, match="not namespaced"):
        permission(client.CoreV1Api, "list_node")


def test_no_cluster_wide_permissions():
    # Nodes are never read and no volume is provisioned: a namespaced Role is all (rbac.yaml).
    kinds = {document["kind"] for _, document in MANIFESTS}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_the_role_is_bound_to_the_executor_account_only():
    binding = only("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": EXECUTOR,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": EXECUTOR, "namespace": NAMESPACE}
    ]
    accounts = {
        document["metadata"]["name"]: document
        for _, document in MANIFESTS
        if document["kind"] == "ServiceAccount"
    }
    assert set(accounts) == {EXECUTOR, JOB_ACCOUNT}
    # No pod runs as the executor, so its token is never mounted.
    assert accounts[EXECUTOR]["automountServiceAccountToken"] is False


# --- node pools -----------------------------------------------------------------------------

NODEPOOLS = DEPLOY / "nodepools.sh"
BASH = shutil.which("bash")


def run_nodepools(**env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if key not in {"PROJECT", "LOCATION"}}
    return subprocess.run(
        [BASH, str(NODEPOOLS)], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def gcloud_commands(**env: str) -> dict[str, list[str]]:
    result = run_nodepools(DRY_RUN="1", PROJECT="newsroom", LOCATION="us-central1", **env)
    assert result.returncode == 0, result.stderr
    commands = [
        shlex.split(line) for line in result.stdout.splitlines() if line.startswith("gcloud")
    ]
    assert all(
        command[:4] == ["gcloud", "container", "node-pools", "create"] for command in commands
    )
    return {command[4]: command[5:] for command in commands}


def ssd_flags(flags: list[str]) -> list[str]:
    """The Local SSD flags of a node pool (ephemeral storage, raw block, or the old count)."""
    return [flag for flag in flags if flag.startswith(("--ephemeral-storage", "--local-"))]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_nodepools_script_parses_and_wants_its_settings():
    assert subprocess.run([BASH, "-n", str(NODEPOOLS)]).returncode == 0
    result = run_nodepools()
    assert result.returncode != 0
    assert "PROJECT" in result.stderr


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_node_pools_scale_from_zero_on_local_ssd():
    pools = gcloud_commands()
    assert set(pools) == {"storyreel-cpu", "storyreel-gpu"}
    for flags in pools.values():
        assert {"--project=newsroom", "--location=us-central1", "--enable-autoscaling"} <= set(
            flags
        )
        assert {"--num-nodes=0", "--total-min-nodes=0"} <= set(flags)
        # emptyDir and the writable layer on Local SSD: where the video group's frames live.
        assert "--ephemeral-storage-local-ssd=count=1" in flags
        # No raw block SSDs (nothing turns them into volumes) and no other SSD flag.
        assert ssd_flags(flags) == ["--ephemeral-storage-local-ssd=count=1"]
        assert "--workload-metadata=GKE_METADATA" in flags  # jobs reach GCS as storyreel-job
    cpu, gpu = pools["storyreel-cpu"], pools["storyreel-gpu"]
    assert "--node-labels=storyreel/pool=cpu" in cpu
    assert not [flag for flag in cpu if flag.startswith(("--accelerator", "--node-taints"))]
    assert "--node-labels=storyreel/pool=gpu" in gpu
    assert "--node-taints=nvidia.com/gpu=present:NoSchedule" in gpu
    accelerator = next(flag for flag in gpu if flag.startswith("--accelerator="))
    assert "type=nvidia-tesla-t4" in accelerator and "gpu-driver-version=default" in accelerator


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_node_pools_accept_machine_types_with_built_in_ssds():
    pools = gcloud_commands(CPU_MACHINE="c3-standard-8-lssd", CPU_SSD_COUNT="")
    cpu = pools["storyreel-cpu"]
    assert "--machine-type=c3-standard-8-lssd" in cpu
    # The bare flag: third-generation -lssd types take the SSD count of the machine type.
    assert ssd_flags(cpu) == ["--ephemeral-storage-local-ssd"]
    assert "--ephemeral-storage-local-ssd=count=1" in pools["storyreel-gpu"]


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_nodes_carry_the_label_the_executor_selects():
    # GKE labels the nodes of a pool created with --ephemeral-storage-local-ssd
    # cloud.google.com/gke-ephemeral-storage-local-ssd=true; the executor puts the video group
    # there with that node selector. The script names the label it relies on.
    spec = importlib.util.spec_from_file_location(
        "storyreel_pod", PLUGIN / "snakemake_executor_plugin_storyreel" / "pod.py"
    )
    pod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pod)
    assert pod.LOCAL_SSD_SELECTOR == "cloud.google.com/gke-ephemeral-storage-local-ssd"
    assert pod.LOCAL_SSD_SELECTOR in NODEPOOLS.read_text(encoding="utf-8")
    assert all("--ephemeral-storage-local-ssd" in " ".join(f) for f in gcloud_commands().values())


@pytest.mark.skipif(BASH is None, reason="needs bash")
def test_nodepools_script_lists_the_manifests_to_apply():
    result = run_nodepools(DRY_RUN="1", PROJECT="newsroom", LOCATION="us-central1")
    named = re.findall(r"deploy/gke/[\w.-]+", result.stdout)
    assert named == ["deploy/gke/namespace.yaml", "deploy/gke/serviceaccount.yaml",
                     "deploy/gke/rbac.yaml", "deploy/gke/gentle.yaml"]  # fmt: skip
    assert {name for name, _ in MANIFESTS} == {Path(path).name for path in named}


@pytest.mark.skipif(venv_tool("shellcheck") is None, reason="shellcheck not installed")
def test_nodepools_script_passes_shellcheck():
    result = subprocess.run(
        [venv_tool("shellcheck"), str(NODEPOOLS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


# --- container images -----------------------------------------------------------------------


def dockerfile(name: str) -> Path:
    return CONTAINERS / f"{name}.Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    found, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker skips these, also inside a continuation
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, arguments = (current + line).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        current = ""
    return found


def arguments(path: Path, keyword: str) -> list[str]:
    return [rest for key, rest in instructions(path) if key == keyword]


def from_image(path: Path) -> tuple[str, str]:
    """The FROM reference as written, and with build-argument defaults filled in."""
    defaults = {}
    for key, rest in instructions(path):
        if key == "FROM":
            written = [word for word in rest.split() if not word.startswith("--")][0]
            resolved = re.sub(
                r"\$\{?(\w+)\}?", lambda match: defaults.get(match.group(1), ""), written
            )
            return written, resolved
        if key == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip("\"'")
    raise AssertionError(f"{path.name} has no FROM")


def image_tag(reference: str) -> str | None:
    last = reference.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the file's RUN instructions."""
    found = []
    for command in arguments(path, "RUN"):
        for segment in re.split(r"&&|\|\||;|\|", command):
            words = shlex.split(segment)
            for index in range(len(words) - 1):
                if words[index].endswith("pip") and words[index + 1] == "install":
                    found.append(words[index + 2 :])
    return found


def unpinned(install: list[str]) -> list[str]:
    """Requirements in a pip install that are neither `==`-pinned nor a path."""
    loose, words = [], iter(install)
    for word in words:
        if word in PIP_VALUE_OPTIONS:
            next(words, None)
        elif word.startswith("-"):
            continue
        elif "==" not in word and not word.startswith((".", "/", "$")):
            loose.append(word)
    return loose


def copy_sources(path: Path) -> list[str]:
    sources = []
    for rest in arguments(path, "COPY"):
        words = [word for word in shlex.split(rest) if not word.startswith("--")]
        sources.extend(words[:-1])
    return sources


ALL_IMAGES = ["base", *FAMILIES]


def test_one_dockerfile_per_family():
    dockerfiles = {
        path.name.removesuffix(".Dockerfile") for path in CONTAINERS.glob("*.Dockerfile")
    }
    assert dockerfiles == set(ALL_IMAGES)
    assert set(FAMILIES) == {path.stem for path in (REPO / "envs").glob("*.yaml")}


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_image_is_tagged_and_ends_as_a_numeric_non_root_user(name):
    written, resolved = from_image(dockerfile(name))
    tag = image_tag(resolved)
    assert tag and tag != "latest", f"{name}: FROM {written} resolves to {resolved!r}"
    users = arguments(dockerfile(name), "USER")
    assert users, f"{name}: no USER"
    # Numeric, so that Kubernetes' runAsNonRoot can check it.
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"{name}: ends as USER {users[-1]}"
    assert users[-1] == arguments(dockerfile("base"), "USER")[-1]


def test_base_image_is_python_3_11_slim_with_the_pinned_snakemake():
    _, resolved = from_image(dockerfile("base"))
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", resolved)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    snakemake = next(dep for dep in project["dependencies"] if dep.startswith("snakemake=="))
    pip = re.search(r'"(pip==[\d.]+)"', (REPO / "Makefile").read_text(encoding="utf-8"))
    installed = [word for install in pip_installs(dockerfile("base")) for word in install]
    assert snakemake in installed  # jobs run the very Snakemake of the main process
    assert pip and pip.group(1) in installed
    user = arguments(dockerfile("base"), "USER")[-1].split(":")[0]
    assert any(f"--uid {user}" in run for run in arguments(dockerfile("base"), "RUN"))


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_every_pip_install_is_pinned(name):
    installs = pip_installs(dockerfile(name))
    assert installs
    for install in installs:
        assert not unpinned(install), f"{name}: unpinned {unpinned(install)}"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_image_installs_exactly_its_environment(family):
    path = dockerfile(family)
    envs = IMAGE_ENVS.get(family, [family])
    assert from_image(path)[0] == "${BASE_IMAGE}"
    assert sorted(copy_sources(path)) == sorted(f"envs/{env}.yaml" for env in envs)
    runs = [run for run in arguments(path, "RUN") if "requirements.py" in run]
    assert len(runs) == 1
    invoked = shlex.split(runs[0].split("requirements.py", 1)[1].split(">", 1)[0])
    assert sorted(invoked) == sorted(envs)
    assert any("/opt/storyreel/constraints.txt" in install for install in pip_installs(path))


def test_the_video_image_also_runs_the_face_rules():
    face, video = (set(requirements.requirements(env)) for env in (["face"], ["face", "video"]))
    assert face <= video


@pytest.mark.parametrize("family", FAMILIES)
def test_environment_pins_agree_with_constraints(family):
    # Images install with constraints.txt; a pin that disagrees would fail the build.
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[requirements.canonical_name(name)] = version.strip()
    for requirement in requirements.requirements([family]):
        name = requirements.canonical_name(requirement)
        assert pins.get(name) == requirement.split("==", 1)[1], f"{family}: {requirement}"


def write_env(folder: Path, family: str, *pip: str, conda: tuple[str, ...] = ("python=3.11",)):
    lines = ["dependencies:", *(f"  - {entry}" for entry in conda), "  - pip:"]
    lines += [f"      - {requirement}" for requirement in pip]
    (folder / f"{family}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_requirements_refuses_conflicts_loose_pins_and_conda_packages(tmp_path):
    write_env(tmp_path, "one", "numpy==2.4.6", "Pillow==13.0.0")
    write_env(tmp_path, "two", "numpy==2.4.5")
    write_env(tmp_path, "three", "pillow==13.0.0", "tqdm>=4")
    write_env(tmp_path, "four", "numpy==2.4.6", conda=("python=3.11", "ffmpeg"))
    assert requirements.requirements(["one", "one"], tmp_path) == ["numpy==2.4.6", "Pillow==13.0.0"]
    with pytest.raises(ValueError, match="conflicts"):
        requirements.requirements(["one", "two"], tmp_path)
    with pytest.raises(ValueError, match="not pinned"):
        requirements.requirements(["three"], tmp_path)
    with pytest.raises(ValueError, match="conda package"):
        requirements.requirements(["four"], tmp_path)
    with pytest.raises(ValueError, match="not a family"):
        requirements.requirements(["../one"], tmp_path)


def test_requirements_script_checks_the_python_version(tmp_path):
    write_env(tmp_path, "old", "numpy==2.4.6", conda=("python=2.7", "pip"))
    script = [sys.executable, str(CONTAINERS / "requirements.py"), "--envs", str(tmp_path)]
    result = subprocess.run([*script, "old"], capture_output=True, text=True)
    assert result.returncode == 1 and "Python 2.7" in result.stderr
    result = subprocess.run([*script[:2], "face", "video"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == requirements.requirements(["face", "video"])


# --- build context --------------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regular expression (`**` crosses folders, `*` does not)."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out, index = out + pattern[index : end + 1], end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "stories/demo/final.mp4",
        ".snakemake/log/run.log",
        ".git/HEAD",
        "tests/test_story.py",
        "storyreel/__pycache__/story.cpython-311.pyc",
    ],
)
def test_build_context_leaves_out(path):
    assert ignored(path, dockerignore())


def test_build_context_holds_everything_the_dockerfiles_copy():
    patterns = dockerignore()
    wanted = {"plugins/snakemake-executor-plugin-storyreel/pyproject.toml"}
    for name in ALL_IMAGES:
        wanted |= {source for source in copy_sources(dockerfile(name)) if "[" not in source}
    for source in sorted(wanted):
        assert not ignored(source, patterns), f"{source} is not in the build context"


def hadolint() -> str | None:
    return venv_tool("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed")
def test_dockerfiles_pass_hadolint():
    paths = [str(dockerfile(name)) for name in ALL_IMAGES]
    result = subprocess.run([hadolint(), "--no-color", *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- make images ----------------------------------------------------------------------------

MAKE = shutil.which("make")


def make_dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MAKE, "--no-print-directory", "-n", "images", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_make_images_builds_the_base_first_then_every_family():
    registry = "registry.example/newsroom/storyreel"
    result = make_dry_run(f"REGISTRY={registry}", "VERSION=1a2b3c4", "CONTAINER_TOOL=podman")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.replace("\\\n", " ").splitlines()]
    assert all(command[0] == "podman" for command in commands)
    base = f"{registry}/storyreel-base:1a2b3c4"
    assert commands[:2] == [
        ["podman", "build", "--platform", "linux/amd64", "-f", "containers/base.Dockerfile",
         "-t", base, "."],
        ["podman", "push", base],
    ]  # fmt: skip
    for family in FAMILIES:
        tag = f"{registry}/storyreel-{family}:1a2b3c4"
        build = next(c for c in commands if f"containers/{family}.Dockerfile" in c)
        assert build[1] == "build" and build[-1] == "."
        assert f"BASE_IMAGE={base}" in build and tag in build
        assert commands.index(["podman", "push", tag]) > commands.index(build)
    assert len(commands) == 2 * len(ALL_IMAGES)


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_make_images_wants_a_registry_and_defaults_to_the_commit():
    result = make_dry_run()
    assert result.returncode != 0
    assert "REGISTRY is not set" in result.stderr
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    if commit.returncode != 0:
        pytest.skip("not a git checkout")
    result = make_dry_run("REGISTRY=registry.example/x")
    assert f"registry.example/x/storyreel-base:{commit.stdout.strip()}" in result.stdout
