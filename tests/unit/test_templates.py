"""Unit tests of the template machinery that needs no Docker: discovery over a templates path,
hashing, build arguments, version probes, and the catalog as Redis and /v1/templates show it."""

from __future__ import annotations

import base64
from pathlib import Path

import fakeredis
import pytest

from shared import keys
from shared.accounts import Accounts
from shared.settings import Settings
from shared.store import Store
from web.app import create_app
from workers.images.template_sources import (
    BUILTIN_TEMPLATES,
    base_dir,
    declared_args,
    discover_templates,
    parse_build_args,
    parse_templates_path,
    template_hash,
)
from workers.images.templates import (
    ImageBuildError,
    ProbeError,
    TemplateImage,
    parse_probe_output,
    parse_versions_label,
    probe_script,
    short_version,
    version_probes,
)

TINY = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo tiny > /etc/tiny\n"


def _template(root: Path, name: str, dockerfile: str = TINY) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "Dockerfile").write_text(dockerfile)
    return root / name


def test_the_built_in_templates_are_the_nine_environments_and_standard() -> None:
    assert discover_templates(BUILTIN_TEMPLATES) == [
        "Bash",
        "DotNET",
        "Go",
        "Java",
        "Nodejs",
        "PHP",
        "Perl",
        "Python3",
        "Rust",
        "standard",
    ]
    for name in discover_templates(BUILTIN_TEMPLATES):
        assert version_probes((BUILTIN_TEMPLATES / name / "Dockerfile").read_text()), name


def test_a_templates_path_of_several_directories(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _template(one, "Tiny")
    _template(two, "Other")
    (two / "notes").mkdir()  # no Dockerfile: not a template
    assert parse_templates_path(f"{one}:{two}:") == [one, two]
    assert discover_templates([one, two]) == ["Tiny", "Other"]
    # Neither directory defines a base: the built-in one is used.
    assert base_dir([one, two]) == BUILTIN_TEMPLATES / "base"
    (two / "base").mkdir()
    assert base_dir([one, two]) == two / "base"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"one/Tiny": TINY, "two/tiny": TINY}, "same name"),
        ({"one/Bad Name": TINY}, "not usable as an image name"),
        ({"one/Pulled": "FROM debian:bookworm\nRUN true\n"}, "must build FROM ${BASE_IMAGE}"),
    ],
)
def test_bad_templates_are_refused_before_anything_is_built(
    tmp_path: Path, layout: dict[str, str], message: str
) -> None:
    for rel, text in layout.items():
        _template(tmp_path, rel, text)
    with pytest.raises(ImageBuildError, match=message.replace("$", r"\$")):
        discover_templates([tmp_path / "one", tmp_path / "two"])
    with pytest.raises(ImageBuildError, match="does not exist"):
        discover_templates(tmp_path / "missing")


def test_the_hash_follows_content_base_and_build_arguments(tmp_path: Path) -> None:
    path = _template(tmp_path, "Tiny")
    h = template_hash(path, "base1")
    assert h == template_hash(path, "base1", {})
    assert h != template_hash(path, "base2")
    assert h != template_hash(path, "base1", {"X": "1"})
    (path / "extra.txt").write_text("x")
    assert h != template_hash(path, "base1")


def test_build_arguments_reach_only_templates_that_declare_them() -> None:
    dockerfile = (BUILTIN_TEMPLATES / "DotNET" / "Dockerfile").read_text()
    assert declared_args(dockerfile) == {"BASE_IMAGE", "DOTNET_SDK"}
    assert declared_args(TINY) == {"BASE_IMAGE"}
    assert parse_build_args(["DOTNET_SDK=8.0", "EMPTY="]) == {"DOTNET_SDK": "8.0", "EMPTY": ""}
    for bad in (["NOVALUE"], ["BASE_IMAGE=x"], ["1X=y"]):
        with pytest.raises(ImageBuildError):
            parse_build_args(bad)


