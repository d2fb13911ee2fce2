"""Progress lines: a step that takes long says so ("anechat: loading m … 4 s, about 2 s left"), as it will on a
busy machine; tests that check stderr for errors or silence leave these lines out."""

import re

PROGRESS = re.compile(r" … \d+ (s|min \d+ s)\b")


def without_progress(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS.search(line)]
