"""The text form of an ML program: the `model.mil` inside a compiled `.mlmodelc` (what Apple's compiler
writes), read into the same IR as the protobuf form, and written back out (`dump_mil`).

Grammar (the parts Core ML programs use):
    program(1.3)
    [buildInfo = dict<string, string>({{"k", "v"}, ...})]
    {
        func NAME<opset>(TYPE NAME, ..., state<TYPE> NAME) {
            TYPE NAME[, TYPE NAME...] = OP(ARG = VALUE | (VALUE, ...), ...)[name = string("..."), ...];
            OP(ARG = ...)[name = ...];                       # ops without outputs (write_state)
        } -> (NAME, ...);
    }
    TYPE  := tensor<DTYPE, [DIM, ...]> | DTYPE | list<...> | dict<...>
    VALUE := NAME | DTYPE(LITERAL) | tensor<...>([LITERAL, ...]) | tensor<...>(BLOBFILE(path = string("..."), offset = uint64(N)))
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from anechat.errors import ModelLoadError
from anechat.runtime.milexec.ir import NUMPY_DTYPES, Function, Op, Program, TensorType, Var
from anechat.runtime.milexec.weights import BlobStore

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<arrow>->)
  | (?P<number>[-+]?(?:0x[0-9a-fA-F.]+p[-+]?\d+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan)(?![\w.]))
  | (?P<name>[A-Za-z_][\w.]*)
  | (?P<punct>[()\[\]{}<>,=;:?])
    """,
    re.VERBOSE,
)


class _Tokens:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.items: list[tuple[str, str, int]] = []
        pos, line = 0, 1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ModelLoadError(f"{source}:{line}: unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""  # every alternative of _TOKEN is a named group
            if kind != "ws":
                self.items.append((kind, m.group(), line))
            line += m.group().count("\n")
            pos = m.end()
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str, int]:
        j = self.i + offset
        return self.items[j] if j < len(self.items) else ("eof", "", self.items[-1][2] if self.items else 1)

    def next(self) -> tuple[str, str, int]:
        tok = self.peek()
        self.i += 1
        return tok

    def error(self, message: str) -> ModelLoadError:
        return ModelLoadError(f"{self.source}:{self.peek()[2]}: {message}")

    def expect(self, text: str) -> None:
        kind, value, _ = self.peek()
        if value != text:
            raise self.error(f"expected {text!r}, found {value or 'end of file'!r}")
        self.i += 1

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False

    def name(self) -> str:
        kind, value, _ = self.next()
        if kind != "name":
            self.i -= 1
            raise self.error(f"expected a name, found {value or 'end of file'!r}")
        return value


def _number(text: str) -> float | int:
    t = text.lower()
    if "0x" in t:
        return float.fromhex(t)
    if t.lstrip("+-") in ("inf", "nan"):
        return float(t)
    return float(t) if any(c in t for c in ".en") else int(t)


