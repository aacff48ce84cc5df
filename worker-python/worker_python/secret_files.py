"""WORKER_TOKEN_FILE and the WORKER_TLS_* files (issue 16): read at start-up (a bad one stops the
worker with exit 2), then watched: a changed file (mtime, size or inode; one stat per file a
second) is re-read and its tokens or TLS context replace the old ones for new requests and
handshakes, while open connections keep theirs. A broken new file keeps the previous material
and logs one error line. No token or key is ever logged or put in a message."""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from collections.abc import Callable

from worker_python.config import Settings, SettingsError
from worker_python.log import get_logger
from worker_python.tls import read_secret_file, server_context

MAX_TOKENS = 2
CHECK_EVERY_SECONDS = 1.0
TOKEN_VARIABLES = ("WORKER_TOKEN_FILE",)
TLS_VARIABLES = ("WORKER_TLS_CERT", "WORKER_TLS_KEY", "WORKER_TLS_CLIENT_CA")
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII, no spaces (a bearer token's own rule)


def read_tokens(path: str) -> tuple[str, ...]:
    """1 or 2 tokens, one per line (each line stripped, empty lines ignored), from a regular file
    of at most tls.MAX_FILE_BYTES."""
    try:
        text = read_secret_file(path, "WORKER_TOKEN_FILE").decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"WORKER_TOKEN_FILE: cannot read {path}: not UTF-8 text") from None
    tokens = tuple(line.strip() for line in text.split("\n") if line.strip())
    if not tokens:
        raise SettingsError(f"WORKER_TOKEN_FILE: {path} holds no token")
    if len(tokens) > MAX_TOKENS:
        raise SettingsError(f"WORKER_TOKEN_FILE: {path} holds {len(tokens)} tokens; give 1 or 2, one per line")
    if not all(_TOKEN.fullmatch(token) for token in tokens):
        raise SettingsError(f"WORKER_TOKEN_FILE: a token in {path} is not 1-4096 printable ASCII characters")
    return tokens


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class SecretFiles:
    """The tokens and the TLS context in use now. Readers take `tokens` / `context` as they are:
    each is replaced whole (one assignment), never changed in place."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self.tokens: tuple[str, ...] = (settings.token,) if settings.token else ()
        self.context: ssl.SSLContext | None = None
        paths = {
            "WORKER_TOKEN_FILE": settings.token_file,
            "WORKER_TLS_CERT": settings.tls_cert,
            "WORKER_TLS_KEY": settings.tls_key,
            "WORKER_TLS_CLIENT_CA": settings.tls_client_ca,
        }
        self._paths = {variable: path for variable, path in paths.items() if path is not None}
        self._seen = self._stat()

    @classmethod
    def load(cls, settings: Settings) -> SecretFiles:
        """Read every file once; SettingsError (one line, naming the variable) for a bad one."""
        files = cls(settings)
        files._load_tokens()
        files._load_tls()
        return files

    def _stat(self) -> dict[str, tuple[int, int, int] | None]:
        return {variable: _signature(path) for variable, path in self._paths.items()}

    def _load_tokens(self) -> None:
        if self._settings.token_file is not None:
            self.tokens = read_tokens(self._settings.token_file)

    def _load_tls(self) -> None:
        s = self._settings
        if s.tls_cert is not None and s.tls_key is not None:
            self.context = server_context(s.tls_cert, s.tls_key, s.tls_client_ca)

    def refresh(self) -> None:
        """Re-read the files of each group (token, TLS) in which one changed since the last look."""
        seen = self._stat()
        changed = {variable for variable, signature in seen.items() if signature != self._seen.get(variable)}
        self._seen = seen
        for group, loader in ((TOKEN_VARIABLES, self._load_tokens), (TLS_VARIABLES, self._load_tls)):
            variables = [variable for variable in group if variable in changed]
            if variables:
                _reload(variables, loader)

    def start_watching(self) -> threading.Thread | None:
        """A daemon thread that calls refresh() once a second; none when no file is configured."""
        if not self._paths:
            return None
        thread = threading.Thread(target=self._watch, name="secret-files", daemon=True)
        thread.start()
        return thread

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_EVERY_SECONDS)
            self.refresh()


def _reload(variables: list[str], loader: Callable[[], None]) -> None:
    log = get_logger()
    try:
        loader()
    except Exception as exc:  # any failure keeps the old material; the reason never holds a secret
        reason = str(exc) if isinstance(exc, SettingsError) else type(exc).__name__
        log.error(f"secrets reload failed: {reason}; keeping the previous ones")
        return
    log.info("secrets reloaded", extra={"files": variables})
