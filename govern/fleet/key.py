"""The fleet's shared secret (`fleet.key_file`): read once, refused unless only root can read or change it."""

from __future__ import annotations

import os
import stat

from govern.errors import ConfigError

MIN_KEY_BYTES = 16  # a 128-bit secret at least: the HMAC is as strong as the key it is given
MAX_KEY_BYTES = 4096


def read_key(path: str, *, config: str | None = None) -> bytes:
    """The key's bytes (surrounding whitespace stripped); ConfigError naming `fleet.key_file` unless the file is a
    regular file owned by root, mode 0600 or stricter, and holds at least MIN_KEY_BYTES."""
    key = "fleet.key_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", path=config, key=key) from None
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}", path=config, key=key) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file", path=config, key=key)
        if st.st_uid != 0:
            raise ConfigError(
                f"{path} belongs to uid {st.st_uid}; the fleet's key must be root's (chown root: {path})",
                path=config,
                key=key,
            )
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{path} is mode {stat.S_IMODE(st.st_mode):04o}; the fleet's key must be 0600 (chmod 600 {path})",
                path=config,
                key=key,
            )
        raw = os.read(fd, MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path=config, key=key) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_KEY_BYTES:
        raise ConfigError(f"{path} is longer than {MAX_KEY_BYTES} bytes; a key is not that long", path=config, key=key)
    secret = raw.strip()
    if not secret:
        raise ConfigError(f"{path} is empty", path=config, key=key)
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the key in {path} is shorter than {MIN_KEY_BYTES} bytes (head -c 32 /dev/urandom | base64 > {path})",
            path=config,
            key=key,
        )
    return secret
