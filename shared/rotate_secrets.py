"""``python -m shared.rotate_secrets``: re-encrypt every secret bundle with the first key of
PADDOCK_SECRET_KEY. Rotate the master key by putting a new key first, restarting the web and
workers, running this, then removing the old key."""

from __future__ import annotations

from shared.crypto import SecretBox
from shared.redisconn import redis_client
from shared.secrets import SecretBundles
from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    r = redis_client(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)
    count = SecretBundles(r, SecretBox(settings.secret_key)).rotate_all()
    print(f"re-encrypted {count} secret bundle(s) with the first key of PADDOCK_SECRET_KEY")


if __name__ == "__main__":
    main()
