"""A real `anechat serve` child process on 127.0.0.1 and an ephemeral port (tests and benchmarks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai


class Server:
    def __init__(self, model_dir: Path, home: Path, *args: str) -> None:
        env = {**os.environ, "ANECHAT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anechat", "serve", "--model-dir", str(model_dir), "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        with self._seen:
            if not self._seen.wait_for(lambda: self._port is not None or self.proc.poll() is not None, timeout=120):
                raise TimeoutError("server did not start")
        assert self._port is not None, "".join(self.lines)
        self.url = f"http://127.0.0.1:{self._port}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line)
                m = re.search(r"at http://[^ ]+:(\d+)/v1", line)
                if m:
                    self._port = int(m.group(1))
                self._seen.notify_all()

    def wait_log(self, pattern: str, timeout: float = 20) -> str:
        with self._seen:
            found: list[str] = []

            def hit() -> bool:
                found[:] = [x for x in self.lines if re.search(pattern, x)]
                return bool(found)

            assert self._seen.wait_for(hit, timeout=timeout), f"no log line matching {pattern!r}:\n{''.join(self.lines)}"
            return found[-1]

    def client(self, key: str = "none", timeout: float = 120) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=timeout)

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def stop(self) -> int:
        self.proc.send_signal(2)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
