"""deploy/ checked without a container engine or a cluster.

Every YAML file parses; the Dockerfiles parse and build what the project needs; every
``helixfed`` command and flag the Dockerfiles, the compose file, the Kubernetes manifests and the
README use exists in the real parser; the configs parse with their schemas; and every path a
service's configs and arguments name lies under something mounted into that service, the ledger
on a persistent, writable volume of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

from common.config import FederationConfig, InstitutionConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yml"
DOCKERFILES = sorted(p for p in DEPLOY.glob("Dockerfile.*") if p.suffix != ".dockerignore")
OUR_IMAGE = re.compile(r"^helixfed-(server|institution):")
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
DOCKERFILE_KEYWORDS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                       "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
CERTS_FILES = ("ca.crt", "ca.key", "server.crt", "server.key")


def load_yaml_documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_deploy_holds_the_files_the_issue_asks_for():
    assert len(DOCKERFILES) == 2 and COMPOSE_FILE.is_file() and (DEPLOY / "README.md").is_file()
    assert {p.name for p in K8S.glob("*.yaml")} >= {"namespace.yaml", "server.yaml", "institution-oslo-uh.yaml"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    assert load_yaml_documents(path), f"{path}: no YAML document"


# -- Dockerfiles -------------------------------------------------------------------------------------------


class DockerfileError(ValueError):
    """A Dockerfile line that is not an instruction."""


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    line: int  # 1-based line of the instruction's first line

    def exec_form(self) -> list[str]:
        """JSON exec form as a list; shell form as the shell would be called with it."""
        text = self.arguments.strip()
        return json.loads(text) if text.startswith("[") else ["/bin/sh", "-c", text]


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined; comment lines (also those
    inside a continuation, which Docker drops) and blank lines skipped."""
    start, parts = 0, []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        start = start if parts else number
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].rstrip())
            continue
        yield start, " ".join([*parts, stripped]).strip()
        parts = []
    if parts:
        yield start, " ".join(parts).strip()


def parse_dockerfile(path: Path) -> list[Instruction]:
    instructions = []
    for line, text in _logical_lines(path.read_text()):
        keyword, _, arguments = text.partition(" ")
        if keyword.upper() not in DOCKERFILE_KEYWORDS or not arguments.strip():
            raise DockerfileError(f"{path}:{line}: not a Dockerfile instruction: {text[:60]!r}")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), line))
    return instructions


def _assignments(instruction: Instruction) -> dict[str, str]:
    """``ENV A=1 B=2`` / ``ARG A=1`` as a mapping (``ARG A`` without default maps to '')."""
    pairs = (token.partition("=") for token in shlex.split(instruction.arguments))
    return {name: value for name, _, value in pairs}


