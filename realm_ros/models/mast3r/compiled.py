"""The pose step's decoder maps run by OpenVINO on the CPU (an optional inference runtime).

A symmetric pose step (:mod:`realm_ros.geometry.symmetric`) reads three raw maps of one decoder call: view 1's DPT
output (points and confidence) and the local-feature maps of both views. :class:`PairMaps` is that computation as a
torch module (:class:`PairBlocks`: the decoder blocks; :class:`PairHeads`: view 1's DPT, both local-feature MLPs).
:class:`OpenVinoPairMaps` traces it once per input shape, compiles it with OpenVINO for the CPU in fp32
(``INFERENCE_PRECISION_HINT f32``: no silent bf16 on CPUs that have it) and runs it on the calling thread with a
bounded number of threads. With the heads in bf16 (``pose.decoder_precision bf16-heads``) the blocks and the heads
are two compiled models, the blocks' in fp32 and the heads' with the bf16 hint.

Why: on the 2-core development CPU the compiled maps cost ~0.7x the eager torch forward (one thread, both orders of
a 224 x 224 pair of the shipped miniature decoder; ``benchmarks/bench_pose_step.py --runtime-paths``), with the same
arithmetic in a different order: the values agree with torch to ~1e-6 relative, not bit for bit. The eager torch
path stays the exact reference (``pose.decoder_runtime torch``).

The compiled graph holds a copy of the decoder's weights taken when a shape is first run: build a new
:class:`OpenVinoPairMaps` after changing them (the pipeline loads its decoder once).

Signals: OpenVINO's CPU plugin (2026.4, Linux) gives the thread that compiles a model an alternate signal stack of its
own and, when the model is released, puts back the stack it replaced. Two models released in the order they were
compiled leave the thread with the first model's freed stack; the next signal whose handler runs on the alternate
stack (CPython installs every Python-level handler with ``SA_ONSTACK``: Ctrl-C, the SIGCHLD of torch's data-loading
workers) then kills the process with SIGSEGV, or writes its frame into memory reused meanwhile. Every compile and
release here runs under :func:`realm_ros.common.signal_stack.preserved_signal_stack`, so OpenVINO never changes a
thread's alternate stack.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from realm_ros.common.errors import RealmError
from realm_ros.common.signal_stack import preserved_signal_stack

__all__ = ['PairMaps', 'PairBlocks', 'PairHeads', 'OpenVinoPairMaps', 'OpenVinoRuntimeError', 'openvino_version']

class OpenVinoRuntimeError(RealmError, RuntimeError):
    """OpenVINO is missing, or it could not convert, compile or run the decoder maps of a given shape."""


def openvino_version() -> str | None:
    """The installed OpenVINO's version, None when it cannot be imported."""
    try:
        import openvino
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return None
    return str(getattr(openvino, '__version__', '') or 'unknown')


class _PairModule(nn.Module):
    """A part of one decoder call with fixed token grids (the decoder's modules, not copies)."""

    def __init__(self, decoder: Any, grid1: tuple[int, int], grid2: tuple[int, int]) -> None:
        super().__init__()
        self.decoder = decoder
        self.grid1, self.grid2 = (int(grid1[0]), int(grid1[1])), (int(grid2[0]), int(grid2[1]))


class PairBlocks(_PairModule):
    """The decoder blocks of one call: ``(tokens1, tokens2)`` -> the decoded token lists of view 1 then view 2,
    flattened into one tuple (``decoder.decode``'s lists, each ``dec_depth + 1`` long: what the heads read)."""

    def forward(self, tokens1: Tensor, tokens2: Tensor) -> tuple[Tensor, ...]:
        dec1, dec2 = self.decoder.decode(tokens1, tokens2, self.grid1, self.grid2)
        return tuple(dec1) + tuple(dec2)


