"""``realm-convert-checkpoint``: convert official pickled checkpoints (DUNE, DUNE-MASt3R) to safetensors once.

Usage::

    realm-convert-checkpoint dune_vitbase14_448_paper.pth            # -> dune_vitbase14_448_paper.safetensors/.json
    realm-convert-checkpoint in.pth -o out.safetensors --no-pickle   # refuse pickles that need a full unpickle
    realm-convert-checkpoint --info file.(pth|safetensors)           # print what the loader would build

The loaders then read the ``.safetensors`` file found next to the ``.pth`` (no unpickling at run time). Pickled
``.pth`` files can execute code when loaded: convert only files from trusted sources (the official download URLs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .checkpoints import CheckpointError, convert_checkpoint, dune_model_from_state_dict, read_checkpoint


def _describe(path: Path, allow_pickle: bool) -> dict:
    state, info = read_checkpoint(path, allow_pickle=allow_pickle)
    desc = dict(path=info['path'], format=info['format'], source_sha256=info['source_sha256'], tensors=len(state),
                elements=int(sum(t.numel() for t in state.values())))
    if any(k.startswith('encoder.') for k in state):
        model = dune_model_from_state_dict(state, info['args'], name=str(path))
        desc['dune_encoder'] = model.encoder.architecture()
        desc['projectors'] = {k: v.config() for k, v in model.projectors.items()}
        desc['teacher_norms'] = {k: sorted(v.normalizers) for k, v in model.teacher_norms.items()}
    desc['extra'] = info['extra']
    return desc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='realm-convert-checkpoint', description=__doc__.split('\n')[0])
    parser.add_argument('input', type=Path, help='official checkpoint (.pth) or converted .safetensors (--info)')
    parser.add_argument('-o', '--output', type=Path, default=None,
                        help='output .safetensors (default: input with the suffix replaced)')
    parser.add_argument('--no-pickle', action='store_true',
                        help='never fully unpickle; only tensors, argparse.Namespace and numpy arrays are accepted')
    parser.add_argument('--no-validate', action='store_true', help='skip building the DUNE model as a check')
    parser.add_argument('--info', action='store_true', help='describe the checkpoint instead of converting it')
    args = parser.parse_args(argv)
    try:
        if args.info:
            print(json.dumps(_describe(args.input, not args.no_pickle), indent=2))
            return 0
        out = convert_checkpoint(args.input, args.output, allow_pickle=not args.no_pickle,
                                 validate_dune=not args.no_validate)
    except CheckpointError as error:
        print(f'realm-convert-checkpoint: error: {error}', file=sys.stderr)
        return 2
    print(f'wrote {out} and {out.with_suffix(".json")}')
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