def _defaults(instructions: list[Instruction], keyword: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == keyword:
            values.update(_assignments(instruction))
    return values


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def _runs(instructions: list[Instruction]) -> list[str]:
    args = _defaults(instructions, "ARG")
    return [_expand(i.arguments, args) for i in instructions if i.keyword == "RUN"]


def test_the_dockerfile_parser_rejects_what_is_not_an_instruction(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nRUN pip install \\\n  torch\npip install .\n")

    with pytest.raises(DockerfileError, match=r"Dockerfile:4: not a Dockerfile instruction: 'pip install \.'"):
        parse_dockerfile(broken)


def test_the_dockerfile_parser_joins_continuations_and_skips_comments(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("# comment\nFROM python:3.11-slim\n\nRUN a \\\n    # dropped\n    && b\nENTRYPOINT [\"x\"]\n")

    instructions = parse_dockerfile(dockerfile)

    assert [(i.keyword, i.arguments, i.line) for i in instructions] == [
        ("FROM", "python:3.11-slim", 2), ("RUN", "a && b", 4), ("ENTRYPOINT", '["x"]', 7)]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_starts_from_python_slim_and_installs_cpu_torch_before_the_project(path):
    instructions = parse_dockerfile(path)
    runs = _runs(instructions)

    torch_step = next(i for i, run in enumerate(runs) if "torch==" in run)
    project_step = next(i for i, run in enumerate(runs) if re.search(r"pip install (-e )?\.(\s|$)", run))

    assert [i.arguments for i in instructions if i.keyword == "FROM"] == ["python:3.11-slim"]
    torch_install = shlex.split(runs[torch_step])
    assert "torch==2.13.0" in torch_install
    assert torch_install[torch_install.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert torch_step < project_step, "pip install of the project would pull PyPI's CUDA torch"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_helixfed_as_a_non_root_user_without_runtime_installs(path):
    instructions = parse_dockerfile(path)
    users = [i.arguments for i in instructions if i.keyword == "USER"]
    entrypoints = [i.exec_form() for i in instructions if i.keyword == "ENTRYPOINT"]

    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert entrypoints[-1:] == [["helixfed"]]
    assert _defaults(instructions, "ENV").get("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION") == "1"


def _allowlist(dockerfile: Path) -> set[str]:
    """Top-level names a ``*`` + ``!name`` .dockerignore lets into the build context."""
    lines = [line.strip() for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()]
    assert "*" in lines, f"{dockerfile}.dockerignore: expected an allowlist that starts by excluding *"
    return {line[1:] for line in lines if line.startswith("!")}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context(path):
    allowed = _allowlist(path)
    copies = [i for i in parse_dockerfile(path) if i.keyword in ("COPY", "ADD")]

    sources = [source for i in copies for source in shlex.split(i.arguments)[:-1] if not source.startswith("--")]

    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{path.name}: COPY {source}: not in the repository"
        assert PurePosixPath(source).parts[0] in allowed, f"{path.name}: COPY {source}: excluded by .dockerignore"


# -- compose -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str  # a host path (bind), or a named volume / claim / config map
    target: PurePosixPath
    read_only: bool
    persistent: bool  # a named volume or a claim: outlives the container


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _compose_mount(entry: str | dict) -> Mount:
    if isinstance(entry, dict):
        source, target = entry.get("source", ""), entry["target"]
        read_only, named = bool(entry.get("read_only")), entry.get("type") == "volume"
    else:
        source, target, *mode = entry.split(":")
        read_only, named = mode == ["ro"], not source.startswith((".", "/", "~"))
    return Mount(source, PurePosixPath(target), read_only, persistent=named)


def compose_mounts(service: dict) -> list[Mount]:
    return [_compose_mount(entry) for entry in service.get("volumes", [])]


def compose_command(service: dict) -> list[str]:
    command = service.get("command", [])
    if isinstance(command, str):
        assert "$" not in command, "compose interpolation in a command is not checked by these tests"
        return shlex.split(command)
    return [str(token) for token in command]


def our_compose_services() -> dict[str, dict]:
    """Services running our images with their helixfed entrypoint."""
    return {name: s for name, s in compose()["services"].items()
            if OUR_IMAGE.match(s.get("image", "")) and "entrypoint" not in s}


def services_running(command: str) -> dict[str, dict]:
    return {name: s for name, s in our_compose_services().items() if compose_command(s)[:1] == [command]}


def test_compose_builds_our_images_from_the_dockerfiles_here():
    for name, service in our_compose_services().items():
        build = service["build"]
        dockerfile = (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile in DOCKERFILES, f"service {name}: builds {dockerfile}"
        expected = "server" if dockerfile.name == "Dockerfile.server" else "institution"
        assert service["image"].startswith(f"helixfed-{expected}:"), f"service {name}: image/Dockerfile mismatch"


def test_compose_health_checks_are_valid_python():
    for name, service in compose()["services"].items():
        test = (service.get("healthcheck") or {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")


# -- helixfed invocations in every file ------------------------------------------------------------------------


class InvalidInvocation(ValueError):
    """A helixfed command line the real parser rejects."""


def _raise(message: str):
    raise InvalidInvocation(message)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _reject_instead_of_exit(parser: argparse.ArgumentParser) -> None:
    parser.error = _raise  # argparse reports every parse problem through error(), which exits
    for child in subcommands(parser).values():
        _reject_instead_of_exit(child)


@pytest.fixture(scope="module")
def helixfed_parser() -> argparse.ArgumentParser:
    from common.cli import build_parser

    parser = build_parser()
    _reject_instead_of_exit(parser)
    return parser


def unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Walk ``argv`` down the subcommands; the flags the parser reached does not define."""
    current, rest = parser, list(argv)
    while rest and rest[0] in subcommands(current):
        current, rest = subcommands(current)[rest[0]], rest[1:]
    if current is parser:
        return [f"no helixfed command {argv[:1]}"]
    flags = (token.split("=", 1)[0] for token in rest if re.match(r"^--?[A-Za-z]", token))
    return [f"unknown option {flag}" for flag in flags if flag not in current._option_string_actions]


def check_invocation(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Raises InvalidInvocation for an unknown command or flag, a missing required option, a
    value of the wrong type: what `helixfed` itself would refuse."""
    problems = unknown_options(parser, argv)
    if problems:
        raise InvalidInvocation("; ".join(problems))
    if not {"-h", "--help"} & set(argv):  # help prints and exits before checking anything else
        parser.parse_args(argv)


def dockerfile_invocations() -> Iterator[tuple[str, list[str]]]:
    for path in DOCKERFILES:
        instructions = parse_dockerfile(path)
        commands = [i.exec_form() for i in instructions if i.keyword == "CMD"]
        if commands:
            yield f"{path.name} CMD", commands[-1]


def compose_invocations() -> Iterator[tuple[str, list[str]]]:
    for name, service in our_compose_services().items():
        yield f"compose.yml service {name}", compose_command(service)


def k8s_containers() -> Iterator[tuple[str, dict, dict]]:
    """(where, pod spec, container) for every container in deploy/k8s."""
    for path in sorted(K8S.glob("*.yaml")):
        for document in load_yaml_documents(path):
            spec = document.get("spec", {})
            pod = spec["template"]["spec"] if "template" in spec else spec
            for container in pod.get("containers", []):
                yield f"{path.name} {document['kind']} {document['metadata']['name']}", pod, container


def k8s_argv(container: dict) -> list[str] | None:
    """The helixfed argv a container runs, or None when it runs something else."""
    if not OUR_IMAGE.match(container.get("image", "")):
        return None
    command = container.get("command")
    if command and command[0] != "helixfed":
        return None
    return [str(token) for token in (command or [])[1:] + container.get("args", [])]


def k8s_invocations() -> Iterator[tuple[str, list[str]]]:
    for where, _, container in k8s_containers():
        argv = k8s_argv(container)
        if argv is not None:
            yield where, argv


COMPOSE_GLOBAL_VALUE_OPTIONS = {"-f", "--file", "--profile", "-p", "--project-name", "--project-directory",
                                "--env-file"}
RUN_VALUE_OPTIONS = {"-v", "--volume", "-e", "--env", "--entrypoint", "--name", "-p", "--publish", "-u", "--user",
                     "-w", "--workdir", "-l", "--label", "--pull", "--restart", "--network", "--gpus"}


def _after_options(tokens: list[str], value_options: set[str]) -> tuple[list[str], list[str]]:
    """(options, the rest) of a docker command line."""
    index = 0
    while index < len(tokens) and tokens[index].startswith("-"):
        takes_value = tokens[index] in value_options and "=" not in tokens[index]
        index += 2 if takes_value else 1
    return tokens[:index], tokens[index:]


def docker_invocation(tokens: list[str]) -> list[str] | None:
    """The helixfed argv of a ``helixfed ...``, ``docker run ... <our image> ...`` or
    ``docker compose ... run ... <our service> ...`` command line, if it is one."""
    if tokens[:1] == ["helixfed"]:
        return tokens[1:]
    if tokens[:2] == ["docker", "run"]:
        options, rest = _after_options(tokens[2:], RUN_VALUE_OPTIONS)
        ours = rest and OUR_IMAGE.match(rest[0]) and "--entrypoint" not in options
        return rest[1:] if ours and len(rest) > 1 else None
    if tokens[:2] == ["docker", "compose"]:
        _, rest = _after_options(tokens[2:], COMPOSE_GLOBAL_VALUE_OPTIONS)
        if rest[:1] != ["run"]:
            return None
        options, rest = _after_options(rest[1:], RUN_VALUE_OPTIONS)
        ours = rest and rest[0] in our_compose_services() and "--entrypoint" not in options
        return rest[1:] if ours and len(rest) > 1 else None
    return None


def _shell_commands(line: str) -> Iterator[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    command: list[str] = []
    for token in lexer:
        if set(token) <= set("|&;"):
            yield command
            command = []
        else:
            command.append(token)
    yield command


def readme_command_lines() -> Iterator[str]:
    """Shell lines of the README's bash blocks (continuations joined, comments dropped) and its
    inline `helixfed ... --flag ...` code spans."""
    text = (DEPLOY / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for _, line in _logical_lines(block):
            yield line.split(" # ")[0]
    yield from re.findall(r"`(helixfed [^`]*--[^`]+)`", text)  # spans with flags: whole commands


def readme_invocations() -> Iterator[tuple[str, list[str]]]:
    for line in readme_command_lines():
        for tokens in _shell_commands(line):
            argv = docker_invocation(tokens)
            if argv is not None:
                yield f"README.md: {line[:70]}", argv


def all_invocations() -> list[tuple[str, list[str]]]:
    return [*dockerfile_invocations(), *compose_invocations(), *k8s_invocations(), *readme_invocations()]


def test_invocations_are_found_in_every_kind_of_file():
    found = {where.split()[0] for where, _ in all_invocations()}
    commands = {argv[0] for _, argv in all_invocations() if argv}

    assert {"Dockerfile.server", "Dockerfile.institution", "compose.yml", "server.yaml",
            "institution-oslo-uh.yaml", "README.md:"} <= found
    assert {"server", "client", "certs", "data"} <= commands


def test_the_invocation_check_rejects_unknown_flags_and_missing_options(helixfed_parser):
    with pytest.raises(InvalidInvocation, match="unknown option --no-such-flag"):
        check_invocation(helixfed_parser, ["version", "--no-such-flag"])
    with pytest.raises(InvalidInvocation, match="no helixfed command"):
        check_invocation(helixfed_parser, ["no-such-command"])
    with pytest.raises(InvalidInvocation, match="required"):
        check_invocation(helixfed_parser, ["train"])


@pytest.mark.parametrize(("where", "argv"), all_invocations(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_helixfed_invocation_is_accepted_by_the_real_parser(helixfed_parser, where, argv):
    try:
        check_invocation(helixfed_parser, argv)
    except InvalidInvocation as err:
        pytest.fail(f"{where}: helixfed {shlex.join(argv)}: {err}")


# -- what each service mounts, against what its configs and arguments name -------------------------------------


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{shlex.join(argv)}: no {flag}"
    return argv[argv.index(flag) + 1]


def mount_holding(path: PurePosixPath, mounts: list[Mount]) -> Mount | None:
    """The innermost mount ``path`` lies under (or is)."""
    holding = [m for m in mounts if path == m.target or m.target in path.parents]
    return max(holding, key=lambda m: len(m.target.parts), default=None)


def assert_under_mount(path: PurePosixPath, mounts: list[Mount], what: str, *, writable: bool = False) -> Mount:
    mount = mount_holding(path, mounts)
    assert mount is not None, f"{what} {path} is not under any mount {[str(m.target) for m in mounts]}"
    if writable:
        assert not mount.read_only, f"{what} {path}: mounted read-only"
        assert mount.persistent, f"{what} {path}: on {mount.source}, which does not outlive the container"
    return mount


def _absolute(path: Path, base: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(path) if PurePosixPath(path).is_absolute() else base / PurePosixPath(path)


def mounted_file(mounts: list[Mount], target: PurePosixPath) -> Path:
    """The host file bind-mounted at ``target`` (relative sources are relative to compose.yml)."""
    matches = [m for m in mounts if m.target == target and not m.persistent]
    assert matches, f"{target} is not a file bind-mounted from deploy/"
    return (COMPOSE_FILE.parent / matches[0].source).resolve()


@dataclass(frozen=True)
class CertsOutput:
    """What the compose certs service writes, as seen from a service mounting the same volume."""

    volume: str
    server_names: frozenset[str]
    institutions: frozenset[str]

    def files_under(self, target: PurePosixPath) -> set[PurePosixPath]:
        keys = {f"institutions/{n}{suffix}" for n in self.institutions for suffix in ("", ".pub")}
        return {target / name for name in (*CERTS_FILES, *keys)}


def compose_certs_output() -> CertsOutput:
    (name, service), = services_running("certs").items()
    argv = compose_command(service)
    out = PurePosixPath(option(argv, "--out"))
    volume = assert_under_mount(out, compose_mounts(service), f"service {name} --out").source
    dns = {argv[i + 1] for i, token in enumerate(argv) if token in ("--dns", "--ip")}
    return CertsOutput(volume, frozenset({option(argv, "--server-name"), "localhost", "127.0.0.1", *dns}),
                       frozenset(option(argv, "--institutions").split(",")))


def certs_files_in(service: dict) -> set[PurePosixPath]:
    """Files the certs service writes that ``service`` sees, at their paths in ``service``."""
    output = compose_certs_output()
    targets = [m.target for m in compose_mounts(service) if m.source == output.volume]
    return {path for target in targets for path in output.files_under(target)}


def assert_certs_file(path: PurePosixPath, service: dict, what: str) -> None:
    assert path in certs_files_in(service), f"{what} {path}: not a file the certs service writes into this service"


def compose_institution(name: str, service: dict) -> tuple[InstitutionConfig, PurePosixPath]:
    config_path = PurePosixPath(option(compose_command(service), "--institution"))
    config = load_config(mounted_file(compose_mounts(service), config_path), InstitutionConfig)
    return config, config_path


def compose_federation() -> tuple[FederationConfig, dict]:
    (name, service), = services_running("server").items()
    config_path = PurePosixPath(option(compose_command(service), "--config"))
    return load_config(mounted_file(compose_mounts(service), config_path), FederationConfig), service


def workdir(dockerfile: str) -> PurePosixPath:
    """The server resolves relative paths in the federation file against its working directory."""
    workdirs = [i.arguments for i in parse_dockerfile(DEPLOY / dockerfile) if i.keyword == "WORKDIR"]
    return PurePosixPath(workdirs[-1])


def test_there_are_three_institution_services_and_one_server():
    assert len(services_running("client")) == 3
    assert len(services_running("server")) == 1


@pytest.mark.parametrize("name", sorted(services_running("client")))
def test_compose_institution_paths_lie_under_its_mounts(name):
    service = services_running("client")[name]
    argv, mounts = compose_command(service), compose_mounts(service)
    config, config_path = compose_institution(name, service)

    assert_under_mount(_absolute(config.data_dir, config_path.parent), mounts, f"service {name} data_dir")
    assert_under_mount(_absolute(config.state_dir, config_path.parent), mounts, f"service {name} state_dir",
                       writable=True)
    assert_certs_file(PurePosixPath(option(argv, "--key")), service, f"service {name} --key")
    assert_certs_file(PurePosixPath(option(argv, "--root-certificates")), service,
                      f"service {name} --root-certificates")
    assert PurePosixPath(option(argv, "--key")).name == config.name, "the key is another institution's"


def test_compose_institutions_keep_their_ledgers_apart():
    state_volumes = []
    for name, service in services_running("client").items():
        config, config_path = compose_institution(name, service)
        state = _absolute(config.state_dir, config_path.parent)
        state_volumes.append(mount_holding(state, compose_mounts(service)).source)

    assert len(set(state_volumes)) == len(state_volumes), f"institutions share a ledger volume: {state_volumes}"
    assert set(state_volumes) <= set(compose()["volumes"]), "a ledger volume is not a declared named volume"


def test_compose_server_paths_lie_under_its_mounts():
    config, service = compose_federation()
    argv, mounts = compose_command(service), compose_mounts(service)
    base = workdir("Dockerfile.server")

    assert config.central_evaluation.data_dir is not None, "the default lies in output_dir, where no data is"
    assert_under_mount(_absolute(config.output_dir, base), mounts, "server output_dir", writable=True)
    assert_under_mount(_absolute(config.central_evaluation.data_dir, base), mounts, "server central data_dir")
    tls_dir = PurePosixPath(option(argv, "--tls-dir"))
    for name in ("ca.crt", "server.crt", "server.key"):
        assert_certs_file(tls_dir / name, service, "server --tls-dir")
    for enrolled in config.enrolled:
        assert_certs_file(_absolute(enrolled.public_key, base), service, f"enrolled {enrolled.name}")


def test_compose_enrolls_exactly_its_institutions_and_they_dial_a_name_the_certificate_has():
    config, server = compose_federation()
    server_port = option(compose_command(server), "--port")
    certified = compose_certs_output().server_names
    (server_name,) = services_running("server")

    names = set()
    for name, service in services_running("client").items():
        names.add(compose_institution(name, service)[0].name)
        host, _, port = option(compose_command(service), "--server").rpartition(":")
        assert (host, port) == (server_name, server_port), f"service {name} dials {host}:{port}"
        assert host in certified, f"service {name} dials {host}, the server certificate is for {sorted(certified)}"

    assert {e.name for e in config.enrolled} == names == compose_certs_output().institutions


# -- Kubernetes ----------------------------------------------------------------------------------------------


def k8s_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml_documents(path)]


def k8s_object(kind: str, name: str) -> dict:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/k8s, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class K8sFile:
    """A file a pod sees: projected from a Secret or ConfigMap key."""

    kind: str  # "secret" or "configMap"
    name: str
    key: str


def _projected_files(volume: dict, mount_path: PurePosixPath) -> dict[PurePosixPath, K8sFile]:
    sources = volume["projected"]["sources"] if "projected" in volume else [volume]
    files = {}
    for source in sources:
        kind = "secret" if "secret" in source else "configMap" if "configMap" in source else None
        if kind is None:
            continue
        reference = source[kind]
        name = reference.get("secretName") or reference["name"]
        for item in reference.get("items", []):
            files[mount_path / item["path"]] = K8sFile(kind, name, item["key"])
    return files


@dataclass
class K8sPod:
    mounts: list[Mount]
    files: dict[PurePosixPath, K8sFile]
    claims: dict[str, PurePosixPath]  # claim name -> mount path


def k8s_pod(pod: dict, container: dict) -> K8sPod:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    result = K8sPod([], {}, {})
    for mount in container.get("volumeMounts", []):
        volume, target = volumes[mount["name"]], PurePosixPath(mount["mountPath"])
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        result.mounts.append(Mount(claim or mount["name"], target, bool(mount.get("readOnly")), bool(claim)))
        result.files.update(_projected_files(volume, target))
        if claim:
            result.claims[claim] = target
    return result


def k8s_workloads(command: str) -> list[tuple[str, dict, dict]]:
    return [(where, pod, container) for where, pod, container in k8s_containers()
            if "Deployment" in where and (k8s_argv(container) or [None])[0] == command]


def k8s_config_text(pod: K8sPod, path: PurePosixPath) -> str:
    assert path in pod.files, f"{path} is not a file projected into the pod"
    source = pod.files[path]
    assert source.kind == "configMap"
    return k8s_object("ConfigMap", source.name)["data"][source.key]


def assert_k8s_file(pod: K8sPod, path: PurePosixPath, what: str) -> K8sFile:
    assert path in pod.files, f"{what} {path}: not a file projected from a Secret or ConfigMap"
    return pod.files[path]


def test_kubernetes_runs_one_server_and_one_institution_with_one_replica_each():
    workloads = [*k8s_workloads("server"), *k8s_workloads("client")]
    deployments = [d for d in k8s_documents() if d["kind"] == "Deployment"]

    assert len(k8s_workloads("server")) == 1 and len(k8s_workloads("client")) == 1
    assert len(deployments) == len(workloads)
    for deployment in deployments:  # one writer per ledger and per checkpoint directory
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_kubernetes_institution_config_is_the_deploy_config_and_its_paths_are_mounted():
    (where, pod_spec, container), = k8s_workloads("client")
    argv, pod = k8s_argv(container), k8s_pod(pod_spec, container)
    config_path = PurePosixPath(option(argv, "--institution"))
    text = k8s_config_text(pod, config_path)
    config = parse_config(yaml.safe_load(text), InstitutionConfig, source=where)

    assert text == (DEPLOY / "configs" / "institutions" / f"{config.name}.yaml").read_text(), \
        f"{where}: the embedded institution config differs from deploy/configs/institutions/{config.name}.yaml"
    assert_under_mount(_absolute(config.data_dir, config_path.parent), pod.mounts, "data_dir")
    assert_under_mount(_absolute(config.state_dir, config_path.parent), pod.mounts, "state_dir", writable=True)
    assert assert_k8s_file(pod, PurePosixPath(option(argv, "--key")), "--key").kind == "secret"
    assert_k8s_file(pod, PurePosixPath(option(argv, "--root-certificates")), "--root-certificates")
    assert PurePosixPath(option(argv, "--key")).name == config.name


def test_kubernetes_server_config_is_the_deploy_config_and_its_paths_are_mounted():
    (where, pod_spec, container), = k8s_workloads("server")
    argv, pod = k8s_argv(container), k8s_pod(pod_spec, container)
    text = k8s_config_text(pod, PurePosixPath(option(argv, "--config")))
    config = parse_config(yaml.safe_load(text), FederationConfig, source=where)
    base = workdir("Dockerfile.server")

    assert text == (DEPLOY / "configs" / "federation.yaml").read_text(), \
        f"{where}: the embedded federation config differs from deploy/configs/federation.yaml"
    assert_under_mount(_absolute(config.output_dir, base), pod.mounts, "output_dir", writable=True)
    assert_under_mount(_absolute(config.central_evaluation.data_dir, base), pod.mounts, "central data_dir")
    tls_dir = PurePosixPath(option(argv, "--tls-dir"))
    assert {assert_k8s_file(pod, tls_dir / n, "--tls-dir").kind for n in ("ca.crt", "server.crt", "server.key")} \
        == {"secret"}
    for enrolled in config.enrolled:
        assert_k8s_file(pod, _absolute(enrolled.public_key, base), f"enrolled {enrolled.name}")


def test_kubernetes_institution_dials_the_server_service():
    (_, _, server), = k8s_workloads("server")
    (_, _, client), = k8s_workloads("client")
    service = k8s_object("Service", "helixfed-server")
    port = service["spec"]["ports"][0]
    container_port = next(p for p in server["ports"] if p["name"] == port["targetPort"])

    host, _, dialled = option(k8s_argv(client), "--server").rpartition(":")

    assert (host, int(dialled)) == (service["metadata"]["name"], port["port"])
    assert container_port["containerPort"] == int(option(k8s_argv(server), "--port"))
    deployment = k8s_object("Deployment", "helixfed-server")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_kubernetes_claims_exist_and_the_data_loaders_fill_them_where_the_workloads_read():
    claims = {d["metadata"]["name"] for d in k8s_documents() if d["kind"] == "PersistentVolumeClaim"}
    loaders = [k8s_pod(pod, c) for where, pod, c in k8s_containers() if "data-loader" in where]
    workloads = [k8s_pod(pod, c) for _, pod, c in [*k8s_workloads("server"), *k8s_workloads("client")]]

    used = {claim: path for pod in workloads for claim, path in pod.claims.items()}
    loaded = {claim: path for pod in loaders for claim, path in pod.claims.items()}

    assert set(used) <= claims, f"claims used but not declared: {set(used) - claims}"
    assert loaded and all(used[claim] == path for claim, path in loaded.items())
    storage_files = {p.name for p in K8S.glob("*storage.yaml")}
    for path in K8S.glob("*.yaml"):
        if path.name not in storage_files:  # deleting a workload's file must never delete a ledger
            assert all(d["kind"] != "PersistentVolumeClaim" for d in load_yaml_documents(path)), path.name


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="make-secrets.sh runs kubectl (offline)")
def test_make_secrets_produces_every_secret_and_key_the_manifests_mount(tmp_path):
    from server.ops.certs import write_federation_certs

    names = ["oslo-uh", "jackson-lab", "ecoli-reference"]
    write_federation_certs(out_dir=tmp_path, server_name="helixfed-server", institutions=names, days=1)
    script = str(K8S / "make-secrets.sh")
    outputs = [subprocess.run(["bash", script, *argv], capture_output=True, text=True, check=True).stdout
               for argv in (["server", str(tmp_path)],
                            ["institution", "oslo-uh", str(tmp_path / "ca.crt"), str(tmp_path / "institutions/oslo-uh")])]
    made = {(d["kind"], d["metadata"]["name"]): d["data"] for out in outputs for d in yaml.safe_load_all(out) if d}

    for _, pod_spec, container in [*k8s_workloads("server"), *k8s_workloads("client")]:
        for path, source in k8s_pod(pod_spec, container).files.items():
            kind = "Secret" if source.kind == "secret" else "ConfigMap"
            if (kind, source.name) in made:
                assert source.key in made[(kind, source.name)], f"{path}: {source.name} has no key {source.key}"
            else:
                assert source.kind == "configMap" and k8s_object("ConfigMap", source.name), f"{path}: nothing makes it"


def test_the_readme_makes_kubernetes_certificates_for_the_name_the_institution_dials():
    (_, _, client), = k8s_workloads("client")
    host = option(k8s_argv(client), "--server").rpartition(":")[0]
    certs_commands = [argv for _, argv in readme_invocations() if argv[:1] == ["certs"]]

    certified = [{argv[i + 1] for i, token in enumerate(argv) if token in ("--server-name", "--dns")}
                 for argv in certs_commands]

    assert any(host in names for names in certified), f"no README certs command makes a certificate for {host}"
