"""The programs of an ANEMLL-layout model: embeddings, transformer chunk and lm_head (chunked layout), or
all three in one (monolithic layout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil

import numpy as np

from anechat.arch import by_name
from anechat.arch.base import ModelConfig
from anechat.arch.mil import conv1x1, f16, mb, rms_norm, weight_const
from anechat.arch.rope import cos_sin
from anechat.convert.checkpoint import Checkpoint

MAX_SPLIT = 16384


@dataclass
class GraphEnv:
    """What a family's decoder block reads besides x: the step inputs, the KV states, the function's mode."""

    config: ModelConfig
    seq: int
    ctx: int
    position_ids: object
    mask: object  # causal_mask input (1, 1, S, ctx)
    base: object  # (0, 0, current_pos, 0): where this step's keys/values go in a state
    states: dict  # state name → state var
    rotate: bool = False  # an *_rotate function: the sliding window's cache is full and shifts
    current_pos: object = None  # the current_pos input (1,)
    _tables: dict = field(default_factory=dict)
    used: set = field(default_factory=set)

    def state(self, name: str):
        self.used.add(name)
        return self.states[name]

    def touch_unused_states(self, x):
        """Every chunk declares every state (they share them), but Core ML refuses a state input nothing
        reads: a chunk without layers of one kind adds 0 × one element of that state to x (as ANEMLL does)."""
        b = mb()
        for name in sorted(set(self.states) - self.used):
            cache = b.read_state(input=self.states[name])
            one = b.slice_by_index(x=cache, begin=[0, 0, 0, 0], end=[1, 1, 1, 1])
            x = b.add(x=x, y=b.mul(x=b.reshape(x=one, shape=[1, 1, 1, 1]), y=np.float16(0)))
        return x

    def memo(self, key, make):
        """A value built once per function (position tables, masks derived from the inputs) and shared by its layers."""
        if key not in self._tables:
            self._tables[key] = make()
        return self._tables[key]

    def rope_tables(self, config: ModelConfig | None = None):
        """cos/sin (S, hd) of this step's positions, for the config's rope (or another config's: a layer kind
        with its own rope base)."""
        c = config or self.config
        key = (c.rope_theta, repr(c.rope_scaling))
        if key not in self._tables:
            b = mb()
            cos_table, sin_table = cos_sin(c, self.ctx)
            self._tables[key] = (
                b.gather(x=f16(cos_table), indices=self.position_ids, axis=0),
                b.gather(x=f16(sin_table), indices=self.position_ids, axis=0),
            )
        return self._tables[key]


def layer_weights(ckpt: Checkpoint, i: int):
    return by_name(ckpt.config.architecture).layer_weights(ckpt, i)


def _channels_first(x, hidden: int, seq: int):
    """(1, S, H) → (1, H, 1, S)."""
    b = mb()
    return b.reshape(x=b.transpose(x=x, perm=[0, 2, 1]), shape=[1, hidden, 1, seq])


def _transformer(ckpt: Checkpoint, layers: range, x, position_ids, causal_mask, current_pos, states: dict, seq: int,
                 ctx: int, weights, rotate: bool = False, on_layer: Callable[[int], None] | None = None):
    """Decoder layers `layers` on x (1, H, 1, S); the final norm too when they end the model. `on_layer(i)` is
    called as each layer's graph is done (a long conversion's progress)."""
    b = mb()
    c = ckpt.config
    arch = by_name(c.architecture)
    base = b.concat(values=[np.zeros(2, np.int32), current_pos, np.zeros(1, np.int32)], axis=0)
    env = GraphEnv(c, seq, ctx, position_ids, causal_mask, base, states, rotate, current_pos=current_pos)
    for i, w in zip(layers, weights):
        x = arch.decoder_layer(w, i, x, env)
        if on_layer is not None:
            on_layer(i)
    x = env.touch_unused_states(x)
    if layers.stop == c.num_layers:
        x = rms_norm(x, arch.final_norm(ckpt), c.rms_norm_eps, axis=1, width=c.hidden_size)
    return x


def _state_specs(c: ModelConfig, ctx: int) -> dict:
    from coremltools.converters.mil.mil import types

    shapes = by_name(c.architecture).state_specs(c, ctx)
    return {name: mb().StateTensorSpec(shape, dtype=types.fp16) for name, shape in shapes.items()}


def _stateful_program(first: str, first_spec, seq: int, ctx: int, states: dict, body):
    """A program over (first input, position_ids, causal_mask, current_pos, *states). MIL names the inputs
    after the function's parameters, so they get placeholder names here and their real ones after."""
    import coremltools as ct
    from coremltools.converters.mil.mil import Function, Program

    names = ["first_input", "position_ids", "causal_mask", "current_pos", *(f"state_{k}" for k in range(len(states)))]
    specs = [first_spec, *_step_specs(seq, ctx), *states.values()]
    with Function(dict(zip(names, specs)), ct.target.iOS18) as fn:
        args = [fn.inputs[n] for n in names]
        outputs = body(*args[:4], args[4:])
        fn.set_outputs(list(outputs) if isinstance(outputs, tuple) else [outputs])
    prog = Program()
    prog.add_function("main", fn)
    _rename_io(prog, {"first_input": first, **{f"state_{k}": n for k, n in enumerate(states)}})
    return prog


def _step_specs(seq: int, ctx: int):
    """position_ids, causal_mask, current_pos: the inputs every stateful function shares."""
    from coremltools.converters.mil.mil import types

    b = mb()
    return [
        b.TensorSpec((seq,), dtype=types.int32),
        b.TensorSpec((1, 1, seq, ctx), dtype=types.fp16),
        b.TensorSpec((1,), dtype=types.int32),
    ]


