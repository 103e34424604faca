"""What a template image says about itself: its labels, the catalog of a host's templates, and
the language versions measured inside it when it was built.

A template's Dockerfile declares how to ask for its versions with comment lines::

    # paddock-version: <name> <shell command>

After the image is built, every command runs once in a throwaway container (no network, as the
sandbox user, like a sandbox); the first version number in each command's output (stdout and
stderr, since ``java -version`` prints on stderr) is kept, or the first line when the output
has no number. A command that prints nothing is left out, so a probe can be conditional. The
result is stored in the image's ``paddock.versions`` label, which every host heartbeat
publishes with the rest of the catalog.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets

import docker
import docker.errors

from workers.backends.base import SANDBOX_HOME, SANDBOX_USER, TemplateImage

TEMPLATE_LABEL = "paddock.template"
HASH_LABEL = "paddock.hash"
VERSIONS_LABEL = "paddock.versions"
PROBE_LABEL = "paddock.probe"

# Bounds one probe container (all of a template's commands together): a JVM starting on a loaded
# machine takes a few seconds, a hung command must not hang the build.
PROBE_TIMEOUT = 180.0
PROBE_MEMORY = 1 << 30

_VERSION_LINE = re.compile(r"^\s*#\s*paddock-version:\s*(\S+)\s+(\S.*?)\s*$")
_PROBE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_NUMBER = re.compile(r"\d+(?:\.\d+)+")
MAX_VERSION_CHARS = 80


class ImageBuildError(Exception):
    """An image could not be built; the message names the image and shows the failing output."""


class ProbeError(ImageBuildError):
    """A version probe could not run or one of its commands failed; the message says which."""


def image_ref(prefix: str, template: str) -> str:
    """The ``:latest`` reference of ``template``'s image, e.g. ``paddock/tpl-nodejs:latest``."""
    return f"{prefix}/tpl-{template.lower()}:latest"


def template_catalog(client: docker.DockerClient, prefix: str) -> list[TemplateImage]:
    """The local template images, sorted by name, from one call to the engine.

    Only images tagged ``<prefix>/tpl-<name>:latest`` that carry the ``paddock.template`` label
    count. Raises docker.errors.DockerException when the engine cannot be reached.
    """
    found: dict[str, TemplateImage] = {}
    # The low-level listing carries tags, labels, size and creation time already; the
    # high-level one would inspect every image again, on every heartbeat. Tags are matched here
    # rather than with the engine's `reference` filter, whose handling of multi-component names
    # (registry:port/prefix) varies between engine versions.
    for row in client.api.images(filters={"label": TEMPLATE_LABEL}):
        labels = row.get("Labels") or {}
        name = labels.get(TEMPLATE_LABEL)
        if not name:
            continue
        ref = image_ref(prefix, name)
        if ref not in (row.get("RepoTags") or []):
            continue
        found[name] = TemplateImage(
            name=name,
            image=ref,
            hash=labels.get(HASH_LABEL, ""),
            size_bytes=int(row.get("Size") or 0),
            built_at=float(row.get("Created") or 0),
            versions=parse_versions_label(labels.get(VERSIONS_LABEL)),
        )
    return [found[name] for name in sorted(found)]


