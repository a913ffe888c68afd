"""Command line: `python -m train.main --pooling=mean --pcgrad` (see --help)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from . import distributed
from .cli import build_parser, parse_args
from .config import ConfigError, TrainConfig
from .loop import train
from .run import RunError, resolved_dtype


def _resumed_config(run_dir: Path, argv) -> TrainConfig:
    """The run's saved config; a flag given with --resume must agree with it, except a larger --epochs, which
    extends the run (not with annealed sampling or a decaying learning rate, whose schedules span the planned
    epochs)."""
    if not (run_dir / "config.json").exists():
        raise RunError(f"--resume {run_dir}: not a run directory (no config.json)")
    try:
        saved = TrainConfig.from_json(run_dir / "config.json")
    except (ValueError, TypeError, KeyError) as err:
        raise RunError(f"--resume {run_dir}: config.json does not hold a run's settings ({err})") from None
    given, _ = parse_args([a for a in argv if not a.startswith(("--resume", "--run-dir")) and a != str(run_dir)])
    explicit = {k for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    if "epochs" in explicit and given.epochs > saved.epochs:
        spanning = [s for s, used in (("annealed sampling", saved.sampling == "annealed"),
                                      (f"--lr-schedule {saved.lr_schedule}", saved.lr_schedule != "constant")) if used]
        if spanning:
            raise ConfigError(f"--resume {run_dir} --epochs {given.epochs}: a run with {' and '.join(spanning)} cannot "
                              "be extended (its schedule spans the planned epochs)")
        saved = dataclasses.replace(saved, epochs=given.epochs)
    conflicts = [
        f"--{f.name.replace('_', '-')} {getattr(given, f.name)!r} (the run has {getattr(saved, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if (f.name in explicit or (f.name != "preset" and "preset" in explicit))
        and getattr(given, f.name) != getattr(saved, f.name)
    ]
    if conflicts:
        raise ConfigError(f"--resume {run_dir}: settings contradict the run's config.json: " + "; ".join(conflicts))
    return saved


def _join_processes(args) -> None:
    by_hand = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in by_hand) and None in by_hand:
        raise ConfigError("--coordinator-address, --num-processes and --process-id go together")
    if args.distributed or by_hand[0] is not None:
        try:
            distributed.initialize(*by_hand)
        except (RuntimeError, ValueError) as err:
            raise RunError(f"cannot join the other processes: {err}") from None


def main(argv=None) -> int:
    """Parses flags, then trains (or resumes) a run; user errors print one line and exit 1, an interrupted run
    (checkpoint saved) exits 130."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, args = parse_args(argv)
        _join_processes(args)
        if distributed.process_count() > 1 and not (args.run_dir or args.resume):
            raise ConfigError("a multi-process run needs --run-dir (the same directory in every process)")
        if args.resume:
            if args.run_dir and Path(args.run_dir).resolve() != Path(args.resume).resolve():
                raise ConfigError(f"--resume {args.resume} --run-dir {args.run_dir}: a resumed run stays in its own "
                                  "directory; leave out --run-dir")
            run_dir = Path(args.resume)
            config = _resumed_config(run_dir, argv)
        else:
            name = config.preset or "custom"
            run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{name}")
        auto, config = config.dtype == "auto", resolved_dtype(config)  # after joining: it asks the devices
        if distributed.is_main_process():
            print(f"run directory: {run_dir}")
            how = "--dtype auto: this CPU has bfloat16 instructions; --dtype float32 for exact float32" if auto and \
                config.dtype == "bfloat16" else "--dtype auto" if auto else "--dtype"
            print(f"computing in {config.dtype} ({how}); parameters and optimizer state in float32")
        metrics = train(config, run_dir, resume=bool(args.resume), quiet=args.quiet)
    except (ConfigError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not metrics:
        return 130
    if distributed.is_main_process():
        print("best dev: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