def test_version_probe_lines() -> None:
    text = (
        "FROM x\n# paddock-version: go go version\n#paddock-version:  java  java -version  \n"
        "# an ordinary comment\n"
    )
    assert version_probes(text) == [("go", "go version"), ("java", "java -version")]
    with pytest.raises(ProbeError, match="twice"):
        version_probes("# paddock-version: a x\n# paddock-version: a y\n")
    with pytest.raises(ProbeError, match="identifier"):
        version_probes("# paddock-version: $(boom) x\n")


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("go version go1.19.8 linux/amd64", "1.19.8"),
        ('openjdk version "17.0.19" 2025-10-21\nOpenJDK Runtime Environment', "17.0.19"),
        ("GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)", "5.2.15"),
        ("v5.36.0", "5.36.0"),
        ("Mono JIT compiler version 6.8.0.105 (Debian 6.8.0.105+dfsg-3.3)", "6.8.0.105"),
        ("\nno number here\nsecond", "no number here"),
        ("", ""),
    ],
)
def test_short_version(output: str, version: str) -> None:
    assert short_version(output) == version


def test_probe_output_is_parsed_by_marker() -> None:
    probes = [("node", "node --version"), ("dotnet", "maybe"), ("npm", "npm --version")]
    m = "@@paddock-abc"
    script = probe_script(probes, m)
    assert "( node --version\n) </dev/null 2>&1" in script
    out = (
        f"{m} user user\n{m} begin node\nv18.20.4\n\n{m} end node 0\n"
        f"{m} begin dotnet\n\n{m} end dotnet 0\n{m} begin npm\n9.2.0\n\n{m} end npm 0\n"
    )
    # A probe that prints nothing (dotnet where it is not installed) is left out.
    assert parse_probe_output(out, probes, m) == {"node": "18.20.4", "npm": "9.2.0"}
    failed = out.replace(f"{m} end npm 0", f"{m} end npm 127").replace("9.2.0", "npm: not found")
    with pytest.raises(ProbeError, match=r"'npm' \(npm --version\) exited 127:\nnpm: not found"):
        parse_probe_output(failed, probes, m)
    with pytest.raises(ProbeError, match="sandbox user"):
        parse_probe_output(out.replace(" user user", " user root"), probes, m)


def test_versions_label_never_raises() -> None:
    assert parse_versions_label('{"go": "1.19.8"}') == {"go": "1.19.8"}
    for bad in (None, "", "not json", "[1, 2]"):
        assert parse_versions_label(bad) == {}


def _entry(name: str, built_at: float, version: str) -> dict:
    return TemplateImage(
        name, f"paddock/tpl-{name.lower()}:latest", "h" + version, 1000, built_at, {"v": version}
    ).to_json()


def test_catalog_merges_live_hosts_and_serves_it_on_v1_templates() -> None:
    r = fakeredis.FakeRedis()
    store = Store(r)
    store.heartbeat("a", 4, ["Go"], ttl=30, catalog=[_entry("Go", 100, "1")])
    store.heartbeat(
        "b", 4, ["Go", "Perl"], ttl=30, catalog=[_entry("Go", 200, "2"), _entry("Perl", 50, "5")]
    )
    store.heartbeat("dead", 4, ["Java"], ttl=30, catalog=[_entry("Java", 1, "17")])
    store.host_down("dead")
    r.hset(keys.host("a"), "catalog", "not json")  # a bad catalog is skipped, not an error
    store.heartbeat("a", 4, ["Go"], ttl=30, catalog=[_entry("Go", 100, "1")])

    catalog = store.template_catalog()
    assert [(e["name"], e["versions"], e["hosts"]) for e in catalog] == [
        ("Go", {"v": "2"}, ["a", "b"]),  # the newest build is shown
        ("Perl", {"v": "5"}, ["b"]),
    ]

    settings = Settings(
        host_id="t", jwt_secret="j" * 32, secret_key=base64.urlsafe_b64encode(b"k" * 32).decode()
    )
    client = create_app(settings, redis_client=r).test_client()
    _, key = Accounts(r, settings.jwt_secret).create_api_key("usr_t", "t", 5)
    body = client.get("/v1/templates", headers={"Authorization": f"Bearer {key}"}).get_json()
    assert body["templates"][0] == {
        "name": "Go",
        "image": "paddock/tpl-go:latest",
        "size_bytes": 1000,
        "built_at": "1970-01-01T00:03:20Z",
        "versions": {"v": "2"},
        "hash": "h2",
        "hosts": ["a", "b"],
    }
    # An API key is required, as on every v1 route; errors come in the v1 envelope.
    resp = client.get("/v1/templates")
    assert resp.status_code == 401
    assert resp.get_json()["error"]["type"] == "authentication_error"
