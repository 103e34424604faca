"""The image builder against the real engine: a run with nothing changed takes seconds, and a
failed build names the image and shows the failing step, leaving no image behind."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import docker
import pytest

from workers.images.build import build_all
from workers.images.template_sources import BUILTIN_TEMPLATES
from workers.images.templates import ImageBuildError, image_ref


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    return docker.from_env(timeout=900)


def test_a_second_run_with_nothing_changed_takes_seconds(client: docker.DockerClient) -> None:
    lines: list[str] = []
    build_all(client, BUILTIN_TEMPLATES, "paddock", log=lines.append)  # a no-op after make images
    lines.clear()
    started = time.monotonic()
    results = build_all(client, BUILTIN_TEMPLATES, "paddock", log=lines.append)
    assert time.monotonic() - started < 10
    assert not any(r.built for r in results)
    assert len(lines) == len(results) == 11  # one progress line per image
    assert lines[0].startswith("[images] 1/11 base: up to date")
    assert lines[-1].startswith("[images] 11/11 standard: up to date")


def _broken(tmp_path: Path, body: str) -> str:
    name = "Broken" + secrets.token_hex(4)
    (tmp_path / name).mkdir()
    (tmp_path / name / "Dockerfile").write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n{body}")
    return name


def _no_image_left(client: docker.DockerClient, name: str) -> None:
    repo = image_ref("paddock", name).rpartition(":")[0]
    assert client.images.list(name=repo) == []


def test_a_failing_step_is_named_with_its_output(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    name = _broken(tmp_path, "RUN echo preparing\nRUN echo 'no such package' >&2 && exit 3\n")
    with pytest.raises(ImageBuildError) as caught:
        build_all(client, tmp_path, "paddock", log=lambda _line: None)
    message = str(caught.value)
    assert message.startswith(f"{name}: build failed at Step 4/4 : RUN echo 'no such package'")
    assert "returned a non-zero code: 3" in message
    assert "no such package" in message.split("last output:", 1)[1]
    _no_image_left(client, name)


def test_a_failing_version_probe_fails_the_build(
    client: docker.DockerClient, tmp_path: Path
) -> None:
    name = _broken(tmp_path, "# paddock-version: tool no-such-tool --version\nRUN true\n")
    with pytest.raises(ImageBuildError) as caught:
        build_all(client, tmp_path, "paddock", log=lambda _line: None)
    assert str(caught.value).startswith(
        f"{name}: version probe 'tool' (no-such-tool --version) exited 127:\n"
    )
    assert "no-such-tool: command not found" in str(caught.value)
    _no_image_left(client, name)
