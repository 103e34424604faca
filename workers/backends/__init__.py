"""Sandbox backends: the protocol (base.py) and its implementations, one package each
(docker/, supervisor/; fake/ only for the scale harness). ``make_backend`` builds the one
``PADDOCK_SANDBOX_BACKEND`` names."""

from __future__ import annotations

from shared.errors import ConfigError
from shared.settings import Settings
from workers.backends.base import SandboxBackend


def make_backend(settings: Settings) -> SandboxBackend:
    """The backend of ``settings.sandbox_backend`` (imported only when chosen). Raises
    ConfigError for an unknown name (Settings refuses one already; this is the one place that
    maps names to implementations)."""
    if settings.sandbox_backend == "docker":
        from workers.backends.docker.backend import DockerBackend

        return DockerBackend(settings)
    if settings.sandbox_backend == "supervisor":
        from workers.backends.supervisor.backend import SupervisorBackend

        return SupervisorBackend(settings)
    if settings.sandbox_backend == "fake":
        from workers.backends.fake.backend import FakeBackend

        return FakeBackend(settings)  # refused unless PADDOCK_ALLOW_FAKE_BACKEND (Settings)
    raise ConfigError(f"PADDOCK_SANDBOX_BACKEND: no backend named {settings.sandbox_backend!r}")