def chunk_program(ckpt: Checkpoint, layers: range, seq: int, ctx: int, layer_cache: dict, rotate: bool = False,
                  on_layer: Callable[[int], None] | None = None):
    """A transformer chunk for S = seq tokens (1 for `infer`, batch for `prefill`; rotate for the *_rotate
    functions of a sliding-window family)."""
    from coremltools.converters.mil.mil import types

    b = mb()
    c = ckpt.config
    weights = [layer_cache[i] if i in layer_cache else layer_cache.setdefault(i, layer_weights(ckpt, i)) for i in layers]
    states = _state_specs(c, ctx)

    def body(hidden_states, position_ids, causal_mask, current_pos, state_vars):
        x = _channels_first(hidden_states, c.hidden_size, seq)
        env_states = dict(zip(states, state_vars))
        x = _transformer(ckpt, layers, x, position_ids, causal_mask, current_pos, env_states, seq, ctx, weights, rotate,
                         on_layer)
        x = b.transpose(x=b.reshape(x=x, shape=[1, c.hidden_size, seq]), perm=[0, 2, 1])
        return b.identity(x=x, name="output_hidden_states")

    spec = b.TensorSpec((1, seq, c.hidden_size), dtype=types.fp16)
    return _stateful_program("hidden_states", spec, seq, ctx, states, body)


EMBEDDINGS_OP = "embeddings_gather"
LM_HEAD_OP = "lm_head_conv"  # + _1.._K; op name prefixes a compression config can be keyed on


def monolithic_program(ckpt: Checkpoint, seq: int, ctx: int, splits: list[int], argmax: bool, layer_cache: dict):
    """The whole model in one function: input_ids → embeddings → every layer → lm_head (ANEMLL's monolithic
    layout). `infer` (seq 1) returns the logits of its token; `prefill` (seq = batch) fills the KV state and
    returns the same outputs for the block's last row, which is padding unless the block is full."""
    from coremltools.converters.mil.mil import types

    b = mb()
    c = ckpt.config
    layers = range(c.num_layers)
    weights = [layer_cache[i] if i in layer_cache else layer_cache.setdefault(i, layer_weights(ckpt, i)) for i in layers]
    table = by_name(c.architecture).embedding_table(ckpt)
    states = _state_specs(c, ctx)

    def body(input_ids, position_ids, causal_mask, current_pos, state_vars):
        x = _channels_first(b.gather(x=weight_const(table), indices=input_ids, axis=0, name=EMBEDDINGS_OP), c.hidden_size, seq)
        env_states = dict(zip(states, state_vars))
        x = _transformer(ckpt, layers, x, position_ids, causal_mask, current_pos, env_states, seq, ctx, weights)
        if seq > 1:
            x = b.slice_by_index(x=x, begin=[0, 0, 0, seq - 1], end=[1, c.hidden_size, 1, seq])
        return _lm_head(x, ckpt.tensor("lm_head.weight"), splits, argmax)

    return _stateful_program("input_ids", b.TensorSpec((1, seq), dtype=types.int32), seq, ctx, states, body)


def embeddings_program(ckpt: Checkpoint, batch: int):
    import coremltools as ct
    from coremltools.converters.mil.mil import get_new_symbol, types

    b = mb()
    table = by_name(ckpt.config.architecture).embedding_table(ckpt)

    @b.program(input_specs=[b.TensorSpec((1, get_new_symbol()), dtype=types.int32)], opset_version=ct.target.iOS18)
    def prog(input_ids):
        return b.gather(x=weight_const(table), indices=input_ids, axis=0, name="hidden_states")

    return prog


def split_sizes(vocab: int, parts: int | None = None) -> list[int]:
    parts = max(parts or 1, ceil(vocab / MAX_SPLIT))
    size = ceil(vocab / parts)
    return [min(size, vocab - k * size) for k in range(parts) if vocab - k * size > 0]


def _lm_head(x, weight: np.ndarray, splits: list[int], argmax: bool):
    """x (1, H, 1, 1) → logits1..K (1, 1, split_k), or argmax_idx/argmax_val (K,) with per-split winners."""
    b = mb()
    bounds = np.cumsum([0] + splits)
    outs, idx, val = [], [], []
    for k in range(len(splits)):
        logits = conv1x1(x, weight[bounds[k] : bounds[k + 1]], name=f"{LM_HEAD_OP}_{k + 1}")
        if argmax:
            flat = b.reshape(x=logits, shape=[splits[k]])
            idx.append(b.reduce_argmax(x=flat, axis=0, keep_dims=True))
            val.append(b.reduce_max(x=flat, axes=[0], keep_dims=True))
        else:
            outs.append(b.reshape(x=logits, shape=[1, 1, splits[k]], name=f"logits{k + 1}"))
    if argmax:
        return (
            b.cast(x=b.concat(values=idx, axis=0), dtype="int32", name="argmax_idx"),
            b.concat(values=val, axis=0, name="argmax_val"),
        )
    return tuple(outs)


def lm_head_program(ckpt: Checkpoint, splits: list[int], argmax: bool = False):
    import coremltools as ct
    from coremltools.converters.mil.mil import types

    b = mb()
    c = ckpt.config
    weight = ckpt.tensor("lm_head.weight")

    @b.program(input_specs=[b.TensorSpec((1, 1, c.hidden_size), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(hidden_states):
        return _lm_head(b.reshape(x=hidden_states, shape=[1, c.hidden_size, 1, 1]), weight, splits, argmax)

    return prog


def _rename_io(prog, names: dict[str, str]) -> None:
    """MIL's builder names inputs after the Python parameters; Core ML state names need dots."""
    fn = prog.functions["main"]
    for old, new in names.items():
        var = fn.inputs.pop(old)
        var.name = new
        fn.inputs[new] = var