def parse_versions_label(raw: str | None) -> dict[str, str]:
    """The versions label as a dict; anything unreadable is an empty dict, never an error."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def version_probes(dockerfile: str) -> list[tuple[str, str]]:
    """The ``# paddock-version: <name> <command>`` lines of a Dockerfile, in order.

    Raises ProbeError for a name that is not a plain identifier or is given twice.
    """
    probes: list[tuple[str, str]] = []
    for line in dockerfile.splitlines():
        match = _VERSION_LINE.match(line)
        if not match:
            continue
        name, command = match.groups()
        if not _PROBE_NAME.match(name):
            raise ProbeError(f"paddock-version name {name!r} is not a plain identifier")
        if any(name == seen for seen, _ in probes):
            raise ProbeError(f"paddock-version {name!r} is declared twice")
        probes.append((name, command))
    return probes


def short_version(output: str) -> str:
    """The first version number in ``output`` (``go version go1.19.8 linux/amd64`` → ``1.19.8``),
    or its first non-empty line, shortened, when it has no number."""
    match = _NUMBER.search(output)
    if match:
        return match.group(0)
    for line in output.splitlines():
        if line.strip():
            return line.strip()[:MAX_VERSION_CHARS]
    return ""


def probe_script(probes: list[tuple[str, str]], marker: str) -> str:
    """A bash script that runs each probe command and frames its output and exit status."""
    parts = [f"printf '{marker} user %s\\n' \"$(id -un)\""]
    for name, command in probes:
        parts.append(f"printf '{marker} begin {name}\\n'")
        # A subshell, so that a probe's `exit` or `cd` cannot affect the next one.
        parts.append(f"( {command}\n) </dev/null 2>&1")
        parts.append(f"printf '\\n{marker} end {name} %d\\n' \"$?\"")
    return "\n".join(parts) + "\n"


def parse_probe_output(output: str, probes: list[tuple[str, str]], marker: str) -> dict[str, str]:
    """The versions found in a probe container's output.

    Raises ProbeError when the container did not run as the sandbox user, or when a command
    exited non-zero (with its output, which usually says what is missing).
    """
    user: str | None = None
    current: str | None = None
    captured: dict[str, list[str]] = {}
    status: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith(marker + " "):
            word, _, rest = line[len(marker) + 1 :].partition(" ")
            if word == "user":
                user = rest
            elif word == "begin":
                current = rest
                captured[rest] = []
            elif word == "end":
                ended, _, code_text = rest.rpartition(" ")
                status[ended] = int(code_text) if code_text.isdigit() else 1
                current = None
        elif current is not None:
            captured[current].append(line)
    if user != SANDBOX_USER:
        raise ProbeError(
            f"the image does not run as the sandbox user {SANDBOX_USER!r} (got {user!r}); "
            "templates must be built FROM ${BASE_IMAGE}"
        )
    versions: dict[str, str] = {}
    for name, command in probes:
        text = "\n".join(captured.get(name, [])).strip()
        code = status.get(name)
        if code is None:
            raise ProbeError(f"version probe {name!r} ({command}) did not finish")
        if code != 0:
            tail = "\n".join(text.splitlines()[-10:])
            raise ProbeError(f"version probe {name!r} ({command}) exited {code}:\n{tail}")
        version = short_version(text)
        if version:
            versions[name] = version
    return versions


def run_probes(
    client: docker.DockerClient, image: str, probes: list[tuple[str, str]]
) -> dict[str, str]:
    """Run ``probes`` in a throwaway container of ``image`` and return the versions found.

    The container is confined like a sandbox (no network, no capabilities, the sandbox user,
    1 GiB) and always removed. Raises ProbeError when it cannot start as the sandbox user, does
    not finish in PROBE_TIMEOUT seconds, or a command fails.
    """
    marker = "@@paddock-" + secrets.token_hex(6)
    try:
        container = client.containers.run(
            image,
            command=["/bin/bash", "-c", probe_script(probes, marker)],
            detach=True,
            user=SANDBOX_USER,
            environment={"HOME": SANDBOX_HOME, "USER": SANDBOX_USER},
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            mem_limit=PROBE_MEMORY,
            memswap_limit=PROBE_MEMORY,
            pids_limit=512,
            labels={PROBE_LABEL: image},
        )
    except docker.errors.APIError as exc:
        raise ProbeError(
            f"cannot start the image as the sandbox user {SANDBOX_USER!r} with /bin/bash "
            f"(templates must be built FROM ${{BASE_IMAGE}}): {exc.explanation or exc}"
        ) from exc
    try:
        try:
            container.wait(timeout=PROBE_TIMEOUT)
        except Exception as exc:  # requests' ReadTimeout or ConnectionError
            raise ProbeError(f"version probes did not finish in {PROBE_TIMEOUT:.0f} s") from exc
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    return parse_probe_output(output, probes, marker)
