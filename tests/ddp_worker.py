"""Run by tests/test_parallel.py, under torchrun or alone: a few training steps of a tiny GPT on
every rank, stopped after a step or resumed from the last checkpoint; rank 0 saves the parameters.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT [--stop-at N] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minigpt import GPT, GPTConfig  # noqa: E402
from minigpt.training import Ranks, TokenWindows, TrainConfig, train  # noqa: E402


class Stop(Exception):
    pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--accumulate", type=int, default=1)
    args = parser.parse_args()
    ranks = Ranks.from_env("cpu")
    tokens = torch.randint(0, 64, (4000,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=16, dropout=args.dropout))
    config = TrainConfig(steps=8, batch=args.batch, accumulate=args.accumulate, warmup=2, eval_every=4, save_every=3)

    def report(record: dict) -> None:
        if record["step"] == args.stop_at:
            raise Stop

    try:
        train(model, TokenWindows(tokens, 16, seed=1), TokenWindows(tokens[:200], 16, seed=0), config,
              state_path=args.out / "state.pt", resume=args.resume, report=report, ranks=ranks)
    except Stop:
        return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        ranks.close()
    if ranks.writer:
        torch.save(model.state_dict(), args.out / "parameters.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