class _Parser:
    def __init__(self, text: str, source: str, base: Path) -> None:
        self.t = _Tokens(text, source)
        self.source = source
        self.blobs = BlobStore(base, source)

    # types -----------------------------------------------------------------------------------------------
    def type(self) -> tuple[str, Any]:
        """('tensor', TensorType) | ('state', TensorType) | ('scalar', dtype) | ('other', None)."""
        head = self.t.name()
        if head in ("tensor", "state"):
            self.t.expect("<")
            if head == "state":
                _, inner = self.type()
                self.t.expect(">")
                return "state", inner
            dtype = self.t.name()
            self.t.expect(",")
            self.t.expect("[")
            dims: list[int | None] = []
            while not self.t.accept("]"):
                kind, value, _ = self.t.next()
                dims.append(int(value) if kind == "number" else None)
                self.t.accept(",")
            self.t.expect(">")
            return "tensor", TensorType(dtype, tuple(dims))
        if head in ("list", "dict", "tuple"):
            depth = 0
            self.t.expect("<")
            while depth or not self.t.accept(">"):
                v = self.t.next()[1]
                depth += (v == "<") - (v == ">")
            return "other", None
        return "scalar", head

    # values ----------------------------------------------------------------------------------------------
    def literal_list(self, close: str) -> list:
        out: list[Any] = []
        while not self.t.accept(close):
            kind, value, _ = self.t.next()
            if kind == "number":
                out.append(_number(value))
            elif kind == "name" and value in ("true", "false"):
                out.append(value == "true")
            elif kind == "string":
                out.append(_unquote(value))
            elif value in ("[", "{"):
                out.append(self.literal_list("]" if value == "[" else "}"))
            else:
                raise self.t.error(f"unexpected {value!r} in a literal")
            self.t.accept(",")
        return out

    def typed_value(self) -> Any:
        kind, info = self.type()
        self.t.expect("(")
        if kind == "tensor":
            if self.t.peek()[1] == "BLOBFILE":
                value = self.blobfile(info)
            else:
                self.t.expect("[")
                flat = np.array(self.literal_list("]"))
                try:
                    shape = info.static_shape()
                except ModelLoadError as e:  # a `?` dimension: said at the literal's line like every parse error
                    raise self.t.error(str(e)) from None
                value = flat.astype(NUMPY_DTYPES.get(info.dtype, flat.dtype)).reshape(shape)
            self.t.expect(")")
            return value
        if kind == "scalar":
            tk, raw, _ = self.t.next()
            self.t.expect(")")
            if tk == "string":
                return _unquote(raw)
            if raw in ("true", "false"):
                return raw == "true"
            v = _number(raw)
            if info in NUMPY_DTYPES:
                return NUMPY_DTYPES[info](v).item()
            return v
        # dict/list literals (buildInfo): skip their contents
        depth = 1
        while depth:
            token = self.t.next()[1]
            depth += (token == "(") - (token == ")")
        return None

    def blobfile(self, info: TensorType) -> np.ndarray:
        self.t.expect("BLOBFILE")
        self.t.expect("(")
        args: dict[str, Any] = {}
        while not self.t.accept(")"):
            key = self.t.name()
            self.t.expect("=")
            args[key] = self.typed_value()
            self.t.accept(",")
        try:
            return self.blobs.array(str(args.get("path", "")), int(args.get("offset", 0)), info.dtype, info.static_shape())
        except ModelLoadError as e:
            raise self.t.error(str(e).removeprefix(f"{self.source}: ")) from None

    def argument(self) -> Any:
        kind, value, _ = self.t.peek()
        if value == "(":
            self.t.next()
            items = []
            while not self.t.accept(")"):
                items.append(self.argument())
                self.t.accept(",")
            return items
        if kind == "name" and self.t.peek(1)[1] not in ("<", "("):
            self.t.next()
            return Var(value)
        return self.typed_value()

    # structure -------------------------------------------------------------------------------------------
    def program(self) -> Program:
        self.t.expect("program")
        self.t.expect("(")
        self.t.next()
        self.t.expect(")")
        if self.t.accept("["):
            depth = 1
            while depth:
                v = self.t.next()[1]
                if v == "":
                    raise self.t.error("unterminated program attributes")
                depth += (v == "[") - (v == "]")
        self.t.expect("{")
        functions: dict[str, Function] = {}
        while not self.t.accept("}"):
            fn = self.function()
            functions[fn.name] = fn
        if self.t.peek()[0] != "eof":
            raise self.t.error("text after the end of the program")
        if not functions:
            raise self.t.error("program has no functions")
        return Program(functions, "main" if "main" in functions else next(iter(functions)), self.source)

    def function(self) -> Function:
        self.t.expect("func")
        name = self.t.name()
        opset = "CoreML8"
        if self.t.accept("<"):
            opset = self.t.name()
            self.t.expect(">")
        self.t.expect("(")
        inputs: dict[str, TensorType] = {}
        states: dict[str, TensorType] = {}
        while not self.t.accept(")"):
            kind, info = self.type()
            (states if kind == "state" else inputs)[self.t.name()] = info
            self.t.accept(",")
        self.t.expect("{")
        ops = []
        while not self.t.accept("}"):
            ops.append(self.op())
        self.t.expect("->")
        self.t.expect("(")
        outputs = []
        while not self.t.accept(")"):
            outputs.append(self.t.name())
            self.t.accept(",")
        self.t.expect(";")
        return Function(name, inputs, states, outputs, ops, opset)

    def op(self) -> Op:
        outputs, types = [], []
        if self.t.peek(1)[1] in ("<",) or self.t.peek(1)[0] == "name":
            while True:
                _, info = self.type()
                outputs.append(self.t.name())
                types.append(info)
                if not self.t.accept(","):
                    break
            self.t.expect("=")
        op_type = self.t.name()
        self.t.expect("(")
        inputs = {}
        while not self.t.accept(")"):
            key = self.t.name()
            self.t.expect("=")
            inputs[key] = self.argument()
            self.t.accept(",")
        attributes = {}
        if self.t.accept("["):
            while not self.t.accept("]"):
                key = self.t.name()
                self.t.expect("=")
                attributes[key] = self.typed_value()
                self.t.accept(",")
        self.t.expect(";")
        attributes.pop("name", None)
        return Op(op_type, inputs, outputs, types, attributes)


def _unquote(s: str) -> str:
    return bytes(s[1:-1], "utf-8").decode("unicode_escape") if "\\" in s else s[1:-1]


def parse_mil(text: str, source: str = "model.mil", base: Path | None = None) -> Program:
    parser = _Parser(text, source, base or Path("."))
    try:
        return parser.program()
    except RecursionError:
        raise parser.t.error("nested too deeply") from None
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, AttributeError, MemoryError) as e:
        # a literal that does not fit its type or shape, a bad escape, a number out of range
        raise parser.t.error(f"invalid value ({type(e).__name__}: {e})") from None


def read_mlmodelc(path: Path) -> Program:
    mil = path / "model.mil"
    try:
        text = mil.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no model.mil (not an ML program, or not a compiled model)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{mil}: unreadable ({e})") from None
    program = parse_mil(text, str(mil), path)
    program.metadata = compiled_metadata(path)
    return program


def compiled_metadata(path: Path) -> dict[str, str]:
    """The user-defined metadata coremlcompiler copies into metadata.json (a list of one object); {} without it."""
    import json

    try:
        info = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entry = info[0] if isinstance(info, list) and info else info
    user = entry.get("userDefinedMetadata") if isinstance(entry, dict) else None
    return {str(k): str(v) for k, v in user.items()} if isinstance(user, dict) else {}