class PairHeads(_PairModule):
    """The heads of one call on :class:`PairBlocks`' output: ``(dense1, local1, local2)`` (see :class:`PairMaps`)."""

    def forward(self, *decoded: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = len(decoded) // 2
        dec1, dec2 = list(decoded[:n]), list(decoded[n:])
        head1 = self.decoder.mast3r.downstream_head1
        head2 = self.decoder.mast3r.downstream_head2
        return (head1.dpt(dec1, self.grid1).permute(0, 2, 3, 1), head1.local_feature_map(dec1, self.grid1),
                head2.local_feature_map(dec2, self.grid2))


class PairMaps(nn.Module):
    """Raw maps of one decoder call ``(tokens1, tokens2)`` with fixed token grids: ``(dense1, local1, local2)``,
    all channels-last (:class:`PairBlocks`, then :class:`PairHeads`).

    ``dense1``: view 1's DPT output (B, H, W, 3 + conf); ``local1`` / ``local2``: the local-feature maps of both
    views (B, H, W, desc_dim + two_confs), as :meth:`CatMlpDptHead.local_feature_map`. View 2's DPT is not computed
    (the pose step never reads view 2's points)."""

    def __init__(self, decoder: Any, grid1: tuple[int, int], grid2: tuple[int, int]) -> None:
        super().__init__()
        self.blocks = PairBlocks(decoder, grid1, grid2)
        self.heads = PairHeads(decoder, grid1, grid2)

    def forward(self, tokens1: Tensor, tokens2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.heads(*self.blocks(tokens1, tokens2))


class OpenVinoPairMaps:
    """:class:`PairMaps` of ``decoder`` compiled by OpenVINO for the CPU, one compiled model per input shape.

    ``threads``: OpenVINO inference threads (the calling thread included; 1 runs on the calling thread alone, so its
    CPU priority applies); None: ``torch.get_num_threads()`` when a shape is compiled, so the compiled maps use what
    the eager decoder would. Calls are serialised by a lock. Raises :class:`OpenVinoRuntimeError` when OpenVINO is not
    installed (at construction) or cannot handle a shape (at the call); with ``fallback`` a shape OpenVINO cannot
    compile runs the eager :class:`PairMaps` instead (its error kept in :attr:`failed` and passed to ``log`` once)."""

    def __init__(self, decoder: Any, threads: int | None = None, fallback: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        version = openvino_version()
        if version is None:
            raise OpenVinoRuntimeError('OpenVINO is not installed (pip install openvino): '
                                       "pose.decoder_runtime 'openvino' needs it")
        if next(decoder.parameters()).device.type != 'cpu':
            raise OpenVinoRuntimeError('OpenVINO runs the decoder on the CPU; the decoder is on '
                                       f'{next(decoder.parameters()).device}')
        if threads is not None and int(threads) < 1:
            raise OpenVinoRuntimeError(f'threads must be >= 1, got {threads!r}')
        self.decoder = decoder
        self.threads = None if threads is None else int(threads)
        self.version = version
        self.fallback = bool(fallback)
        self._log = log
        #: input shapes OpenVINO could not compile -> the error (``fallback``: they run eager)
        self.failed: dict[tuple[Any, ...], str] = {}
        self._lock = threading.Lock()
        self._requests: dict[tuple[Any, ...], Any] = {}

    @property
    def compiled_shapes(self) -> list[tuple[Any, ...]]:
        """The inputs compiled so far: ``(tokens1 shape, tokens2 shape, grid1, grid2, heads precision)``, the last
        ``'f32'`` (one fp32 model) or ``'bf16'`` (fp32 blocks, bf16 heads: two models)."""
        return list(self._requests)

    def _compile_module(self, module: nn.Module, inputs: tuple[Tensor, ...], precision: str) -> Any:
        import openvino as ov
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')           # tracer warnings about the shape checks: shapes are fixed
            # check_trace off: the re-trace differs only in torch's mangled module type names
            traced = torch.jit.trace(module.eval(), inputs, check_trace=False)
            model = ov.convert_model(traced, example_input=inputs)
        compiled = ov.Core().compile_model(model, 'CPU', {
            'INFERENCE_NUM_THREADS': self.threads or max(1, torch.get_num_threads()),
            'INFERENCE_PRECISION_HINT': precision, 'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1,
            'ENABLE_CPU_PINNING': False})
        return compiled.create_infer_request()

    def _compile(self, tokens1: Tensor, tokens2: Tensor, grid1: tuple[int, int], grid2: tuple[int, int],
                 heads: str) -> tuple[Any, ...]:
        """One infer request (fp32: the whole :class:`PairMaps`), or two (bf16 heads: :class:`PairBlocks` in fp32,
        then :class:`PairHeads` with the bf16 hint)."""
        try:
            if heads == 'f32':
                return (self._compile_module(PairMaps(self.decoder, grid1, grid2), (tokens1, tokens2), 'f32'),)
            blocks = PairBlocks(self.decoder, grid1, grid2)
            with torch.no_grad():
                decoded = blocks(tokens1, tokens2)
            return (self._compile_module(blocks, (tokens1, tokens2), 'f32'),
                    self._compile_module(PairHeads(self.decoder, grid1, grid2), decoded, 'bf16'))
        except Exception as exc:
            raise OpenVinoRuntimeError(f'OpenVINO {self.version} could not compile the decoder maps for tokens '
                                       f'{tuple(tokens1.shape)} / {tuple(tokens2.shape)}, grids {grid1} / {grid2}, '
                                       f'heads {heads}: {type(exc).__name__}: {exc}') from exc

    def __call__(self, tokens1: Tensor, tokens2: Tensor, grid1: tuple[int, int], grid2: tuple[int, int],
                 copy: bool = True, heads_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``PairMaps(decoder, grid1, grid2)(tokens1, tokens2)`` (fp32 CPU tensors; the first call of a shape
        compiles it, ~1-5 s). ``copy`` False: the maps are OpenVINO's output buffers, valid until the next call
        (saves copying ~11 MB per 224 x 224 pair); True: they own their memory. ``heads_dtype`` ``torch.bfloat16``:
        the heads run in bf16 (a model of their own, compiled with the bf16 hint), the blocks in fp32; None: fp32."""
        if heads_dtype not in (None, torch.float32, torch.bfloat16):
            raise OpenVinoRuntimeError(f'the compiled decoder maps run their heads in fp32 or bf16, not {heads_dtype}')
        heads = 'bf16' if heads_dtype == torch.bfloat16 else 'f32'
        t1 = tokens1.detach().to('cpu', torch.float32).contiguous()
        t2 = tokens2.detach().to('cpu', torch.float32).contiguous()
        g1, g2 = (int(grid1[0]), int(grid1[1])), (int(grid2[0]), int(grid2[1]))
        key = (tuple(t1.shape), tuple(t2.shape), g1, g2, heads)
        with self._lock:
            if key in self.failed:
                return self._eager(t1, t2, key)
            requests = self._requests.get(key)
            if requests is None:
                try:
                    with preserved_signal_stack():     # also while the traced model and the core are released
                        requests = self._compile(t1, t2, g1, g2, heads)
                except OpenVinoRuntimeError as exc:
                    if not self.fallback:
                        raise
                    self.failed[key] = str(exc)
                    if self._log is not None:
                        self._log(f'{exc}; these shapes run on the eager torch decoder')
                    return self._eager(t1, t2, key)
                self._requests[key] = requests
            try:
                result = requests[0].infer([t1.numpy(), t2.numpy()], share_inputs=True,
                                           share_outputs=not copy or len(requests) > 1)
                if len(requests) > 1:              # the blocks' outputs are the heads' inputs
                    decoded = [np.asarray(result[i]) for i in range(len(result))]
                    result = requests[1].infer(decoded, share_inputs=True, share_outputs=not copy)
            except Exception as exc:
                raise OpenVinoRuntimeError(f'OpenVINO failed on the decoder maps for tokens {key[0]} / {key[1]}: '
                                           f'{type(exc).__name__}: {exc}') from exc
            maps = [np.asarray(result[i]) for i in range(3)]
        return torch.from_numpy(maps[0]), torch.from_numpy(maps[1]), torch.from_numpy(maps[2])

    def close(self) -> None:
        """Release the compiled models (the calling thread's alternate signal stack is kept; module docstring).
        Calls after it compile again."""
        with self._lock, preserved_signal_stack():
            self._requests.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to protect
            pass

    def _eager(self, t1: Tensor, t2: Tensor, key: tuple[Any, ...]) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            if key[4] == 'f32':
                return PairMaps(self.decoder, key[2], key[3])(t1, t2)
            decoded = PairBlocks(self.decoder, key[2], key[3])(t1, t2)
            with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
                maps = PairHeads(self.decoder, key[2], key[3])(*decoded)
            return maps[0].float(), maps[1].float(), maps[2].float()
